"""SVG building blocks shared by the report's charts.

``figure_svg(ids, width, height, title, desc, cls, body) -> Markup``
    The accessible wrapper of every chart: ``<svg role="img">`` whose
    ``aria-labelledby`` names its ``<title>`` and ``<desc>``, their ids taken from ``ids``.
``Ids()``
    Hands out element ids unique within one page; make one per page and pass it to
    every chart function, so two charts never share an id.
``site_colours(names) -> dict[str, str]``
    Each site's line colour from ``SITE_PALETTE``, in the order given.

The rest are the pieces the charts draw with (markers, diamonds, text, lines, axis
ticks), each returning a string of SVG markup whose data text is already escaped.
Coordinates are written with two decimals at most, so the same report gives the same
bytes.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable

from markupsafe import Markup

from server.report.html.charts.numbers import fmt

__all__ = [
    "AXIS_COLOUR",
    "EXTERNAL_COLOUR",
    "FLAG_COLOUR",
    "GRID_COLOUR",
    "INTERNAL_COLOUR",
    "MUTED_COLOUR",
    "SITE_PALETTE",
    "SVG_NS",
    "TEXT_COLOUR",
    "Ids",
    "figure_svg",
    "site_colours",
]

SVG_NS = "http://www.w3.org/2000/svg"

INTERNAL_COLOUR = "#1d4e89"
EXTERNAL_COLOUR = "#c2410c"
FLAG_COLOUR = "#b91c1c"
GRID_COLOUR = "#e5e7eb"
AXIS_COLOUR = "#6b7280"
TEXT_COLOUR = "#1f2937"
MUTED_COLOUR = "#6b7280"
# Okabe-Ito (colour-blind safe) without its yellow, then darker extras; repeats after ten sites
SITE_PALETTE = (
    "#0072b2",
    "#d55e00",
    "#009e73",
    "#cc79a7",
    "#e69f00",
    "#56b4e9",
    "#332288",
    "#882255",
    "#117733",
    "#6b7280",
)
CHAR_WIDTH = 0.6  # average glyph width in em, to size SVG text boxes


class Ids:
    """Element ids unique within one page: ``prefix-1``, ``prefix-2``, ... (one counter)."""

    def __init__(self) -> None:
        self.count = 0

    def new(self, prefix: str) -> str:
        """A fresh id starting with ``prefix``."""
        self.count += 1
        return f"{prefix}-{self.count}"


def site_colours(names: Iterable[str]) -> dict[str, str]:
    """Site name -> colour, ``SITE_PALETTE`` in the order given (repeating after ten)."""
    return {n: SITE_PALETTE[i % len(SITE_PALETTE)] for i, n in enumerate(names)}


def escape(value: object) -> Markup:
    """``value`` as text safe in element content and in quoted attributes.

    A ``Markup`` value passes through as markupsafe's ``escape`` would; anything else is
    escaped with the entities the rest of the page writes (``&quot;``, ``&#x27;``)."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def figure_svg(
    ids: Ids, width: float, height: float, title: str, desc: str, cls: str, body: str
) -> Markup:
    """An accessible inline SVG: role img, ``<title>`` and ``<desc>`` referenced by aria.

    ``title`` and ``desc`` are plain text (escaped here); ``body`` is trusted SVG markup
    built by the chart modules from escaped pieces; ``cls`` is added to ``class="chart"``.
    """
    t, d = ids.new("svg-title"), ids.new("svg-desc")
    return Markup(
        f'<svg xmlns="{SVG_NS}" class="chart {cls}" role="img" '
        f'viewBox="0 0 {num(width)} {num(height)}" width="{num(width)}" height="{num(height)}" '
        f'aria-labelledby="{t} {d}" aria-label="{escape(title)}">'
        f'<title id="{t}">{escape(title)}</title><desc id="{d}">{escape(desc)}</desc>'
        f"{body}</svg>"
    )


# ---- numbers and text ----


def num(x: float) -> str:
    """An SVG coordinate (two decimals at most, no trailing zeros)."""
    text = f"{x:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def clip(text: str, chars: int) -> str:
    """``text`` cut to ``chars`` characters with an ellipsis."""
    return text if len(text) <= chars else text[: max(1, chars - 1)] + "\u2026"


def text_width(text: str, size: float) -> float:
    """The rough width of ``text`` at font size ``size`` (px), to keep labels apart."""
    return len(text) * size * CHAR_WIDTH


def nice_step(span: float) -> float:
    """A round tick step giving at most eight intervals over ``span``."""
    for step in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0):
        if span / step <= 8:
            return step
    return 10 ** math.ceil(math.log10(span / 8))


def ticks(lo: float, hi: float) -> list[float]:
    """The multiples of ``nice_step(hi - lo)`` within [lo, hi]."""
    step = nice_step(hi - lo)
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [round(i * step, 10) for i in range(first, last + 1)]


def tick_label(v: float, step: float) -> str:
    """A tick value with as many decimals as the tick step needs."""
    decimals = len(f"{step:.6f}".rstrip("0").partition(".")[2])
    return fmt(v, decimals)


# ---- marks ----


def role_colour(role: str) -> str:
    """External sites are drawn in orange, everything else in the internal blue."""
    return EXTERNAL_COLOUR if role == "external" else INTERNAL_COLOUR


def background(width: float, height: float) -> str:
    """The chart's white background."""
    return f'<rect x="0" y="0" width="{num(width)}" height="{num(height)}" fill="#fff"/>'


def frame(x: float, y: float, width: float, height: float) -> str:
    """The plot area's outline."""
    return (
        f'<rect x="{num(x)}" y="{num(y)}" width="{num(width)}" height="{num(height)}" '
        f'fill="none" stroke="{AXIS_COLOUR}"/>'
    )


def marker(role: str, x: float, y: float, size: float = 9.0) -> str:
    """Internal: filled square; external: open circle (shape, not only colour, differs)."""
    if role == "external":
        return (
            f'<circle cx="{num(x)}" cy="{num(y)}" r="{num(size / 2 + 0.5)}" fill="#fff" '
            f'stroke="{EXTERNAL_COLOUR}" stroke-width="2"/>'
        )
    h = size / 2
    return (
        f'<rect x="{num(x - h)}" y="{num(y - h)}" width="{num(size)}" height="{num(size)}" '
        f'fill="{INTERNAL_COLOUR}"/>'
    )


def diamond(role: str, x_lo: float, x: float, x_hi: float, y: float, h: float = 8.0) -> str:
    """A pooled estimate: tips at ``x_lo`` and ``x_hi``, centre ``x``, half-height ``h``."""
    colour = role_colour(role)
    fill = "#fff" if role == "external" else colour
    points = (
        f"{num(x_lo)},{num(y)} {num(x)},{num(y - h)} {num(x_hi)},{num(y)} {num(x)},{num(y + h)}"
    )
    return f'<polygon points="{points}" fill="{fill}" stroke="{colour}" stroke-width="2"/>'


def text(
    x: float,
    y: float,
    content: str,
    cls: str = "",
    anchor: str = "start",
    extra: str = "",
) -> str:
    """A ``<text>`` element; ``content`` is escaped, ``extra`` is trusted attribute markup."""
    c = f' class="{cls}"' if cls else ""
    a = f' text-anchor="{anchor}"' if anchor != "start" else ""
    return f'<text x="{num(x)}" y="{num(y)}"{c}{a}{extra}>{escape(content)}</text>'


def line(x1: float, y1: float, x2: float, y2: float, stroke: str, extra: str = "") -> str:
    """A ``<line>``; ``extra`` is trusted attribute markup (dashes, widths)."""
    ends = f'x1="{num(x1)}" y1="{num(y1)}" x2="{num(x2)}" y2="{num(y2)}"'
    return f'<line {ends} stroke="{stroke}"{extra}/>'


def legend_swatch(kind: str, x: float, y: float) -> str:
    """Legend glyphs shared by the figures (``internal``, ``external``, ``pi``, ...)."""
    if kind == "internal":
        return marker("internal", x + 6, y - 4)
    if kind == "external":
        return marker("external", x + 6, y - 4)
    if kind == "pooled-internal":
        return diamond("internal", x, x + 8, x + 16, y - 4, 6)
    if kind == "pooled-external":
        return diamond("external", x, x + 8, x + 16, y - 4, 6)
    if kind == "pi":
        return line(x, y - 4, x + 16, y - 4, INTERNAL_COLOUR, ' stroke-width="1.5"')
    return ""
