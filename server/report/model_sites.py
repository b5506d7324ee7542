"""The report's per-evaluation rows: the per-site table (``sites``) and the model x site
matrix (``matrix``), with their 2x2 tables, calibration, saliency, drift and skipped cases.

``server.report.site_statistics``, ``server.report.drift`` and
``server.report.design_body`` write them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, model_validator
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError

from server.report.model_base import (
    ADAPTATION,
    MODEL,
    N_EVALUATED,
    ROLE,
    SITE,
    SPLIT,
    Count,
    EvalSplit,
    NonNegative,
    Omittable,
    Probability,
    ReportModel,
    Role,
)
from server.report.model_stats import (
    Dice,
    Hd95,
    ProbabilityInterval,
    RatioInterval,
    SeInterval,
    SiteAuc,
)

MAX_SKIPPED_IDS = 20


class SkippedCases(ReportModel):
    """Bad cases the site left out of this evaluation under data.on-bad-case = skip
    (missing or unreadable file, wrong shape, NaN/Inf voxels, bad mask or label); they are
    not in n. Absent in reports made before it was reported."""

    n: Count = Field(description="How many cases were left out (all of them).")
    ids: list[Annotated[str, Field(description="A case id of the site's manifest.")]] = Field(
        max_length=MAX_SKIPPED_IDS,
        description="Case ids of the first 20 left out (identifiers, never patient values); "
        "empty if none, or if the site's reply did not carry them.",
    )


class ThresholdTable(ReportModel):
    """The 2x2 table and accuracy measures at one threshold (a case is called positive when
    its predicted probability >= threshold); proportions with Wilson intervals."""

    threshold: Probability = Field(description="Probability threshold in (0, 1).")
    tp: Count = Field(description="True positives (count).")
    fp: Count = Field(description="False positives (count).")
    fn: Count = Field(description="False negatives (count).")
    tn: Count = Field(description="True negatives (count).")
    sensitivity: ProbabilityInterval = Field(description="Sensitivity TP / (TP + FN) on [0, 1].")
    specificity: ProbabilityInterval = Field(description="Specificity TN / (TN + FP) on [0, 1].")
    ppv: ProbabilityInterval = Field(
        description="Positive predictive value TP / (TP + FP) on [0, 1]."
    )
    npv: ProbabilityInterval = Field(
        description="Negative predictive value TN / (TN + FN) on [0, 1]."
    )
    lr_pos: RatioInterval = Field(description="Positive likelihood ratio sens / (1 - spec).")
    lr_neg: RatioInterval = Field(description="Negative likelihood ratio (1 - sens) / spec.")
    dor: RatioInterval = Field(description="Diagnostic odds ratio LR+ / LR-.")
    zero_cell_corrected: bool = Field(
        description="Whether 0.5 was added to every cell for the ratios (a zero cell)."
    )


class CalibrationMeasures(ReportModel):
    """The calibration measures of a set of predicted probabilities (``Calibration`` and its
    ``recalibrated`` block)."""

    citl: SeInterval = Field(
        description="Calibration-in-the-large (logit scale; 0 = ideal, > 0 = risks underestimated)."
    )
    slope: SeInterval = Field(
        description="Calibration slope of logistic recalibration (1 = ideal, < 1 = "
        "predictions too extreme, > 1 = too moderate)."
    )
    intercept: SeInterval = Field(
        description="Intercept of the logistic recalibration (logit scale)."
    )
    ece: Probability | None = Field(
        description="Expected calibration error over the probability bins, on [0, 1]."
    )
    brier: Probability | None = Field(
        description="Brier score: mean squared error of the probabilities, on [0, 1]."
    )


class Recalibrated(CalibrationMeasures):
    """The same measures on the same test cases, computed on the recalibrated probabilities
    p' = expit(a + b logit p) (a and b in settings.threshold_choices[].recalibration, fitted
    on validation summaries only). The ECE uses the same case groups as before
    recalibration (the raw-probability bins after the small-cell merge), so before and
    after differ only in the predictions."""


class Calibration(CalibrationMeasures):
    """Calibration of the predicted probabilities at the site."""

    recalibrated: Omittable[Recalibrated] = Field(
        None,
        description="The same measures after logistic recalibration of the model's "
        "probabilities (eval.recalibrate = logistic), on the same test cases; absent when no "
        "recalibration was applied.",
    )


class LiverSaliency(ReportModel):
    """The same map in the liver outside the lesion (the liver mask minus the lesion mask),
    over the site's cases that have a liver mask (among those of the lesion's share)."""

    in_liver: Probability | None = Field(
        description="Mean over the cases of the share of the saliency map's total inside the "
        "liver but outside the lesion, on [0, 1]."
    )
    chance: Probability | None = Field(
        description="Chance level: mean over the same cases of the share of the image the "
        "liver outside the lesion covers, on [0, 1]; a map spread evenly over the image puts "
        "this share there."
    )
    n: Count = Field(description="Cases the two means are over (those with a liver mask).")
    ratio: NonNegative | None = Field(
        description="in_liver / chance (unitless): near 1, the model looks at the liver "
        "around the lesion no more than at random places of the crop. Null when the chance "
        "level is 0 or unknown."
    )


class Saliency(ReportModel):
    """Where the model looks at the site (eval.saliency = true, where the site's policy
    allows it): Grad-CAM of the model's last convolutional stage, upsampled to the input by
    MONAI's interpolation, compared with the lesion mask (and, where the site has them, the
    liver mask), each share averaged over the site's cases. Absent when the run did not ask
    for it or the site did not send it."""

    in_lesion: Probability | None = Field(
        description="Mean over the cases of the share of the saliency map's total inside the "
        "lesion mask, on [0, 1]."
    )
    chance: Probability | None = Field(
        description="Chance level: mean over the same cases of the share of the image the "
        "lesion covers, on [0, 1] (high on lesion-centred crops); a map spread evenly over "
        "the image puts this share in the lesion."
    )
    n: Count = Field(description="Cases the two means are over.")
    ratio: NonNegative | None = Field(
        description="in_lesion / chance (unitless): near 1, the model looks at the lesion no "
        "more than at random places of the crop; well above 1, it concentrates on the "
        "lesion. Null when the chance level is 0 or unknown."
    )
    liver: Omittable[LiverSaliency] = Field(
        None,
        description="The share in the liver outside the lesion against its chance level; "
        "absent when the site sent none (it has no liver masks, or fewer cases with one than "
        "its policy.min-cell).",
    )


# a drift measure -> the measures that come with it (``server.report.drift`` writes each
# group whole: the histogram distances together, the embedding distances together)
DRIFT_GROUPS: dict[str, tuple[str, ...]] = {
    "wasserstein1": ("wasserstein1_per_channel", "psi", "psi_per_channel"),
    "frechet": ("frechet_relative",),
}


def _groups_whole() -> JsonDict:
    """JSON Schema: each key of ``DRIFT_GROUPS`` comes with its group."""
    return {"dependentRequired": {key: list(group) for key, group in DRIFT_GROUPS.items()}}


class Drift(ReportModel):
    """Distribution shift of the site's data against the reference (the internal sites of
    the model evaluated). Empty when the site sent no histograms or embeddings."""

    model_config = ConfigDict(json_schema_extra=_groups_whole())

    wasserstein1: Probability | None = Field(
        None,
        description="Wasserstein-1 distance between intensity histograms of the model input "
        "(on [0, 1], i.e. in units of the CT window width), mean over channels.",
    )
    wasserstein1_per_channel: Omittable[
        list[
            Annotated[
                Probability | None,
                Field(description="Wasserstein-1 distance of one channel."),
            ]
        ]
    ] = Field(None, description="Wasserstein-1 distance per input channel (phase), same units.")
    psi: NonNegative | None = Field(
        None,
        description="Population stability index of the intensity histograms (unitless, >= 0; "
        "< 0.1 small, > 0.25 large shift), mean over channels.",
    )
    psi_per_channel: Omittable[
        list[Annotated[NonNegative | None, Field(description="PSI of one channel.")]]
    ] = Field(None, description="Population stability index per input channel.")
    frechet: NonNegative | None = Field(
        None,
        description="Fréchet distance (squared 2-Wasserstein) between Gaussian fits of the "
        "projected embeddings, in squared embedding units.",
    )
    frechet_relative: NonNegative | None = Field(
        None,
        description="Fréchet distance divided by the trace of the reference embedding "
        "covariance (scale-free; 0 = identical).",
    )

    @model_validator(mode="after")
    def _whole_groups(self) -> Drift:
        for key, needed in DRIFT_GROUPS.items():
            missing = [n for n in needed if n not in self.model_fields_set]
            if key in self.model_fields_set and missing:
                raise PydanticCustomError(
                    "dependent_required",
                    "{missing} must come with {key}",
                    {"missing": ", ".join(repr(m) for m in missing), "key": repr(key)},
                )
        return self


class Reference(ReportModel):
    """The comparator."""

    auc: Probability | None = Field(description="Pooled internal AUC on [0, 1].")
    prediction_interval_lo: Probability | None = Field(
        description="Lower bound of that pooled AUC's prediction interval, on [0, 1]."
    )
    sites: list[str] = Field(description="Sites pooled into it.")


# what a row with too few cases leaves out: it has counts only
STATISTICS = ("auc", "thresholds", "calibration", "dice", "hd95_mm", "saliency")


def _counts_only() -> JsonDict:
    """JSON Schema: a row with ``insufficient`` true has none of the ``STATISTICS``."""
    return {
        "allOf": [
            {
                "if": {"properties": {"insufficient": {"const": True}}},
                "then": {"not": {"anyOf": [{"required": [key]} for key in STATISTICS]}},
            }
        ]
    }


class SiteRow(ReportModel):
    """One row of the per-site table: one model evaluated at one site."""

    model_config = ConfigDict(json_schema_extra=_counts_only())

    site: str = Field(description="Site (hospital) name.")
    model: str = Field(
        description="Model evaluated: global, without-SITE (loso fold), local-SITE, pooled "
        "(simulation)."
    )
    role: Role = Field(description=ROLE)
    split: EvalSplit = Field(description=SPLIT)
    adaptation: str = Field(min_length=1, description=ADAPTATION)
    n: Count = Field(description=N_EVALUATED)
    n_pos: Count = Field(description="Positive (malignant) cases; 0 for segmentation.")
    n_neg: Count = Field(description="Negative (benign) cases; 0 for segmentation.")
    prevalence: Probability | None = Field(
        description="Share of positive cases n_pos / n on [0, 1] (null: segmentation)."
    )
    insufficient: bool = Field(
        description="Too few cases (eval.min-cases / eval.min-per-class): counts only."
    )
    skipped_cases: Omittable[SkippedCases] = Field(
        None,
        description="Bad cases the site left out of this evaluation under data.on-bad-case = "
        "skip (missing or unreadable file, wrong shape, NaN/Inf voxels, bad mask or label); "
        "they are not in n. Absent in reports made before it was reported.",
    )
    auc: Omittable[SiteAuc] = Field(None, description="AUC with DeLong CI (classification).")
    thresholds: Omittable[list[ThresholdTable]] = Field(
        None,
        description="Accuracy at every configured threshold; the first is the operating "
        "threshold (settings.operating_threshold). Empty for segmentation.",
    )
    calibration: Omittable[Calibration] = Field(
        None, description="Calibration measures (classification)."
    )
    dice: Omittable[Dice] = Field(None, description="Dice summary (segmentation).")
    hd95_mm: Omittable[Hd95] = Field(
        None, description="HD95 summary in millimetres (segmentation)."
    )
    saliency: Omittable[Saliency] = Field(
        None,
        description="Where the model looks: Grad-CAM saliency inside the lesion (and in the "
        "liver outside it, where the site has liver masks) against the chance level "
        "(eval.saliency = true, where the site's policy allows it); absent otherwise.",
    )
    drift: Drift = Field(description="Distribution shift against the reference sites.")
    reference: Reference | None = Field(
        description="The pooled internal AUC this row is compared with (holdout: the global "
        "model's internal sites; loso: the internal sites of the fold that left this site "
        "out); null when none could be pooled."
    )

    @model_validator(mode="after")
    def _counts_only_when_insufficient(self) -> SiteRow:
        present = [key for key in STATISTICS if key in self.model_fields_set]
        if self.insufficient and present:
            raise PydanticCustomError(
                "statistics_without_data",
                "a row with insufficient data has counts only, not {present}",
                {"present": ", ".join(present)},
            )
        return self


class MatrixCell(ReportModel):
    """One model x site evaluation."""

    model: str = Field(description=MODEL)
    site: str = Field(description=SITE)
    role: Role = Field(description=ROLE)
    split: EvalSplit = Field(description=SPLIT)
    adaptation: str = Field(min_length=1, description=ADAPTATION)
    n: Count = Field(description=N_EVALUATED)
    insufficient: bool = Field(description="Too few cases: counts only.")
    auc: Omittable[ProbabilityInterval] = Field(
        None, description="AUC on [0, 1] with DeLong CI (classification)."
    )
    dice: Probability | None = Field(None, description="Mean Dice on [0, 1] (segmentation).")
