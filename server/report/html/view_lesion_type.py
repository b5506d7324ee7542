"""The three-way lesion type section (``lesion_type``, ``server.report.lesion_type``): per
site each class's one-vs-rest AUC, sensitivity and specificity and the macro AUC, the
confusion matrices, and each class pooled internal vs external."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.report.html.format import finite
from server.report.html.view_context import Context
from server.report.html.view_read import Estimate, estimate, get, mapping, records, text

__all__ = [
    "ClassCells",
    "Confusion",
    "LesionTypeRow",
    "LesionTypeSection",
    "PooledClassRow",
    "read_lesion_type",
]


@dataclass(frozen=True)
class ClassCells:
    """One class at one site, one-vs-rest."""

    auc: Estimate
    sensitivity: Estimate
    specificity: Estimate


@dataclass(frozen=True)
class LesionTypeRow:
    """One site's three-way figures; ``classes`` is empty for an insufficient site."""

    site: str
    model: str
    role: str
    class_n: tuple[str, ...]
    insufficient: bool
    classes: tuple[ClassCells, ...]
    macro: Estimate
    brier: float | None


@dataclass(frozen=True)
class Confusion:
    """A confusion matrix as the page shows it: a cell is None where it was suppressed."""

    caption: str
    rows: tuple[tuple[int | None, ...], ...]

    @property
    def suppressed(self) -> bool:
        return any(v is None for row in self.rows for v in row)


@dataclass(frozen=True)
class PooledClassRow:
    """One class: pooled internal and external AUC, and their difference."""

    name: str
    internal: Estimate
    internal_k: int | None
    external: Estimate
    external_k: int | None
    gap: Estimate
    p: float | None


@dataclass(frozen=True)
class LesionTypeSection:
    classes: tuple[str, ...]
    level_pct: str
    rule_text: str
    binary_view: str
    rows: tuple[LesionTypeRow, ...]
    confusions: tuple[Confusion, ...]  # each site's that sent one
    pooled_confusions: tuple[Confusion, ...]  # internal, external, where pooled
    pooled: tuple[PooledClassRow, ...]


def _cells(block: Mapping[str, Any]) -> ClassCells:
    return ClassCells(
        estimate(block.get("auc")),
        estimate(block.get("sensitivity")),
        estimate(block.get("specificity")),
    )


def _row(r: Mapping[str, Any]) -> LesionTypeRow:
    insufficient = r.get("insufficient") is True
    return LesionTypeRow(
        site=text(r.get("site")),
        model=text(r.get("model")),
        role=text(r.get("role")),
        class_n=tuple(text(m, "n/a") for m in r.get("class_n") or []),
        insufficient=insufficient,
        classes=() if insufficient else tuple(_cells(c) for c in records(r.get("per_class"))),
        macro=estimate(r.get("macro")),
        brier=finite(r.get("brier_multi")),
    )


def _confusion(caption: str, rows: Any) -> Confusion | None:
    if not isinstance(rows, list) or not rows:
        return None
    cells = tuple(
        tuple(v if isinstance(v, int) and not isinstance(v, bool) else None for v in row)
        for row in rows
        if isinstance(row, list)
    )
    return Confusion(caption, cells)


def _k(block: Any) -> int | None:
    k = get(block, "k")
    return k if isinstance(k, int) else None


def _pooled_rows(block: Mapping[str, Any], classes: tuple[str, ...]) -> tuple[PooledClassRow, ...]:
    pooled = mapping(block.get("pooled"))
    internal = records(get(pooled, "internal", "per_class"))
    external = records(get(pooled, "external", "per_class"))
    gaps = records(block.get("gap"))
    rows = []
    for k, name in enumerate(classes):
        a = internal[k].get("auc") if k < len(internal) else None
        b = external[k].get("auc") if k < len(external) else None
        d = gaps[k].get("difference") if k < len(gaps) else None
        rows.append(
            PooledClassRow(
                name=name,
                internal=estimate(a),
                internal_k=_k(a),
                external=estimate(b),
                external_k=_k(b),
                gap=estimate(d),
                p=finite(get(d, "p")),
            )
        )
    return tuple(rows)


def read_lesion_type(ctx: Context) -> LesionTypeSection | None:
    """None for a report without the block (any task but lesion-type): no section."""
    block = ctx.report.get("lesion_type")
    if not isinstance(block, Mapping):
        return None
    classes = tuple(text(c) for c in block.get("classes") or [])
    site_rows = records(block.get("sites"))
    confusions = (
        _confusion(f"{text(r.get('site'))} ({text(r.get('role'))})", r.get("confusion"))
        for r in site_rows
    )
    pooled_confusions = []
    for role in ("internal", "external"):
        b = mapping(get(block, "pooled", role))
        sites = ", ".join(text(s) for s in b.get("sites") or [])
        pooled_confusions.append(
            _confusion(f"Pooled {role}: summed over {sites}", b.get("confusion"))
        )
    return LesionTypeSection(
        classes=classes,
        level_pct=ctx.level_pct,
        rule_text=text(block.get("rule_text")),
        binary_view=text(block.get("binary_view")),
        rows=tuple(_row(r) for r in site_rows),
        confusions=tuple(c for c in confusions if c is not None),
        pooled_confusions=tuple(c for c in pooled_confusions if c is not None),
        pooled=_pooled_rows(block, classes),
    )
