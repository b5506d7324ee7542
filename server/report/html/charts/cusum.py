"""A CUSUM chart: a sequential statistic per time window against its decision limit.

``cusum_svg(ids, windows, cusum, limit, *, title, alarms, colour) -> Markup``

- ``ids``: the page's ``svg.Ids``; the chart takes its ``<title>``/``<desc>`` ids from it.
- ``windows``: the windows charted, in time order; ``cusum``: one value per window (None
  where the statistic was not computed: the line breaks there).
- ``limit``: the decision limit, a dashed line in ``colour``; the windows in ``alarms``
  (those past the limit) are circled in ``colour``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from markupsafe import Markup

from server.report.html.charts.numbers import finite, fmt
from server.report.html.charts.svg import (
    FLAG_COLOUR,
    Ids,
    background,
    escape,
    figure_svg,
    frame,
    line,
    num,
    text,
)
from server.report.html.charts.windows import (
    ACTUAL_COLOUR,
    DASH,
    polyline,
    runs,
    window_labels,
    y_grid,
)

__all__ = ["cusum_svg"]

WIDTH, HEIGHT = 340.0, 178.0
X0, X1, Y0, Y1 = 44.0, 328.0, 12.0, 140.0


def cusum_svg(
    ids: Ids,
    windows: Sequence[str],
    cusum: Sequence[float | None],
    limit: float,
    *,
    title: str,
    alarms: Collection[str] = (),
    colour: str = FLAG_COLOUR,
) -> Markup:
    """The CUSUM chart of ``windows`` (arguments: see the module docstring)."""
    n = len(windows)
    if n == 0 or len(cusum) != n:
        raise ValueError("cusum_svg needs one CUSUM value per window")
    values = [finite(v) for v in cusum]
    hi = max([v for v in values if v is not None] + [limit, 1e-9]) * 1.12
    step = (X1 - X0) / n
    xs = [X0 + (i + 0.5) * step for i in range(n)]

    def sy(v: float) -> float:
        return Y1 - v / hi * (Y1 - Y0)

    out = [background(WIDTH, HEIGHT), y_grid(0.0, hi, sy, X0, X1)]
    out.append(frame(X0, Y0, X1 - X0, Y1 - Y0))
    out.append(line(X0, sy(limit), X1, sy(limit), colour, DASH))
    out.append(
        text(X0 + 4, sy(limit) - 4, f"limit {fmt(limit, 2)}", "small", extra=f' fill="{colour}"')
    )
    for a, b in runs([v is not None for v in values]):
        if b > a:
            xy = [(xs[i], sy(v)) for i in range(a, b + 1) if (v := values[i]) is not None]
            out.append(polyline(xy, ACTUAL_COLOUR, 1.5))
    for i, v in enumerate(values):
        if v is None:
            continue
        hit = windows[i] in alarms
        r = 4.5 if hit else 2.2
        fill = colour if hit else ACTUAL_COLOUR
        out.append(
            f'<g class="{"cusum-over" if hit else "cusum-pt"}"><title>{escape(windows[i])}: '
            f"CUSUM {fmt(v, 2)}{' (above the limit)' if hit else ''}</title>"
            f'<circle cx="{num(xs[i])}" cy="{num(sy(v))}" r="{num(r)}" fill="{fill}"/></g>'
        )
    out.append(window_labels(windows, xs, step, Y1 + 13, size=10.5, width=WIDTH, cls="tick small"))
    crossed = [w for w in windows if w in alarms]
    desc = f"CUSUM over {n} windows against the limit {fmt(limit, 2)}; " + (
        f"above the limit in {', '.join(crossed)}" if crossed else "never above the limit"
    )
    return figure_svg(ids, WIDTH, HEIGHT, title, desc, "cusum-svg", "".join(out))
