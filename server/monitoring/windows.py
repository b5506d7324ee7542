"""One site-window of a deployed model's monitoring, as ``server.monitoring.analysis`` reads
it: the inputs a window's stored summary gives the charts (``read_window``; a value a site
sent malformed counts as missing, so the server survives any summary), and the rows of
``monitor.json`` made from them: a window's figures with their intervals (``window_row``)
and a site's reference period (``reference_block``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.stats import AUCResult, wilson_ci
from server.monitoring.charts import weighted_auc
from server.monitoring.comparisons import number
from server.monitoring.store import WindowState
from server.report.site_statistics import interval

# ---- one window's inputs, checked (the server survives any summary) ---------------------------


def _probability(record: Mapping[str, Any], key: str) -> float | None:
    v = number(record, key)
    return v if v is not None and 0 <= v <= 1 else None


def _count(record: Mapping[str, Any], key: str) -> int | None:
    v = number(record, key)
    return int(v) if v is not None and v >= 0 and v == int(v) else None


def _embedding(s: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        mean = np.asarray(s["emb-mean"], dtype=float)
        cov = np.asarray(s["emb-cov"], dtype=float).reshape(mean.size, mean.size)
    except (KeyError, TypeError, ValueError):
        return None
    ok = mean.ndim == 1 and mean.size > 0 and np.isfinite(cov).all() and np.isfinite(mean).all()
    return (mean, cov) if ok else None


def _histogram(s: Mapping[str, Any]) -> np.ndarray | None:
    try:
        hist = np.asarray(s["hist"], dtype=float).reshape(int(s["hist-channels"]), -1)
    except (KeyError, TypeError, ValueError):
        return None
    ok = hist.size > 0 and np.isfinite(hist).all() and (hist >= 0).all()
    return hist if ok and (hist.sum(axis=1) > 0).all() else None


@dataclass(frozen=True)
class SiteWindow:
    """One site-window's inputs; a value a site sent malformed counts as missing."""

    state: WindowState
    n: int
    insufficient: bool
    est_auc: float | None
    auc: tuple[float, float] | None  # the actual AUC and its DeLong variance (> 0)
    emb: tuple[np.ndarray, np.ndarray] | None
    hist: np.ndarray | None

    @property
    def name(self) -> str:
        return self.state.window


def read_window(state: WindowState, min_cases: int) -> SiteWindow:
    s, a = state.summary, state.actual or {}
    n = _count(s, "n") or 0
    auc, var = _probability(a, "auc"), number(a, "auc-var")
    labelled = (
        None if auc is None or not var or var < 0 or a.get("actual-insufficient") else (auc, var)
    )
    insufficient = bool(s.get("insufficient")) or n < min_cases
    est = _probability(s, "est-auc")
    return SiteWindow(state, n, insufficient, est, labelled, _embedding(s), _histogram(s))


def _estimate(s: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    est = _probability(s, key)
    if est is None:
        return None
    return interval(est, _probability(s, f"{key}-lo"), _probability(s, f"{key}-hi"))


def _proportion(k: int | None, other: int | None, level: float) -> dict[str, Any] | None:
    """k of k + other with its Wilson interval; None without the cells or a denominator."""
    if k is None or other is None or k + other == 0:
        return None
    return interval(k / (k + other), *wilson_ci(k, k + other, level))


def _actual(w: SiteWindow, level: float) -> dict[str, Any] | None:
    a = w.state.actual
    if a is None or w.insufficient:
        return None
    n_lab, n_pos = _count(a, "n-labelled") or 0, _count(a, "n-labelled-pos") or 0
    auc = None
    if w.auc is not None:
        result = AUCResult(w.auc[0], w.auc[1], n_pos, max(n_lab - n_pos, 0))
        auc = interval(result.auc, *result.ci(level))
    tp, fp, fn, tn = (_count(a, key) for key in ("tp", "fp", "fn", "tn"))
    return {
        "n_labelled": n_lab,
        "n_labelled_pos": n_pos,
        "insufficient": w.auc is None,
        "auc": auc,
        "sensitivity": _proportion(tp, fn, level),
        "specificity": _proportion(tn, fp, level),
        "revisions": int(w.state.revisions),
    }


def window_row(w: SiteWindow, reference: bool, drift: Mapping[str, float], level: float) -> dict:
    s, numbers = w.state.summary, not w.insufficient
    acquisition = s.get("acquisition")
    return {
        "window": w.name,
        "n": w.n,
        "insufficient": w.insufficient,
        "reference": reference,
        "est_auc": _estimate(s, "est-auc") if numbers else None,
        "est_sens": _estimate(s, "est-sens") if numbers else None,
        "est_spec": _estimate(s, "est-spec") if numbers else None,
        "actual": _actual(w, level),
        "drift": {"embedding": drift.get("embedding"), "intensity": drift.get("intensity")},
        "acquisition": dict(acquisition) if numbers and isinstance(acquisition, dict) else {},
        "replaced": len(w.state.replaced),
    }


def reference_block(ref: list[SiteWindow]) -> dict[str, Any]:
    est = [w.est_auc for w in ref if w.est_auc is not None]
    aucs = [w.auc for w in ref if w.auc is not None]
    actual, var0 = weighted_auc(aucs) if aucs else (None, None)
    return {
        "windows": [w.name for w in ref],
        "n_cases": sum(w.n for w in ref),
        "status": "ok" if len(ref) >= 2 else "insufficient",
        "est_auc_mean": float(np.mean(est)) if est else None,
        "est_auc_sd": float(np.std(est, ddof=1)) if len(est) > 1 else None,
        "actual_auc": actual,
        "actual_auc_se": math.sqrt(var0) if var0 is not None else None,
        "actual_windows": [w.name for w in ref if w.auc is not None],
    }
