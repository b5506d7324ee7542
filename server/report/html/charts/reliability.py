"""Reliability diagram: one site's calibration bins, predicted risk against observed rate.

``reliability_svg(ids, entry, *, colours, ece, slope) -> Markup``

- ``ids``: the page's ``svg.Ids``; the chart takes its ``<title>``/``<desc>`` ids from it.
- ``entry``: one of report.json's ``curves.reliability`` entries, a Mapping with
  ``site``, ``role`` ("internal": filled squares, "external": open circles), ``model``
  and three lists over the bins: ``mean_predicted``, ``observed_rate`` and ``count``.
  A bin with no cases or a missing value is not drawn.
- ``colours``: site name -> colour (``svg.site_colours``); a site missing from it gets
  ``SITE_PALETTE[0]``.
- ``ece``: the site's expected calibration error (its row's ``calibration.ece``),
  shown under the site name as "ECE 0.041"; None leaves it out.
- ``slope``: the site's calibration slope estimate (its row's
  ``calibration.slope.estimate``), shown as "slope 0.93"; None leaves it out.

The panel is 236 x 266 px with a 176 px square plot, both axes 0..1, the dashed
diagonal is perfect calibration. Bins are joined in order by a line; each point's
half-side (square) or radius (circle) is 3 + 7 * sqrt(count / largest count), and its
case count is written beside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from markupsafe import Markup

from server.report.html.charts.numbers import finite, fmt
from server.report.html.charts.svg import (
    GRID_COLOUR,
    SITE_PALETTE,
    Ids,
    background,
    clip,
    figure_svg,
    frame,
    line,
    num,
    text,
    text_width,
)

__all__ = ["bin_points", "reliability_svg"]

WIDTH, HEIGHT = 236.0, 266.0
X0, Y0, SIZE = 44.0, 46.0, 176.0  # the plot's top-left corner and side


def sx(v: float) -> float:
    """The x coordinate of a mean predicted risk."""
    return X0 + v * SIZE


def sy(v: float) -> float:
    """The y coordinate of an observed rate."""
    return Y0 + (1 - v) * SIZE


def bin_points(entry: Mapping[str, Any]) -> list[tuple[float, float, int]]:
    """(mean predicted, observed rate, count) of each bin with cases and both values."""
    pts = []
    for p, o, c in zip(
        entry.get("mean_predicted") or [],
        entry.get("observed_rate") or [],
        entry.get("count") or [],
        strict=False,
    ):
        pv, ov = finite(p), finite(o)
        if pv is None or ov is None or not c:
            continue
        pts.append((pv, ov, int(c)))
    return pts


def reliability_svg(
    ids: Ids,
    entry: Mapping[str, Any],
    *,
    colours: Mapping[str, str],
    ece: float | None,
    slope: float | None,
) -> Markup:
    """The reliability diagram of ``entry`` (arguments: see the module docstring)."""
    site = str(entry.get("site", ""))
    role = str(entry.get("role", ""))
    model = str(entry.get("model", ""))
    sub = f"{role}" + (f" \u00b7 ECE {fmt(ece)}" if ece is not None else "")
    sub += f" \u00b7 slope {fmt(slope, 2)}" if slope is not None else ""
    colour = colours.get(site, SITE_PALETTE[0])
    out = [
        background(WIDTH, HEIGHT),
        text(8, 18, clip(site, 30), "lbl strong"),
        text(8, 34, sub, "muted small"),
    ]
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        out.append(line(sx(t), Y0, sx(t), Y0 + SIZE, GRID_COLOUR))
        out.append(line(X0, sy(t), X0 + SIZE, sy(t), GRID_COLOUR))
    for t in (0.0, 0.5, 1.0):
        out.append(text(sx(t), Y0 + SIZE + 14, f"{t:.1f}", "tick", "middle"))
        out.append(text(X0 - 5, sy(t) + 4, f"{t:.1f}", "tick", "end"))
    out.append(frame(X0, Y0, SIZE, SIZE))
    out.append(line(sx(0), sy(0), sx(1), sy(1), "#9ca3af", ' stroke-dasharray="4 4"'))
    out.append(text(X0 + SIZE / 2, Y0 + SIZE + 32, "Mean predicted risk", "axis", "middle"))
    turn = f' transform="rotate(-90 14 {num(Y0 + SIZE / 2)})"'
    out.append(text(14, Y0 + SIZE / 2, "Observed rate", "axis", "middle", turn))
    pts = bin_points(entry)
    counts = [int(c) for c in entry.get("count") or [] if isinstance(c, int)]
    max_count = max(counts, default=0)
    if len(pts) > 1:
        d = " ".join(
            f"{'M' if i == 0 else 'L'}{num(sx(pv))},{num(sy(ov))}"
            for i, (pv, ov, _) in enumerate(pts)
        )
        out.append(f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
    for pv, ov, c in pts:
        r = 3 + 7 * math.sqrt(c / max_count) if max_count else 3
        out.append(_point(pv, ov, c, r, role, colour))
    if not pts:
        out.append(text(X0 + SIZE / 2, Y0 + SIZE / 2, "no populated bins", "muted", "middle"))
    desc = "; ".join(f"bin predicted {fmt(pv)} observed {fmt(ov)} n {c}" for pv, ov, c in pts)
    return figure_svg(
        ids,
        WIDTH,
        HEIGHT,
        f"Reliability diagram: {site} ({model}, {role})",
        desc or "no populated bins",
        "reliability-svg",
        "".join(out),
    )


def _point(pv: float, ov: float, count: int, r: float, role: str, colour: str) -> str:
    """One bin: its marker of half-size ``r`` and its case count, with a tooltip."""
    x, y = sx(pv), sy(ov)
    # same shapes as everywhere: internal square (filled), external circle (open)
    marker = (
        f'<circle cx="{num(x)}" cy="{num(y)}" r="{num(r)}" fill="#fff" '
        f'fill-opacity="0.6" stroke="{colour}" stroke-width="2"/>'
        if role == "external"
        else f'<rect x="{num(x - r)}" y="{num(y - r)}" width="{num(2 * r)}" '
        f'height="{num(2 * r)}" fill="{colour}" fill-opacity="0.4" stroke="{colour}" '
        'stroke-width="1.5"/>'
    )
    anchor_right = x + r + 3 + text_width(str(count), 10) < X0 + SIZE
    lx = x + r + 3 if anchor_right else x - r - 3
    return (
        f"<g><title>predicted {fmt(pv)}, observed {fmt(ov)}, {count} cases</title>{marker}"
        + text(lx, y + 4, str(count), "tick", "start" if anchor_right else "end")
        + "</g>"
    )
