"""Random-effects meta-analysis of site estimates, as R metafor 3.8 ``rma()`` + ``predict()``.

Model: ``y_i ~ N(mu, v_i + tau^2)`` for site estimates ``y_i`` with known
sampling variances ``v_i``, i = 1..k. Everything follows metafor's
``rma.uni`` (intercept only) and ``predict.rma`` (Viechtbauer 2010):

* tau^2 estimators (``"DL"``, ``"REML"``, ``"PM"``): :mod:`common.stats.tau2`.
* ``estimate = sum w y / sum w`` with ``w = 1 / (v + tau^2)``, ``se = 1 / sqrt(sum w)``.
  With ``hartung_knapp=True`` (metafor ``test = "knha"``) the variance is
  multiplied by ``s2 = sum w (y - estimate)^2 / (k - 1)`` (no truncation at 1;
  0 when that sum is below machine epsilon) and intervals and p-values use
  Student's t with k - 1 df instead of the normal.
* ``Q = sum (1/v) (y - ybar_FE)^2``, ``q_p`` from chi-square with k - 1 df.
* ``I^2 = 100 tau^2 / (tau^2 + s^2)`` and ``H^2 = (tau^2 + s^2) / s^2`` with the
  "typical" within-study variance ``s^2 = (k - 1) sum w / ((sum w)^2 - sum w^2)``,
  ``w = 1 / v`` (Higgins & Thompson 2002); they therefore depend on the tau^2 estimator.
* prediction interval ``estimate -/+ crit * sqrt(se^2 + tau^2)``, crit from
  z, or t(k - 1) under Hartung-Knapp (metafor's default ``pi.type``).

Boundaries (as metafor): tau^2 is never negative; at tau^2 = 0, I^2 = 0 and
H^2 = 1. With ``k = 1`` tau^2 = 0, Q = 0, ``q_p = 1``, I^2 = 0, H^2 = 1 and the
fit is the single estimate; Hartung-Knapp is then impossible (0 df), so it
falls back to z with a ``UserWarning``, as metafor does. ``k = 2`` works
with every estimator (Hartung-Knapp then uses t with 1 df, so intervals are wide).

Helpers pool on the logit scale and back-transform estimate, CI and prediction
interval with the inverse logit (``predict(fit, transf = plogis)``):

* :func:`pool_auc`: ``logit(AUC)`` with delta-method variance
  ``var(AUC) / (AUC (1 - AUC))^2``.
* :func:`pool_proportions`: ``logit(x / n)`` with variance
  ``1/x + 1/(n - x) = 1 / (n p (1 - p))``; when ``x = 0`` or ``x = n``,
  ``correction`` (default 0.5) is added to both x and n - x of that site only
  (metafor ``escalc(measure = "PLO")`` defaults ``add = 1/2, to = "only0"``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from scipy.special import expit, logit

from common.stats._checks import check_level, count, finite_1d, ratio, t_crit, z_crit
from common.stats.auc import AUCResult
from common.stats.tau2 import q_stat, tau2_dl, tau2_pm, tau2_reml

__all__ = [
    "MetaResult",
    "PooledEstimate",
    "pool_auc",
    "pool_proportions",
    "random_effects",
]

Method = Literal["REML", "DL", "PM"]
_METHODS = ("REML", "DL", "PM")
_EPS = float(np.finfo(float).eps)


@dataclass(frozen=True)
class MetaResult:
    """A random-effects fit; see the module docstring for every formula.

    ``statistic`` is z (or t with ``df = k - 1`` under Hartung-Knapp; ``df`` is
    None otherwise) for ``estimate = 0``, ``p`` its two-sided p-value.
    ``weights`` are the percentage weights ``100 w_i / sum w`` (metafor ``weights()``).
    """

    estimate: float
    se: float
    ci: tuple[float, float]
    prediction_interval: tuple[float, float]
    tau2: float
    i2: float
    h2: float
    q: float
    q_p: float
    statistic: float
    p: float
    df: int | None
    k: int
    method: str
    hartung_knapp: bool
    level: float
    weights: tuple[float, ...]

    @property
    def tau(self) -> float:
        """Between-site standard deviation ``sqrt(tau2)``."""
        return math.sqrt(self.tau2)


@dataclass(frozen=True)
class PooledEstimate:
    """A pooled probability (AUC or proportion) back-transformed from the logit scale.

    ``estimate``, ``ci`` and ``prediction_interval`` are ``expit`` of the
    logit-scale fit in ``logit`` (so the estimate is a median, not a mean, of
    the site distribution); ``logit`` holds tau^2, I^2, Q and the rest.
    """

    estimate: float
    ci: tuple[float, float]
    prediction_interval: tuple[float, float]
    logit: MetaResult


def _two_sided_p(statistic: float, df: int | None) -> float:
    if math.isnan(statistic):
        return math.nan
    a = abs(statistic)
    return float(2 * (stats.norm.sf(a) if df is None else stats.t.sf(a, df)))


def random_effects(
    estimates: ArrayLike,
    variances: ArrayLike,
    method: Method = "REML",
    hartung_knapp: bool = False,
    level: float = 0.95,
    *,
    threshold: float = 1e-12,
    max_iter: int = 1000,
) -> MetaResult:
    """Random-effects pooled estimate of ``estimates`` with sampling ``variances``.

    Equals metafor ``rma(yi, vi, method=method, test="knha" if hartung_knapp
    else "z", level=100*level, control=list(threshold=threshold))`` and its
    ``predict()`` (formulas and boundary rules in the module docstring).
    ``threshold`` and ``max_iter`` apply to REML only.

    Raises ``ValueError`` for k = 0, length mismatch, NaN/Inf, variances <= 0,
    an unknown method or a level outside (0, 1); ``RuntimeError`` if REML does
    not converge in ``max_iter`` steps.
    """
    y = np.asarray(estimates, dtype=float)
    if y.ndim != 1:
        raise ValueError(f"estimates must be 1-D, got shape {y.shape}")
    if y.size == 0:
        raise ValueError("random_effects needs at least one estimate (k = 0)")
    y = finite_1d(y, "estimates")
    v = np.asarray(variances, dtype=float)
    if v.shape != y.shape:
        raise ValueError(f"estimates {y.shape} and variances {v.shape} must have equal length")
    v = finite_1d(v, "variances")
    if (v < 0).any():
        raise ValueError("variances must be >= 0; got a negative sampling variance")
    if (v == 0).any():
        raise ValueError("variances must be > 0 (inverse-variance weights); got a zero variance")
    m = str(method).upper()
    if m not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    lv = check_level(level)
    if not (threshold > 0 and max_iter >= 1):
        raise ValueError("threshold must be > 0 and max_iter >= 1")
    k = int(y.size)

    if k == 1:
        tau2 = 0.0
        if hartung_knapp:
            warnings.warn(
                "Hartung-Knapp needs k >= 2 (t with k - 1 df); using z since k = 1 (as metafor)",
                UserWarning,
                stacklevel=2,
            )
            hartung_knapp = False
    elif m == "DL":
        tau2 = tau2_dl(y, v)
    elif m == "REML":
        tau2 = tau2_reml(y - y.mean(), v, threshold, max_iter)
    else:
        tau2 = tau2_pm(y - y.mean(), v)

    w = 1.0 / (v + tau2)
    sw = float(np.sum(w))
    est = float(np.sum(w * y) / sw)
    var_est = 1.0 / sw
    df: int | None = None
    if hartung_knapp:
        rss = float(np.sum(w * (y - est) ** 2))
        var_est *= 0.0 if rss <= _EPS else rss / (k - 1)
        df = k - 1
        crit = t_crit(lv, df)
    else:
        crit = z_crit(lv)
    se = math.sqrt(var_est)
    statistic = ratio(est, se, zero_over_zero=math.nan)
    p = _two_sided_p(statistic, df)

    if k > 1:
        w_fe = 1.0 / v
        sw_fe = float(np.sum(w_fe))
        q = max(0.0, q_stat(y, v, 0.0))
        q_p = float(stats.chi2.sf(q, k - 1))
        s2 = (k - 1) * sw_fe / (sw_fe**2 - float(np.sum(w_fe**2)))
        i2 = 100.0 * tau2 / (s2 + tau2)
        h2 = tau2 / s2 + 1.0
    else:
        q, q_p, i2, h2 = 0.0, 1.0, 0.0, 1.0

    half_pi = crit * math.sqrt(var_est + tau2)
    return MetaResult(
        estimate=est,
        se=se,
        ci=(est - crit * se, est + crit * se),
        prediction_interval=(est - half_pi, est + half_pi),
        tau2=tau2,
        i2=i2,
        h2=h2,
        q=q,
        q_p=q_p,
        statistic=statistic,
        p=p,
        df=df,
        k=k,
        method=m,
        hartung_knapp=hartung_knapp,
        level=lv,
        weights=tuple(float(x) for x in 100.0 * w / sw),
    )


def _back_transform(fit: MetaResult) -> PooledEstimate:
    def inv(t: tuple[float, float]) -> tuple[float, float]:
        return float(expit(t[0])), float(expit(t[1]))

    return PooledEstimate(
        estimate=float(expit(fit.estimate)),
        ci=inv(fit.ci),
        prediction_interval=inv(fit.prediction_interval),
        logit=fit,
    )


def pool_auc(
    aucs: Sequence[AUCResult],
    method: Method = "REML",
    hartung_knapp: bool = False,
    level: float = 0.95,
) -> PooledEstimate:
    """Pool site AUCs on the logit scale; back-transform estimate, CI and PI.

    Each site contributes ``logit(auc)`` with variance ``variance / (auc (1 - auc))^2``
    (delta method), then :func:`random_effects`. Sites send only
    ``AUCResult(auc, variance, n_pos, n_neg)``. Raises ``ValueError`` for an
    empty list, an AUC of exactly 0 or 1 (its logit is infinite) or a zero variance.
    """
    if len(aucs) == 0:
        raise ValueError("pool_auc needs at least one AUCResult (k = 0)")
    a = np.array([r.auc for r in aucs], dtype=float)
    var = np.array([r.variance for r in aucs], dtype=float)
    if ((a <= 0) | (a >= 1)).any():
        raise ValueError("an AUC of exactly 0 or 1 has an infinite logit; it cannot be pooled")
    if (var <= 0).any():
        raise ValueError("every AUC variance must be > 0 to be pooled")
    fit = random_effects(logit(a), var / (a * (1 - a)) ** 2, method, hartung_knapp, level)
    return _back_transform(fit)


def pool_proportions(
    events: ArrayLike,
    totals: ArrayLike,
    method: Method = "REML",
    hartung_knapp: bool = False,
    level: float = 0.95,
    correction: float = 0.5,
) -> PooledEstimate:
    """Pool site proportions ``events / totals`` on the logit scale; back-transform.

    Site i contributes ``log(x / (n - x))`` with variance ``1/x + 1/(n - x)``;
    ``correction`` is added to x and n - x of a site with ``x = 0`` or ``x = n``
    only (metafor ``escalc("PLO")``: ``add = 1/2, to = "only0"``). Raises
    ``ValueError`` for non-integer or negative counts, ``x > n``, ``n = 0``, a
    length mismatch, k = 0, or a 0/n site with ``correction = 0``.
    """
    x = np.asarray(events, dtype=float)
    n = np.asarray(totals, dtype=float)
    if x.ndim != 1 or x.shape != n.shape:
        raise ValueError(f"events {x.shape} and totals {n.shape} must be 1-D and equal in length")
    if x.size == 0:
        raise ValueError("pool_proportions needs at least one site (k = 0)")
    for i, (xi, ni) in enumerate(zip(x, n, strict=True)):
        count(xi, f"events[{i}]")
        if count(ni, f"totals[{i}]") == 0:
            raise ValueError(f"totals[{i}] is 0: a proportion needs n >= 1")
        if xi > ni:
            raise ValueError(f"events[{i}] ({xi:g}) exceeds totals[{i}] ({ni:g})")
    cc = float(correction)
    if not (math.isfinite(cc) and cc >= 0):
        raise ValueError(f"correction must be finite and >= 0, got {correction}")
    edge = (x == 0) | (x == n)
    if edge.any() and cc == 0:
        raise ValueError("a site with 0 or n events needs correction > 0 for a finite logit")
    xa = np.where(edge, x + cc, x)
    na = np.where(edge, n + 2 * cc, n)
    yi = np.log(xa / (na - xa))
    vi = 1.0 / xa + 1.0 / (na - xa)
    return _back_transform(random_effects(yi, vi, method, hartung_knapp, level))
