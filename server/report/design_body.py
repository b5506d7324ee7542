"""The document's body per evaluation design: the per-site rows, pooled blocks, gaps,
folds and curves of ``holdout``/``cross-site`` and ``loso``, and the model x site
matrix (see ``server.report.build`` for what each design compares)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from common.keys import GLOBAL_MODEL, loso_model
from common.stats import reliability_from_bins
from common.summary import SiteSummary, fpr_grid
from server.designs import EXTERNAL, INTERNAL, Evaluation
from server.report.drift import drift_distances, drift_vs_degradation, reference_distribution
from server.report.pooling import gap, pooled_block, pooled_difference
from server.report.settings import ReportSettings
from server.report.site_statistics import (
    calibration_bins,
    interval,
    json_float,
    site_auc,
    site_statistics,
)


def _site_rows(
    evals: Sequence[Evaluation],
    cfg: ReportSettings,
    reference: Mapping[str, Sequence[Evaluation]],
    comparator: Mapping[str, Mapping[str, Any] | None],
) -> list[dict[str, Any]]:
    """Per-site rows. Drift is measured against the model's internal sites other than the
    row's own site; ``reference`` is the pooled internal AUC the row is compared with."""
    rows = []
    for e in evals:
        others = [r.summary for r in reference[e.model] if r.site != e.site]
        ref_hist, ref_gauss = reference_distribution(others)
        block = comparator.get(e.model)
        rows.append(
            {
                "site": e.site,
                "model": e.model,
                "role": e.role,
                "split": e.split,
                "adaptation": e.adaptation,
                **site_statistics(e.summary, cfg),
                "drift": drift_distances(e.summary, ref_hist, ref_gauss, cfg.histogram_bins),
                "reference": None
                if block is None
                else {
                    "auc": block["auc"]["estimate"],
                    "prediction_interval_lo": block["auc"]["prediction_interval"]["lo"],
                    "sites": block["sites"],
                },
            }
        )
    return rows


def holdout_body(primary: Sequence[Evaluation], cfg: ReportSettings) -> dict[str, Any]:
    internal = {e.site: e.summary for e in primary if e.role == INTERNAL}
    external = {e.site: e.summary for e in primary if e.role == EXTERNAL}
    pooled_int = pooled_block(internal, cfg)
    pooled_ext = pooled_block(external, cfg)
    inside = [e for e in primary if e.role == INTERNAL]
    rows = _site_rows(primary, cfg, {GLOBAL_MODEL: inside}, {GLOBAL_MODEL: pooled_int})
    gaps = [gap(e, pooled_int, cfg) for e in primary if e.role == EXTERNAL]
    difference_note = "independent patients: internal and external sites differ"
    body = _body(rows, pooled_int, pooled_ext, [g for g in gaps if g], cfg, difference_note)
    return {**body, "curves": curves(primary, cfg)}


def _body(
    rows: list[dict[str, Any]],
    pooled_int: dict[str, Any] | None,
    pooled_ext: dict[str, Any] | None,
    gaps: list[dict[str, Any]],
    cfg: ReportSettings,
    difference_note: str,
) -> dict[str, Any]:
    difference = pooled_difference(pooled_int, pooled_ext, cfg)
    return {
        "sites": rows,
        "pooled": {
            "internal": pooled_int,
            "external": pooled_ext,
            "difference": None if difference is None else {**difference, "note": difference_note},
        },
        "gaps": gaps,
        "drift_vs_degradation": drift_vs_degradation(rows),
    }


def loso_body(primary: Sequence[Evaluation], cfg: ReportSettings) -> dict[str, Any]:
    folds = sorted({e.model for e in primary})
    by_fold = {f: [e for e in primary if e.model == f] for f in folds}
    # each left-out site once, evaluated by the model that never saw it
    left_out = [
        e for f in folds for e in by_fold[f] if e.role == EXTERNAL and loso_model(e.site) == f
    ]
    blocks = {
        f: pooled_block({e.site: e.summary for e in by_fold[f] if e.role == INTERNAL}, cfg)
        for f in folds
    }
    # designated external sites are external to every fold: one row per fold
    designated = [
        e for f in folds for e in by_fold[f] if e.role == EXTERNAL and loso_model(e.site) != f
    ]
    scored = left_out + designated
    rows = _site_rows(
        scored, cfg, {f: [e for e in by_fold[f] if e.role == INTERNAL] for f in folds}, blocks
    )
    fold_rows = [{"model": f, "internal": blocks[f]} for f in folds]
    gaps = [g for e in scored if (g := gap(e, blocks[e.model], cfg)) is not None]
    # a site's internal AUC: mean over the folds it trained in (conservative variance)
    internal_means: dict[str, SiteSummary] = {}
    for site in sorted({e.site for e in primary if e.role == INTERNAL}):
        trained = [e.summary for e in primary if e.site == site and e.role == INTERNAL]
        usable = [s for s in trained if site_auc(s) is not None]
        if usable:
            first = usable[0]
            internal_means[site] = SiteSummary(
                n=first.n,
                n_pos=first.n_pos,
                n_neg=first.n_neg,
                auc=float(np.mean([s.auc for s in usable])),
                auc_var=float(np.mean([s.auc_var for s in usable])),
            )  # no 2x2 table: counts of different models cannot be averaged
    pooled_int = pooled_block(internal_means, cfg)
    pooled_ext = pooled_block({e.site: e.summary for e in left_out}, cfg)
    difference_note = (
        "the same sites' patients on both sides (internal: test splits; external: all "
        "cases), so the estimates are positively correlated and this independent-samples "
        "interval is conservative; the per-fold gaps compare independent patients"
    )
    body = _body(rows, pooled_int, pooled_ext, gaps, cfg, difference_note)
    return {**body, "folds": fold_rows, "curves": curves(scored, cfg)}


def model_site_matrix(evals: Sequence[Evaluation], cfg: ReportSettings) -> list[dict[str, Any]]:
    """Every model x site cell with n and the AUC (CI) or Dice."""
    cells = []
    for e in sorted(evals, key=lambda e: (e.model, e.site)):
        cell: dict[str, Any] = {
            "model": e.model,
            "site": e.site,
            "role": e.role,
            "split": e.split,
            "adaptation": e.adaptation,
            "n": e.summary.n,
            "insufficient": e.summary.insufficient,
        }
        auc = site_auc(e.summary)
        if auc is not None:
            cell["auc"] = interval(auc.auc, *auc.ci(cfg.level))
        if e.summary.dice_mean is not None:
            cell["dice"] = json_float(e.summary.dice_mean)
        cells.append(cell)
    return cells


def curves(primary: Sequence[Evaluation], cfg: ReportSettings) -> dict[str, Any]:
    grid = [float(v) for v in fpr_grid(cfg.roc_points)]
    roc, reliability = [], []
    for e in primary:
        s = e.summary
        if s.roc_tpr:
            roc.append({"site": e.site, "model": e.model, "role": e.role, "tpr": list(s.roc_tpr)})
        if s.cal_count:
            rel = reliability_from_bins(calibration_bins(s))
            reliability.append(
                {
                    "site": e.site,
                    "model": e.model,
                    "role": e.role,
                    "mean_predicted": [json_float(v) for v in rel.mean_predicted],
                    "observed_rate": [json_float(v) for v in rel.observed_rate],
                    "count": list(rel.count),
                }
            )
    return {"fpr": grid, "roc": roc, "reliability": reliability}
