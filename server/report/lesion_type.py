"""The report's three-way block for task lesion-type (benign, primary malignant, metastasis).

A lesion-type site summary carries two views of the same cases. Its binary fields (AUC,
2x2 tables, calibration) are benign (0) vs malignant (1 or 2) on p(1) + p(2), so the rest
of the report reads them unchanged; its class fields (``SiteSummary.class_*``,
``confusion``, ``brier_multi``) give the three-way view this block reports:

- per site: each class's one-vs-rest (OvR) AUC with its DeLong interval, as the binary
  site AUC (``AUCResult.ci``); OvR sensitivity and specificity of the argmax decision
  with Wilson intervals, from the class counts, the predicted counts and the diagonal
  (the confusion matrix may have suppressed cells, so it is not used for them); each
  class's ECE from its OvR calibration bins; the macro AUC (``macro_auc``, whose
  variance uses the DeLong covariance of the three AUCs); the multiclass Brier score;
  the confusion matrix with suppressed cells (the site's small-cell rule) as null;
- pooled, separately over internal and external evaluations: each class's OvR AUC
  pooled on the logit scale (``ovr_pooled``, ``eval.pooling``, ``eval.hartung-knapp``),
  and the confusion matrix summed over the sites, null where any site suppressed the
  cell (the server does not know the suppressed count, so no sum is exact);
- the gap: per class, pooled internal minus pooled external AUC (independent patients,
  so the variances add; ``pooling.difference``).

A site with too few cases of some class sends its class counts only (``insufficient``).
The block is written for the holdout and cross-site designs (lesion-type runs no loso).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from common.keys import LESION_CLASSES
from common.stats import AUCResult, CalibrationBins, ece_from_bins
from common.stats.multiclass import OvRAUCResult, macro_auc, ovr_pooled
from common.stats.proportions import proportion
from common.summary import SiteSummary
from server.designs import Evaluation
from server.report.pooling import difference, pooled_json
from server.report.settings import ReportSettings
from server.report.site_statistics import interval, json_float

CLASSES = LESION_CLASSES  # label k is CLASSES[k]
K = len(CLASSES)
RULE = "argmax"
RULE_TEXT = (
    "Each case is assigned the class of its largest predicted probability (argmax; a tie "
    "goes to the lower class). Sensitivity and specificity of a class are one-vs-rest: the "
    "share of its cases assigned to it, and the share of the other cases not assigned to it."
)
BINARY_VIEW = (
    "The headline AUC, pooled AUC, gaps, thresholds and calibration of this report are the "
    "binary view benign (0) vs malignant (1 or 2), scored on p(primary malignant) + "
    "p(metastasis); this section is the three-way view."
)
ROLES = ("internal", "external")


def lesion_type_block(primary: Sequence[Evaluation], cfg: ReportSettings) -> dict[str, Any]:
    """The ``lesion_type`` block of the report (module docstring) over the primary
    evaluations."""
    pooled = {role: pooled_role([e for e in primary if e.role == role], cfg) for role in ROLES}
    return {
        "classes": list(CLASSES),
        "rule": RULE,
        "rule_text": RULE_TEXT,
        "binary_view": BINARY_VIEW,
        "sites": [_site(e, cfg) for e in primary],
        "pooled": pooled,
        "gap": _gaps(pooled["internal"], pooled["external"], cfg),
    }


# ---- one site ------------------------------------------------------------------------------


def has_classes(s: SiteSummary) -> bool:
    """Whether the site sent the per-class part (every class big enough)."""
    return (
        not s.insufficient
        and len(s.class_n) == len(s.class_pred) == len(s.class_correct) == K
        and sum(s.class_n) > 0
    )


def has_aucs(s: SiteSummary) -> bool:
    """Whether the per-class part holds the OvR AUCs and their covariance."""
    return len(s.class_auc) == K and len(s.class_auc_cov) == K * K


def _class_total(s: SiteSummary) -> int:
    return int(sum(s.class_n))


def _class_auc(s: SiteSummary, k: int) -> AUCResult | None:
    """Class k's OvR AUC as a binary AUCResult; None where it or its variance is undefined."""
    if not has_aucs(s):
        return None
    auc, var = float(s.class_auc[k]), float(s.class_auc_cov[k * K + k])
    if not (math.isfinite(auc) and 0.0 <= auc <= 1.0 and math.isfinite(var) and var >= 0.0):
        return None
    n = _class_total(s)
    return AUCResult(auc, var, int(s.class_n[k]), n - int(s.class_n[k]))


def ovr_result(s: SiteSummary) -> OvRAUCResult:
    """The site's OvR AUCs and their covariance as ``common.stats`` holds them."""
    n = _class_total(s)
    cov = np.asarray(s.class_auc_cov, dtype=float).reshape(K, K)
    aucs = tuple(float(a) if math.isfinite(a) else math.nan for a in s.class_auc)
    return OvRAUCResult(
        aucs=aucs,
        covariance=tuple(tuple(float(v) for v in row) for row in cov),
        n_pos=tuple(int(m) for m in s.class_n),
        n_neg=tuple(n - int(m) for m in s.class_n),
    )


def _class_ece(s: SiteSummary, k: int) -> float | None:
    """ECE of class k's OvR probabilities from its calibration bins (class-major)."""
    if not s.class_cal_count or len(s.class_cal_count) % K:
        return None
    bins = len(s.class_cal_count) // K
    part = slice(k * bins, (k + 1) * bins)
    count = tuple(int(v) for v in s.class_cal_count[part])
    if sum(count) == 0:
        return None
    b = CalibrationBins(
        count=count,
        sum_p=tuple(float(v) for v in s.class_cal_sum_p[part]),
        sum_y=tuple(float(v) for v in s.class_cal_sum_y[part]),
        sum_sq_error=tuple(0.0 for _ in count),
    )
    return json_float(ece_from_bins(b))


def confusion_rows(s: SiteSummary) -> list[list[int | None]] | None:
    """The K x K confusion matrix (rows true, columns predicted), suppressed cells None;
    None when the site sent none."""
    if len(s.confusion) != K * K:
        return None
    return [[None if v < 0 else int(v) for v in s.confusion[r * K : (r + 1) * K]] for r in range(K)]


def _per_class(s: SiteSummary, cfg: ReportSettings, k: int) -> dict[str, Any]:
    n, m = _class_total(s), int(s.class_n[k])
    pred, correct = int(s.class_pred[k]), int(s.class_correct[k])
    auc = _class_auc(s, k)
    auc_json = None
    if auc is not None:
        auc_json = {**interval(auc.auc, *auc.ci(cfg.level)), "variance": auc.variance}
    return {
        "class_name": CLASSES[k],
        "auc": auc_json,
        "sensitivity": interval(*proportion(correct, m, cfg.level)),
        "specificity": interval(*proportion(n - m - pred + correct, n - m, cfg.level)),
        "ece": _class_ece(s, k),
    }


def site_macro(s: SiteSummary, cfg: ReportSettings) -> dict[str, Any] | None:
    if not has_aucs(s):
        return None
    ovr = ovr_result(s)
    if len(ovr.undefined) == K:
        return None
    m = macro_auc(ovr, cfg.level)
    return {**interval(m.macro, *m.macro_ci), "variance": json_float(m.macro_variance)}


def _site(e: Evaluation, cfg: ReportSettings) -> dict[str, Any]:
    s = e.summary
    out: dict[str, Any] = {
        "site": e.site,
        "model": e.model,
        "role": e.role,
        "n": s.n,
        "class_n": [int(m) for m in s.class_n],
        "insufficient": not has_classes(s),
        "per_class": [],
        "macro": None,
        "brier_multi": None,
        "confusion": None,
        "suppressed": False,
    }
    if out["insufficient"]:
        return out
    rows = confusion_rows(s)
    out.update(
        per_class=[_per_class(s, cfg, k) for k in range(K)],
        macro=site_macro(s, cfg),
        brier_multi=json_float(s.brier_multi),
        confusion=rows,
        suppressed=rows is not None and any(v is None for row in rows for v in row),
    )
    return out


# ---- pooled over one role, and the internal - external gap ---------------------------------


def _poolable(a: AUCResult | None) -> bool:
    return a is not None and 0.0 < a.auc < 1.0 and a.variance > 0.0


def pooled_role(evals: Sequence[Evaluation], cfg: ReportSettings) -> dict[str, Any] | None:
    """Per-class pooled OvR AUC and the summed confusion matrix over ``evals``; None when
    no evaluation of the role has the per-class part."""
    usable = [e for e in evals if has_classes(e.summary)]
    if not usable:
        return None
    aucs = np.full((len(usable), K), math.nan)
    variances = np.full((len(usable), K), math.nan)
    for i, e in enumerate(usable):
        for k in range(K):
            a = _class_auc(e.summary, k)
            if a is not None and _poolable(a):
                aucs[i, k], variances[i, k] = a.auc, a.variance
    fits = ovr_pooled(
        aucs, variances, method=cfg.pooling, hartung_knapp=cfg.hartung_knapp, level=cfg.level
    )
    per_class = [
        {
            "class_name": CLASSES[k],
            "sites": [e.site for i, e in enumerate(usable) if math.isfinite(aucs[i, k])],
            "auc": None if fit is None else pooled_json(fit),
        }
        for k, fit in enumerate(fits)
    ]
    return {
        "sites": [e.site for e in usable],
        "per_class": per_class,
        "confusion": _summed_confusion([e.summary for e in usable]),
    }


def _summed_confusion(summaries: Sequence[SiteSummary]) -> list[list[int | None]] | None:
    """Cell sums over the sites; None where any site suppressed the cell (or sent no matrix)."""
    matrices = [confusion_rows(s) for s in summaries]
    if not matrices or any(m is None for m in matrices):
        return None
    out: list[list[int | None]] = []
    for r in range(K):
        row: list[int | None] = []
        for c in range(K):
            cells = [m[r][c] for m in matrices if m is not None]
            known = [v for v in cells if v is not None]
            row.append(sum(known) if len(known) == len(cells) else None)
        out.append(row)
    return out


def _gaps(
    internal: dict[str, Any] | None, external: dict[str, Any] | None, cfg: ReportSettings
) -> list[dict[str, Any]]:
    """Per class: pooled internal minus pooled external AUC (null where either is missing)."""
    out = []
    for k in range(K):
        a: dict[str, Any] = (internal["per_class"][k]["auc"] if internal else None) or {}
        b: dict[str, Any] = (external["per_class"][k]["auc"] if external else None) or {}
        diff = None
        if None not in (a.get("estimate"), a.get("se"), b.get("estimate"), b.get("se")):
            diff = difference(a["estimate"], a["se"], b["estimate"], b["se"], cfg.level)
        out.append(
            {
                "class_name": CLASSES[k],
                "internal_auc": a.get("estimate"),
                "external_auc": b.get("estimate"),
                "difference": diff,
            }
        )
    return out
