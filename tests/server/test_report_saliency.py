"""Where the model looks (eval.saliency) in the report: ``sites[].saliency`` from the
sites' summaries, its schema, the page's section and the terminal line.

A site sends the mean share of its Grad-CAM saliency inside the lesion, the chance level
(the mean share of the image the lesion covers) and the cases used; where it has liver
masks, the same for the liver outside the lesion (``saliency.liver``). The report adds
their ratios, null when the chance level is 0; a site that sent no liver share has no
``liver`` block and "not available" on the page and in the terminal. A report whose
sites sent none has no block, no section and no line.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from common.summary import SiteSummary
from server.designs import Evaluation
from server.report.build import build_report
from server.report.files import schema
from server.report.html import render_html
from server.report.model import Report
from server.report.schema import ReportError, validate
from server.report.terminal import format_summary
from tests.server.test_report_schema import PROVENANCE, SITES, classification, config


def looked(summary: SiteSummary, in_lesion: float, chance: float, n: int) -> SiteSummary:
    return replace(summary, saliency_lesion=in_lesion, saliency_chance=chance, saliency_n=n)


def in_liver(summary: SiteSummary, share: float, chance: float, n: int) -> SiteSummary:
    return replace(summary, saliency_liver=share, saliency_liver_chance=chance, saliency_liver_n=n)


A = in_liver(looked(classification(0.90, 0.001), 0.42, 0.12, 60), 0.30, 0.40, 50)
B = looked(classification(0.86, 0.0014), 0.30, 0.0, 58)  # a lesion that covers no pixel
E = in_liver(looked(classification(0.70, 0.002, 2.0), 0.15, 0.125, 60), 0.20, 0.25, 60)
C = classification(0.85, 0.001)  # its policy did not allow saliency: none sent
TINY = SiteSummary(6, 1, 5, insufficient=True)


def built(evals: list[Evaluation]) -> dict[str, Any]:
    """The report as JSON gives it back (NaN refused)."""
    report = build_report(evals, config(), SITES, provenance=PROVENANCE)
    return dict(json.loads(json.dumps(report, allow_nan=False)))


def with_saliency() -> dict[str, Any]:
    return built(
        [
            Evaluation("global", "a", "internal", "test", A),
            Evaluation("global", "b", "internal", "test", B),
            Evaluation("global", "c", "internal", "test", C),
            Evaluation("global", "e", "external", "test", E),
            Evaluation("global", "tiny", "external", "test", TINY),
        ]
    )


def without_saliency() -> dict[str, Any]:
    return built(
        [
            Evaluation("global", "a", "internal", "test", classification(0.90, 0.001)),
            Evaluation("global", "c", "internal", "test", C),
            Evaluation("global", "e", "external", "test", classification(0.70, 0.002, 2.0)),
        ]
    )


REPORT = with_saliency()


def row(report: dict[str, Any], site: str) -> dict[str, Any]:
    (found,) = [r for r in report["sites"] if r["site"] == site]
    return found


def test_each_row_carries_its_sites_saliency_and_the_ratio_to_chance() -> None:
    assert row(REPORT, "a")["saliency"] == {
        "in_lesion": 0.42,
        "chance": 0.12,
        "n": 60,
        "ratio": pytest.approx(3.5),
        "liver": {"in_liver": 0.30, "chance": 0.40, "n": 50, "ratio": pytest.approx(0.75)},
    }
    assert row(REPORT, "e")["saliency"] == {
        "in_lesion": 0.15,
        "chance": 0.125,
        "n": 60,
        "ratio": pytest.approx(1.2),
        "liver": {"in_liver": 0.20, "chance": 0.25, "n": 60, "ratio": pytest.approx(0.8)},
    }


def test_a_liver_chance_level_of_zero_gives_a_null_ratio() -> None:
    report = built([Evaluation("global", "a", "internal", "test", in_liver(A, 0.1, 0.0, 50))])
    assert row(report, "a")["saliency"]["liver"] == {
        "in_liver": 0.1, "chance": 0.0, "n": 50, "ratio": None}  # fmt: skip


def test_a_chance_level_of_zero_gives_a_null_ratio() -> None:
    assert row(REPORT, "b")["saliency"] == {
        "in_lesion": 0.30,
        "chance": 0.0,
        "n": 58,
        "ratio": None,
    }


def test_a_site_without_liver_shares_has_no_liver_block() -> None:
    assert "liver" not in row(REPORT, "b")["saliency"]  # no liver masks, or too few


def test_rows_without_saliency_have_no_block() -> None:
    assert "saliency" not in row(REPORT, "c")  # the site sent none
    assert "saliency" not in row(REPORT, "tiny")  # too few cases: counts only
    assert all("saliency" not in r for r in without_saliency()["sites"])


def test_the_reports_validate_against_the_schema_and_the_models() -> None:
    validator = Draft202012Validator(schema())
    for report in (REPORT, without_saliency()):
        assert list(validator.iter_errors(report)) == []
        validate(report)
        dumped = Report.model_validate(report).model_dump(mode="json", exclude_unset=True)
        assert dumped == report


@pytest.mark.parametrize(
    ("damage", "path"),
    [
        ({"in_lesion": 1.5}, ("sites", 0, "saliency", "in_lesion")),  # a share above 1
        ({"ratio": -1.0}, ("sites", 0, "saliency", "ratio")),
        ({"n": -1}, ("sites", 0, "saliency", "n")),
        ({"extra": 1}, ("sites", 0, "saliency")),
        ({"liver": None}, ("sites", 0, "saliency", "liver")),  # absent, never null
        ({"liver": {"in_liver": 1.5, "chance": 0.4, "n": 50, "ratio": 3.75}},
         ("sites", 0, "saliency", "liver", "in_liver")),
        ({"liver": {"in_liver": 0.3, "chance": 0.4, "n": 50}},
         ("sites", 0, "saliency", "liver")),  # no ratio
        ({"liver": {"in_liver": 0.3, "chance": 0.4, "n": -1, "ratio": 0.75}},
         ("sites", 0, "saliency", "liver", "n")),
    ],
)  # fmt: skip
def test_a_damaged_block_is_rejected_at_its_path(
    damage: dict[str, Any], path: tuple[Any, ...]
) -> None:
    damaged = copy.deepcopy(REPORT)
    assert damaged["sites"][0]["site"] == "a"
    damaged["sites"][0]["saliency"].update(damage)
    errors = Draft202012Validator(schema()).iter_errors(damaged)
    assert [tuple(e.absolute_path) for e in errors] == [path]
    with pytest.raises(ReportError, match="/".join(str(k) for k in path)):
        validate(damaged)


def test_an_insufficient_row_with_saliency_is_rejected() -> None:
    damaged = copy.deepcopy(REPORT)
    tiny = row(damaged, "tiny")
    tiny["saliency"] = {"in_lesion": 0.5, "chance": 0.1, "n": 6, "ratio": 5.0}
    assert list(Draft202012Validator(schema()).iter_errors(damaged))
    with pytest.raises(ReportError, match="saliency"):
        validate(damaged)


def _section(html: str) -> str:
    return html.split('<section id="saliency"', 1)[1].split("</section>", 1)[0]


def _table_row(section: str, site: str) -> str:
    (found,) = [r for r in section.split("<tr>") if f'class="site">{site}<' in r]
    return found


def test_the_page_has_the_section_with_each_sites_numbers() -> None:
    html = render_html(REPORT)
    assert 'href="#saliency"' in html
    section = _section(html)
    assert "Where the model looks" in section
    assert "MONAI" in section and "Grad-CAM" in section
    assert "no more than at random places of the crop" in section
    assert "In the liver outside the lesion" in section
    assert "no liver masks or fewer cases with one than its small-cell rule" in section
    a = _table_row(section, "a")
    assert all(v in a for v in ("42.0%", "12.0%", "3.50", ">60<", "global"))
    assert all(v in a for v in ("30.0%", "40.0%", "0.75", ">50<"))
    assert a.index("42.0%") < a.index("30.0%")  # the lesion's columns first
    assert "not available" not in a
    e = _table_row(section, "e")
    assert all(v in e for v in ("1.20", "20.0%", "25.0%", "0.80"))
    b = _table_row(section, "b")
    assert "0.0%" in b and "n/a" in b and ">58<" in b
    assert 'colspan="4" class="num"><span class="na">not available</span>' in b
    assert 'class="site">c<' not in section and 'class="site">tiny<' not in section
    # after the per-site table
    assert html.index('id="per-site"') < html.index('id="saliency"')


def test_a_page_without_saliency_has_no_section() -> None:
    html = render_html(without_saliency())
    assert 'id="saliency"' not in html and 'href="#saliency"' not in html
    assert "Where the model looks" not in html


def test_the_terminal_summary_has_one_line_per_site_with_saliency() -> None:
    lines = [line for line in format_summary(REPORT).splitlines() if "saliency" in line]
    assert lines == [
        "a (global): saliency in lesion 42.0% vs chance 12.0%, ratio 3.50 (n = 60); "
        "in liver outside it 30.0% vs chance 40.0%, ratio 0.75 (n = 50)",
        "b (global): saliency in lesion 30.0% vs chance 0.0%, ratio n/a (n = 58); "
        "in liver outside it not available",
        "e (global): saliency in lesion 15.0% vs chance 12.5%, ratio 1.20 (n = 60); "
        "in liver outside it 20.0% vs chance 25.0%, ratio 0.80 (n = 60)",
    ]
    assert "saliency" not in format_summary(without_saliency())
