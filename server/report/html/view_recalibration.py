"""Logistic recalibration: each model's fitted map (``settings.threshold_choices[]
.recalibration``) and each site's calibration before and after it
(``sites[].calibration.recalibrated``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.report.html.format import finite
from server.report.html.view_context import Context
from server.report.html.view_read import get, mapping, text, unique

__all__ = [
    "BeforeAfter",
    "RecalibratedRow",
    "RecalibrationFit",
    "RecalibrationGroup",
    "read_fit",
    "read_recalibrated",
]


@dataclass(frozen=True)
class RecalibrationFit:
    """One model's recalibration p' = expit(a + b logit p), or why there is none."""

    method: str
    fitted: bool
    intercept: float | None  # a
    slope: float | None  # b
    reason: str
    sites: str  # comma-separated
    many_sites: bool  # "sites" rather than "site" before the names
    n: str  # validation cases used
    n_groups: str  # calibration groups used


@dataclass(frozen=True)
class BeforeAfter:
    before: float | None
    after: float | None


@dataclass(frozen=True)
class RecalibratedRow:
    """A site's calibration on its test cases with the model's own probabilities and with
    the recalibrated ones."""

    site: str
    model: str
    ece: BeforeAfter
    brier: BeforeAfter
    citl: BeforeAfter  # estimates, logit scale
    slope: BeforeAfter


@dataclass(frozen=True)
class RecalibrationGroup:
    """One model's before-and-after table and the map that made it."""

    model: str
    fit: RecalibrationFit | None  # None: the report does not record a fitted map
    rows: tuple[RecalibratedRow, ...]


def read_fit(choice: Mapping[str, Any]) -> RecalibrationFit | None:
    """A threshold choice's recalibration; None when it has none."""
    block = choice.get("recalibration")
    if not isinstance(block, Mapping):
        return None
    sites = [str(s) for s in block.get("sites") or []]
    return RecalibrationFit(
        method=text(block.get("method"), "logistic"),
        fitted=block.get("fitted") is True,
        intercept=finite(block.get("intercept")),
        slope=finite(block.get("slope")),
        reason=text(block.get("reason")),
        sites=", ".join(sites),
        many_sites=len(sites) != 1,
        n=text(block.get("n"), "n/a"),
        n_groups=text(block.get("n_groups"), "n/a"),
    )


def _before_after(before: Mapping[str, Any], after: Mapping[str, Any], key: str) -> BeforeAfter:
    if key in ("citl", "slope"):
        return BeforeAfter(
            finite(get(before, key, "estimate")), finite(get(after, key, "estimate"))
        )
    return BeforeAfter(finite(before.get(key)), finite(after.get(key)))


def _row(row: Mapping[str, Any]) -> RecalibratedRow:
    cal = mapping(row.get("calibration"))
    after = mapping(cal.get("recalibrated"))
    ece, brier, citl, slope = (
        _before_after(cal, after, k) for k in ("ece", "brier", "citl", "slope")
    )
    return RecalibratedRow(text(row.get("site")), text(row.get("model")), ece, brier, citl, slope)


def read_recalibrated(ctx: Context) -> tuple[RecalibrationGroup, ...]:
    """One group per model with a recalibrated site row, in the order of the rows; its fit
    from that model's threshold choice when it was fitted."""
    rows = [
        r
        for r in ctx.rows
        if not r.get("insufficient") and isinstance(get(r, "calibration", "recalibrated"), Mapping)
    ]
    fits = {text(c.get("model")): read_fit(c) for c in ctx.choices}
    groups = []
    for model in unique(text(r.get("model")) for r in rows):
        fit = fits.get(model)
        groups.append(
            RecalibrationGroup(
                model=model,
                fit=fit if fit is not None and fit.fitted else None,
                rows=tuple(_row(r) for r in rows if text(r.get("model")) == model),
            )
        )
    return tuple(groups)
