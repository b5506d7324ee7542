"""Calibration of predicted probabilities: logistic recalibration, binned errors, Brier.

Logistic recalibration (Cox 1958; Van Calster et al. 2016), with
``lp = logit(p)``:

* calibration slope ``b`` (and intercept ``a``): maximum likelihood of
  ``logit P(y = 1) = a + b lp``, i.e. R ``glm(y ~ qlogis(p), family = binomial)``.
* calibration-in-the-large ``CITL``: ``logit P(y = 1) = CITL + lp`` with ``lp``
  as an offset, i.e. R ``glm(y ~ offset(qlogis(p)), family = binomial)``.
  0 is ideal; > 0 means the model under-predicts on average.

Both are fitted by Newton-Raphson (= glm's IRLS for the canonical link) to a
relative tolerance of 1e-12; standard errors are ``sqrt(diag((X'WX)^-1))`` with
``W = diag(mu (1 - mu))`` at the optimum (``summary(glm)``). Probabilities are
clipped to ``[clip, 1 - clip]`` (default 1e-12) before ``logit`` so that 0 and 1
stay finite. When ``logit(p)`` separates the classes (or is constant) the
slope has no finite estimate; the fit then says so (``slope_estimable``)
instead of failing, and still gives the CITL. These numbers are computed at a
site and sent with their SEs; a server pools them with :func:`pool_calibration`
(random effects).

Binned summaries: fixed equal-width bins ``[j/B, (j+1)/B)``, the last one
closed at 1 (bin index ``min(floor(p B), B - 1)``). Per bin a site sends the
count, the sum of p, the sum of y and the sum of squared errors; these add up
over sites, and from them

* expected calibration error
  ``ECE = sum_b (n_b / N) |ybar_b - pbar_b| = sum_b |sum_y_b - sum_p_b| / N``
  (Naeini et al. 2015, equal-width bins, empty bins contribute 0);
* reliability diagram points ``(pbar_b, ybar_b, n_b)``;
* Brier score ``sum (p - y)^2 / N`` (Brier 1950);

equal exactly what the pooled per-case data would give.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import expit, logit

from common.stats._checks import labels, matched
from common.stats.meta import MetaResult, Method, random_effects

__all__ = [
    "CalibrationBins",
    "CalibrationFit",
    "PooledCalibration",
    "Reliability",
    "brier_from_bins",
    "brier_score",
    "calibration_bins",
    "calibration_glm",
    "ece_from_bins",
    "expected_calibration_error",
    "merge_bins",
    "pool_calibration",
    "reliability_from_bins",
]


def _y_p(
    y_true: ArrayLike, y_prob: ArrayLike, allow_empty: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    y = labels(y_true)
    if y.size == 0 and not allow_empty:
        raise ValueError("y_true is empty")
    p = matched(y, y_prob, "y_prob")
    if (p < 0).any() or (p > 1).any():
        raise ValueError("y_prob must lie in [0, 1]")
    return y, p


def brier_score(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Brier score ``mean((p - y)^2)`` (0 is perfect, 0.25 is p = 0.5 everywhere)."""
    y, p = _y_p(y_true, y_prob)
    return float(np.mean((p - y) ** 2))


@dataclass(frozen=True)
class CalibrationBins:
    """Per-bin sufficient statistics on fixed equal-width bins (what a site sends).

    ``count[b]``, ``sum_p[b]``, ``sum_y[b]`` and ``sum_sq_error[b]`` (sum of
    ``(p - y)^2``) for bin ``b`` = ``[b/B, (b+1)/B)`` (the last closed at 1).
    """

    count: tuple[int, ...]
    sum_p: tuple[float, ...]
    sum_y: tuple[float, ...]
    sum_sq_error: tuple[float, ...]

    def __post_init__(self) -> None:
        b = len(self.count)
        if b < 1:
            raise ValueError("CalibrationBins needs at least one bin")
        if not (len(self.sum_p) == len(self.sum_y) == len(self.sum_sq_error) == b):
            raise ValueError("count, sum_p, sum_y and sum_sq_error must have one entry per bin")
        for name in ("count", "sum_p", "sum_y", "sum_sq_error"):
            vals = np.asarray(getattr(self, name), dtype=float)
            if not np.isfinite(vals).all() or (vals < 0).any():
                raise ValueError(f"{name} must be finite and >= 0")
        c = np.asarray(self.count, dtype=float)
        if (np.asarray(self.sum_y) > c + 1e-9).any() or (np.asarray(self.sum_p) > c + 1e-9).any():
            raise ValueError("sum_y and sum_p cannot exceed the bin count")

    @property
    def n_bins(self) -> int:
        """Number of bins B."""
        return len(self.count)

    @property
    def n(self) -> int:
        """Total number of cases N."""
        return int(sum(self.count))

    @property
    def edges(self) -> tuple[float, ...]:
        """Bin edges ``0, 1/B, ..., 1``."""
        return tuple(float(e) for e in np.linspace(0.0, 1.0, self.n_bins + 1))


def calibration_bins(y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10) -> CalibrationBins:
    """Bin (y, p) into ``n_bins`` fixed equal-width bins and sum per bin (see module docstring).

    Empty input gives all-zero bins (a site without cases still sends a summary).
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
    y, p = _y_p(y_true, y_prob, allow_empty=True)
    b = int(n_bins)
    idx = np.minimum(np.floor(p * b).astype(int), b - 1)
    count = np.bincount(idx, minlength=b)
    sum_p = np.bincount(idx, weights=p, minlength=b)
    sum_y = np.bincount(idx, weights=y.astype(float), minlength=b)
    sse = np.bincount(idx, weights=(p - y) ** 2, minlength=b)
    return CalibrationBins(
        count=tuple(int(c) for c in count),
        sum_p=tuple(float(s) for s in sum_p),
        sum_y=tuple(float(s) for s in sum_y),
        sum_sq_error=tuple(float(s) for s in sse),
    )


def merge_bins(bins: Sequence[CalibrationBins]) -> CalibrationBins:
    """Add up the bin summaries of several sites (all must use the same number of bins)."""
    if len(bins) == 0:
        raise ValueError("merge_bins needs at least one CalibrationBins")
    nb = {b.n_bins for b in bins}
    if len(nb) != 1:
        raise ValueError(f"all sites must use the same number of bins, got {sorted(nb)}")

    def total(name: str) -> np.ndarray:
        return np.sum([np.asarray(getattr(b, name), dtype=float) for b in bins], axis=0)

    return CalibrationBins(
        count=tuple(round(c) for c in total("count")),
        sum_p=tuple(float(s) for s in total("sum_p")),
        sum_y=tuple(float(s) for s in total("sum_y")),
        sum_sq_error=tuple(float(s) for s in total("sum_sq_error")),
    )


def _nonempty(bins: CalibrationBins) -> int:
    n = bins.n
    if n == 0:
        raise ValueError("the bins hold no case (N = 0)")
    return n


def ece_from_bins(bins: CalibrationBins) -> float:
    """Expected calibration error ``sum_b |sum_y_b - sum_p_b| / N`` from bin summaries."""
    n = _nonempty(bins)
    return float(np.sum(np.abs(np.asarray(bins.sum_y) - np.asarray(bins.sum_p))) / n)


def brier_from_bins(bins: CalibrationBins) -> float:
    """Brier score ``sum_b sum_sq_error_b / N`` from bin summaries."""
    return float(np.sum(bins.sum_sq_error) / _nonempty(bins))


@dataclass(frozen=True)
class Reliability:
    """Reliability-diagram points per bin; ``nan`` where a bin is empty."""

    mean_predicted: tuple[float, ...]
    observed_rate: tuple[float, ...]
    count: tuple[int, ...]
    edges: tuple[float, ...]


def reliability_from_bins(bins: CalibrationBins) -> Reliability:
    """Mean predicted probability and observed event rate of each bin."""
    c = np.asarray(bins.count, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mp = np.where(c > 0, np.asarray(bins.sum_p) / c, np.nan)
        obs = np.where(c > 0, np.asarray(bins.sum_y) / c, np.nan)
    return Reliability(
        mean_predicted=tuple(float(v) for v in mp),
        observed_rate=tuple(float(v) for v in obs),
        count=bins.count,
        edges=bins.edges,
    )


def expected_calibration_error(y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10) -> float:
    """ECE on ``n_bins`` fixed equal-width bins (= ``ece_from_bins(calibration_bins(...))``)."""
    return ece_from_bins(calibration_bins(y_true, y_prob, n_bins))


@dataclass(frozen=True)
class CalibrationFit:
    """Site-level logistic recalibration with GLM standard errors (see module docstring).

    ``slope``/``intercept`` come from ``glm(y ~ qlogis(p))``; ``citl`` from
    ``glm(y ~ offset(qlogis(p)))``. ``slope_estimable`` is False when the slope
    has no finite maximum-likelihood estimate: ``logit(p)`` separates the
    classes (complete or quasi-complete separation; ``slope`` is then ``+inf``,
    or ``-inf`` for a reversed ranking) or is constant (``slope`` is ``nan``);
    ``intercept`` and both SEs are then ``nan``. The CITL exists whenever both
    classes occur.
    """

    slope: float
    slope_se: float
    intercept: float
    intercept_se: float
    citl: float
    citl_se: float
    n: int
    slope_estimable: bool = True


_MAX_ITER = 100
_RTOL = 1e-12


def _loglik(eta: np.ndarray, y: np.ndarray) -> float:
    # log L = sum y eta - log(1 + exp(eta)), computed stably
    return float(np.sum(y * eta - np.logaddexp(0.0, eta)))


def _logistic_mle(
    x: np.ndarray, y: np.ndarray, offset: np.ndarray, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Newton-Raphson for ``logit P(y=1) = offset + x beta``; returns beta and its SEs."""
    beta = np.zeros(x.shape[1])
    ll = _loglik(offset, y)
    for _ in range(_MAX_ITER):
        mu = expit(offset + x @ beta)
        info = x.T @ (x * (mu * (1 - mu))[:, None])
        try:
            step = np.linalg.solve(info, x.T @ (y - mu))
        except np.linalg.LinAlgError as exc:
            raise ValueError(f"{what}: singular information matrix (separation?)") from exc
        for _ in range(60):  # step halving guards against overshooting
            new_ll = _loglik(offset + x @ (beta + step), y)
            if new_ll >= ll - 1e-12 * abs(ll):
                break
            step = step / 2
        beta = beta + step
        ll = new_ll
        if np.all(np.abs(step) <= _RTOL * (np.abs(beta) + 1.0)):
            break
    else:
        raise ValueError(f"{what} did not converge in {_MAX_ITER} iterations (separation?)")
    mu = expit(offset + x @ beta)
    info = x.T @ (x * (mu * (1 - mu))[:, None])
    var = np.diag(np.linalg.inv(info)) if np.linalg.cond(info) < 1e12 else np.full(len(beta), -1.0)
    if not (np.isfinite(beta).all() and (var > 0).all()):
        raise ValueError(f"{what}: no finite maximum-likelihood estimate (separation?)")
    return beta, np.sqrt(var)


def calibration_glm(y_true: ArrayLike, y_prob: ArrayLike, clip: float = 1e-12) -> CalibrationFit:
    """Calibration slope, its intercept and calibration-in-the-large, with GLM SEs.

    Equals R ``glm(y ~ qlogis(p), family=binomial)`` and
    ``glm(y ~ offset(qlogis(p)), family=binomial)`` (coefficients and
    ``summary()`` standard errors). When the slope has no finite estimate
    (perfect separation by ``logit(p)``, where R's glm fails to converge, or
    constant p) the slope fields are reported as described in
    :class:`CalibrationFit` and only the CITL is fitted. Raises ``ValueError``
    for bad input, when y has a single class (no finite CITL either), or if
    Newton-Raphson does not converge.
    """
    if not 0.0 < clip < 0.5:
        raise ValueError(f"clip must lie in (0, 0.5), got {clip}")
    y, p = _y_p(y_true, y_prob)
    if y.min() == y.max():
        raise ValueError("y_true has a single class: the logistic fit has no finite optimum")
    lp = logit(np.clip(p, clip, 1 - clip))
    yf = y.astype(float)
    ones = np.ones((y.size, 1))
    citl, citl_se = _logistic_mle(ones, yf, lp, "calibration-in-the-large")
    lp1, lp0 = lp[y == 1], lp[y == 0]
    if np.ptp(lp) == 0:
        slope = math.nan
    elif lp0.max() <= lp1.min():
        slope = math.inf
    elif lp1.max() <= lp0.min():
        slope = -math.inf
    else:
        beta, se = _logistic_mle(
            np.column_stack([ones, lp]), yf, np.zeros_like(lp), "calibration slope"
        )
        return CalibrationFit(
            slope=float(beta[1]),
            slope_se=float(se[1]),
            intercept=float(beta[0]),
            intercept_se=float(se[0]),
            citl=float(citl[0]),
            citl_se=float(citl_se[0]),
            n=int(y.size),
        )
    return CalibrationFit(
        slope=slope,
        slope_se=math.nan,
        intercept=math.nan,
        intercept_se=math.nan,
        citl=float(citl[0]),
        citl_se=float(citl_se[0]),
        n=int(y.size),
        slope_estimable=False,
    )


@dataclass(frozen=True)
class PooledCalibration:
    """Random-effects pools of the sites' CITLs and (estimable) calibration slopes.

    ``slope`` is None when no site has an estimable slope.
    """

    slope: MetaResult | None
    citl: MetaResult


def pool_calibration(
    fits: Sequence[CalibrationFit],
    method: Method = "REML",
    hartung_knapp: bool = False,
    level: float = 0.95,
) -> PooledCalibration:
    """Pool site CITLs and slopes by :func:`~common.stats.meta.random_effects` (var = SE^2).

    Sites whose slope is not estimable (``slope_estimable`` False) are left out
    of the slope pool only.
    """
    if len(fits) == 0:
        raise ValueError("pool_calibration needs at least one CalibrationFit (k = 0)")
    ok = [f for f in fits if f.slope_estimable]
    slope = (
        random_effects(
            [f.slope for f in ok], [f.slope_se**2 for f in ok], method, hartung_knapp, level
        )
        if ok
        else None
    )
    citl = random_effects(
        [f.citl for f in fits], [f.citl_se**2 for f in fits], method, hartung_knapp, level
    )
    return PooledCalibration(slope=slope, citl=citl)
