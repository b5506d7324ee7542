"""One evaluation's statistics, no pooling: AUC (DeLong CI), the 2x2 accuracy measures
(Wilson and log intervals) at every threshold, calibration, Dice, where the model looks
(Grad-CAM saliency in the lesion and in the liver around it); and the JSON-safe number
helpers the report's modules share (NaN and infinities become null)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from scipy import stats as sps

from common.keys import classifies
from common.stats import (
    AUCResult,
    CalibrationBins,
    diagnostic_accuracy,
    ece_from_bins,
)
from common.summary import SiteSummary
from server.report.settings import ReportSettings


def json_float(x: float | None) -> float | None:
    """JSON-safe float: NaN and infinities become null."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def interval(est: float | None, lo: float | None, hi: float | None) -> dict[str, Any]:
    return {"estimate": json_float(est), "lo": json_float(lo), "hi": json_float(hi)}


def site_auc(s: SiteSummary) -> AUCResult | None:
    if s.insufficient or s.auc is None or s.auc_var is None:
        return None
    return AUCResult(s.auc, s.auc_var, s.n_pos, s.n_neg)


def auc_se(a: AUCResult) -> float:
    return math.sqrt(max(a.variance, 0.0))


def z_crit(level: float) -> float:
    return float(sps.norm.ppf(0.5 + level / 2))


def site_statistics(s: SiteSummary, cfg: ReportSettings) -> dict[str, Any]:
    """Everything the per-site table shows for one evaluation (no pooling)."""
    out: dict[str, Any] = {
        "n": s.n,
        "n_pos": s.n_pos,
        "n_neg": s.n_neg,
        # lesion-type: its benign vs malignant view's prevalence of malignancy
        "prevalence": json_float(s.n_pos / s.n) if s.n and classifies(cfg.task) else None,
        "insufficient": s.insufficient,
        # bad cases left out under data.on-bad-case = skip: the count, the first ids
        "skipped_cases": {"n": s.skipped, "ids": list(s.skipped_ids)},
    }
    if s.insufficient:
        return out
    auc = site_auc(s)
    if auc is not None:
        lo, hi = auc.ci(cfg.level)
        out["auc"] = {**interval(auc.auc, lo, hi), "variance": auc.variance}
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
                    name: interval(*getattr(acc, name))
                    for name in ("sensitivity", "specificity", "ppv", "npv", "lr_pos", "lr_neg")
                },
                "dor": interval(*acc.dor),
                "zero_cell_corrected": acc.corrected,
            }
        )
    out["thresholds"] = tables
    if s.cal_count:
        bins = calibration_bins(s)
        out["calibration"] = {
            "citl": _interval_se(s.cal_citl, s.cal_citl_se, cfg.level),
            "slope": _interval_se(s.cal_slope, s.cal_slope_se, cfg.level),
            "intercept": _interval_se(s.cal_intercept, s.cal_intercept_se, cfg.level),
            "ece": json_float(ece_from_bins(bins)),
            "brier": json_float(s.brier),
        }
        if s.recal_sum_p:  # the same statistics after the recalibration, on the same groups
            after = replace(bins, sum_p=tuple(s.recal_sum_p), sum_sq_error=tuple(s.recal_sum_sq))
            out["calibration"]["recalibrated"] = {
                "citl": _interval_se(s.recal_citl, s.recal_citl_se, cfg.level),
                "slope": _interval_se(s.recal_slope, s.recal_slope_se, cfg.level),
                "intercept": _interval_se(s.recal_intercept, s.recal_intercept_se, cfg.level),
                "ece": json_float(ece_from_bins(after)),
                "brier": json_float(s.recal_brier),
            }
    if s.dice_mean is not None:
        half = (
            float(sps.t.ppf(0.5 + cfg.level / 2, s.n - 1)) * (s.dice_sd or 0.0) / math.sqrt(s.n)
            if s.n > 1
            else math.nan
        )
        out["dice"] = {
            **interval(s.dice_mean, s.dice_mean - half, s.dice_mean + half),
            "sd": json_float(s.dice_sd),
            "median": json_float(s.dice_median),
            "q1": json_float(s.dice_q1),
            "q3": json_float(s.dice_q3),
        }
        out["hd95_mm"] = {"mean": json_float(s.hd95_mean), "n": s.hd95_n}
    if s.saliency_lesion is not None:
        out["saliency"] = saliency(s)
    return out


def saliency(s: SiteSummary) -> dict[str, Any]:
    """Where the model looks (eval.saliency): the mean share of its saliency inside the
    lesion, the chance level (the mean share of the image the lesion covers), and their
    ratio (null when the chance level is 0 or either share is unknown); and, where the site
    sent them, the same three for the liver outside the lesion (``liver``)."""
    in_lesion, chance = json_float(s.saliency_lesion), json_float(s.saliency_chance)
    out: dict[str, Any] = {
        "in_lesion": in_lesion,
        "chance": chance,
        "n": s.saliency_n,
        "ratio": _ratio(in_lesion, chance),
    }
    if s.saliency_liver is not None and s.saliency_liver_n:
        in_liver, liver_chance = json_float(s.saliency_liver), json_float(s.saliency_liver_chance)
        out["liver"] = {
            "in_liver": in_liver,
            "chance": liver_chance,
            "n": s.saliency_liver_n,
            "ratio": _ratio(in_liver, liver_chance),
        }
    return out


def _ratio(share: float | None, chance: float | None) -> float | None:
    return json_float(share / chance) if share is not None and chance else None


def _interval_se(est: float | None, se: float | None, level: float) -> dict[str, Any]:
    if est is None or se is None or not math.isfinite(se):
        return {**interval(est, None, None), "se": json_float(se)}
    z = z_crit(level)
    return {**interval(est, est - z * se, est + z * se), "se": json_float(se)}


def calibration_bins(s: SiteSummary) -> CalibrationBins:
    return CalibrationBins(
        count=tuple(s.cal_count),
        sum_p=tuple(s.cal_sum_p),
        sum_y=tuple(float(v) for v in s.cal_sum_y),
        sum_sq_error=tuple(s.cal_sum_sq) if s.cal_sum_sq else tuple(0.0 for _ in s.cal_count),
    )
