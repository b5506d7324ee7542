"""report.html: content, escaping, self-containment, odd report shapes, and a real browser.

The pure-Python tests read the HTML as text. The Chromium tests load the page
in headless Chromium (``/usr/bin/chromium``): they are skipped where it is not
installed, unless ``HEPAFED_REQUIRE_CHROMIUM=1`` (set in CI), which makes a
missing browser a failure.
"""

from __future__ import annotations

import copy
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from html.parser import HTMLParser
from importlib.resources import files
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from jinja2 import UndefinedError

from server.report.html import environment, render_html
from server.report.html.format import fmt, fmt_ci, fmt_p, fmt_sig
from server.report.html.view import read_page
from server.report.terminal import format_summary
from tests.server.test_report_schema import (
    EXAMPLES,
    NOT_FITTED,
    RECALIBRATED,
    RECALIBRATION,
    example,
    fixed_choice,
    holdout_with_problems,
    loso_report,
    recalibrated_report,
    segmentation_report,
    threshold_choice,
)

CHROMIUM = Path("/usr/bin/chromium")
ALLOWED_URLS = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xhtml"}
EVIL = '<script>alert("x")</script> & Co'
VOID = {"meta", "br", "hr", "img", "input", "link", "wbr", "col", "source"}


def page(report: dict[str, Any]) -> str:
    return render_html(report)


def site_names(report: dict[str, Any]) -> set[str]:
    names = {r["site"] for r in report["sites"]}
    names |= {s["name"] for s in report["sites_joined"]}
    return names | {c["site"] for c in report["matrix"]}


class TagBalance(HTMLParser):
    """Fails on a closing tag that does not match the open one (void elements aside)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()


# ---- pure Python ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXAMPLES)
def test_page_has_every_site_flag_and_figure(name: str) -> None:
    report = example(name)
    html = page(report)
    assert html.startswith("<!DOCTYPE html>")
    for site in site_names(report):
        assert site in html
    for flag in report["flags"]:
        assert flag["message"] in html  # plain text in these examples, so escaping is a no-op
    assert html.count('class="chart forest-svg"') == 3  # AUC, sensitivity, specificity
    for fig in ('id="forest-auc"', 'id="forest-sensitivity"', 'id="forest-specificity"'):
        assert fig in html
    models = {c["model"] for c in report["curves"]["roc"]}
    assert html.count('class="chart roc-svg"') == len(models)
    assert html.count('class="chart reliability-svg"') == len(report["curves"]["reliability"])
    assert html.count('class="chart scatter-svg"') == 1
    assert 'class="report-version">1.1<' in html
    assert html.count("<svg") == html.count("</svg>")
    assert f"Spearman \u03c1 = {report['drift_vs_degradation']['spearman']['rho']:.2f}" in html


def test_loso_page_has_the_per_fold_table() -> None:
    report = example("report-loso.json")
    html = page(report)
    assert "Per fold (leave-one-site-out)" in html
    for fold in report["folds"]:
        assert f'<td class="model">{fold["model"]}</td>' in html
    # hospital-e, the designated external site, is scored by every fold: one row each
    rows = [r for r in report["sites"] if r["site"] == "hospital-e"]
    assert len(rows) == len(report["folds"])
    assert "Joined but without a row here" not in html


def test_page_is_self_contained() -> None:
    for name in EXAMPLES:
        html = page(example(name))
        urls = set(re.findall(r"https?://[^\s\"'<>)]+", html))
        assert urls <= ALLOWED_URLS, urls - ALLOWED_URLS
        lowered = html.lower()
        for forbidden in ("<script", "<link", "@import", "url(", "src=", "<img", "<iframe"):
            assert forbidden not in lowered, forbidden


def test_page_is_well_formed_and_accessible() -> None:
    html = page(example("report-loso.json"))
    checker = TagBalance()
    checker.feed(html)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    svgs = re.findall(r"<svg [^>]*>", html)
    assert svgs and all('role="img"' in s and "aria-labelledby=" in s for s in svgs)
    assert html.count("<svg") == html.count("<title id=")
    tables = html.count("<table")
    assert tables and html.count("<thead>") == tables
    assert '<html lang="en">' in html and '<meta charset="utf-8">' in html
    ids = re.findall(r' id="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "duplicate element ids"


def test_site_names_from_hospitals_are_escaped() -> None:
    text = json.dumps(example("report-holdout.json"))
    report = json.loads(text.replace("hospital-a", json.dumps(EVIL)[1:-1]))
    report["flags"].append(
        {
            "site": EVIL,
            "model": "global",
            "role": "internal",
            "kind": "drop-exceeds-margin",
            "message": f"{EVIL}: AUC 0.658 is 0.032 below the pooled internal AUC",
        }
    )
    html = page(report)
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co" in html
    # in attributes too (tooltips, aria labels): no raw "<" or unescaped quote inside a value
    assert not re.search(r'(title|aria-label)="[^"]*<', html)
    assert 'title="&lt;script&gt;alert(&quot;x&quot;)' in html  # the flag marker's tooltip
    assert "<title>&lt;script&gt;alert(&quot;x&quot;)" in html  # SVG tooltips


def _joined_row(html: str, site: str) -> str:
    """The row of the "Sites that joined" table for one site."""
    table = html[html.index("<caption>Sites that joined") :]
    table = table[: table.index("</table>")]
    row = table[table.index(f'<th scope="row" class="site">{site}</th>') :]
    return row[: row.index("</tr>")]


def test_sites_that_joined_show_their_acquisition() -> None:
    html = page(example(EXAMPLES[0]))
    assert '<th scope="col">Vendor</th><th scope="col">Scanner model</th>' in html
    assert '<th scope="col">Kernel</th><th scope="col">Slice thickness (mm)</th>' in html
    row = _joined_row(html, "hospital-b")
    assert "<td>GE</td><td>Revolution CT</td><td>soft</td>" in row
    assert '<td class="num">2.5</td>' in row
    built = page(holdout_with_problems())
    row = _joined_row(built, "a")  # several vendors: each with its case count, thickness range
    assert "<td>GE (100), Siemens (50)</td>" in row and "<td>STANDARD (100), Br40 (50)</td>" in row
    assert '<td class="num">0.625&ndash;2.5</td>' in row
    row = _joined_row(built, "c")  # a site that sent no acquisition summary
    assert row.count('class="na">n/a</td>') == 3 and 'class="num na">n/a</td>' in row


def test_validation_counts_get_a_column_only_when_recorded() -> None:
    """Sites that sent their val count show it between training and test cases; a report
    from before the count was recorded keeps the old columns."""
    report = example(EXAMPLES[0])
    assert not any("n_val" in s for s in report["sites_joined"])
    assert "Validation cases" not in page(report)
    for s in report["sites_joined"]:
        s["n_val"] = 7 if s["name"] == "hospital-b" else 0
    html = page(report)
    assert '<th scope="col">Training cases</th><th scope="col">Validation cases</th>' in html
    b = next(s for s in report["sites_joined"] if s["name"] == "hospital-b")
    cells = (
        f'<td class="num">{b["n_train"]}</td><td class="num">7</td><td class="num">{b["n_test"]}'
    )
    assert cells in _joined_row(html, "hospital-b")


def test_acquisition_values_from_hospitals_are_escaped() -> None:
    report = example(EXAMPLES[0])
    report["sites_joined"][0]["acquisition"]["vendor"] = {EVIL: 180}
    html = page(report)
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_rendering_is_deterministic() -> None:
    report = example("report-loso.json")
    first = page(report)
    assert page(copy.deepcopy(report)) == first
    assert page(json.loads(json.dumps(report))) == first


def test_insufficient_site_missing_report_and_flags() -> None:
    report = holdout_with_problems()
    html = page(report)
    assert "Insufficient data: 6 cases (1 malignant, 5 benign)" in html
    assert "did not report an evaluation of global" in html
    assert "No evaluation received" in html
    assert html.count('class="flag"') == len(report["flags"])


def test_skipped_cases_are_shown_with_the_site_count() -> None:
    html = page(holdout_with_problems())
    assert "skipped cases: 2 (b-003, b-011)" in html
    assert html.count("skipped cases:") == 1  # only the site that skipped some
    summary = format_summary(holdout_with_problems())  # the terminal summary says it too
    assert "b (global): skipped cases: 2 (b-003, b-011), not in n" in summary


def _table(html: str, caption: str) -> str:
    """The table whose caption starts with ``caption``, from its caption to its end."""
    start = html.index(f"<caption>{caption}")
    return html[start : html.index("</table>", start)]


def _recalibration_row(table: str, site: str) -> list[str]:
    """The four before -> after cells of a site's row in the recalibration table."""
    row = table[table.index(f'<th scope="row" class="site">{site}<') :]
    row = row[: row.index("</tr>")]
    return re.findall(r'<td class="num">([^<]*)</td>', row)


def test_calibration_before_and_after_recalibration_is_a_table() -> None:
    report = recalibrated_report()
    html = page(report)
    checker = TagBalance()
    checker.feed(html)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    table = _table(html, "Before and after recalibration")
    assert "<caption>Before and after recalibration</caption>" in table  # one model
    rows = {r["site"]: r["calibration"] for r in report["sites"]}
    for site, after in RECALIBRATED.items():
        before = rows[site]
        assert _recalibration_row(table, site) == [
            f"{fmt(before['ece'])} \u2192 {fmt(after['ece'])}",
            f"{fmt(before['brier'])} \u2192 {fmt(after['brier'])}",
            f"{fmt(before['citl']['estimate'], 2)} \u2192 {fmt(after['citl']['estimate'], 2)}",
            f"{fmt(before['slope']['estimate'], 2)} \u2192 {fmt(after['slope']['estimate'], 2)}",
        ]
    # the numbers themselves: site a's bins were off by 0.05 before, 0.0412 after
    assert _recalibration_row(table, "a") == [
        "0.050 \u2192 0.041",
        "0.123 \u2192 0.092",
        "0.10 \u2192 0.02",
        "0.90 \u2192 1.04",
    ]
    assert _recalibration_row(table, "e")[1:3] == ["0.100 \u2192 n/a", "0.10 \u2192 \u22120.11"]
    assert '<th scope="row" class="site">b<' not in table  # b's row has no recalibration
    # the sentence above it: the map, a and b, the validation sites and cases, never test
    sentence = html[html.index("The probabilities of model global") :]
    sentence = sentence[: sentence.index("</p>")]
    assert sentence == (
        "The probabilities of model global were recalibrated as p\u2032 = expit(a + b\u00b7logit "
        "p) with a = \u22120.214 and b = 0.873, fitted on the validation splits of sites a, b "
        "(104 cases in 14 calibration groups), never on test cases."
    )
    assert html.index(sentence) < html.index("<caption>Before and after recalibration")
    # the threshold choice says it in one line under the model's threshold
    choices = _table(html, "Operating thresholds and recalibration, chosen on validation data")
    assert (
        '<tr class="recal"><td colspan="5">Recalibration (logistic): a = \u22120.214, '
        "b = 0.873, fitted on 104 validation cases of sites a, b</td></tr>"
    ) in choices
    assert '<td class="model" rowspan="2">global</td><td class="num">0.50</td>' in choices
    assert "Calibration columns are for the model's own probabilities" in html


def test_each_model_has_its_own_recalibration_sentence_and_table() -> None:
    report = loso_report()
    models = sorted({r["model"] for r in report["sites"]})
    report["settings"]["threshold_choices"] = [
        threshold_choice(m, recalibration={**RECALIBRATION, "intercept": i / 10, "n": 100 + i})
        for i, m in enumerate(models)
    ]
    for i, row in enumerate(report["sites"]):
        row["calibration"]["recalibrated"] = {**RECALIBRATED["a"], "ece": i / 100}
    html = page(report)
    for i, model in enumerate(models):
        assert (
            f"The probabilities of model {model} were recalibrated as p\u2032 = expit(a + "
            f"b\u00b7logit p) with a = {fmt(i / 10)} and b = 0.873, fitted on the validation "
            f"splits of sites a, b ({100 + i} cases in 14 calibration groups)"
        ) in html
        table = _table(html, f"Before and after recalibration, model {model}")
        rows = [(j, r) for j, r in enumerate(report["sites"]) if r["model"] == model]
        assert table.count('<th scope="row"') == len(rows)
        for j, row in rows:
            assert f"{fmt(row['calibration']['ece'])} \u2192 {fmt(j / 100)}" in table


def test_a_report_without_recalibration_has_no_before_and_after_table() -> None:
    for report in (*(example(n) for n in EXAMPLES), holdout_with_problems(), loso_report()):
        html = page(report)
        assert "Before and after recalibration" not in html
        assert "expit" not in html and 'class="recal"' not in html
        assert "Recalibration" not in html and "after recalibration" not in html
        assert read_page(report).calibration.recalibrated == ()


def test_a_fixed_threshold_with_a_recalibration_says_it_is_fixed() -> None:
    html = page(recalibrated_report(fixed_choice()))
    choices = _table(html, "Recalibration, fitted on validation data only")
    assert "operating thresholds fixed</caption>" in choices
    assert '<td class="num">0.50<span class="ci">fixed</span></td>' in choices
    assert "<td>Threshold fixed, not chosen: eval.threshold-rule = &#x27;fixed&#x27;</td>" in (
        choices
    )
    assert "a = \u22120.214, b = 0.873, fitted on 104 validation cases of sites a, b" in choices
    assert "at threshold 0.5." in html and "chosen by" not in html  # not "chosen by Youden"
    assert "<caption>Before and after recalibration</caption>" in html


def test_a_recalibration_not_fitted_says_why_escaped() -> None:
    not_fitted = {**NOT_FITTED, "reason": f"{EVIL}: nothing applied", "sites": [EVIL]}
    report = recalibrated_report(threshold_choice(recalibration=not_fitted))
    for row in report["sites"]:
        row["calibration"].pop("recalibrated", None)  # nothing applied: no "after"
    html = page(report)
    assert (
        '<tr class="recal"><td colspan="5">Recalibration not fitted: &lt;script&gt;alert('
        "&quot;x&quot;)&lt;/script&gt; &amp; Co: nothing applied</td></tr>"
    ) in html
    assert "<script" not in html.lower() and "Before and after recalibration" not in html
    summary = format_summary(report)
    assert f"  Recalibration not fitted: {EVIL}: nothing applied" in summary.splitlines()


def test_the_terminal_summary_shows_the_recalibration_and_ece_before_and_after() -> None:
    lines = format_summary(recalibrated_report()).splitlines()
    assert (
        "a (global): recalibrated: ECE 0.050 \u2192 0.041, Brier 0.123 \u2192 0.092, "
        "CITL 0.10 \u2192 0.02, slope 0.90 \u2192 1.04"
    ) in lines
    assert (
        "e (global): recalibrated: ECE 0.000 \u2192 0.063, Brier 0.100 \u2192 n/a, "
        "CITL 0.10 \u2192 -0.11, slope 0.90 \u2192 0.97"
    ) in lines
    assert not any(line.startswith("b (global): recalibrated") for line in lines)
    at = lines.index(
        "operating threshold of global: 0.5 (youden; validation at a, b): largest pooled "
        "sensitivity + specificity - 1 = 0.538"
    )
    assert lines[at + 1] == (
        "  Recalibration (logistic): a = -0.214, b = 0.873, fitted on 104 validation cases "
        "of sites a, b"
    )
    fixed = format_summary(recalibrated_report(fixed_choice())).splitlines()
    at = fixed.index(
        "operating threshold of global: 0.5 (fixed, not chosen): eval.threshold-rule = 'fixed'"
    )
    assert fixed[at + 1].startswith("  Recalibration (logistic): a = -0.214, b = 0.873,")
    plain = format_summary(holdout_with_problems())
    assert "Recalibration" not in plain and "recalibrated" not in plain


def test_null_pooled_blocks_and_empty_curves() -> None:
    report = example("report-holdout.json")
    report["pooled"] = {"internal": None, "external": None, "difference": None}
    report["gaps"] = []
    report["drift_vs_degradation"]["points"] = []
    report["drift_vs_degradation"]["spearman"] = {"rho": None, "p": None, "n": 0}
    report["curves"]["roc"] = []
    report["curves"]["reliability"] = []
    report["sites"][0]["auc"]["lo"] = None  # NaN-safe nulls inside a row too
    report["sites"][1]["calibration"]["slope"] = {"estimate": None, "lo": None, "hi": None}
    html = page(report)
    assert "Needs both a pooled internal and a pooled external AUC." in html
    assert "No pooled internal AUC." in html
    assert "No site sent a ROC curve." in html
    assert "No site sent calibration bins." in html
    assert "Spearman \u03c1 not computed" in html
    assert 'class="chart forest-svg"' in html and "roc-svg" not in html


def test_segmentation_report() -> None:
    report = segmentation_report()
    html = page(report)
    assert "Lesion segmentation" in html
    assert "Dice, mean (95% CI)" in html and "HD95, mm (cases)" in html
    assert 'id="forest-dice"' in html
    assert "Insufficient data: 5 cases" in html
    assert "Not applicable to segmentation." in html
    assert "AUC (95% CI)" not in html
    for site in ("a", "b", "e", "tiny"):
        assert f'<th scope="row" class="site">{site}<' in html


def test_built_loso_report_with_designated_external_site() -> None:
    report = loso_report()
    html = page(report)
    assert "Leave-one-site-out" in html
    assert "Fold model" in html and "without-a" in html


def test_number_formats() -> None:
    assert fmt(0.65800001) == "0.658"
    assert fmt(-0.0144) == "\u22120.014"
    assert fmt(-0.0001) == "0.000"  # no negative zero
    assert fmt(0.11, signed=True) == "+0.110"
    assert fmt(None) == fmt(float("nan")) == "n/a"
    assert fmt_p(0.08330888) == "0.083"
    assert fmt_p(0.0004) == "<0.001"
    assert fmt_p(1.0) == ">0.999"
    assert fmt_ci(0.495, 0.821) == "0.495\u20130.821"
    assert fmt_ci(-0.0144, 0.234) == "\u22120.014 to 0.234"
    assert fmt_sig(0.0026168) == "0.00262"
    assert fmt_sig(0.1686) == "0.169"
    assert fmt_sig(3.17e-5) == "3.17\u00d710\u207b\u2075"


# ---- the templates: escaping, strictness, inline CSS, no runtime imports ---------------------


class PageText(HTMLParser):
    """The text of a page by the element it is in (tables and SVG charts apart)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.cells: list[str] = []  # text in table cells
        self.chart: list[str] = []  # text in an SVG's <title>, <desc> or <text>

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.open:
            del self.open[len(self.open) - 1 - self.open[::-1].index(tag) :]

    def handle_data(self, data: str) -> None:
        if "svg" in self.open and self.open[-1] in ("title", "desc", "text"):
            self.chart.append(data)
        elif "td" in self.open or "th" in self.open:
            self.cells.append(data)


def test_names_from_hospitals_are_escaped_in_tables_and_charts() -> None:
    script, amp = "<script>alert(1)</script>", "a & b"
    text = json.dumps(example("report-holdout.json"))
    text = text.replace("hospital-a", script).replace("hospital-b", amp)
    html = page(json.loads(text))
    assert "<script" not in html and "a & b" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "a &amp; b" in html
    # escaped, the names still read as themselves: in the tables and in the charts
    reader = PageText()
    reader.feed(html)
    reader.close()
    for name in (script, amp):
        assert any(name in t for t in reader.cells), name
        assert any(name in t for t in reader.chart), name
    # inside the charts' markup too (SVG <title>, <text>, aria-label)
    charts = "".join(re.findall(r"<svg .*?</svg>", html, flags=re.S))
    assert "a &amp; b" in charts and "&lt;script&gt;alert(1)" in charts
    assert "<script" not in charts and "a & b" not in charts


def test_a_template_naming_a_missing_view_attribute_fails() -> None:
    view = read_page(example("report-holdout.json"))
    with pytest.raises(UndefinedError, match="no_such_section"):
        environment().from_string("<p>{{ page.no_such_section }}</p>").render(page=view)
    with pytest.raises(UndefinedError):  # a real partial, given a page without its section
        environment().get_template("_footer.html.j2").render(page=SimpleNamespace())
    autoescape = environment().autoescape
    assert callable(autoescape) and autoescape("page.html.j2") and autoescape("x.html")
    assert environment().from_string("{{ x }}").render(x="a & b") == "a &amp; b"


def test_the_css_file_is_inlined() -> None:
    html = page(example("report-holdout.json"))
    css = files("server.report.html").joinpath("report.css").read_text(encoding="utf-8")
    assert "<link" not in html.lower()
    assert re.findall(r"<style>(.*?)</style>", html, flags=re.S) == [css]
    assert "--flagbg" in css


def test_rendering_imports_nothing_of_the_runtime() -> None:
    script = (
        "import json, sys\n"
        "from server.report.html import render_html\n"
        "report = json.load(open(sys.argv[1], encoding='utf-8'))\n"
        "assert render_html(report).startswith('<!DOCTYPE html>')\n"
        "loaded = [m for m in ('torch', 'flwr', 'monai', 'server.federation') "
        "if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    report = Path(__file__).parent / "data" / "reports" / "holdout" / "report.json"
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script, str(report)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# ---- headless Chromium -----------------------------------------------------------------------


def require_chromium() -> Path:
    """The browser; skip without it, or fail when CI demands it (HEPAFED_REQUIRE_CHROMIUM=1)."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.environ.get("HEPAFED_REQUIRE_CHROMIUM") == "1":
        pytest.fail(
            f"HEPAFED_REQUIRE_CHROMIUM=1 but {CHROMIUM} is missing: "
            "apt-get install chromium (Debian/Ubuntu) to run the browser tests"
        )
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")


def run_chromium(
    chromium: Path, tmp_path: Path, html_file: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    cmd = [
        str(chromium),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        # any network request would fail and be logged as a console error
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
        html_file.as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def console_problems(stderr: str) -> list[str]:
    """Console messages (any, since the page has no script) and uncaught errors."""
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]


@pytest.mark.parametrize("name", EXAMPLES)
def test_chromium_loads_the_page(tmp_path: Path, name: str) -> None:
    chromium = require_chromium()
    report = example(name)
    html_file = tmp_path / "report.html"
    html_file.write_text(page(report), encoding="utf-8")
    done = run_chromium(chromium, tmp_path, html_file, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    for site in site_names(report):
        assert site in dom
    for cls in ("forest-svg", "roc-svg", "reliability-svg", "scatter-svg"):
        assert f"chart {cls}" in dom, cls
    assert dom.count("<svg") >= 6
    assert console_problems(done.stderr) == []


def test_chromium_screenshot_is_not_blank(tmp_path: Path) -> None:
    chromium = require_chromium()
    html_file = tmp_path / "report.html"
    html_file.write_text(page(example("report-holdout.json")), encoding="utf-8")
    png = tmp_path / "report.png"
    done = run_chromium(
        chromium, tmp_path, html_file, f"--screenshot={png}", "--window-size=1280,2400"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert png.exists() and png.stat().st_size > 20_000
    width, height, pixels = read_png(png.read_bytes())
    assert (width, height) == (1280, 2400)
    colours = set(pixels)
    assert len(colours) > 200, f"only {len(colours)} distinct colours: blank page?"
    white = pixels.count((255, 255, 255))
    assert white < 0.9 * len(pixels)
    assert console_problems(done.stderr) == []


def read_png(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Width, height and RGB pixels (every 7th column) of an 8-bit RGB(A) PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = bpp = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0 and colour_type in (2, 6), "unexpected PNG"
            bpp = 3 if colour_type == 2 else 4
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    pixels: list[tuple[int, int, int]] = []
    for row in range(height):
        start = row * (stride + 1)
        method, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if method == 1:
            for x in range(bpp, stride):
                line[x] = (line[x] + line[x - bpp]) & 0xFF
        elif method == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif method == 3:
            for x in range(stride):
                left = line[x - bpp] if x >= bpp else 0
                line[x] = (line[x] + (left + prev[x]) // 2) & 0xFF
        elif method == 4:
            for x in range(stride):
                a = line[x - bpp] if x >= bpp else 0
                b, c = prev[x], prev[x - bpp] if x >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[x] = (line[x] + pred) & 0xFF
        for x in range(0, width, 7):
            pixels.append((line[x * bpp], line[x * bpp + 1], line[x * bpp + 2]))
        prev = line
    return width, height, pixels


def test_the_committed_assets_equal_the_template_and_css_files() -> None:
    """``assets.json`` is generated from ``templates/*.j2`` and ``report.css``
    (``python -m server.report.html.assets``): an edit to one without the other fails."""
    from server.report.html import assets

    committed = (assets.HERE / assets.ASSETS_FILE).read_text(encoding="utf-8")
    assert committed == assets.assets_text(), (
        "server/report/html/assets.json differs from the templates or report.css: "
        "regenerate it with `python -m server.report.html.assets`"
    )
    templates, css = assets.load()
    assert "page.html.j2" in templates and len(templates) >= 15 and ".report" in css


def test_a_report_renders_from_the_flower_app_bundle(tmp_path: Path) -> None:
    """A deployed ServerApp runs the code of the app bundle ``flwr run`` builds, which
    keeps only some file types: the report must render from that bundle alone."""
    import io
    import subprocess
    import sys
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    root = Path(__file__).resolve().parents[2]
    with zipfile.ZipFile(io.BytesIO(build_fab_from_disk(root))) as fab:
        fab.extractall(tmp_path / "app")
    report = Path(__file__).parent / "data" / "reports" / "holdout" / "report.json"
    script = (
        "import json, sys\n"
        "import server.report.html as h\n"
        f"assert h.__file__.startswith({str(tmp_path / 'app')!r}), h.__file__\n"
        f"page = h.render_html(json.load(open({str(report)!r})))\n"
        "print(len(page), 'Per-site results' in page)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path / "app",
        env={"PYTHONPATH": str(tmp_path / "app"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    size, found = done.stdout.split()
    assert int(size) > 50_000 and found == "True"
