"""How each model's operating threshold and recalibration were chosen, on validation data
only: ``settings.threshold_choices`` of the report (``common.operating_point``,
``common.recalibration``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator
from pydantic.config import JsonDict, JsonValue
from pydantic_core import PydanticCustomError

from server.report.model_base import (
    MODEL,
    Count,
    Omittable,
    OpenProbability,
    Probability,
    ReportModel,
)


class ThresholdCandidate(ReportModel):
    """The training sites' validation cases together at one candidate threshold."""

    threshold: OpenProbability = Field(description="The candidate threshold.")
    tp: Count = Field(description="True positives, summed over the sites.")
    fp: Count = Field(description="False positives, summed over the sites.")
    fn: Count = Field(description="False negatives, summed over the sites.")
    tn: Count = Field(description="True negatives, summed over the sites.")
    sensitivity: Probability | None = Field(description="tp / (tp + fn); null without positives.")
    specificity: Probability | None = Field(description="tn / (tn + fp); null without negatives.")


def _fitted_means_coefficients() -> JsonDict:
    """JSON Schema: a fitted recalibration has both coefficients, one not fitted neither."""

    def either(kind: str) -> list[JsonValue]:
        return [{"properties": {key: {"type": kind}}} for key in ("intercept", "slope")]

    return {
        "allOf": [
            {
                "if": {"properties": {"fitted": {"const": True}}, "anyOf": either("null")},
                "then": False,
            },
            {
                "if": {"properties": {"fitted": {"const": False}}, "anyOf": either("number")},
                "then": False,
            },
        ]
    }


class Recalibration(ReportModel):
    """Logistic recalibration of one model's probabilities, p' = expit(a + b logit p), fitted
    on the validation summaries of the sites that trained it (never on test cases); each
    site row's calibration.recalibrated then holds its calibration after it."""

    model_config = ConfigDict(json_schema_extra=_fitted_means_coefficients())

    method: Literal["logistic"] = Field(
        description="How the probabilities are recalibrated (eval.recalibrate): logistic, "
        "p' = expit(a + b logit p)."
    )
    fitted: bool = Field(
        description="Whether a and b were fitted and applied; false: nothing was applied "
        "(reason says why) and the site rows have no calibration.recalibrated."
    )
    intercept: float | None = Field(
        description="a, the intercept on the logit scale; null when not fitted."
    )
    slope: Annotated[float, Field(gt=0)] | None = Field(
        description="b, the slope on the logit scale (> 0: the order of the cases, and so "
        "every AUC, is unchanged); null when not fitted."
    )
    reason: str = Field(description="Why it was fitted or not, in words.")
    sites: list[str] = Field(description="The sites whose validation summaries it was fitted on.")
    n: Count = Field(description="Validation cases used (summed over the sites).")
    n_groups: Count = Field(
        description="Calibration groups used (the sites' non-empty probability bins after "
        "the small-cell merge): the fit is a grouped logistic regression on their summaries, "
        "never on single cases."
    )

    @model_validator(mode="after")
    def _coefficients_when_fitted(self) -> Recalibration:
        has = {"intercept": self.intercept is not None, "slope": self.slope is not None}
        wrong = [key for key, there in has.items() if there != self.fitted]
        if wrong:
            raise PydanticCustomError(
                "recalibration_coefficients",
                "fitted is {fitted}, so {keys} must be {what}",
                {
                    "fitted": str(self.fitted).lower(),
                    "keys": " and ".join(wrong),
                    "what": "numbers" if self.fitted else "null",
                },
            )
        return self


def _fixed_is_not_chosen() -> JsonDict:
    """JSON Schema: under rule fixed nothing was chosen and a recalibration was asked for."""

    def fixed(**more: JsonValue) -> JsonDict:
        return {"properties": {"rule": {"const": "fixed"}, **more}}

    return {
        "allOf": [
            {"if": fixed(), "then": {"required": ["recalibration"]}},
            {"if": fixed(chosen={"const": True}), "then": False},
            {"if": fixed(candidates={"minItems": 1}), "then": False},
        ]
    }


class ThresholdChoice(ReportModel):
    """How one model's operating threshold was chosen, on validation data only, and its
    probabilities recalibrated (eval.recalibrate)."""

    model_config = ConfigDict(json_schema_extra=_fixed_is_not_chosen())

    model: str = Field(description=MODEL)
    rule: Literal["youden", "sensitivity", "fixed"] = Field(
        description="youden: largest sensitivity + specificity - 1; sensitivity: the highest "
        "candidate reaching target_sensitivity; fixed: the first of thresholds, not chosen, "
        "listed for its recalibration (eval.threshold-rule)."
    )
    threshold: OpenProbability = Field(description="The operating threshold the model used.")
    chosen: bool = Field(
        description="false: no usable validation summary, or rule fixed: the first of "
        "thresholds was kept."
    )
    reason: str = Field(description="Why this threshold, in words.")
    sites: list[str] = Field(description="The sites whose validation tables were pooled.")
    target_sensitivity: Probability | None = Field(
        description="The target of the sensitivity rule; null under youden and fixed."
    )
    candidates: list[ThresholdCandidate] = Field(
        description="Every candidate (eval.threshold-candidates) with the pooled counts; empty "
        "when nothing was chosen (always under rule fixed)."
    )
    recalibration: Omittable[Recalibration] = Field(
        None,
        description="The model's logistic recalibration, fitted on the same validation "
        "summaries (eval.recalibrate = logistic); required under rule fixed, absent when no "
        "recalibration was asked for.",
    )

    @model_validator(mode="after")
    def _fixed_is_not_chosen(self) -> ThresholdChoice:
        if self.rule != "fixed":
            return self
        wrong = [
            *(
                ["'recalibration' is required"]
                if "recalibration" not in self.model_fields_set
                else []
            ),
            *(["chosen must be false"] if self.chosen else []),
            *(["candidates must be empty"] if self.candidates else []),
        ]
        if wrong:
            raise PydanticCustomError(
                "fixed_threshold", "under rule fixed {wrong}", {"wrong": "; ".join(wrong)}
            )
        return self
