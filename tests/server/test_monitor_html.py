"""monitor.html and the terminal summary, from a synthetic ``monitor.json`` document.

Three sites over 24 monthly windows: hospital-a steady, hospital-b losing AUC from
2025-10 (one performance alarm in 2026-01), hospital-c with a scanner change in 2025-08
(one drift notice in 2025-09), an insufficient window, an intensity chart that did not run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from server.monitoring.html import render_html
from server.monitoring.model import validate
from server.monitoring.terminal import summary_text

ALLOWED_URLS = {"http://www.w3.org/2000/svg"}  # the SVG namespace: a name, never fetched
VOID = {"meta", "br", "hr", "img", "input", "link", "wbr", "col", "source"}
WINDOWS = [f"{2024 + (6 + i) // 12}-{(6 + i) % 12 + 1:02d}" for i in range(24)]
REFERENCE = WINDOWS[:6]
ALARM_MSG = (
    "hospital-b: estimated AUC fell to 0.760 in 2026-01 (reference 0.850, z -3.60); "
    "CUSUM 5.10 above its limit 4.20 since 2025-10"
)
NOTICE_MSG = (
    "hospital-c: embedding drift rose to 0.310 in 2025-09 (reference 0.050); the images "
    "changed, which is not by itself a loss of performance"
)
INSUFFICIENT = ("hospital-c", "2025-03")
NOT_RUN_NOTE = "the site sent no intensity histograms"


def _ci(value: float, half: float) -> dict[str, float]:
    return {"estimate": round(value, 4), "lo": round(value - half, 4), "hi": round(value + half, 4)}


def _site(name: str, shift: int) -> dict[str, Any]:
    """A site's block; ``shift``: 0 steady, 1 losing AUC from 2025-10, 2 a scanner change."""
    windows: list[dict[str, Any]] = []
    for i, w in enumerate(WINDOWS):
        insufficient = (name, w) == INSUFFICIENT
        auc = 0.85 + 0.01 * ((i * 7) % 3 - 1)
        if shift == 1 and w >= "2025-10":
            auc -= 0.02 * (i - WINDOWS.index("2025-10") + 1)
        drift = 0.05 + (0.26 if shift == 2 and w >= "2025-08" else 0.0)
        labelled = i < 18 and not insufficient
        actual = None
        if labelled:
            actual = {
                "n_labelled": 60 - 2 * i,
                "n_labelled_pos": 20 - i // 2,
                "insufficient": False,
                "auc": _ci(auc + 0.012, 0.06),
                "sensitivity": _ci(0.8, 0.08),
                "specificity": _ci(0.82, 0.07),
                "revisions": 1 + (i % 2),
            }
        windows.append(
            {
                "window": w,
                "n": 12 if insufficient else 80 + i,
                "insufficient": insufficient,
                "reference": w in REFERENCE,
                "est_auc": None if insufficient else _ci(auc, 0.04),
                "est_sens": None if insufficient else _ci(0.8, 0.05),
                "est_spec": None if insufficient else _ci(0.82, 0.05),
                "actual": actual,
                "drift": {
                    "embedding": None if insufficient else round(drift, 4),
                    "intensity": None if insufficient else 0.02,
                },
                "acquisition": {"vendor": {"A": 80}},
                "replaced": 1 if (name, w) == ("hospital-a", "2025-01") else 0,
            }
        )
    monitored = [w["window"] for w in windows if not w["reference"] and not w["insufficient"]]

    def chart(statistic: str, kind: str, side: str, alarms: list[str]) -> dict[str, Any]:
        cusum = [min(5.1, 0.4 * k) if alarms else 0.3 for k in range(len(monitored))]
        return {
            "statistic": statistic,
            "kind": kind,
            "side": side,
            "windows": monitored,
            "value": [0.8] * len(monitored),
            "z": [-0.5] * len(monitored),
            "cusum": cusum,
            "reference": [0.85] * len(monitored),
            "reference_n": [6] * len(monitored),
            "limit": 4.2,
            "alarms": alarms,
            "note": "",
        }

    lists = ("windows", "value", "z", "cusum", "reference", "reference_n")
    not_run: dict[str, Any] = {key: [] for key in lists}
    charts = [
        chart("est-auc", "performance", "lower", ["2026-01"] if shift == 1 else []),
        chart("actual-auc", "performance", "lower", []),
        chart("embedding", "drift", "upper", ["2025-09"] if shift == 2 else []),
        chart("intensity", "drift", "upper", [])
        | ({**not_run, "note": NOT_RUN_NOTE} if shift == 2 else {}),
    ]
    rows = [
        {
            "window": w["window"],
            "estimate": w["est_auc"]["estimate"],
            "lo": w["est_auc"]["lo"],
            "hi": w["est_auc"]["hi"],
            "actual": w["actual"]["auc"]["estimate"],
            "error": round(w["est_auc"]["estimate"] - w["actual"]["auc"]["estimate"], 4),
            "covered": True,
            "n_labelled": w["actual"]["n_labelled"],
        }
        for w in windows
        if w["actual"] and w["est_auc"]
    ]
    return {
        "site": name,
        "reference": {
            "windows": REFERENCE,
            "n_cases": sum(80 + i for i in range(6)),
            "status": "ok",
            "est_auc_mean": 0.85,
            "est_auc_sd": 0.008,
            "actual_auc": 0.862,
            "actual_auc_se": 0.011,
            "actual_windows": REFERENCE,
        },
        "windows": windows,
        "charts": charts,
        "acquisition_changes": (
            [
                {
                    "window": "2025-08",
                    "previous": "2025-07",
                    "field": "vendor",
                    "before": "A",
                    "after": "B",
                },
                {
                    "window": "2025-08",
                    "previous": "2025-07",
                    "field": "kernel",
                    "before": "soft",
                    "after": "sharp",
                },
            ]
            if shift == 2
            else []
        ),
        "estimate_check": {
            "mae": 0.012,
            "coverage": 1.0,
            "rows": rows,
        },
    }


def monitor_doc() -> dict[str, Any]:
    """The synthetic document (layout of ``hepafed monitor``'s monitor.json)."""
    base = {"reference_n": 6, "limit": 4.2}
    return {
        "monitor_version": "1.0",
        "created": "2026-07-20T09:30:00+00:00",
        "model": {
            "model_sha256": "3fa2c1d4e5b6" + "0" * 52,
            "checkpoint": "model-final.pt",
            "training_run_id": "run-2024-06-liver-5",
            "training_head_sha256": "ab" * 32,
            "task": "lesion-malignancy",
            "threshold": 0.42,
            "threshold_how": "Youden on validation data",
            "recalibration": [0.1, 0.95],
        },
        "settings": {
            "windows": WINDOWS,
            "as_of": "2026-07-15",
            "reference_windows": 6,
            "false_alarm_rate": 0.01,
            "charts_per_site": 4,
            "arl0": 398.5,
            "cusum_k": 0.5,
            "cusum_h": 4.2,
            "level": 0.95,
            "min_cases": 30,
        },
        "sites": [_site("hospital-a", 0), _site("hospital-b", 1), _site("hospital-c", 2)],
        "alarms": [
            {
                **base,
                "site": "hospital-b",
                "window": "2026-01",
                "kind": "performance",
                "statistic": "est-auc",
                "value": 0.76,
                "reference": 0.85,
                "z": -3.6,
                "cusum": 5.1,
                "since": "2025-10",
                "message": ALARM_MSG,
            },
            {
                **base,
                "site": "hospital-c",
                "window": "2025-09",
                "kind": "drift",
                "statistic": "embedding",
                "value": 0.31,
                "reference": 0.05,
                "z": 6.2,
                "cusum": 7.3,
                "since": "2025-08",
                "message": NOTICE_MSG,
            },
        ],
        "summary": {
            "sites": 3,
            "windows": 24,
            "performance_alarms": 1,
            "drift_notices": 1,
            "insufficient_windows": 1,
            "sites_with_performance_alarm": ["hospital-b"],
            "sites_with_drift_notice": ["hospital-c"],
        },
    }


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


def section(html: str, anchor: str) -> str:
    """The markup of the ``<section id=anchor>``."""
    match = re.search(rf'<section id="{anchor}".*?</section>', html, flags=re.S)
    assert match, anchor
    return match.group(0)


def site_section(html: str, name: str) -> str:
    """The section whose heading is the site ``name``."""
    for block in re.findall(r"<section id=\"site-\d+\".*?</section>", html, flags=re.S):
        if f">{name}</h2>" in block:
            return str(block)
    raise AssertionError(name)


def test_the_synthetic_document_has_the_published_layout() -> None:
    validate(monitor_doc())  # server/monitoring/monitor.schema.json


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return monitor_doc()


@pytest.fixture(scope="module")
def html(doc: dict[str, Any]) -> str:
    return render_html(doc)


def test_alarm_and_notice_are_in_their_own_sections(html: str) -> None:
    alarms, notices = section(html, "alarms"), section(html, "notices")
    assert ALARM_MSG in alarms and NOTICE_MSG not in alarms
    assert NOTICE_MSG in notices and ALARM_MSG not in notices
    assert 'href="#site-2">hospital-b</a>' in alarms and "hospital-c" not in alarms
    assert 'href="#site-3">hospital-c</a>' in notices and "hospital-b" not in notices
    # the row's numbers, formatted like the report (true minus, fixed decimals)
    assert "<td>Estimated AUC (label-free)</td>" in alarms
    assert '<td class="num">\u22123.60</td>' in alarms and "<td>2025-10</td>" in alarms
    assert '<td class="num">0.310</td>' in notices and '<td class="num">+6.20</td>' in notices
    assert "alarm" not in re.sub(r"<[^>]*>", " ", notices).lower()  # a notice is never an alarm


def test_empty_sections_say_none() -> None:
    doc = monitor_doc()
    doc["alarms"] = []
    html = render_html(doc)
    assert "None: no performance chart went past its limit" in section(html, "alarms")
    assert "None: no drift chart went past its limit" in section(html, "notices")
    assert 'class="status status-ok">no alarm<' in site_section(html, "hospital-b")


def test_header_names_the_model_and_the_settings(html: str) -> None:
    assert '<code class="hash" title="3fa2c1d4e5b6' in html and ">3fa2c1d4e5b6\u2026<" in html
    assert "run-2024-06-liver-5" in html and "model-final.pt" in html
    assert '0.42 <span class="dd-note">(Youden on validation data)</span>' in html
    assert "a = 0.100, b = 0.950" in html
    assert "24 (2024-07 to 2026-06)" in html and "labels known as of 2026-07-15" in html
    assert (
        "its first 6 windows with enough cases" in html
        and "\u03b1 = 0.01 over the site's 4 charts" in html
    )
    assert "(ARL₀) of 398.5 windows per chart" in html and "k = 0.50" in html
    assert "h = 4.20" in html


def test_site_sections_carry_their_status_and_figures(doc: dict[str, Any], html: str) -> None:
    a, b, c = (site_section(html, s) for s in ("hospital-a", "hospital-b", "hospital-c"))
    assert 'class="status status-ok">no alarm<' in a
    assert 'class="status status-alarm">performance alarm<' in b
    assert 'class="status status-notice">drift notice<' in c
    for block, s in zip((a, b, c), doc["sites"], strict=True):
        svgs = re.findall(r"<svg .*?</svg>", block, flags=re.S)
        timeline = [s for s in svgs if "timeline-svg" in s]
        assert len(timeline) == 1
        estimated = sum(w["est_auc"] is not None for w in s["windows"])
        actual = sum(w["actual"] is not None for w in s["windows"])
        assert timeline[0].count('<g class="est-pt">') == estimated
        assert timeline[0].count('<g class="act-pt">') == actual
        assert "reference mean 0.850" in timeline[0]  # the description
        assert ">reference</text><text " in timeline[0] and ">0.850</text>" in timeline[0]
    assert b.count('<g class="alarm-mark">') == 1 and "notice-mark" not in b
    assert c.count('<g class="notice-mark">') == 1 and "alarm-mark" not in c
    assert a.count('class="chart cusum-svg"') == 4 and c.count('class="chart cusum-svg"') == 3
    assert f"<strong>Did not run.</strong> {NOT_RUN_NOTE}" in c
    assert "<strong>2025-08</strong> (vs 2025-07): vendor A → B" in c and "kernel soft → sharp" in c
    assert "None recorded." in a
    assert "actual AUC 0.862 (se 0.011, from 6 windows with labels)" in a
    assert "assumes the model's probabilities are calibrated at the site" in a
    assert "mean absolute error 0.012, interval coverage 100%" in a


def test_insufficient_window_is_labelled(doc: dict[str, Any], html: str) -> None:
    site, window = INSUFFICIENT
    c = site_section(html, site)
    assert f"<title>{window}: insufficient (too few cases)</title>" in c
    assert c.count('<g class="insufficient">') == 1
    row = re.search(rf"<tr[^>]*><th scope=\"row\">{window}</th>.*?</tr>", c, flags=re.S)
    assert row and "Insufficient: 12 cases, below the minimum of 30" in row.group(0)
    assert "1 site-window was insufficient" in html
    assert '<g class="insufficient">' not in site_section(html, "hospital-a")


def test_window_table_numbers(html: str) -> None:
    b = site_section(html, "hospital-b")
    row = re.search(r"<tr[^>]*><th scope=\"row\">2026-01</th>.*?</tr>", b, flags=re.S)
    assert row is not None
    text = row.group(0)
    assert 'class="alarm"' in text and "status-alarm" in text
    assert '0.760<span class="ci">0.720\u20130.800</span>' in text  # 0.84 less 4 months of 0.02
    assert text.count("n/a") == 1  # no labels yet for 2026-01: actual AUC n/a
    ref = re.search(r"<tr[^>]*><th scope=\"row\">2024-07<span", b)
    assert ref and 'class="ref"' in ref.group(0)


def test_page_is_self_contained_with_a_csp(html: str) -> None:
    assert html.startswith("<!DOCTYPE html>")
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', html)
    assert csp and "default-src &#x27;none&#x27;" in csp.group(1)
    assert set(re.findall(r"https?://[^\s\"'<>)]+", html)) <= ALLOWED_URLS
    lowered = html.lower()
    for forbidden in ("<script", "<link", "@import", "url(", "src=", "<img", "<iframe"):
        assert forbidden not in lowered, forbidden
    # the policy's hash is the hash of the one style element
    import base64
    import hashlib

    (css,) = re.findall(r"<style>(.*?)</style>", html, flags=re.S)
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    assert f"style-src &#x27;sha256-{digest}&#x27;" in csp.group(1)


def test_page_is_well_formed_and_accessible(html: str) -> None:
    checker = TagBalance()
    checker.feed(html)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    svgs = re.findall(r"<svg [^>]*>", html)
    assert svgs and all('role="img"' in s and "aria-labelledby=" in s for s in svgs)
    assert html.count("<svg") == html.count("<title id=")
    tables = html.count("<table")
    assert tables == html.count("<caption") and tables == html.count("<thead>")


def test_site_names_are_escaped() -> None:
    doc = monitor_doc()
    evil = '<script>alert("x")</script>'
    doc["sites"][0]["site"] = evil
    html = render_html(doc)
    assert "<script" not in html and "&lt;script&gt;" in html


def test_a_site_without_a_reference_renders_without_numbers() -> None:
    doc = monitor_doc()
    site = doc["sites"][0]
    site["reference"] = {"windows": [], "n_cases": 10, "status": "insufficient"}
    for w in site["windows"]:
        w.update(insufficient=True, reference=False, est_auc=None, actual=None)
        w["drift"] = {"embedding": None, "intensity": None}
    for c in site["charts"]:
        c.update(windows=[], value=[], z=[], cusum=[], note="no reference period")
        c.update(reference=[], reference_n=[])
    site["estimate_check"] = {"mae": None, "coverage": None, "rows": []}
    a = site_section(render_html(doc), "hospital-a")
    assert "Reference insufficient</span>: 10 cases in 0 reference windows" in a
    assert a.count("<strong>Did not run.</strong> no reference period") == 4
    assert '<g class="est-pt">' not in a and a.count('<g class="insufficient">') == 24
    assert "No window with enough labels yet." in a
    assert summary_text(doc).splitlines()[-3] == (
        "hospital-a: 24 windows (24 insufficient), no alarm; est. AUC n/a (reference insufficient)"
    )
    assert summary_text({}).splitlines()[1] == "no windows, labels as of n/a, 0 sites"


def test_terminal_summary(doc: dict[str, Any]) -> None:
    text = summary_text(doc)
    lines = text.splitlines()
    assert "3fa2c1d4e5b6" in lines[0]
    assert "2024-07 to 2026-06" in text and "1 performance alarm" in text
    assert "1 drift notice" in text
    assert f"  performance alarm: {ALARM_MSG}" in lines
    assert f"  drift notice: {NOTICE_MSG}" in lines
    by_site = {line.split(":")[0]: line for line in lines if line.startswith("hospital-")}
    assert by_site["hospital-a"].startswith("hospital-a: 24 windows, no alarm; est. AUC 0.86")
    assert "(ref 0.85)" in by_site["hospital-a"]
    assert "performance alarm in 2026-01 (since 2025-10)" in by_site["hospital-b"]
    assert "est. AUC 0.68" in by_site["hospital-b"]
    assert "24 windows (1 insufficient)" in by_site["hospital-c"]
    assert "drift notice in 2025-09" in by_site["hospital-c"]
    assert "alarm" not in by_site["hospital-c"].replace("no alarm", "")


def test_rendering_imports_nothing_of_the_runtime() -> None:
    script = (
        "import sys\n"
        "from tests.server.test_monitor_html import monitor_doc\n"
        "from server.monitoring.html import render_html\n"
        "from server.monitoring.terminal import summary_text\n"
        "assert render_html(monitor_doc()).startswith('<!DOCTYPE html>')\n"
        "assert summary_text(monitor_doc())\n"
        "loaded = [m for m in ('torch', 'flwr', 'monai', 'numpy') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_chromium_renders_the_page_without_console_errors(tmp_path: Path) -> None:
    """As report.html is checked: the real browser loads it under its CSP, with nothing to
    fetch and nothing logged, and every site and both event tables are in the DOM."""
    from tests.server.test_report_html import console_problems, require_chromium, run_chromium

    chromium = require_chromium()
    page = tmp_path / "monitor.html"
    page.write_text(render_html(monitor_doc()), encoding="utf-8")
    done = run_chromium(chromium, tmp_path, page, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    for site in ("hospital-a", "hospital-b", "hospital-c"):
        assert site in done.stdout
    assert "Performance alarms" in done.stdout and "Drift notices" in done.stdout
    assert done.stdout.count("<svg") >= 6
    assert console_problems(done.stderr) == []


def test_a_lasting_change_is_one_row_and_a_new_change_another() -> None:
    """A chart restarts after each alarm: a change that lasts alarms again with ``since`` the
    window after the last alarm; those collapse into one row, a later change starts its own."""
    from server.monitoring.page import Event
    from server.monitoring.page_read import grouped

    windows = [f"2025-{m:02d}" for m in range(1, 13)]

    def event(window: str, since: str, z: float) -> Event:
        return Event("hospital-b", "site-2", window, "Embedding drift", 2.0, 0.0, z, since, window)

    lasting = [event("2025-01", "2025-01", 8.0), event("2025-02", "2025-02", 7.0),
               event("2025-04", "2025-03", 6.0)]  # fmt: skip
    later = event("2025-09", "2025-08", 5.0)  # after a quiet window (2025-05 to 2025-07)
    rows = grouped([later, *lasting], windows)
    assert [(r.window, r.since, r.z, r.message) for r in rows] == [
        ("2025-01 to 2025-04 (3 windows)", "2025-01", 6.0, "2025-01"),
        ("2025-09", "2025-08", 5.0, "2025-09"),
    ]
