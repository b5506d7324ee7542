"""Whole federations (full runs only): 100 simulated sites and 500 on a Ray cluster
(``hepafed simulate`` with and without compression is ``bench_compression``).

``hundred_sites``: one round of a federation of many small phantom hospitals in
Flower's simulation engine: how many sites trained, the round and run times, and
the ServerApp process's peak RSS.

``cluster_sites``: the same on a Ray cluster of two nodes started on this machine
(``simulations.ray_cluster``, this machine's CPUs split between them), the sites Ray
actors on both nodes and the ServerApp in this process: docs/cluster.md.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from common.cpu_quota import process_cpus
from common.keys import RecordPhase
from simulations.bench_measure import reset_peak_rss, rss_bytes

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
    cpus = max(1, process_cpus() // CLUSTER_NODES)
    t = time.monotonic()
    with start_local_cluster(CLUSTER_NODES, cpus, object_store_bytes=500_000_000) as cluster:
        start_s = time.monotonic() - t
        figures = hundred_sites(cfg, data_dir, sites, cases, ray_address=cluster.address)
    return {**figures, "cpus_per_node": cpus, "cluster_start_s": start_s}
