"""Compression's effect on each site's AUC in the benchmark: paired by training seed, so
it is told apart from training noise (the runs themselves are `hepafed bench --sections
simulate`, not CI)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from simulations.bench_compression import (
    RUNS_FILE,
    StoredRunsDiffer,
    paired_changes,
    simulate_runs,
    stored_seed_count,
    study_fingerprint,
)
from simulations.bench_measure import spread
from simulations.bench_report import BenchResult, evaluate_targets, markdown
from simulations.study import StudyBusy, append_result

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
    assert "| none | 2 | 105 (100-110) | 85 (80-90) | 0.8000 | 0.7040 |" in text
    half = 2.776445 * math.sqrt(380e-6 / 4) / math.sqrt(5)
    assert f"| int8 | +0.0030 ({0.003 - half:+.4f}, {0.003 + half:+.4f}); sd 0.0097 |" in text


# ---- the study's runs file: resumable over sessions ----------------------------------------

SHIFT = {"none": 0.0, "fp16": 0.001, "int8": -0.002}


class FakeRuns:
    """A deterministic stand-in for `hepafed simulate` (a real run takes minutes): each
    (seed, compression) has its own AUCs; ``stop_after`` runs, it is interrupted; its
    n-th run takes ``first_wall + n`` seconds."""

    def __init__(
        self, offset: float = 0.0, stop_after: int | None = None, first_wall: float = 100.0
    ) -> None:
        self.calls: list[tuple[int, str]] = []
        self.offset, self.stop_after, self.first_wall = offset, stop_after, first_wall

    def __call__(self, data_dir: Path, seed: int, method: str) -> dict[str, Any]:
        if self.stop_after is not None and len(self.calls) == self.stop_after:
            raise KeyboardInterrupt  # the session ends mid-study
        self.calls.append((seed, method))
        a = 0.70 + (seed % 7) / 100 + SHIFT[method] + self.offset
        return {"wall_s": self.first_wall + len(self.calls), "federation_s": 80.0,
                "auc": {"a": a, "b": 0.9 - (seed % 3) / 100}}  # fmt: skip


def test_a_study_resumes_from_its_runs_file_and_runs_only_what_it_lacks(tmp_path: Path) -> None:
    runs_file = tmp_path / RUNS_FILE
    first = FakeRuns(stop_after=4)
    with pytest.raises(KeyboardInterrupt):
        simulate_runs(tmp_path, 2, runs_file, runner=first)
    assert first.calls == [(2026, "none"), (2026, "fp16"), (2026, "int8"), (2027, "none")]
    assert len(runs_file.read_text().splitlines()) == 4  # each run kept as it finished
    assert stored_seed_count(runs_file, 2026) == 2  # the seed cut short counts: it is completed

    later = FakeRuns(first_wall=200.0)
    result = simulate_runs(tmp_path, 3, runs_file, runner=later)
    # the first stored run of each compression again (the check), then only the five the
    # file lacks
    checks = [(2026, "none"), (2026, "fp16"), (2026, "int8")]
    assert later.calls == [*checks, (2027, "fp16"), (2027, "int8"),
                           (2028, "none"), (2028, "fp16"), (2028, "int8")]  # fmt: skip
    assert result["seeds"] == [2026, 2027, 2028]
    assert result["stored_runs"] == 4
    assert result["checked"] == [{"seed": s, "compression": m} for s, m in checks]
    assert stored_seed_count(runs_file, 2026) == 3
    assert len(runs_file.read_text().splitlines()) == 4 + 5  # checks of timed runs: not kept
    # pairing by seed: fp16 is +0.001 at site a in every seed, whichever session ran it
    assert result["auc_change"]["fp16"]["a"]["per_seed"] == pytest.approx([0.001] * 3)
    assert result["auc_change"]["int8"]["b"]["mean"] == pytest.approx(0.0)
    # the stored runs keep their own times (101-104), the new ones have theirs (204-208)
    assert result["runs"]["none"]["wall_s"] == {"median": 104, "min": 101, "max": 206, "runs": 3}
    assert result["runs"]["fp16"]["wall_s"] == {"median": 204, "min": 102, "max": 207, "runs": 3}


def test_a_run_carried_over_without_times_gets_its_check_runs_times(tmp_path: Path) -> None:
    runs_file = tmp_path / RUNS_FILE
    fingerprint = study_fingerprint()
    fake = FakeRuns()
    for seed, method in [(2026, m) for m in ("none", "fp16", "int8")] + [(2027, "none")]:
        auc = fake(tmp_path, seed, method)["auc"]
        append_result(runs_file, {"key": f"{fingerprint}/seed-{seed}/{method}",
                                  "fingerprint": fingerprint, "seed": seed,
                                  "compression": method, "status": "ok", "wall_s": None,
                                  "federation_s": None, "auc": auc})  # fmt: skip
    later = FakeRuns(first_wall=300.0)
    result = simulate_runs(tmp_path, 2, runs_file, runner=later)
    assert later.calls == [(2026, "none"), (2026, "fp16"), (2026, "int8"),
                           (2027, "fp16"), (2027, "int8")]  # fmt: skip
    # 2026's three now have the check's times; 2027 none stays carried over, untimed
    assert result["runs"]["none"]["wall_s"] == {"median": 301, "min": 301, "max": 301, "runs": 1}
    assert result["runs"]["int8"]["wall_s"]["runs"] == 2
    again = simulate_runs(tmp_path, 2, runs_file, runner=FakeRuns(first_wall=400.0))
    assert again["runs"]["fp16"]["wall_s"]["min"] == 302  # stored, no longer replaced


def test_a_study_already_running_is_not_run_twice(tmp_path: Path) -> None:
    import fcntl

    runs_file = tmp_path / RUNS_FILE
    with runs_file.with_name(RUNS_FILE + ".lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another bench
        fake = FakeRuns()
        with pytest.raises(StudyBusy, match="another `hepafed bench` is running this study"):
            simulate_runs(tmp_path, 2, runs_file, runner=fake)
        assert fake.calls == []
    assert simulate_runs(tmp_path, 2, runs_file, runner=FakeRuns())["seeds"] == [2026, 2027]


def test_stored_runs_that_another_code_made_are_refused_and_the_file_is_untouched(
    tmp_path: Path,
) -> None:
    runs_file = tmp_path / RUNS_FILE
    simulate_runs(tmp_path, 2, runs_file, runner=FakeRuns())
    before = runs_file.read_bytes()

    class CompressionChanged(FakeRuns):  # the int8 code changed: other AUCs with int8 only
        def __call__(self, data_dir: Path, seed: int, method: str) -> dict[str, Any]:
            out = super().__call__(data_dir, seed, method)
            if method == "int8":
                out["auc"]["b"] += 0.01
            return out

    changed = CompressionChanged()
    with pytest.raises(StoredRunsDiffer) as err:
        simulate_runs(tmp_path, 3, runs_file, runner=changed)
    message = str(err.value)
    assert str(runs_file) in message and "seed 2026, int8" in message
    assert "federated AUC of b is [0.9" in message and "move the file aside" in message
    assert changed.calls == [(2026, "none"), (2026, "fp16"), (2026, "int8")]  # nothing more
    assert runs_file.read_bytes() == before


def test_runs_of_another_configuration_are_not_paired(tmp_path: Path) -> None:
    runs_file = tmp_path / RUNS_FILE
    append_result(runs_file, {"key": "x/seed-2026/none", "fingerprint": "another-config",
                              "seed": 2026, "compression": "none", "status": "ok",
                              "auc": {"a": 0.5, "b": 0.5}})  # fmt: skip
    runs_file.write_text(runs_file.read_text() + '{"key": "cut short by a cr')
    fake = FakeRuns()
    result = simulate_runs(tmp_path, 2, runs_file, runner=fake)
    assert len(fake.calls) == 6 and result["stored_runs"] == 0 and result["checked"] == []
    assert stored_seed_count(runs_file, 2026) == 2


def test_the_section_says_which_runs_were_carried_over_untimed() -> None:
    result = _result(INT8)
    sim = result.sections["simulate"]
    sim["runs"]["none"]["wall_s"] = spread([100, 110, 120])
    sim["runs"]["int8"]["wall_s"] = sim["runs"]["int8"]["federation_s"] = None
    sim.update(runs_file=RUNS_FILE, stored_runs=7,
               checked=[{"seed": 2026, "compression": "none"},
                        {"seed": 2026, "compression": "int8"}])  # fmt: skip
    text = markdown(result)
    assert "over each compression's timed runs (runs carried over from before" in text
    assert "| none | 3 | 110 (100-120) | 85 (80-90) | 0.8000 | 0.7040 |" in text
    assert "| int8 | 0 | - | - | 0.8030 | 0.7040 |" in text
    assert f"Every run is kept in `{RUNS_FILE}` as it finishes" in text
    assert ("7 of the 10 runs came from it; the first stored run of each compression "
            "(seed 2026 none, seed 2026 int8) was run again") in text  # fmt: skip
    for run in sim["runs"].values():  # every run timed: over the seeds
        run["wall_s"] = run["federation_s"] = spread([100, 110, 120, 130, 140])
    assert "Times: median (min-max) over the seeds; AUC" in markdown(result)
