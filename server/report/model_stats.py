"""The report's estimates: intervals, differences, pooled estimates, Dice and HD95.

Blocks of numbers that recur across the document (``server.report.site_statistics`` and
``server.report.pooling`` write them); numbers that cannot be computed are null.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from common.keys import PoolingMethod
from server.report.model_base import (
    AucDifference,
    Count,
    NonNegative,
    PositiveCount,
    Probability,
    ReportModel,
)


class ProbabilityInterval(ReportModel):
    """A proportion-scale estimate on [0, 1] with its confidence interval at settings.level;
    null where the value cannot be computed (e.g. PPV with no positive calls)."""

    estimate: Probability | None = Field(description="Point estimate on [0, 1].")
    lo: Probability | None = Field(description="Lower confidence bound on [0, 1].")
    hi: Probability | None = Field(description="Upper confidence bound on [0, 1].")


class RatioInterval(ReportModel):
    """A ratio (likelihood ratio or diagnostic odds ratio, unitless, >= 0; 1 =
    uninformative) with its confidence interval at settings.level; null where not finite."""

    estimate: NonNegative | None = Field(description="Point estimate (>= 0).")
    lo: NonNegative | None = Field(description="Lower confidence bound (>= 0).")
    hi: NonNegative | None = Field(description="Upper confidence bound (>= 0).")


class SiteAuc(ReportModel):
    """The site's empirical ROC AUC (Mann-Whitney) with its DeLong confidence interval."""

    estimate: Probability | None = Field(
        description="AUC on [0, 1]; 0.5 = chance, 1 = perfect ranking."
    )
    lo: Probability | None = Field(description="Lower DeLong confidence bound on [0, 1].")
    hi: Probability | None = Field(description="Upper DeLong confidence bound on [0, 1].")
    variance: NonNegative = Field(description="DeLong variance of the AUC (AUC units squared).")


class SeInterval(ReportModel):
    """A calibration coefficient (logit scale) with its Wald confidence interval (estimate
    -/+ z * se); null where the fit could not be estimated."""

    estimate: float | None = Field(description="Point estimate (logit scale).")
    lo: float | None = Field(description="Lower Wald confidence bound.")
    hi: float | None = Field(description="Upper Wald confidence bound.")
    se: NonNegative | None = Field(description="Standard error of the estimate.")


class Difference(ReportModel):
    """A difference of two independent AUCs (a - b, AUC units on [-1, 1]) with its Wald
    confidence interval and two-sided z test of no difference."""

    estimate: AucDifference | None = Field(
        description="Difference a - b in AUC units; positive = a higher."
    )
    lo: float | None = Field(description="Lower confidence bound of the difference.")
    hi: float | None = Field(description="Upper confidence bound of the difference.")
    se: NonNegative | None = Field(description="Standard error sqrt(se_a^2 + se_b^2).")
    z: float | None = Field(description="z statistic estimate / se.")
    p: Probability | None = Field(description="Two-sided p-value of the z test on [0, 1].")


class PredictionInterval(ReportModel):
    """Prediction interval on [0, 1]: where the value of a new, similar site is expected to
    fall (uses se^2 + tau^2)."""

    lo: Probability | None = Field(description="Lower prediction bound on [0, 1].")
    hi: Probability | None = Field(description="Upper prediction bound on [0, 1].")


class PooledEstimate(ReportModel):
    """A random-effects meta-analytic estimate: site values pooled on the logit scale
    (metafor rma() semantics) and back-transformed to [0, 1]."""

    estimate: Probability | None = Field(
        description="Pooled estimate on [0, 1] (inverse logit of the pooled logit)."
    )
    lo: Probability | None = Field(description="Lower confidence bound on [0, 1].")
    hi: Probability | None = Field(description="Upper confidence bound on [0, 1].")
    se: NonNegative | None = Field(
        description="Standard error on the probability scale (delta method: logit SE x p(1 - p))."
    )
    prediction_interval: PredictionInterval = Field(
        description="Prediction interval on [0, 1]: where the value of a new, similar site is "
        "expected to fall (uses se^2 + tau^2)."
    )
    tau2: NonNegative | None = Field(
        description="Between-site variance tau² on the logit scale (>= 0)."
    )
    i2: Annotated[float, Field(ge=0, le=100)] | None = Field(
        description="I²: share of total variability due to between-site heterogeneity, in "
        "percent [0, 100].",
    )
    h2: Annotated[float, Field(ge=1)] | None = Field(
        description="H² = (tau² + s²) / s² (unitless, >= 1)."
    )
    q: NonNegative | None = Field(description="Cochran's Q heterogeneity statistic (>= 0).")
    q_p: Probability | None = Field(description="p-value of Q (chi-square, k - 1 df) on [0, 1].")
    k: PositiveCount = Field(description="Number of sites pooled.")
    method: PoolingMethod = Field(strict=False, description="tau² estimator (eval.pooling).")
    hartung_knapp: bool = Field(description="Whether Hartung-Knapp (t-based) intervals were used.")
    scale: Literal["logit"] = Field(description="Scale the pooling was done on.")


class Dice(ReportModel):
    """Dice similarity coefficient of the predicted and reference lesion masks over the
    site's cases, on [0, 1]; mean with a t-based confidence interval."""

    estimate: Probability | None = Field(description="Mean Dice on [0, 1].")
    lo: float | None = Field(
        description="Lower confidence bound of the mean (t interval; may leave [0, 1])."
    )
    hi: float | None = Field(
        description="Upper confidence bound of the mean (t interval; may leave [0, 1])."
    )
    sd: NonNegative | None = Field(description="Standard deviation of the per-case Dice.")
    median: Probability | None = Field(description="Median Dice on [0, 1].")
    q1: Probability | None = Field(description="First quartile of Dice on [0, 1].")
    q3: Probability | None = Field(description="Third quartile of Dice on [0, 1].")


class Hd95(ReportModel):
    """95th-percentile Hausdorff distance between predicted and reference mask surfaces."""

    mean: NonNegative | None = Field(
        description="Mean HD95 in millimetres over cases where both masks are non-empty."
    )
    n: Count = Field(description="Cases with a finite HD95 (both masks non-empty).")
