"""What a monitored site's windows say beside the charts (``server.monitoring.analysis``):
the acquisition changes between consecutive windows (a new vendor, scanner model or kernel;
a median slice thickness, kVp, field strength or contrast timing that moved), and the
label-free estimated AUC checked against the actual AUC wherever both exist."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from common.acquisition import CATEGORICAL_FIELDS, CONTRAST_FIELD, NUMERIC_FIELDS

MEDIAN_CHANGE = 0.05  # relative change of a median reported as an acquisition change


def number(record: Mapping[str, Any], key: str) -> float | None:
    """``record[key]`` as a finite number, or None (missing, not a number, not finite)."""
    v = record.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _names(value: Any) -> list[str]:
    return sorted(str(k) for k in value) if isinstance(value, Mapping) else []


def _ranges(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, range before, range after) of the numeric fields and each contrast phase."""
    out = [(f, a.get(f), b.get(f)) for f in NUMERIC_FIELDS]
    before, after = a.get(CONTRAST_FIELD), b.get(CONTRAST_FIELD)
    before = before if isinstance(before, Mapping) else {}
    after = after if isinstance(after, Mapping) else {}
    for phase in sorted({*before, *after}):
        out.append((f"{CONTRAST_FIELD}.{phase}", before.get(phase), after.get(phase)))
    return out


def _median_text(value: Any) -> tuple[float | None, str]:
    m = number(value, "median") if isinstance(value, Mapping) else None
    return m, f"{m:.4g}" if m is not None else "not recorded"


def _changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(field, before, after) of every field that changed from ``a`` to ``b``."""
    out = []
    for f in CATEGORICAL_FIELDS:
        before, after = (", ".join(_names(r.get(f))) or "not recorded" for r in (a, b))
        if before != after:
            out.append((f, before, after))
    for f, ra, rb in _ranges(a, b):
        (x, before), (y, after) = _median_text(ra), _median_text(rb)
        if x is None or y is None:
            moved = x is not y  # recorded in one window only
        else:
            moved = abs(x - y) > MEDIAN_CHANGE * max(abs(x), abs(y))
        if moved:
            out.append((f, before, after))
    return out


def acquisition_changes(windows: Sequence[tuple[str, Any]]) -> list[dict[str, str]]:
    """What changed between consecutive windows (in time order) that have an acquisition
    summary: the set of vendors, scanner models or kernels; a median of slice thickness,
    kVp, field strength or a contrast delay that moved by more than 5 % or was recorded in
    one window only."""
    have = [(w, a) for w, a in windows if isinstance(a, Mapping) and a]
    return [
        {"window": window, "previous": previous, "field": f, "before": x, "after": y}
        for (previous, a), (window, b) in itertools.pairwise(have)
        for f, x, y in _changes(a, b)
    ]


def estimate_check(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The label-free estimated AUC against the actual AUC over the window rows that have
    both: each error and whether the estimate's interval held the actual; the mean absolute
    error and the interval's coverage (null without rows)."""
    checked = []
    for r in rows:
        est, actual = r["est_auc"], r["actual"]
        if est is None or actual is None or actual["auc"] is None:
            continue
        value, lo, hi = actual["auc"]["estimate"], est["lo"], est["hi"]
        checked.append({
            "window": r["window"],
            "estimate": est["estimate"],
            "lo": lo,
            "hi": hi,
            "actual": value,
            "error": est["estimate"] - value,
            "covered": lo <= value <= hi if lo is not None and hi is not None else None,
            "n_labelled": actual["n_labelled"],
        })  # fmt: skip
    covered = [r["covered"] for r in checked if r["covered"] is not None]
    return {
        "rows": checked,
        "mae": float(np.mean([abs(r["error"]) for r in checked])) if checked else None,
        "coverage": float(np.mean(covered)) if covered else None,
    }
