"""Drift vs degradation: each site's embedding drift against its AUC drop.

``drift_svg(ids, points, *, margin, flagged) -> Markup``

- ``ids``: the page's ``svg.Ids``; the chart takes its ``<title>``/``<desc>`` ids from it.
- ``points``: report.json's ``drift_vs_degradation.points``, each a Mapping with
  ``site``, ``role`` ("internal": filled square, "external": open circle), ``model``,
  ``drift`` (relative Frechet distance, >= 0) and ``auc_drop`` (pooled internal AUC
  minus the site's; positive = worse). Points without a finite drift and AUC drop are
  left out; at least one must remain (``ValueError`` otherwise).
- ``margin``: the flagging margin (report.json's ``settings.margin``), drawn as a
  dashed red line "flag margin 0.050"; None draws none.
- ``flagged``: the (site, model) pairs that carry a flag; their labels get a warning
  sign.

The x axis runs from 0 to 1.15 times the largest drift (0..1 when every drift is 0);
the y axis spans the drops, 0 and the margin, padded by 12% of that span (at least
0.02) on each side. Labels are placed beside their marker where they overlap no other
label or marker (``place_label``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from typing import Any

from markupsafe import Markup

from server.report.html.charts.numbers import finite, fmt, fmt_sig
from server.report.html.charts.svg import (
    AXIS_COLOUR,
    FLAG_COLOUR,
    GRID_COLOUR,
    Ids,
    background,
    clip,
    escape,
    figure_svg,
    frame,
    legend_swatch,
    line,
    marker,
    nice_step,
    num,
    text,
    text_width,
    tick_label,
    ticks,
)

__all__ = ["axes", "drift_svg", "place_label"]

WIDTH, HEIGHT = 820.0, 420.0
X0, X1, Y0, Y1 = 76.0, 600.0, 20.0, 360.0  # the plot area; the legend is right of X1

Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def axes(
    drifts: Sequence[float], drops: Sequence[float], margin: float | None
) -> tuple[float, float, float]:
    """(x_hi, y_lo, y_hi): the axis ranges for these values (see the module docstring)."""
    x_hi = max(drifts) * 1.15 if max(drifts) > 0 else 1.0
    y_vals = [*drops, 0.0] + ([margin] if margin is not None else [])
    y_lo, y_hi = min(y_vals), max(y_vals)
    pad = max(0.02, (y_hi - y_lo) * 0.12)
    return x_hi, y_lo - pad, y_hi + pad


def drift_svg(
    ids: Ids,
    points: Sequence[Mapping[str, Any]],
    *,
    margin: float | None,
    flagged: Set[tuple[str, str]],
) -> Markup:
    """The drift vs AUC drop scatter of ``points`` (arguments: see the module docstring)."""
    points = [
        p
        for p in points
        if finite(p.get("drift")) is not None and finite(p.get("auc_drop")) is not None
    ]
    if not points:
        raise ValueError("drift_svg needs at least one point with a finite drift and auc_drop")
    xs = [float(p["drift"]) for p in points]
    ys = [float(p["auc_drop"]) for p in points]
    x_hi, y_lo, y_hi = axes(xs, ys, margin)

    def sx(v: float) -> float:
        return X0 + v / x_hi * (X1 - X0)

    def sy(v: float) -> float:
        return Y1 - (v - y_lo) / (y_hi - y_lo) * (Y1 - Y0)

    out = [background(WIDTH, HEIGHT)]
    x_step, y_step = nice_step(x_hi), nice_step(y_hi - y_lo)
    for t in ticks(0.0, x_hi):
        out.append(line(sx(t), Y0, sx(t), Y1, GRID_COLOUR))
        out.append(text(sx(t), Y1 + 16, tick_label(t, x_step), "tick", "middle"))
    for t in ticks(y_lo, y_hi):
        out.append(line(X0, sy(t), X1, sy(t), GRID_COLOUR))
        out.append(text(X0 - 6, sy(t) + 4, tick_label(t, y_step), "tick", "end"))
    out.append(frame(X0, Y0, X1 - X0, Y1 - Y0))
    out.append(line(X0, sy(0), X1, sy(0), AXIS_COLOUR, ' stroke-width="1.2"'))
    out.append(text(X1 - 4, sy(0) - 5, "no drop", "muted small", "end"))
    if margin is not None:
        out.append(line(X0, sy(margin), X1, sy(margin), FLAG_COLOUR, ' stroke-dasharray="6 4"'))
        label = f"flag margin {fmt(margin)}"
        out.append(text(X1 - 4, sy(margin) - 5, label, "flagtext small", "end"))
    drift_label = "Embedding drift (relative Fr\u00e9chet distance)"
    out.append(text((X0 + X1) / 2, Y1 + 38, drift_label, "axis", "middle"))
    turn = f' transform="rotate(-90 18 {num((Y0 + Y1) / 2)})"'
    out.append(text(18, (Y0 + Y1) / 2, "AUC drop vs pooled internal", "axis", "middle", turn))
    placed: list[Box] = [
        (sx(x) - 7, sy(y) - 7, sx(x) + 7, sy(y) + 7) for x, y in zip(xs, ys, strict=True)
    ]
    desc = []
    for p, x, y in zip(points, xs, ys, strict=True):
        site = str(p.get("site", ""))
        role = str(p.get("role", ""))
        label = clip(site, 24)
        px, py = sx(x), sy(y)
        lx, ly, anchor = place_label(label, px, py, placed, (X0, Y0, X1, Y1))
        warn = (str(p.get("site")), str(p.get("model"))) in flagged
        shown = text(
            lx,
            ly,
            label + (" \u26a0" if warn else ""),
            "lbl" + (" flagged" if warn else ""),
            anchor,
        )
        out.append(
            f"<g><title>{escape(site)} ({escape(role)}): drift {fmt_sig(x)}, AUC drop "
            f"{fmt(y, 3, True)}</title>{marker(role, px, py, 10)}{shown}</g>"
        )
        desc.append(f"{site} ({role}): drift {fmt_sig(x)}, AUC drop {fmt(y, 3, True)}")
    out.append(_legend(X1 + 24))
    return figure_svg(
        ids, WIDTH, HEIGHT, "Drift vs degradation", "; ".join(desc), "scatter-svg", "".join(out)
    )


def _legend(lx: float) -> str:
    """The legend column starting at x = ``lx``: marker shapes, margin line, warning sign."""
    return (
        text(lx, Y0 + 12, "Legend", "th")
        + legend_swatch("internal", lx, Y0 + 36)
        + text(lx + 22, Y0 + 36, "internal site", "lbl")
        + legend_swatch("external", lx, Y0 + 58)
        + text(lx + 22, Y0 + 58, "external site", "lbl")
        + line(lx, Y0 + 76, lx + 16, Y0 + 76, FLAG_COLOUR, ' stroke-dasharray="6 4"')
        + text(lx + 22, Y0 + 80, "flag margin", "lbl")
        + text(lx + 22, Y0 + 102, "\u26a0 flagged site", "lbl")
    )


def place_label(
    label: str,
    px: float,
    py: float,
    placed: list[Box],
    bounds: Box,
) -> tuple[float, float, str]:
    """(x, y, text-anchor) for ``label`` next to the marker at (px, py).

    Tries right, left, above, below, then the four diagonals, and takes the first box
    inside ``bounds`` that overlaps no box in ``placed`` (the point's own marker aside);
    when none is clear, right of the marker if it fits, else left. The chosen box is
    appended to ``placed``."""
    w = text_width(label + "  ", 12)
    candidates = [
        (px + 9, py + 4, "start", (px + 9, py - 9, px + 9 + w, py + 5)),
        (px - 9, py + 4, "end", (px - 9 - w, py - 9, px - 9, py + 5)),
        (px, py - 12, "middle", (px - w / 2, py - 24, px + w / 2, py - 10)),
        (px, py + 22, "middle", (px - w / 2, py + 10, px + w / 2, py + 24)),
        (px + 9, py + 18, "start", (px + 9, py + 5, px + 9 + w, py + 19)),
        (px + 9, py - 10, "start", (px + 9, py - 23, px + 9 + w, py - 9)),
        (px - 9, py + 18, "end", (px - 9 - w, py + 5, px - 9, py + 19)),
        (px - 9, py - 10, "end", (px - 9 - w, py - 23, px - 9, py - 9)),
    ]
    bx0, by0, bx1, by1 = bounds
    own = (px - 7, py - 7, px + 7, py + 7)

    def clear(box: Box) -> bool:
        if box[0] < bx0 or box[2] > bx1 or box[1] < by0 or box[3] > by1:
            return False
        return all(
            b == own or box[2] <= b[0] or box[0] >= b[2] or box[3] <= b[1] or box[1] >= b[3]
            for b in placed
        )

    for x, y, anchor, box in candidates:
        if clear(box):
            placed.append(box)
            return x, y, anchor
    x, y, anchor, box = candidates[0] if px + 9 + w <= bx1 else candidates[1]
    placed.append(box)
    return x, y, anchor
