"""``hepafed simulate`` end to end, and again with fp16 and int8 update compression, at
five training seeds or more (full runs only): each site's federated AUC, and its change
under compression paired by seed (mean, sd and 95 % t interval over the seeds), so
compression's effect is told apart from training noise, which moves a site's AUC by a
few hundredths from seed to seed. Each run is kept in a runs file as it finishes, so the
study grows over several sessions (``simulate_runs``); ``simulate_markdown`` is the
section of bench.md.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.config import RunConfig
from simulations.bench_measure import fmt_spread, spread
from simulations.study import results_lock

COMPRESSIONS = ("none", "fp16", "int8")
COMPRESSION_SEEDS = 5  # training seeds for compression's effect on the AUC


RUNS_FILE = "bench-simulate-runs.jsonl"  # next to bench.json: one line per finished run
Runner = Callable[[Path, int, str], dict[str, Any]]  # (data dir, seed, compression) -> run


class StoredRunsDiffer(ValueError):
    """A stored run, run again now, gives other AUCs: the stored runs came from other code
    or data and cannot be paired with new ones."""


def study_fingerprint() -> str:
    """What the stored runs must share to be paired with new ones: the default run config
    (the runs use it, with only the seed and compression set), the phantom's training-data
    version and torch's version. Code is not in it: ``simulate_runs`` checks that by
    running one stored run again."""
    import torch

    from simulations.phantom import TRAINING_DATA_VERSION

    text = json.dumps(
        {"config": RunConfig.from_flat({}).to_flat(), "phantom": TRAINING_DATA_VERSION,
         "torch": torch.__version__},
        sort_keys=True, default=str,
    )  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def simulate_once(data_dir: Path, seed: int, method: str) -> dict[str, Any]:
    """One `hepafed simulate` end to end in a fresh process with its defaults at ``seed``
    and ``method``'s compression: wall and federation seconds, each site's federated AUC."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = [sys.executable, "-c", "from common.cli import main; exit(main())"]
        command += ["simulate", "--out", str(out), "--data-dir", str(data_dir)]
        command += ["--run-config", f"seed={seed} federation.compression='{method}'"]
        t = time.monotonic()
        subprocess.run(command, check=True, capture_output=True, text=True)
        wall = time.monotonic() - t
        summary = json.loads((out / "summary.json").read_text())
    return {
        "wall_s": wall,
        "federation_s": summary["seconds"]["federation"],
        "auc": {row["site"]: row["federated"]["auc"] for row in summary["rows"]},
    }


def stored_runs(path: Path, fingerprint: str) -> dict[tuple[int, str], dict[str, Any]]:
    """The runs ``path`` holds for ``fingerprint``, by (seed, compression); the latest line
    of a run wins (a line cut short by a crash is ignored: that run counts as not done)."""
    from simulations.study import OK, read_results

    out = {}
    for r in read_results(path):
        if r.get("fingerprint") == fingerprint and r.get("status") == OK:
            out[(int(r["seed"]), str(r["compression"]))] = r
    return out


def stored_seed_count(path: Path, first: int) -> int:
    """How many seeds from ``first`` up to the last one ``path`` holds any run of (0 if
    none): a study resumed with this count completes a seed that was cut short."""
    seeds = [seed for seed, _ in stored_runs(path, study_fingerprint()) if seed >= first]
    return max(seeds) - first + 1 if seeds else 0


def simulate_runs(
    data_dir: Path,
    seeds: int = COMPRESSION_SEEDS,
    runs_file: Path | None = None,
    runner: Runner = simulate_once,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """``hepafed simulate`` end to end (``runner``: each run in a fresh process) without
    compression, with fp16 and with int8, at ``seeds`` training seeds (the run config's
    ``seed`` and the next ones; the compressions of a seed one after the other): the wall
    and federation times, each site's federated AUC, and its change under compression
    paired by seed (``paired_changes``).

    A study of many seeds takes hours, so it is resumable: each finished run is appended
    to ``runs_file`` at once (``simulations.study.append_result``: a stop loses at most the
    run under way), and a later call runs only the runs the file lacks. Stored runs are
    paired with new ones only if they came from the same code, data and machine: the
    fingerprint (``study_fingerprint``) must match, and the first stored run of each
    compression is run again and must give the same AUCs (training is deterministic on one
    machine), else ``StoredRunsDiffer`` and nothing more is run or written. A check run of
    a run stored without times (carried over from before the file) is stored with its
    times."""
    with results_lock(runs_file, "hepafed bench") if runs_file is not None else nullcontext():
        return _simulate_runs(data_dir, seeds, runs_file, runner, progress)


def _simulate_runs(
    data_dir: Path,
    seeds: int,
    runs_file: Path | None,
    runner: Runner,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    from server.report.training_noise import seed_list as seeds_from
    from simulations.bench_measure import machine
    from simulations.study import OK, append_result

    # the default seed and the next ones, as `hepafed simulate --seeds` takes them
    seed_list = seeds_from(RunConfig.from_flat({}).seed, seeds)
    fingerprint = study_fingerprint()
    stored = stored_runs(runs_file, fingerprint) if runs_file is not None else {}
    cells = [(seed, method) for seed in seed_list for method in COMPRESSIONS]
    reused = [c for c in cells if c in stored]
    host = machine()
    host = {k: host[k] for k in ("cpu", "cores", "memory_gb", "python")}

    def run(seed: int, method: str) -> dict[str, Any]:
        record = {"key": f"{fingerprint}/seed-{seed}/{method}", "fingerprint": fingerprint,
                  "seed": seed, "compression": method, "status": OK,
                  **runner(data_dir, seed, method), "host": host,
                  "finished": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
        return record

    found: dict[tuple[int, str], dict[str, Any]] = {c: stored[c] for c in reused}
    checked = [next(c for c in reused if c[1] == m) for m in COMPRESSIONS
               if any(c[1] == m for c in reused)]  # fmt: skip
    if checked:
        progress(f"simulate: {len(reused)} of {len(cells)} runs stored in {runs_file}; "
                 f"running {len(checked)} of them again to check them")  # fmt: skip
    for cell in checked:
        again, kept = run(*cell), stored[cell]
        if again["auc"] != kept["auc"]:
            differ = sorted(k for k in again["auc"].keys() | kept["auc"].keys()
                            if again["auc"].get(k) != kept["auc"].get(k))  # fmt: skip
            raise StoredRunsDiffer(
                f"{runs_file}: seed {cell[0]}, {cell[1]}: run again, the federated AUC of "
                f"{', '.join(differ)} is {[again['auc'].get(k) for k in differ]}, stored "
                f"{[kept['auc'].get(k) for k in differ]}. The stored runs came from other "
                f"code, data or machine (CPU) and cannot be paired with new ones: move the "
                f"file aside to start the study afresh."
            )
        if kept.get("wall_s") is None and runs_file is not None:  # it gets the check's times
            append_result(runs_file, again)
            found[cell] = again
    todo = [c for c in cells if c not in stored]
    for i, (seed, method) in enumerate(todo, start=1):
        progress(f"simulate: seed {seed} {method} ({i} of {len(todo)} to run)")
        record = run(seed, method)
        if runs_file is not None:
            append_result(runs_file, record)
        found[(seed, method)] = record
    runs: dict[str, dict[str, Any]] = {
        m: {"wall_s": [], "federation_s": [], "auc": {}} for m in COMPRESSIONS
    }
    for seed, method in cells:
        record, timed = found[(seed, method)], runs[method]
        if record.get("wall_s") is not None:  # runs carried over from before the file: no times
            timed["wall_s"].append(record["wall_s"])
            timed["federation_s"].append(record["federation_s"])
        for site, auc in record["auc"].items():
            timed["auc"].setdefault(site, []).append(auc)
    sites = list(runs["none"]["auc"])
    changes = paired_changes({m: r["auc"] for m, r in runs.items()}, "none")
    return {
        "sites": sites,
        "seeds": seed_list,
        "runs": {m: _timed(r) for m, r in runs.items()},
        "auc_change": changes,
        "max_abs_auc_change": {
            m: max(abs(c["mean"]) for c in by_site.values()) for m, by_site in changes.items()
        },
        "runs_file": None if runs_file is None else runs_file.name,
        "stored_runs": len(reused),
        "checked": [{"seed": seed, "compression": method} for seed, method in checked],
    }


def _timed(run: dict[str, Any]) -> dict[str, Any]:
    """Times as spreads (``runs``: how many were timed), None where none was."""
    walls, feds = run["wall_s"], run["federation_s"]
    return {**run, "wall_s": spread(walls) if walls else None,
            "federation_s": spread(feds) if feds else None}  # fmt: skip


def paired_changes(
    aucs: dict[str, dict[str, list[float]]], base: str
) -> dict[str, dict[str, dict[str, Any]]]:
    """Each method's change against ``base``, per site, paired by seed (``aucs[method][site]``
    lists one AUC per seed, in the same seed order for every method): the per-seed
    differences, and their mean, seed-to-seed sd and 95 % interval from
    ``common.stats.combine_seeds`` with no test-sampling part (every seed and method is
    scored on the same test cases), which is the t interval mean +- t(0.975, n - 1) x
    sd / sqrt(n): it holds training noise, not the test split's own sampling error
    (n = 1: no sd, no interval)."""
    from common.stats import combine_seeds

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method, by_site in aucs.items():
        if method == base:
            continue
        out[method] = {}
        for site, values in by_site.items():
            ref = aucs[base][site]
            if len(ref) != len(values):
                raise ValueError(f"{method}, {site}: {len(values)} seeds against {len(ref)}")
            diffs = [v - r for v, r in zip(values, ref, strict=True)]
            entry: dict[str, Any] = {"per_seed": diffs, "mean": sum(diffs) / len(diffs),
                                     "sd": None, "ci95": None}  # fmt: skip
            if len(diffs) > 1:
                combined = combine_seeds(diffs, [0.0] * len(diffs))
                entry.update(mean=combined.estimate, sd=combined.between_sd,
                             ci95=list(combined.ci(0.95)))  # fmt: skip
            out[method][site] = entry
    return out


# ---- the section of bench.md -------------------------------------------------------------


def simulate_markdown(r: dict[str, Any]) -> list[str]:
    """The end-to-end runs and compression's paired effect on each site's AUC."""
    sites, seeds = r["sites"], r.get("seeds", [])
    lines = ["", "## `hepafed simulate` end to end, and compression", ""]
    if "auc_change" not in r:
        note = "Measured with an earlier, single-seed method: rerun `hepafed bench --sections "
        return [*lines, note + "simulate`."]
    runs = r["runs"]
    timed = [(run["wall_s"] or {}).get("runs", 0) for run in runs.values()]
    every = all(n == len(seeds) for n in timed)
    lines += [
        f"Each compression at {len(seeds)} training seeds ({seeds[0]}-{seeds[-1]}, the same "
        "phantom and splits), each run `hepafed simulate` end to end in a fresh process, the "
        "compressions of a seed one after the other. Times: median (min-max) over "
        + ("the seeds" if every else "each compression's timed runs (runs carried over from "
           "before the runs file kept times have none)")
        + "; AUC: each site's federated AUC, mean over the seeds.",
    ]  # fmt: skip
    if r.get("runs_file"):
        line = (f"Every run is kept in `{r['runs_file']}` as it finishes, so the study grows "
                "over several sessions: a later `hepafed bench --sections simulate --seeds N` "
                "runs only the runs it lacks.")  # fmt: skip
        checked = r.get("checked") or []
        if checked:
            names = ", ".join(f"seed {c['seed']} {c['compression']}" for c in checked)
            line += (f" {r.get('stored_runs', 0)} of the {len(runs) * len(seeds)} runs came "
                     f"from it; the first stored run of each compression ({names}) was run "
                     "again first and gave the same AUCs, so they came from this code, data "
                     "and machine.")  # fmt: skip
        lines += ["", line]
    lines += [
        "",
        "| compression | runs timed | wall (s) | federation (s) | " + " | ".join(sites) + " |",
        "|---|---|---|---|" + "---|" * len(sites),
    ]
    for (name, run), n in zip(runs.items(), timed, strict=True):
        aucs = " | ".join(f"{statistics.mean(run['auc'][site]):.4f}" for site in sites)
        wall, fed = (fmt_spread(t, 0) if t else "-" for t in (run["wall_s"], run["federation_s"]))
        lines.append(f"| {name} | {n} | {wall} | {fed} | {aucs} |")
    lines += [
        "",
        "Change in each site's federated AUC against no compression, paired by seed (same "
        "seed, same splits): the mean of the per-seed changes with its 95 % t interval "
        "(mean +- t(0.975, n-1) x sd / sqrt(n)), and the sd of the per-seed changes. Every "
        "run is scored on the same test cases: the interval holds training noise, not the "
        "test split's own sampling error.",
        "",
        "| compression | " + " | ".join(sites) + " |",
        "|---|" + "---|" * len(sites),
    ]
    for name, by_site in r["auc_change"].items():
        cells = []
        for site in sites:
            c = by_site[site]
            cell = f"{c['mean']:+.4f}"
            if c["ci95"] is not None:
                cell += f" ({c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}); sd {c['sd']:.4f}"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The target asks every site's mean change to lie within 0.005. A site's interval "
        "much wider than that says this many seeds cannot tell so small an effect from "
        "training noise, either way.",
    ]
    return lines
