"""The round benchmark's arms: hepafed as shipped, hepafed with its trust features off and
stock Flower, interleaved in sets whose order rotates (the runs themselves are `hepafed
bench --sections round`; the quick smoke run is in test_bench)."""

from __future__ import annotations

from typing import Any

import pytest

from common.config import RunConfig
from simulations import bench_round
from simulations.bench_measure import spread
from simulations.bench_report import BenchResult, evaluate_targets, markdown


def _fake_arms(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each arm's run returns a fixed median round and records that it ran: hepafed 2.2 s
    as shipped, 2.0 s with signatures and the norm rule off; stock Flower 2.0 s."""
    calls: list[str] = []

    def hepafed(cfg: Any, rounds: list[float], phases: list[dict[str, float]]) -> float:
        shipped = cfg.trust.sign_updates and cfg.trust.norm_z > 0
        assert shipped or (not cfg.trust.sign_updates and cfg.trust.norm_z == 0)
        calls.append("hepafed" if shipped else "trust_off")
        seconds = 2.2 if shipped else 2.0
        rounds.append(seconds)
        phases.append({"prepare": 0.1, "exchange": seconds - 0.1})
        return seconds

    def stock(cfg: Any, rounds: list[float], phases: list[dict[str, float]]) -> float:
        calls.append("flower")
        rounds.append(2.0)
        phases.append({"prepare": 0.0, "exchange": 2.0})
        return 2.0

    monkeypatch.setattr(bench_round, "_hepafed_run", hepafed)
    monkeypatch.setattr(bench_round, "_stock_run", stock)
    return calls


def test_three_arms_run_in_every_set_and_who_goes_first_rotates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _fake_arms(monkeypatch)
    r = bench_round.round_time(RunConfig.from_flat({}), 3)
    assert calls == ["hepafed", "flower", "trust_off",
                     "flower", "trust_off", "hepafed",
                     "trust_off", "hepafed", "flower"]  # fmt: skip
    assert r["ratio"] == pytest.approx(1.1) and r["pair_ratios"] == pytest.approx([1.1] * 3)
    assert r["trust_off_ratio"] == pytest.approx(1.0)
    assert r["trust_cost_ratio"] == pytest.approx(1.1)
    assert r["trust_off_round_s"]["runs"] == 3
    assert r["trust_off_phases_s"] == pytest.approx({"prepare": 0.1, "exchange": 1.9})


def test_without_the_trust_off_arm_the_pairs_alternate_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _fake_arms(monkeypatch)
    r = bench_round.round_time(RunConfig.from_flat({}), 2, trust_off=False)
    assert calls == ["hepafed", "flower", "flower", "hepafed"]
    assert "trust_off_ratio" not in r and r["ratio"] == pytest.approx(1.1)


def test_the_target_is_judged_as_shipped_and_the_section_shows_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_arms(monkeypatch)
    round_ = bench_round.round_time(RunConfig.from_flat({}), 3)
    result = BenchResult({"date": "2026-12-07", "quick": False, "repeats": 3,
                          "command": "hepafed bench", "measured": {},
                          "machine": {"cores": 2, "memory_gb": 23.5, "gpu": None,
                                      "torch": "2.13.0+cpu"}})  # fmt: skip
    result.sections["round"] = round_
    evaluate_targets(result)
    target = result.targets["round_overhead"]
    assert not target["met"]  # 1.1 x as shipped, though 1.0 x with the features off
    assert target["value"] == "1.100 x (trust features on, as shipped; off 1.000 x)"
    text = markdown(result)
    assert "in the same sets: 2.00 (2.00-2.00) s, 1.000 x stock Flower" in text
    assert "the trust features cost 1.100 x (1.100 (1.100-1.100))" in text
    assert "| phase | hepafed | hepafed, trust off | stock Flower |" in text
    assert "| exchange | 2.100 | 1.900 | 2.000 |" in text
    assert spread([2.2, 2.2, 2.2]) == round_["hepafed_round_s"]
