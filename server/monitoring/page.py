"""What the monitoring page shows (``MonitorPage``): the model and settings, the alarms
and drift notices, and per site its charts, checks and window rows. ``read_monitor``
(``server.monitoring.page_read``) fills it from ``monitor.json``; the templates of
``server.monitoring.html`` show it.
"""

from __future__ import annotations

from dataclasses import dataclass

from markupsafe import Markup

from server.report.html.view_provenance import Hash
from server.report.html.view_read import Estimate

__all__ = [
    "DRIFT", "PERFORMANCE", "STATISTIC_NAMES", "Change", "Chart", "Check", "CheckRow", "Event",
    "Header", "MonitorPage", "Reference", "Row", "Site",
]  # fmt: skip

PERFORMANCE, DRIFT = "performance", "drift"
STATISTIC_NAMES = {
    "est-auc": "Estimated AUC (label-free)",
    "actual-auc": "Actual AUC (labelled)",
    "embedding": "Embedding drift",
    "intensity": "Intensity drift",
}


@dataclass(frozen=True)
class Header:
    """The model watched and how it was watched."""

    model_hash: Hash | None
    checkpoint: str
    run_id: str
    task: str
    threshold: float | None
    threshold_how: str
    recalibration: tuple[float, float] | None  # (a, b): logit' = a + b * logit
    created: str
    first: str
    last: str
    n_windows: int
    as_of: str
    reference_windows: int | None
    false_alarm_rate: str  # as configured ("0.01"); "n/a" when missing
    charts_per_site: int | None
    arl0: float | None
    k: float | None
    h: float | None
    level_pct: str
    min_cases: int | None


@dataclass(frozen=True)
class Event:
    """A performance alarm or a drift notice, as the tables show it."""

    site: str
    anchor: str  # the site section's id
    window: str
    statistic: str
    value: float | None
    reference: float | None
    z: float | None
    since: str
    message: str


@dataclass(frozen=True)
class Chart:
    """One CUSUM chart of a site; ``svg`` None: it did not run (``note`` says why)."""

    name: str
    kind: str
    side: str
    svg: Markup | None
    note: str
    alarms: tuple[str, ...]


@dataclass(frozen=True)
class Row:
    """One window of a site."""

    window: str
    n: int | None
    insufficient: bool
    reference: bool
    est_auc: Estimate
    actual_auc: Estimate
    labelled: int | None
    labelled_pos: int | None
    labels_insufficient: bool
    embedding: float | None
    intensity: float | None
    revisions: int | None
    replaced: int | None
    alarm: bool
    notice: bool


@dataclass(frozen=True)
class CheckRow:
    """One window's label-free estimate beside the AUC from its labels."""

    window: str
    estimate: Estimate
    actual: float | None
    error: float | None
    covered: bool | None
    n_labelled: int | None


@dataclass(frozen=True)
class Check:
    """The label-free estimate against the actual AUC, where labels arrived."""

    windows: int
    mae: float | None
    coverage: float | None
    rows: tuple[CheckRow, ...]


@dataclass(frozen=True)
class Reference:
    """A site's reference period; ``ok`` False: too little data to set up the charts."""

    ok: bool
    windows: tuple[str, ...]
    n_cases: int | None
    est_auc_mean: float | None
    est_auc_sd: float | None
    actual_auc: float | None
    actual_auc_se: float | None
    actual_windows: int  # reference windows with an actual AUC


@dataclass(frozen=True)
class Change:
    """An acquisition setting that changed at a site (``before`` -> ``after``)."""

    window: str
    previous: str  # the earlier window compared with; "" when not given
    field: str
    before: str
    after: str


@dataclass(frozen=True)
class Site:
    """One site's section."""

    name: str
    anchor: str
    status: str  # "alarm", "notice" or "ok"
    reference: Reference
    timeline: Markup | None
    charts: tuple[Chart, ...]
    changes: tuple[Change, ...]
    check: Check
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class MonitorPage:
    """Everything the page shows, in page order."""

    header: Header
    alarms: tuple[Event, ...]
    notices: tuple[Event, ...]
    insufficient_windows: int
    sites: tuple[Site, ...]
    version: str
