"""The `hepafed` command line as a user meets it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from common.cli import main, parse_overrides


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


def test_site_check_summary_of_a_phantom_site(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulations.phantom import generate_phantom
    from simulations.scenario import load_scenario

    root = generate_phantom(load_scenario("liver-2"), tmp_path / "phantom")
    site = root / "site-b"
    before = {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}
    assert main(["site", "check", str(site)]) == 0
    out = capsys.readouterr().out
    assert "site site-b: 40 cases" in out and "channels: arterial, portal, delayed" in out
    assert "image sources: NIfTI=120" in out
    assert "image size (voxels), min/median/max: x 100/100/100; y 100/100/100; z 1/1/1" in out
    assert "voxel spacing (mm), min/median/max: x 1.8/1.8/1.8; y 1.8/1.8/1.8; z 3/3/3" in out
    assert "vendor: GE=40" in out and "scanner model: Revolution CT=40" in out
    assert "kernel: soft=40" in out
    assert "slice thickness (mm): min 3, median 3, max 3 (40 cases)" in out
    assert "kVp: min 120, median 120, max 120 (40 cases)" in out
    assert "field strength (T): not recorded" in out
    assert "arterial: min 30, median 30, max 30 (40 cases)" in out
    assert "no problems found" in out
    assert before == {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}


def test_site_check_summary_of_a_dicom_site(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.dicom_series import make_mixed_site

    site = make_mixed_site(tmp_path, n_pairs=2)
    config = ["--run-config", "data.channels=ct data.spatial-dims=3"]
    before = {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}
    assert main(["site", "check", str(site), *config]) == 0
    out = capsys.readouterr().out
    assert "site site-dicom: 4 cases" in out and "image sources: DICOM series=2, NIfTI=2" in out
    assert "image size (voxels), min/median/max: x 24/24/24; y 20/20/20; z 6/6/6" in out
    assert "voxel spacing (mm), min/median/max: x 0.8/0.8/0.8; y 0.7/0.7/0.7; z 2/2/2" in out
    assert "vendor: GE MEDICAL SYSTEMS=2" in out and "kernel: STANDARD=2" in out
    assert "slice thickness (mm): min 2, median 2, max 2 (2 cases)" in out
    assert "ct: min 35.5, median 35.5, max 35.5 (2 cases)" in out
    assert before == {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}

    (site / "dicom/case1/slice004.dcm").unlink()
    assert main(["site", "check", str(site), *config]) == 1
    err = capsys.readouterr().err
    assert "1 problem(s)" in err and "(case 'dcm-1'): image_ct: DICOM series" in err
    assert "inconsistent slice spacing" in err


def test_bad_run_config_is_a_usage_error(
    site_factory: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    site = site_factory(n_cases=2)
    assert main(["site", "check", str(site), "--run-config", "train.lrr=1"]) == 2
    assert "unknown run-config key 'train.lrr'" in capsys.readouterr().err


@pytest.mark.slow
def test_simulate_quick_on_liver_2_with_two_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``hepafed simulate --quick --seeds 2``: each seed a whole simulation in its own
    folder (checked in full for the first), then one report combining them."""
    top = tmp_path / "run"
    code = main(
        [
            "simulate",
            "--scenario",
            "liver-2",
            "--quick",
            "--seeds",
            "2",
            "--data-dir",
            str(tmp_path / "data"),
            "--out",
            str(top),
            "--run-config",
            "eval.min-cases=8 eval.min-per-class=3",  # liver-2 has 10 test cases per site
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    out = top / "seed-2026"
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
    # the report rewritten with the pooled baseline is signed again and the trail says why
    assert main(["audit", "verify", str(out)]) == 0
    assert "chain intact, head signed by the server key" in capsys.readouterr().out
    kinds = [json.loads(line)["kind"] for line in (out / "audit.jsonl").read_text().splitlines()]
    assert kinds[-5:] == ["report", "final", "report-rewritten", "report", "final"]
    # the second seed trained on the same splits with its own seed
    second = json.loads((top / "seed-2027" / "config.json").read_text())["config"]
    assert second["seed"] == 2027
    assert second["data.site-root"] == report["provenance"]["config"]["data.site-root"]
    # one report over both seeds: each site's AUC per seed, spread and combined interval
    combined = json.loads((top / "report.json").read_text())
    noise = combined["training_noise"]
    assert noise["seeds"] == [2026, 2027] and noise["runs"] == ["seed-2026", "seed-2027"]
    by_seed = [json.loads((top / f"seed-{s}" / "report.json").read_text()) for s in (2026, 2027)]
    for entry in noise["sites"]:
        aucs = [
            next(r["auc"]["estimate"] for r in doc["sites"] if r["site"] == entry["site"])
            for doc in by_seed
        ]
        assert entry["auc"]["per_seed"] == pytest.approx(aucs)
        c = entry["auc"]["combined"]
        assert c["estimate"] == pytest.approx(sum(aucs) / 2)
        assert c["between_sd"] == pytest.approx(abs(aucs[0] - aucs[1]) / 2**0.5)
        assert c["lo"] <= min(aucs) and c["hi"] >= max(aucs)  # t with 1 df: wide
    assert "training noise over 2 seeds" in printed and "report.html" in printed
    assert "Training noise" in (top / "report.html").read_text()
    # `hepafed report` combines the seeds again, and re-renders a single run
    (top / "report.html").unlink()
    assert main(["report", str(top)]) == 0
    assert (top / "report.html").is_file()
    assert "combining seeds 2026, 2027" in capsys.readouterr().out
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").is_file()
    assert main(["report", str(tmp_path)]) == 2  # no report.json there: a clear usage error
    assert "does not exist" in capsys.readouterr().err
