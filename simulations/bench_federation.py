"""Whole federations (full runs only): 100 simulated sites, 500 on a Ray cluster, and
``hepafed simulate``.

``hundred_sites``: one round of a federation of many small phantom hospitals in
Flower's simulation engine: how many sites trained, the round and run times, and
the ServerApp process's peak RSS.

``cluster_sites``: the same on a Ray cluster of two nodes started on this machine
(``simulations.ray_cluster``, this machine's CPUs split between them), the sites Ray
actors on both nodes and the ServerApp in this process: docs/cluster.md.

``simulate_runs``: ``hepafed simulate`` with its defaults, timed end to end in a
fresh process, and again with fp16 and int8 update compression, at five training
seeds: each site's federated AUC, and its change under compression paired by seed
(mean, sd and 95 % t interval over the seeds), so compression's effect is told apart
from training noise, which moves a site's AUC by a few hundredths from seed to seed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common.config import RunConfig
from common.keys import RecordPhase
from simulations.bench_measure import reset_peak_rss, rss_bytes, spread

COMPRESSIONS = ("none", "fp16", "int8")
COMPRESSION_SEEDS = 5  # training seeds for compression's effect on the AUC

# ---- 100 simulated sites --------------------------------------------------------------------


def many_sites_phantom(data_dir: Path, sites: int, cases: int) -> tuple[str, Path]:
    """The benchmark's ``sites`` small phantom hospitals (generated unless on disk)."""
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
    return spec.name, root


def hundred_sites(
    cfg: Any, data_dir: Path, sites: int, cases: int, ray_address: str | None = None
) -> dict[str, Any]:
    """One round with ``sites`` small phantom hospitals in the simulation engine (on the
    Ray cluster at ``ray_address`` if given: its nodes and CPUs are recorded too)."""
    from server.records import read_rounds
    from simulations.federated import run_federated

    name, root = many_sites_phantom(data_dir, sites, cases)
    with tempfile.TemporaryDirectory() as tmp:
        run = cfg.replace(
            {
                "data.site-root": str(root.resolve()),
                "data.cache-dir": str((data_dir / "cache" / name).resolve()),
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
        cluster = run_federated(run, ray_address=ray_address)
        run_s = time.monotonic() - t
        train = [e for e in read_rounds(Path(tmp) / "run") if e.get("phase") == RecordPhase.TRAIN]
    figures = {
        "sites": sites,
        "cases_per_site": cases,
        "sites_trained": len(train[0]["sites"]),
        "rejected": train[0]["rejected"],
        "round_s": train[0]["seconds"],
        "run_s": run_s,
        "server_peak_mb": rss_bytes("VmHWM") / 1e6,
    }
    if cluster is not None:  # as the run found it when it joined
        figures.update(nodes=cluster.nodes, cpus=cluster.cpus, gpus=cluster.gpus)
    return figures


# ---- many simulated sites on a Ray cluster ---------------------------------------------------

CLUSTER_NODES = 2


def cluster_sites(cfg: Any, data_dir: Path, sites: int, cases: int) -> dict[str, Any]:
    """``hundred_sites`` on a Ray cluster of ``CLUSTER_NODES`` nodes started on this machine
    for it (this machine's CPUs split between them) and stopped after."""
    from simulations.ray_cluster import start_local_cluster

    many_sites_phantom(data_dir, sites, cases)  # before the cluster: it would wait idle
    cpus = max(1, (os.cpu_count() or 1) // CLUSTER_NODES)
    t = time.monotonic()
    with start_local_cluster(CLUSTER_NODES, cpus, object_store_bytes=500_000_000) as cluster:
        start_s = time.monotonic() - t
        figures = hundred_sites(cfg, data_dir, sites, cases, ray_address=cluster.address)
    return {**figures, "cpus_per_node": cpus, "cluster_start_s": start_s}


# ---- hepafed simulate end to end, with and without compression ----------------------------


def simulate_runs(data_dir: Path, seeds: int = COMPRESSION_SEEDS) -> dict[str, Any]:
    """``hepafed simulate`` end to end (each run in a fresh process) without compression,
    with fp16 and with int8, at ``seeds`` training seeds (the run config's ``seed`` and
    the next ones; the three compressions of a seed one after the other): the wall and
    federation times, each site's federated AUC, and its change under compression
    paired by seed (``paired_changes``)."""
    from server.report.training_noise import seed_list as seeds_from

    # the default seed and the next ones, as `hepafed simulate --seeds` takes them
    seed_list = seeds_from(RunConfig.from_flat({}).seed, seeds)
    runs: dict[str, dict[str, Any]] = {
        m: {"wall_s": [], "federation_s": [], "auc": {}} for m in COMPRESSIONS
    }
    for seed in seed_list:
        for method in COMPRESSIONS:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "run"
                command = [sys.executable, "-c", "from common.cli import main; exit(main())"]
                command += ["simulate", "--out", str(out), "--data-dir", str(data_dir)]
                command += ["--run-config", f"seed={seed} federation.compression='{method}'"]
                t = time.monotonic()
                subprocess.run(command, check=True, capture_output=True, text=True)
                wall = time.monotonic() - t
                summary = json.loads((out / "summary.json").read_text())
            run = runs[method]
            run["wall_s"].append(wall)
            run["federation_s"].append(summary["seconds"]["federation"])
            for row in summary["rows"]:
                run["auc"].setdefault(row["site"], []).append(row["federated"]["auc"])
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
    }


def _timed(run: dict[str, Any]) -> dict[str, Any]:
    return {**run, "wall_s": spread(run["wall_s"]), "federation_s": spread(run["federation_s"])}


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
