"""The manifest's optional dates (``acquired``, ``label_date``) and the time windows drawn
from them (``common.dates``)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import pytest

from common.dates import acquired_line, cases_in_window, labelled_by, parse_date
from common.manifest import Case, ManifestError, open_manifest, read_manifest

CHANNELS = ("arterial", "portal", "delayed")
TASK = "lesion-malignancy"


def with_dates(
    site: Path, cells: dict[int, tuple[str, str]], label: dict[int, str] | None = None
) -> None:
    """Add ``acquired`` and ``label_date`` columns: row index -> (acquired, label_date);
    rows not named get empty cells. ``label`` overrides label cells."""
    path = site / "manifest.csv"
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    for i, row in enumerate(rows):
        row["acquired"], row["label_date"] = cells.get(i, ("", ""))
        if label and i in label:
            row["label"] = label[i]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def case(
    cid: str, acquired: date | None, label: int | None = 1, label_date: date | None = None
) -> Case:
    return Case(cid, (), None, label, "test", 1, {}, acquired, label_date)


def test_dates_parse_and_stay_out_of_metadata(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=4)
    with_dates(
        site,
        {
            0: ("2024-01-15", "2024-02-01"),
            1: ("2024-03-02T14:35:10", ""),  # label known, its date not recorded
            2: ("2024-03-03 08:00", "2024-03-10T09:30Z"),
        },
    )
    m = read_manifest(site, CHANNELS, TASK)
    got = [(c.acquired, c.label_date) for c in m.cases]
    assert got == [
        (date(2024, 1, 15), date(2024, 2, 1)),
        (date(2024, 3, 2), None),
        (date(2024, 3, 3), date(2024, 3, 10)),
        (None, None),  # an empty cell: not recorded
    ]
    assert all(c.metadata == {"vendor": "test-vendor"} for c in m.cases)
    assert (
        acquired_line(m.cases)
        == "acquired: first 2024-01-15, last 2024-03-03, 1 case without a date"
    )
    # `hepafed site check` prints it with the site's summary
    from common.acquisition import format_survey, survey_site

    assert "  acquired: first 2024-01-15, last 2024-03-03, 1 case without a date" in (
        format_survey(survey_site(m))
    )


def test_manifest_without_date_columns_is_unchanged(site_factory: Callable[..., Path]) -> None:
    m = read_manifest(site_factory(n_cases=3), CHANNELS, TASK)
    assert all(c.acquired is None and c.label_date is None for c in m.cases)
    assert m.cases[0].metadata == {"vendor": "test-vendor"}
    assert acquired_line(m.cases) is None


def test_every_bad_date_is_named_in_one_error(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=7)
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    with_dates(
        site,
        {
            0: ("14/03/2024", ""),
            1: ("2025-13-01", ""),
            2: ("2024-05-01", "2024-04-30"),
            3: ("2024-05-01", "2024-06-01"),
            4: (tomorrow, ""),
            5: ("2024-05-01", f"{tomorrow}T10:00"),
            6: ("2024-02-30T10:00", "2024-06-01"),
        },
        label={3: ""},
    )
    with pytest.raises(ManifestError) as err:
        read_manifest(site, CHANNELS, TASK)
    msgs = {(p.case_id, p.field): str(p) for p in err.value.problems}
    assert len(msgs) == len(err.value.problems) == 8  # collected, not first-only
    assert msgs["site-a-000", "acquired"].endswith(
        "manifest.csv, row 1 (case 'site-a-000'): acquired: '14/03/2024' is not a date; "
        "write YYYY-MM-DD (e.g. 2025-03-14), or a timestamp YYYY-MM-DDTHH:MM[:SS]"
    )
    assert (
        "row 2 (case 'site-a-001'): acquired: '2025-13-01' is not a date (month must be in"
        in (msgs["site-a-001", "acquired"])
    )
    assert (
        "row 3 (case 'site-a-002'): label_date: 2024-04-30 is before the case's acquired date "
        "2024-05-01" in msgs["site-a-002", "label_date"]
    )
    assert (
        "row 4 (case 'site-a-003'): label_date: '2024-06-01' is given, but the label is empty: "
        "a case with a label date needs its label" in msgs["site-a-003", "label_date"]
    )
    assert "empty" in msgs["site-a-003", "label"]  # the task's own rule, reported beside it
    assert msgs["site-a-004", "acquired"].endswith(
        f"row 5 (case 'site-a-004'): acquired: '{tomorrow}' is in the future "
        f"(today is {date.today()}): check the clock or the export"
    )
    assert f"label_date: '{tomorrow}T10:00' is in the future" in msgs["site-a-005", "label_date"]
    assert (
        "row 7 (case 'site-a-006'): acquired: '2024-02-30T10:00' is not a date (day is out"
        in (msgs["site-a-006", "acquired"])
    )


def test_bad_date_spoils_its_case_only(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=3)
    with_dates(site, {0: ("2024-01-01", ""), 1: ("yesterday", "")})
    m = open_manifest(site, CHANNELS, TASK)
    assert [c.case_id for c in m.cases] == ["site-a-000", "site-a-001", "site-a-002"]
    assert list(m.row_problems) == ["site-a-001"]
    (p,) = m.row_problems["site-a-001"]
    assert p.field == "acquired" and p.case_id == "site-a-001"


def test_label_date_on_acquisition_day_is_allowed(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=2)
    with_dates(site, {0: ("2024-01-01", "2024-01-01")})  # same day: not before
    m = read_manifest(site, CHANNELS, TASK)
    assert m.cases[0].label_date == date(2024, 1, 1)


@pytest.mark.parametrize(
    ("text", "day"),
    [
        ("2024-03-14", date(2024, 3, 14)),
        (" 2024-03-14 ", date(2024, 3, 14)),
        ("2024-03-14T23:59", date(2024, 3, 14)),
        ("2024-03-14T23:59:59.5+02:00", date(2024, 3, 14)),  # the date as written
    ],
)
def test_parse_date_reduces_timestamps(text: str, day: date) -> None:
    assert parse_date(text) == day


@pytest.mark.parametrize(
    "text", ["20240314", "2024-3-14", "2024-03-14T10", "14.03.2024", "2024-03-14T25:00"]
)
def test_parse_date_refuses_other_forms(text: str) -> None:
    with pytest.raises(ValueError, match="is not a date.*write YYYY-MM-DD"):
        parse_date(text)


def test_cases_in_window_bounds() -> None:
    start, end = date(2024, 1, 1), date(2024, 2, 1)
    cases = [
        case("before", date(2023, 12, 31)),
        case("start", start),
        case("inside", date(2024, 1, 20)),
        case("last-day", date(2024, 1, 31)),
        case("end", end),
        case("undated", None),
    ]
    assert [c.case_id for c in cases_in_window(cases, start, end)] == [
        "start",
        "inside",
        "last-day",
    ]
    assert cases_in_window(cases, end, start) == []  # an empty window, not an error


def test_labelled_by() -> None:
    as_of = date(2024, 6, 1)
    assert labelled_by(case("no-date", date(2024, 1, 1)), as_of)  # label without a date: known
    assert labelled_by(case("on-day", date(2024, 1, 1), label_date=as_of), as_of)
    assert labelled_by(case("before", None, label=0, label_date=date(2024, 5, 31)), as_of)
    assert not labelled_by(case("later", date(2024, 1, 1), label_date=date(2024, 6, 2)), as_of)
    assert not labelled_by(case("unlabelled", date(2024, 1, 1), label=None), as_of)
