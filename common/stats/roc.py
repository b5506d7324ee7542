"""ROC curve as sensitivities on a fixed false-positive-rate grid.

A site can send its curve as ``len(grid)`` numbers instead of per-case scores.
The empirical ROC (pROC's ``roc(..., direction="<")``: a case is called positive
when its score is >= the threshold, for every distinct score, plus the point
(0, 0)) has points ``(FPR_j, TPR_j)``. On the grid we report the step
interpolation::

    TPR(t) = max { TPR_j : FPR_j <= t + 1e-12 }

the best sensitivity any threshold reaches without exceeding false-positive
rate ``t`` (the tolerance absorbs floating-point grids such as 0.05 * k). This
is a conservative (lower) step curve: it never joins points by straight lines.
Because every site uses the same grid, a server can average curves vertically
(Fawcett 2006) without per-case data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from common.stats._checks import labels, matched

__all__ = ["DEFAULT_FPR_GRID", "RocGrid", "roc_at_fpr"]

DEFAULT_FPR_GRID: tuple[float, ...] = tuple(float(i) / 100 for i in range(101))
"""0, 0.01, ..., 1: the grid used when none is given."""

_TOL = 1e-12


@dataclass(frozen=True)
class RocGrid:
    """Sensitivity (``tpr``) at each false-positive rate of ``fpr``, with the sample sizes."""

    fpr: tuple[float, ...]
    tpr: tuple[float, ...]
    n_pos: int
    n_neg: int


def roc_at_fpr(
    y_true: ArrayLike, y_score: ArrayLike, fpr_grid: ArrayLike = DEFAULT_FPR_GRID
) -> RocGrid:
    """Empirical sensitivity at each false-positive rate in ``fpr_grid`` (step rule above).

    Raises ``ValueError`` on bad labels or scores, on a grid outside [0, 1] or
    not 1-D, and when there is no positive or no negative case.
    """
    y = labels(y_true)
    s = matched(y, y_score, "y_score")
    grid = np.asarray(fpr_grid, dtype=float)
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError("fpr_grid must be a non-empty 1-D sequence")
    if not np.isfinite(grid).all() or grid.min() < 0.0 or grid.max() > 1.0:
        raise ValueError("fpr_grid values must lie in [0, 1]")
    m, n = int((y == 1).sum()), int((y == 0).sum())
    if m == 0 or n == 0:
        raise ValueError(f"need at least 1 positive and 1 negative, got {m} and {n}")
    thresholds = np.unique(s)[::-1]  # descending: each point calls s >= threshold positive
    pos_sorted = np.sort(s[y == 1])
    neg_sorted = np.sort(s[y == 0])
    tp = m - np.searchsorted(pos_sorted, thresholds, side="left")
    fp = n - np.searchsorted(neg_sorted, thresholds, side="left")
    tpr = np.concatenate([[0.0], tp / m])
    fpr = np.concatenate([[0.0], fp / n])
    # fpr is non-decreasing along the points, and so is tpr: the last point with
    # FPR <= t has the largest TPR among them.
    idx = np.searchsorted(fpr, grid + _TOL, side="right") - 1
    return RocGrid(
        fpr=tuple(float(v) for v in grid),
        tpr=tuple(float(v) for v in tpr[idx]),
        n_pos=m,
        n_neg=n,
    )
