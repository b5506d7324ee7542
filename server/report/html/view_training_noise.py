"""The training-noise section: a report combining several training seeds
(``training_noise``, ``server.report.training_noise``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.report.html.format import finite
from server.report.html.labels import FLAG_SHORT
from server.report.html.view_context import Context, FlagRef
from server.report.html.view_read import Estimate, estimate, get, mapping, records, text

NOISE_FLAG = "gap-within-training-noise"
RELIABLE_SEEDS = 5  # fewer: the between-seed variance is itself too noisy (common.stats.seeds)


@dataclass(frozen=True)
class NoiseRow:
    """One figure: its value in each seed, the combination and its two sources of noise."""

    label: str
    model: str
    role: str
    per_seed: tuple[float | None, ...]
    combined: Estimate  # mean over seeds with the interval including training noise
    within_se: float | None
    between_sd: float | None
    used: int  # seeds that had the figure
    flags: tuple[FlagRef, ...] = ()


@dataclass(frozen=True)
class TrainingNoiseSection:
    seeds: tuple[int, ...]
    level_pct: str
    method: str
    sites: tuple[NoiseRow, ...]
    pooled: tuple[NoiseRow, ...]
    gaps: tuple[NoiseRow, ...]

    @property
    def first(self) -> int:
        """The seed whose run the report's other sections show."""
        return self.seeds[0]

    @property
    def few_seeds(self) -> bool:
        return len(self.seeds) < RELIABLE_SEEDS


def _row(
    label: str, model: str, role: str, figure: Any, flags: tuple[FlagRef, ...] = ()
) -> NoiseRow:
    f = mapping(figure)
    c = f.get("combined")
    return NoiseRow(
        label=label,
        model=model,
        role=role,
        per_seed=tuple(finite(v) for v in f.get("per_seed") or []),
        combined=estimate(c),
        within_se=finite(get(c, "within_se")),
        between_sd=finite(get(c, "between_sd")),
        used=len(f.get("seeds_used") or []),
        flags=flags,
    )


def read_training_noise(ctx: Context) -> TrainingNoiseSection | None:
    """None for a single run (the page then has no training-noise section)."""
    block = ctx.report.get("training_noise")
    if not isinstance(block, Mapping):
        return None
    seeds = tuple(int(s) for s in block.get("seeds") or [])
    rows = records(block.get("sites"))
    sites = tuple(
        _row(text(r.get("site")), text(r.get("model")), text(r.get("role")), r.get("auc"))
        for r in rows
    ) + tuple(  # lesion-type: the three-way macro AUC (the rows above: benign vs malignant)
        _row(text(r.get("site")), f"{text(r.get('model'))}, macro", text(r.get("role")), macro)
        for r in rows
        if (macro := r.get("macro_auc"))
    )
    pooled_block = mapping(block.get("pooled"))
    pooled = tuple(
        _row(label, "", role, pooled_block.get(key))
        for key, label, role in (
            ("internal", "Pooled internal AUC", "internal"),
            ("external", "Pooled external AUC", "external"),
            ("difference", "Pooled internal \u2212 external", ""),
        )
        if pooled_block.get(key)
    )
    gaps = tuple(
        _row(
            text(g.get("site")),
            text(g.get("model")),
            "external",
            g.get("gap"),
            tuple(
                f
                for f in ctx.flags_of(g.get("site"), g.get("model"))
                if f.short == FLAG_SHORT[NOISE_FLAG]
            ),
        )
        for g in records(block.get("gaps"))
    )
    return TrainingNoiseSection(
        seeds=seeds,
        level_pct=ctx.level_pct,
        method=text(block.get("method")),
        sites=sites,
        pooled=pooled,
        gaps=gaps,
    )
