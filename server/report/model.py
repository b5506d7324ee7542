"""The ``report.json`` document as pydantic models: ``Report`` and its top-level blocks.

The published JSON Schema, ``server/report/report.schema.json``, is generated from
``Report`` (``python -m server.report.schema``), and ``server.report.schema.validate``
checks a document through it, so the schema and the checks cannot disagree. The blocks
live by concept: ``model_stats`` (intervals and pooled estimates), ``model_sites`` (the
per-site rows and the matrix), ``model_pooled`` (pooling, gaps, drift vs degradation),
``model_joined`` (sites_joined), ``model_privacy``; ``model_base`` holds what they
share. The report is still built and written as a plain dict (``server.report.build``);
these models check it. Nothing here imports the runtime (torch, Flower, MONAI).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError

from common.keys import EvalDesign, PoolingMethod, Task
from server.report.model_base import (
    MODEL,
    ROLE,
    SITE,
    Count,
    Omittable,
    OpenProbability,
    Probability,
    ReportModel,
    Role,
    Sha256Hex,
)
from server.report.model_choices import ThresholdChoice
from server.report.model_joined import SiteJoined
from server.report.model_lesion_type import LesionType
from server.report.model_pooled import DriftVsDegradation, Fold, Gap, Pooled
from server.report.model_privacy import Privacy
from server.report.model_sites import MatrixCell, SiteRow
from server.report.model_training_noise import TrainingNoise

REPORT_VERSION = "1.1"  # the Literal of Report.report_version; server.report.build writes it
TITLE = f"hepafed cross-site performance report, version {REPORT_VERSION}"


def aware_iso_datetime(text: str) -> str:
    """An ISO 8601 date-time with its UTC offset (JSON Schema's ``date-time``)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise PydanticCustomError("date_time", "not an ISO 8601 date-time with a UTC offset")
    return text


class Settings(ReportModel):
    """The run's evaluation settings (eval.*) the statistics used."""

    level: float = Field(
        ge=0.5, le=1, description="Confidence level of every interval, in [0.5, 1)."
    )
    thresholds: list[
        Annotated[OpenProbability, Field(description="A probability threshold in (0, 1).")]
    ] = Field(
        min_length=1, description="Probability thresholds of the 2x2 tables (eval.thresholds)."
    )
    operating_threshold: OpenProbability = Field(
        description="Where sensitivity and specificity are reported and pooled: the first of "
        "thresholds, or, with threshold_choices, the threshold chosen for the primary model "
        "(the global model; under loso the first fold's). Each site row's first 2x2 table is "
        "at its own model's operating threshold."
    )
    pooling: PoolingMethod = Field(strict=False, description="Random-effects tau² estimator.")
    hartung_knapp: bool = Field(
        description="Hartung-Knapp (t-based) pooled intervals instead of z."
    )
    margin: Probability = Field(
        description="AUC drop (pooled internal minus site, AUC units) above which a site is "
        "flagged, in [0, 1)."
    )
    hooks: list[Annotated[str, Field(min_length=1)]] = Field(
        description="The run's domain-adaptation hooks (hooks.use) in the order they compose, "
        "each with the settings that matter."
    )
    threshold_choices: Omittable[list[ThresholdChoice]] = Field(
        None,
        description="Each model's operating threshold chosen on the validation split of the "
        "sites that trained it (eval.threshold-rule, common.operating_point), with its "
        "recalibration when eval.recalibrate asks for one; absent under eval.threshold-rule = "
        "fixed without recalibration.",
    )


class RocCurve(ReportModel):
    """One evaluation's ROC curve as sensitivities on the shared false-positive-rate grid."""

    site: str = Field(description=SITE)
    model: str = Field(description=MODEL)
    role: Role = Field(description=ROLE)
    tpr: list[Annotated[Probability, Field(description="Sensitivity on [0, 1].")]] = Field(
        description="Sensitivity (TPR on [0, 1]) at each FPR of curves.fpr: the best "
        "sensitivity reached without exceeding that FPR (step curve)."
    )


class Reliability(ReportModel):
    """One evaluation's reliability diagram over equal-width probability bins."""

    site: str = Field(description=SITE)
    model: str = Field(description=MODEL)
    role: Role = Field(description=ROLE)
    mean_predicted: list[
        Annotated[Probability | None, Field(description="Mean predicted probability.")]
    ] = Field(description="Mean predicted probability per bin on [0, 1]; null for empty bins.")
    observed_rate: list[
        Annotated[Probability | None, Field(description="Observed positive rate.")]
    ] = Field(description="Observed share of positives per bin on [0, 1]; null for empty bins.")
    count: list[Annotated[Count, Field(description="Cases in the bin.")]] = Field(
        description="Cases per bin."
    )


class Curves(ReportModel):
    """ROC curves and reliability diagrams of the primary evaluations (empty for
    segmentation)."""

    fpr: list[Annotated[Probability, Field(description="A false-positive rate on [0, 1].")]] = (
        Field(
            description="False-positive-rate grid (1 - specificity, on [0, 1]) shared by every "
            "ROC curve (eval.roc-points evenly spaced values)."
        )
    )
    roc: list[RocCurve] = Field(description="One ROC curve per evaluation.")
    reliability: list[Reliability] = Field(description="One reliability diagram per evaluation.")


FlagKind = Literal[
    "below-prediction-interval",
    "drop-exceeds-margin",
    "insufficient-data",
    "no-evaluation",
    "gap-within-training-noise",
]


class Flag(ReportModel):
    """A site the reader should look at."""

    site: str = Field(description=SITE)
    model: str = Field(description="Model concerned.")
    role: Role = Field(
        description="internal: the site's data trained the model concerned; external: it did "
        "not (also for no-evaluation flags)."
    )
    kind: FlagKind = Field(
        description="below-prediction-interval: AUC below the pooled internal prediction "
        "interval; drop-exceeds-margin: AUC more than settings.margin below pooled internal; "
        "insufficient-data: too few cases; no-evaluation: the site did not report; "
        "gap-within-training-noise: one seed alone called the site's gap significant, the "
        "seeds together do not (training_noise)."
    )
    message: str = Field(description="Human-readable explanation.")


class Provenance(ReportModel):
    """What produced the report."""

    run_dir: str = Field(description="Absolute path of the run folder.")
    model_sha256: dict[str, Annotated[Sha256Hex, Field(description="SHA-256 hex digest.")]] = Field(
        description="model -> SHA-256 (hex) of its final weights (server.report.model_sha256)."
    )
    manifest_sha256: dict[
        str,
        Annotated[
            str, Field(pattern=r"^([0-9a-f]{64})?$", description="SHA-256 hex digest or empty.")
        ],
    ] = Field(description="site -> SHA-256 (hex) of its manifest; empty if unknown.")
    code_version: str = Field(
        description="hepafed version, with +gCOMMIT when run from a checkout."
    )
    config: dict[str, Annotated[str | bool | int | float, Field(description="A config value.")]] = (
        Field(description="The resolved flat run config (section.key -> value).")
    )


# folds are there exactly when the design is loso, lesion_type exactly when the task is
# lesion-type (JSON Schema: if / then / else)
FOLDS_ONLY_FOR_LOSO: JsonDict = {
    "if": {"properties": {"design": {"const": EvalDesign.LOSO.value}}},
    "then": {"required": ["folds"]},
    "else": {"not": {"required": ["folds"]}},
}
LESION_TYPE_ONLY_FOR_ITS_TASK: JsonDict = {
    "if": {"properties": {"task": {"const": Task.LESION_TYPE.value}}},
    "then": {"required": ["lesion_type"]},
    "else": {"not": {"required": ["lesion_type"]}},
}


class Report(ReportModel):
    """report.json written by server.report.files.write_report: per-site statistics computed
    from the summary statistics sites sent (no patient data), random-effects pooling of
    internal and external evaluations, internal vs external gaps, drift vs degradation,
    flags and provenance. Intervals are at settings.level; numbers that cannot be computed
    (NaN or infinite) are null."""

    model_config = ConfigDict(
        title=TITLE,
        json_schema_extra={"allOf": [FOLDS_ONLY_FOR_LOSO, LESION_TYPE_ONLY_FOR_ITS_TASK]},
    )

    report_version: Literal["1.1"] = Field(description="Version of this report layout.")
    created: Annotated[
        str, AfterValidator(aware_iso_datetime), Field(json_schema_extra={"format": "date-time"})
    ] = Field(description="When the report was built (ISO 8601, UTC).")
    task: Task = Field(
        strict=False,
        description="Learning task: lesion-malignancy (binary classification, AUC), "
        "lesion-type (three classes: benign, primary malignant, metastasis; the sections "
        "other than lesion_type are its benign vs malignant view) or lesion-segmentation "
        "(Dice).",
    )
    design: EvalDesign = Field(
        strict=False,
        description="Evaluation design (eval.design): holdout, loso (leave one site out) or "
        "cross-site.",
    )
    settings: Settings = Field(
        description="The run's evaluation settings (eval.*) the statistics used."
    )
    sites_joined: list[SiteJoined] = Field(description="The site nodes that joined the run.")
    sites: list[SiteRow] = Field(
        description="Per-site table: the primary evaluations (holdout/cross-site: the global "
        "model at every site; loso: each site under the model that left it out)."
    )
    folds: Omittable[list[Fold]] = Field(
        None, description="loso only: each fold model's pooling over its training sites."
    )
    pooled: Pooled = Field(
        description="Random-effects pooling of the primary evaluations, internal and external "
        "separately."
    )
    gaps: list[Gap] = Field(
        description="Per external site: pooled internal AUC minus the site's AUC."
    )
    drift_vs_degradation: DriftVsDegradation = Field(
        description="Does the AUC drop grow with the embedding drift? One point per site."
    )
    matrix: list[MatrixCell] = Field(
        description="Every model x site evaluation, sorted by model then site."
    )
    curves: Curves = Field(
        description="ROC curves and reliability diagrams of the primary evaluations (empty for "
        "segmentation)."
    )
    provenance: Provenance = Field(description="What produced the report.")
    privacy: Omittable[Privacy] = Field(
        None,
        description="Epsilon and delta per site under differential privacy; absent with "
        "privacy.mode = none.",
    )
    training_noise: Omittable[TrainingNoise] = Field(
        None,
        description="Several training seeds combined (hepafed simulate --seeds N); absent "
        "for a single run.",
    )
    lesion_type: Omittable[LesionType] = Field(
        None,
        description="Task lesion-type's three-way view (per-class AUCs, sensitivity and "
        "specificity, macro AUC, confusion matrices, per-class pooling); absent for the "
        "other tasks.",
    )
    flags: list[Flag] = Field(description="Sites flagged for the reader's attention.")

    @model_validator(mode="after")
    def _folds_only_for_loso(self) -> Report:
        has_folds = "folds" in self.model_fields_set
        if self.design == EvalDesign.LOSO and not has_folds:
            raise PydanticCustomError("folds_missing", "'folds' is required with design loso")
        if self.design != EvalDesign.LOSO and has_folds:
            raise PydanticCustomError(
                "folds_not_loso",
                "'folds' is only for design loso, not {design}",
                {"design": self.design.value},
            )
        return self

    @model_validator(mode="after")
    def _lesion_type_only_for_its_task(self) -> Report:
        has_block = "lesion_type" in self.model_fields_set
        if self.task == Task.LESION_TYPE and not has_block:
            raise PydanticCustomError(
                "lesion_type_missing", "'lesion_type' is required with task lesion-type"
            )
        if self.task != Task.LESION_TYPE and has_block:
            raise PydanticCustomError(
                "lesion_type_not_its_task",
                "'lesion_type' is only for task lesion-type, not {task}",
                {"task": self.task.value},
            )
        return self
