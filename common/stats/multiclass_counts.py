"""Three-class decisions and their counts: argmax and per-class threshold rules, the
confusion matrix under the small-cell rule, per-class sensitivity and specificity
(:mod:`common.stats.multiclass` has the AUCs and their covariance)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from common.stats._checks import check_level, count
from common.stats.multiclass import _class_labels, _scores
from common.stats.proportions import Estimate, proportion

# ---- decision rules and the confusion matrix -----------------------------------------------


def argmax_rule(probs: ArrayLike) -> np.ndarray:
    """Predicted class = the column of the largest score; a tie goes to the lowest index."""
    return np.argmax(_scores(probs), axis=1)


def threshold_rule(probs: ArrayLike, thresholds: Sequence[float]) -> np.ndarray:
    """Predicted class under per-class thresholds (chosen elsewhere).

    Class k is a candidate when ``probs[:, k] >= thresholds[k]``. One candidate is
    predicted; among several, the one with the largest score; with none, the argmax
    over all classes. Remaining ties go to the lowest index.
    """
    p = _scores(probs)
    t = np.asarray(thresholds, dtype=float)
    if t.shape != (p.shape[1],) or not np.isfinite(t).all():
        raise ValueError(
            f"thresholds must be {p.shape[1]} finite values (one per class), got shape {t.shape}"
        )
    above = p >= t
    masked = np.where(above, p, -np.inf)
    return np.where(above.any(axis=1), np.argmax(masked, axis=1), np.argmax(p, axis=1))


def confusion_counts(labels: ArrayLike, predicted: ArrayLike, n_classes: int) -> np.ndarray:
    """Full ``(K, K)`` counts, rows true class, columns predicted: for use at the site only."""
    kk = count(n_classes, "n_classes")
    if kk < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    y = _class_labels(labels, kk)
    yhat = _class_labels(predicted, kk, "predicted")
    if y.shape != yhat.shape:
        raise ValueError(f"labels {y.shape} and predicted {yhat.shape} must have equal length")
    return np.bincount(y * kk + yhat, minlength=kk * kk).reshape(kk, kk)


@dataclass(frozen=True)
class ConfusionMatrix:
    """K x K counts (rows true, columns predicted) that may leave a site.

    A cell of 1..min_cell-1 cases is None; ``suppressed`` says whether any is.
    Row and column totals known elsewhere (e.g. the class counts of an
    :class:`OvRAUCResult`) can restore a lone suppressed cell of a row or column.
    """

    counts: tuple[tuple[int | None, ...], ...]
    min_cell: int
    suppressed: bool


def confusion_matrix(
    labels: ArrayLike, predicted: ArrayLike, n_classes: int, min_cell: int
) -> ConfusionMatrix:
    """Confusion matrix under the small-cell rule (k = ``min_cell``, policy.min-cell).

    Cells with 1..k-1 cases become None; zeros stay 0 (docs/privacy.md,
    "Disclosure model": an empty cell discloses nothing). Raises ``ValueError``
    for labels or predictions outside ``0..n_classes-1`` or a negative ``min_cell``.
    """
    k = count(min_cell, "min_cell")
    full = confusion_counts(labels, predicted, n_classes)
    hidden = (full > 0) & (full < k)
    cells = tuple(
        tuple(None if h else int(c) for c, h in zip(row, hrow, strict=True))
        for row, hrow in zip(full, hidden, strict=True)
    )
    return ConfusionMatrix(cells, k, bool(hidden.any()))


@dataclass(frozen=True)
class ClassAccuracy:
    """One class's OvR sensitivity (of its positives) and specificity (of the rest), Wilson CIs."""

    cls: int
    sensitivity: Estimate
    specificity: Estimate
    n_pos: int
    n_neg: int


def per_class_accuracy(counts: ArrayLike, level: float = 0.95) -> tuple[ClassAccuracy, ...]:
    """OvR sensitivity and specificity of each class from the full (unsuppressed) counts.

    ``counts`` is :func:`confusion_counts`' matrix. For class k: TP = ``C[k, k]``,
    positives = row k, TN = cases of other classes not predicted k; Wilson
    intervals (:func:`common.stats.proportions.wilson_ci`), NaN when a class has
    no positive (or no negative).
    """
    lv = check_level(level)
    c = np.asarray(counts)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] < 2:
        raise ValueError(f"counts must be a square K x K matrix with K >= 2, got {c.shape}")
    if not (np.isfinite(c).all() and (c >= 0).all() and (c == np.round(c)).all()):
        raise ValueError("counts must be non-negative integers (the full, unsuppressed matrix)")
    c = c.astype(int)
    total = int(c.sum())
    out = []
    for k in range(c.shape[0]):
        pos = int(c[k].sum())
        tp = int(c[k, k])
        tn = total - pos - int(c[:, k].sum()) + tp
        neg = total - pos
        out.append(ClassAccuracy(k, proportion(tp, pos, lv), proportion(tn, neg, lv), pos, neg))
    return tuple(out)
