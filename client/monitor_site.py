"""A site's answer to a monitoring request: the frozen model on the cases it acquired in one
time window, reduced to a ``client.monitor_window.WindowSummary``.

The server's ``monitor`` design (``server.monitoring.design``) sends the trained model with a
window (``ConfigKey.WINDOW``, its first day and the first day after it) and an as-of date.
The site scores its **test** cases acquired in the window (``common.dates.cases_in_window``;
train and val cases trained or tuned the model, so they are never monitored): a deployed
site lists its new cases as ``test`` with their ``acquired`` date. A case's label counts only
if it was known on the as-of date (``common.dates.labelled_by``), so re-running a window
later with more labels changes its actual figures and nothing else.

The model is scored as trained: the probabilities go through the run's recalibration
(``eval.recalibration``) and are called malignant at its operating threshold
(``eval.thresholds``' first value), both chosen on validation summaries when the model
was trained. Everything sent obeys the site's small-cell rule; the acquisition summary of
the window's cases (scanner, kernel, slice thickness, contrast timing) is sent as the query
reply's is, so the server can see a new scanner arrive.

A site answers single calendar months, with labels as of a month's last day, unless its
``policy.monitor-any-window`` says otherwise: the server could otherwise ask for two
windows that differ by one case (a month and the same month less a day), or two as-of
dates a day apart, and difference their score counts and 2x2 tables down to that case's
score and label. A monitoring request with ``data.acquired-before`` (which would cut a
month short) is refused for the same reason.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np

from client.evaluation import predict
from client.monitor_window import WindowSummary, window_summary
from client.policy import PolicyRefusal, SitePolicy, simulated_policy
from client.site import Site
from common.acquisition import acquisition_json
from common.config import RunConfig
from common.dates import cases_in_window, labelled_by, parse_date
from common.device import Compute, derive_seed, select_compute
from common.keys import ConfigKey, Split, Task
from common.models import build_model
from common.recalibration import apply_recalibration
from common.weights import load_arrays


class MonitorRequestError(ValueError):
    """A monitoring request the site cannot answer; the message says what to fix."""


@dataclass(frozen=True)
class WindowRequest:
    """The window a monitoring message asks about."""

    name: str
    start: date  # first day
    end: date  # first day after the window
    as_of: date  # labels known by this day count

    @classmethod
    def from_instructions(cls, raw: Mapping[str, Any]) -> WindowRequest | None:
        """The request in a message's config, or None for an ordinary evaluation."""
        name = raw.get(ConfigKey.WINDOW.value)
        if not name:
            return None
        try:
            start = parse_date(str(raw[ConfigKey.WINDOW_START.value]))
            end = parse_date(str(raw[ConfigKey.WINDOW_END.value]))
            as_of = parse_date(str(raw[ConfigKey.AS_OF.value]))
        except (KeyError, ValueError) as e:
            raise MonitorRequestError(
                f"monitoring request for window {name!r} without a readable start, end and "
                f"as-of date ({e}): the server must send all three"
            ) from e
        if end <= start:
            raise MonitorRequestError(f"monitoring window {name!r}: ends before it starts")
        return cls(str(name), start, end, as_of)

    @property
    def as_of_month_end(self) -> bool:
        """The as-of date is a month's last day."""
        return (self.as_of + timedelta(days=1)).day == 1

    @property
    def whole_month(self) -> bool:
        """One calendar month, from its first day to the next month's first."""
        next_month = date(self.start.year + self.start.month // 12, self.start.month % 12 + 1, 1)
        return self.start.day == 1 and self.end == next_month


def monitored_cases(site: Site, request: WindowRequest) -> list[Any]:
    """The site's test cases acquired in the window; a manifest without acquisition dates
    cannot be monitored over time, and says so."""
    tests = site.manifest.split(Split.TEST)
    if tests and all(c.acquired is None for c in tests):
        raise MonitorRequestError(
            f"site {site.name!r}: {site.manifest.site_dir / 'manifest.csv'} has no `acquired` "
            "date for any test case, so no case falls in a monitoring window: add the "
            "column (YYYY-MM-DD, the images' acquisition date)"
        )
    return cases_in_window(tests, request.start, request.end)


def site_monitor(
    site: Site,
    weights: Any,
    cfg: RunConfig,
    request: WindowRequest,
    *,
    compute: Compute | None = None,
    policy: SitePolicy | None = None,
) -> tuple[WindowSummary, str]:
    """The window's summary and the JSON text of its cases' acquisition summary."""
    if cfg.task != Task.MALIGNANCY:
        raise MonitorRequestError(
            f"task = {cfg.task.value!r}: monitoring watches a binary classifier's "
            "probabilities (lesion-malignancy)"
        )
    compute = compute or select_compute(cfg.train.amp)
    rules = policy or simulated_policy(cfg)
    refused = []
    if not rules.monitor_any_window and not request.whole_month:
        refused.append(
            f"monitoring window {request.name!r} ({request.start} to {request.end}): this "
            "site answers single calendar months only (policy.monitor-any-window = false): "
            "two overlapping windows could be differenced down to one case; ask for "
            "months (YYYY-MM)"
        )
    if not rules.monitor_any_window and not request.as_of_month_end:
        refused.append(
            f"monitoring as-of date {request.as_of}: this site counts labels as of a month's "
            "last day only (policy.monitor-any-window = false): two as-of dates a day apart "
            "could be differenced down to the labels that arrived that day"
        )
    if cfg.data.acquired_before:  # it would cut a month short, case by case
        refused.append(
            f"data.acquired-before = {cfg.data.acquired_before!r} with a monitoring window: "
            "a window is the site's test cases acquired in it, all of them"
        )
    if refused:
        raise PolicyRefusal(refused)
    cases = monitored_cases(site, request)
    wanted = {c.case_id: c for c in cases}
    data = site.split(Split.TEST, cfg)  # kept in memory: every window of a run reuses it
    index = [i for i, case_id in enumerate(data.case_ids) if case_id in wanted]
    labels = np.array(
        [
            float(data.labels[i])
            if labelled_by(wanted[data.case_ids[i]], request.as_of)
            else np.nan
            for i in index
        ],
        dtype=float,
    )
    images = data.images[index]
    model = build_model(cfg)
    load_arrays(model, weights)
    probs, embedding = predict(model, images, compute, cfg.seed, cfg.eval.embedding_dims)
    recal = cfg.eval.recalibration
    p = apply_recalibration(probs.numpy().astype(float), recal)
    seed = derive_seed(cfg.seed, site.name, zlib.crc32(request.name.encode()))
    # the threshold was chosen on the raw probabilities (client.evaluation): calling a case
    # malignant at raw p >= t is calling it at recalibrated p >= recal(t), the map increasing
    threshold = cfg.eval.thresholds[0]
    at = float(apply_recalibration(np.array([threshold]), recal)[0])
    summary = window_summary(p, labels, cfg.eval, at, images, embedding, rules.min_cell, seed)
    summary = dataclasses.replace(summary, threshold=threshold if summary.threshold else None)
    scored = [wanted[data.case_ids[i]] for i in index]
    return summary, acquisition_json(scored, rules.min_cell)
