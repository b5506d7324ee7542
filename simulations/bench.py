"""`hepafed bench`: what hepafed costs on top of Flower, and how it scales.

Every figure is measured on this machine in one run and written to
``OUT/bench.json`` and ``OUT/bench.md`` (default ``docs/results/``); timings
are medians over ``repeats`` runs, with min and max. Sections:

- ``bandwidth``: the machine's memory bandwidth, NumPy ``a += b`` (one thread)
  and torch ``a.add_(b)`` (all threads) on arrays far larger than the caches;
- ``aggregation``: aggregating one round of a synthetic ~10M-parameter model
  from 5, 20, 50 and 100 sites, hepafed's streaming aggregation (validation
  included) against stock Flower (``FedAvg.aggregate_train`` over the list of
  replies ``Grid.send_and_receive`` returns): seconds, throughput and the
  ServerApp's peak memory above what it held before the round (each case in a
  fresh process; peak from the kernel's high-water mark, reset first);
- ``client``: local training throughput (images/s) of hepafed's ``train_local``
  and of the whole ClientApp job (``site_train``: data from the cache, model,
  training), against a plain PyTorch loop on the same model, tensors and
  settings;
- ``bytes``: bytes of the update one site sends per round for the default
  model, with and without compression;
- ``round``: per-round wall time of hepafed against a stock Flower FedAvg
  ServerApp/ClientApp (plain PyTorch training loop) on the same sites, model,
  data and rounds, both in Flower's simulation engine;
- ``deploy`` (full only): a round on a real loopback deployment (SuperLink, three
  SuperNodes, TLS, site keys, signed updates) against the same round in the
  simulation engine, paired and interleaved; the sites' per-task times;
- ``sites-100`` (full only): a federation of 100 simulated phantom sites,
  one round;
- ``cluster-500`` (full only): 500 simulated phantom sites, one round, on a Ray
  cluster of two nodes started on this machine (docs/cluster.md): round and run
  times, the ServerApp process's peak RSS, the nodes and CPUs;
- ``simulate`` (full only): end-to-end ``hepafed simulate`` with its defaults,
  then again with ``fp16`` and ``int8`` update compression, at five training seeds or
  more (``--seeds``), and the AUC changes paired by seed; each run is appended to
  ``OUT/bench-simulate-runs.jsonl`` as it finishes, and a later run of the section runs
  only what the file lacks.

``--quick`` runs every section in a tiny configuration (the smoke test).
This is a benchmark, not a test: it reports figures against targets and never
fails on a missed one.

This module runs the sections and writes the files; the sections are measured in
``bench_aggregation`` (bandwidth, aggregation), ``bench_client`` (client, bytes),
``bench_round`` (round), ``bench_deploy`` (deploy), ``bench_federation``
(sites-100, cluster-500) and ``bench_compression`` (simulate), with the methods of
``bench_measure``;
``bench_report`` judges the targets and writes the markdown.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from common.config import RunConfig
from simulations.bench_aggregation import MODEL_PARAMS, SITE_COUNTS, aggregation, bandwidth
from simulations.bench_client import client_throughput, update_bytes
from simulations.bench_compression import (
    COMPRESSION_SEEDS,
    RUNS_FILE,
    simulate_runs,
    stored_seed_count,
)
from simulations.bench_deploy import deploy_round
from simulations.bench_federation import cluster_sites, hundred_sites
from simulations.bench_large import large_model
from simulations.bench_measure import machine
from simulations.bench_report import BenchResult, evaluate_targets, markdown
from simulations.bench_round import round_time

SECTIONS = (
    "bandwidth",
    "aggregation",
    "client",
    "bytes",
    "round",
    "deploy",
    "large-model",
    "sites-100",
    "cluster-500",
    "simulate",
)
FULL_ONLY = ("deploy", "large-model", "sites-100", "cluster-500", "simulate")
CLUSTER_SITES = 500  # cluster-500's sites (fewer: a trial run of the section)

GPU_NOTE = (
    "No GPU was available for this run. On a CUDA machine, `hepafed bench --sections client` "
    "measures the same training throughput with AMP (bf16 where supported, else fp16) and "
    "`--run-config train.amp=false` in fp32; the device is named in the header."
)


def run_bench(
    out_dir: Path,
    quick: bool = False,
    repeats: int | None = None,
    sections: Iterable[str] = SECTIONS,
    data_dir: Path = Path("data"),
    overrides: dict[str, Any] | None = None,
    progress: Callable[[str], None] = lambda _: None,
    cluster_sites_n: int = CLUSTER_SITES,
    seeds: int | None = None,
) -> BenchResult:
    """Measure ``sections`` and write ``bench.json`` and ``bench.md`` to ``out_dir``
    (``cluster_sites_n``: how many sites cluster-500 runs; ``seeds``: simulate's training
    seeds, by default as many as ``out_dir``'s runs file holds, at least five)."""
    from datetime import datetime

    from simulations.simulate import prepare_phantom, scenario_config

    wanted = [s for s in SECTIONS if s in set(sections) and not (quick and s in FULL_ONLY)]
    repeats = repeats or (1 if quick else 3)
    scenario = "liver-2" if quick else "liver-5"
    command = "hepafed bench" + (" --quick" if quick else "")
    result = BenchResult(
        {
            "date": datetime.now().strftime("%Y-%m-%d"),
            "quick": quick,
            "repeats": repeats,
            "scenario": scenario,
            "command": command,
            "machine": machine(),
            "measured": {},  # section -> date
        }
    )
    spec, phantom_dir = prepare_phantom(scenario, data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = scenario_config(spec, phantom_dir, data_dir, Path(tmp) / "run", overrides or {})
    cfg = cfg.replace({"federation.num-rounds": 3})  # round: the first of each run is left out
    if quick:
        cfg = cfg.replace({"train.local-epochs": 1})
    for section in wanted:
        progress(f"bench: {section}")
        t = time.monotonic()
        if section == "bandwidth":
            result.sections[section] = bandwidth(
                64_000_000 if quick else 512_000_000, max(repeats, 3)
            )
        elif section == "aggregation":
            counts = (2, 5) if quick else SITE_COUNTS
            params = 1_000_000 if quick else MODEL_PARAMS
            size = 64_000_000 if quick else 512_000_000  # the paired bandwidth's arrays
            result.sections[section] = aggregation(counts, params, repeats, size)
        elif section == "client":
            site = phantom_dir / spec.training_sites[0]
            result.sections[section] = client_throughput(cfg, site, repeats)
        elif section == "bytes":
            result.sections[section] = update_bytes(cfg)
        elif section == "round":
            sets = repeats if quick else max(repeats, 5)  # five pairs at least, as deploy
            result.sections[section] = round_time(cfg, sets, trust_off=not quick)
        elif section == "deploy":
            sites = list(spec.training_sites[:3])
            result.sections[section] = deploy_round(cfg, phantom_dir, sites, max(repeats, 5))
        elif section == "large-model":
            sites = list(spec.training_sites[:3])
            result.sections[section] = large_model(cfg, phantom_dir, sites)
        elif section == "sites-100":
            result.sections[section] = hundred_sites(cfg, data_dir, 100, 8)
        elif section == "cluster-500":
            result.sections[section] = cluster_sites(cfg, data_dir, cluster_sites_n, 8)
        elif section == "simulate":
            runs_file = out_dir / RUNS_FILE  # kept run by run: the study resumes from it
            first = RunConfig.from_flat({}).seed
            n = (
                seeds
                if seeds is not None
                else max(COMPRESSION_SEEDS, stored_seed_count(runs_file, first))
            )
            result.sections[section] = simulate_runs(data_dir, n, runs_file, progress=progress)
        progress(f"bench: {section} done in {time.monotonic() - t:.0f} s")
        result.settings["measured"][section] = result.settings["date"]
        _write(result, out_dir)  # after every section: a later failure loses nothing measured
    _write(result, out_dir)
    return result


def _write(result: BenchResult, out_dir: Path) -> None:
    _keep_earlier_sections(result, out_dir / "bench.json")
    if result.settings["machine"]["gpu"] is None:
        result.sections["gpu"] = GPU_NOTE
    evaluate_targets(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(result.to_json() + "\n")
    (out_dir / "bench.md").write_text(markdown(result))


def _keep_earlier_sections(result: BenchResult, path: Path) -> None:
    """Sections not measured now but present in an earlier ``bench.json`` of the same kind
    (quick or full) and machine are kept, with the date they were measured."""
    if not path.exists():
        return
    try:
        earlier = json.loads(path.read_text())
        same = (
            earlier["settings"]["quick"] == result.settings["quick"]
            and earlier["settings"]["machine"]["cores"] == result.settings["machine"]["cores"]
        )
    except (ValueError, KeyError, TypeError):
        return
    if not same:
        return
    for name, figures in earlier.get("sections", {}).items():
        if name in SECTIONS and name not in result.sections:
            result.sections[name] = figures
            when = earlier["settings"].get("measured", {}).get(name, earlier["settings"]["date"])
            result.settings["measured"][name] = when
