"""A model's performance estimated without labels, from calibrated probabilities.

Where pathology labels arrive late or never, a site can still say what AUC,
sensitivity and specificity its cases will most likely show, provided the model's
probabilities are calibrated on these cases (confidence-based performance
estimation, as monitoring libraries such as NannyML's CBPE do for tabular models).
The assumption, stated once: each case's label is a Bernoulli draw with the model's
(recalibrated) probability ``p_i``, independently of the others. When it holds,

- the expected number of malignant cases is ``sum p_i`` and, at a threshold ``t``,
  the expected true positives ``sum_{p_i >= t} p_i``; sensitivity is estimated by
  the ratio ``sum_{p_i >= t} p_i / sum p_i`` and specificity by
  ``sum_{p_i < t} (1 - p_i) / sum (1 - p_i)``;
- the AUC is the share of (malignant, benign) pairs ranked right; a pair ``(i, j)``
  of *different* cases is such a pair with probability ``p_i (1 - p_j)``, so

      AUC = sum_{i != j} p_i (1 - p_j) [s_i > s_j] / sum_{i != j} p_i (1 - p_j)

  (ties 1/2), the ratio of the expected concordant pairs to the expected pairs. The
  trapezoidal area under the expected ROC curve (TPR and FPR as the ratios above at
  every threshold), which CBPE reports, also counts each case paired with itself
  (``i = j``, weight ``p_i (1 - p_i)``, a tie): it is the same estimator biased
  towards 1/2 by O(1/n). Here the self-pairs are left out.

**Intervals.** Even a perfectly calibrated model's realised figures scatter around
these expectations because the labels are random. ``label_free_performance`` draws
label sets from the model's probabilities (parametric bootstrap), computes the
figures each draw would show, and reports their percentile interval: where the
figure the labels will show lies, *if the probabilities are calibrated here*. It
does not include the error of the calibration itself: a site whose case mix or
scanner has changed since the calibration was fitted breaks the assumption, which
is why drift is watched alongside (the monitoring's drift statistics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from common.stats._checks import check_level
from common.stats.proportions import Estimate


@dataclass(frozen=True)
class LabelFreeEstimate:
    """Expected figures with the interval their realised values fall in (see module)."""

    auc: Estimate
    sensitivity: Estimate  # at ``threshold``
    specificity: Estimate
    prevalence: Estimate  # expected share of malignant cases
    threshold: float
    n: int
    draws: int


def _probabilities(probs: ArrayLike) -> np.ndarray:
    p = np.asarray(probs, dtype=float).ravel()
    if p.size < 2:
        raise ValueError(f"label-free estimation needs at least 2 cases, got {p.size}")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ValueError("probabilities must be finite and in [0, 1]")
    return p


def expected_auc(probs: ArrayLike, scores: ArrayLike | None = None) -> float:
    """``sum_{i != j} p_i (1 - p_j) [s_i > s_j] / sum_{i != j} p_i (1 - p_j)``, ties 1/2.

    ``scores`` rank the cases (default: the probabilities themselves; a recalibration is
    monotone, so the raw scores rank the same). O(n log n) with cumulative sums over
    the cases in score order; nan when every case is certain of one class."""
    p = _probabilities(probs)
    s = p if scores is None else np.asarray(scores, dtype=float).ravel()
    if s.shape != p.shape:
        raise ValueError(f"scores has {s.size} values for {p.size} probabilities")
    q = 1.0 - p
    pairs = p.sum() * q.sum() - float(np.sum(p * q))  # i != j
    if pairs <= 0:
        return math.nan
    order = np.argsort(s, kind="stable")
    s_sorted, p_sorted, q_sorted = s[order], p[order], q[order]
    # ties: for every block of equal scores, the benign weight strictly below the block
    # and half of the block's own weight, less the case's own pairing with itself
    uniq, start = np.unique(s_sorted, return_index=True)
    block = np.searchsorted(uniq, s_sorted)
    q_block = np.add.reduceat(q_sorted, start)
    below = np.concatenate([[0.0], np.cumsum(q_block)[:-1]])
    benign_lower = below[block] + 0.5 * (q_block[block] - q_sorted)
    concordant = float(np.sum(p_sorted * benign_lower))
    return concordant / pairs


def expected_rates(probs: ArrayLike, threshold: float) -> tuple[float, float, float]:
    """Expected sensitivity and specificity at ``threshold`` (called malignant when
    p >= threshold) and the expected prevalence (ratios of expected counts)."""
    p = _probabilities(probs)
    called = p >= threshold
    pos, neg = p.sum(), (1.0 - p).sum()
    sens = float(p[called].sum() / pos) if pos > 0 else math.nan
    spec = float((1.0 - p)[~called].sum() / neg) if neg > 0 else math.nan
    return sens, spec, float(p.mean())


def _realised(y: np.ndarray, p: np.ndarray, threshold: float) -> np.ndarray:
    """For each label set (rows of ``y``): AUC, sensitivity, specificity, prevalence
    (nan where a draw has one class only)."""
    order = np.argsort(p, kind="stable")
    ps, ys = p[order], y[:, order]
    # midranks of the scores (ties share the mean rank)
    uniq, start, counts = np.unique(ps, return_index=True, return_counts=True)
    mid = (start + (counts + 1) / 2.0)[np.searchsorted(uniq, ps)]
    n_pos = ys.sum(axis=1)
    n_neg = ys.shape[1] - n_pos
    rank_sum = ys @ mid
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
        called = ps >= threshold
        sens = (ys[:, called]).sum(axis=1) / n_pos
        spec = (1 - ys[:, ~called]).sum(axis=1) / n_neg
    auc[(n_pos == 0) | (n_neg == 0)] = math.nan
    return np.column_stack([auc, sens, spec, n_pos / ys.shape[1]])


def label_free_performance(
    probs: ArrayLike,
    threshold: float,
    level: float = 0.95,
    draws: int = 2000,
    seed: int = 0,
) -> LabelFreeEstimate:
    """Expected AUC, sensitivity and specificity at ``threshold`` and prevalence from
    calibrated probabilities, each with the percentile interval of its realised value
    over ``draws`` label sets drawn from the probabilities (module docstring)."""
    lv = check_level(level)
    p = _probabilities(probs)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if draws < 100:
        raise ValueError(f"draws must be at least 100 for a percentile interval, got {draws}")
    rng = np.random.default_rng(seed)
    realised = np.empty((0, 4))
    for lo in range(0, draws, 500):  # bounded memory: 500 label sets at a time
        y = (rng.random((min(500, draws - lo), p.size)) < p).astype(np.int8)
        realised = np.vstack([realised, _realised(y, p, threshold)])
    sens, spec, prev = expected_rates(p, threshold)
    point = (expected_auc(p), sens, spec, prev)
    tail = 100 * (1 - lv) / 2

    def estimate(col: int) -> Estimate:
        vals = realised[:, col][np.isfinite(realised[:, col])]
        if not vals.size or not math.isfinite(point[col]):
            return Estimate(point[col], math.nan, math.nan)
        lo, hi = np.percentile(vals, [tail, 100 - tail])
        return Estimate(point[col], float(lo), float(hi))

    return LabelFreeEstimate(
        auc=estimate(0),
        sensitivity=estimate(1),
        specificity=estimate(2),
        prevalence=estimate(3),
        threshold=threshold,
        n=int(p.size),
        draws=draws,
    )
