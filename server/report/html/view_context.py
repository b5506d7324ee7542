"""What every section of the page needs to know, read once from the report document.

The design and task, the confidence level, the operating threshold, the site rows and
flags, the order in which sites appear (which fixes each site's colour in the charts)
and the numbering of the flags (F1, F2, ... in the order of ``report["flags"]``), by the
site and model each is about.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.report.html.charts.svg import site_colours
from server.report.html.format import finite, fmt_g
from server.report.html.labels import FLAG_SHORT, SEGMENTATION
from server.report.html.view_read import get, mapping, records, text, unique

__all__ = ["Context", "FlagRef", "read_context"]


@dataclass(frozen=True)
class FlagRef:
    """A flag as a table row links to it: its number, message and kind in a few words."""

    number: int
    message: str
    short: str


@dataclass(frozen=True)
class Context:
    """Page-wide facts, each resolved from the document once."""

    report: Mapping[str, Any]
    design: str
    task: str
    level_pct: str  # "95%"
    operating_threshold: float | None
    # each model's threshold chosen on validation data (settings.threshold_choices)
    choices: tuple[Mapping[str, Any], ...]
    rows: tuple[Mapping[str, Any], ...]  # report["sites"]
    flags: tuple[Mapping[str, Any], ...]
    pooled: Mapping[str, Any]
    joined: tuple[Mapping[str, Any], ...]  # report["sites_joined"]
    site_order: tuple[str, ...]
    colours: Mapping[str, str]
    flag_refs: Mapping[tuple[str, str], tuple[FlagRef, ...]]

    @property
    def segmentation(self) -> bool:
        return self.task == SEGMENTATION

    @property
    def loso(self) -> bool:
        return self.design == "loso"

    @property
    def designated_external(self) -> int:
        """How many sites joined the run as designated external sites."""
        return sum(1 for site in self.joined if site.get("role") == "external")

    @property
    def threshold_text(self) -> str:
        """The operating threshold in running text."""
        op = self.operating_threshold
        chosen = [c for c in self.choices if c.get("rule") != "fixed"]  # fixed: not chosen
        if chosen:
            values = unique(fmt_g(float(c["threshold"])) for c in chosen)
            rule = "Youden's J" if chosen[0].get("rule") == "youden" else "sensitivity"
            where = f"chosen by {rule} on the training sites' validation split"
            if len(values) == 1:
                return f"threshold {values[0]} ({where})"
            return f"each model's operating threshold ({where})"
        return "the operating threshold" if op is None else f"threshold {fmt_g(op)}"

    def flags_of(self, site: object, model: object) -> tuple[FlagRef, ...]:
        """The flags raised for ``site`` scored by ``model``, in their numbered order."""
        return self.flag_refs.get((text(site), text(model)), ())

    def operating_table(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        """A row's 2x2 table at the operating threshold (its first one when none matches;
        with thresholds chosen per model, always its first: its own model's choice)."""
        tables = records(row.get("thresholds"))
        if self.choices:
            return tables[0] if tables else {}
        op = self.operating_threshold
        for table in tables:
            if op is not None and finite(table.get("threshold")) == op:
                return table
        return tables[0] if tables else {}


def read_context(report: Mapping[str, Any]) -> Context:
    """The page-wide facts of ``report``."""
    level = finite(get(report, "settings", "level")) or 0.95
    rows = tuple(records(report.get("sites")))
    flags = tuple(records(report.get("flags")))
    joined = tuple(records(report.get("sites_joined")))
    names = (
        *(s.get("name") for s in joined),
        *(r.get("site") for r in rows),
        *(c.get("site") for c in records(report.get("matrix"))),
        *(c.get("site") for c in records(get(report, "curves", "roc"))),
        *(c.get("site") for c in records(get(report, "curves", "reliability"))),
    )
    order = unique(str(n) for n in names if n is not None)
    refs: dict[tuple[str, str], list[FlagRef]] = {}
    for number, flag in enumerate(flags, start=1):
        kind = text(flag.get("kind"))
        key = (text(flag.get("site")), text(flag.get("model")))
        ref = FlagRef(number, text(flag.get("message")), FLAG_SHORT.get(kind, kind))
        refs.setdefault(key, []).append(ref)
    return Context(
        report=report,
        design=text(report.get("design")),
        task=text(report.get("task")),
        level_pct=f"{fmt_g(100 * level)}%",
        operating_threshold=finite(get(report, "settings", "operating_threshold")),
        choices=tuple(
            c for c in records(get(report, "settings", "threshold_choices")) if "threshold" in c
        ),
        rows=rows,
        flags=flags,
        pooled=mapping(report.get("pooled")),
        joined=joined,
        site_order=order,
        colours=site_colours(order),
        flag_refs={key: tuple(v) for key, v in refs.items()},
    )
