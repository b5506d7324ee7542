"""Numbers, dates and settings as the report page writes them; each is a Jinja2 filter.

Pure functions of their arguments. A missing or non-finite value is "n/a", never a
number, and a minus is a true minus sign (U+2212). The fixed-decimal, significant-digit
and interval formats are the charts' own (``charts.numbers``), so a value reads the same
in a table as in a figure.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from server.report.html.charts.numbers import MINUS, finite, fmt, fmt_ci, fmt_sig

__all__ = [
    "FILTERS",
    "MINUS",
    "finite",
    "fmt",
    "fmt_ci",
    "fmt_date",
    "fmt_g",
    "fmt_p",
    "fmt_pct",
    "fmt_sig",
    "p_eq",
    "plain",
]


def fmt_p(p: object) -> str:
    """A p-value as "0.083", "<0.001" or ">0.999"."""
    v = finite(p)
    if v is None:
        return "n/a"
    if v < 0.001:
        return "<0.001"
    if v > 0.999:
        return ">0.999"
    return f"{v:.3f}"


def p_eq(p: object) -> str:
    """ "p = 0.083", "p < 0.001" or "p > 0.999" for running text."""
    text = fmt_p(p)
    return f"p {text[0]} {text[1:]}" if text[0] in "<>" else f"p = {text}"


def fmt_pct(x: object, digits: int = 1) -> str:
    """A proportion on [0, 1] as a percentage."""
    v = finite(x)
    return "n/a" if v is None else f"{100 * v:.{digits}f}%"


def fmt_g(x: float) -> str:
    """A setting's number as written in a config: "0.5", "2.5", "1e-05"."""
    return f"{x:g}"


def fmt_date(created: object) -> str:
    """ISO 8601 timestamp as "23 Nov 2026, 13:54 UTC" (the raw text if it does not parse)."""
    try:
        when = datetime.fromisoformat(str(created))
    except ValueError:
        return str(created)
    offset = when.utcoffset()
    zone = "UTC" if offset is not None and offset.total_seconds() == 0 else ""
    return f"{when.day} {when:%b %Y, %H:%M} {zone}".strip()


def plain(value: object) -> str:
    """A settings or config value as text: booleans as true/false, lists comma-separated."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ", ".join(plain(v) for v in value)
    return str(value)


FILTERS: dict[str, Callable[..., Any]] = {
    "fmt": fmt,
    "fmt_sig": fmt_sig,
    "fmt_p": fmt_p,
    "p_eq": p_eq,
    "fmt_pct": fmt_pct,
    "fmt_ci": fmt_ci,
    "fmt_date": fmt_date,
}
