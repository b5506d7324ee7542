"""Whole federations (full runs only): 100 simulated sites, and ``hepafed simulate``.

``hundred_sites``: one round of a federation of many small phantom hospitals in
Flower's simulation engine: how many sites trained, the round and run times, and
the ServerApp process's peak RSS.

``simulate_runs``: ``hepafed simulate`` with its defaults, timed end to end in a
fresh process, then again with fp16 and int8 update compression; the per-site
federated AUCs and their largest change against the uncompressed run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common.keys import RecordPhase
from simulations.bench_measure import reset_peak_rss, rss_bytes

# ---- 100 simulated sites --------------------------------------------------------------------


def hundred_sites(cfg: Any, data_dir: Path, sites: int, cases: int) -> dict[str, Any]:
    """One round with ``sites`` small phantom hospitals in the simulation engine."""
    from server.records import read_rounds
    from simulations.federated import run_federated
    from simulations.phantom import generate_phantom
    from simulations.scenario import parse_scenario

    spec = parse_scenario(
        {
            "name": f"bench-{sites}",
            "description": f"{sites} small hospitals for the scaling benchmark",
            "seed": 7,
            "dims": 2,
            "defaults": {"test_fraction": 0.25, "prevalence": 0.5},
            "site": [{"name": f"site-{i:03d}", "n_cases": cases} for i in range(sites)],
        },
        "bench",
    )
    root = data_dir / "phantom" / spec.name
    generate_phantom(spec, root)
    with tempfile.TemporaryDirectory() as tmp:
        run = cfg.replace(
            {
                "data.site-root": str(root.resolve()),
                "data.cache-dir": str((data_dir / "cache" / spec.name).resolve()),
                "federation.expected-sites": sites,
                "federation.external-sites": "",
                "federation.num-rounds": 1,
                "federation.min-sites": 2,
                "eval.every-round": False,
                "eval.min-cases": 4,  # the smallest allowed: these sites have 2 test cases
                "output.run-dir": str(Path(tmp) / "run"),
            }
        )
        reset_peak_rss()
        t = time.monotonic()
        run_federated(run)
        run_s = time.monotonic() - t
        train = [e for e in read_rounds(Path(tmp) / "run") if e.get("phase") == RecordPhase.TRAIN]
    return {
        "sites": sites,
        "cases_per_site": cases,
        "sites_trained": len(train[0]["sites"]),
        "rejected": train[0]["rejected"],
        "round_s": train[0]["seconds"],
        "run_s": run_s,
        "server_peak_mb": rss_bytes("VmHWM") / 1e6,
    }


# ---- hepafed simulate end to end, with and without compression ----------------------------


def simulate_runs(data_dir: Path) -> dict[str, Any]:
    """`hepafed simulate` with defaults (timed end to end, in a fresh process), then with
    fp16 and int8 update compression; per-site federated AUCs and their changes."""
    runs: dict[str, Any] = {}
    for method in ("none", "fp16", "int8"):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            command = [sys.executable, "-c", "from common.cli import main; exit(main())"]
            command += ["simulate", "--out", str(out), "--data-dir", str(data_dir)]
            if method != "none":
                command += ["--run-config", f"federation.compression='{method}'"]
            t = time.monotonic()
            subprocess.run(command, check=True, capture_output=True, text=True)
            wall = time.monotonic() - t
            summary = json.loads((out / "summary.json").read_text())
        runs[method] = {
            "wall_s": wall,
            "federation_s": summary["seconds"]["federation"],
            "auc": {r["site"]: r["federated"]["auc"] for r in summary["rows"]},
        }
    sites = list(runs["none"]["auc"])
    change = {
        m: max(abs(runs[m]["auc"][s] - runs["none"]["auc"][s]) for s in sites)
        for m in ("fp16", "int8")
    }
    return {"sites": sites, "runs": runs, "max_abs_auc_change": change}
