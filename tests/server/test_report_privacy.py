"""Epsilon and delta per site in report.json, report.html and the terminal summary.

Case ``dp-report-epsilon`` (docs/trust.md): epsilon appeared nowhere in the report.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from common.config import RunConfig
from server.designs import Evaluation
from server.privacy_ledger import SiteLedger
from server.records import RunRecorder
from server.report.build import build_report
from server.report.files import ReportError, validate, write_report
from server.report.html import render_html
from server.report.privacy import privacy_section
from server.report.terminal import format_summary
from server.sites import SiteInfo
from tests.server.test_report_html import EVIL
from tests.server.test_report_schema import PROVENANCE, SITES, classification, config

DELTA = 1e-5


def _flat(mode: str, **extra: Any) -> dict[str, Any]:
    return config(**{"privacy.mode": mode, "privacy.delta": DELTA, **extra})


def _ledger_rounds() -> list[dict[str, Any]]:
    """rounds.jsonl records of two folds: each record carries the run's ledger so far."""
    ledger = SiteLedger(DELTA)
    records = []
    for model, sites, rounds in (("without-c", ["a", "b"], 2), ("without-b", ["a", "c"], 3)):
        for rnd in range(1, rounds + 1):
            ledger.charge(sites, 1.0)
            records.append({"model": model, "round": rnd, "phase": "train",
                            "privacy": {"epsilon": 0.0, "sites": ledger.summary()}})  # fmt: skip
        records.append({"model": model, "phase": "final-evaluate", "failed": {}})
    ledger.mark_unbounded(EVIL, "local-x: trained at the site, sent without noise")
    records.append({"model": "local-x", "phase": "privacy", "privacy": {"sites": ledger.summary()}})
    return records


def _report(privacy: dict[str, Any] | None) -> dict[str, Any]:
    evals = [
        Evaluation("global", "a", "internal", "test", classification(0.90, 0.001)),
        Evaluation("global", "e", "external", "test", classification(0.70, 0.002, 2.0)),
    ]
    return build_report(evals, config(), SITES, provenance=PROVENANCE, privacy=privacy)


def test_central_dp_reports_the_run_ledger_per_site() -> None:
    block = privacy_section(_ledger_rounds(), _flat("central", **{"privacy.max-epsilon": 20.0}))
    assert block is not None
    assert {k: block[k] for k in ("mode", "delta", "max_epsilon", "accounting")} == {
        "mode": "central",
        "delta": DELTA,
        "max_epsilon": 20.0,
        "accounting": "rdp",
    }
    rows = {r["site"]: r for r in block["sites"]}
    assert sorted(rows) == sorted([EVIL, "a", "b", "c"])
    assert {s: rows[s]["releases"] for s in "abc"} == {"a": 5, "b": 2, "c": 3}
    reference = SiteLedger(DELTA)
    for _ in range(5):  # a trained in both folds: 2 + 3 releases
        reference.charge(["a"], 1.0)
    assert rows["a"]["epsilon"] == pytest.approx(reference.epsilon("a"))
    assert rows["a"]["epsilon_gdp"] == pytest.approx(reference.epsilon_gdp("a"))
    assert rows["a"]["delta"] == DELTA
    assert rows[EVIL]["epsilon"] is None and rows[EVIL]["epsilon_gdp"] is None
    assert rows[EVIL]["unbounded"] == ["local-x: trained at the site, sent without noise"]
    report = _report(block)
    validate(report)  # the schema knows the block
    assert report["privacy"] == block


def test_no_dp_no_section_and_local_dp_reports_what_sites_spent() -> None:
    assert privacy_section(_ledger_rounds(), _flat("none")) is None
    assert "privacy" not in _report(None)
    rounds = [
        {"phase": "train", "sites": {"a": {"dp-epsilon-total": 10.0, "dp-releases": 1},
                                     "b": {"train-loss": 0.5}}},
        {"phase": "train", "sites": {"a": {"dp-epsilon-total": 14.4, "dp-releases": 2}}},
        {"phase": "train", "sites": {"a": {"dp-epsilon-total": 99.0, "dp-releases": 1}}},
    ]  # fmt: skip
    block = privacy_section(rounds, _flat("local"))
    assert block is not None and block["accounting"] == "gdp"
    assert block["sites"] == [
        {"site": "a", "epsilon": 14.4, "epsilon_gdp": 14.4, "delta": DELTA, "releases": 2,
         "unbounded": []}
    ]  # fmt: skip
    validate(_report(block))


@pytest.mark.parametrize(
    ("damage", "where"),
    [
        (lambda p: p["sites"][0].update(epsilon=-1.0), "privacy/sites/0/epsilon"),
        (lambda p: p["sites"][0].pop("delta"), "privacy/sites/0"),
        (lambda p: p.update(mode="none"), "privacy/mode"),
    ],
)
def test_a_damaged_privacy_block_is_rejected_naming_the_path(damage: Any, where: str) -> None:
    report = _report(privacy_section(_ledger_rounds(), _flat("central")))
    broken = copy.deepcopy(report)
    damage(broken["privacy"])
    with pytest.raises(ReportError, match=f"at {where}:"):
        validate(broken)


def test_html_and_summary_show_epsilon_per_site_escaped() -> None:
    block = privacy_section(_ledger_rounds(), _flat("central"))
    report = _report(block)
    page = render_html(report)
    assert '<section id="privacy"' in page and '<h2 id="privacy-h">Privacy</h2>' in page
    assert EVIL not in page and "&lt;script&gt;alert(&quot;x&quot;)" in page
    a = next(r for r in report["privacy"]["sites"] if r["site"] == "a")
    assert f'<th scope="row">a</th><td class="num">{a["epsilon"]:.3f}</td>' in page
    assert "unbounded: local-x: trained at the site, sent without noise" in page
    assert "privacy" not in render_html(_report(None)).split("<main", 1)[1].split("Provenance")[0]
    text = format_summary(report)
    assert f"privacy: central, epsilon at delta {DELTA:g} (RDP)" in text
    assert f"  a            epsilon {a['epsilon']:.3f} (exact {a['epsilon_gdp']:.3f})" in text
    assert "over 5 release(s)" in text


def test_write_report_reads_the_ledger_from_the_run_folder(tmp_path: Path) -> None:
    cfg = RunConfig().replace({"privacy.mode": "central", "eval.histogram-bins": 4})
    recorder = RunRecorder(tmp_path)
    sites = [asdict(SiteInfo(1, "a", "train", 10, 5, "ab" * 32, {"n_cases": 15}))]
    recorder.start(cfg, sites, "run-1")
    for entry in _ledger_rounds():
        recorder.log_round(entry)
    evals = [Evaluation("global", "a", "internal", "test", classification(0.9, 0.001))]
    recorder.write_evaluations([e.to_dict() for e in evals])
    report = write_report(tmp_path)
    rows = {r["site"]: r for r in report["privacy"]["sites"]}
    assert rows["a"]["releases"] == 5 and math.isfinite(rows["a"]["epsilon"])
    assert 'id="privacy"' in (tmp_path / "report.html").read_text(encoding="utf-8")
