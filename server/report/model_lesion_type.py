"""The ``lesion_type`` block: the three-way view of task lesion-type (benign, primary
malignant, metastasis), written by ``server.report.lesion_type``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from server.report.model_base import (
    MODEL,
    ROLE,
    SITE,
    Count,
    NonNegative,
    Probability,
    ReportModel,
    Role,
)
from server.report.model_stats import Difference, PooledEstimate, ProbabilityInterval, SiteAuc

ClassName = Literal["benign", "primary malignant", "metastasis"]
CLASS_NAME = "The class: benign (label 0), primary malignant (1) or metastasis (2)."

Cell = Annotated[
    Count | None, Field(description="Cases; null where the site's small-cell rule suppressed it.")
]
ConfusionRows = Annotated[
    list[Annotated[list[Cell], Field(min_length=3, max_length=3)]],
    Field(
        min_length=3,
        max_length=3,
        description="3 x 3 counts, rows the true class, columns the assigned class, both in "
        "the order of lesion_type.classes.",
    ),
]


class MacroAuc(ReportModel):
    """The unweighted mean of the defined one-vs-rest AUCs with its Wald interval (variance
    from the DeLong covariance of the class AUCs, common.stats.multiclass.macro_auc)."""

    estimate: Probability | None = Field(description="Macro AUC on [0, 1].")
    lo: Probability | None = Field(description="Lower confidence bound on [0, 1].")
    hi: Probability | None = Field(description="Upper confidence bound on [0, 1].")
    variance: NonNegative | None = Field(
        description="Variance of the macro AUC; null when a class AUC has none."
    )


class ClassRow(ReportModel):
    """One class at one site, one-vs-rest."""

    class_name: ClassName = Field(description=CLASS_NAME)
    auc: SiteAuc | None = Field(
        description="One-vs-rest AUC of the class's probability with its DeLong interval; "
        "null where it or its variance is undefined."
    )
    sensitivity: ProbabilityInterval = Field(
        description="Share of the class's cases assigned to it (Wilson interval)."
    )
    specificity: ProbabilityInterval = Field(
        description="Share of the other classes' cases not assigned to it (Wilson interval)."
    )
    ece: Probability | None = Field(
        description="Expected calibration error of the class's one-vs-rest probability over "
        "its calibration bins, on [0, 1]."
    )


class LesionTypeSite(ReportModel):
    """One primary evaluation in the three-way view."""

    site: str = Field(description=SITE)
    model: str = Field(description=MODEL)
    role: Role = Field(description=ROLE)
    n: Count = Field(description="Number of cases evaluated.")
    class_n: Annotated[list[Count], Field(min_length=3, max_length=3)] = Field(
        description="Cases per true class, in the order of lesion_type.classes."
    )
    insufficient: bool = Field(
        description="Too few cases of some class: the site sent its class counts only, and "
        "per_class is empty, macro, brier_multi and confusion null."
    )
    per_class: list[ClassRow] = Field(
        description="One row per class in the order of lesion_type.classes; empty when "
        "insufficient."
    )
    macro: MacroAuc | None = Field(description="Macro one-vs-rest AUC; null when insufficient.")
    brier_multi: Annotated[float, Field(ge=0, le=2)] | None = Field(
        description="Multiclass Brier score: mean over cases of the squared distance between "
        "the probability vector and the one-hot truth, on [0, 2]."
    )
    confusion: ConfusionRows | None = Field(
        description="The site's confusion matrix under the argmax rule; null when insufficient."
    )
    suppressed: bool = Field(description="Whether any cell of confusion is suppressed (null).")


class PooledClass(ReportModel):
    """One class's one-vs-rest AUC pooled over the sites of a role."""

    class_name: ClassName = Field(description=CLASS_NAME)
    sites: list[str] = Field(
        description="The sites pooled: those whose class AUC is usable (0 < AUC < 1, variance > 0)."
    )
    auc: PooledEstimate | None = Field(
        description="Random-effects pooled AUC on the logit scale; null when no site is usable."
    )


class LesionTypePooled(ReportModel):
    """The three-way view pooled over the sites of one role."""

    sites: list[str] = Field(
        min_length=1, description="The sites of the role that sent the per-class part."
    )
    per_class: Annotated[list[PooledClass], Field(min_length=3, max_length=3)] = Field(
        description="One entry per class in the order of lesion_type.classes."
    )
    confusion: ConfusionRows | None = Field(
        description="The sites' confusion matrices summed cell by cell; a cell is null when "
        "any site suppressed it (its count is not known to the server)."
    )


class LesionTypeRoles(ReportModel):
    """The pooled three-way view, internal and external separately."""

    internal: LesionTypePooled | None = Field(
        description="Internal evaluations; null when none sent the per-class part."
    )
    external: LesionTypePooled | None = Field(
        description="External evaluations; null when none sent the per-class part."
    )


class LesionTypeGap(ReportModel):
    """One class: pooled internal minus pooled external AUC."""

    class_name: ClassName = Field(description=CLASS_NAME)
    internal_auc: Probability | None = Field(description="Pooled internal AUC of the class.")
    external_auc: Probability | None = Field(description="Pooled external AUC of the class.")
    difference: Difference | None = Field(
        description="Internal minus external (independent patients, variances add); null "
        "unless both pooled AUCs exist."
    )


class LesionType(ReportModel):
    """Task lesion-type's three-way view: per-class one-vs-rest AUCs, sensitivity and
    specificity of the argmax decision, the macro AUC, the confusion matrix, and per-class
    pooling internal vs external. The report's other sections are the binary view benign vs
    malignant (binary_view)."""

    classes: Annotated[list[ClassName], Field(min_length=3, max_length=3)] = Field(
        description="The classes in label order (0, 1, 2)."
    )
    rule: Literal["argmax"] = Field(description="How a case is assigned a class.")
    rule_text: str = Field(description="The decision rule in words.")
    binary_view: str = Field(description="What the report's binary sections measure for this task.")
    sites: list[LesionTypeSite] = Field(description="One row per primary evaluation.")
    pooled: LesionTypeRoles = Field(description="Per-class pooling, internal and external.")
    gap: Annotated[list[LesionTypeGap], Field(min_length=3, max_length=3)] = Field(
        description="Per class: pooled internal minus pooled external AUC."
    )
