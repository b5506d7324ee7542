"""The curve sections: ROC curves, reliability diagrams and drift vs degradation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from server.report.html.charts.drift import drift_svg
from server.report.html.charts.reliability import reliability_svg
from server.report.html.charts.roc import roc_svg
from server.report.html.charts.svg import Ids
from server.report.html.format import finite
from server.report.html.view_context import Context
from server.report.html.view_read import get, mapping, records, text, unique
from server.report.html.view_recalibration import RecalibrationGroup, read_recalibrated

__all__ = [
    "Calibration",
    "CalibrationGroup",
    "DriftSection",
    "RocFigure",
    "RocSection",
    "Spearman",
    "read_calibration",
    "read_drift",
    "read_roc",
]


@dataclass(frozen=True)
class RocFigure:
    title: str
    svg: Markup


@dataclass(frozen=True)
class RocSection:
    segmentation: bool
    figures: tuple[RocFigure, ...]  # one per model; none: no curve to draw


@dataclass(frozen=True)
class CalibrationGroup:
    model: str
    panels: tuple[Markup, ...]  # one reliability diagram per site


@dataclass(frozen=True)
class Calibration:
    segmentation: bool
    groups: tuple[CalibrationGroup, ...]  # one per model; none: no bins were sent
    # before and after recalibration, one per model; none: no probabilities recalibrated
    recalibrated: tuple[RecalibrationGroup, ...] = ()


@dataclass(frozen=True)
class Spearman:
    """The rank correlation of drift and AUC drop over the sites."""

    rho: float | None
    p: float | None
    n: str


@dataclass(frozen=True)
class DriftSection:
    segmentation: bool
    spearman: Spearman
    svg: Markup | None  # None: no site has both an AUC drop and a drift


def _auc_of(ctx: Context, site: object, model: object) -> float | None:
    """A site's AUC under a model: from the matrix, else from the per-site table."""
    for entry in (*records(ctx.report.get("matrix")), *ctx.rows):
        if entry.get("site") == site and entry.get("model") == model:
            return finite(get(entry, "auc", "estimate"))
    return None


def read_roc(ctx: Context, ids: Ids) -> RocSection:
    """The ROC figures, one per model, drawn with the page's ``ids``."""
    curves = records(get(ctx.report, "curves", "roc"))
    fpr = [float(v) for v in get(ctx.report, "curves", "fpr") or [] if finite(v) is not None]
    if not curves or len(fpr) < 2:
        return RocSection(ctx.segmentation, ())
    aucs = {
        (text(c.get("site")), text(c.get("model"))): _auc_of(ctx, c.get("site"), c.get("model"))
        for c in curves
    }
    models = unique(text(c.get("model")) for c in curves)
    figures = []
    for model in models:
        group = [c for c in curves if text(c.get("model")) == model]
        title = "ROC curves" if len(models) == 1 else f"ROC curves, model {model}"
        svg = roc_svg(ids, title, group, fpr, colours=ctx.colours, aucs=aucs)
        figures.append(RocFigure(title, svg))
    return RocSection(ctx.segmentation, tuple(figures))


def _panel(ctx: Context, ids: Ids, entry: Mapping[str, Any]) -> Markup:
    site, model = entry.get("site"), entry.get("model")
    row = next((r for r in ctx.rows if r.get("site") == site and r.get("model") == model), {})
    cal = mapping(row.get("calibration"))
    return reliability_svg(
        ids,
        entry,
        colours=ctx.colours,
        ece=finite(cal.get("ece")),
        slope=finite(get(cal, "slope", "estimate")),
    )


def read_calibration(ctx: Context, ids: Ids) -> Calibration:
    """The reliability diagrams by model, drawn with the page's ``ids``, and the sites'
    calibration before and after recalibration."""
    entries = records(get(ctx.report, "curves", "reliability"))
    groups = []
    for model in unique(text(e.get("model")) for e in entries):
        panels = [_panel(ctx, ids, e) for e in entries if text(e.get("model")) == model]
        groups.append(CalibrationGroup(model, tuple(panels)))
    return Calibration(ctx.segmentation, tuple(groups), read_recalibrated(ctx))


def read_drift(ctx: Context, ids: Ids) -> DriftSection:
    """The drift scatter (when a site has both measures) and the rank correlation."""
    block = mapping(ctx.report.get("drift_vs_degradation"))
    points = [
        p
        for p in records(block.get("points"))
        if finite(p.get("drift")) is not None and finite(p.get("auc_drop")) is not None
    ]
    sp = mapping(block.get("spearman"))
    rho = finite(sp.get("rho"))
    n = sp.get("n") if rho is not None else sp.get("n", len(points))
    svg = None
    if points:
        margin = finite(get(ctx.report, "settings", "margin"))
        svg = drift_svg(ids, points, margin=margin, flagged=frozenset(ctx.flag_refs))
    return DriftSection(ctx.segmentation, Spearman(rho, finite(sp.get("p")), text(n)), svg)
