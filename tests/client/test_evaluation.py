"""Site-side evaluation: hand-computed summaries, the size guard, and what leaves a site."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from client.app import evaluate as evaluate_handler
from client.evaluation import (
    classification_summary,
    embedding_moments,
    intensity_histograms,
    projection,
    summarize,
)
from common.config import RunConfig
from common.config_sections import EvalConfig
from common.device import select_compute
from common.models import build_model
from common.summary import SiteSummary, Table2x2
from common.weights import to_arrays

LABELS = np.array([1, 1, 1, 0, 0, 0, 1, 0])
PROBS = np.array([0.9, 0.7, 0.4, 0.6, 0.2, 0.1, 0.55, 0.35])
SMALL = EvalConfig(
    min_cases=4, min_per_class=2, thresholds=(0.5, 0.3), calibration_bins=4, roc_points=5
)


def test_classification_summary_hand_computed() -> None:
    s = classification_summary(LABELS, PROBS, SMALL)
    assert (s.n, s.n_pos, s.n_neg, s.insufficient) == (8, 4, 4, False)
    # positives 0.9 0.7 0.55 0.4 vs negatives 0.6 0.35 0.2 0.1: 14 of 16 pairs ordered
    assert s.auc == pytest.approx(14 / 16)
    assert s.tables == (
        Table2x2(0.5, tp=3, fp=1, fn=1, tn=3),
        Table2x2(0.3, tp=4, fp=2, fn=0, tn=2),
    )
    expected_loss = -np.mean(np.where(LABELS == 1, np.log(PROBS), np.log(1 - PROBS)))
    assert s.loss == pytest.approx(expected_loss)
    assert s.brier == pytest.approx(np.mean((PROBS - LABELS) ** 2))
    # bins [0, .25) [.25, .5) [.5, .75) [.75, 1]
    assert s.cal_count == (2, 2, 3, 1)
    assert s.cal_sum_y == (0, 1, 2, 1)
    assert s.cal_sum_p == pytest.approx((0.3, 0.75, 1.85, 0.9))
    # sensitivity at FPR 0, .25, .5, .75, 1 (step rule: best TPR without exceeding the FPR)
    assert s.roc_tpr == pytest.approx((0.5, 1.0, 1.0, 1.0, 1.0))


def test_insufficient_sites_report_counts_only() -> None:
    few_positives = classification_summary(LABELS, PROBS, EvalConfig(min_cases=4, min_per_class=5))
    too_small = classification_summary(LABELS, PROBS, EvalConfig(min_cases=9, min_per_class=2))
    for s in (few_positives, too_small):
        assert s.insufficient and s.auc is None and not s.tables and not s.roc_tpr
        assert set(s.to_record()) == {"num-examples", "n", "n-pos", "n-neg", "insufficient"}


def test_record_round_trip_keeps_every_field() -> None:
    images = torch.rand(8, 3, 6, 6)
    emb = np.random.default_rng(0).normal(size=(8, 3))
    s = classification_summary(LABELS, PROBS, SMALL, images, emb)
    assert SiteSummary.from_record(s.to_record()) == s
    assert len(s.hist_counts) == 3 and all(sum(h) == 8 * 36 for h in s.hist_counts)
    mean, cov = embedding_moments(emb)
    np.testing.assert_allclose(mean, emb.mean(axis=0))
    np.testing.assert_allclose(cov, np.cov(emb, rowvar=False))


def test_histograms_count_every_voxel_on_fixed_bins() -> None:
    images = torch.tensor([[[[0.0, 0.49], [0.5, 1.0]]]])  # one case, one channel, 2x2
    assert intensity_histograms(images, 2) == ((2, 2),)


def test_projection_is_the_same_at_every_site_and_depends_on_the_seed() -> None:
    assert torch.equal(projection(64, 8, seed=3), projection(64, 8, seed=3))
    assert not torch.equal(projection(64, 8, seed=3), projection(64, 8, seed=4))
    assert projection(64, 8, seed=3).shape == (64, 8)


def test_summarize_captures_the_penultimate_embedding(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=24)
    cfg = RunConfig().replace(
        {"data.roi-size": 32, "data.context-mm": 0.0, "eval.min-cases": 4, "eval.min-per-class": 2}
    )
    from client.site import open_site

    s = open_site({"site-dir": str(site)}, cfg)
    summary = summarize(build_model(cfg), s.split("test", cfg), cfg, select_compute(prefer="cpu"))
    assert len(summary.emb_mean) == cfg.eval.embedding_dims
    cov = np.asarray(summary.emb_cov)
    assert cov.shape == (8, 8) and np.allclose(cov, cov.T)
    assert np.all(np.linalg.eigvalsh(cov) > -1e-9)


def _evaluate_at(site: Path, cfg: RunConfig) -> Message:
    msg = Message(
        RecordDict({"arrays": to_arrays(build_model(cfg)), "config": ConfigRecord(cfg.to_flat())}),
        dst_node_id=0,
        message_type=MessageType.EVALUATE,
    )
    ctx = Context(
        run_id=1, node_id=0, node_config={"site-dir": str(site)}, state=RecordDict(), run_config={}
    )
    return evaluate_handler(msg, ctx)


@pytest.mark.usefixtures("flower_task")
def test_no_per_case_value_leaves_a_site(site_factory: Callable[..., Path]) -> None:
    """The evaluate reply of two sites with different case counts has the same shape.

    Every list in the reply has a length fixed by the run config, so no list can
    carry one value per case; and nothing but metrics and the site's name is sent.
    """
    cfg = RunConfig().replace(
        {"data.roi-size": 32, "data.context-mm": 0.0, "eval.min-cases": 4, "eval.min-per-class": 2}
    )
    small = site_factory("site-small", n_cases=27, seed=1)  # 9 test cases
    large = site_factory("site-large", n_cases=45, seed=2)  # 15 test cases
    replies = [_evaluate_at(s, cfg) for s in (small, large)]
    ev = cfg.eval
    fixed = {
        len(ev.thresholds),
        ev.roc_points,
        ev.calibration_bins,
        len(cfg.data.channels) * ev.histogram_bins,
        ev.embedding_dims,
        ev.embedding_dims**2,
    }
    shapes = []
    for reply in replies:
        content = reply.content
        assert set(content.keys()) == {"metrics", "site"}
        assert not content.array_records
        site = dict(content["site"])
        assert site in (
            {"name": "site-small", "adaptation": "none"},
            {"name": "site-large", "adaptation": "none"},
        )
        metrics = dict(content["metrics"])
        lengths = {k: len(v) for k, v in metrics.items() if isinstance(v, list)}
        assert set(lengths.values()) <= fixed
        assert metrics["n"] not in lengths.values()
        shapes.append(lengths)
    assert shapes[0] == shapes[1]
    assert [dict(r.content["metrics"])["n"] for r in replies] == [9, 15]
