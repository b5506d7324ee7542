"""The model x site matrix: every model evaluated at every site."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from server.report.html.format import finite
from server.report.html.view_context import Context
from server.report.html.view_read import Estimate, estimate, records, text, unique
from server.report.html.view_sites import adaptation_text

__all__ = ["Matrix", "MatrixCell", "MatrixEntry", "MatrixRow", "read_matrix"]


@dataclass(frozen=True)
class MatrixEntry:
    """One evaluation of a model at a site."""

    kind: Literal["insufficient", "dice", "auc"]
    dice: float | None
    auc: Estimate
    n: str
    about: str  # the role, ", all cases" and how the site adapted the model


@dataclass(frozen=True)
class MatrixCell:
    role: str  # "internal" (the site trained the model, shaded) or "external"
    entries: tuple[MatrixEntry, ...]


@dataclass(frozen=True)
class MatrixRow:
    model: str
    cells: tuple[MatrixCell | None, ...]  # None: the model was not evaluated at the site


@dataclass(frozen=True)
class Matrix:
    segmentation: bool
    level_pct: str
    sites: tuple[str, ...]  # in the page's site order
    rows: tuple[MatrixRow, ...]


def _entry(ctx: Context, cell: Mapping[str, Any]) -> MatrixEntry:
    split = ", all cases" if cell.get("split") == "all" else ""
    adapted = adaptation_text(cell)
    about = f"{text(cell.get('role'))}{split}" + (f", {adapted}" if adapted else "")
    kind: Literal["insufficient", "dice", "auc"] = "auc"
    if cell.get("insufficient"):
        kind = "insufficient"
    elif ctx.segmentation or "dice" in cell:
        kind = "dice"
    return MatrixEntry(
        kind=kind,
        dice=finite(cell.get("dice")),
        auc=estimate(cell.get("auc")),
        n=text(cell.get("n")),
        about=about,
    )


def read_matrix(ctx: Context) -> Matrix:
    cells = records(ctx.report.get("matrix"))
    models = unique(text(c.get("model")) for c in cells)
    sites = tuple(s for s in ctx.site_order if any(text(c.get("site")) == s for c in cells))
    lookup: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for c in cells:
        lookup.setdefault((text(c.get("model")), text(c.get("site"))), []).append(c)
    rows = []
    for model in models:
        row: list[MatrixCell | None] = []
        for site in sites:
            entries = lookup.get((model, site))
            if not entries:
                row.append(None)
                continue
            role = "internal" if entries[0].get("role") == "internal" else "external"
            row.append(MatrixCell(role, tuple(_entry(ctx, e) for e in entries)))
        rows.append(MatrixRow(model, tuple(row)))
    return Matrix(ctx.segmentation, ctx.level_pct, sites, tuple(rows))
