"""The cross-site report: site summaries -> per-site statistics, pooling, gaps, drift, flags.

Input is only what sites sent (``Evaluation`` records of ``server.designs``)
and the run's provenance; output is one JSON-ready document whose layout is
published in ``server/report/report.schema.json`` (``REPORT_VERSION``). Every number
comes from ``common.stats``:

- per site: AUC with its DeLong CI; sensitivity, specificity, PPV, NPV (Wilson),
  LR+/LR-/DOR at every configured threshold; calibration-in-the-large, slope
  and intercept (GLM fit at the site), ECE and Brier from the bin summaries;
  drift of the site's inputs and embeddings against the reference sites;
- pooled, separately over internal and external evaluations: random-effects
  AUC, sensitivity and specificity on the logit scale (``eval.pooling``,
  ``eval.hartung-knapp``) with CI, prediction interval, tau², I², Q;
- internal vs external: pooled internal minus pooled external AUC with its CI
  and z test, and per site the gap between the pooled internal AUC of the
  model that site did not train and the site's own AUC (independent patients,
  so the variances add). This tests the site against the pooled *mean*; whether
  a site is unusual among sites is the prediction-interval flag, which adds
  tau²;
- drift vs degradation: Spearman correlation across sites of the embedding
  Fréchet distance (relative: divided by the trace of the reference sites'
  pooled embedding covariance, so it is scale-free) and the AUC drop;
- flags: sites whose AUC lies below the pooled internal prediction interval,
  whose drop exceeds ``eval.margin``, with insufficient data, or that did not
  report.

Which evaluations are "primary" depends on the design: the global model for
``holdout`` and ``cross-site``; for ``loso`` each fold's model, each site
appearing as external exactly once (its own fold). In ``loso`` a site's
internal AUC is the mean over the folds it trained in, with the mean of their
variances (the fold estimates share patients, so treating them as perfectly
correlated is the conservative choice); pooled internal sensitivity and
specificity are therefore not given for ``loso`` (2x2 counts of different
models cannot be averaged), only pooled external ones. Designated external
sites are scored by every fold: each fold's evaluation is a row with its gap
against that fold's pooled internal AUC, but they are not in the pooled
external estimate, which counts each left-out training site once.

Each row carries its ``reference``: the pooled internal AUC it is compared
with (holdout: all internal sites; loso: the internal sites of the fold that
left the row's site out). Drops, flags and the drift scatter use it. A row's
drift is measured against the model's internal sites other than itself, so
an internal site is not compared with a distribution that contains it.
A pooled block over a single site (k = 1) is that site's AUC on the logit
scale: its interval differs slightly from the site's own DeLong interval and
its prediction interval equals its confidence interval (tau² = 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from scipy import stats as sps

from common.config import RunConfig
from common.config_sections import EvalConfig
from common.keys import GLOBAL_MODEL, EvalDesign, Task, local_model, loso_model
from common.stats import (
    AUCResult,
    CalibrationBins,
    diagnostic_accuracy,
    ece_from_bins,
    frechet_distance,
    pool_auc,
    pool_proportions,
    population_stability_index,
    reliability_from_bins,
    wasserstein_1,
)
from common.summary import SiteSummary, fpr_grid, histogram_edges
from server.designs import EXTERNAL, INTERNAL, Evaluation

REPORT_VERSION = "1.1"
SCHEMA_FILE = "report.schema.json"


@dataclass(frozen=True)
class ReportSettings:
    """What the report needs from the run config: the task and ``eval.*``."""

    task: str
    ev: EvalConfig
    hooks: tuple[str, ...] = ()  # descriptions of the run's hooks, in order

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> ReportSettings:
        from common.hooks import HookSet

        cfg = RunConfig.from_flat(flat)
        return cls(cfg.task, cfg.eval, tuple(HookSet(cfg).describe()))

    def __getattr__(self, name: str) -> Any:  # cfg.level, cfg.margin ... read eval.*
        return getattr(self.ev, name)


# ---- small helpers ---------------------------------------------------------------------------


def _num(x: float | None) -> float | None:
    """JSON-safe float: NaN and infinities become null."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _interval(est: float | None, lo: float | None, hi: float | None) -> dict[str, Any]:
    return {"estimate": _num(est), "lo": _num(lo), "hi": _num(hi)}


def _auc(s: SiteSummary) -> AUCResult | None:
    if s.insufficient or s.auc is None or s.auc_var is None:
        return None
    return AUCResult(s.auc, s.auc_var, s.n_pos, s.n_neg)


def _poolable(a: AUCResult | None) -> bool:
    return a is not None and 0.0 < a.auc < 1.0 and a.variance > 0.0


def auc_se(a: AUCResult) -> float:
    return math.sqrt(max(a.variance, 0.0))


def z_crit(level: float) -> float:
    return float(sps.norm.ppf(0.5 + level / 2))


# ---- per-site statistics ----------------------------------------------------------------------


def site_statistics(s: SiteSummary, cfg: ReportSettings) -> dict[str, Any]:
    """Everything the per-site table shows for one evaluation (no pooling)."""
    out: dict[str, Any] = {
        "n": s.n,
        "n_pos": s.n_pos,
        "n_neg": s.n_neg,
        "prevalence": _num(s.n_pos / s.n) if s.n and cfg.task == Task.MALIGNANCY else None,
        "insufficient": s.insufficient,
        # bad cases left out under data.on-bad-case = skip: the count, the first ids
        "skipped_cases": {"n": s.skipped, "ids": list(s.skipped_ids)},
    }
    if s.insufficient:
        return out
    auc = _auc(s)
    if auc is not None:
        lo, hi = auc.ci(cfg.level)
        out["auc"] = {**_interval(auc.auc, lo, hi), "variance": auc.variance}
    tables = []
    for t in s.tables:
        acc = diagnostic_accuracy(t.tp, t.fp, t.fn, t.tn, cfg.level)
        tables.append(
            {
                "threshold": t.threshold,
                "tp": t.tp,
                "fp": t.fp,
                "fn": t.fn,
                "tn": t.tn,
                **{
                    name: _interval(*getattr(acc, name))
                    for name in ("sensitivity", "specificity", "ppv", "npv", "lr_pos", "lr_neg")
                },
                "dor": _interval(*acc.dor),
                "zero_cell_corrected": acc.corrected,
            }
        )
    out["thresholds"] = tables
    if s.cal_count:
        bins = _bins(s)
        out["calibration"] = {
            "citl": _interval_se(s.cal_citl, s.cal_citl_se, cfg.level),
            "slope": _interval_se(s.cal_slope, s.cal_slope_se, cfg.level),
            "intercept": _interval_se(s.cal_intercept, s.cal_intercept_se, cfg.level),
            "ece": _num(ece_from_bins(bins)),
            "brier": _num(s.brier),
        }
    if s.dice_mean is not None:
        half = (
            float(sps.t.ppf(0.5 + cfg.level / 2, s.n - 1)) * (s.dice_sd or 0.0) / math.sqrt(s.n)
            if s.n > 1
            else math.nan
        )
        out["dice"] = {
            **_interval(s.dice_mean, s.dice_mean - half, s.dice_mean + half),
            "sd": _num(s.dice_sd),
            "median": _num(s.dice_median),
            "q1": _num(s.dice_q1),
            "q3": _num(s.dice_q3),
        }
        out["hd95_mm"] = {"mean": _num(s.hd95_mean), "n": s.hd95_n}
    return out


def _interval_se(est: float | None, se: float | None, level: float) -> dict[str, Any]:
    if est is None or se is None or not math.isfinite(se):
        return {**_interval(est, None, None), "se": _num(se)}
    z = z_crit(level)
    return {**_interval(est, est - z * se, est + z * se), "se": _num(se)}


def _bins(s: SiteSummary) -> CalibrationBins:
    return CalibrationBins(
        count=tuple(s.cal_count),
        sum_p=tuple(s.cal_sum_p),
        sum_y=tuple(float(v) for v in s.cal_sum_y),
        sum_sq_error=tuple(s.cal_sum_sq) if s.cal_sum_sq else tuple(0.0 for _ in s.cal_count),
    )


# ---- pooling ----------------------------------------------------------------------------------


def pooled_block(
    summaries: Mapping[str, SiteSummary], cfg: ReportSettings
) -> dict[str, Any] | None:
    """Random-effects AUC, sensitivity and specificity over ``summaries`` (one per site)."""
    aucs = {site: _auc(s) for site, s in summaries.items()}
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
        "auc": _pooled_json(fit),
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
            block[name] = _pooled_json(prop)
    return block


def _pooled_json(fit: Any) -> dict[str, Any]:
    m = fit.logit
    # standard error on the probability scale (delta method), for differences of pooled AUCs
    se = m.se * fit.estimate * (1 - fit.estimate)
    return {
        **_interval(fit.estimate, *fit.ci),
        "se": _num(se),
        "prediction_interval": {
            "lo": _num(fit.prediction_interval[0]),
            "hi": _num(fit.prediction_interval[1]),
        },
        "tau2": _num(m.tau2),
        "i2": _num(m.i2),
        "h2": _num(m.h2),
        "q": _num(m.q),
        "q_p": _num(m.q_p),
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
    return {**_interval(d, d - z * se, d + z * se), "se": _num(se), "z": _num(stat), "p": _num(p)}


# ---- drift ------------------------------------------------------------------------------------


def _reference(summaries: Iterable[SiteSummary]) -> tuple[np.ndarray | None, tuple | None]:
    """Pooled histogram counts and pooled embedding Gaussian of the reference sites."""
    hist = None
    n_total, sum_mu, parts = 0, None, []
    for s in summaries:
        if s.hist_counts:
            h = np.asarray(s.hist_counts, dtype=float)
            hist = h if hist is None else hist + h
        if s.emb_mean and s.n > 1:
            mu = np.asarray(s.emb_mean)
            cov = np.asarray(s.emb_cov)
            n_total += s.n
            sum_mu = mu * s.n if sum_mu is None else sum_mu + mu * s.n
            parts.append((s.n, mu, cov))
    gauss = None
    if parts and sum_mu is not None and n_total > 1:
        mean = sum_mu / n_total
        scatter = sum((n - 1) * c + n * np.outer(mu - mean, mu - mean) for n, mu, c in parts)
        gauss = (mean, scatter / (n_total - 1))
    return hist, gauss


def drift_distances(
    s: SiteSummary, ref_hist: np.ndarray | None, ref_gauss: tuple | None, bins: int
) -> dict[str, Any]:
    """The site's input and embedding distances to the reference sites' pooled distribution."""
    out: dict[str, Any] = {}
    if s.hist_counts and ref_hist is not None:
        edges = histogram_edges(bins)
        h = np.asarray(s.hist_counts, dtype=float)
        w1 = [wasserstein_1(h[c], ref_hist[c], edges) for c in range(len(h))]
        psi = [population_stability_index(h[c], ref_hist[c]) for c in range(len(h))]
        out["wasserstein1"] = _num(float(np.mean(w1)))
        out["wasserstein1_per_channel"] = [_num(v) for v in w1]
        out["psi"] = _num(float(np.mean(psi)))
        out["psi_per_channel"] = [_num(v) for v in psi]
    if s.emb_mean and ref_gauss is not None:
        fd = frechet_distance(s.emb_mean, np.asarray(s.emb_cov), ref_gauss[0], ref_gauss[1])
        spread = float(np.trace(ref_gauss[1]))
        out["frechet"] = _num(fd)
        # scale-free: in units of the reference embedding's total variance
        out["frechet_relative"] = _num(fd / spread) if spread > 0 else None
    return out


# ---- the report --------------------------------------------------------------------------------


def primary_evaluations(evals: Sequence[Evaluation], design: str) -> list[Evaluation]:
    """The evaluations the per-site table, pooling and gaps are about (see module docstring)."""
    if design == EvalDesign.LOSO:
        return [e for e in evals if e.model.startswith("without-")]
    return [e for e in evals if e.model == GLOBAL_MODEL]


def build_report(
    evaluations: Sequence[Evaluation],
    config: Mapping[str, Any],
    sites: Sequence[Mapping[str, Any]],
    provenance: Mapping[str, Any] | None = None,
    failed: Mapping[str, Mapping[str, str]] | None = None,
    privacy: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report document (see the module docstring and ``report.schema.json``);
    ``privacy``: the DP block (``server.report.privacy``), omitted when None."""
    cfg = ReportSettings.from_flat(config)
    roles = {str(s["name"]): str(s["role"]) for s in sites}
    primary = primary_evaluations(evaluations, cfg.design)
    body = _loso(primary, cfg) if cfg.design == EvalDesign.LOSO else _holdout(primary, cfg)
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": cfg.task,
        "design": cfg.design,
        "settings": {
            "level": cfg.level,
            "thresholds": list(cfg.thresholds),
            "operating_threshold": cfg.thresholds[0],
            "pooling": cfg.pooling,
            "hartung_knapp": cfg.hartung_knapp,
            "margin": cfg.margin,
            "hooks": list(cfg.hooks),
        },
        # node ids are unsigned 64-bit: strings, so JSON readers keep every digit
        "sites_joined": [{**s, "node_id": str(s["node_id"])} for s in sites],
        **body,
        "matrix": _matrix(evaluations, cfg),
        "provenance": dict(provenance or {}),
    }
    if privacy is not None:
        report["privacy"] = dict(privacy)
    report["flags"] = _flags(report, cfg, roles, failed or {})
    return report


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
        ref_hist, ref_gauss = _reference(others)
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


def _holdout(primary: Sequence[Evaluation], cfg: ReportSettings) -> dict[str, Any]:
    internal = {e.site: e.summary for e in primary if e.role == INTERNAL}
    external = {e.site: e.summary for e in primary if e.role == EXTERNAL}
    pooled_int = pooled_block(internal, cfg)
    pooled_ext = pooled_block(external, cfg)
    inside = [e for e in primary if e.role == INTERNAL]
    rows = _site_rows(primary, cfg, {GLOBAL_MODEL: inside}, {GLOBAL_MODEL: pooled_int})
    gaps = [_gap(e, pooled_int, cfg) for e in primary if e.role == EXTERNAL]
    difference_note = "independent patients: internal and external sites differ"
    body = _body(rows, pooled_int, pooled_ext, [g for g in gaps if g], cfg, difference_note)
    return {**body, "curves": _curves(primary, cfg)}


def _gap(
    e: Evaluation | None, pooled_int: Mapping[str, Any] | None, cfg: ReportSettings
) -> dict[str, Any] | None:
    """Pooled internal AUC minus the external site's AUC (independent patients)."""
    auc = _auc(e.summary) if e is not None else None
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


def _body(
    rows: list[dict[str, Any]],
    pooled_int: dict[str, Any] | None,
    pooled_ext: dict[str, Any] | None,
    gaps: list[dict[str, Any]],
    cfg: ReportSettings,
    difference_note: str,
) -> dict[str, Any]:
    difference = _pooled_difference(pooled_int, pooled_ext, cfg)
    return {
        "sites": rows,
        "pooled": {
            "internal": pooled_int,
            "external": pooled_ext,
            "difference": None if difference is None else {**difference, "note": difference_note},
        },
        "gaps": gaps,
        "drift_vs_degradation": _drift_vs_degradation(rows),
    }


def _loso(primary: Sequence[Evaluation], cfg: ReportSettings) -> dict[str, Any]:
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
    gaps = [g for e in scored if (g := _gap(e, blocks[e.model], cfg)) is not None]
    # a site's internal AUC: mean over the folds it trained in (conservative variance)
    internal_means: dict[str, SiteSummary] = {}
    for site in sorted({e.site for e in primary if e.role == INTERNAL}):
        trained = [e.summary for e in primary if e.site == site and e.role == INTERNAL]
        usable = [s for s in trained if _auc(s) is not None]
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
    return {**body, "folds": fold_rows, "curves": _curves(scored, cfg)}


def _pooled_difference(
    internal: dict[str, Any] | None, external: dict[str, Any] | None, cfg: ReportSettings
) -> dict[str, Any] | None:
    if internal is None or external is None:
        return None
    a, b = internal["auc"], external["auc"]
    return {"auc": difference(a["estimate"], a["se"], b["estimate"], b["se"], cfg.level)}


def _drift_vs_degradation(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """AUC drop (the row's pooled internal reference minus the site's AUC) against the
    embedding's relative Fréchet distance, with Spearman's rho across sites.

    A site with several rows (a designated external site under every loso fold)
    is one point: the means of its drifts and drops, so no site counts twice.
    """
    by_site: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        ref = r["reference"]
        if ref is not None and "auc" in r and r["drift"].get("frechet_relative") is not None:
            by_site.setdefault(r["site"], []).append(r)
    points = []
    for site, group in by_site.items():
        drops = [g["reference"]["auc"] - g["auc"]["estimate"] for g in group]
        w1 = [g["drift"]["wasserstein1"] for g in group if g["drift"].get("wasserstein1")]
        points.append(
            {
                "site": site,
                "model": group[0]["model"] if len(group) == 1 else f"mean of {len(group)} models",
                "role": group[0]["role"],
                "drift": _num(float(np.mean([g["drift"]["frechet_relative"] for g in group]))),
                "wasserstein1": _num(float(np.mean(w1))) if w1 else None,
                "auc_drop": _num(float(np.mean(drops))),
            }
        )
    spearman: dict[str, Any] = {"rho": None, "p": None, "n": len(points)}
    xs, ys = [p["drift"] for p in points], [p["auc_drop"] for p in points]
    if len(points) >= 3 and len(set(xs)) > 1 and len(set(ys)) > 1:  # else rho is undefined
        res = sps.spearmanr(xs, ys)
        spearman = {"rho": _num(res.statistic), "p": _num(res.pvalue), "n": len(points)}
    return {"measure": "frechet-relative", "points": points, "spearman": spearman}


def _matrix(evals: Sequence[Evaluation], cfg: ReportSettings) -> list[dict[str, Any]]:
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
        auc = _auc(e.summary)
        if auc is not None:
            cell["auc"] = _interval(auc.auc, *auc.ci(cfg.level))
        if e.summary.dice_mean is not None:
            cell["dice"] = _num(e.summary.dice_mean)
        cells.append(cell)
    return cells


def _curves(primary: Sequence[Evaluation], cfg: ReportSettings) -> dict[str, Any]:
    grid = [float(v) for v in fpr_grid(cfg.roc_points)]
    roc, reliability = [], []
    for e in primary:
        s = e.summary
        if s.roc_tpr:
            roc.append({"site": e.site, "model": e.model, "role": e.role, "tpr": list(s.roc_tpr)})
        if s.cal_count:
            rel = reliability_from_bins(_bins(s))
            reliability.append(
                {
                    "site": e.site,
                    "model": e.model,
                    "role": e.role,
                    "mean_predicted": [_num(v) for v in rel.mean_predicted],
                    "observed_rate": [_num(v) for v in rel.observed_rate],
                    "count": list(rel.count),
                }
            )
    return {"fpr": grid, "roc": roc, "reliability": reliability}


def _flags(
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


__all__ = [
    "REPORT_VERSION",
    "ReportSettings",
    "build_report",
    "difference",
    "local_model",
    "pooled_block",
    "site_statistics",
]
