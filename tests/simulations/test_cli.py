"""The `hepafed` command line as a user meets it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from simulations.cli import main, parse_overrides


def test_parse_overrides_uses_toml_values() -> None:
    got = parse_overrides(["federation.num-rounds=4 train.lr=0.01", "data.site-root='/x y'"])
    assert got == {"federation.num-rounds": 4, "train.lr": 0.01, "data.site-root": "/x y"}
    assert parse_overrides(["federation.strategy=fedadam"]) == {"federation.strategy": "fedadam"}


def test_site_check_ok(
    site_factory: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    site = site_factory(n_cases=6)
    assert main(["site", "check", str(site)]) == 0
    out = capsys.readouterr().out
    assert "site site-a: 6 cases" in out and "splits: train=4, val=0, test=2" in out
    assert "benign=3 malignant=3" in out and "no problems found" in out


def test_site_check_lists_every_problem_and_modifies_nothing(
    site_factory: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    site = site_factory(n_cases=3)
    (site / "images" / "site-a-000_arterial.nii.gz").unlink()
    (site / "masks" / "site-a-002.nii.gz").write_bytes(b"garbage")
    before = {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}
    assert main(["site", "check", str(site)]) == 1
    err = capsys.readouterr().err
    assert "2 problem(s)" in err
    assert "site-a-000" in err and "image_arterial: file not found" in err
    assert "site-a-002" in err and "mask: unreadable image" in err
    assert before == {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}


def test_bad_run_config_is_a_usage_error(
    site_factory: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    site = site_factory(n_cases=2)
    assert main(["site", "check", str(site), "--run-config", "train.lrr=1"]) == 2
    assert "unknown run-config key 'train.lrr'" in capsys.readouterr().err


@pytest.mark.slow
def test_simulate_quick_on_liver_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "simulate",
            "--scenario",
            "liver-2",
            "--quick",
            "--data-dir",
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--run-config",
            "eval.min-cases=8 eval.min-per-class=3",  # liver-2 has 10 test cases per site
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    sites = [r["site"] for r in summary["rows"]]
    assert len(sites) >= 2
    for row in summary["rows"]:
        assert row["site"] in printed
        for regime in ("federated", "local_only", "pooled"):
            assert 0.0 <= row[regime]["auc"] <= 1.0, (row["site"], regime)
    assert {"phantom", "federation", "baselines", "total"} <= set(summary["seconds"])
    assert (out / "rounds.jsonl").is_file() and (out / "checkpoint.pt").is_file()
    # the report holds the federated, local-only and pooled models at every site
    report = json.loads((out / "report.json").read_text())
    models = {(c["model"], c["site"]) for c in report["matrix"]}
    for site in sites:
        assert {("global", site), (f"local-{site}", site), ("pooled", site)} <= models
    assert "pooled internal AUC" in printed and "report.html" in printed
    # `hepafed report` re-renders the page from report.json alone
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").is_file()
    assert main(["report", str(tmp_path)]) == 2  # no report.json there: a clear usage error
    assert "does not exist" in capsys.readouterr().err
