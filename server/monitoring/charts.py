"""The monitoring charts' statistics (``server.monitoring.analysis`` says how they are
used): the predictive-t standardisation against a reference of few windows, the pooled
embedding moments and Hotelling's T², the Jensen-Shannon divergence of intensity
histograms, and the self-starting CUSUM whose reference a change cannot dilute."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from scipy import stats
from scipy.spatial.distance import jensenshannon

from common.stats.change_detection import ChartResult, Reference, Side, cusum

Z_CLIP = 8.0  # |z| beyond this is an alarm either way; keeps tail probabilities finite
JS_FLOOR = 1e-12  # the intensity chart standardises log divergences
T = TypeVar("T")


# ---- the statistics ---------------------------------------------------------------------------


def predictive_z(x: float, reference: Sequence[float]) -> float:
    """``x`` standardised against ``reference`` (n >= 2 values, sd > 0) with the predictive t
    (module docstring): N(0, 1) for a new value from the reference's normal distribution."""
    ref = np.asarray(reference, dtype=float)
    n, sd = ref.size, float(ref.std(ddof=1))
    if sd == 0:  # a reference that never varied: any other value is off the scale
        return float(np.sign(x - ref.mean()) * Z_CLIP)
    u = (x - ref.mean()) / (sd * math.sqrt(1 + 1 / n))
    # through the smaller tail, so that neither probability rounds to 0 or 1
    z = -stats.norm.ppf(stats.t.sf(u, n - 1)) if u > 0 else stats.norm.ppf(stats.t.cdf(u, n - 1))
    return float(np.clip(z, -Z_CLIP, Z_CLIP))


def pooled_moments(
    parts: Sequence[tuple[int, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, int]:
    """The pooled mean, covariance (ddof 1) and count of groups ``(n_i, mean_i, cov_i)``:
    within ``sum (n_i - 1) C_i`` plus between ``sum n_i (m_i - m)(m_i - m)^T``."""
    n0 = sum(n for n, _, _ in parts)
    m0 = np.sum([n * m for n, m, _ in parts], axis=0) / n0
    scatter = sum((n - 1) * c + n * np.outer(m - m0, m - m0) for n, m, c in parts)
    return m0, np.asarray(scatter) / (n0 - 1), n0


def hotelling_t2(
    mean: np.ndarray, n: int, m0: np.ndarray, s0: np.ndarray, n0: int
) -> tuple[float, float]:
    """Hotelling's T² of a window mean of ``n`` cases against a reference mean of ``n0``,
    ``d' S0^-1 d / (1/n + 1/n0)``, and the Mahalanobis distance ``sqrt(d' S0^-1 d)``. A
    singular ``s0`` gets a ridge of 1e-9 times its mean variance."""
    d = np.asarray(mean, dtype=float) - m0
    s = np.asarray(s0, dtype=float)
    if np.linalg.matrix_rank(s) < len(s):
        s = s + 1e-9 * np.trace(s) / len(s) * np.eye(len(s))
    q = float(d @ np.linalg.solve(s, d))
    return q / (1 / n + 1 / n0), math.sqrt(max(q, 0.0))


def js_divergence(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean over channels of the Jensen-Shannon divergence (base 2, on [0, 1]) between the
    histograms ``a`` and ``b`` (counts, ``(..., channels, bins)``), each normalised."""
    return np.clip(np.mean(jensenshannon(a, b, base=2, axis=-1) ** 2, axis=-1), 0.0, 1.0)


# ---- the charts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """A charted window: its value, z, and the reference level and size it was judged by."""

    value: float
    z: float
    level: float
    n_ref: int


# a window whose z lies beyond this on the alarm's side does not join its chart's reference
# (in control that leaves out 0.6 % of the windows)
JOIN_LIMIT = 2.5


def since_index(result: ChartResult, alarm: int) -> int:
    """The window after the one where the chart's sum was last 0 (or restarted) before
    ``alarm``: the estimated start of the change."""
    for j in range(alarm - 1, -1, -1):
        if result.statistic[j] == 0 or j in result.alarms:
            return j + 1
    return 0


def self_starting(
    xs: Sequence[T],
    initial: Sequence[T],
    point: Callable[[list[T], T], Point],
    k: float,
    h: float,
    side: Side,
) -> tuple[list[Point], ChartResult]:
    """The CUSUM of ``xs``, each window judged by ``point`` against ``initial`` plus the
    earlier windows that joined it (module docstring): a window joins unless it lies beyond
    ``JOIN_LIMIT`` on the alarm's side, and at the first alarm the reference goes back to
    what it was where the change began and stays there."""
    ref = Reference(0.0, 1.0, len(initial))  # the z's are already standardised
    reference = list(initial)
    kept: list[list[T]] = []  # the reference each window was judged against
    points: list[Point] = []
    up = down = 0.0
    began = 0  # the first window since the alarm side's sum was last 0
    frozen = False
    for t, x in enumerate(xs):
        kept.append(list(reference))
        p = point(list(reference), x)
        points.append(p)
        up = max(0.0, up + p.z - k) if side != "lower" else 0.0
        down = max(0.0, down - p.z - k) if side != "upper" else 0.0
        if up > h or down > h:  # an alarm: the sums restart, as ``cusum`` does
            up = down = 0.0
            if not frozen:
                reference, frozen = kept[began], True
            began = t + 1
            continue
        if up == 0.0 and down == 0.0:
            began = t + 1
        beyond = (side != "lower" and p.z > JOIN_LIMIT) or (side != "upper" and p.z < -JOIN_LIMIT)
        if not frozen and not beyond:
            reference.append(x)
    return points, cusum([p.z for p in points], ref, k, h, side)


def clip_z(z: float) -> float:
    return float(np.clip(z, -Z_CLIP, Z_CLIP))


def est_point(ref: list[float], x: float) -> Point:
    return Point(x, predictive_z(x, ref), float(np.mean(ref)), len(ref))


# an AUC's variance is floored here: a window whose cases separate perfectly has a DeLong
# variance of 0, and its weight would be infinite (0.001 standard error at the floor)
AUC_VAR_FLOOR = 1e-6


def weighted_auc(aucs: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The inverse-variance weighted mean of ``(auc, variance)`` pairs and its variance."""
    weights = np.array([1 / max(v, AUC_VAR_FLOOR) for _, v in aucs])
    return float(weights @ [a for a, _ in aucs] / weights.sum()), float(1 / weights.sum())


def auc_point(ref: list[tuple[float, float]], x: tuple[float, float]) -> Point:
    mu0, var0 = weighted_auc(ref)
    z = (x[0] - mu0) / math.sqrt(max(x[1], AUC_VAR_FLOOR) + var0)
    return Point(x[0], clip_z(z), mu0, len(ref))


def intensity_point(ref: list[np.ndarray], x: np.ndarray) -> Point:
    hists = np.stack(ref)
    pool = hists.sum(axis=0)
    loo = js_divergence(hists, pool - hists)  # each reference window against the others
    value = float(js_divergence(x, pool))
    # divergences are right-skewed (sums of squares, near chi-square): charted as logs
    z = predictive_z(math.log(max(value, JS_FLOOR)), np.log(np.maximum(loo, JS_FLOOR)))
    return Point(value, z, float(loo.mean()), len(ref))


@dataclass(frozen=True)
class ChartInput:
    """One statistic's reference values, its charted windows' values and how a window is
    judged; ``not_run`` says why the chart cannot run (empty when it can)."""

    statistic: str
    initial: list[Any]
    charted: list[tuple[str, Any]]
    point: Callable[[list[Any], Any], Point]
    not_run: str = ""
    how: str = "self-starting CUSUM"
    fixed: bool = False  # judge every window against ``initial`` alone (a known variance)
