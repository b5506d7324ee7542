"""When a case was acquired and when its label became known: the manifest's dates, and the
time windows that monitoring a deployed model over time draws from them.

A site's manifest may have two optional columns (``common.manifest``): ``acquired``, the
acquisition date of the case's images, and ``label_date``, the date its label (pathology,
follow-up) became known. Both are ISO 8601 dates, ``YYYY-MM-DD``; a timestamp
``YYYY-MM-DDTHH:MM[:SS]`` (or with a space for ``T``, fractional seconds, ``Z`` or a UTC
offset) is reduced to the date as written. ``parse_date`` is the one reading of that format;
``common.manifest_row.parse_dates`` judges a row's dates with it and names every problem.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from datetime import date, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # common.manifest imports this module (through common.manifest_row)
    from common.manifest import Case

ACQUIRED = "acquired"  # manifest column: acquisition date of the case's images
LABEL_DATE = "label_date"  # manifest column: the date the case's label became known
DATE_COLUMNS = (ACQUIRED, LABEL_DATE)

# YYYY-MM-DD, optionally a time (HH:MM, :SS, fraction) and a zone (Z, +HH:MM); the values
# (month 13, 30 February, hour 25) are judged by datetime.fromisoformat
ISO_DATE = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
)
WRITE_DATE = "write YYYY-MM-DD (e.g. 2025-03-14), or a timestamp YYYY-MM-DDTHH:MM[:SS]"


def parse_date(text: str) -> date:
    """The date of an ISO 8601 date or timestamp cell (surrounding blanks ignored); raises
    ``ValueError`` whose message says what is wrong and how to write it."""
    cell = text.strip()
    if not ISO_DATE.fullmatch(cell):
        raise ValueError(f"{text!r} is not a date; {WRITE_DATE}")
    try:
        return datetime.fromisoformat(cell).date()
    except ValueError as e:  # the form is right, a value is not: month 13, hour 25...
        raise ValueError(f"{text!r} is not a date ({e}); {WRITE_DATE}") from e


def cases_in_window(cases: Iterable[Case], start: date, end: date) -> list[Case]:
    """The cases acquired from ``start`` (inclusive) to ``end`` (exclusive), in their order;
    a case without an acquisition date is in no window."""
    return [c for c in cases if c.acquired is not None and start <= c.acquired < end]


def acquired_before(cases: Iterable[Case], day: str) -> list[Case]:
    """The cases acquired before ``day`` (``data.acquired-before``, ``YYYY-MM-DD``; "" keeps
    every case); a case without an acquisition date stays (nothing says it is later)."""
    if not day:
        return list(cases)
    cut = parse_date(day)
    return [c for c in cases if c.acquired is None or c.acquired < cut]


def labelled_by(case: Case, as_of: date) -> bool:
    """Whether the case's label was known on ``as_of``: it has a label, and its label date
    (if recorded; a label without a date counts as known) is not after ``as_of``."""
    return case.label is not None and (case.label_date is None or case.label_date <= as_of)


def acquired_line(cases: Iterable[Case]) -> str | None:
    """``"acquired: first DATE, last DATE, N cases without a date"`` for a site summary, or
    None when no case has an acquisition date."""
    cases = list(cases)
    dates = sorted(c.acquired for c in cases if c.acquired is not None)
    if not dates:
        return None
    undated = len(cases) - len(dates)
    plural = "case" if undated == 1 else "cases"
    return f"acquired: first {dates[0]}, last {dates[-1]}, {undated} {plural} without a date"


# ---- monitoring windows ------------------------------------------------------------------------

MONTH = re.compile(r"^(\d{4})-(\d{2})$")
DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
WRITE_WINDOW = (
    "name a window YYYY-MM (a month), YYYY-MM-DD (a day) or FROM/TO of either (both ends "
    "included), and a series FIRST..LAST of months (e.g. 2024-07..2025-12)"
)


def _month(text: str) -> date:
    found = MONTH.match(text)
    if not found or not 1 <= int(found.group(2)) <= 12:
        raise ValueError(f"{text!r} is not a month; {WRITE_WINDOW}")
    return date(int(found.group(1)), int(found.group(2)), 1)


def _next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def _bounds(part: str) -> tuple[date, date]:
    if MONTH.match(part):
        first = _month(part)
        return first, _next_month(first)
    if DAY.match(part):
        day = parse_date(part)
        return day, date.fromordinal(day.toordinal() + 1)
    raise ValueError(f"window {part!r}: {WRITE_WINDOW}")


def window_bounds(window: str) -> tuple[date, date]:
    """The first day of ``window`` and the first day after it (``cases_in_window``'s
    half-open range); raises ``ValueError`` saying how to name one."""
    first, _, last = window.partition("/")
    start, end = _bounds(first)
    if last:
        _, end = _bounds(last)
    if end <= start:
        raise ValueError(f"window {window!r} ends before it starts; {WRITE_WINDOW}")
    return start, end


def expand_windows(spec: str) -> list[str]:
    """``monitor.windows`` as window names in time order: ``FIRST..LAST`` (months) gives every
    month from FIRST to LAST; otherwise a comma-separated list of windows, each checked."""
    text = spec.strip()
    if ".." in text:
        first, _, last = text.partition("..")
        month, stop = _month(first.strip()), _month(last.strip())
        if stop < month:
            raise ValueError(f"windows {spec!r}: {last.strip()} is before {first.strip()}")
        out = []
        while month <= stop:
            out.append(f"{month:%Y-%m}")
            month = _next_month(month)
        return out
    names = [w.strip() for w in text.split(",") if w.strip()]
    if not names:
        raise ValueError(f"no windows in {spec!r}; {WRITE_WINDOW}")
    for name in names:
        window_bounds(name)
    if len(set(names)) != len(names):
        raise ValueError(f"windows {spec!r} name a window twice")
    return check_disjoint(names)


def check_disjoint(windows: Iterable[str]) -> list[str]:
    """``windows`` in time order; ValueError naming two that overlap (a case would be in
    both, and their difference could show it)."""
    ordered = sorted(windows, key=window_bounds)
    for before, after in itertools.pairwise(ordered):
        if window_bounds(after)[0] < window_bounds(before)[1]:
            raise ValueError(f"windows {before} and {after} overlap: give windows that do not")
    return ordered
