"""A site's monitoring answer (``client.monitor_site``): which cases a window scores, which
labels count as of a date, the recalibration and threshold applied, the reply through the
ClientApp, and the server's checks of it (``server.monitoring.checks``); the window names
and the training cut-off date (``common.dates``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from client.monitor_site import MonitorRequestError, WindowRequest, site_monitor
from client.policy import PolicyRefusal, SitePolicy, simulated_policy
from client.site import open_site
from common.config import ConfigError, RunConfig
from common.dates import acquired_before, expand_windows, window_bounds
from common.keys import ConfigKey, RecordKey
from common.models import build_model
from common.recalibration import apply_recalibration
from common.weights import to_arrays
from server.monitoring.checks import window_record
from server.reply_checks import ReplyError
from tests.common.test_manifest_dates import with_dates

N = 24  # cases: rows 0-7 are train (acquired in March), 8-23 test (April to July)


def _cfg(root: Path, **kw: object) -> RunConfig:
    return RunConfig().replace(
        {
            "data.site-root": str(root),
            "data.roi-size": 32,
            "data.context-mm": 0.0,
            "eval.min-cases": 4,
            "eval.min-per-class": 2,
            **kw,
        }
    )


@pytest.fixture
def dated_site(site_factory: Callable[..., Path]) -> Path:
    site = site_factory(n_cases=N, seed=4, splits=("train",) * 8 + ("test",) * 16)
    cells = {}
    for i in range(N):
        month = 3 if i < 8 else 4 + (i - 8) // 4  # four test cases a month, April-July
        day = f"2024-{month:02d}-{1 + i % 4 * 7:02d}"
        # labels arrive about 40 days later; every third test case's only after the period
        # (a manifest needs a label cell: a pending label is written with its future date)
        late = i >= 8 and i % 3 == 0
        label_day = "2026-06-30" if late else f"2024-{month + 1:02d}-{10 + i % 4:02d}"
        cells[i] = (day, label_day)
    with_dates(site, cells)
    return site


def _any(cfg: RunConfig) -> SitePolicy:
    """The simulated site's policy, answering ranges of months too."""
    return dataclasses.replace(simulated_policy(cfg), monitor_any_window=True)


def _request(window: str, as_of: str) -> WindowRequest:
    start, end = window_bounds(window)
    return WindowRequest(window, start, end, date.fromisoformat(as_of))


def test_window_scores_its_test_cases_and_labels_known_by_the_date(dated_site: Path) -> None:
    cfg = _cfg(dated_site.parent, **{"eval.thresholds": "0.4"})
    site = open_site({"site-dir": str(dated_site)}, cfg)
    weights = to_arrays(build_model(cfg))
    both = _request("2024-04/2024-05", "2024-06-30")  # 8 test cases; train (March) never
    summary, acquisition = site_monitor(site, weights, cfg, both, policy=_any(cfg))
    assert summary.n == 8 and not summary.insufficient and summary.threshold == 0.4
    # rows 9, 12 and 15 are never labelled; the rest of April-May arrived by June 30
    assert summary.n_labelled == 8 - 3
    assert sum(summary.score_count) == 8
    assert '"n_cases":8' in acquisition
    early = _request("2024-04/2024-05", "2024-05-15")  # April's labels only (May 10-13)
    assert (
        site_monitor(site, weights, cfg, early, policy=_any(cfg))[0].n_labelled == 3
    )  # rows 8, 10, 11 (not 9)
    # the same request gives the same summary (seeded intervals): a re-run stores nothing new
    assert site_monitor(site, weights, cfg, both, policy=_any(cfg))[0] == summary
    empty = site_monitor(site, weights, cfg, _request("2023-01", "2024-12-31"))[0]
    assert empty.n == 0 and empty.insufficient


def test_recalibration_moves_the_label_free_estimate_not_the_ranking(dated_site: Path) -> None:
    cfg = _cfg(dated_site.parent)
    site = open_site({"site-dir": str(dated_site)}, cfg)
    weights = to_arrays(build_model(cfg))
    window = _request("2024-04/2024-07", "2024-12-31")
    plain = site_monitor(site, weights, cfg, window, policy=_any(cfg))[0]
    recal = cfg.replace({"eval.recalibration": "2.0,1.0"})
    shifted = site_monitor(site, weights, recal, window, policy=_any(recal))[0]
    assert plain.n == shifted.n == 16
    assert plain.auc == shifted.auc  # a monotone map: the same ranking, the same actual AUC
    assert shifted.est_sens is not None and plain.est_sens is not None
    # a = +2 raises every probability: more cases called malignant at the same threshold
    assert shifted.tp is not None and plain.tp is not None and shifted.tp >= plain.tp
    assert apply_recalibration(np.array([0.5]), (2.0, 1.0))[0] == pytest.approx(0.8808, 1e-4)


def test_site_without_dates_and_bad_requests_are_named(
    site_factory: Callable[..., Path], dated_site: Path
) -> None:
    plain = site_factory("undated", n_cases=6)
    cfg = _cfg(plain.parent)
    site = open_site({"site-dir": str(plain)}, cfg)
    with pytest.raises(MonitorRequestError, match="no `acquired` date"):
        site_monitor(site, to_arrays(build_model(cfg)), cfg, _request("2024-04", "2024-12-31"))
    with pytest.raises(MonitorRequestError, match="without a readable start"):
        WindowRequest.from_instructions({ConfigKey.WINDOW.value: "2024-04"})
    assert WindowRequest.from_instructions({}) is None
    seg = _cfg(dated_site.parent, task="lesion-segmentation")
    with pytest.raises(MonitorRequestError, match="binary classifier"):
        site_monitor(
            open_site({"site-dir": str(dated_site)}, seg),
            None,
            seg,
            _request("2024-04", "2024-12-31"),
        )


def test_acquired_before_keeps_the_training_months(dated_site: Path) -> None:
    cfg = _cfg(dated_site.parent, **{"data.acquired-before": "2024-05-01"})
    site = open_site({"site-dir": str(dated_site)}, cfg)
    kept = [c.acquired for c in site.manifest.cases]
    assert len(kept) == 8 + 4 and all(d is not None and d < date(2024, 5, 1) for d in kept)
    assert len(acquired_before(site.manifest.cases, "")) == 12
    with pytest.raises(ConfigError, match="data.acquired-before"):
        _cfg(dated_site.parent, **{"data.acquired-before": "May 2024"})


def test_a_site_answers_whole_months_unless_its_policy_says_otherwise(dated_site: Path) -> None:
    """A month and the same month less a day differ by the cases of one day: their score
    counts and 2x2 tables, differenced, would give those cases' scores and labels."""
    cfg = _cfg(dated_site.parent)
    site = open_site({"site-dir": str(dated_site)}, cfg)
    weights = to_arrays(build_model(cfg))
    month = site_monitor(site, weights, cfg, _request("2024-04", "2024-12-31"))[0]
    assert month.n == 4
    for window in ("2024-04-01/2024-04-21", "2024-04/2024-05", "2024-04-08"):
        with pytest.raises(PolicyRefusal, match="single calendar months only"):
            site_monitor(site, weights, cfg, _request(window, "2024-12-31"))
    for as_of, why in (("2024-12-30", "last day only"), ("2024-12-31", "")):
        req = _request("2024-04", as_of)
        if why:
            with pytest.raises(PolicyRefusal, match=why):
                site_monitor(site, weights, cfg, req)
        else:
            assert site_monitor(site, weights, cfg, req)[0].n == 4
    cut = cfg.replace({"data.acquired-before": "2024-04-20"})
    with pytest.raises(PolicyRefusal, match="data.acquired-before"):
        site_monitor(open_site({"site-dir": str(dated_site)}, cut), weights, cut,
                     _request("2024-04", "2024-12-31"))  # fmt: skip
    days = site_monitor(site, weights, cfg, _request("2024-04-01/2024-04-21", "2024-12-31"),
                        policy=_any(cfg))[0]  # fmt: skip
    assert days.n == 3  # the site that allows it answers a part of the month


def test_window_names() -> None:
    assert expand_windows("2024-11..2025-02") == ["2024-11", "2024-12", "2025-01", "2025-02"]
    assert expand_windows("2024-03, 2024-01") == ["2024-01", "2024-03"]
    assert window_bounds("2024-12") == (date(2024, 12, 1), date(2025, 1, 1))
    assert window_bounds("2024-07-01/2024-07-14") == (date(2024, 7, 1), date(2024, 7, 15))
    for bad, why in (
        ("2024-13", "not a month"),
        ("2024-07..2024-01", "before"),
        ("2024-01,2024-01", "twice"),
        ("July", "name a window"),
    ):
        with pytest.raises(ValueError, match=why):
            expand_windows(bad)


def _reply(metrics: Mapping[str, Any]) -> Message:
    request = Message(
        RecordDict({RecordKey.CONFIG: ConfigRecord({})}), dst_node_id=1, message_type="evaluate"
    )
    content = RecordDict({RecordKey.METRICS: MetricRecord(dict(metrics))})
    return Message(content, reply_to=request)


@pytest.mark.usefixtures("flower_task")
def test_server_checks_a_window_reply(dated_site: Path) -> None:
    cfg = _cfg(dated_site.parent, **{"eval.thresholds": "0.4"})
    site = open_site({"site-dir": str(dated_site)}, cfg)
    window = _request("2024-04/2024-07", "2024-12-31")
    summary = site_monitor(site, to_arrays(build_model(cfg)), cfg, window, policy=_any(cfg))[0]
    record: dict[str, Any] = dict(summary.to_record())
    assert window_record(_reply(record), 24, cfg) == record
    lies: dict[str, tuple[dict[str, Any], str]] = {
        "n": ({"n": 99}, "more than"),
        "labelled": ({"n-labelled": 17}, "n-labelled"),
        "table": ({"tp": int(record.get("tp", 0)) + 1}, "2x2"),
        "scores": ({"score-count": [16] + [0] * 9 + [1]}, "score-count"),
        "interval": ({"est-auc": 0.999, "est-auc-hi": 0.9}, "outside its interval"),
        "range": ({"est-sens": 1.5}, r"\[0, 1\]"),
        "threshold": ({"threshold": 0.5}, "asked for"),
        "embedding": ({"emb-mean": [0.0]}, "emb-mean"),
        "moment": ({"emb-mean": [1e300] * cfg.eval.embedding_dims}, "beyond"),
    }
    for name, (change, why) in lies.items():
        with pytest.raises(ReplyError, match=why):
            window_record(_reply({**record, **change}), 24, cfg)
        assert name
