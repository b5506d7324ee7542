"""`hepafed simulate`: phantom -> federation -> baselines -> per-site comparison.

1. generate (or reuse) the scenario's phantom hospitals on disk;
2. run the real ServerApp/ClientApp in Flower's simulation engine, the
   scenario's external hospitals evaluating only;
3. train the local-only and pooled baselines on the same splits and seeds;
4. write ``summary.json`` next to the federation's records and return it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from common.config import RunConfig
from common.keys import MetricKey
from server.records import read_rounds
from simulations.baselines import load_sites, local_only, pooled
from simulations.federated import run_federated
from simulations.phantom import generate_phantom
from simulations.scenario import Scenario, load_scenario

log = logging.getLogger("hepafed.progress")

SUMMARY_FILE = "summary.json"

# What `--quick` changes: fewer rounds, one epoch each (same data and model).
QUICK_OVERRIDES: dict[str, Any] = {"federation.num-rounds": 3, "train.local-epochs": 1}


@dataclass(frozen=True)
class SiteRow:
    """One hospital's held-out performance under the three training regimes."""

    site: str
    role: str
    n_test: int
    federated: dict[str, float]
    local_only: dict[str, float]  # own model; external: mean of the local models
    pooled: dict[str, float]


@dataclass(frozen=True)
class SimulationSummary:
    """What `hepafed simulate` reports; also written to RUN_DIR/summary.json."""

    scenario: str
    run_dir: str
    rows: list[SiteRow]
    pooled_internal: dict[str, float]  # pooled model on all training sites' test cases
    seconds: dict[str, float]


def default_run_dir(scenario: str) -> Path:
    """runs/simulate-<scenario>-<date-time>: a new folder for every run."""
    return Path("runs") / f"simulate-{scenario}-{datetime.now():%Y%m%d-%H%M%S}"


def simulate(
    scenario: str | Path = "liver-5",
    data_dir: Path = Path("data"),
    run_dir: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    quick: bool = False,
    verbose: bool = False,
) -> SimulationSummary:
    """Run the whole comparison; see the module docstring."""
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    spec = load_scenario(scenario)
    phantom_dir = data_dir / "phantom" / f"{spec.name}-seed{spec.seed}"
    generate_phantom(spec, phantom_dir)
    seconds["phantom"] = time.monotonic() - t0

    run_dir = run_dir or default_run_dir(spec.name)
    cfg = RunConfig().replace(
        {
            **(QUICK_OVERRIDES if quick else {}),
            **(overrides or {}),
            "data.site-root": str(phantom_dir.resolve()),
            "data.cache-dir": str((data_dir / "cache" / phantom_dir.name).resolve()),
            "data.spatial-dims": spec.dims,
            "federation.external-sites": ",".join(spec.external_sites),
            "output.run-dir": str(run_dir.resolve()),
        }
    )
    _check_scenario_fits(cfg, spec)

    t = time.monotonic()
    log.info("federation: %s, %d rounds", cfg.federation.strategy, cfg.federation.num_rounds)
    run_federated(cfg, verbose=verbose)
    seconds["federation"] = time.monotonic() - t

    t = time.monotonic()
    sites = load_sites(cfg)
    trainers = [s.name for s in spec.sites if s.role != "external"]
    local = local_only(cfg, sites, trainers)
    pool, pool_internal = pooled(cfg, sites, trainers)
    seconds["baselines"] = time.monotonic() - t
    seconds["total"] = time.monotonic() - t0

    final = final_evaluation(run_dir)
    rows = []
    for site in sites:
        own = local.get(site.name, {}).get(site.name)
        rows.append(
            SiteRow(
                site=site.name,
                role="external" if site.name in spec.external_sites else "train",
                n_test=len(site.test),
                federated=final.get(site.name, {}),
                local_only=own if own is not None else _mean_of_models(local, site.name),
                pooled=pool.get(site.name, {}),
            )
        )
    summary = SimulationSummary(spec.name, str(run_dir), rows, pool_internal, seconds)
    (run_dir / SUMMARY_FILE).write_text(json.dumps(asdict(summary), indent=2))
    return summary


def final_evaluation(run_dir: Path) -> dict[str, dict[str, float]]:
    """Per-site metrics of the last evaluation round in RUN_DIR/rounds.jsonl."""
    evals = [r for r in read_rounds(run_dir) if r["phase"] == "evaluate"]
    if not evals:
        raise RuntimeError(f"{run_dir} has no evaluation round: the federation did not finish")
    return evals[-1]["sites"]


def _mean_of_models(
    local: Mapping[str, Mapping[str, dict[str, float]]], site: str
) -> dict[str, float]:
    """For a site without its own model: the average AUC of the others' local models."""
    aucs = [m[site][MetricKey.AUC] for m in local.values() if MetricKey.AUC in m.get(site, {})]
    if not aucs:
        return {}
    return {MetricKey.AUC.value: sum(aucs) / len(aucs), "models": float(len(aucs))}


def _check_scenario_fits(cfg: RunConfig, spec: Scenario) -> None:
    trainers = [s for s in spec.sites if s.role != "external"]
    if len(trainers) < cfg.federation.min_sites:
        raise ValueError(
            f"scenario {spec.name!r} has {len(trainers)} training site(s), fewer than "
            f"federation.min-sites = {cfg.federation.min_sites}"
        )
