"""Three-class (lesion-type) site evaluation: the binary view, per-class counts and AUCs,
the confusion matrix under complementary suppression, and the wire format."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch
from flwr.app import MetricRecord
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import client.evaluation as evaluation
from client.evaluation import classification_summary, predict, small_cell_calibration, summarize
from client.evaluation_multiclass import (
    lesion_type_summary,
    multiclass_brier,
    suppressed_confusion,
)
from common.config import RunConfig
from common.config_sections import EvalConfig
from common.data import SplitTensors
from common.device import select_compute
from common.stats.multiclass import ovr_auc
from common.summary import SiteSummary
from server.reply_checks import summary_problem

MULTI = {
    "class_n",
    "class_pred",
    "class_correct",
    "confusion",
    "class_auc",
    "class_auc_cov",
    "class_cal_count",
    "class_cal_sum_p",
    "class_cal_sum_y",
    "brier_multi",
}

# 12 cases, 4 per class; the argmax of each row gives the confusion matrix
#   true 0: predicted 0 0 0 1   true 1: predicted 1 1 0 2   true 2: predicted 2 2 2 1
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
PROBS = np.array(
    [
        [0.80, 0.15, 0.05],
        [0.70, 0.20, 0.10],
        [0.50, 0.30, 0.20],
        [0.30, 0.45, 0.25],
        [0.10, 0.60, 0.30],
        [0.25, 0.55, 0.20],
        [0.45, 0.35, 0.20],
        [0.05, 0.40, 0.55],
        [0.10, 0.20, 0.70],
        [0.15, 0.25, 0.60],
        [0.05, 0.05, 0.90],
        [0.20, 0.50, 0.30],
    ]
)
TINY = EvalConfig(min_cases=12, min_per_class=4, calibration_bins=4, thresholds=(0.5,))


def _cases(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` cases of three classes with softmax rows that lean towards the true class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, p


def _from_matrix(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions whose confusion matrix is ``matrix``."""
    k = len(matrix)
    pairs = [(r, c) for r in range(k) for c in range(k) for _ in range(int(matrix[r, c]))]
    y, yhat = zip(*pairs, strict=True)
    return np.array(y), np.array(yhat)


def _recoverable(
    confusion: np.ndarray, class_n: tuple[int, ...], class_pred: tuple[int, ...]
) -> dict[tuple[int, int], int]:
    """The suppressed cells an outsider can restore from what is sent: a row (column) with
    one -1 gives it by subtraction from ``class_n`` (``class_pred``); repeated, since a
    restored cell can free another."""
    c = np.array(confusion, dtype=int)
    found: dict[tuple[int, int], int] = {}
    changed = True
    while changed:
        changed = False
        for grid, totals, transpose in ((c, class_n, False), (c.T, class_pred, True)):
            for r in range(len(grid)):
                unknown = [j for j in range(len(grid)) if grid[r, j] == -1]
                if len(unknown) == 1:
                    j = unknown[0]
                    value = totals[r] - int(grid[r][grid[r] >= 0].sum())
                    grid[r, j] = value  # a view: fills ``c``
                    found[(j, r) if transpose else (r, j)] = value
                    changed = True
    return found


# ---- the binary view --------------------------------------------------------------------


def test_the_binary_view_is_classification_summary_of_benign_vs_malignant() -> None:
    y, p = _cases(80, seed=3)
    ev = EvalConfig(thresholds=(0.3, 0.5), calibration_bins=5, roc_points=11, min_per_class=5)
    images = torch.rand(80, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    embedding = np.random.default_rng(1).normal(size=(80, 3))
    s = lesion_type_summary(y, p, ev, images, embedding, min_cell=5)
    b = classification_summary((y > 0).astype(int), p[:, 1] + p[:, 2], ev, images, embedding, 5)
    assert s.n_pos == int((y > 0).sum()) and s.n_neg == int((y == 0).sum())
    assert s.auc is not None and s.tables and s.roc_tpr and s.hist_counts and s.emb_cov
    for f in fields(SiteSummary):
        if f.name not in MULTI:
            np.testing.assert_equal(getattr(s, f.name), getattr(b, f.name), err_msg=f.name)
    assert s.class_n == tuple(int((y == k).sum()) for k in range(3))


# ---- per-class counts, AUCs, calibration and Brier ----------------------------------------


def test_class_counts_and_confusion_of_a_hand_made_example() -> None:
    s = lesion_type_summary(LABELS, PROBS, TINY)
    assert s.class_n == (4, 4, 4)
    assert s.class_pred == (4, 4, 4)  # columns of [[3, 1, 0], [1, 2, 1], [0, 1, 3]]
    assert s.class_correct == (3, 2, 3)
    assert s.confusion == (3, 1, 0, 1, 2, 1, 0, 1, 3)
    # k = 2: the four 1s are hidden, then the zeros of rows 0 and 2 (each row's lone -1)
    k2 = lesion_type_summary(LABELS, PROBS, TINY, min_cell=2)
    assert k2.confusion == (3, -1, -1, -1, 2, -1, -1, -1, 3)
    assert (k2.class_n, k2.class_pred, k2.class_correct) == ((4, 4, 4), (4, 4, 4), (3, 2, 3))


def test_class_aucs_and_covariance_are_ovr_auc() -> None:
    s = lesion_type_summary(LABELS, PROBS, TINY)
    ref = ovr_auc(LABELS, PROBS)
    assert s.class_auc == ref.aucs
    assert s.class_auc_cov == tuple(v for row in ref.covariance for v in row)
    # column 0: class 0's 0.30 is below case 6's 0.45, every other pair ordered: 31 / 32;
    # column 1: 0.35 and 0.40 are below 0.45 and 0.50: 28 / 32; column 2: 0.30 ties one
    # 0.30 and is below 0.55: 30.5 / 32
    assert s.class_auc == pytest.approx((31 / 32, 28 / 32, 30.5 / 32))
    assert len(s.class_auc_cov) == 9 and s.class_auc_cov[1] == s.class_auc_cov[3]


def test_an_auc_without_a_variance_leaves_both_empty() -> None:
    y = np.array([0, 0, 0, 1, 1, 1, 2, 1])
    p = np.eye(3)[y] * 0.5 + 0.5 / 3  # class 2 has one case: no variance
    s = lesion_type_summary(y, p, EvalConfig(min_cases=8, min_per_class=1, calibration_bins=2))
    assert s.class_pred and s.class_auc == () and s.class_auc_cov == ()


def test_per_class_calibration_bins_are_one_vs_rest_under_the_small_cell_rule() -> None:
    y, p = _cases(60, seed=5)
    ev = EvalConfig(calibration_bins=6, min_per_class=5)
    s = lesion_type_summary(y, p, ev, min_cell=5)
    for k in range(3):
        rows = small_cell_calibration((y == k).astype(int), p[:, k], 6, 5)
        part = slice(6 * k, 6 * (k + 1))
        assert s.class_cal_count[part] == tuple(round(v) for v in rows[0])
        assert s.class_cal_sum_p[part] == pytest.approx(tuple(rows[1]))
        assert s.class_cal_sum_y[part] == tuple(round(v) for v in rows[2])
        assert sum(s.class_cal_count[part]) == 60
        assert sum(s.class_cal_sum_y[part]) == s.class_n[k]
        assert all(c == 0 or c >= 5 for c in s.class_cal_count[part])


def test_multiclass_brier_by_hand() -> None:
    y = np.array([0, 1, 2])
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    # (.09 + .04 + .01) + (.01 + .16 + .09) + (.04 + .04 + .16) = .64
    assert multiclass_brier(y, p) == pytest.approx(0.64 / 3)
    s = lesion_type_summary(LABELS, PROBS, TINY)
    expected = np.mean(
        [sum((PROBS[i, k] - (LABELS[i] == k)) ** 2 for k in range(3)) for i in range(12)]
    )
    assert s.brier_multi == pytest.approx(expected)
    assert s.to_record()["brier-multi"] == pytest.approx(expected)


# ---- complementary suppression ------------------------------------------------------------


@pytest.mark.parametrize(
    ("matrix", "expected"),
    [
        # K = 3: the 2 hides its row-mate 7 and column-mate 10, they hide 9 and 8, then 6
        (
            [[20, 2, 7], [6, 30, 9], [8, 10, 25]],
            [[20, -1, -1], [-1, 30, -1], [-1, -1, 25]],
        ),
        # K = 4: the smallest non-zero mate is chosen, zeros and untouched rows stay
        (
            [[20, 2, 7, 9], [6, 30, 9, 12], [8, 10, 25, 0], [11, 0, 0, 40]],
            [[20, -1, -1, 9], [-1, 30, -1, 12], [-1, -1, 25, 0], [11, 0, 0, 40]],
        ),
    ],
)
def test_complementary_suppression_leaves_no_cell_to_subtract(
    matrix: list[list[int]], expected: list[list[int]]
) -> None:
    full = np.array(matrix)
    y, yhat = _from_matrix(full)
    k = len(full)
    sent = np.array(suppressed_confusion(y, yhat, k, min_cell=5)).reshape(k, k)
    assert sent.tolist() == expected
    class_n, class_pred = tuple(full.sum(axis=1)), tuple(full.sum(axis=0))
    assert _recoverable(sent, class_n, class_pred) == {}
    # the checker finds the 2 when only the small cell is hidden
    primary = full.copy()
    primary[0, 1] = -1
    assert _recoverable(primary, class_n, class_pred) == {(0, 1): 2}


def test_a_lone_small_cell_next_to_a_zero_hides_the_zero() -> None:
    full = np.array([[10, 3, 0], [0, 10, 0], [0, 0, 10]])
    y, yhat = _from_matrix(full)
    sent = suppressed_confusion(y, yhat, 3, min_cell=5)
    assert sent == (10, -1, -1, -1, 10, -1, -1, -1, 10)
    assert _recoverable(np.array(sent).reshape(3, 3), (13, 10, 10), (10, 13, 10)) == {}


@settings(max_examples=60, deadline=None)
@given(
    cells=st.lists(st.integers(0, 12), min_size=9, max_size=9),
    k=st.integers(1, 8),
)
def test_suppression_invariants(cells: list[int], k: int) -> None:
    full = np.array(cells).reshape(3, 3)
    if full.sum() == 0:
        return
    y, yhat = _from_matrix(full)
    sent = np.array(suppressed_confusion(y, yhat, 3, min_cell=k)).reshape(3, 3)
    assert (np.diag(sent) == np.diag(full)).all()  # the diagonal is always shown
    small = (full > 0) & (full < k) & ~np.eye(3, dtype=bool)
    assert (sent[small] == -1).all()  # every small cell is hidden
    shown = sent >= 0
    assert (sent[shown] == full[shown]).all()  # what is shown is true
    for line in (*sent, *sent.T):
        assert (line == -1).sum() != 1
    assert _recoverable(sent, tuple(full.sum(axis=1)), tuple(full.sum(axis=0))) == {}


# ---- the size guard -----------------------------------------------------------------------


def test_a_class_below_min_per_class_empties_the_per_class_part_only() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])  # class 2: 2 cases < 3
    p = np.eye(3)[y] * 0.4 + 0.2
    s = lesion_type_summary(y, p, EvalConfig(min_cases=10, min_per_class=3, calibration_bins=2))
    assert not s.insufficient and s.auc is not None and s.tables  # binary: 4 vs 6
    assert s.class_n == (4, 4, 2)
    assert all(getattr(s, name) in ((), None) for name in MULTI - {"class_n"})
    record = s.to_record()
    assert record["class-n"] == [4, 4, 2]
    assert not {"class-pred", "class-correct", "confusion", "class-auc", "brier-multi"} & set(
        record
    )


def test_an_insufficient_binary_view_sends_counts_and_class_n() -> None:
    s = lesion_type_summary(LABELS, PROBS, EvalConfig(min_cases=13))
    assert s.insufficient and s.auc is None and s.class_pred == ()
    expected = {"num-examples", "n", "n-pos", "n-neg", "insufficient", "class-n"}
    assert set(s.to_record()) == expected
    assert (s.n, s.n_pos, s.n_neg, s.class_n) == (12, 8, 4, (4, 4, 4))


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match=r"probs must be \(N, 3\)"):
        lesion_type_summary(LABELS, PROBS[:, :2], TINY)
    with pytest.raises(ValueError, match=r"labels must lie in 0..2, got \[3\]"):
        lesion_type_summary(np.where(LABELS == 2, 3, LABELS), PROBS, TINY)


# ---- the wire format and the server's checks ----------------------------------------------


def test_record_round_trip_is_exact() -> None:
    y, p = _cases(60, seed=7)
    images = torch.rand(60, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    s = lesion_type_summary(y, p, EvalConfig(calibration_bins=4), images, min_cell=5)
    assert s.class_auc and s.class_cal_count and -1 in s.confusion
    record = s.to_record()
    assert record["confusion"] == list(s.confusion)
    assert SiteSummary.from_record(record) == s
    assert SiteSummary.from_record(MetricRecord(record)) == s
    malignancy = SiteSummary(n=3, n_pos=1, n_neg=2)
    assert not any(key.startswith("class-") for key in malignancy.to_record())
    assert SiteSummary.from_record(malignancy.to_record()) == malignancy


def test_reply_checks_read_the_multiclass_counts() -> None:
    s = lesion_type_summary(LABELS, PROBS, TINY, min_cell=2)
    record = s.to_record()
    assert summary_problem(record, 12) is None  # -1 cells are accepted
    bad = dict(record, confusion=[3, -1, -1, -1, -2, -1, -1, -1, 3])
    assert summary_problem(bad, 12) == (
        "confusion[4] = -2: must be >= 0 (or -1: a suppressed cell)"
    )
    too_many = dict(record, confusion=[13, *s.confusion[1:]])
    assert "confusion[0] = 13: more than the 12 case(s)" in str(summary_problem(too_many, 12))
    off = dict(record, **{"class-n": [4, 4, 5]})
    assert summary_problem(off, 12) == "class-n [4, 4, 5] sums to 13 cases, but n = 12"
    over = dict(record, **{"class-pred": [4, 20, 4]})
    assert "class-pred[1] = 20: more than" in str(summary_problem(over, 12))
    fraction = dict(record, **{"class-cal-sum-y": [0.5, *s.class_cal_sum_y[1:]]})
    assert "class-cal-sum-y[0] = 0.5: must be a whole number" in str(summary_problem(fraction, 12))
    # lists of other lengths than K = 3 classes give (the report reshapes them)
    short = dict(record, confusion=list(s.confusion[:8]))
    assert summary_problem(short, 12) == (
        "confusion has 8 value(s); with the 3 class(es) of class-n it needs 9"
    )
    cov = dict(record, **{"class-auc": [0.5, 0.5]})
    assert "class-auc has 2 value(s)" in str(summary_problem(cov, 12))
    ragged = dict(record, **{"class-cal-count": [1] * 10})
    assert "class-cal-count has 10 value(s)" in str(summary_problem(ragged, 12))


# ---- summarize dispatches lesion-type -----------------------------------------------------


def test_summarize_evaluates_lesion_type_with_softmax_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    # common.tasks.probabilities gives softmax rows for K > 1 outputs (its owner's contract)
    monkeypatch.setattr(evaluation, "probabilities", lambda z: torch.softmax(z.float(), dim=1))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    images = torch.rand(24, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    labels = torch.tensor([0.0, 1.0, 2.0] * 8)
    data = SplitTensors(images, torch.zeros(24, 1, 4, 4), labels, tuple(map(str, range(24))))
    cfg = RunConfig().replace({"task": "lesion-type", "eval.min-cases": 6, "eval.min-per-class": 2})
    compute = select_compute(prefer="cpu")
    s = summarize(model, data, cfg, compute, min_cell=2)
    probs, embedding = predict(model, images, compute, cfg.seed, cfg.eval.embedding_dims)
    assert probs.shape == (24, 3)
    expected = lesion_type_summary(labels.numpy(), probs.numpy(), cfg.eval, images, embedding, 2)
    assert s == expected and s.class_n == (8, 8, 8) and sum(s.class_pred) == 24
