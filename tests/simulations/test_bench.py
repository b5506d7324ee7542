"""`hepafed bench --quick`: the benchmark keeps working and its figures mean what they say.

Not a timing test: speed targets are read from the written files, never asserted
here. What is asserted is what must hold on any machine: the aggregate is the
weighted mean, streaming aggregation's live memory does not grow with sites while
stock Flower's does, compression sends about a half or a quarter of the bytes,
and the files hold every section that ran.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from common.cli import main
from simulations.bench import run_bench
from simulations.bench_measure import spread
from simulations.bench_report import markdown


@pytest.mark.slow
def test_quick_bench_writes_every_section_and_its_figures_hold(tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = run_bench(out, quick=True, data_dir=tmp_path / "data")
    doc = json.loads((out / "bench.json").read_text())
    assert set(doc["sections"]) >= {"bandwidth", "aggregation", "client", "bytes", "round"}
    assert "sites-100" not in doc["sections"]  # full runs only
    text = (out / "bench.md").read_text()
    assert text == markdown(result)
    for table in text.split("\n\n"):  # every row of a table has its header's columns
        rows = [line for line in table.splitlines() if line.startswith("|")]
        assert len({row.count("|") for row in rows}) <= 1, table

    aggregation = {(r["method"], r["sites"]): r for r in doc["sections"]["aggregation"]}
    for row in aggregation.values():
        assert row["max_abs_error"] < 1e-5  # the weighted mean, checked inside the case
    # streaming: one update held at a time, whatever the number of sites
    ours_2, ours_5 = aggregation[("hepafed", 2)], aggregation[("hepafed", 5)]
    assert ours_5["live_peak_x_model"] <= 3.0
    assert ours_5["live_peak_x_model"] - ours_2["live_peak_x_model"] < 0.2
    # stock Flower holds every reply: about one model more per site
    flower_2, flower_5 = aggregation[("flower", 2)], aggregation[("flower", 5)]
    assert flower_5["live_peak_x_model"] - flower_2["live_peak_x_model"] > 2.5
    for ours in (ours_2, ours_5):  # each run against the bandwidth measured just before it
        share, bw = ours["of_bandwidth"], ours["bandwidth_gbps"]
        assert share["runs"] == bw["runs"] == ours["seconds"]["runs"]
        assert 0 < share["min"] <= share["median"] <= share["max"] and bw["min"] > 0
    assert "of_bandwidth" not in flower_5

    ratios = {r["compression"]: r["ratio"] for r in doc["sections"]["bytes"]}
    assert ratios["none"] == 1.0
    assert 0.49 < ratios["fp16"] < 0.51  # one flat array: headers and framing are tiny
    assert 0.24 < ratios["int8"] < 0.26

    client = doc["sections"]["client"]
    assert client["augment"] is False  # same work as the plain loop
    for key in ("plain_images_per_s", "train_local_images_per_s", "site_train_images_per_s"):
        assert client[key]["median"] > 0
    round_ = doc["sections"]["round"]
    assert round_["hepafed_round_s"]["runs"] == round_["flower_round_s"]["runs"] == 2
    # paired runs: the ratio is the median of the pairs' ratios
    assert round_["ratio"] == pytest.approx(statistics.median(round_["pair_ratios"]))
    assert len(round_["pair_ratios"]) == round_["runs"]
    assert set(round_["hepafed_phases_s"]) == {"prepare", "exchange", "screen_fold", "finish"}
    assert set(round_["flower_phases_s"]) == {"prepare", "exchange", "finish"}
    assert all(v >= 0 for v in round_["hepafed_phases_s"].values())
    # the phases account for the round: their medians add up to about the median round
    total = sum(round_["hepafed_phases_s"].values())
    assert total == pytest.approx(round_["hepafed_round_s"]["median"], rel=0.35)
    assert {"aggregation_memory", "aggregation_bandwidth", "client_throughput"} <= set(
        doc["targets"]
    )


def test_the_bandwidth_target_is_the_median_of_paired_ratios() -> None:
    """Each site count's median per-run ratio (throughput over the bandwidth measured just
    before that run), then the median over the counts; rows from an older run, without
    pairs, fall back to the bandwidth section."""
    from simulations.bench_report import _bandwidth_target

    def row(through: float, ratios: list[float], bw: float) -> dict[str, Any]:
        return {"throughput_gbps": spread([through]), "of_bandwidth": spread(ratios),
                "bandwidth_gbps": spread([bw])}  # fmt: skip

    section = {"numpy_add_gbps": spread([8.0]), "torch_add_gbps": spread([10.0])}
    rows = [row(4.0, [0.30, 0.40, 0.90], 10.0), row(5.0, [0.50, 0.55, 0.60], 10.0),
            row(6.0, [0.52, 0.53, 0.54], 12.0)]  # fmt: skip
    target = _bandwidth_target(rows, section)
    assert target is not None
    assert target["met"] and "53% (30%-90%)" in target["value"]  # median of 0.40, 0.55, 0.53
    assert _bandwidth_target(rows, None) == target  # paired rows need no bandwidth section
    assert "in memory traffic" in target["value"] and "71%" in target["value"]  # 0.53 x 16/12
    rows[1]["of_bandwidth"] = spread([0.45, 0.48, 0.49])
    lower = _bandwidth_target(rows, section)
    assert lower is not None and not lower["met"]  # median of 0.40, 0.48, 0.53
    old = [{"throughput_gbps": spread([4.5])}, {"throughput_gbps": spread([5.5])}]
    fallback = _bandwidth_target(old, section)
    assert fallback is not None
    assert fallback["met"] and fallback["value"] == "5.00 GB/s of 10.00 GB/s = 50%"
    assert _bandwidth_target(old, None) is None  # nothing to judge it against


def test_the_aggregation_targets_are_judged_without_a_bandwidth_section() -> None:
    """``--sections aggregation`` alone: its rows carry their own paired bandwidth."""
    from simulations.bench_report import BenchResult, evaluate_targets

    row = {"method": "hepafed", "sites": 20, "live_peak_x_model": 2.2, "rss_peak_x_model": 2.4,
           "throughput_gbps": spread([4.0]), "of_bandwidth": spread([0.25, 0.3, 0.35]),
           "bandwidth_gbps": spread([15.0])}  # fmt: skip
    result = BenchResult({}, {"aggregation": [row]})
    evaluate_targets(result)
    assert result.targets["aggregation_memory"]["met"]
    assert not result.targets["aggregation_bandwidth"]["met"]
    assert result.targets["aggregation_bandwidth"]["value"].startswith("30% (25%-35%)")


def test_unknown_bench_section_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--sections", "bandwidth,warp-drive"]) == 2
    assert "unknown ['warp-drive']" in capsys.readouterr().err
