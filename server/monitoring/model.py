"""The ``monitor.json`` document as pydantic models, its JSON Schema and its validation.

``server.monitoring.analysis.analyse`` builds the document as a plain dict and checks it
here before returning it. The published schema, ``server/monitoring/monitor.schema.json``,
is generated from ``Monitor`` with the report's generator (``server.report.schema``); after
changing a model, rewrite it with

    python -m server.monitoring.model

(a test fails while the file and the models differ). As in the report, a number that
cannot be computed is null, and nothing here imports the runtime (numpy, torch, Flower).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, ValidationError, model_validator

from common.keys import Task
from server.report.model import aware_iso_datetime
from server.report.model_base import (
    SITE,
    AucDifference,
    Count,
    NonNegative,
    OpenProbability,
    Probability,
    ReportModel,
    Sha256Hex,
)
from server.report.model_stats import ProbabilityInterval
from server.report.schema import first_problem, published_schema, schema_json

MONITOR_VERSION = "1.0"  # the Literal of Monitor.monitor_version
SCHEMA_FILE = "monitor.schema.json"
SCHEMA_ID = f"https://hepafed.invalid/schemas/monitor-{MONITOR_VERSION}.schema.json"
TITLE = f"hepafed deployed-model monitoring, version {MONITOR_VERSION}"
# server.monitoring.store.WINDOW's pattern (that module imports the runtime)
WINDOW_PATTERN = r"^\d{4}-\d{2}(-\d{2})?(/\d{4}-\d{2}(-\d{2})?)?$"

WindowName = Annotated[
    str, Field(pattern=WINDOW_PATTERN, description="A window: YYYY-MM, YYYY-MM-DD or FROM/TO.")
]
Statistic = Literal["est-auc", "actual-auc", "embedding", "intensity"]
Kind = Literal["performance", "drift"]
STATISTIC = (
    "est-auc: the label-free estimated AUC; actual-auc: the AUC on the labels known so far; "
    "embedding: the embedding mean's shift (Hotelling T²); intensity: the model input's "
    "intensity histograms (Jensen-Shannon divergence, base 2)."
)
KIND = (
    "performance: the model's AUC fell (an alarm); drift: its inputs moved (a drift notice, "
    "which may or may not cost performance)."
)


class MonitorError(ValueError):
    """A monitoring document that does not match ``monitor.schema.json``."""


class Actual(ReportModel):
    """The window's actual figures from the labels known so far (the latest revision)."""

    n_labelled: Count = Field(description="Cases whose label was known on the as-of date.")
    n_labelled_pos: Count = Field(description="Of those, malignant cases.")
    insufficient: bool = Field(
        description="Too few labelled cases (or too few of a class) for the actual figures."
    )
    auc: ProbabilityInterval | None = Field(
        description="AUC on the labelled cases with its DeLong interval; null when insufficient."
    )
    sensitivity: ProbabilityInterval | None = Field(
        description="Sensitivity at the model's threshold with its Wilson interval; null "
        "without a 2x2 table or without malignant cases."
    )
    specificity: ProbabilityInterval | None = Field(
        description="Specificity at the model's threshold with its Wilson interval; null "
        "without a 2x2 table or without benign cases."
    )
    revisions: Count = Field(description="Label revisions recorded for the window.")


class Drift(ReportModel):
    """How far the window's inputs lie from the site's reference; null when not computed."""

    embedding: NonNegative | None = Field(
        description="Mahalanobis distance of the window's embedding mean from the reference "
        "period's pooled mean, in the pooled covariance's metric."
    )
    intensity: Probability | None = Field(
        description="Mean over channels of the Jensen-Shannon divergence (base 2, on [0, 1]) "
        "between the window's intensity histogram and its reference's pooled histogram "
        "(a reference window: the pool of the other reference windows)."
    )


class WindowRow(ReportModel):
    """One site's window; an insufficient window carries no numbers beyond its count."""

    window: WindowName = Field(description="The window.")
    n: Count = Field(description="Cases the site scored in the window.")
    insufficient: bool = Field(
        description="Too few cases (the site's eval.min-cases or settings.min_cases): no "
        "figures, and every chart skips the window."
    )
    reference: bool = Field(description="One of the site's reference windows.")
    est_auc: ProbabilityInterval | None = Field(
        description="Label-free estimated AUC with the interval its realised value falls in "
        "if the probabilities are calibrated here; null when not estimable."
    )
    est_sens: ProbabilityInterval | None = Field(
        description="Label-free estimated sensitivity at the threshold, with its interval."
    )
    est_spec: ProbabilityInterval | None = Field(
        description="Label-free estimated specificity at the threshold, with its interval."
    )
    actual: Actual | None = Field(description="Actual figures; null before any labels arrived.")
    drift: Drift = Field(description="The window's input drift from the site's reference.")
    acquisition: dict[str, Any] = Field(
        description="The window's acquisition summary as the site sent it (counts per vendor, "
        "scanner model and kernel; min/median/max of slice thickness, kVp, contrast delays), "
        "small cells merged; empty when none was sent."
    )
    replaced: Count = Field(description="Earlier summaries of the window it superseded.")


class SiteReference(ReportModel):
    """The site's reference period: its first sufficient windows."""

    windows: list[WindowName] = Field(description="The reference windows, in time order.")
    n_cases: Count = Field(description="Cases over the reference windows.")
    status: Literal["ok", "insufficient"] = Field(
        description="insufficient: fewer than 2 sufficient windows, and no chart runs."
    )
    est_auc_mean: Probability | None = Field(
        description="Mean estimated AUC over the reference windows."
    )
    est_auc_sd: NonNegative | None = Field(
        description="Sample standard deviation (ddof 1) of the reference windows' estimated AUC."
    )
    actual_auc: Probability | None = Field(
        description="Inverse-variance weighted mean of the reference windows' actual AUCs."
    )
    actual_auc_se: NonNegative | None = Field(description="Its standard error.")
    actual_windows: list[WindowName] = Field(
        description="The reference windows that have an actual AUC."
    )


class Chart(ReportModel):
    """One one-sided CUSUM over the windows after the reference period, each window judged
    against the reference period and the windows charted before it (the embedding: against
    the reference period's pooled cases); the lists hold one entry per charted window."""

    statistic: Statistic = Field(description=STATISTIC)
    kind: Kind = Field(description=KIND)
    side: Literal["lower", "upper"] = Field(
        description="lower: the chart watches for a fall; upper: for a rise."
    )
    windows: list[WindowName] = Field(description="The windows the chart ran over.")
    value: list[float] = Field(description="The statistic per window, on its own scale.")
    z: list[float] = Field(description="The standardised value per window, N(0, 1) in control.")
    cusum: list[NonNegative] = Field(description="The one-sided CUSUM after each window.")
    reference: list[float] = Field(
        description="The in-control level each window was judged against (0 for embedding)."
    )
    reference_n: list[Count] = Field(
        description="Windows in the reference each window was standardised against."
    )
    limit: NonNegative = Field(description="The decision interval h (settings.cusum_h).")
    alarms: list[WindowName] = Field(description="Windows where the chart signalled.")
    note: str = Field(description="How the chart ran, or why it did not.")

    @model_validator(mode="after")
    def _one_entry_per_window(self) -> Chart:
        n = len(self.windows)
        lists = (self.value, self.z, self.cusum, self.reference, self.reference_n)
        if any(len(v) != n for v in lists):
            raise ValueError(f"every per-window list of a chart needs {n} entries")
        return self


class Alarm(ReportModel):
    """A chart's signal: a performance alarm or a drift notice."""

    site: str = Field(description=SITE)
    window: WindowName = Field(description="The window that signalled.")
    kind: Kind = Field(description=KIND)
    statistic: Statistic = Field(description=STATISTIC)
    value: float = Field(description="The statistic in that window, on its own scale.")
    reference: float = Field(
        description="The in-control level on the same scale (0 for embedding)."
    )
    reference_n: Count = Field(description="Windows in the reference it was judged against.")
    z: float = Field(description="The window's standardised value.")
    cusum: NonNegative = Field(description="The one-sided CUSUM at the alarm.")
    limit: NonNegative = Field(description="The decision interval it exceeded.")
    since: WindowName = Field(
        description="Estimated start of the change: the first window after the chart's sum "
        "was last 0."
    )
    message: str = Field(description="Human-readable explanation.")


class AcquisitionChange(ReportModel):
    """An acquisition field that changed between two consecutive sufficient windows."""

    window: WindowName = Field(description="The later window.")
    previous: WindowName = Field(description="The earlier window it is compared with.")
    field: str = Field(
        description="vendor, scanner_model, kernel (the set of values changed), or "
        "slice_thickness_mm, kvp, field_strength_t, contrast_delay_s.PHASE (the median moved "
        "by more than 5 %, or was recorded in one window only)."
    )
    before: str = Field(description="The values or median in the earlier window.")
    after: str = Field(description="The values or median in the later window.")


class EstimateRow(ReportModel):
    """A window with both the label-free estimated AUC and the actual AUC."""

    window: WindowName = Field(description="The window.")
    estimate: Probability = Field(description="Estimated AUC.")
    lo: Probability | None = Field(description="Lower bound of the estimate's interval.")
    hi: Probability | None = Field(description="Upper bound of the estimate's interval.")
    actual: Probability = Field(description="Actual AUC on the labelled cases.")
    error: AucDifference = Field(description="Estimate minus actual.")
    covered: bool | None = Field(
        description="Whether the interval holds the actual AUC; null without an interval."
    )
    n_labelled: Count = Field(description="Labelled cases behind the actual AUC.")


class EstimateCheck(ReportModel):
    """How well the label-free estimate has predicted the actual AUC at this site."""

    rows: list[EstimateRow] = Field(description="One row per window with both figures.")
    mae: NonNegative | None = Field(description="Mean absolute error; null without rows.")
    coverage: Probability | None = Field(
        description="Share of intervals holding the actual AUC; null without intervals."
    )


class Site(ReportModel):
    """One site's windows, reference, charts, acquisition changes and estimate check."""

    site: str = Field(description=SITE)
    reference: SiteReference = Field(description="The site's reference period.")
    windows: list[WindowRow] = Field(description="The site's windows, in time order.")
    charts: list[Chart] = Field(
        description="The four charts (est-auc, actual-auc, embedding, intensity); empty when "
        "the reference period is insufficient."
    )
    acquisition_changes: list[AcquisitionChange] = Field(
        description="Acquisition changes between consecutive sufficient windows."
    )
    estimate_check: EstimateCheck = Field(
        description="The label-free estimate against the actual AUC."
    )


class ModelInfo(ReportModel):
    """The monitored model, as its monitoring folder names it."""

    model_sha256: Sha256Hex = Field(description="SHA-256 (hex) of the model's checkpoint.")
    checkpoint: str = Field(description="The checkpoint's file name in its training run.")
    training_run_id: str = Field(description="The training run's id.")
    training_head_sha256: Sha256Hex = Field(
        description="Hash of the training run's sealed audit head."
    )
    task: Task = Field(strict=False, description="The model's learning task.")
    threshold: OpenProbability = Field(
        description="Operating threshold: a case is called malignant when p >= threshold."
    )
    threshold_how: str = Field(description="How the threshold was chosen.")
    recalibration: list[float] = Field(
        description="The recalibration applied to the probabilities before the label-free "
        "estimate (empty: none)."
    )


class Settings(ReportModel):
    """The settings the monitoring ran with."""

    windows: list[WindowName] = Field(min_length=1, description="The windows, in time order.")
    as_of: Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}$")] = Field(
        description="Labels known by this date (YYYY-MM-DD) count."
    )
    reference_windows: Annotated[int, Field(ge=2)] = Field(
        description="R: the first R sufficient windows of each site are its reference period."
    )
    false_alarm_rate: OpenProbability = Field(
        description="alpha: planned false alarms per site and window, all its charts together."
    )
    charts_per_site: Annotated[int, Field(ge=1)] = Field(
        description="Charts per site; alpha is split evenly among them (Bonferroni)."
    )
    arl0: Annotated[float, Field(gt=1)] = Field(
        description="In-control average run length of each chart: charts_per_site / alpha."
    )
    cusum_k: Annotated[float, Field(gt=0)] = Field(
        description="CUSUM reference value k (half the shift in sd units tuned for)."
    )
    cusum_h: Annotated[float, Field(gt=0)] = Field(
        description="CUSUM decision interval h giving each one-sided chart ARL0 = arl0."
    )
    level: Annotated[float, Field(ge=0.5, lt=1)] = Field(
        description="Confidence level of every interval."
    )
    min_cases: Annotated[int, Field(ge=1)] = Field(
        description="A window of fewer cases is insufficient."
    )


class Summary(ReportModel):
    """Counts over the whole document."""

    sites: Count = Field(description="Sites listed.")
    windows: Count = Field(description="Site-windows listed (one per site and window).")
    performance_alarms: Count = Field(description="Performance alarms.")
    drift_notices: Count = Field(description="Drift notices.")
    insufficient_windows: Count = Field(description="Site-windows with too few cases.")
    sites_with_performance_alarm: list[str] = Field(
        description="Sites with at least one performance alarm."
    )
    sites_with_drift_notice: list[str] = Field(description="Sites with at least one drift notice.")


class Monitor(ReportModel):
    """monitor.json: a deployed model watched window by window at every site, each site's
    statistics charted against its own reference period with a false-alarm rate fixed in
    advance; performance alarms and input-drift notices kept apart. Intervals are at
    settings.level; numbers that cannot be computed are null."""

    model_config = ConfigDict(title=TITLE)

    monitor_version: Literal["1.0"] = Field(description="Version of this document layout.")
    created: Annotated[
        str, AfterValidator(aware_iso_datetime), Field(json_schema_extra={"format": "date-time"})
    ] = Field(description="When the document was built (ISO 8601 with a UTC offset).")
    model: ModelInfo = Field(description="The monitored model.")
    settings: Settings = Field(description="The settings the monitoring ran with.")
    sites: list[Site] = Field(description="Per site, sorted by name.")
    alarms: list[Alarm] = Field(
        description="Every alarm and drift notice, sorted by window, site, kind, statistic."
    )
    summary: Summary = Field(description="Counts over the whole document.")


def schema() -> dict[str, Any]:
    """The published JSON Schema of ``monitor.json``, generated from ``Monitor``."""
    return published_schema(Monitor, SCHEMA_ID)


def schema_text() -> str:
    """``schema()`` as the committed file holds it."""
    return schema_json(schema())


def validate(doc: Mapping[str, Any]) -> None:
    """Raise ``MonitorError`` naming the first path that breaks the schema."""
    try:
        Monitor.model_validate(doc)
    except ValidationError as err:
        where, message = first_problem(err.errors(), doc)
        raise MonitorError(f"monitor document does not match {SCHEMA_FILE} at {where}: "
                           f"{message}") from err  # fmt: skip


def main() -> None:
    """Rewrite ``server/monitoring/monitor.schema.json`` from the models."""
    target = Path(__file__).with_name(SCHEMA_FILE)
    target.write_text(schema_text(), encoding="utf-8")
    sys.stdout.write(f"wrote {target}\n")


if __name__ == "__main__":
    main()
