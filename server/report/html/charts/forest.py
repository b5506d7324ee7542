"""Forest plot: one measure (AUC, sensitivity, specificity, Dice) per site, pooled below.

``forest_svg(ids, title, axis, items, pooled, chance, *, level_pct) -> Markup``

- ``ids``: the page's ``svg.Ids``; the chart takes its ``<title>``/``<desc>`` ids from it.
- ``title``: what is plotted, e.g. "AUC by site"; the chart's title is
  "Forest plot: {title}".
- ``axis``: the measure's name, e.g. "AUC": the axis label and the right column's
  heading "{axis} ({level_pct} CI)".
- ``items``: one ``ForestRow`` per site row, drawn top to bottom in this order.
- ``pooled``: ``ForestPooled`` rows drawn below a rule (none for Dice); the first
  internal one also draws a dashed vertical reference line at its estimate.
- ``chance``: the measure's chance level (0.5 for AUC) drawn as a dotted vertical
  line, or None for no line.
- ``level_pct``: the confidence level as text, e.g. "95%".

Each site row shows a marker at the estimate (internal: filled square, external:
open circle) with a whisker over its CI; a row without an estimate shows its note.
A pooled row shows a diamond whose tips are the CI and a thin line with end ticks
for the prediction interval. The x axis spans the values, rounded out to tenths,
within [0, 1], and at least 0.2 wide.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup

from server.report.html.charts.numbers import fmt, fmt_ci
from server.report.html.charts.svg import (
    AXIS_COLOUR,
    GRID_COLOUR,
    INTERNAL_COLOUR,
    Ids,
    background,
    clip,
    diamond,
    escape,
    figure_svg,
    line,
    marker,
    nice_step,
    num,
    role_colour,
    text,
    tick_label,
    ticks,
)

__all__ = ["ForestPooled", "ForestRow", "forest_svg"]

WIDTH, ROW_H, TOP, POOLED_H = 920.0, 24.0, 40.0, 34.0
X_LABEL, X_ROLE, X_N = 12.0, 230.0, 318.0
X0, X1, X_TEXT = 344.0, 724.0, 744.0  # the plot spans X0..X1; numbers start at X_TEXT


@dataclass(frozen=True)
class ForestRow:
    """One site row: its label ("site" or "site (model)"), role ("internal" or
    "external"), case count, estimate with CI (None when missing), the note shown
    instead of a missing estimate, and whether the row carries a flag (warning sign)."""

    label: str
    role: str
    n: int | None
    estimate: float | None
    lo: float | None
    hi: float | None
    note: str = ""
    flagged: bool = False

    def text(self) -> str:
        """Estimate and CI as "0.800 (0.700-0.900)" (en dash), or the note when there is none."""
        if self.estimate is None:
            return self.note
        if self.lo is None or self.hi is None:
            return fmt(self.estimate)
        return f"{fmt(self.estimate)} ({fmt_ci(self.lo, self.hi)})"


@dataclass(frozen=True)
class ForestPooled:
    """A pooled row: label, role, pooled estimate with its CI (the diamond) and its
    prediction interval (the thin line), each bound None when missing."""

    label: str
    role: str
    estimate: float
    lo: float | None
    hi: float | None
    pi_lo: float | None
    pi_hi: float | None

    def text(self) -> str:
        """Estimate and CI as "0.800 (0.700-0.900)" (en dash)."""
        return f"{fmt(self.estimate)} ({fmt_ci(self.lo, self.hi)})"


def axis_range(
    items: Sequence[ForestRow], pooled: Sequence[ForestPooled], chance: float | None
) -> tuple[float, float]:
    """The x axis: every value rounded out to tenths, clipped to [0, 1], at least 0.2 wide."""
    values: list[float] = []
    for it in items:
        values += [v for v in (it.estimate, it.lo, it.hi) if v is not None]
    for p in pooled:
        values += [v for v in (p.estimate, p.lo, p.hi, p.pi_lo, p.pi_hi) if v is not None]
    if chance is not None:
        values.append(chance)
    lo = math.floor(min(values, default=0.0) * 10 - 1e-9) / 10
    hi = math.ceil(max(values, default=1.0) * 10 + 1e-9) / 10
    lo, hi = max(0.0, lo), min(1.0, hi)
    if hi - lo < 0.2:
        lo, hi = (max(0.0, hi - 0.2), hi) if hi - 0.2 >= 0 else (0.0, 0.2)
    return lo, hi


def forest_svg(
    ids: Ids,
    title: str,
    axis: str,
    items: Sequence[ForestRow],
    pooled: Sequence[ForestPooled],
    chance: float | None,
    *,
    level_pct: str,
) -> Markup:
    """The forest plot of ``items`` and ``pooled`` (arguments: see the module docstring)."""
    lo, hi = axis_range(items, pooled, chance)

    def sx(v: float) -> float:
        return X0 + (v - lo) / (hi - lo) * (X1 - X0)

    y_sep = TOP + len(items) * ROW_H + 6
    y_pooled = y_sep + 8
    axis_bottom = y_pooled + len(pooled) * POOLED_H
    height = axis_bottom + 54
    out: list[str] = [
        background(WIDTH, height),
        text(X_LABEL, 22, "Site", "th"),
        text(X_ROLE, 22, "Role", "th"),
        text(X_N, 22, "n", "th", "end"),
        text((X0 + X1) / 2, 22, axis, "th", "middle"),
        text(X_TEXT, 22, f"{axis} ({level_pct} CI)", "th"),
        line(X_LABEL, 30, WIDTH - 10, 30, "#9ca3af"),
    ]
    for i in range(1, len(items), 2):  # zebra stripes first, so the grid stays visible
        out.append(
            f'<rect x="{num(X_LABEL - 6)}" y="{num(TOP + i * ROW_H)}" '
            f'width="{num(WIDTH - X_LABEL - 4)}" height="{num(ROW_H)}" fill="#f8fafc"/>'
        )
    for t in ticks(lo, hi):
        out.append(line(sx(t), TOP - 6, sx(t), axis_bottom, GRID_COLOUR))
    if chance is not None and lo <= chance <= hi:
        dots = ' stroke-dasharray="2 3"'
        out.append(line(sx(chance), TOP - 6, sx(chance), axis_bottom, AXIS_COLOUR, dots))
    ref = next((p for p in pooled if p.role == "internal"), None)
    if ref is not None:
        dashes = ' stroke-dasharray="5 4" stroke-opacity="0.7"'
        x = sx(ref.estimate)
        out.append(line(x, TOP - 6, x, axis_bottom, INTERNAL_COLOUR, dashes))
    out += [_site_row(it, TOP + i * ROW_H + ROW_H / 2, sx) for i, it in enumerate(items)]
    if pooled:
        out.append(line(X_LABEL, y_sep, WIDTH - 10, y_sep, "#9ca3af"))
    for j, p in enumerate(pooled):
        out.append(_pooled_row(p, y_pooled + j * POOLED_H + POOLED_H / 2 - 2, sx))
    out.append(_x_axis(lo, hi, axis_bottom + 4, axis, sx))
    desc = "; ".join(f"{it.label}: {it.text()}" for it in items)
    desc += "".join(f"; {p.label}: {p.text()}" for p in pooled)
    return figure_svg(ids, WIDTH, height, f"Forest plot: {title}", desc, "forest-svg", "".join(out))


def _site_row(it: ForestRow, y: float, sx: Callable[[float], float]) -> str:
    """A site's label, role, n, whisker, marker and numbers, with a tooltip, centred on ``y``."""
    label = clip(it.label, 28 if it.flagged else 30)
    warn = " \u26a0" if it.flagged else ""
    out = (
        f"<g><title>{escape(it.label)} ({escape(it.role)}): {escape(it.text())}</title>"
        + text(X_LABEL, y + 4, label + warn, "lbl" + (" flagged" if it.flagged else ""))
        + text(X_ROLE, y + 4, it.role, "muted")
        + text(X_N, y + 4, "" if it.n is None else str(it.n), "num", "end")
    )
    if it.estimate is None:  # the note in the plot and in the numbers column
        note = text(X0 + 6, y + 4, it.note, "muted ital")
        return out + note + text(X_TEXT, y + 4, it.note, "muted ital") + "</g>"
    colour = role_colour(it.role)
    if it.lo is not None and it.hi is not None:
        out += (
            line(sx(it.lo), y, sx(it.hi), y, colour, ' stroke-width="2"')
            + line(sx(it.lo), y - 4, sx(it.lo), y + 4, colour, ' stroke-width="1.5"')
            + line(sx(it.hi), y - 4, sx(it.hi), y + 4, colour, ' stroke-width="1.5"')
        )
    out += marker(it.role, sx(it.estimate), y)
    return out + text(X_TEXT, y + 4, it.text(), "num") + "</g>"


def _pooled_row(p: ForestPooled, y: float, sx: Callable[[float], float]) -> str:
    """A pooled row: label, prediction-interval line, CI diamond and numbers, centred on ``y``."""
    g = [
        f"<g><title>{escape(p.label)}: {escape(p.text())}; prediction interval "
        f"{escape(fmt_ci(p.pi_lo, p.pi_hi))}</title>",
        text(X_LABEL, y + 4, p.label, "lbl strong"),
    ]
    colour = role_colour(p.role)
    if p.pi_lo is not None and p.pi_hi is not None:
        g.append(
            line(sx(p.pi_lo), y, sx(p.pi_hi), y, colour, ' stroke-width="1.5"')
            + line(sx(p.pi_lo), y - 5, sx(p.pi_lo), y + 5, colour)
            + line(sx(p.pi_hi), y - 5, sx(p.pi_hi), y + 5, colour)
        )
    lo_x = sx(p.lo if p.lo is not None else p.estimate)
    hi_x = sx(p.hi if p.hi is not None else p.estimate)
    g.append(diamond(p.role, lo_x, sx(p.estimate), hi_x, y))
    g.append(text(X_TEXT, y, p.text(), "num strong"))
    has_pi = p.pi_lo is not None and p.pi_hi is not None
    pi_text = f"PI {fmt_ci(p.pi_lo, p.pi_hi)}" if has_pi else ""
    g.append(text(X_TEXT, y + 12, pi_text, "muted small"))
    return "".join(g) + "</g>"


def _x_axis(lo: float, hi: float, y: float, axis: str, sx: Callable[[float], float]) -> str:
    """The x axis at ``y``: baseline, tick marks, tick labels and the axis name."""
    step = nice_step(hi - lo)
    out = [line(X0, y, X1, y, AXIS_COLOUR)]
    for t in ticks(lo, hi):
        out.append(line(sx(t), y, sx(t), y + 5, AXIS_COLOUR))
        out.append(text(sx(t), y + 18, tick_label(t, step), "tick", "middle"))
    out.append(text((X0 + X1) / 2, y + 36, axis, "axis", "middle"))
    return "".join(out)
