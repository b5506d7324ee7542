"""Compression's effect on each site's AUC in the benchmark: paired by training seed, so
it is told apart from training noise (the runs themselves are `hepafed bench --sections
simulate`, not CI)."""

from __future__ import annotations

import math

import pytest

from simulations.bench_federation import paired_changes
from simulations.bench_measure import spread
from simulations.bench_report import BenchResult, evaluate_targets, markdown

NONE = {"a": [0.80, 0.82, 0.78, 0.81, 0.79], "b": [0.70, 0.71, 0.69, 0.70, 0.72]}
INT8 = {"a": [0.81, 0.815, 0.79, 0.80, 0.80], "b": [0.70, 0.71, 0.69, 0.70, 0.72]}


def test_a_change_is_the_mean_of_per_seed_differences_with_its_t_interval() -> None:
    got = paired_changes({"none": NONE, "int8": INT8}, "none")["int8"]
    a = got["a"]
    # worked by hand: differences +.010, -.005, +.010, -.010, +.010; mean .003;
    # squared deviations sum to 380e-6, sd = sqrt(380e-6 / 4); t(0.975, 4) = 2.776445
    # (any t table; scipy.stats.t.ppf gives the same)
    assert a["per_seed"] == pytest.approx([0.010, -0.005, 0.010, -0.010, 0.010])
    assert a["mean"] == pytest.approx(0.003)
    assert a["sd"] == pytest.approx(math.sqrt(380e-6 / 4))
    half = 2.776445 * math.sqrt(380e-6 / 4) / math.sqrt(5)
    assert a["ci95"] == pytest.approx([0.003 - half, 0.003 + half], abs=1e-6)
    assert got["b"]["mean"] == pytest.approx(0.0) and got["b"]["sd"] == pytest.approx(0.0)


def test_one_seed_has_no_interval_and_unpaired_seeds_are_refused() -> None:
    one = paired_changes({"none": {"a": [0.8]}, "fp16": {"a": [0.79]}}, "none")
    assert one["fp16"]["a"]["mean"] == pytest.approx(-0.01)
    assert one["fp16"]["a"]["sd"] is None and one["fp16"]["a"]["ci95"] is None
    with pytest.raises(ValueError, match="fp16, a: 2 seeds against 1"):
        paired_changes({"none": {"a": [0.8]}, "fp16": {"a": [0.79, 0.8]}}, "none")


def _result(int8: dict[str, list[float]]) -> BenchResult:
    changes = paired_changes({"none": NONE, "int8": int8}, "none")
    runs = {
        m: {"wall_s": spread([100, 110]), "federation_s": spread([80, 90]), "auc": aucs}
        for m, aucs in (("none", NONE), ("int8", int8))
    }
    simulate = {
        "sites": ["a", "b"],
        "seeds": [2026, 2027, 2028, 2029, 2030],
        "runs": runs,
        "auc_change": changes,
        "max_abs_auc_change": {
            m: max(abs(c["mean"]) for c in v.values()) for m, v in changes.items()
        },
    }
    bytes_rows = [{"compression": c, "bytes": 1, "ratio": r}
                  for c, r in (("none", 1.0), ("fp16", 0.497), ("int8", 0.25))]  # fmt: skip
    result = BenchResult({"date": "2026-12-07", "quick": False, "repeats": 3,
                          "command": "hepafed bench", "measured": {},
                          "machine": {"cores": 2, "memory_gb": 23.5, "gpu": None,
                                      "torch": "2.13.0+cpu"}})  # fmt: skip
    result.sections.update(simulate=simulate, bytes=bytes_rows)
    evaluate_targets(result)
    return result


def test_the_target_is_every_sites_mean_change_within_0_005() -> None:
    within = _result({"a": [v + 0.004 for v in NONE["a"]], "b": NONE["b"]})
    assert within.targets["compression"]["met"]
    assert (
        "largest mean AUC change of a site over 5 seeds 0.0040 (int8)"
        in (within.targets["compression"]["value"])
    )
    outside = _result({"a": [v + 0.006 for v in NONE["a"]], "b": NONE["b"]})
    assert not outside.targets["compression"]["met"]


def test_the_section_shows_mean_aucs_and_each_change_with_its_interval() -> None:
    text = markdown(_result(INT8))
    assert "Each compression at 5 training seeds (2026-2030" in text
    assert "| none | 105 (100-110) | 85 (80-90) | 0.8000 | 0.7040 |" in text
    half = 2.776445 * math.sqrt(380e-6 / 4) / math.sqrt(5)
    assert f"| int8 | +0.0030 ({0.003 - half:+.4f}, {0.003 + half:+.4f}); sd 0.0097 |" in text
