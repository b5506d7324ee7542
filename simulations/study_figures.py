"""The figures one study cell records (``simulations.study``), from a `simulate` run.

From the run's summary and report: the random-effects pooled internal AUC of
the federated model, each site's AUC under the federated, local-only and pooled
models, and the internal-external gap at each external site. Then each model's
AUC on the same cases, for issue 14's ordering pooled >= FedAvg >= mean
local-only: all training sites' test cases together (scored here from the run's
checkpoints, as the pooled baseline is) and each external site's cases (the
sites' own final evaluations).
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any

from client.evaluation import summarize
from common.config import RunConfig
from common.data import concat_splits
from common.device import select_compute
from common.keys import GLOBAL_MODEL, local_model
from common.models import build_model
from server.records import checkpoint_name, load_checkpoint, read_config
from simulations.baselines import load_sites
from simulations.simulate import SimulationSummary

log = logging.getLogger("hepafed.progress")


def _auc(record: dict[str, Any]) -> float | None:
    value = record.get("auc")
    return float(value) if value is not None else None


def cell_figures(summary: SimulationSummary) -> dict[str, Any]:
    """Everything the study's tables need from one finished `simulate` run."""
    report = summary.report
    pooled = report.get("pooled", {})
    gaps = {
        str(g["site"]): float(g["gap"]["estimate"])
        for g in report.get("gaps", [])
        if g.get("model") == GLOBAL_MODEL and g.get("gap")
    }
    roles = {r.site: r.role for r in summary.rows}
    trainers = [site for site, role in roles.items() if role != "external"]
    externals = [site for site, role in roles.items() if role == "external"]
    cfg = RunConfig.from_flat(read_config(summary.run_dir)["config"])
    same: dict[str, dict[str, Any]] = {
        row.site: {
            "fedavg": _auc(row.federated),
            "pooled": _auc(row.pooled),
            "local_mean": _auc(row.local_only),  # the mean of the local-only models there
        }
        for row in summary.rows
        if row.role == "external"
    }
    same["internal"] = internal_same_cases(Path(summary.run_dir), cfg, trainers)
    same["internal"]["pooled"] = _auc(summary.pooled_internal)
    return {
        "pooled_internal_auc": (pooled.get("internal") or {}).get("auc", {}).get("estimate"),
        "site_auc": {r.site: _auc(r.federated) for r in summary.rows},
        "local_only_auc": {r.site: _auc(r.local_only) for r in summary.rows},
        "pooled_model_auc": {r.site: _auc(r.pooled) for r in summary.rows},
        "roles": roles,
        "external_sites": externals,
        "gap": gaps,
        "same_cases": same,
        "budget": {
            "rounds": cfg.federation.num_rounds,
            "local_epochs": cfg.train.local_epochs,
            "passes": cfg.federation.num_rounds * cfg.train.local_epochs,
        },
        "seconds": dict(summary.seconds),
        "code_version": report.get("provenance", {}).get("code_version", ""),
    }


def internal_same_cases(run_dir: Path, cfg: RunConfig, trainers: list[str]) -> dict[str, Any]:
    """The federated model's and each local-only model's AUC on all training sites' test
    cases together (the pooled baseline's in-distribution figure, same cases).

    Scored from the run's checkpoints without site hooks: with ``hooks.use`` set the
    models are not what the sites scored, so nothing is returned."""
    if cfg.hooks.use:
        return {}
    compute = select_compute(cfg.train.amp)
    internal = concat_splits([s.test for s in load_sites(cfg) if s.name in trainers])

    def score(model_id: str) -> float | None:
        path = run_dir / checkpoint_name(model_id)
        if not path.exists():
            return None
        model = build_model(cfg)
        model.load_state_dict(load_checkpoint(path)["model"])
        return summarize(model, internal, cfg, compute).auc

    local = {site: score(local_model(site)) for site in trainers}
    known = [v for v in local.values() if v is not None]
    return {
        "fedavg": score(GLOBAL_MODEL),
        "local": local,
        "local_mean": statistics.fmean(known) if known else None,
    }
