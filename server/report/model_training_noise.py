"""The ``training_noise`` block: one report combining several training seeds
(``server.report.training_noise``, ``hepafed simulate --seeds N``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from server.report.model_base import (
    MODEL,
    ROLE,
    SITE,
    AucDifference,
    NonNegative,
    Probability,
    ReportModel,
    Role,
)


class SeedInterval(ReportModel):
    """A figure combined over seeds: the mean and an interval including training noise."""

    estimate: float = Field(description="Mean over the seeds used.")
    lo: float = Field(
        description="Lower bound at level: mean - t(df) * se, clipped to the figure's range "
        "([0, 1] for an AUC, [-1, 1] for a difference)."
    )
    hi: float = Field(description="Upper bound at level, clipped the same way.")
    se: NonNegative = Field(
        description="sqrt(within_se^2 + between_sd^2 / seeds): the standard error of the mean "
        "over seeds, test sampling and training noise together."
    )
    df: Annotated[float, Field(gt=0)] | None = Field(
        description="Satterthwaite degrees of freedom of se; null (normal quantile) when the "
        "seeds agree exactly."
    )
    within_se: NonNegative = Field(
        description="Root mean test-sampling variance of one seed's figure (DeLong for an "
        "AUC; for pooled figures and gaps, their own standard error)."
    )
    between_sd: NonNegative = Field(description="Standard deviation of the figure across seeds.")


class SeedFigure(ReportModel):
    """One figure in each seed, and combined."""

    per_seed: list[float | None] = Field(
        description="The figure in each seed, in the order of training_noise.seeds; null "
        "where that seed has none (insufficient data, no report)."
    )
    seeds_used: list[int] = Field(description="The seeds the combination used.")
    combined: SeedInterval | None = Field(
        description="The combination; null with fewer than 2 seeds that have the figure."
    )


class SeedAucFigure(SeedFigure):
    per_seed: list[Probability | None] = Field(
        description="The AUC in each seed, in the order of training_noise.seeds; null where "
        "that seed has none."
    )


class SeedDifferenceFigure(SeedFigure):
    per_seed: list[AucDifference | None] = Field(
        description="The difference in each seed, in the order of training_noise.seeds; null "
        "where that seed has none."
    )


class SeedSite(ReportModel):
    """A site's AUC over the seeds."""

    site: str = Field(description=SITE)
    model: str = Field(description=MODEL)
    role: Role = Field(description=ROLE)
    auc: SeedAucFigure = Field(description="The site's AUC in each seed and combined.")
    macro_auc: SeedAucFigure | None = Field(
        default=None,
        description="Task lesion-type: the site's three-way macro (one-vs-rest) AUC in each "
        "seed and combined (auc above is its benign vs malignant view).",
    )


class SeedPooled(ReportModel):
    """The pooled AUCs and their difference over the seeds."""

    internal: SeedAucFigure = Field(description="Pooled internal AUC.")
    external: SeedAucFigure = Field(description="Pooled external AUC.")
    difference: SeedDifferenceFigure = Field(description="Pooled internal minus external AUC.")


class SeedGap(ReportModel):
    """A site's internal-external gap over the seeds."""

    site: str = Field(description=SITE)
    model: str = Field(description=MODEL)
    gap: SeedDifferenceFigure = Field(
        description="Pooled internal AUC minus the site's AUC, in each seed and combined."
    )


class TrainingNoise(ReportModel):
    """The same run with several training seeds on the same test cases: each figure per
    seed, its between-seed spread and an interval that includes training noise."""

    seeds: Annotated[list[int], Field(min_length=2)] = Field(
        description="The training seeds, in order; the report's other sections show the first."
    )
    runs: list[str] = Field(
        description="Each seed's run folder (relative to this report's folder when inside it)."
    )
    level: Annotated[float, Field(gt=0, lt=1)] = Field(description="Level of the intervals.")
    method: str = Field(description="How the seeds are combined.")
    sites: list[SeedSite] = Field(description="Per site and model: the AUC over the seeds.")
    pooled: SeedPooled = Field(description="The pooled AUCs and their difference.")
    gaps: list[SeedGap] = Field(description="Per site: the internal-external gap over the seeds.")
