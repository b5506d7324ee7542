"""Numbers as the charts (and the page around them) write them.

A fixed number of decimals with a true minus sign, significant digits for measures
that span decades, "n/a" for a missing or non-finite value, never a number.
"""

from __future__ import annotations

import math

__all__ = ["MINUS", "finite", "fmt", "fmt_ci", "fmt_sig"]

MINUS = "\u2212"
SUPERSCRIPT = str.maketrans(
    "-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079"
)


def finite(x: object) -> float | None:
    """``x`` as a float when it is a finite number, else None (bool is not a number here)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def fmt(x: object, digits: int = 3, signed: bool = False) -> str:
    """A number with fixed decimals and a true minus sign; "n/a" when missing."""
    v = finite(x)
    if v is None:
        return "n/a"
    text = f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
    if float(text) == 0:  # no "-0.000" or "+0.000"
        text = f"{0.0:.{digits}f}"
    return text.replace("-", MINUS)


def fmt_sig(x: object, sig: int = 3) -> str:
    """``sig`` significant digits in fixed notation (drift measures span decades)."""
    v = finite(x)
    if v is None:
        return "n/a"
    if v == 0:
        return "0"
    if abs(v) < 1e-4:
        mantissa, exponent = f"{v:.{sig - 1}e}".split("e")
        power = str(int(exponent)).translate(SUPERSCRIPT)
        return f"{mantissa}\u00d710{power}".replace("-", MINUS)
    decimals = max(0, sig - 1 - math.floor(math.log10(abs(v))))
    return f"{v:.{decimals}f}".replace("-", MINUS)


def fmt_ci(lo: object, hi: object, digits: int = 3) -> str:
    """An interval "lo<en dash>hi"; "lo to hi" when a bound is negative (no dash-minus clash)."""
    a, b = finite(lo), finite(hi)
    if a is None and b is None:
        return "n/a"
    sep = " to " if (a is not None and a < 0) or (b is not None and b < 0) else "\u2013"
    return f"{fmt(a, digits)}{sep}{fmt(b, digits)}"
