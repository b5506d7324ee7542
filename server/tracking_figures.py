"""What experiment tracking logs (``server.tracking``): metrics named and read from the
records the run folder already holds, never anything per case.

- ``train/loss/MODEL/SITE`` and ``SPLIT/METRIC/MODEL/SITE`` per round (``rounds.jsonl``);
- ``report/...``: report.json's pooled AUCs, every (model, site) AUC or Dice and every gap;
  ``seeds/...`` the same combined over a --seeds run's seeds (with their SD);
- ``compare/...``: comparison.json's figures per method, per seed and over the seeds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from common.keys import GLOBAL_MODEL, MetricKey, RecordPhase
from server.final_evaluation import headline


def metric_name(*parts: str) -> str:
    """``a/b/c`` from the parts, each reduced to what MLflow and TensorBoard accept."""
    return "/".join(re.sub(r"[^\w.\- ]", "_", str(part)) for part in parts)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def round_metrics(entry: Mapping[str, Any]) -> tuple[int, dict[str, float]]:
    """The step (round) and metrics of a ``rounds.jsonl`` record: ``train/loss/MODEL/SITE``
    of a training round, ``SPLIT/METRIC/MODEL/SITE`` of its evaluation (the headline
    figures the audit trail keeps); nothing for the other phases."""
    step = int(entry.get("round") or 0)
    model = str(entry.get("model", GLOBAL_MODEL))
    sites = entry.get("sites")
    if not isinstance(sites, Mapping):
        return step, {}
    values: dict[str, float] = {}
    for site, summary in sites.items():
        if entry.get("phase") == RecordPhase.TRAIN:
            loss = summary.get(MetricKey.TRAIN_LOSS.value)
            if _finite(loss):
                values[metric_name("train", "loss", model, site)] = float(loss)
        elif entry.get("phase") == RecordPhase.EVALUATE:
            split = str(entry.get("split", "test"))
            for key, value in headline(dict(summary)).items():
                values[metric_name(split, key, model, site)] = float(value)
    return step, values


def report_figures(report: Mapping[str, Any]) -> tuple[int, dict[str, float], dict[str, str]]:
    """A report.json's step (its last round), headline metrics and tags: pooled AUCs, every
    (model, site) AUC or Dice, every gap (``report/...``); a --seeds report's figures
    combined over the seeds instead (``seeds/...``); model hashes as tags."""
    provenance = report.get("provenance") or {}
    step = int((provenance.get("config") or {}).get("federation.num-rounds", 0))
    tags = {f"hepafed.{key}": str(report.get(key, "")) for key in ("design", "task")}
    for model, digest in sorted((provenance.get("model_sha256") or {}).items()):
        suffix = "" if model == GLOBAL_MODEL else f".{metric_name(model)}"
        tags[f"hepafed.model-sha256{suffix}"] = str(digest)
    noise = report.get("training_noise")
    values = _seed_figures(noise) if noise else _run_figures(report)
    return step, {k: float(v) for k, v in values.items() if _finite(v)}, tags


def _estimate(block: Any, *path: str) -> Any:
    for key in path:
        block = block.get(key) if isinstance(block, Mapping) else None
    return block


def _run_figures(report: Mapping[str, Any]) -> dict[str, Any]:
    pooled = report.get("pooled") or {}
    values = {
        "report/pooled-internal-auc": _estimate(pooled, "internal", "auc", "estimate"),
        "report/pooled-external-auc": _estimate(pooled, "external", "auc", "estimate"),
        "report/pooled-difference-auc": _estimate(pooled, "difference", "auc", "estimate"),
    }
    for fold in report.get("folds") or []:
        key = metric_name("report", "pooled-internal-auc", fold["model"])
        values[key] = _estimate(fold, "internal", "auc", "estimate")
    for cell in report.get("matrix") or []:
        model, site = cell["model"], cell["site"]
        values[metric_name("report", "auc", model, site)] = _estimate(cell, "auc", "estimate")
        values[metric_name("report", "dice", model, site)] = cell.get("dice")
    for gap in report.get("gaps") or []:
        values[metric_name("report", "gap", gap["model"], gap["site"])] = _estimate(
            gap, "gap", "estimate"
        )
    return values


def _seed_figures(noise: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}

    def add(name: tuple[str, ...], sd_name: tuple[str, ...], figure: Any) -> None:
        values[metric_name("seeds", *name)] = _estimate(figure, "combined", "estimate")
        values[metric_name("seeds", *sd_name)] = _estimate(figure, "combined", "between_sd")

    for part in ("internal", "external", "difference"):
        figure = (noise.get("pooled") or {}).get(part)
        add((f"pooled-{part}-auc",), (f"pooled-{part}-auc-sd",), figure)
    for site in noise.get("sites") or []:
        where = (site["model"], site["site"])
        add(("auc", *where), ("auc-sd", *where), site.get("auc"))
    for gap in noise.get("gaps") or []:
        where = (gap["model"], gap["site"])
        add(("gap", *where), ("gap-sd", *where), gap.get("gap"))
    return values


# comparison.json: (figure over the seeds, figure of one seed) -> metric name
_COMPARED = (
    ("internal_auc", "internal", "pooled-internal-auc"),
    ("external_auc", "external", "pooled-external-auc"),
    ("gap", "gap", "gap"),
)


def comparison_figures(doc: Mapping[str, Any], seed: int | None = None) -> dict[str, float]:
    """A comparison.json's figures per method (``compare/FIGURE/METHOD``): over the seeds
    (``seed = None``: the mean, and the SD as ``FIGURE-sd``) or one seed's, with every
    site's AUC (``compare/auc/METHOD/SITE``)."""
    values: dict[str, Any] = {}
    for method, entry in (doc.get("methods") or {}).items():
        one = (entry.get("seeds") or {}).get(str(seed)) or {}
        for over_seeds, of_seed, name in _COMPARED:
            if seed is None:
                values[metric_name("compare", name, method)] = _estimate(entry, over_seeds, "mean")
                sd = _estimate(entry, over_seeds, "sd")
                values[metric_name("compare", f"{name}-sd", method)] = sd
            else:
                values[metric_name("compare", name, method)] = _estimate(one, of_seed, "estimate")
        for site, cell in (one.get("sites") or {}).items():
            values[metric_name("compare", "auc", method, site)] = _estimate(cell, "auc", "estimate")
    return {k: float(v) for k, v in values.items() if _finite(v)}
