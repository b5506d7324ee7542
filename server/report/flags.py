"""The report's flags: insufficient data, an AUC below the pooled internal prediction
interval, a drop beyond ``eval.margin``, and evaluations a site did not send."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.keys import Task, loso_model
from server.designs import EXTERNAL, INTERNAL
from server.report.settings import ReportSettings


def flags(
    report: Mapping[str, Any],
    cfg: ReportSettings,
    roles: Mapping[str, str],
    failed: Mapping[str, Mapping[str, str]],
) -> list[dict[str, Any]]:
    flags = []
    for r in report["sites"]:
        tag = {"site": r["site"], "model": r["model"], "role": r["role"]}
        if r["insufficient"]:
            flags.append(
                {
                    **tag,
                    "kind": "insufficient-data",
                    "message": (
                        f"{r['site']}: {r['n']} cases ({r['n_pos']} positive, "
                        f"{r['n_neg']} negative): below eval.min-cases / eval.min-per-class"
                        if cfg.task == Task.MALIGNANCY
                        else f"{r['site']}: {r['n']} cases: below eval.min-cases"
                    )
                    + ", no statistics reported",
                }
            )
            continue
        ref = r["reference"]
        if "auc" not in r or ref is None:
            continue
        auc = r["auc"]["estimate"]
        pi_lo = ref["prediction_interval_lo"]
        if pi_lo is not None and auc < pi_lo:
            flags.append(
                {
                    **tag,
                    "kind": "below-prediction-interval",
                    "message": f"{r['site']}: AUC {auc:.3f} below the pooled internal "
                    f"prediction interval (lower bound {pi_lo:.3f})",
                }
            )
        drop = ref["auc"] - auc
        if drop > cfg.margin:
            flags.append(
                {
                    **tag,
                    "kind": "drop-exceeds-margin",
                    "message": f"{r['site']}: AUC {auc:.3f} is {drop:.3f} below the pooled "
                    f"internal AUC (margin {cfg.margin:.3f})",
                }
            )
    for model, sites in failed.items():
        for site, reason in sites.items():
            flags.append(
                {
                    "site": site,
                    "model": model,
                    "role": EXTERNAL
                    if roles.get(site) == EXTERNAL or model == loso_model(site)
                    else INTERNAL,
                    "kind": "no-evaluation",
                    "message": f"{site} did not report an evaluation of {model}: {reason}",
                }
            )
    return flags
