"""`hepafed simulate --seeds N`: the same simulation with N training seeds, one report.

Seed ``s`` runs as ``hepafed simulate`` with ``seed = s`` in ``OUT/seed-s/`` (seeds
``seed, seed + 1, ...``, the run config's ``seed`` first); the phantom and its splits
depend on the scenario only, so every seed trains and is scored on the same cases.
A seed whose folder already holds a report is not run again, so an interrupted
``--seeds`` run continues where it stopped. Then ``OUT/report.json`` and
``report.html`` combine them (``server.report.training_noise``): every section as
the first seed's run shows it, plus each figure's between-seed spread and an interval
that includes training noise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import RunConfig
from server.records import read_config
from server.report.files import REPORT_JSON
from server.report.training_noise import seed_list, write_combined_report
from server.tracking import ended, parent_params, start_parent
from simulations.scenario import load_scenario
from simulations.simulate import default_run_dir, simulate

log = logging.getLogger("hepafed.progress")


@dataclass(frozen=True)
class SeedsSummary:
    """What ``simulate_seeds`` returns."""

    out_dir: Path
    seeds: list[int]
    runs: list[Path]
    ran: list[int]  # the seeds this call trained (the others were on disk)
    report: dict[str, Any]


def simulate_seeds(
    count: int,
    scenario: str | Path = "liver-5",
    data_dir: Path = Path("data"),
    out_dir: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    quick: bool = False,
    verbose: bool = False,
    design: str | None = None,
) -> SeedsSummary:
    """Run (or reuse) each seed's simulation, then write the combined report."""
    settings = dict(overrides or {})
    base = RunConfig().replace(settings)
    seeds = seed_list(base.seed, count)
    out = out_dir or default_run_dir(load_scenario(scenario).name)
    runs, ran = [], []
    # tracking.backend: one parent run here, each seed's run its child
    with ended(start_parent(base, out)) as parent:
        for i, seed in enumerate(seeds):
            run_dir = out / f"seed-{seed}"
            runs.append(run_dir)
            if (run_dir / REPORT_JSON).is_file():
                log.info("seed %d (%d of %d): already in %s", seed, i + 1, count, run_dir)
                continue
            log.info("seed %d (%d of %d)", seed, i + 1, count)
            simulate(
                scenario=scenario,
                data_dir=data_dir,
                run_dir=run_dir,
                overrides={**settings, "seed": seed},
                quick=quick,
                verbose=verbose,
                design=design,
            )
            ran.append(seed)
        report = write_combined_report(out, list(zip(seeds, runs, strict=True)))
        seeds_tag = {"hepafed.seeds": ",".join(map(str, seeds))}
        parent.log_config(parent_params(read_config(runs[0])["config"]), seeds_tag)
        parent.log_report(out)
    return SeedsSummary(out, seeds, runs, ran, report)
