"""Area under the ROC curve with DeLong's variance, and DeLong's tests.

Follows R pROC 1.18 (Robin et al. 2011) with ``direction = "<"``: higher scores
mean "more likely positive", label 1 is the positive class (pROC's "case").

* AUC: the Mann-Whitney statistic, ties between a positive and a negative count
  one half.
* Variance: DeLong, DeLong & Clarke-Pearson (1988). With placements
  ``V10_i`` (share of negatives scored below positive ``i``, ties 1/2) and
  ``V01_j`` (share of positives scored above negative ``j``)::

      var(AUC) = S10 / m + S01 / n

  where ``S10``, ``S01`` are the sample variances (divisor m-1, n-1) of the
  placements and m, n the numbers of positives and negatives (pROC
  ``var(roc, method="delong")``). Placements come from midranks (Sun & Xu 2014).
* Wald interval ``AUC -/+ z * sqrt(var)`` clipped to [0, 1]
  (pROC ``ci.auc(method="delong")``).
* Paired test (same cases, two scores): ``z = (AUC_a - AUC_b) / sqrt(L S L')``
  with ``S`` the 2x2 DeLong covariance and ``L = (1, -1)``; two-sided normal p
  (pROC ``roc.test(paired=TRUE, method="delong")``).
* Unpaired test (two independent samples, e.g. two sites): pROC's
  ``delong.unpaired.test``::

      D  = (AUC_1 - AUC_2) / sqrt(V_1 + V_2)
      df = (V_1 + V_2)^2 / (V_1^2 / (N_1 - 1) + V_2^2 / (N_2 - 1))

  with ``V`` the DeLong variances and ``N = n_pos + n_neg`` each sample's total
  size; two-sided p from Student's t with ``df`` degrees of freedom
  (pROC ``roc.test(paired=FALSE, method="delong")``). It needs only site
  summaries (AUC, variance, n_pos, n_neg), so a server can run it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from common.stats._checks import labels, matched, ratio, z_crit

__all__ = [
    "AUCComparison",
    "AUCResult",
    "DeLongTestResult",
    "compare_auc",
    "delong_auc",
    "delong_test",
    "midranks",
]


@dataclass(frozen=True)
class AUCResult:
    """An AUC with its DeLong variance and the sample sizes it came from.

    Built by :func:`delong_auc` from per-case data, or directly from a site's
    summary (``AUCResult(auc, variance, n_pos, n_neg)``) on the server. Sample
    sizes of 0 mean "unknown": :meth:`ci` still works, :func:`compare_auc` does not.
    """

    auc: float
    variance: float
    n_pos: int
    n_neg: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.auc) and 0.0 <= self.auc <= 1.0):
            raise ValueError(f"auc must be a finite number in [0, 1], got {self.auc}")
        if not (math.isfinite(self.variance) and self.variance >= 0.0):
            raise ValueError(f"variance must be finite and >= 0, got {self.variance}")
        if self.n_pos < 0 or self.n_neg < 0:
            raise ValueError(f"n_pos and n_neg must be >= 0, got {self.n_pos}, {self.n_neg}")

    @property
    def se(self) -> float:
        """Standard error, ``sqrt(variance)``."""
        return math.sqrt(self.variance)

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        """Wald interval on the AUC scale, clipped to [0, 1] (pROC ``ci.auc(method="delong")``)."""
        half = z_crit(level) * self.se
        return max(0.0, self.auc - half), min(1.0, self.auc + half)


@dataclass(frozen=True)
class DeLongTestResult:
    """Paired DeLong comparison of two scores on the same cases (``a`` minus ``b``)."""

    auc_a: float
    auc_b: float
    difference: float
    se: float
    z: float
    p: float

    @property
    def statistic(self) -> float:
        """The Z statistic (pROC's ``statistic``), same as :attr:`z`."""
        return self.z

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        """Wald interval of the AUC difference (pROC ``roc.test(...)$conf.int``), not clipped."""
        half = z_crit(level) * self.se
        return self.difference - half, self.difference + half


@dataclass(frozen=True)
class AUCComparison:
    """Unpaired DeLong comparison of two AUCs (``a`` minus ``b``), pROC's t form."""

    difference: float
    se: float
    statistic: float
    df: float
    p: float

    @property
    def z(self) -> float:
        """The D statistic (pROC names it D; it is referred to Student's t with :attr:`df`)."""
        return self.statistic


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given the mean of the ranks they span."""
    return np.asarray(stats.rankdata(x, method="average"), dtype=float)


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong placements ``V10`` (per positive) and ``V01`` (per negative)."""
    m, n = len(pos), len(neg)
    combined = midranks(np.concatenate([pos, neg]))
    auc = (combined[:m].sum() - m * (m + 1) / 2) / (m * n)
    v10 = (combined[:m] - midranks(pos)) / n  # share of negatives below this positive
    v01 = 1.0 - (combined[m:] - midranks(neg)) / m  # share of positives above this negative
    return float(auc), v10, v01


def _split(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) < 2 or len(neg) < 2:
        raise ValueError(
            f"need at least 2 positives and 2 negatives, got {len(pos)} and {len(neg)}"
        )
    return pos, neg


def delong_auc(y_true: ArrayLike, y_score: ArrayLike) -> AUCResult:
    """AUC of ``y_score`` for binary ``y_true`` (1 = positive) with DeLong variance.

    Equals pROC ``auc(roc(y, s, direction="<"))`` and ``var(roc, method="delong")``.
    Raises ``ValueError`` on length mismatch, labels other than 0/1, NaN/Inf, or
    fewer than 2 positives or 2 negatives (the variance needs both).
    """
    y = labels(y_true)
    s = matched(y, y_score, "y_score")
    pos, neg = _split(y, s)
    auc, v10, v01 = _placements(pos, neg)
    variance = v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)
    return AUCResult(auc, float(variance), len(pos), len(neg))


def delong_test(y_true: ArrayLike, score_a: ArrayLike, score_b: ArrayLike) -> DeLongTestResult:
    """Paired DeLong test of AUC(a) = AUC(b) for two scores of the same cases.

    pROC ``roc.test(roc_a, roc_b, paired=TRUE, method="delong")``: two-sided p
    from the standard normal. When both AUCs are equal and the covariance of the
    difference is zero (e.g. identical scores) the result is ``z = 0, p = 1``,
    as in pROC.
    """
    y = labels(y_true)
    a = matched(y, score_a, "score_a")
    b = matched(y, score_b, "score_b")
    pos_a, neg_a = _split(y, a)
    pos_b, neg_b = _split(y, b)
    m, n = len(pos_a), len(neg_a)
    auc_a, v10_a, v01_a = _placements(pos_a, neg_a)
    auc_b, v10_b, v01_b = _placements(pos_b, neg_b)
    s10 = np.cov(np.vstack([v10_a, v10_b]), ddof=1)
    s01 = np.cov(np.vstack([v01_a, v01_b]), ddof=1)
    cov = s10 / m + s01 / n
    var_diff = max(0.0, float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]))
    diff = auc_a - auc_b
    se = math.sqrt(var_diff)
    z = ratio(diff, se, zero_over_zero=0.0)  # pROC: 0/0 gives Z = 0
    p = float(2 * stats.norm.sf(abs(z)))
    return DeLongTestResult(auc_a, auc_b, diff, se, z, p)


def compare_auc(a: AUCResult, b: AUCResult) -> AUCComparison:
    """Unpaired DeLong test of two AUCs from independent samples (e.g. two sites).

    pROC ``roc.test(roc_a, roc_b, paired=FALSE, method="delong")``::

        D  = (auc_a - auc_b) / sqrt(var_a + var_b)
        df = (var_a + var_b)^2 / (var_a^2 / (N_a - 1) + var_b^2 / (N_b - 1)),  N = n_pos + n_neg
        p  = 2 * P(T_df > |D|)

    Needs only the summaries, so it runs on the server. Raises ``ValueError``
    when a sample size is unknown (< 2 positives or negatives) or both variances
    are zero (the test is undefined; pROC returns NaN).
    """
    for name, r in (("a", a), ("b", b)):
        if r.n_pos < 2 or r.n_neg < 2:
            raise ValueError(
                f"AUCResult {name} needs n_pos >= 2 and n_neg >= 2 for the df, "
                f"got {r.n_pos} and {r.n_neg}"
            )
    total = a.variance + b.variance
    if total <= 0.0:
        raise ValueError("both AUC variances are zero: the unpaired DeLong test is undefined")
    diff = a.auc - b.auc
    se = math.sqrt(total)
    d = diff / se
    n_a, n_b = a.n_pos + a.n_neg, b.n_pos + b.n_neg
    df = total**2 / (a.variance**2 / (n_a - 1) + b.variance**2 / (n_b - 1))
    p = float(2 * stats.t.sf(abs(d), df))
    return AUCComparison(diff, se, d, float(df), p)
