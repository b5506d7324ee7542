"""Values over a run of time windows: an estimate with its interval, and actual values.

``timeline_svg(ids, windows, *, title, estimate, actual, reference, ...) -> Markup``
    One column per window, in the order given. ``estimate`` (one ``Point`` or None per
    window) is drawn as a line with its interval as a band and a circle per window;
    ``actual`` as diamonds with interval whiskers; ``reference`` as a dashed horizontal
    line. Columns in ``shaded`` are tinted (a reference period), columns in
    ``insufficient`` are tinted amber and labelled "insufficient", and the line breaks
    there. ``alarms`` get a red triangle and ``notices`` an amber diamond above the plot.

Window labels on the x axis are thinned so that they never overlap
(``charts.windows.window_labels``, shared with ``cusum``). Points without a finite value
are left out; the y axis spans what is drawn, padded, within ``y_bounds``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from markupsafe import Markup

from server.report.html.charts.numbers import finite, fmt
from server.report.html.charts.svg import (
    AXIS_COLOUR,
    FLAG_COLOUR,
    INTERNAL_COLOUR,
    Ids,
    background,
    escape,
    figure_svg,
    frame,
    line,
    num,
    text,
    text_width,
)
from server.report.html.charts.windows import (
    ACTUAL_COLOUR,
    DASH,
    polyline,
    runs,
    window_labels,
    y_grid,
)

__all__ = ["NOTICE_COLOUR", "Point", "timeline_svg"]

NOTICE_COLOUR = "#b45309"  # amber: a change in the images, not by itself a failure
SHADE_COLOUR = "#e8eef6"
INSUFFICIENT_COLOUR = "#fef3c7"
BAND_OPACITY = "0.18"
EVENT_DASH = ' stroke-dasharray="2 3" stroke-width="1.2"'
WIDTH, HEIGHT = 1120.0, 320.0
# the plot area's left, right and bottom (its top follows the legend); the reference
# mean's label sits right of X1
X0, X1, Y1 = 58.0, 1052.0, 282.0


class Point(NamedTuple):
    """A value and its interval; either bound may be unknown."""

    value: float
    lo: float | None = None
    hi: float | None = None


def _y_range(values: Sequence[float], bounds: tuple[float, float] | None) -> tuple[float, float]:
    if not values:
        return bounds if bounds is not None else (0.0, 1.0)
    lo, hi = min(values), max(values)
    pad = max(0.02, (hi - lo) * 0.1)
    lo, hi = lo - pad, hi + pad
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return (lo, hi) if hi > lo else (lo - 0.05, hi + 0.05)


def _legend(items: Sequence[tuple[str, str]], x0: float, x1: float, y: float) -> tuple[str, float]:
    """Legend items (swatch markup drawn at the origin, label) laid out in rows; returns
    the markup and the y of the row below the last."""
    out, x = [], x0
    for swatch, label in items:
        width = 22 + text_width(label, 12) + 10
        if x + width > x1 and x > x0:
            x, y = x0, y + 18
        out.append(f'<g transform="translate({num(x)} {num(y)})">{swatch}</g>')
        out.append(text(x + 22, y + 4, label, "lbl"))
        x += width
    return "".join(out), y + 18


def _diamond(x: float, y: float, r: float, fill: str, stroke: str = "") -> str:
    pts = f"{num(x)},{num(y - r)} {num(x + r)},{num(y)} {num(x)},{num(y + r)} {num(x - r)},{num(y)}"
    s = f' stroke="{stroke}" stroke-width="1.5"' if stroke else ""
    return f'<polygon points="{pts}" fill="{fill}"{s}/>'


def _triangle(x: float, y: float, r: float, fill: str) -> str:
    pts = f"{num(x - r)},{num(y - r)} {num(x + r)},{num(y - r)} {num(x)},{num(y + r)}"
    return f'<polygon points="{pts}" fill="{fill}"/>'


def _bound(bound: float | None, p: Point) -> float:
    """An interval's end, the value itself where that end is unknown."""
    return p.value if bound is None else bound


def _describe(p: Point) -> str:
    if p.lo is None or p.hi is None:
        return fmt(p.value)
    return f"{fmt(p.value)} [{fmt(p.lo)}, {fmt(p.hi)}]"


@dataclass(frozen=True)
class _Plot:
    """Where the timeline draws: one column per window, the y scale, the plot's top."""

    windows: Sequence[str]
    lo: float
    hi: float
    y0: float

    @property
    def step(self) -> float:
        return (X1 - X0) / len(self.windows)

    def x(self, i: int) -> float:
        return X0 + (i + 0.5) * self.step

    def y(self, v: float) -> float:
        return Y1 - (v - self.lo) / (self.hi - self.lo) * (Y1 - self.y0)


def _legend_items(names: tuple[str, str]) -> list[tuple[str, str]]:
    band = (
        f'<rect x="0" y="-5" width="18" height="10" fill="{INTERNAL_COLOUR}" '
        f'fill-opacity="{BAND_OPACITY}"/>'
        + line(0, 0, 18, 0, INTERNAL_COLOUR, ' stroke-width="2"')
        + f'<circle cx="9" cy="0" r="3.5" fill="{INTERNAL_COLOUR}"/>'
    )
    return [
        (band, f"{names[0]} with interval"),
        (
            line(9, -6, 9, 6, ACTUAL_COLOUR) + _diamond(9, 0, 4.5, ACTUAL_COLOUR),
            f"{names[1]} with CI",
        ),
        (line(0, 0, 18, 0, AXIS_COLOUR, DASH), "reference mean"),
        (f'<rect x="0" y="-6" width="18" height="12" fill="{SHADE_COLOUR}"/>', "reference windows"),
        (
            f'<rect x="0" y="-6" width="18" height="12" fill="{INSUFFICIENT_COLOUR}"/>',
            "insufficient",
        ),
        (_triangle(9, 0, 5, FLAG_COLOUR), "performance alarm"),
        (_diamond(9, 0, 5, NOTICE_COLOUR), "drift notice"),
    ]


def _columns(plot: _Plot, shaded: Collection[str], insufficient: Collection[str]) -> str:
    """The shaded (reference) runs of columns and the labelled insufficient columns."""
    out, mid = [], (plot.y0 + Y1) / 2
    for a, b in runs([w in shaded for w in plot.windows]):
        x = X0 + a * plot.step
        out.append(
            f'<rect x="{num(x)}" y="{num(plot.y0)}" width="{num((b - a + 1) * plot.step)}" '
            f'height="{num(Y1 - plot.y0)}" fill="{SHADE_COLOUR}"/>'
        )
        out.append(text(x + 4, plot.y0 + 13, "reference", "muted small"))
    for i, w in enumerate(plot.windows):
        if w not in insufficient:
            continue
        x = plot.x(i)
        turn = f' transform="rotate(-90 {num(x + 4)} {num(mid)})"'
        out.append(
            f'<g class="insufficient"><title>{escape(w)}: insufficient (too few cases)</title>'
            f'<rect x="{num(x - plot.step / 2 + 1)}" y="{num(plot.y0)}" '
            f'width="{num(plot.step - 2)}" height="{num(Y1 - plot.y0)}" '
            f'fill="{INSUFFICIENT_COLOUR}"/>'
            f"{text(x + 4, mid, 'insufficient', 'small ital', 'middle', turn)}</g>"
        )
    return "".join(out)


def _estimate(plot: _Plot, points: Sequence[Point | None], name: str) -> str:
    """The estimate: its interval as a band and its value as a line, both broken at
    windows without one, and a circle per window."""
    out = []
    bounded = [p is not None and p.lo is not None and p.hi is not None for p in points]
    for a, b in runs(bounded):
        span = [(plot.x(i), p) for i in range(a, b + 1) if (p := points[i]) is not None]
        if a == b:  # a lone window: its interval as a short bar
            x, p = span[0]
            top, bottom = plot.y(_bound(p.hi, p)), plot.y(_bound(p.lo, p))
            out.append(
                f'<rect class="band" x="{num(x - 5)}" y="{num(top)}" width="10" '
                f'height="{num(bottom - top)}" fill="{INTERNAL_COLOUR}" '
                f'fill-opacity="{BAND_OPACITY}"/>'
            )
            continue
        upper = [(x, plot.y(_bound(p.hi, p))) for x, p in span]
        lower = [(x, plot.y(_bound(p.lo, p))) for x, p in reversed(span)]
        pts = " ".join(f"{num(x)},{num(y)}" for x, y in upper + lower)
        out.append(
            f'<polygon class="band" points="{pts}" '
            f'fill="{INTERNAL_COLOUR}" fill-opacity="{BAND_OPACITY}"/>'
        )
    for a, b in runs([p is not None for p in points]):
        if b > a:
            xy = [(plot.x(i), plot.y(p.value)) for i in range(a, b + 1) if (p := points[i])]
            out.append(polyline(xy, INTERNAL_COLOUR, 2))
    for i, p in enumerate(points):
        if p is not None:
            out.append(
                f'<g class="est-pt"><title>{escape(plot.windows[i])}: {escape(name)} '
                f"{_describe(p)}</title>"
                f'<circle cx="{num(plot.x(i))}" cy="{num(plot.y(p.value))}" r="3.5" '
                f'fill="{INTERNAL_COLOUR}"/></g>'
            )
    return "".join(out)


def _actual(plot: _Plot, points: Sequence[Point | None], name: str) -> str:
    """The actual values: a diamond per window with its interval as a whisker."""
    out = []
    for i, p in enumerate(points):
        if p is None:
            continue
        x, whisker = plot.x(i), ""
        if p.lo is not None and p.hi is not None:
            lo, hi = plot.y(p.lo), plot.y(p.hi)
            whisker = (
                line(x, lo, x, hi, ACTUAL_COLOUR, ' stroke-width="1.3"')
                + line(x - 3, lo, x + 3, lo, ACTUAL_COLOUR)
                + line(x - 3, hi, x + 3, hi, ACTUAL_COLOUR)
            )
        out.append(
            f'<g class="act-pt"><title>{escape(plot.windows[i])}: {escape(name)} '
            f"{_describe(p)}</title>{whisker}"
            f"{_diamond(x, plot.y(p.value), 4.5, ACTUAL_COLOUR, '#fff')}</g>"
        )
    return "".join(out)


def _events(plot: _Plot, alarms: Collection[str], notices: Collection[str]) -> str:
    """Over each alarm window a red triangle, over each notice window an amber diamond,
    each with a dotted line down through the plot."""
    out, y = [], plot.y0 - 8
    for i, w in enumerate(plot.windows):
        both = w in alarms and w in notices
        for kind, colour, dx, shape in (
            ("alarm", FLAG_COLOUR, -6, _triangle),
            ("notice", NOTICE_COLOUR, 6, _diamond),
        ):
            if w not in (alarms if kind == "alarm" else notices):
                continue
            x = plot.x(i) + (dx if both else 0)
            name = "performance alarm" if kind == "alarm" else "drift notice"
            out.append(
                f'<g class="{kind}-mark"><title>{escape(w)}: {name}</title>'
                f"{line(x, plot.y0, x, Y1, colour, EVENT_DASH)}{shape(x, y, 5, colour)}</g>"
            )
    return "".join(out)


def _timeline_desc(
    windows: Sequence[str],
    estimate: Sequence[Point | None],
    actual: Sequence[Point | None],
    reference: float | None,
    marked: Sequence[tuple[str, Collection[str]]],
    names: tuple[str, str],
    level_pct: str,
) -> str:
    known = [(w, p) for w, p in zip(windows, estimate, strict=True) if p is not None]
    parts = [f"{len(known)} of {len(windows)} windows with an {names[0]} ({level_pct} interval)"]
    if known:
        (w0, p0), (w1, p1) = known[0], known[-1]
        parts[0] += f", from {fmt(p0.value)} ({w0}) to {fmt(p1.value)} ({w1})"
    if reference is not None:
        parts.append(f"reference mean {fmt(reference)}")
    parts.append(f"{sum(p is not None for p in actual)} windows with an {names[1]}")
    for label, which in marked:
        if which:
            parts.append(f"{label}: {', '.join(w for w in windows if w in which)}")
    return "; ".join(parts)


def timeline_svg(
    ids: Ids,
    windows: Sequence[str],
    *,
    title: str,
    estimate: Sequence[Point | None],
    actual: Sequence[Point | None],
    reference: float | None,
    shaded: Collection[str] = (),
    insufficient: Collection[str] = (),
    alarms: Collection[str] = (),
    notices: Collection[str] = (),
    names: tuple[str, str] = ("estimate", "actual"),
    level_pct: str = "95%",
    y_label: str = "AUC",
    y_bounds: tuple[float, float] | None = (0.0, 1.0),
) -> Markup:
    """The timeline of ``windows`` (arguments: see the module docstring); ``names``: what
    the estimate and the actual values are, for the legend and the tooltips."""
    n = len(windows)
    if n == 0 or len(estimate) != n or len(actual) != n:
        raise ValueError("timeline_svg needs one estimate and one actual entry per window")
    legend, below = _legend(_legend_items(names), 20.0, WIDTH - 8, 14.0)
    drawn = [v for p in [*estimate, *actual] if p is not None for v in p]
    lo, hi = _y_range(
        [v for v in [*drawn, reference] if v is not None and finite(v) is not None],
        y_bounds,
    )
    plot = _Plot(windows, lo, hi, below + 14)  # the event row sits between legend and plot
    out = [background(WIDTH, HEIGHT), legend, _columns(plot, shaded, insufficient)]
    out.append(y_grid(lo, hi, plot.y, X0, X1))
    out.append(frame(X0, plot.y0, X1 - X0, Y1 - plot.y0))
    if reference is not None:
        ry = plot.y(reference)
        out.append(line(X0, ry, X1, ry, AXIS_COLOUR, DASH))
        out.append(text(X1 + 6, ry - 3, "reference", "muted small"))
        out.append(text(X1 + 6, ry + 10, fmt(reference), "muted small num"))
    out.append(_estimate(plot, estimate, names[0]))
    out.append(_actual(plot, actual, names[1]))
    out.append(_events(plot, alarms, notices))
    out.append(
        window_labels(windows, [plot.x(i) for i in range(n)], plot.step, Y1 + 18, width=WIDTH)
    )
    mid = (plot.y0 + Y1) / 2
    out.append(text(16, mid, y_label, "axis", "middle", f' transform="rotate(-90 16 {num(mid)})"'))
    marked = [
        ("performance alarms", alarms),
        ("drift notices", notices),
        ("insufficient", insufficient),
    ]
    desc = _timeline_desc(windows, estimate, actual, reference, marked, names, level_pct)
    return figure_svg(ids, WIDTH, HEIGHT, title, desc, "timeline-svg", "".join(out))
