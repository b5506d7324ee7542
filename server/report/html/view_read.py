"""How the view model reads the report document: every missing value resolved once.

The ``view*`` modules are the only code that reads the ``report.json`` dict, and they
read it through these helpers: a nested look-up that is None as soon as a level is
missing, a mapping or list of records that is empty when absent or malformed, text that
is "" for a missing value, and ``Estimate``, a value with its interval, each part a
finite float or None.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from server.report.html.format import finite

__all__ = ["Estimate", "estimate", "get", "mapping", "records", "text", "unique"]


def get(obj: Any, *keys: str) -> Any:
    """Nested ``obj[k1][k2]...``; None as soon as a level is missing or not a mapping."""
    for key in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def mapping(obj: Any) -> Mapping[str, Any]:
    """``obj`` when it is a mapping, else an empty one."""
    return obj if isinstance(obj, Mapping) else {}


def records(obj: Any) -> list[Mapping[str, Any]]:
    """The mappings in the list ``obj`` (an absent list has none)."""
    if not isinstance(obj, list | tuple):
        return []
    return [item for item in obj if isinstance(item, Mapping)]


def text(value: object, default: str = "") -> str:
    """``value`` as text, ``default`` when it is missing (None)."""
    return default if value is None else str(value)


def unique(values: Iterable[str]) -> tuple[str, ...]:
    """The distinct values in their first order."""
    return tuple(dict.fromkeys(values))


@dataclass(frozen=True)
class Estimate:
    """An estimate and its interval; a part that was missing or not finite is None."""

    estimate: float | None = None
    lo: float | None = None
    hi: float | None = None

    @property
    def known(self) -> bool:
        """Whether there is an estimate to show (else the page shows "n/a")."""
        return self.estimate is not None

    @property
    def bounded(self) -> bool:
        """Whether both ends of the interval are known."""
        return self.lo is not None and self.hi is not None


def estimate(block: Any, key: str = "estimate") -> Estimate:
    """``block``'s ``key`` with ``lo`` and ``hi``; all None when ``block`` is not a mapping."""
    b = mapping(block)
    return Estimate(finite(b.get(key)), finite(b.get("lo")), finite(b.get("hi")))
