"""Area under the ROC curve with DeLong's variance (DeLong et al. 1988).

Uses the midrank formulation of Sun & Xu (2014), which gives exactly the
structural components of DeLong's method with ties counted one half, as
R pROC does. Higher scores mean "more likely positive" (pROC direction "<").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats


@dataclass(frozen=True)
class AUCResult:
    """An AUC with its DeLong variance; ``ci`` is the Wald interval pROC reports."""

    auc: float
    variance: float
    n_pos: int
    n_neg: int

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        """Wald interval on the AUC scale, clipped to [0, 1] (pROC ``ci.auc(method="delong")``)."""
        z = stats.norm.ppf(0.5 + level / 2)
        half = z * np.sqrt(self.variance)
        return max(0.0, self.auc - half), min(1.0, self.auc + half)


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given the mean of the ranks they span."""
    return stats.rankdata(x, method="average")


def delong_auc(y_true: ArrayLike, y_score: ArrayLike) -> AUCResult:
    """AUC of ``y_score`` for binary ``y_true`` (1 = positive) with DeLong variance."""
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=float)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"y_true {y.shape} and y_score {s.shape} must be 1-D and equal in length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must contain only 0 and 1")
    if not np.isfinite(s).all():
        raise ValueError("y_score contains NaN or Inf")
    pos, neg = s[y == 1], s[y == 0]
    m, n = len(pos), len(neg)
    if m < 2 or n < 2:
        raise ValueError(f"need at least 2 positives and 2 negatives, got {m} and {n}")
    combined = midranks(np.concatenate([pos, neg]))
    auc = (combined[:m].sum() - m * (m + 1) / 2) / (m * n)
    v10 = (combined[:m] - midranks(pos)) / n  # P(score of a negative < this positive)
    v01 = 1.0 - (combined[m:] - midranks(neg)) / m  # P(this negative < a positive's score)
    variance = v10.var(ddof=1) / m + v01.var(ddof=1) / n
    return AUCResult(float(auc), float(variance), m, n)
