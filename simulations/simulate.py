"""`hepafed simulate`: phantom -> federation -> baselines -> per-site comparison.

1. generate (or reuse) the scenario's phantom hospitals on disk;
2. run the real ServerApp/ClientApp in Flower's simulation engine with the
   chosen evaluation design (``eval.design``), the scenario's external
   hospitals evaluating only; the server also trains each hospital's
   local-only model through its ClientApp (``eval.local-only``);
3. train the pooled baseline (all training hospitals' data centralised,
   simulation only) on the same splits and seeds;
4. write the report (``report.json``, ``report.html``) and ``summary.json``
   next to the federation's records and return the summary.
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
from common.keys import GLOBAL_MODEL, EvalDesign, Intensity, Task, local_model
from server.designs import Evaluation
from server.records import RunRecorder, read_evaluations
from server.report.files import write_report
from server.tracking import relog_report, require_backend
from server.trust import resign_report
from simulations.baselines import POOLED, load_sites, pooled
from simulations.federated import probe_ray_address, resolve_ray_address, run_federated
from simulations.mri_phantom import generate_mri_phantom
from simulations.mri_scenario import MriScenario, is_mri_scenario, load_mri_scenario
from simulations.phantom import generate_phantom
from simulations.scenario import Scenario, load_scenario
from simulations.timeline import (
    generate_timeline_phantom,
    is_timeline_scenario,
    load_timeline_scenario,
)
from simulations.timeline_scenario import TimelineScenario

log = logging.getLogger("hepafed.progress")

SUMMARY_FILE = "summary.json"

# What `--quick` changes: fewer rounds, one epoch each (same data and model).
QUICK_OVERRIDES: dict[str, Any] = {"federation.num-rounds": 3, "train.local-epochs": 1}


@dataclass(frozen=True)
class SiteRow:
    """One hospital's held-out performance under the three training regimes (records)."""

    site: str
    role: str
    n_test: int
    federated: dict[str, Any]
    local_only: dict[str, Any]  # own model; a site without one: mean AUC of the local models
    pooled: dict[str, Any]


@dataclass(frozen=True)
class SimulationSummary:
    """What `hepafed simulate` returns; also written to RUN_DIR/summary.json."""

    scenario: str
    design: str
    run_dir: str
    rows: list[SiteRow]
    pooled_internal: dict[str, Any]  # pooled model on all training sites' test cases
    report: dict[str, Any]
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
    design: str | None = None,
) -> SimulationSummary:
    """Run the whole comparison; see the module docstring."""
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    settings: dict[str, Any] = {**(QUICK_OVERRIDES if quick else {}), **(overrides or {})}
    if design is not None:
        settings["eval.design"] = design
    require_backend(RunConfig().replace(settings))  # before the phantom is even generated
    address = resolve_ray_address()  # --ray-address or RAY_ADDRESS: a cluster that answers
    if address is not None:
        probe_ray_address(address)
    spec, phantom_dir = prepare_phantom(scenario, data_dir)
    if is_timeline_scenario(scenario):  # train on its first months; the rest is monitored
        settings = {**timeline_settings(load_timeline_scenario(scenario)), **settings}
    seconds["phantom"] = time.monotonic() - t0

    run_dir = run_dir or default_run_dir(spec.name)
    # the comparison table shows local-only models
    cfg = scenario_config(
        spec, phantom_dir, data_dir, run_dir, {"eval.local-only": True, **settings}
    )

    t = time.monotonic()
    log.info(
        "federation: %s, %d rounds, %s design",
        cfg.federation.strategy,
        cfg.federation.num_rounds,
        cfg.eval.design,
    )
    run_federated(cfg, verbose=verbose)
    seconds["federation"] = time.monotonic() - t

    evaluations = [Evaluation.from_dict(d) for d in read_evaluations(run_dir)]
    pool_internal: dict[str, Any] = {}
    choices: list[dict[str, Any]] = []  # the pooled baseline's operating threshold
    if cfg.eval.design != EvalDesign.LOSO:  # one pooled model per fold is not simulated
        t = time.monotonic()
        baseline = pooled(cfg, load_sites(cfg), spec.training_sites)
        evaluations += baseline.evaluations
        pool_internal = baseline.internal.to_record()
        if baseline.threshold is not None:
            choices.append(baseline.threshold.to_record(POOLED))
        RunRecorder(run_dir).write_evaluations([e.to_dict() for e in evaluations])
        seconds["baselines"] = time.monotonic() - t
    report = write_report(run_dir, extra_choices=choices)
    resign_report(run_dir, cfg, "the simulation added the pooled baseline's evaluations")
    relog_report(cfg, run_dir)
    seconds["total"] = time.monotonic() - t0

    rows = comparison_rows(evaluations, spec)
    summary = SimulationSummary(
        spec.name, cfg.eval.design, str(run_dir), rows, pool_internal, report, seconds
    )
    doc = asdict(summary)
    del doc["report"]  # report.json is next to it
    (run_dir / SUMMARY_FILE).write_text(json.dumps(doc, indent=2))
    return summary


AnyScenario = Scenario | MriScenario


def prepare_phantom(scenario: str | Path, data_dir: Path) -> tuple[AnyScenario, Path]:
    """The scenario (CT, or MRI: ``simulations.mri_scenario``) and its phantom folder,
    generated unless already on disk. A timeline scenario (``simulations.timeline``) is
    written whole and returned as the CT scenario of its hospitals, every one training."""
    if is_timeline_scenario(scenario):
        timeline = load_timeline_scenario(scenario)
        folder = data_dir / "phantom" / f"{timeline.name}-seed{timeline.seed}"
        generate_timeline_phantom(timeline, folder)
        sites = tuple(s.profile for s in timeline.sites)
        return Scenario(timeline.name, timeline.seed, sites, timeline.dims), folder
    spec = any_scenario(scenario)
    return spec, write_phantom(spec, data_dir)


def timeline_settings(spec: TimelineScenario) -> dict[str, Any]:
    """A timeline's training run: only the cases of its training months (train, val and
    test splits; later months are for ``hepafed monitor``), and a logistic recalibration
    fitted on the validation summaries, which the monitor's label-free estimate needs."""
    first_watched = spec.month_start(spec.training_months + 1)
    return {
        "data.acquired-before": first_watched.isoformat(),
        "eval.recalibrate": "logistic",
    }


def any_scenario(scenario: str | Path) -> AnyScenario:
    """A CT or MRI scenario (bundled name or file), loaded and checked, nothing written."""
    return load_mri_scenario(scenario) if is_mri_scenario(scenario) else load_scenario(scenario)


def phantom_path(spec: AnyScenario, data_dir: Path) -> Path:
    """Where ``spec``'s phantom lives under ``data_dir`` (one folder per name and seed)."""
    return data_dir / "phantom" / f"{spec.name}-seed{spec.seed}"


def write_phantom(spec: AnyScenario, data_dir: Path) -> Path:
    """``spec``'s phantom folder under ``data_dir``, generated unless already on disk."""
    phantom_dir = phantom_path(spec, data_dir)
    if isinstance(spec, MriScenario):
        generate_mri_phantom(spec, phantom_dir)
    else:
        generate_phantom(spec, phantom_dir)
    return phantom_dir


def modality_settings(spec: AnyScenario, settings: Mapping[str, Any]) -> dict[str, Any]:
    """What an MRI scenario changes in the run config unless ``settings`` say otherwise:
    its channels, each image scaled by its own percentiles (MRI has no absolute unit), the
    three-way task its labels code, and at least one training site a round (liver-mri-3
    has one training center, as the study it follows). A CT scenario changes nothing.
    Asking an MRI phantom for another task is refused with what to do."""
    if not isinstance(spec, MriScenario):
        return {}
    task = settings.get("task", Task.LESION_TYPE.value)
    if task != Task.LESION_TYPE:
        raise ValueError(
            f"scenario {spec.name!r} is an MRI phantom whose labels are lesion types "
            f"(0 benign, 1 primary malignant, 2 metastasis): task = {task!r} cannot train "
            "on it; leave task unset or use --run-config \"task='lesion-type'\""
        )
    return {
        "task": Task.LESION_TYPE.value,
        "data.channels": ",".join(spec.channels),
        "data.intensity": Intensity.PERCENTILE.value,
        "federation.min-sites": min(2, len(spec.training_sites)),
    }


def scenario_config(
    spec: AnyScenario,
    phantom_dir: Path,
    data_dir: Path,
    run_dir: Path,
    settings: Mapping[str, Any],
) -> RunConfig:
    """The run config of a simulation of ``spec``: ``settings`` (run-config keys) plus
    where the phantom, the cache and the run folder are and which sites are external."""
    cfg = RunConfig().replace(
        {
            **modality_settings(spec, settings),
            **settings,
            "data.site-root": str(phantom_dir.resolve()),
            "data.cache-dir": str((data_dir / "cache" / phantom_dir.name).resolve()),
            "data.spatial-dims": spec.dims,
            "federation.external-sites": ",".join(spec.external_sites),
            "federation.expected-sites": len(spec.sites),
            "output.run-dir": str(run_dir.resolve()),
        }
    )
    _check_scenario_fits(cfg, spec)
    return cfg


def comparison_rows(evaluations: list[Evaluation], spec: AnyScenario) -> list[SiteRow]:
    """Per site: the global, its own local-only (or the mean of them) and the pooled model."""
    by = {(e.model, e.site): e for e in evaluations}
    rows = []
    for site in spec.sites:
        own = by.get((GLOBAL_MODEL, site.name))
        if own is None:
            continue
        local = by.get((local_model(site.name), site.name))
        if local is not None:
            local_rec = local.summary.to_record()
        else:
            others = [
                e.summary.auc
                for e in evaluations
                if e.model.startswith("local-") and e.site == site.name and e.summary.auc
            ]
            local_rec = (
                {"auc": sum(others) / len(others), "models": float(len(others))} if others else {}
            )
        pool = by.get((POOLED, site.name))
        rows.append(
            SiteRow(
                site=site.name,
                role=site.role,
                n_test=own.summary.n,
                federated=own.summary.to_record(),
                local_only=local_rec,
                pooled=pool.summary.to_record() if pool else {},
            )
        )
    return rows


def _check_scenario_fits(cfg: RunConfig, spec: AnyScenario) -> None:
    trainers = [s for s in spec.sites if s.role != "external"]
    if len(trainers) < cfg.federation.min_sites:
        raise ValueError(
            f"scenario {spec.name!r} has {len(trainers)} training site(s), fewer than "
            f"federation.min-sites = {cfg.federation.min_sites}"
        )
