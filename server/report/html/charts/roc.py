"""ROC curves: one step curve per site on a shared false-positive-rate grid.

``roc_svg(ids, title, curves, fpr, *, colours, aucs) -> Markup``

- ``ids``: the page's ``svg.Ids``; the chart takes its ``<title>``/``<desc>`` ids from it.
- ``title``: the chart's title, e.g. "ROC curves" or "ROC curves, model global".
- ``curves``: report.json's ``curves.roc`` entries of one model, each a Mapping with
  ``site``, ``role`` ("internal" draws a solid line, "external" a dashed one),
  ``model`` and ``tpr`` (the sensitivity at each ``fpr`` point; null where missing,
  which breaks the line). Drawn and listed in the legend in this order.
- ``fpr``: report.json's ``curves.fpr``, the false-positive-rate grid (at least two
  points, ascending, on [0, 1]).
- ``colours``: site name -> line colour (``svg.site_colours``); a site missing from it
  gets ``SITE_PALETTE[0]``.
- ``aucs``: (site, model) -> AUC estimate, shown in the legend and tooltips as
  "AUC 0.812"; a missing or null one shows "AUC n/a".

The plot is 320 px square, FPR 0..1 left to right, sensitivity 0..1 bottom to top,
the dashed diagonal is chance. Each curve steps after each grid point: sensitivity
stays at TPR(fpr[i]) until fpr[i + 1] (``step_path``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from markupsafe import Markup

from server.report.html.charts.numbers import finite, fmt
from server.report.html.charts.svg import (
    GRID_COLOUR,
    SITE_PALETTE,
    Ids,
    background,
    clip,
    escape,
    figure_svg,
    frame,
    line,
    num,
    text,
)

__all__ = ["roc_svg", "step_path"]

X0, Y0, SIZE = 58.0, 16.0, 320.0  # the plot's top-left corner and side
LEGEND_X = X0 + SIZE + 24
ENTRY_H = 34.0  # one legend entry's height


def sx(v: float) -> float:
    """The x coordinate of a false-positive rate."""
    return X0 + v * SIZE


def sy(v: float) -> float:
    """The y coordinate of a sensitivity."""
    return Y0 + (1 - v) * SIZE


def roc_svg(
    ids: Ids,
    title: str,
    curves: Sequence[Mapping[str, Any]],
    fpr: Sequence[float],
    *,
    colours: Mapping[str, str],
    aucs: Mapping[tuple[str, str], float | None],
) -> Markup:
    """The ROC curves of ``curves`` (arguments: see the module docstring)."""
    width = LEGEND_X + 200
    height = max(Y0 + SIZE + 52, Y0 + len(curves) * ENTRY_H + 20)
    out = [background(width, height)]
    for t in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        out.append(line(sx(t), Y0, sx(t), Y0 + SIZE, GRID_COLOUR))
        out.append(line(X0, sy(t), X0 + SIZE, sy(t), GRID_COLOUR))
        out.append(text(sx(t), Y0 + SIZE + 16, f"{t:.1f}", "tick", "middle"))
        out.append(text(X0 - 6, sy(t) + 4, f"{t:.1f}", "tick", "end"))
    out.append(frame(X0, Y0, SIZE, SIZE))
    out.append(line(sx(0), sy(0), sx(1), sy(1), "#9ca3af", ' stroke-dasharray="4 4"'))
    fpr_label = "False-positive rate (1 \u2212 specificity)"
    out.append(text(X0 + SIZE / 2, Y0 + SIZE + 36, fpr_label, "axis", "middle"))
    turn = f' transform="rotate(-90 16 {num(Y0 + SIZE / 2)})"'
    out.append(text(16, Y0 + SIZE / 2, "Sensitivity", "axis", "middle", turn))
    desc = []
    for i, c in enumerate(curves):
        site = str(c.get("site", ""))
        role = str(c.get("role", ""))
        colour = colours.get(site, SITE_PALETTE[0])
        path = step_path(fpr, [finite(v) for v in c.get("tpr") or []], sx, sy)
        dash = ' stroke-dasharray="7 4"' if role == "external" else ""
        auc_text = f"AUC {fmt(aucs.get((site, str(c.get('model', '')))))}"
        out.append(
            f"<g><title>{escape(site)} ({escape(role)}), {escape(auc_text)}</title>"
            f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/></g>'
        )
        ly = Y0 + i * ENTRY_H + 10
        out.append(
            line(LEGEND_X, ly, LEGEND_X + 26, ly, colour, f' stroke-width="2.5"{dash}')
            + text(LEGEND_X + 34, ly + 4, clip(site, 22), "lbl")
            + text(LEGEND_X + 34, ly + 18, f"{role} \u00b7 {auc_text}", "muted small")
        )
        desc.append(f"{site} ({role}) {auc_text}")
    return figure_svg(ids, width, height, title, "; ".join(desc), "roc-svg", "".join(out))


def step_path(
    fpr: Sequence[float],
    tpr: Sequence[float | None],
    sx: Callable[[float], float],
    sy: Callable[[float], float],
) -> str:
    """Step-after path data: sensitivity stays at TPR(fpr[i]) until the next grid point.

    A missing TPR (None) ends the line; the next present one starts a new ``M``."""
    d: list[str] = []
    prev: float | None = None
    for i, (x, y) in enumerate(zip(fpr, tpr, strict=False)):
        if y is None:
            prev = None
            continue
        if prev is None:
            d.append(f"M{num(sx(x))},{num(sy(y))}")
        else:
            d.append(f"H{num(sx(x))}")
            if y != prev:
                d.append(f"V{num(sy(y))}")
        prev = y
        if i == len(fpr) - 1:
            break
    return "".join(d)
