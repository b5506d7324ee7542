"""The window axis that the timeline and CUSUM charts share: window labels thinned so
that none overlap, the horizontal grid, runs of consecutive windows, and the line and
dashes both draw with."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from server.report.html.charts.svg import (
    AXIS_COLOUR,
    GRID_COLOUR,
    clip,
    line,
    nice_step,
    num,
    text,
    text_width,
    tick_label,
    ticks,
)

__all__ = ["ACTUAL_COLOUR", "DASH", "label_every", "polyline", "runs", "window_labels", "y_grid"]

ACTUAL_COLOUR = "#111827"
DASH = ' stroke-dasharray="5 3" stroke-width="1.5"'  # a reference or a limit


def runs(flags: Sequence[bool]) -> list[tuple[int, int]]:
    """The (first, last) index of every run of consecutive True values."""
    out: list[tuple[int, int]] = []
    for i, flag in enumerate(flags):
        if flag and out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        elif flag:
            out.append((i, i))
    return out


def label_every(labels: Sequence[str], step: float, size: float = 11.0) -> int:
    """Show every n-th of ``labels`` (columns ``step`` px apart) so that none overlap."""
    widest = max((text_width(s, size) for s in labels), default=0.0) + 8
    return max(1, math.ceil(widest / step)) if step > 0 else 1


def window_labels(
    windows: Sequence[str],
    xs: Sequence[float],
    step: float,
    y: float,
    *,
    size: float = 11.0,
    width: float,
    cls: str = "tick",
) -> str:
    """A tick under every window and a label under every n-th, none past the edges."""
    labels = [clip(w, 16) for w in windows]
    every = label_every(labels, step, size)
    out = []
    for i, (label, x) in enumerate(zip(labels, xs, strict=True)):
        out.append(line(x, y - 14, x, y - 10, AXIS_COLOUR))
        if i % every == 0:
            half = text_width(label, size) / 2
            out.append(text(min(max(x, half + 2), width - half - 2), y + 2, label, cls, "middle"))
    return "".join(out)


def y_grid(lo: float, hi: float, sy: Callable[[float], float], x0: float, x1: float) -> str:
    """Horizontal grid lines from ``x0`` to ``x1`` at round values, labelled left of ``x0``."""
    step = nice_step(hi - lo)
    out = []
    for t in ticks(lo, hi):
        out.append(line(x0, sy(t), x1, sy(t), GRID_COLOUR))
        out.append(text(x0 - 6, sy(t) + 4, tick_label(t, step), "tick", "end"))
    return "".join(out)


def polyline(points: Sequence[tuple[float, float]], colour: str, width: float) -> str:
    """An unfilled ``<polyline>`` through ``points``."""
    pts = " ".join(f"{num(x)},{num(y)}" for x, y in points)
    return f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="{num(width)}"/>'
