"""Random-effects pooling over sites (AUC, sensitivity, specificity on the logit scale),
and differences of independent estimates: pooled internal vs external, and the gap at
one site against the pooled internal AUC."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from scipy import stats as sps

from common.stats import AUCResult, pool_auc, pool_proportions
from common.summary import SiteSummary
from server.designs import Evaluation
from server.report.settings import ReportSettings
from server.report.site_statistics import (
    auc_se,
    interval,
    json_float,
    site_auc,
    z_crit,
)


def _poolable(a: AUCResult | None) -> bool:
    return a is not None and 0.0 < a.auc < 1.0 and a.variance > 0.0


def pooled_block(
    summaries: Mapping[str, SiteSummary], cfg: ReportSettings
) -> dict[str, Any] | None:
    """Random-effects AUC, sensitivity and specificity over ``summaries`` (one per site)."""
    aucs = {site: site_auc(s) for site, s in summaries.items()}
    usable = {site: a for site, a in aucs.items() if a is not None and _poolable(a)}
    excluded = {
        site: "insufficient data"
        if a is None
        else f"AUC {a.auc:.3f} with variance "
        f"{a.variance:.2g}: its logit is infinite or has no variance"
        for site, a in aucs.items()
        if site not in usable
    }
    if not usable:
        return None
    method = cfg.pooling
    fit = pool_auc(
        list(usable.values()),
        method=method,
        hartung_knapp=cfg.hartung_knapp,
        level=cfg.level,
    )
    block: dict[str, Any] = {
        "sites": sorted(usable),
        "k": len(usable),
        "excluded": excluded,
        "auc": pooled_json(fit),
    }
    op = [(site, s.tables[0]) for site, s in summaries.items() if s.tables and not s.insufficient]
    if op:
        for name, events, totals in (
            ("sensitivity", [t.tp for _, t in op], [t.tp + t.fn for _, t in op]),
            ("specificity", [t.tn for _, t in op], [t.tn + t.fp for _, t in op]),
        ):
            prop = pool_proportions(
                events,
                totals,
                method=method,
                hartung_knapp=cfg.hartung_knapp,
                level=cfg.level,
            )
            block[name] = pooled_json(prop)
    return block


def pooled_json(fit: Any) -> dict[str, Any]:
    m = fit.logit
    # standard error on the probability scale (delta method), for differences of pooled AUCs
    se = m.se * fit.estimate * (1 - fit.estimate)
    return {
        **interval(fit.estimate, *fit.ci),
        "se": json_float(se),
        "prediction_interval": {
            "lo": json_float(fit.prediction_interval[0]),
            "hi": json_float(fit.prediction_interval[1]),
        },
        "tau2": json_float(m.tau2),
        "i2": json_float(m.i2),
        "h2": json_float(m.h2),
        "q": json_float(m.q),
        "q_p": json_float(m.q_p),
        "k": m.k,
        "method": m.method,
        "hartung_knapp": m.hartung_knapp,
        "scale": "logit",
    }


def difference(a: float, se_a: float, b: float, se_b: float, level: float) -> dict[str, Any]:
    """a - b for independent estimates: CI and two-sided z test."""
    d = a - b
    se = math.sqrt(se_a**2 + se_b**2)
    z = z_crit(level)
    stat = d / se if se > 0 else math.nan
    p = float(2 * sps.norm.sf(abs(stat))) if se > 0 else math.nan
    return {
        **interval(d, d - z * se, d + z * se),
        "se": json_float(se),
        "z": json_float(stat),
        "p": json_float(p),
    }


def pooled_difference(
    internal: dict[str, Any] | None, external: dict[str, Any] | None, cfg: ReportSettings
) -> dict[str, Any] | None:
    if internal is None or external is None:
        return None
    a, b = internal["auc"], external["auc"]
    return {"auc": difference(a["estimate"], a["se"], b["estimate"], b["se"], cfg.level)}


def gap(
    e: Evaluation | None, pooled_int: Mapping[str, Any] | None, cfg: ReportSettings
) -> dict[str, Any] | None:
    """Pooled internal AUC minus the external site's AUC (independent patients)."""
    auc = site_auc(e.summary) if e is not None else None
    if e is None or auc is None or pooled_int is None:
        return None
    a = pooled_int["auc"]
    return {
        "site": e.site,
        "model": e.model,
        "internal_auc": a["estimate"],
        "external_auc": auc.auc,
        "gap": difference(a["estimate"], a["se"], auc.auc, auc_se(auc), cfg.level),
    }
