"""The top of the page: the masthead, the reading guide, the summary cards and the flags."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.report.html.format import finite
from server.report.html.labels import (
    DESIGN_NAMES,
    DESIGN_NOTES,
    FLAG_NAMES,
    HOLDOUT_WITHOUT_EXTERNAL_NOTE,
    TASK_NAMES,
)
from server.report.html.view_context import Context
from server.report.html.view_read import Estimate, estimate, get, mapping, text

__all__ = [
    "Difference",
    "FlagItem",
    "Guide",
    "Header",
    "Heterogeneity",
    "Lede",
    "PooledCard",
    "Summary",
    "read_flags",
    "read_guide",
    "read_header",
    "read_summary",
]


@dataclass(frozen=True)
class Header:
    """The masthead: what was run, when, with how many sites."""

    design: str
    task: str
    created: str  # ISO 8601, as in the document
    sites_joined: int
    designated_external: int
    level_pct: str


@dataclass(frozen=True)
class Guide:
    """What "How to read this report" needs beyond its fixed text."""

    design_note: str
    segmentation: bool
    threshold_text: str
    level_pct: str
    margin: float | None
    pooling: str
    hartung_knapp: bool
    hooks: str  # the domain-adaptation hooks in order, comma-separated; "" without any


@dataclass(frozen=True)
class PooledCard:
    """A pooled AUC card; without an estimate it says why."""

    auc: Estimate
    prediction: Estimate  # the prediction interval (lo, hi)
    k: int | None
    no_external_joined: bool  # an external card of a run no designated external site joined


@dataclass(frozen=True)
class Difference:
    """Pooled internal minus pooled external AUC, with its z test."""

    value: Estimate
    z: float | None
    p: float | None


@dataclass(frozen=True)
class Heterogeneity:
    """Between-site variation of the pooled internal AUC."""

    i2: float | None
    tau2: float | None
    q: float | None
    q_p: float | None


@dataclass(frozen=True)
class Lede:
    """The sentence under the cards: how far external AUC fell from internal."""

    magnitude: float
    lower: bool  # external lower than internal
    difference: Difference
    includes_zero: bool | None  # None when the interval could not be computed


@dataclass(frozen=True)
class Summary:
    """The summary cards (classification or segmentation) and the flagged sites."""

    segmentation: bool
    loso: bool
    level_pct: str
    internal: PooledCard
    external: PooledCard
    difference: Difference | None  # None when the document has no difference block
    heterogeneity: Heterogeneity | None  # None without a pooled internal AUC block
    lede: Lede | None
    usable_sites: int  # segmentation: rows with statistics
    total_rows: int
    dice_range: tuple[float, float] | None  # segmentation: lowest and highest site mean
    flagged: tuple[str, ...]  # flagged site names, sorted
    flag_total: int  # sites with a row or a flag


@dataclass(frozen=True)
class FlagItem:
    """One entry of the numbered flag list."""

    number: int
    name: str
    message: str
    about: str  # "site · model · role", the parts that are known


def read_header(ctx: Context) -> Header:
    return Header(
        design=DESIGN_NAMES.get(ctx.design, ctx.design),
        task=TASK_NAMES.get(ctx.task, ctx.task),
        created=text(ctx.report.get("created")),
        sites_joined=len(ctx.joined),
        designated_external=ctx.designated_external,
        level_pct=ctx.level_pct,
    )


def read_guide(ctx: Context) -> Guide:
    settings = mapping(ctx.report.get("settings"))
    if ctx.design == "holdout" and not ctx.designated_external:
        note = HOLDOUT_WITHOUT_EXTERNAL_NOTE
    else:
        note = DESIGN_NOTES.get(ctx.design, "")
    hooks = settings.get("hooks")
    return Guide(
        design_note=note,
        segmentation=ctx.segmentation,
        threshold_text=ctx.threshold_text,
        level_pct=ctx.level_pct,
        margin=finite(settings.get("margin")),
        pooling=text(settings.get("pooling", "REML")),
        hartung_knapp=bool(settings.get("hartung_knapp")),
        hooks=", ".join(str(h) for h in hooks) if isinstance(hooks, list | tuple) else "",
    )


def _pooled_card(ctx: Context, role: str) -> PooledCard:
    block = ctx.pooled.get(role)
    auc = get(block, "auc")
    k = get(block, "k")
    return PooledCard(
        auc=estimate(auc),
        prediction=estimate(get(auc, "prediction_interval")),
        k=k if isinstance(k, int) else None,
        no_external_joined=role == "external" and not ctx.designated_external,
    )


def _difference(block: Any) -> Difference | None:
    if not isinstance(block, Mapping):
        return None
    return Difference(estimate(block), finite(block.get("z")), finite(block.get("p")))


def _lede(ctx: Context, diff: Difference | None) -> Lede | None:
    if ctx.segmentation or diff is None or diff.value.estimate is None:
        return None
    d, lo, hi = diff.value.estimate, diff.value.lo, diff.value.hi
    includes_zero = lo <= 0 <= hi if lo is not None and hi is not None else None
    return Lede(abs(d), d > 0, diff, includes_zero)


def read_summary(ctx: Context) -> Summary:
    usable = [r for r in ctx.rows if not r.get("insufficient")]
    dice = [finite(get(r, "dice", "estimate")) for r in usable]
    values = [d for d in dice if d is not None]
    internal_auc = get(ctx.pooled, "internal", "auc")
    heterogeneity = None
    if isinstance(internal_auc, Mapping):
        heterogeneity = Heterogeneity(
            *(finite(internal_auc.get(k)) for k in ("i2", "tau2", "q", "q_p"))
        )
    diff = _difference(get(ctx.pooled, "difference", "auc"))
    flagged = tuple(sorted({text(f.get("site")) for f in ctx.flags}))
    return Summary(
        segmentation=ctx.segmentation,
        loso=ctx.loso,
        level_pct=ctx.level_pct,
        internal=_pooled_card(ctx, "internal"),
        external=_pooled_card(ctx, "external"),
        difference=diff,
        heterogeneity=heterogeneity,
        lede=_lede(ctx, diff),
        usable_sites=len(usable),
        total_rows=len(ctx.rows),
        dice_range=(min(values), max(values)) if values else None,
        flagged=flagged,
        flag_total=len({*(text(r.get("site")) for r in ctx.rows), *flagged}),
    )


def read_flags(ctx: Context) -> tuple[FlagItem, ...]:
    items = []
    for number, flag in enumerate(ctx.flags, start=1):
        kind = text(flag.get("kind"))
        about = (flag.get("site"), flag.get("model"), flag.get("role"))
        items.append(
            FlagItem(
                number=number,
                name=FLAG_NAMES.get(kind, kind),
                message=text(flag.get("message")),
                about=" \u00b7 ".join(str(v) for v in about if v),
            )
        )
    return tuple(items)
