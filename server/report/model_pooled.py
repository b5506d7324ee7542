"""The report's comparisons across sites: the pooled blocks (``pooled``, ``folds``), the
internal vs external ``gaps`` and ``drift_vs_degradation``.

``server.report.pooling``, ``server.report.design_body`` and ``server.report.drift``
write them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from server.report.model_base import (
    MODEL,
    ROLE,
    SITE,
    AucDifference,
    Count,
    NonNegative,
    Omittable,
    PositiveCount,
    Probability,
    ReportModel,
    Role,
)
from server.report.model_stats import Difference, PooledEstimate


class PooledBlock(ReportModel):
    """Random-effects pooling over one group of sites (separately for internal and
    external evaluations)."""

    sites: list[str] = Field(
        min_length=1,
        description="Names of the sites pooled (those with a usable AUC, 0 < AUC < 1).",
    )
    k: PositiveCount = Field(description="Number of sites pooled.")
    excluded: dict[str, Annotated[str, Field(description="Why the site was left out.")]] = Field(
        description="Sites of the group left out of the pooling -> why (insufficient "
        "data, or an AUC of 0 or 1 / zero variance, whose logit is not usable)."
    )
    auc: PooledEstimate = Field(description="Pooled AUC.")
    sensitivity: Omittable[PooledEstimate] = Field(
        None,
        description="Pooled sensitivity at the operating threshold (absent for loso internal "
        "pooling).",
    )
    specificity: Omittable[PooledEstimate] = Field(
        None,
        description="Pooled specificity at the operating threshold (absent for loso internal "
        "pooling).",
    )


class PooledDifference(ReportModel):
    """The pooled difference."""

    auc: Difference = Field(description="Internal minus external AUC.")
    note: str = Field(
        description="What the interval assumes about the two sides' patients (independent in "
        "holdout; overlapping, hence conservative, in loso)."
    )


class Pooled(ReportModel):
    """Random-effects pooling of the primary evaluations, internal and external
    separately."""

    internal: PooledBlock | None = Field(
        description="Internal evaluations (loso: each site's AUC averaged over the folds it "
        "trained in); null when no site had a usable AUC."
    )
    external: PooledBlock | None = Field(
        description="External evaluations; null when there are none usable."
    )
    difference: PooledDifference | None = Field(
        description="Pooled internal minus pooled external AUC; null unless both exist."
    )


class Gap(ReportModel):
    """Internal vs external gap at one external site: the pooled internal AUC of the model
    the site did not train minus the site's AUC (independent patients, variances add)."""

    site: str = Field(description="External site.")
    model: str = Field(description="Model evaluated (global, or the loso fold without the site).")
    internal_auc: Probability | None = Field(
        description="Pooled internal AUC of that model on [0, 1]."
    )
    external_auc: Probability = Field(description="The site's AUC on [0, 1].")
    gap: Difference = Field(description="Pooled internal minus external AUC with CI and p.")


class Fold(ReportModel):
    """One leave-one-site-out fold: its model pooled over the sites that trained it."""

    model: str = Field(description="Fold model, without-SITE.")
    internal: PooledBlock | None = Field(
        description="Pooling over the fold's internal (training) sites' test splits; null when "
        "no site had a usable AUC."
    )


class DriftPoint(ReportModel):
    """One site in the drift vs degradation analysis."""

    site: str = Field(description=SITE)
    model: str = Field(description=MODEL)
    role: Role = Field(description=ROLE)
    drift: NonNegative = Field(
        description="Relative Fréchet distance of the embeddings (scale-free, >= 0)."
    )
    wasserstein1: Probability | None = Field(
        description="Mean Wasserstein-1 distance of the input intensities."
    )
    auc_drop: AucDifference | None = Field(
        description="Pooled internal AUC minus the site's AUC (AUC units; positive = worse at "
        "the site)."
    )


class Spearman(ReportModel):
    """Spearman rank correlation of drift and AUC drop across sites."""

    rho: Annotated[float, Field(ge=-1, le=1)] | None = Field(
        description="Spearman rho on [-1, 1]; null with fewer than 3 points or no variation."
    )
    p: Probability | None = Field(description="Two-sided p-value on [0, 1]; null when rho is.")
    n: Count = Field(description="Number of sites (points).")


class DriftVsDegradation(ReportModel):
    """Does the AUC drop grow with the embedding drift? One point per site."""

    measure: Literal["frechet-relative"] = Field(description="The drift measure on the x axis.")
    points: list[DriftPoint] = Field(description="Sites with both an AUC and an embedding drift.")
    spearman: Spearman = Field(
        description="Spearman rank correlation of drift and AUC drop across sites."
    )
