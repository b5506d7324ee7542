"""A CT phantom over time: hospitals that acquire a batch of cases every month, with
scanner and protocol events, in the site data contract (docs/phantom.md, "Time: the
liver-timeline scenario").

``generate_timeline_phantom(spec, out_dir)`` writes the CT phantom's layout (``phantom``):
``phantom.json`` (with each site's events as ground truth) and one folder per site whose
``manifest.csv`` has the CT columns plus ``acquired`` and ``label_date``
(``common.dates``). Month m's cases are imaged with the site's parameters of that month
(``timeline_scenario.month_profile``) by the CT phantom's own ``phantom.write_case``, so an
event changes how the same patients are imaged, never who they are.

Random streams, besides the CT phantom's (``phantom.case_rng``): the labels of a monitored
month from ``(seed, crc32(site), month index, 4)``; a case's acquisition day, whether its
label arrives and its delay from ``(seed, crc32(site), case index, 5)``.
"""

from __future__ import annotations

import calendar
import dataclasses
import functools
import tomllib
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from common.dates import ACQUIRED, LABEL_DATE
from common.keys import Split
from simulations import phantom
from simulations.phantom import SiteWriter, case_rng, site_number, write_manifest, write_phantom
from simulations.scenario_schema import bundled_names, is_scenario_path, read_scenario_toml
from simulations.timeline_scenario import (
    TimelineScenario,
    TimelineSite,
    month_profile,
    parse_timeline_scenario,
    validate_timeline_scenario,
)

# bump whenever the same scenario and seed would give other files (or phantom.json changes)
TIMELINE_GENERATOR_VERSION = "timeline-1.0"
TIMELINE_FOLDER = ("scenarios", "timeline")  # inside the ``simulations`` package
# purposes no CT stream uses: case streams are 0-2, the val split 3 (``phantom``)
STREAM_MONTH_LABELS = 4
STREAM_TIMELINE = 5
_AFTER = phantom.MANIFEST_COLUMNS.index("split") + 1
MANIFEST_COLUMNS = (
    *phantom.MANIFEST_COLUMNS[:_AFTER],
    ACQUIRED,
    LABEL_DATE,
    *phantom.MANIFEST_COLUMNS[_AFTER:],
)


def labels_and_splits(spec: TimelineScenario, site: TimelineSite) -> tuple[np.ndarray, list[str]]:
    """Labels and splits of all the site's cases, in case order.

    The training months' cases are a CT site of their own (``phantom.labels_and_splits``
    on the month-1 profile with their count as ``n_cases``): exact prevalence, stratified
    test and val splits. Every later month has exactly round(prevalence x cases_per_month)
    malignant cases in an order of its own, all ``test``: a monitor selects them by date.
    """
    n = site.cases_per_month
    training = dataclasses.replace(site.profile, n_cases=n * spec.training_months)
    labels, splits = phantom.labels_and_splits(training, spec.seed)
    n_malignant = round(site.profile.prevalence * n)
    ordered = np.array([1] * n_malignant + [0] * (n - n_malignant), dtype=int)
    months = [labels]
    for month in range(spec.training_months, spec.months):  # 0-based: the monitored months
        stream = [spec.seed, site_number(site.profile.name), month, STREAM_MONTH_LABELS]
        months.append(np.random.default_rng(stream).permutation(ordered))
    monitored = (spec.months - spec.training_months) * n
    return np.concatenate(months), [*splits, *[Split.TEST.value] * monitored]


def case_dates(
    spec: TimelineScenario, site: TimelineSite, index: int, month: int
) -> tuple[date, date]:
    """When case ``index`` of month ``month`` was acquired (a day of that month), and when
    its label arrives: acquired + U{delay min..max} days, or ``spec.unlabelled_date`` for
    the (1 - label_share) of the monitored months' cases whose label never arrives (the
    training months' labels all arrive)."""
    rng = case_rng(spec.seed, site.profile.name, index, STREAM_TIMELINE)
    first = spec.month_start(month)
    days = calendar.monthrange(first.year, first.month)[1]
    acquired = first + timedelta(days=int(rng.integers(days)))
    arrives = rng.random() < spec.label_share or month <= spec.training_months
    low, high = spec.label_delay_days
    delay = timedelta(days=int(rng.integers(low, high + 1)))
    return acquired, acquired + delay if arrives else spec.unlabelled_date


def event_truth(spec: TimelineScenario, site: TimelineSite) -> list[dict[str, Any]]:
    """The site's events as ground truth: the month each starts (and a drift's last month),
    the first day affected, and every changed parameter's value before and after."""
    truth = []
    for event in site.events:
        before = month_profile(site, event.month - 1)
        after = month_profile(site, event.until or event.month)
        end = event.until or event.month
        truth.append(
            {
                "kind": event.kind,
                "effect": event.effect,
                "note": event.note,
                "month": event.month,
                "until": event.until,
                "first_day": spec.month_start(event.month).isoformat(),
                "complete_from": spec.month_start(end).isoformat(),
                "changes": {
                    key: {"from": getattr(before, key), "to": getattr(after, key)}
                    for key, _ in event.changes
                },
            }
        )
    return truth


def write_timeline_site(
    spec: TimelineScenario, site: TimelineSite, site_dir: Path
) -> dict[str, Any]:
    """Write one hospital's months of images, masks and manifest; return its summary."""
    (site_dir / "images").mkdir(parents=True)
    (site_dir / "masks").mkdir()
    labels, splits = labels_and_splits(spec, site)
    profiles = [month_profile(site, m) for m in range(1, spec.months + 1)]
    rows, n_bytes, n_labelled = [], 0, 0
    shape: tuple[int, ...] = ()
    for index in range(spec.months * site.cases_per_month):
        month = index // site.cases_per_month + 1
        row, written, case_shape = phantom.write_case(
            profiles[month - 1],
            spec.seed,
            spec.dims,
            site_dir,
            index,
            int(labels[index]),
            splits[index],
        )
        shape = shape or case_shape
        acquired, label_date = case_dates(spec, site, index, month)
        row[ACQUIRED], row[LABEL_DATE] = acquired.isoformat(), label_date.isoformat()
        n_labelled += label_date != spec.unlabelled_date
        rows.append(row)
        n_bytes += written
    manifest = write_manifest(site_dir, MANIFEST_COLUMNS, rows)
    return {
        "name": site.profile.name,
        "role": site.profile.role,
        "n_cases": len(rows),
        "cases_per_month": site.cases_per_month,
        "n_malignant": int(labels.sum()),
        "n_test": splits.count(Split.TEST.value),
        "n_val": splits.count(Split.VAL.value),
        "n_labelled": n_labelled,
        "matrix": list(shape),
        "bytes": n_bytes + len(manifest),
        "events": event_truth(spec, site),
    }


def _identity(spec: TimelineScenario) -> dict[str, Any]:
    """What makes two timeline phantoms the same; ``resolved_scenario.sites`` gives each
    site's total ``n_cases`` (what ``write_phantom`` checks a reused folder against)."""
    document = spec.to_dict()
    sites = document.pop("site")
    for table, site in zip(sites, spec.sites, strict=True):
        table["n_cases"] = spec.months * site.cases_per_month
    document["timeline"]["unlabelled_label_date"] = spec.unlabelled_date.isoformat()
    return {
        "scenario": spec.name,
        "seed": spec.seed,
        "dims": spec.dims,
        "generator_version": TIMELINE_GENERATOR_VERSION,
        "ct_generator_version": phantom.GENERATOR_VERSION,
        "resolved_scenario": {**document, "sites": sites},
    }


def generate_timeline_phantom(
    spec: TimelineScenario, out_dir: Path, seed: int | None = None
) -> Path:
    """Write (or reuse) the timeline scenario's phantom in ``out_dir``; return ``out_dir``.

    As ``phantom.generate_phantom``: ``seed`` replaces the scenario's seed; ScenarioError
    for a scenario that breaks a rule of the check, PhantomExistsError for an ``out_dir``
    that holds something it must not replace.
    """
    if seed is not None:
        spec = dataclasses.replace(spec, seed=int(seed))
    validate_timeline_scenario(spec)
    writers = [
        SiteWriter(
            site.profile.name,
            spec.months * site.cases_per_month,
            functools.partial(write_timeline_site, spec, site),
        )
        for site in spec.sites
    ]
    return write_phantom(spec, Path(out_dir), _identity(spec), writers)


def list_timeline_scenarios() -> list[str]:
    """Names of the bundled timeline scenarios (``simulations/scenarios/timeline/*.toml``)."""
    return bundled_names(TIMELINE_FOLDER)


def is_timeline_scenario(name_or_path: str | Path) -> bool:
    """Whether a scenario name or file is a timeline one: a bundled timeline name, or a file
    with a ``[timeline]`` table (anything else goes to the CT or MRI phantom)."""
    if not is_scenario_path(name_or_path):
        return str(name_or_path) in list_timeline_scenarios()
    try:
        return "timeline" in tomllib.loads(Path(name_or_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


def load_timeline_scenario(name_or_path: str | Path) -> TimelineScenario:
    """A bundled timeline scenario by name (``"liver-timeline"``) or a file by path."""
    data, file = read_scenario_toml(name_or_path, TIMELINE_FOLDER, "timeline")
    return parse_timeline_scenario(data, file)
