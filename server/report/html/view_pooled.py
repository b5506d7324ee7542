"""Internal vs external: the pooled difference, each external site's gap, each fold's."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.keys import loso_model
from server.report.html.format import finite
from server.report.html.view_context import Context, FlagRef
from server.report.html.view_read import Estimate, estimate, get, mapping, records, text

__all__ = [
    "DifferenceRow",
    "FoldInternal",
    "FoldRow",
    "GapRow",
    "GapTable",
    "InternalExternal",
    "read_internal_external",
]


@dataclass(frozen=True)
class DifferenceRow:
    """Pooled internal AUC, pooled external AUC and their difference with its z test."""

    internal: Estimate
    external: Estimate
    difference: Estimate
    z: float | None
    p: float | None


@dataclass(frozen=True)
class GapRow:
    """A site's AUC against the pooled internal AUC of the model it did not train."""

    site: str
    model: str
    internal_auc: float | None
    external_auc: float | None
    gap: Estimate
    p: float | None
    flags: tuple[FlagRef, ...]


@dataclass(frozen=True)
class GapTable:
    caption: str
    rows: tuple[GapRow, ...]  # none: the page says no external site has an AUC


@dataclass(frozen=True)
class FoldInternal:
    """A fold model's pooled internal AUC over the sites that trained it."""

    auc: Estimate
    k: str | None


@dataclass(frozen=True)
class FoldRow:
    """A leave-one-site-out fold: its internal AUC against the site it left out."""

    model: str
    left_out: str
    internal: FoldInternal | None  # None when the fold has no pooled internal AUC
    external: Estimate
    gap: Estimate
    p: float | None
    flags: tuple[FlagRef, ...]


@dataclass(frozen=True)
class InternalExternal:
    applicable: bool  # segmentation reports no AUC, so it has no comparison
    level_pct: str
    difference: DifferenceRow | None  # None: the document has no pooled difference
    folds: tuple[FoldRow, ...] | None  # leave-one-site-out only
    gaps: GapTable | None  # None: a loso report without designated external sites


def _is_fold_site(entry: Mapping[str, Any]) -> bool:
    """Whether ``entry`` is a site scored by the fold that left it out."""
    return entry.get("model") == loso_model(str(entry.get("site")))


def _gap_row(ctx: Context, gap: Mapping[str, Any]) -> GapRow:
    d = mapping(gap.get("gap"))
    return GapRow(
        site=text(gap.get("site")),
        model=text(gap.get("model")),
        internal_auc=finite(gap.get("internal_auc")),
        external_auc=finite(gap.get("external_auc")),
        gap=estimate(d),
        p=finite(d.get("p")),
        flags=ctx.flags_of(gap.get("site"), gap.get("model")),
    )


def _folds(ctx: Context) -> tuple[FoldRow, ...]:
    gaps = {text(g.get("model")): g for g in records(ctx.report.get("gaps")) if _is_fold_site(g)}
    rows = {text(r.get("model")): r for r in ctx.rows if _is_fold_site(r)}
    folds = []
    for fold in records(ctx.report.get("folds")):
        model = text(fold.get("model"))
        gap = gaps.get(model) or {}
        row = rows.get(model) or {}
        left_out = gap.get("site") or row.get("site") or model.removeprefix("without-")
        auc = get(fold, "internal", "auc")
        k = get(fold, "internal", "k")
        d = mapping(gap.get("gap"))
        folds.append(
            FoldRow(
                model=model,
                left_out=str(left_out),
                internal=(
                    FoldInternal(estimate(auc), None if k is None else str(k))
                    if isinstance(auc, Mapping)
                    else None
                ),
                external=estimate(row.get("auc")),
                gap=estimate(d),
                p=finite(d.get("p")),
                flags=ctx.flags_of(left_out, model),
            )
        )
    return tuple(folds)


def read_internal_external(ctx: Context) -> InternalExternal:
    diff = get(ctx.pooled, "difference", "auc")
    difference = None
    if isinstance(diff, Mapping):
        difference = DifferenceRow(
            internal=estimate(get(ctx.pooled, "internal", "auc")),
            external=estimate(get(ctx.pooled, "external", "auc")),
            difference=estimate(diff),
            z=finite(diff.get("z")),
            p=finite(diff.get("p")),
        )
    gaps = records(ctx.report.get("gaps"))
    if ctx.loso:
        designated = [g for g in gaps if not _is_fold_site(g)]  # scored by every fold
        caption = "Designated external sites, per fold"
        table = GapTable(caption, tuple(_gap_row(ctx, g) for g in designated))
        gap_table = table if designated else None
    else:
        gap_table = GapTable("Per external site", tuple(_gap_row(ctx, g) for g in gaps))
    return InternalExternal(
        applicable=not ctx.segmentation,
        level_pct=ctx.level_pct,
        difference=difference,
        folds=_folds(ctx) if ctx.loso else None,
        gaps=gap_table,
    )
