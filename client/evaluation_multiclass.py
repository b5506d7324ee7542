"""Site-side evaluation of a three-class model (``lesion-type``: 0 benign, 1 primary
malignant, 2 metastasis): per-case labels and softmax rows -> a ``SiteSummary``.

The summary holds two views of the same cases. The *binary view* (benign vs
malignant: ``labels > 0`` against ``probs[:, 1] + probs[:, 2]``) fills every binary
field exactly as ``client.evaluation.classification_summary`` does, so the binary
report, pooling and calibration read a lesion-type site like a malignancy site. The
*per-class view* adds class counts, argmax counts, the confusion matrix under
complementary suppression, one-vs-rest AUCs with their DeLong covariance
(``common.stats.multiclass.ovr_auc``), per-class calibration bins under the
small-cell rule and the multiclass Brier score (Brier 1950).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from client.evaluation import classification_summary, small_cell_calibration
from common.config_sections import EvalConfig
from common.keys import LESION_CLASSES
from common.stats.multiclass import ovr_auc
from common.stats.multiclass_counts import argmax_rule, confusion_counts, confusion_matrix
from common.summary import SUPPRESSED_CELL, SiteSummary

N_CLASSES = len(LESION_CLASSES)  # lesion-type: 0 benign, 1 primary malignant, 2 metastasis


def lesion_type_summary(
    labels: np.ndarray,
    probs: np.ndarray,
    ev: EvalConfig,
    images: torch.Tensor | None = None,
    embedding: np.ndarray | None = None,
    min_cell: int = 1,
) -> SiteSummary:
    """The binary view (benign vs malignant) plus the per-class view of a 3-class model.

    ``labels``: (N,) classes 0..2; ``probs``: (N, 3) softmax rows. ``class_n`` is always
    sent; the per-class part only when N >= ``ev.min_cases`` and every class has at
    least ``ev.min_per_class`` cases (otherwise it stays empty and the report shows
    "insufficient"). A binary view below the size guard sends its counts and
    ``class_n`` only. Raises ``ValueError`` on labels outside 0..2 or probs not (N, 3).
    """
    y, p = _checked(labels, probs)
    class_n = tuple(int(v) for v in np.bincount(y, minlength=N_CLASSES))
    binary = classification_summary(
        (y > 0).astype(int), p[:, 1] + p[:, 2], ev, images, embedding, min_cell
    )
    binary = replace(binary, class_n=class_n)
    if binary.insufficient or len(y) < ev.min_cases or min(class_n) < ev.min_per_class:
        return binary
    return with_per_class(binary, y, p, ev.calibration_bins, min_cell)


def with_per_class(
    summary: SiteSummary, y: np.ndarray, p: np.ndarray, n_bins: int, min_cell: int
) -> SiteSummary:
    """``summary`` with the per-class fields of K-class labels ``y`` and scores ``p``."""
    k_classes = p.shape[1]
    predicted = argmax_rule(p)
    full = confusion_counts(y, predicted, k_classes)
    auc = ovr_auc(y, p)
    aucs = np.asarray(auc.aucs, dtype=float)
    cov = auc.cov
    defined = bool(np.isfinite(aucs).all() and np.isfinite(cov).all())
    cal = [
        small_cell_calibration((y == k).astype(int), p[:, k], n_bins, min_cell)
        for k in range(k_classes)
    ]
    return replace(
        summary,
        class_pred=tuple(int(v) for v in full.sum(axis=0)),
        class_correct=tuple(int(v) for v in np.diag(full)),
        confusion=suppressed_confusion(y, predicted, k_classes, min_cell),
        class_auc=tuple(float(v) for v in aucs) if defined else (),
        class_auc_cov=tuple(float(v) for v in cov.ravel()) if defined else (),
        class_cal_count=tuple(round(v) for rows in cal for v in rows[0]),
        class_cal_sum_p=tuple(float(v) for rows in cal for v in rows[1]),
        class_cal_sum_y=tuple(round(v) for rows in cal for v in rows[2]),
        brier_multi=multiclass_brier(y, p),
    )


def multiclass_brier(y: np.ndarray, p: np.ndarray) -> float:
    """Brier's (1950) score: the mean over cases of sum_k (p_k - [y = k])^2, in [0, 2]."""
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def suppressed_confusion(
    labels: np.ndarray, predicted: np.ndarray, n_classes: int, min_cell: int
) -> tuple[int, ...]:
    """The K x K confusion matrix (rows true, columns predicted), flat row-major, as it may
    leave the site under the small-cell rule (k = ``min_cell``, docs/privacy.md).

    *Primary suppression*: an off-diagonal cell of 1..k-1 cases is sent as -1; zeros stay
    0 and the diagonal is always shown (it is ``class_correct``, public anyway).
    *Complementary suppression*: row totals (``class_n``), column totals
    (``class_pred``) and the diagonal are public, so a row or column with a single
    suppressed cell would give it back by subtraction. Until nothing changes, each such
    row (column) also suppresses another of its off-diagonal cells: the smallest
    non-zero one, or a zero when only zeros remain (that zero is then sent as -1 too).
    For K = 3 the six off-diagonal cells form one cycle through the rows and columns,
    so one small cell hides all six: the errors are then known per row and column only.
    A row's suppressed cells still have a known sum (an interval, not a value).
    """
    cells = confusion_matrix(labels, predicted, n_classes, min_cell).counts
    full = confusion_counts(labels, predicted, n_classes)
    hidden = np.array([[c is None for c in row] for row in cells], dtype=bool)
    np.fill_diagonal(hidden, False)  # confusion_matrix hides small diagonal cells too
    changed = True
    while changed:
        changed = False
        for lines, grid in ((hidden, full), (hidden.T, full.T)):  # rows, then columns
            for r in range(n_classes):
                others = [c for c in range(n_classes) if c != r and not lines[r, c]]
                if lines[r].sum() == 1 and others:
                    nonzero = [c for c in others if grid[r, c] > 0]
                    pick = min(nonzero, key=lambda c: grid[r, c]) if nonzero else others[0]
                    lines[r, pick] = True  # a view: marks ``hidden`` itself
                    changed = True
    return tuple(
        SUPPRESSED_CELL if h else int(v) for v, h in zip(full.ravel(), hidden.ravel(), strict=True)
    )


def _checked(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels as ints 0..2 and probs as an (N, 3) float array; ValueError naming the fault."""
    p = np.asarray(probs, dtype=float)
    y = np.asarray(labels)
    if p.ndim != 2 or p.shape[1] != N_CLASSES:
        raise ValueError(
            f"probs must be (N, {N_CLASSES}) softmax rows (lesion-type), got shape {p.shape}"
        )
    if y.shape != (len(p),):
        raise ValueError(f"labels must be ({len(p)},) to match probs, got shape {y.shape}")
    if not np.isfinite(p).all():
        raise ValueError("probs contains NaN or Inf")
    if y.size and (y.dtype.kind not in "biuf" or (y != np.round(y)).any()):
        raise ValueError(f"labels must be integer classes 0..{N_CLASSES - 1}, got {y.dtype}")
    bad = sorted({int(v) for v in y[(y < 0) | (y >= N_CLASSES)]}) if y.size else []
    if bad:
        raise ValueError(f"labels must lie in 0..{N_CLASSES - 1}, got {bad[:5]}")
    return y.astype(int), p
