"""The monitoring analysis (``server.monitoring.analysis``) on synthetic window series built
directly as stored states: false alarms at the planned rate, steps and drift found and kept
apart, the statistics against hand computations, and ``monitor.json`` against its schema."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from jsonschema import Draft202012Validator
from scipy import stats

from common.stats.change_detection import cusum_chart_arl
from common.window_summary import WindowSummary
from server.monitoring import model as monitor_model
from server.monitoring.analysis import (
    CHARTS,
    LABEL_KEYS,
    MonitorSettings,
    acquisition_changes,
    analyse,
    estimate_check,
    exit_status,
    hotelling_t2,
    js_divergence,
    pooled_moments,
    predictive_z,
)
from server.monitoring.model import SCHEMA_FILE, MonitorError, schema, schema_text, validate
from server.monitoring.store import WINDOW, WindowState

MODEL = {
    "model_sha256": "a" * 64,
    "checkpoint": "global_model.pt",
    "training_run_id": "run-1",
    "training_head_sha256": "b" * 64,
    "task": "lesion-malignancy",
    "threshold": 0.5,
    "threshold_how": "youden on validation",
    "recalibration": [],
}
CREATED = "2026-01-05T09:00:00+00:00"
HIST = np.array([np.linspace(1, 3, 16), np.linspace(3, 1, 16)])
HIST = HIST / HIST.sum(axis=1, keepdims=True)  # two channels' in-control intensity shapes


def month(i: int) -> str:
    return f"{2024 + i // 12}-{i % 12 + 1:02d}"


def settings(n_windows: int, **kw: Any) -> MonitorSettings:
    return MonitorSettings(tuple(month(i) for i in range(n_windows)), "2026-01-01", **kw)


# shared, so that each decision interval is solved once (settings cache it)
DEFAULT = settings(66)  # the series below use the first windows of these
ALPHA_05 = settings(66, false_alarm_rate=0.05)


def state(
    site: str, i: int, summary: dict[str, Any], actual: dict[str, Any] | None = None
) -> WindowState:
    return WindowState(site, month(i), summary, "0" * 64, "e" * 64, actual=actual)


def series(
    rng: np.random.Generator,
    n_windows: int,
    site: str = "hospital-a",
    *,
    est_shift: tuple[int, float] = (0, 0.0),
    emb_shift: tuple[int, float] = (0, 0.0),
    drift_inputs: bool = False,
    labels: bool = False,
    n: int = 60,
) -> dict[tuple[str, str], WindowState]:
    """A site's windows: estimated AUC ~ N(0.85, 0.02) (plus a step from a window on), and
    optionally embedding moments of n cases (mean shifted from a window on), intensity
    histograms and actual AUCs, all in control unless shifted."""
    out = {}
    for i in range(n_windows):
        summary: dict[str, Any] = {"n": n, "insufficient": 0}
        summary["est-auc"] = float(rng.normal(0.85, 0.02)) + (
            est_shift[1] if i >= est_shift[0] else 0
        )
        summary["est-auc-lo"], summary["est-auc-hi"] = (
            summary["est-auc"] - 0.1,
            summary["est-auc"] + 0.1,
        )
        if drift_inputs:
            x = rng.normal(size=(n, 2)) + (emb_shift[1] if i >= emb_shift[0] else 0.0)
            summary["emb-mean"] = x.mean(axis=0).tolist()
            summary["emb-cov"] = np.cov(x, rowvar=False).ravel().tolist()
            summary["hist"] = [int(v) for p in HIST for v in rng.multinomial(5000, p)]
            summary["hist-channels"] = 2
        actual = None
        if labels:
            auc = float(np.clip(rng.normal(0.85, 0.04), 0, 1))
            actual = {"n-labelled": n, "n-labelled-pos": n // 2, "actual-insufficient": 0,
                      "auc": auc, "auc-var": 0.0016, "tp": 25, "fp": 4, "fn": 5,
                      "tn": 26}  # fmt: skip
        out[(site, month(i))] = state(site, i, summary, actual)
    return out


def chart(doc: dict[str, Any], statistic: str, site: int = 0) -> dict[str, Any]:
    (found,) = [c for c in doc["sites"][site]["charts"] if c["statistic"] == statistic]
    return found


# ---- (a), (b): false alarms at the planned rate, a step found fast -----------------------------


def test_a_stable_site_raises_false_alarms_at_the_planned_rate() -> None:
    """alpha = 0.05 over 4 charts: the estimated-AUC chart's ARL0 is 80 windows, so up to its
    first alarm it signals in about 1/80 of the windows at risk. A *fixed* reference of R = 6
    windows would not (its error is shared by every window: alarms pile up in the series with
    an unlucky reference, about 0.7 times this share here and 1.6 times the alarms counted
    with restarts); the tolerance, 4 binomial sd, is about 25 %."""
    rng = np.random.default_rng(7)
    cfg = ALPHA_05
    events = exposure = 0
    for _ in range(500):
        c = chart(analyse(series(rng, 66), cfg, MODEL, CREATED), "est-auc")
        assert len(c["windows"]) == 60
        if c["alarms"]:
            events += 1
            exposure += c["windows"].index(c["alarms"][0]) + 1
        else:
            exposure += len(c["windows"])
    planned = cfg.false_alarm_rate / len(CHARTS)
    share = events / exposure
    assert abs(share - planned) < 4 * np.sqrt(planned / exposure), (share, planned)


def test_a_step_down_in_estimated_auc_is_alarmed_within_two_windows() -> None:
    cfg = ALPHA_05
    found = 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        doc = analyse(series(rng, 24, est_shift=(12, -0.08)), cfg, MODEL, CREATED)
        alarms = [a for a in doc["alarms"] if a["window"] >= month(12)]
        found += bool(alarms) and alarms[0]["window"] in (month(12), month(13))
    assert found >= 90


def test_an_alarm_names_its_reference_its_sum_and_the_start_of_the_change() -> None:
    rng = np.random.default_rng(3)
    doc = analyse(series(rng, 24, est_shift=(12, -0.12)), DEFAULT, MODEL, CREATED)
    (alarm, *_) = [a for a in doc["alarms"] if a["window"] >= month(12)]
    assert alarm["kind"] == "performance" and alarm["statistic"] == "est-auc"
    assert alarm["since"] == month(12)
    assert alarm["cusum"] > alarm["limit"] == doc["settings"]["cusum_h"]
    c = chart(doc, "est-auc")
    at = c["windows"].index(alarm["window"])
    # the reference period and the six charted windows before the change: the changed windows
    # (beyond 2.5 sd on the alarm's side) did not join it
    assert at >= 1 and alarm["reference_n"] == 12
    assert alarm["message"].startswith(f"hospital-a {alarm['window']}: estimated AUC ")
    assert "performance alarm (CUSUM" in alarm["message"]
    assert alarm["message"].endswith(f"since {month(12)})")
    # a lasting change keeps signalling: the reference froze at its start (6 + 6 windows)
    assert len(c["alarms"]) >= 3
    assert set(c["reference_n"][at + 1 :]) == {12}
    assert exit_status(doc, [alarm["window"]]) == "performance"
    assert exit_status(doc, [month(5)]) == "none"
    assert doc["summary"]["sites_with_performance_alarm"] == ["hospital-a"]


# ---- (c): input drift is a notice, not a performance alarm -------------------------------------


def test_an_embedding_shift_is_a_drift_notice_and_not_a_performance_alarm() -> None:
    rng = np.random.default_rng(11)
    states = series(rng, 24, drift_inputs=True, labels=True, emb_shift=(12, 0.6))
    doc = analyse(states, DEFAULT, MODEL, CREATED)
    kinds = {(a["kind"], a["statistic"]) for a in doc["alarms"]}
    assert kinds == {("drift", "embedding")}, doc["alarms"]
    first = doc["alarms"][0]
    assert month(12) <= first["window"] <= month(14)
    assert "drift notice" in first["message"]
    assert exit_status(doc, [a["window"] for a in doc["alarms"]]) == "drift"
    assert doc["summary"]["performance_alarms"] == 0 and doc["summary"]["drift_notices"] >= 1
    rows = {r["window"]: r for r in doc["sites"][0]["windows"]}
    assert rows[month(20)]["drift"]["embedding"] > 3 * rows[month(8)]["drift"]["embedding"]
    assert all(r["drift"]["intensity"] is not None for r in rows.values())
    assert [c["statistic"] for c in doc["sites"][0]["charts"]] == list(CHARTS)
    assert all(not c["note"].startswith("not run") for c in doc["sites"][0]["charts"])


# ---- (d), (e), (j): the statistics against known answers ---------------------------------------


def test_the_predictive_t_makes_a_new_in_control_value_standard_normal() -> None:
    rng = np.random.default_rng(5)
    draws = rng.normal(3.0, 0.7, size=(4000, 7))  # 6 reference windows and a new one
    z = np.array([predictive_z(row[6], row[:6]) for row in draws])
    assert stats.kstest(z, "norm").pvalue > 0.001
    assert np.quantile(z, [0.05, 0.5, 0.95]) == pytest.approx([-1.645, 0.0, 1.645], abs=0.08)
    # the plain standardisation with the estimated sd has heavier tails than N(0, 1)
    plain = (draws[:, 6] - draws[:, :6].mean(axis=1)) / draws[:, :6].std(axis=1, ddof=1)
    assert np.mean(np.abs(plain) > 1.96) > 0.08


def test_the_decision_interval_gives_each_chart_the_planned_arl() -> None:
    doc = analyse(series(np.random.default_rng(0), 8), DEFAULT, MODEL, CREATED)
    s = doc["settings"]
    assert s["charts_per_site"] == 4 and s["arl0"] == pytest.approx(4 / 0.002)
    for side in ("lower", "upper"):
        assert cusum_chart_arl(s["cusum_h"], s["cusum_k"], 0.0, side) == pytest.approx(
            2000, rel=1e-6
        )


def test_hotelling_t2_and_the_pooled_moments_match_a_hand_computation() -> None:
    rng = np.random.default_rng(2)
    groups = [rng.normal([0.0, 1.0], [1.0, 2.0], size=(n, 2)) for n in (30, 45, 25)]
    parts = [(len(g), g.mean(axis=0), np.cov(g, rowvar=False)) for g in groups]
    m0, s0, n0 = pooled_moments(parts)
    everything = np.vstack(groups)  # the pooled moments are those of all cases together
    assert n0 == 100
    assert m0 == pytest.approx(everything.mean(axis=0))
    assert s0 == pytest.approx(np.cov(everything, rowvar=False))
    mean, n = np.array([0.4, 0.2]), 40
    d = mean - m0
    by_hand = float(d @ np.linalg.inv(s0) @ d)
    t2, distance = hotelling_t2(mean, n, m0, s0, n0)
    assert t2 == pytest.approx(by_hand / (1 / 40 + 1 / 100))
    assert distance == pytest.approx(np.sqrt(by_hand))
    singular = np.array([[1.0, 1.0], [1.0, 1.0]])  # a ridge instead of a failure
    assert np.isfinite(hotelling_t2(mean, n, m0, singular, n0)[0])


def test_the_js_divergence_is_base_2_and_averaged_over_channels() -> None:
    a = np.array([[1, 0], [5, 5]])
    b = np.array([[0, 1], [5, 5]])
    assert js_divergence(a, b) == pytest.approx(0.5)  # 1 bit on channel 1, 0 on channel 2
    assert js_divergence(a * 3, a) == pytest.approx(0.0)  # counts are normalised


# ---- (f), (g): estimate check and acquisition changes by hand -----------------------------------


Interval = tuple[float, float | None, float | None]


def _row(window: str, est: Interval | None, actual: float | None) -> dict[str, Any]:
    return {
        "window": window,
        "insufficient": False,
        "est_auc": dict(zip(("estimate", "lo", "hi"), est, strict=True)) if est else None,
        "actual": None if actual is None else {
            "n_labelled": 50, "auc": {"estimate": actual, "lo": 0.0, "hi": 1.0}},
    }  # fmt: skip


def test_the_estimate_check_by_hand() -> None:
    rows = [
        _row("2025-01", (0.80, 0.70, 0.90), 0.85),  # error -0.05, covered
        _row("2025-02", (0.82, 0.78, 0.86), 0.72),  # error +0.10, not covered
        _row("2025-03", (0.90, None, None), 0.87),  # error +0.03, no interval
        _row("2025-04", (0.90, 0.8, 0.95), None),  # no actual: left out
        _row("2025-05", None, 0.80),  # no estimate: left out
    ]
    check = estimate_check(rows)
    assert [r["window"] for r in check["rows"]] == ["2025-01", "2025-02", "2025-03"]
    assert [r["covered"] for r in check["rows"]] == [True, False, None]
    assert [r["error"] for r in check["rows"]] == pytest.approx([-0.05, 0.10, 0.03])
    assert check["mae"] == pytest.approx(0.06)
    assert check["coverage"] == pytest.approx(0.5)
    assert estimate_check([]) == {"rows": [], "mae": None, "coverage": None}


def _rng(median: float) -> dict[str, float]:
    return {"n": 30, "min": median - 1, "median": median, "max": median + 1}


def test_acquisition_changes_by_hand() -> None:
    base = {
        "n_cases": 60,
        "vendor": {"GE": 60},
        "kernel": {"STANDARD": 50, "other": 10},
        "slice_thickness_mm": _rng(2.5),
        "kvp": _rng(120),
        "contrast_delay_s": {"arterial": _rng(35), "portal": _rng(70)},
    }
    same_ish = copy.deepcopy(base) | {"kvp": _rng(124)}  # +3 %: not a change
    changed = copy.deepcopy(same_ish)
    changed["vendor"] = {"GE": 30, "Siemens": 30}
    changed["slice_thickness_mm"] = _rng(1.25)
    changed["contrast_delay_s"] = {"arterial": _rng(25)}  # portal not recorded any more
    rows = acquisition_changes([("2025-01", base), ("2025-02", same_ish), ("2025-03", None),
                                ("2025-04", changed)])  # fmt: skip
    assert rows == [
        {"window": "2025-04", "previous": "2025-02", "field": "vendor", "before": "GE",
         "after": "GE, Siemens"},
        {"window": "2025-04", "previous": "2025-02", "field": "slice_thickness_mm",
         "before": "2.5", "after": "1.25"},
        {"window": "2025-04", "previous": "2025-02", "field": "contrast_delay_s.arterial",
         "before": "35", "after": "25"},
        {"window": "2025-04", "previous": "2025-02", "field": "contrast_delay_s.portal",
         "before": "70", "after": "not recorded"},
    ]  # fmt: skip


# ---- (h): insufficient windows and sites ------------------------------------------------------


def test_insufficient_windows_carry_no_numbers_and_are_skipped() -> None:
    rng = np.random.default_rng(4)
    states = series(rng, 14, drift_inputs=True, labels=True)
    states[("hospital-a", month(2))].summary["insufficient"] = 1  # the site said so
    states[("hospital-a", month(9))].summary["n"] = 12  # under settings.min_cases
    states[("hospital-a", month(9))].summary["acquisition"] = {"n_cases": 12, "vendor": {"GE": 12}}
    states[("hospital-a", month(70))] = state("hospital-a", 70, {"n": 60, "est-auc": 0.5})
    states[("hospital-z", month(70))] = state("hospital-z", 70, {"n": 60, "est-auc": 0.5})
    doc = analyse(states, DEFAULT, MODEL, CREATED)
    site = doc["sites"][0]
    rows = {r["window"]: r for r in site["windows"]}
    for w in (month(2), month(9)):
        r = rows[w]
        assert r["insufficient"] and not r["reference"]
        assert (r["est_auc"], r["est_sens"], r["est_spec"], r["actual"]) == (None,) * 4
        assert r["drift"] == {"embedding": None, "intensity": None} and r["acquisition"] == {}
        assert all(w not in c["windows"] for c in site["charts"])
    assert site["reference"]["windows"] == [month(i) for i in (0, 1, 3, 4, 5, 6)]
    assert chart(doc, "est-auc")["windows"] == [month(i) for i in (7, 8, 10, 11, 12, 13)]
    assert doc["summary"]["insufficient_windows"] == 2 and doc["summary"]["windows"] == 14
    assert [s["site"] for s in doc["sites"]] == ["hospital-a"]  # only the windows asked for
    assert rows[month(0)]["actual"]["sensitivity"]["estimate"] == pytest.approx(25 / 30)


def test_a_site_without_a_reference_period_has_no_charts() -> None:
    states = series(np.random.default_rng(1), 3, site="hospital-b")
    for i in (1, 2):
        states[("hospital-b", month(i))].summary["insufficient"] = 1
    doc = analyse(states, DEFAULT, MODEL, CREATED)
    site = doc["sites"][0]
    assert site["reference"]["status"] == "insufficient" and site["charts"] == []


def test_gaps_and_missing_inputs_are_named_in_the_chart_notes() -> None:
    states = series(np.random.default_rng(6), 12, labels=True)
    for i in (7, 9, 10):  # labels still pending
        states[("hospital-a", month(i))].actual = None
    doc = analyse(states, DEFAULT, MODEL, CREATED)
    actual = chart(doc, "actual-auc")
    assert actual["windows"] == [month(i) for i in (6, 8, 11)]
    assert "3 of 6 lack the statistic: a gappy series" in actual["note"]
    assert chart(doc, "embedding")["note"].startswith("not run: fewer than 2 reference windows")
    ref = doc["sites"][0]["reference"]
    assert ref["actual_auc"] is not None and len(ref["actual_windows"]) == 6


def test_a_malformed_summary_is_skipped_not_fatal() -> None:
    states = series(np.random.default_rng(8), 10, drift_inputs=True)
    bad = states[("hospital-a", month(8))].summary
    bad.update({"est-auc": 1.7, "emb-cov": [1.0, 2.0], "hist": "x"})
    doc = analyse(states, DEFAULT, MODEL, CREATED)
    for statistic in ("est-auc", "embedding", "intensity"):
        assert month(8) not in chart(doc, statistic)["windows"]


def test_degenerate_inputs_leave_the_chart_out_and_say_why() -> None:
    states = series(np.random.default_rng(10), 10)
    for i in range(10):  # the same histogram and a covariance without spread every window
        flat = {"hist": [5, 5, 5, 5], "hist-channels": 1, "emb-mean": [0.0], "emb-cov": [0.0]}
        states[("hospital-a", month(i))].summary |= flat
    doc = analyse(states, DEFAULT, MODEL, CREATED)
    assert chart(doc, "intensity")["note"].endswith("do not vary (sd 0), no scale")
    assert chart(doc, "embedding")["note"].endswith("embeddings do not vary")
    assert predictive_z(0.9, [0.8, 0.8, 0.8]) == 8.0 and predictive_z(0.8, [0.8, 0.8]) == 0.0


def test_label_keys_are_the_window_summarys_label_dependent_keys() -> None:
    record = WindowSummary(n=40, n_labelled=30, n_labelled_pos=10, actual_insufficient=False,
                           auc=0.8, auc_var=0.002, tp=8, fp=3, fn=2, tn=17).to_record()  # fmt: skip
    assert set(LABEL_KEYS) <= set(record)
    assert set(LABEL_KEYS) == {k for k in record if k.startswith(("n-labelled", "actual"))} | {
        "auc", "auc-var", "tp", "fp", "fn", "tn"}  # fmt: skip


# ---- (i): the document and its schema --------------------------------------------------------


def test_the_committed_schema_is_the_generated_one() -> None:
    committed = Path(monitor_model.__file__).with_name(SCHEMA_FILE).read_text(encoding="utf-8")
    assert committed == schema_text(), (
        f"server/monitoring/{SCHEMA_FILE} differs from the models: regenerate it with "
        "`python -m server.monitoring.model` (never edit it by hand)"
    )
    Draft202012Validator.check_schema(schema())
    assert WINDOW.pattern == monitor_model.WINDOW_PATTERN
    undescribed = [
        f"{name}.{key}"
        for name, block in [("Monitor", schema()), *schema()["$defs"].items()]
        for key, prop in block.get("properties", {}).items()
        if not prop.get("description")
    ]
    assert not undescribed


def test_documents_validate_and_a_bad_field_is_named_by_its_path() -> None:
    rng = np.random.default_rng(9)
    states = series(rng, 16, drift_inputs=True, labels=True, est_shift=(10, -0.1))
    states |= series(rng, 16, site="hospital-b")
    doc = analyse(states, DEFAULT, MODEL, CREATED)
    Draft202012Validator(schema()).validate(json.loads(json.dumps(doc)))
    bad = copy.deepcopy(doc)
    bad["sites"][1]["windows"][3]["n"] = -4
    with pytest.raises(MonitorError, match="at sites/1/windows/3/n: "):
        validate(bad)
    paths = [tuple(e.absolute_path) for e in Draft202012Validator(schema()).iter_errors(bad)]
    assert paths == [("sites", 1, "windows", 3, "n")]  # the published schema agrees
    bad = copy.deepcopy(doc)
    bad["alarms"][0]["kind"] = "alarm"
    with pytest.raises(MonitorError, match="at alarms/0/kind: "):
        validate(bad)


def test_the_model_imports_nothing_of_the_runtime() -> None:
    code = (
        "import sys, server.monitoring.model; "
        "print(sorted({'torch', 'flwr', 'monai', 'numpy', 'scipy'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="time order"):
        MonitorSettings(("2025-02", "2025-01"), "2026-01-01")
    with pytest.raises(ValueError, match="YYYY-MM"):
        MonitorSettings(("January",), "2026-01-01")
    with pytest.raises(ValueError, match="as_of"):
        MonitorSettings(("2025-01",), "2026-01")
    with pytest.raises(ValueError, match="reference_windows"):
        MonitorSettings(("2025-01",), "2026-01-01", reference_windows=1)


def test_a_perfect_window_or_broken_moments_stop_no_analysis() -> None:
    """A window whose labelled cases separate perfectly has a DeLong variance of 0 (its
    weight is floored, not infinite); moments that break the T² arithmetic stop that chart
    alone, with a note, and every other chart and site still runs."""
    rng = np.random.default_rng(11)
    states = series(rng, 12, labels=True, drift_inputs=True)
    first = states[("hospital-a", month(0))]
    first.actual = {**(first.actual or {}), "auc": 1.0, "auc-var": 0.0}
    for i in range(6):  # covariances whose pooled sum overflows to inf
        s = states[("hospital-a", month(i))].summary
        s["emb-cov"] = [1e308] * len(s["emb-cov"])
    states |= series(np.random.default_rng(12), 12, site="hospital-b", labels=True)
    doc = analyse(states, DEFAULT, MODEL, CREATED)
    actual = chart(doc, "actual-auc")
    assert actual["windows"] and actual["note"].startswith("CUSUM against")
    assert all(np.isfinite(actual["z"]))
    embedding = chart(doc, "embedding")
    assert embedding["windows"] == [] and embedding["note"].startswith("not run")
    assert chart(doc, "est-auc", site=1)["windows"]
