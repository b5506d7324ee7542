"""Numeric acquisition metadata: which columns hold numbers, in which unit, in which range.

A numeric cell (from the manifest, or from a DICOM header) must be a plain finite number
inside the physically plausible range of ``NUMERIC_METADATA``; ``120 kV`` (a unit in the
cell), ``1e308`` or a negative slice thickness is a named problem, never dropped or kept
silently. The ranges are wide on purpose: they catch typing and unit errors (kV typed as
V, seconds as minutes), not unusual protocols. docs/bad-cases.md shows the same table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.badcases import BadInput
from common.dicom import DELAY_SUFFIX  # ``<channel>_delay_s``: contrast timing of a channel


@dataclass(frozen=True)
class Quantity:
    """A numeric metadata column: its meaning, unit and plausible range."""

    what: str
    unit: str
    low: float
    high: float
    typical: float  # shown in the error as an example
    low_open: bool = False  # the range excludes ``low`` itself (thickness 0 is no slice)

    def range_text(self) -> str:
        low = f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
        return f"{low} and <= {self.high:g} {self.unit}"

    def contains(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high


NUMERIC_METADATA: dict[str, Quantity] = {
    "kvp": Quantity("CT tube voltage", "kV", 40.0, 200.0, 120.0),
    "slice_thickness_mm": Quantity("slice thickness", "mm", 0.0, 20.0, 2.5, low_open=True),
    "field_strength_t": Quantity("MRI field strength", "T", 0.0, 12.0, 1.5, low_open=True),
}
DELAY = Quantity("contrast delay after bolus start", "s", 0.0, 3600.0, 35.0)


def quantity(column: str) -> Quantity | None:
    """The quantity a metadata column holds, or None for a text column."""
    if column.endswith(DELAY_SUFFIX):
        return DELAY
    return NUMERIC_METADATA.get(column)


def value_problem(column: str, text: str) -> tuple[BadInput, str] | None:
    """What is wrong with a numeric column's cell, or None (an empty cell is not recorded)."""
    q = quantity(column)
    if q is None or not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return (
            BadInput.METADATA_UNIT,
            f"{text!r} is not a plain number: give the {q.what} in {q.unit} without a unit "
            f"or other text (e.g. {q.typical:g}), or leave the cell empty",
        )
    if not math.isfinite(value) or not q.contains(value):
        return (
            BadInput.METADATA_RANGE,
            f"{text} {q.unit} is outside the plausible {q.what} range ({q.range_text()}): "
            f"correct the value (is the unit {q.unit}?) or leave the cell empty",
        )
    return None


def number(column: str, text: str | None) -> float | None:
    """The value of a numeric cell, or None when it is empty or has a problem."""
    if not text or value_problem(column, text) is not None:
        return None
    return float(text)
