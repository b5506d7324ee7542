"""The study driver's grid, resume logic and report, with a fake runner (no training)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from common.cli import main
from simulations.phantom import TRAINING_DATA_VERSION
from simulations.study import (
    FAILED,
    OK,
    Cell,
    Study,
    StudyBusy,
    StudyError,
    append_result,
    cells,
    done_keys,
    load_study,
    read_results,
    run_study,
    select,
)
from simulations.study_report import render, write_reports

STUDY = """
name = "mini"
seeds = [1, 2]
scenarios = ["liver-5"]
results = "{results}"
report = "{report}"

[variants.default]
description = "the defaults"

[variants.slow]
overrides = {{ "train.lr" = 0.0001 }}
"""
FP16_TWIN = """
[variants.slow-fp16]
overrides = {{ "train.lr" = 0.0001, "federation.compression" = "fp16" }}
"""


def _study(tmp_path: Path, extra: str = "") -> Study:
    text = (STUDY + extra).format(results=tmp_path / "results.jsonl",
                                  report=tmp_path / "mini-{scenario}.md")  # fmt: skip
    (tmp_path / "mini.toml").write_text(text)
    return load_study(tmp_path / "mini.toml")


def _figures(cell: Cell) -> dict[str, Any]:
    """Made-up figures that depend on the cell, as ``study_figures.cell_figures`` lays out."""
    base = 0.8 if cell.variant.name == "default" else 0.7
    x = base + 0.01 * cell.seed
    if cell.variant.name == "slow-fp16":  # the compressed twin of "slow": a small change
        x += 0.002 * cell.seed
    return {
        "pooled_internal_auc": x,
        "site_auc": {"a": x + 0.05, "b": x - 0.1, "e": x - 0.05},
        "local_only_auc": {"a": x - 0.1, "b": x - 0.2, "e": x - 0.15},
        "pooled_model_auc": {"a": x, "b": x, "e": x},
        "roles": {"a": "train", "b": "train", "e": "external"},
        "external_sites": ["e"],
        "gap": {"e": 0.05 * (-1) ** cell.seed},
        "same_cases": {
            "internal": {"pooled": x + 0.02, "fedavg": x, "local_mean": x - 0.1},
            "e": {"pooled": x - 0.1, "fedavg": x - 0.05, "local_mean": x - 0.15},
        },
        "budget": {"rounds": 10, "local_epochs": 2, "passes": 20},
        "seconds": {"total": 1.0},
    }


def test_the_grid_is_variants_within_seeds_and_keys_follow_the_overrides(tmp_path: Path) -> None:
    study = _study(tmp_path)
    grid = list(cells(study))
    assert [(c.seed, c.variant.name) for c in grid] == [
        (1, "default"), (1, "slow"), (2, "default"), (2, "slow")
    ]  # fmt: skip
    assert grid[0].key.startswith(f"liver-5/phantom-{TRAINING_DATA_VERSION}/default/seed-1/")
    assert grid[0].key != next(iter(cells(study, quick=True))).key
    changed = select(study, variants=["slow"])
    assert [v.name for v in changed.variants] == ["slow"]
    with pytest.raises(StudyError, match=r"\['fast'\] not in study 'mini'"):
        select(study, variants=["fast"])


def test_bad_study_files_are_named_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('seeds = [1]\n[variants.x]\noverrides = { "train.lrr" = 1 }\n')
    with pytest.raises(StudyError, match=r"variant 'x': unknown run-config key 'train.lrr'"):
        load_study(bad)
    bad.write_text("seeds = [1]\nvariant = 3\n")
    with pytest.raises(StudyError, match=r"unknown key\(s\) \['variant'\]"):
        load_study(bad)
    with pytest.raises(StudyError, match="bundled: .*stability"):
        load_study("no-such-study")
    assert load_study("stability").seeds == (2026, 2027, 2028, 2029, 2030)


def test_a_study_resumes_where_it_stopped_and_retries_failed_cells(tmp_path: Path) -> None:
    study = _study(tmp_path)
    calls: list[str] = []

    def flaky(cell: Cell, data_dir: Path, run_dir: Path) -> dict[str, Any]:
        calls.append(cell.key)
        run_dir.mkdir(parents=True)  # a second try must find no half-written folder
        if cell.seed == 2 and cell.variant.name == "slow" and len(calls) < 5:
            raise RuntimeError("out of memory")
        return _figures(cell)

    first = run_study(study, runs_dir=tmp_path / "runs", runner=flaky, max_cells=3)
    assert [r["status"] for r in first] == [OK, OK, OK] and len(calls) == 3
    second = run_study(study, runs_dir=tmp_path / "runs", runner=flaky)
    assert [r["status"] for r in second] == [FAILED]
    assert "out of memory" in second[0]["error"] and second[0]["variant"] == "slow"
    third = run_study(study, runs_dir=tmp_path / "runs", runner=flaky)
    assert [(r["status"], r["seed"], r["variant"]) for r in third] == [(OK, 2, "slow")]
    assert run_study(study, runs_dir=tmp_path / "runs", runner=flaky) == []
    records = read_results(study.results)
    assert len(records) == 5 and len(done_keys(records)) == 4
    assert all("wall_s" in r for r in records)


def test_a_study_already_running_into_the_same_file_is_refused_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import fcntl

    study = _study(tmp_path)
    run_study(study, runs_dir=tmp_path / "runs", runner=lambda c, d, r: _figures(c), max_cells=1)
    before = study.results.read_bytes()
    running = tmp_path / "runs" / "liver-5" / "slow" / "seed-1"  # the other run's next cell
    running.mkdir(parents=True)
    calls: list[str] = []

    def counted(cell: Cell, data_dir: Path, run_dir: Path) -> dict[str, Any]:
        calls.append(cell.key)
        return _figures(cell)

    with study.results.with_name("results.jsonl.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the study another process runs
        with pytest.raises(StudyBusy, match="results.jsonl: another `hepafed study` is running"):
            run_study(study, runs_dir=tmp_path / "runs", runner=counted)
        assert main(["study", str(tmp_path / "mini.toml"), "--runs-dir",
                     str(tmp_path / "runs")]) == 2  # fmt: skip
        assert "another `hepafed study` is running this study" in capsys.readouterr().err
    assert calls == [] and running.is_dir()  # no cell run, the other's folder untouched
    assert study.results.read_bytes() == before
    written = run_study(study, runs_dir=tmp_path / "runs", runner=lambda c, d, r: _figures(c))
    assert len(written) == 3 and len(done_keys(read_results(study.results))) == 4


def test_a_study_stops_after_failures_in_a_row(tmp_path: Path) -> None:
    study = _study(tmp_path)

    def broken(cell: Cell, data_dir: Path, run_dir: Path) -> dict[str, Any]:
        raise ImportError("cannot import name 'x'")

    written = run_study(study, runs_dir=tmp_path / "runs", runner=broken, max_failures=2)
    assert [r["status"] for r in written] == [FAILED, FAILED]
    assert len(read_results(study.results)) == 2 and not done_keys(read_results(study.results))


def test_a_line_cut_short_by_a_crash_is_ignored_and_not_glued_to(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    append_result(path, {"key": "a", "status": OK})
    with path.open("a") as fh:
        fh.write('{"key": "b", "sta')  # the process died here
    append_result(path, {"key": "c", "status": OK})
    assert [r["key"] for r in read_results(path)] == ["a", "c"]
    assert done_keys(read_results(path)) == {"a", "c"}


def test_the_report_gives_mean_sd_and_the_target_table(tmp_path: Path) -> None:
    study = _study(tmp_path, FP16_TWIN)
    run_study(study, runs_dir=tmp_path / "runs", runner=lambda c, d, r: _figures(c),
              command="hepafed study mini")  # fmt: skip
    text = render(study, read_results(study.results), "liver-5")
    # default: pooled internal AUC 0.81 and 0.82 -> mean 0.815, sd 0.00707
    sd = statistics.stdev([0.81, 0.82])
    assert f"| pooled internal AUC (FedAvg, random effects) | 0.815 | {sd:.3f} | 2 |" in text
    assert (
        f"| sd of pooled internal AUC across seeds | 0.118 (3 seeds) | ≤ 0.02 | {sd:.3f} (2 seeds)"
        in text
    )
    # worst training site over all seeds: b at seed 1, 0.81 - 0.1 (default), 0.71 - 0.1 (slow)
    assert "| worst training-site AUC over all seeds | 0.391 | ≥ 0.75 | 0.710 | 0.610 |" in text
    # fp16 against its uncompressed twin, same seed: every AUC moves by 0.002 x seed (at most
    # 0.004 at seed 2), within the targets; the other variants compress nothing
    fp16_row = next(line for line in text.splitlines() if "compression=fp16" in line)
    assert fp16_row.endswith(
        "| — | — | fp16: at most 0.0040 pooled, 0.0040 per site (2 seeds; met) |"
    ), fp16_row
    # the gap alternates in sign across seeds: 1 of 2 positive, mean 0
    assert "1/2 positive, +0.000 (sd 0.071)" in text
    assert "0.835 / 0.815 / 0.715: order holds, pooled - FedAvg +0.020" in text  # internal, default
    assert (
        "0.715 / 0.765 / 0.665: order violated, pooled - FedAvg -0.050" in text
    )  # at e: pooled below FedAvg
    assert "hepafed study mini" in text and "20 passes" in text
    assert [p.name for p in write_reports(study)] == ["mini-liver-5.md"]


def test_study_report_command_reads_only_the_results_file(tmp_path: Path, capsys: Any) -> None:
    results = tmp_path / "r.jsonl"
    cell = next(iter(cells(load_study("stability"))))
    append_result(results, {"key": cell.key, "status": OK, "variant": "default", "seed": 2026,
                            "scenario": "liver-5", **_figures(cell)})  # fmt: skip
    assert main(["study", "--report", "--results", str(results)]) == 0
    report = tmp_path / "stability-liver-5.md"
    assert f"report: {report}" in capsys.readouterr().out
    assert "### default" in report.read_text()
    assert main(["study", "--report", "--seeds", "x"]) == 2
    doc = json.loads(results.read_text().splitlines()[0])
    assert doc["key"] == cell.key


def test_cells_of_an_earlier_phantom_are_run_again_and_reported_apart(tmp_path: Path) -> None:
    """A record without a phantom version ran on generator 2.0 (before the val split): its
    cell is not done on the current phantom, and its figures form their own group, after
    the current phantom's, never averaged with them."""
    study = _study(tmp_path)
    old = Cell(study.variants[0], 1, "liver-5", phantom="2.0")
    legacy_key = old.key.replace("/phantom-2.0", "")  # how keys were written before
    append_result(study.results, {"key": legacy_key, "status": OK, "variant": "default",
                                  "seed": 1, "scenario": "liver-5", **_figures(old)})  # fmt: skip
    assert legacy_key not in {c.key for c in cells(study)}
    written = run_study(study, runs_dir=tmp_path / "runs",
                        runner=lambda c, d, r: _figures(c))  # fmt: skip
    assert len(written) == 4 and all(r["phantom"] == TRAINING_DATA_VERSION for r in written)
    text = render(study, read_results(study.results), "liver-5")
    headings = [line for line in text.splitlines() if line.startswith("### ")]
    assert headings == ["### default", "### slow", "### default (phantom 2.0)"]
    # the current default: seeds 1 and 2 (0.81, 0.82); the 2.0 group only its one cell
    assert "| pooled internal AUC (FedAvg, random effects) | 0.815 |" in text
    assert "| pooled internal AUC (FedAvg, random effects) | 0.810 | n/a | 1 |" in text
