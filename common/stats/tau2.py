"""Estimators of the between-site variance tau^2 of the random-effects model
(:func:`common.stats.meta.random_effects`), as R metafor 3.8 ``rma()``:

  - ``"DL"`` (DerSimonian & Laird 1986):
    ``max(0, (Q - (k - 1)) / (sum w - sum w^2 / sum w))`` with ``w = 1 / v``.
  - ``"REML"``: Fisher scoring started at the Hedges (HE) estimate
    ``max(0, (sum (y - ybar)^2 - (k - 1)/k sum v) / (k - 1))``; each step is
    ``(y'PPy - tr P) / tr PP`` with ``P = W - W 1 1'W / sum W``,
    ``W = diag(1 / (v + tau^2))``, halved while it would make tau^2 negative;
    it stops when tau^2 changes by at most ``threshold`` (metafor's default is
    1e-5; ours 1e-12, which equals metafor run with
    ``control = list(threshold = 1e-12)``). metafor's check that tau^2 = 0 does
    not have a higher restricted likelihood (``ll0check``) is applied too.
  - ``"PM"`` (Paule & Mandel 1982): tau^2 solving the generalised Q equation
    ``sum w_i (y_i - mu_w)^2 = k - 1`` with ``w = 1 / (v + tau^2)``, and 0 when
    Q at tau^2 = 0 is already below ``k - 1``. metafor uses ``uniroot`` on
    [0, 100] with tolerance ~1.2e-4; we use Brent's method to ~1e-14 and widen
    the bracket past 100 when needed instead of failing, so we equal
    ``control = list(tol = 1e-12)``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import optimize

_EPS = float(np.finfo(float).eps)
_LL0_TOL = _EPS**0.25  # metafor's control$tol, used by its ll0check


def q_stat(y: np.ndarray, v: np.ndarray, tau2: float) -> float:
    """Generalised Q: ``sum w (y - mu_w)^2`` with ``w = 1 / (v + tau2)``."""
    w = 1.0 / (v + tau2)
    mu = float(np.sum(w * y) / np.sum(w))
    return float(np.sum(w * (y - mu) ** 2))


def _reml_loglik(y: np.ndarray, v: np.ndarray, tau2: float) -> float:
    """Restricted log-likelihood of the intercept-only model (metafor's ll0check form)."""
    k = len(y)
    w = 1.0 / (v + tau2)
    sw = float(np.sum(w))
    mu = float(np.sum(w * y) / sw)
    rss = float(np.sum(w * (y - mu) ** 2))
    return float(
        -0.5 * (k - 1) * math.log(2 * math.pi)
        - 0.5 * np.sum(np.log(v + tau2))
        - 0.5 * math.log(sw)
        - 0.5 * rss
    )


def tau2_dl(y: np.ndarray, v: np.ndarray) -> float:
    k = len(y)
    w = 1.0 / v
    sw = float(np.sum(w))
    q = q_stat(y, v, 0.0)
    return max(0.0, (q - (k - 1)) / (sw - float(np.sum(w**2)) / sw))


def tau2_reml(y: np.ndarray, v: np.ndarray, threshold: float, max_iter: int) -> float:
    k = len(y)
    # Hedges' estimator as the starting value, as metafor does for REML.
    tau2 = max(0.0, (float(np.sum((y - y.mean()) ** 2)) - float(np.sum(v)) * (k - 1) / k) / (k - 1))
    change = threshold + 1.0
    it = 0
    while change > threshold:
        it += 1
        if it > max_iter:  # oscillating steps: maximise the restricted likelihood directly
            return _tau2_reml_direct(y, v, threshold)
        old = tau2
        w = 1.0 / (v + tau2)
        sw = float(np.sum(w))
        py = w * (y - float(np.sum(w * y)) / sw)  # P y
        tr_p = sw - float(np.sum(w**2)) / sw
        tr_pp = float(np.sum(w**2)) - 2 * float(np.sum(w**3)) / sw + (float(np.sum(w**2)) / sw) ** 2
        adj = (float(np.sum(py**2)) - tr_p) / tr_pp
        if not math.isfinite(adj):
            adj = 0.0
        while tau2 + adj < 0.0:  # step halving; ends (adj underflows to 0 at worst)
            adj /= 2.0
        tau2 = tau2 + adj
        change = abs(old - tau2)
    if tau2 > threshold and _reml_loglik(y, v, 0.0) - _reml_loglik(y, v, tau2) > _LL0_TOL:
        warnings.warn(
            "REML Fisher scoring may have stopped at a local maximum; tau2 set to 0 (as metafor)",
            UserWarning,
            stacklevel=3,
        )
        tau2 = 0.0
    return max(0.0, tau2)


def _reml_score(y: np.ndarray, v: np.ndarray, tau2: float) -> float:
    """Twice the derivative of the restricted log-likelihood in tau^2: y'PPy - tr P."""
    w = 1.0 / (v + tau2)
    sw = float(np.sum(w))
    py = w * (y - float(np.sum(w * y)) / sw)
    return float(np.sum(py**2)) - (sw - float(np.sum(w**2)) / sw)


def _tau2_reml_direct(y: np.ndarray, v: np.ndarray, threshold: float) -> float:
    """REML tau^2 as the root of the restricted-likelihood score equation.

    The fallback when Fisher scoring oscillates instead of converging (seen for
    small k with one very precise, outlying site). The score is positive at 0
    when the maximum is interior; Brent's method then finds its root to
    machine precision (a direct maximisation could only locate the flat
    maximum to about the square root of it).
    """
    if _reml_score(y, v, 0.0) <= 0.0:
        return 0.0
    upper = 10.0 * (float(np.ptp(y)) ** 2 + float(np.max(v)))
    while _reml_score(y, v, upper) > 0.0:
        upper *= 10.0
    tau2 = float(
        optimize.brentq(lambda t: _reml_score(y, v, t), 0.0, upper, xtol=1e-15, rtol=1e-15)
    )
    warnings.warn(
        "REML Fisher scoring did not converge; tau2 from the root of the REML score equation",
        UserWarning,
        stacklevel=4,
    )
    return tau2


def tau2_pm(y: np.ndarray, v: np.ndarray) -> float:
    target = len(y) - 1

    def f(t: float) -> float:
        return q_stat(y, v, t) - target

    if f(0.0) <= 0.0:
        return 0.0
    upper = 100.0  # metafor's tau2.max; widened until the root is bracketed
    while f(upper) > 0.0:
        upper *= 2.0
        if upper > 1e12:
            raise RuntimeError("Paule-Mandel: could not bracket tau2 below 1e12")
    root = optimize.brentq(f, 0.0, upper, xtol=1e-14, rtol=4 * _EPS, maxiter=1000)
    return max(0.0, float(root))
