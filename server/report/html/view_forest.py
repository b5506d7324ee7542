"""Forest plots: AUC, sensitivity and specificity by site with the pooled estimates
(classification), or mean Dice by site (segmentation, not pooled)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from server.report.html.charts.forest import ForestPooled, ForestRow, forest_svg
from server.report.html.charts.svg import Ids
from server.report.html.format import finite, fmt
from server.report.html.view_context import Context
from server.report.html.view_read import estimate, get, mapping, text

__all__ = ["MEASURES", "ForestFigure", "ForestSection", "forest_row", "read_forest"]

# (key in a row or 2x2 table, figure title, axis name, chance level)
MEASURES = (
    ("auc", "AUC by site", "AUC", 0.5),
    ("sensitivity", "Sensitivity by site", "Sensitivity", None),
    ("specificity", "Specificity by site", "Specificity", None),
)
ROLES = ("internal", "external")


@dataclass(frozen=True)
class ForestFigure:
    fig_id: str
    title: str
    note: str  # what the caption says after the title; "" for nothing
    svg: Markup


@dataclass(frozen=True)
class ForestSection:
    segmentation: bool  # Dice alone, without pooled rows
    level_pct: str
    figures: tuple[ForestFigure, ...]  # none: the report has no site rows


def forest_row(ctx: Context, row: Mapping[str, Any], block: Any) -> ForestRow:
    """A site row of a forest plot for the measure ``block`` of ``row``."""
    label = text(row.get("site"))
    # loso rows are each site under "without-SITE": the model is implied, not repeated
    if not ctx.loso and any(r.get("model") != row.get("model") for r in ctx.rows):
        label = f"{label} ({text(row.get('model'))})"
    n = row.get("n")
    count = n if isinstance(n, int) else None
    role = str(row.get("role"))
    flagged = bool(ctx.flags_of(row.get("site"), row.get("model")))
    value = estimate(block)
    if row.get("insufficient"):
        return ForestRow(label, role, count, None, None, None, "insufficient data", flagged)
    if not value.known:
        return ForestRow(label, role, count, None, None, None, "not estimable", flagged)
    return ForestRow(label, role, count, value.estimate, value.lo, value.hi, "", flagged)


def _excluded_notes(ctx: Context) -> list[str]:
    """Why sites were left out of the pooled AUCs (``pooled.*.excluded``)."""
    notes = []
    for role in ROLES:
        excluded = get(ctx.pooled, role, "excluded")
        if isinstance(excluded, Mapping) and excluded:
            why = "; ".join(f"{site}: {reason}" for site, reason in excluded.items())
            notes.append(f"Left out of the pooled {role} AUC: {why}.")
    return notes


def _pooled(ctx: Context, key: str, axis: str) -> tuple[list[ForestPooled], list[str]]:
    """The pooled rows of one measure, and a note for each role without one."""
    rows, notes = [], []
    for role in ROLES:
        block = ctx.pooled.get(role)
        value = mapping(get(block, key))
        est = finite(value.get("estimate"))
        if est is not None:
            pi = estimate(value.get("prediction_interval"))
            extra = f", I\u00b2 {fmt(value.get('i2'), 1)}%" if role == "internal" else ""
            label = f"Pooled {role} (k = {get(block, 'k')}{extra})"
            ci = estimate(value)
            rows.append(ForestPooled(label, role, est, ci.lo, ci.hi, pi.lo, pi.hi))
        elif block is not None and key != "auc" and ctx.loso:
            notes.append(
                f"No pooled {role} {axis.lower()}: fold models differ, so their "
                "2\u00d72 counts cannot be combined."
            )
        elif block is None:
            notes.append(f"No pooled {role} estimate (no usable site).")
    return rows, notes


def _figures(ctx: Context, ids: Ids) -> list[ForestFigure]:
    if ctx.segmentation:
        items = [forest_row(ctx, r, r.get("dice")) for r in ctx.rows]
        title = "Mean Dice by site"
        svg = forest_svg(ids, title, "Dice", items, [], None, level_pct=ctx.level_pct)
        return [ForestFigure("forest-dice", title, "Dice is not pooled across sites.", svg)]
    figures = []
    for key, title, axis, chance in MEASURES:
        items = [
            forest_row(ctx, r, r.get("auc") if key == "auc" else ctx.operating_table(r).get(key))
            for r in ctx.rows
        ]
        pooled, notes = _pooled(ctx, key, axis)
        if key != "auc":
            notes.insert(0, f"At {ctx.threshold_text}.")
        else:
            notes += _excluded_notes(ctx)
        svg = forest_svg(ids, title, axis, items, pooled, chance, level_pct=ctx.level_pct)
        figures.append(ForestFigure(f"forest-{key}", title, " ".join(notes), svg))
    return figures


def read_forest(ctx: Context, ids: Ids) -> ForestSection:
    """The forest plots, drawn with the page's ``ids``."""
    figures = _figures(ctx, ids) if ctx.rows else []
    return ForestSection(ctx.segmentation, ctx.level_pct, tuple(figures))
