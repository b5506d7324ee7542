"""The timeline phantom: monthly batches, events, label arrival, determinism, the scenario
checks and `hepafed phantom` (docs/phantom.md, "Time: the liver-timeline scenario")."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import tomllib
from collections import Counter
from datetime import date
from pathlib import Path

import pytest

from common.cli import main
from common.manifest import read_manifest
from simulations import phantom
from simulations.scenario import Scenario, ScenarioError, list_scenarios
from simulations.timeline import (
    MANIFEST_COLUMNS,
    TIMELINE_GENERATOR_VERSION,
    case_dates,
    generate_timeline_phantom,
    is_timeline_scenario,
    labels_and_splits,
    list_timeline_scenarios,
    load_timeline_scenario,
)
from simulations.timeline_scenario import month_profile, parse_timeline_scenario

PHASES = ("arterial", "portal", "delayed")
# 4 sites x 6 months x 4 cases of 60 x 60 pixels: about a second to generate
TINY = """
name = "tiny-timeline"
seed = 5

[timeline]
start = "2023-03"
months = 6
training_months = 2
label_share = 0.5
label_delay_min_days = 10
label_delay_max_days = 40

[defaults]
cases_per_month = 4
fov_mm = 120.0
pixel_spacing_mm = 2.0
test_fraction = 0.5
prevalence = 0.5

[[site]]
name = "site-a"

[[site]]
name = "site-b"
cases_per_month = 3
[[site.event]]
month = 4
effect = "performance"
set = { vendor = "Toshiba", kvp = 80, kernel = "sharp", hu_offset = 12.0 }

[[site]]
name = "site-c"
[[site.event]]
month = 3
until = 5
effect = "performance"
to = { dose_factor = 0.4, arterial_delay_s = 45.0 }

[[site]]
name = "site-d"
[[site.event]]
month = 4
effect = "images"
set = { vendor = "Siemens", scanner_model = "go.Top", hu_offset = 5.0, noise_sigma_hu = 18.0 }
"""


def rows(out: Path, site: str) -> list[dict[str, str]]:
    with (out / site / "manifest.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def digests(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def month_of(spec_start: date, day: date) -> int:
    return (day.year - spec_start.year) * 12 + day.month - spec_start.month + 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny scenario's file and its phantom, generated once."""
    root = tmp_path_factory.mktemp("timeline")
    scenario = root / "tiny-timeline.toml"
    scenario.write_text(TINY)
    out = generate_timeline_phantom(load_timeline_scenario(scenario), root / "out")
    return scenario, out


def test_every_case_is_acquired_in_its_month_with_the_configured_counts(tiny):
    scenario, out = tiny
    spec = load_timeline_scenario(scenario)
    first = spec.month_start(1)
    for site in spec.sites:
        cases = rows(out, site.profile.name)
        assert list(cases[0]) == list(MANIFEST_COLUMNS)
        assert len(cases) == spec.months * site.cases_per_month
        months = [month_of(first, date.fromisoformat(r["acquired"])) for r in cases]
        # case order is month order, cases_per_month each
        assert months == [i // site.cases_per_month + 1 for i in range(len(cases))]
        assert Counter(months) == {m: site.cases_per_month for m in range(1, spec.months + 1)}


def test_training_months_are_a_ct_site_of_their_size_and_later_months_are_test(tiny, tmp_path):
    scenario, out = tiny
    spec = load_timeline_scenario(scenario)
    ct_sites = tuple(
        dataclasses.replace(s.profile, n_cases=spec.training_months * s.cases_per_month)
        for s in spec.sites
    )
    ct = phantom.generate_phantom(Scenario("ct", spec.seed, ct_sites), tmp_path / "ct")
    for site in spec.sites:
        cases = rows(out, site.profile.name)
        n_training = spec.training_months * site.cases_per_month
        ct_cases = rows(ct, site.profile.name)
        assert len(ct_cases) == n_training
        for r, c in zip(cases, ct_cases, strict=False):  # the same patients, split alike
            assert [r[k] for k in ("case_id", "label", "split", "lesion_type")] == [
                c[k] for k in ("case_id", "label", "split", "lesion_type")
            ]
            for column in (*(f"image_{p}" for p in PHASES), "mask"):
                image = (out / site.profile.name / r[column]).read_bytes()
                assert image == (ct / site.profile.name / c[column]).read_bytes()
        assert {r["split"] for r in cases[n_training:]} == {"test"}
        n = site.cases_per_month
        for month in range(spec.training_months, spec.months):  # exact prevalence per month
            labels = [int(r["label"]) for r in cases[month * n : (month + 1) * n]]
            assert sum(labels) == round(site.profile.prevalence * n)


def test_a_step_changes_the_metadata_exactly_at_its_month(tiny):
    _, out = tiny
    cases = rows(out, "site-b")
    by_month = {m: cases[(m - 1) * 3 : m * 3] for m in range(1, 7)}
    for month, batch in by_month.items():
        expected = ("80", "sharp", "Toshiba") if month >= 4 else ("120", "standard", "generic")
        assert {(r["kvp"], r["kernel"], r["vendor"]) for r in batch} == {expected}


def test_a_drift_is_monotone_over_its_months_and_then_holds(tiny):
    _, out = tiny
    cases = rows(out, "site-c")
    per_month = [
        {(float(r["dose_factor"]), float(r["arterial_delay_s"])) for r in cases[m * 4 : m * 4 + 4]}
        for m in range(6)
    ]
    assert all(len(values) == 1 for values in per_month)  # one protocol a month
    dose, arterial = zip(*(values.pop() for values in per_month), strict=True)
    assert dose[:2] == (1.0, 1.0) and arterial[:2] == (35.0, 35.0)  # months 1-2: unchanged
    assert dose[1] > dose[2] > dose[3] > dose[4] == 0.4 == dose[5]  # months 3-5, then held
    assert arterial[1] < arterial[2] < arterial[3] < arterial[4] == 45.0 == arterial[5]


def test_the_harmless_change_moves_the_scanner_not_the_lesion_contrast(tiny):
    scenario, _ = tiny
    spec = load_timeline_scenario(scenario)
    site = spec.sites[3]
    before, after = month_profile(site, 3), month_profile(site, 4)
    assert (before.vendor, after.vendor) == ("generic", "Siemens")
    assert (before.hu_offset, after.hu_offset, after.noise_sigma_hu) == (0.0, 5.0, 18.0)
    contrast = ("kvp", "kernel", "slice_thickness_mm", "dose_factor", "hu_scale", "bias_field")
    timing = ("arterial_delay_s", "portal_delay_s", "delayed_delay_s", "bolus_jitter_s")
    for key in (*contrast, *timing):
        assert getattr(before, key) == getattr(after, key), key
    # the bundled scenario's hospital-d changes nothing else either
    bundled = {s.profile.name: s for s in load_timeline_scenario("liver-timeline").sites}
    (event,) = bundled["hospital-d"].events
    assert {k for k, _ in event.changes} == {
        "vendor",
        "scanner_model",
        "hu_offset",
        "noise_sigma_hu",
    }
    assert event.effect == "images"


def test_phantom_json_lists_the_events_as_ground_truth(tiny):
    _, out = tiny
    doc = json.loads((out / "phantom.json").read_text())
    assert doc["generator_version"] == TIMELINE_GENERATOR_VERSION
    sites = {s["name"]: s for s in doc["sites"]}
    assert sites["site-a"]["events"] == []
    (step,) = sites["site-b"]["events"]
    assert step["kind"] == "step" and step["month"] == 4 and step["first_day"] == "2023-06-01"
    assert step["changes"]["kvp"] == {"from": 120, "to": 80}
    assert step["effect"] == "performance"
    (drift,) = sites["site-c"]["events"]
    assert (drift["kind"], drift["month"], drift["until"]) == ("drift", 3, 5)
    assert drift["changes"]["dose_factor"] == {"from": 1.0, "to": 0.4}
    assert drift["complete_from"] == "2023-07-01"
    assert sites["site-d"]["events"][0]["effect"] == "images"


def test_patients_do_not_depend_on_events_and_images_change_only_from_the_event(tiny, tmp_path):
    scenario, out = tiny
    spec = load_timeline_scenario(scenario)
    plain = dataclasses.replace(
        spec, sites=tuple(dataclasses.replace(s, events=()) for s in spec.sites)
    )
    other = generate_timeline_phantom(plain, tmp_path / "plain")
    with_event, without = rows(out, "site-b"), rows(other, "site-b")
    for a, b in zip(with_event, without, strict=True):
        same = ("label", "split", "acquired", "label_date", "lesion_type", "lesion_size_mm")
        assert [a[k] for k in same] == [b[k] for k in same]
        image_a = (out / "site-b" / a["image_portal"]).read_bytes()
        image_b = (other / "site-b" / b["image_portal"]).read_bytes()
        month = (int(a["case_id"][-4:]) - 1) // 3 + 1  # site-b: 3 cases a month
        assert (image_a == image_b) == (month < 4), a["case_id"]


def test_label_dates_follow_the_delay_and_never_arriving_labels_get_the_late_date(tiny):
    scenario, out = tiny
    spec = load_timeline_scenario(scenario)
    low, high = spec.label_delay_days
    assert spec.unlabelled_date == date(2024, 2, 29)  # last day of month 6 + 6 months
    for site in spec.sites:
        n_training = spec.training_months * site.cases_per_month
        for i, r in enumerate(rows(out, site.profile.name)):
            acquired, arrives = (
                date.fromisoformat(r["acquired"]),
                date.fromisoformat(r["label_date"]),
            )
            assert r["label"] in ("0", "1")  # every case keeps its label cell
            if arrives == spec.unlabelled_date:
                assert i >= n_training  # a training case's label always arrives
            else:
                assert low <= (arrives - acquired).days <= high


def test_the_share_of_labels_that_arrive_is_label_share_within_binomial_noise():
    spec = parse_timeline_scenario(tomllib.loads(TINY), "tiny.toml")
    spec = dataclasses.replace(spec, months=40, training_months=1, label_share=0.7)
    site = dataclasses.replace(spec.sites[0], cases_per_month=30)
    dates = [
        case_dates(spec, site, i, i // 30 + 1) for i in range(30, spec.months * 30)
    ]  # 1170 monitored cases; their images are not needed
    share = sum(d[1] != spec.unlabelled_date for d in dates) / len(dates)
    # four binomial standard deviations: sqrt(0.7 x 0.3 / 1170) = 0.013
    assert abs(share - 0.7) <= 4 * math.sqrt(0.7 * 0.3 / len(dates))
    labels, _ = labels_and_splits(spec, site)
    assert len(labels) == spec.months * 30


def test_a_site_reads_the_timeline_manifest_with_its_dates(tiny):
    _, out = tiny
    manifest = read_manifest(out / "site-b", PHASES, "lesion-malignancy")
    assert len(manifest.cases) == 18
    assert manifest.cases[0].acquired == date.fromisoformat(rows(out, "site-b")[0]["acquired"])
    for case in manifest.cases:
        assert case.acquired is not None and case.label_date is not None
        assert case.label_date >= case.acquired


def test_same_scenario_and_seed_give_identical_files_through_the_cli(tiny, tmp_path, capsys):
    scenario, out = tiny
    again = tmp_path / "again"
    assert main(["phantom", "--scenario", str(scenario), "--out", str(again)]) == 0
    assert "timeline phantom 'tiny-timeline' (4 sites, 6 months from 2023-03)" in (
        capsys.readouterr().out
    )
    assert digests(again) == digests(out)
    reseeded = generate_timeline_phantom(load_timeline_scenario(scenario), tmp_path / "s6", 6)
    assert (reseeded / "site-a" / "images" / "site-a-0001_portal.nii.gz").read_bytes() != (
        out / "site-a" / "images" / "site-a-0001_portal.nii.gz"
    ).read_bytes()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("month = 4\neffect", "month = 9\neffect"),
            "bad.toml: site[1].event[0].month = 9: must be in [1, 6] (months)",
        ),
        (
            ("kvp = 80,", "kvpp = 80,"),
            "bad.toml: site[1].event[0].set.kvpp = 80: unknown key; an event may change vendor",
        ),
        (
            ("kvp = 80,", "kvp = 60,"),
            "bad.toml: site[1].event[0].set.kvp = 60: must be in [70, 150]",
        ),
        (
            ("until = 5", "until = 3"),
            "bad.toml: site[2].event[0].until = 3: must be after month",
        ),
        (
            ("to = { dose_factor = 0.4,", 'to = { kernel = "sharp", dose_factor = 0.4,'),
            "bad.toml: site[2].event[0].to.kernel = 'sharp': a drift moves numbers only",
        ),
        (
            ('effect = "images"', 'effect = "maybe"'),
            "bad.toml: site[3].event[0].effect = 'maybe': must be one of 'performance', 'images'",
        ),
        (
            ("arterial_delay_s = 45.0", "arterial_delay_s = 45.0, portal_delay_s = 44.0"),
            "bad.toml: site[2].event: in month 5 the phases are at 45 / 44 / 180 s",
        ),
        (
            ('start = "2023-03"', 'start = "2999-01"'),  # a timeline in the future
            "bad.toml: timeline.start = '2999-01': the timeline's last date",
        ),
        (
            ("cases_per_month = 3", "n_cases = 3"),
            "bad.toml: site[1].n_cases = 3: set by the timeline",
        ),
    ],
)
def test_a_bad_timeline_is_a_scenario_error_naming_the_field(change, expected):
    old, new = change
    assert old in TINY
    with pytest.raises(ScenarioError) as err:
        parse_timeline_scenario(tomllib.loads(TINY.replace(old, new, 1)), "bad.toml")
    assert expected in str(err.value), str(err.value)


def test_the_bundled_timeline_is_found_by_name_and_only_as_a_timeline(tiny):
    scenario, _ = tiny
    assert list_timeline_scenarios() == ["liver-timeline"]
    assert "liver-timeline" not in list_scenarios()  # the CT loader never sees it
    assert is_timeline_scenario("liver-timeline") and is_timeline_scenario(scenario)
    assert not is_timeline_scenario("liver-5") and not is_timeline_scenario("nope.toml")
    spec = load_timeline_scenario("liver-timeline")
    assert (spec.start, spec.months, spec.training_months) == ("2024-01", 24, 6)
    events = {s.profile.name: [(e.kind, e.month, e.until) for e in s.events] for s in spec.sites}
    assert events == {
        "hospital-a": [],
        "hospital-b": [("step", 13, None)],
        "hospital-c": [("drift", 13, 24)],
        "hospital-d": [("step", 16, None)],
    }
    assert {s.cases_per_month for s in spec.sites} == {60}
