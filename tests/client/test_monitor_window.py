"""One monitoring window's summary (``client.monitor_window``): the label-free estimate
equals ``common.stats.label_free`` on the same cases, the actual figures use the labelled
cases only, the size guards, the small-cell rule on the score counts, and the record."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.evaluation import embedding_moments, intensity_histograms
from client.monitor_window import WindowSummary, score_counts, window_summary
from common.config_sections import EvalConfig
from common.stats import delong_auc
from common.stats.label_free import label_free_performance

EV = EvalConfig(min_cases=20, min_per_class=5, calibration_bins=10, histogram_bins=4)
DRAWS = 300
COUNT_KEYS = {
    "num-examples",
    "n",
    "n-labelled",
    "insufficient",
    "actual-insufficient",
}


def calibrated_window(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels drawn from them (calibrated by construction)."""
    rng = np.random.default_rng(seed)
    p = rng.beta(2.0, 3.0, n)
    return p, (rng.random(n) < p).astype(float)


def summarise(
    p: np.ndarray,
    y: np.ndarray,
    threshold: float = 0.4,
    images: torch.Tensor | None = None,
    embedding: np.ndarray | None = None,
    min_cell: int = 1,
) -> WindowSummary:
    return window_summary(p, y, EV, threshold, images, embedding, min_cell, 7, draws=DRAWS)


def test_label_free_fields_equal_label_free_performance_on_all_cases() -> None:
    p, y = calibrated_window()
    s = summarise(p, y)
    est = label_free_performance(p, 0.4, level=EV.level, draws=DRAWS, seed=7)
    assert (s.est_auc, s.est_auc_lo, s.est_auc_hi) == tuple(est.auc)
    assert (s.est_sens, s.est_sens_lo, s.est_sens_hi) == tuple(est.sensitivity)
    assert (s.est_spec, s.est_spec_lo, s.est_spec_hi) == tuple(est.specificity)
    assert s.level == 0.95 and s.threshold == 0.4
    assert s.est_auc_lo < s.est_auc < s.est_auc_hi  # type: ignore[operator]
    # the labels play no part: the same figures with every label unknown
    blind = summarise(p, np.full_like(y, np.nan))
    assert (blind.est_auc, blind.est_sens_lo, blind.est_spec_hi) == (
        s.est_auc,
        s.est_sens_lo,
        s.est_spec_hi,
    )
    assert blind.actual_insufficient and blind.n_labelled == 0 and blind.auc is None


def test_actual_figures_on_a_calibrated_window() -> None:
    p, y = calibrated_window()
    s = summarise(p, y)
    ref = delong_auc(y, p)
    assert not s.actual_insufficient and not s.insufficient
    assert (s.n, s.n_labelled, s.n_labelled_pos) == (200, 200, int(y.sum()))
    assert s.auc == ref.auc and s.auc_var == ref.variance
    called = p >= 0.4
    assert (s.tp, s.fp, s.fn, s.tn) == (
        int(np.sum(called & (y == 1))),
        int(np.sum(called & (y == 0))),
        int(np.sum(~called & (y == 1))),
        int(np.sum(~called & (y == 0))),
    )


def test_hand_computed_table_and_auc() -> None:
    """At t = 0.5: positives 0.95..0.6 called (7), 0.45, 0.3, 0.2 missed (3); negatives
    0.55, 0.52 called (2), the other 8 not. AUC: of the 100 (pos, neg) pairs, the pairs
    ranked wrong are 0.45 < 0.55, 0.52 (2), 0.3 < 0.55, 0.52, 0.4, 0.35 and = 0.3 (4.5),
    0.2 < 0.55, 0.52, 0.4, 0.35, 0.3, 0.25 and = 0.2 (6.5): AUC = (100 - 13) / 100."""
    pos = [0.95, 0.9, 0.85, 0.8, 0.7, 0.65, 0.6, 0.45, 0.3, 0.2]
    neg = [0.55, 0.52, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05]
    p = np.array(pos + neg)
    y = np.array([1.0] * 10 + [0.0] * 10)
    s = summarise(p, y, threshold=0.5)
    assert (s.tp, s.fp, s.fn, s.tn) == (7, 2, 3, 8)
    assert s.auc == pytest.approx(0.87, abs=1e-12)
    assert s.auc_var == delong_auc(y, p).variance


def test_unknown_labels_are_left_out_of_the_actual_figures() -> None:
    p, y = calibrated_window()
    y_asof = y.copy()
    y_asof[::4] = np.nan  # 50 labels not yet known on the as-of date
    known = np.isfinite(y_asof)
    s = summarise(p, y_asof)
    assert (s.n, s.n_labelled, s.n_labelled_pos) == (200, 150, int(y[known].sum()))
    ref = delong_auc(y[known], p[known])
    assert s.auc == ref.auc and s.auc_var == ref.variance
    called = p[known] >= 0.4
    yk = y[known]
    assert s.tp == int(np.sum(called & (yk == 1))) and s.tn == int(np.sum(~called & (yk == 0)))
    assert s.tp + s.fp + s.fn + s.tn == 150  # type: ignore[operator]
    assert s.est_auc == summarise(p, y).est_auc  # label-free: all 200 cases either way


def test_too_few_labelled_cases_give_no_actual_figures() -> None:
    p, y = calibrated_window()
    few = np.full_like(y, np.nan)
    few[:19] = y[:19]  # 19 labelled < min_cases 20
    s = summarise(p, few)
    assert s.actual_insufficient and not s.insufficient
    assert (s.n_labelled, s.n_labelled_pos) == (19, 0)  # no class counts without figures
    assert (s.auc, s.auc_var, s.tp, s.fp, s.fn, s.tn) == (None,) * 6
    record = s.to_record()
    assert record["actual-insufficient"] == 1 and record["n-labelled"] == 19
    assert not {"auc", "auc-var", "tp", "fp", "fn", "tn"} & record.keys()
    assert "est-auc" in record and "score-count" in record  # the window itself is reported
    # enough labelled cases but 4 positives < min_per_class 5
    one_sided = np.where(np.isfinite(y) & (y == 0), 0.0, np.nan)
    one_sided[np.flatnonzero(y == 1)[:4]] = 1.0
    s = summarise(p, one_sided)
    assert s.actual_insufficient and s.n_labelled_pos == 0 and s.auc is None  # 4 < k


def test_a_window_below_min_cases_sends_counts_only() -> None:
    p, y = calibrated_window(n=19)
    y[:5] = np.nan
    images = torch.rand(19, 1, 4, 4)
    s = summarise(p, y, images=images, embedding=np.ones((19, 3)))
    assert s.insufficient and s.actual_insufficient
    record = s.to_record()
    assert record.keys() == COUNT_KEYS
    assert record == {
        "num-examples": 19,
        "n": 19,
        "n-labelled": 14,  # and no class counts of the labelled cases
        "insufficient": 1,
        "actual-insufficient": 1,
    }
    empty = window_summary(np.array([]), np.array([]), EV, 0.5, None, None, 5, 0)
    assert empty.to_record()["n"] == 0 and empty.insufficient


def test_a_score_bin_of_fewer_than_min_cell_cases_is_merged() -> None:
    """Bin 1 holds 12 cases, bin 5 two, bin 8 eleven. With min_cell 5 the two join the
    bins after them up to bin 8 (13 cases, put in bin 8, the fullest); empty bins stand
    alone."""
    p = np.array([0.15] * 12 + [0.55] * 2 + [0.85] * 11)
    y = np.full(25, np.nan)
    assert score_counts(p, 10, 1) == (0, 12, 0, 0, 0, 2, 0, 0, 11, 0)
    s = summarise(p, y, min_cell=5)
    assert s.score_count == (0, 12, 0, 0, 0, 0, 0, 0, 13, 0)
    assert sum(s.score_count) == s.n == 25
    # p = 1 falls in the last bin (calibration_bins' rule)
    assert score_counts(np.array([1.0, 0.95, 0.0]), 10, 1) == (1, 0, 0, 0, 0, 0, 0, 0, 0, 2)


def test_drift_inputs_reuse_the_evaluation_summaries() -> None:
    p, y = calibrated_window(n=30)
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(30, 2, 6, 6, generator=gen)
    embedding = np.random.default_rng(3).normal(size=(30, 4))
    s = summarise(p, y, images=images, embedding=embedding, min_cell=5)
    assert s.hist_counts == intensity_histograms(images, EV.histogram_bins, 5)
    assert (s.emb_mean, s.emb_cov) == embedding_moments(embedding)
    assert all(sum(row) == 30 * 36 for row in s.hist_counts)
    assert len(s.emb_mean) == 4 and len(s.emb_cov) == 4


def test_figures_that_cannot_be_estimated_are_left_out() -> None:
    """Every probability 0: no expected malignant case, so no AUC or sensitivity; the
    specificity is 1 in every draw."""
    s = summarise(np.zeros(25), np.full(25, np.nan))
    assert s.est_auc is None and s.est_sens is None and s.est_sens_lo is None
    assert (s.est_spec, s.est_spec_lo, s.est_spec_hi) == (1.0, 1.0, 1.0)
    record = s.to_record()
    assert "est-auc" not in record and "est-sens" not in record and record["est-spec"] == 1.0
    assert WindowSummary.from_record(record) == s


def test_record_round_trip_is_exact() -> None:
    p, y = calibrated_window(n=40)
    y[::3] = np.nan
    images = torch.rand(40, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    embedding = np.random.default_rng(1).normal(size=(40, 3))
    full = summarise(p, y, images=images, embedding=embedding, min_cell=3)
    assert not full.actual_insufficient and full.hist_counts and full.emb_cov
    partial = summarise(p, np.where(np.arange(40) < 10, y, np.nan))
    small = summarise(p[:10], y[:10])
    for s in (full, partial, small):
        record = s.to_record()
        for value in record.values():  # a MetricRecord's content: numbers, lists of numbers
            assert isinstance(value, int | float) or all(isinstance(v, int | float) for v in value)
        assert WindowSummary.from_record(record) == s
    record = full.to_record()
    assert len(record["score-count"]) == EV.calibration_bins  # type: ignore[arg-type]
    assert len(record["emb-cov"]) == 9  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("probs", "labels", "threshold", "match"),
    [
        (np.full(25, 0.5), np.full(24, np.nan), 0.5, "same length"),
        (np.full(25, 1.5), np.full(25, np.nan), 0.5, r"\[0, 1\]"),
        (np.full(25, 0.5), np.full(25, 2.0), 0.5, "0, 1 or NaN"),
        (np.full(25, 0.5), np.full(25, np.nan), 1.0, "threshold"),
    ],
)
def test_bad_inputs_are_named(
    probs: np.ndarray, labels: np.ndarray, threshold: float, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        window_summary(probs, labels, EV, threshold, None, None, 5, 0)


def test_inputs_of_another_length_are_refused() -> None:
    p, y = calibrated_window(n=25)
    with pytest.raises(ValueError, match="embedding has 24 cases for 25"):
        window_summary(p, y, EV, 0.5, None, np.zeros((24, 3)), 5, 0)
