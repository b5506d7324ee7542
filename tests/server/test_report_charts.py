"""The report's chart modules (server/report/html/charts), on small hand-computed inputs.

Each chart is parsed as XML and its marks are checked at the coordinates its scale
gives, worked out by hand in the comments: forest x = 344 + (v - lo) / (hi - lo) * 380,
ROC x = 58 + 320 * fpr and y = 16 + 320 * (1 - tpr), reliability x = 44 + 176 * p and
y = 46 + 176 * (1 - o), drift x = 76 + d / x_hi * 524 and y = 360 - (a - y_lo) /
(y_hi - y_lo) * 340.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from markupsafe import Markup, escape

from server.report.html.charts.drift import axes, drift_svg, place_label
from server.report.html.charts.forest import ForestPooled, ForestRow, axis_range, forest_svg
from server.report.html.charts.reliability import bin_points, reliability_svg
from server.report.html.charts.roc import roc_svg, step_path
from server.report.html.charts.svg import (
    EXTERNAL_COLOUR,
    FLAG_COLOUR,
    INTERNAL_COLOUR,
    SITE_PALETTE,
    Ids,
    figure_svg,
    num,
    site_colours,
    ticks,
)

NS = "{http://www.w3.org/2000/svg}"
EVIL = '<script>alert("x")</script> & Co'


def parse(svg: Markup) -> ET.Element:
    assert isinstance(svg, Markup)
    return ET.fromstring(str(svg))


def find_all(root: ET.Element, tag: str, **attrs: str) -> list[ET.Element]:
    """Every ``tag`` element below ``root`` whose attributes include ``attrs``."""
    return [
        e
        for e in root.iter(NS + tag)
        if all(e.get(k.replace("_", "-")) == v for k, v in attrs.items())
    ]


def child(root: ET.Element, tag: str) -> ET.Element:
    """The first ``tag`` element directly under ``root`` (the chart's title or desc)."""
    found = root.find(NS + tag)
    assert found is not None, tag
    return found


def texts(root: ET.Element) -> list[str]:
    return ["".join(e.itertext()) for e in root.iter(NS + "text")]


def tooltips(root: ET.Element) -> list[str]:
    """The ``<title>`` of each mark group (the chart's own title aside)."""
    return [t.text or "" for g in root.iter(NS + "g") for t in g.findall(NS + "title")]


# ---- svg: ids, wrapper, palette, ticks ----


def test_ids_count_across_prefixes() -> None:
    ids = Ids()
    taken = [ids.new("svg-title"), ids.new("svg-desc"), ids.new("svg-title")]
    assert taken == ["svg-title-1", "svg-desc-2", "svg-title-3"]


def test_figure_svg_is_accessible_and_safe_markup() -> None:
    svg = figure_svg(Ids(), 200, 100.5, "A & B", "x < y", "demo", '<rect x="1"/>')
    root = parse(svg)
    assert root.get("role") == "img"
    assert root.get("class") == "chart demo"
    assert root.get("viewBox") == "0 0 200 100.5"
    assert root.get("aria-labelledby") == "svg-title-1 svg-desc-2"
    assert root.get("aria-label") == "A & B"
    assert child(root, "title").get("id") == "svg-title-1"
    assert child(root, "title").text == "A & B"
    assert child(root, "desc").get("id") == "svg-desc-2"
    assert child(root, "desc").text == "x < y"
    assert escape(svg) == svg  # Markup: a template does not escape it again


def test_site_colours_follow_the_palette_and_repeat() -> None:
    names = [f"site-{i}" for i in range(11)]
    colours = site_colours(names)
    assert colours["site-0"] == "#0072b2" and colours["site-1"] == "#d55e00"
    assert colours["site-10"] == SITE_PALETTE[0]
    assert list(colours) == names


def test_ticks_and_coordinates() -> None:
    assert ticks(0.4, 1.0) == [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]  # step 0.1: 6 intervals
    assert ticks(-0.04, 0.07) == [-0.04, -0.02, 0.0, 0.02, 0.04, 0.06]  # step 0.02
    assert ticks(0.0, 30.0) == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
    assert [num(v) for v in (597.3333, 534.0, -0.001, 12.5)] == ["597.33", "534", "0", "12.5"]


# ---- forest ----


def auc_forest(ids: Ids | None = None, label: str = "site-a") -> Markup:
    """One internal site at 0.8 (0.7-0.9) and a pooled internal 0.75 (0.65-0.85), PI
    0.55-0.95, chance 0.5: the axis rounds 0.5 down and 0.95 up to (0.4, 1.0), so
    x = 344 + (v - 0.4) / 0.6 * 380."""
    items = [ForestRow(label, "internal", 120, 0.8, 0.7, 0.9)]
    pooled = [ForestPooled("Pooled internal (k = 2)", "internal", 0.75, 0.65, 0.85, 0.55, 0.95)]
    return forest_svg(ids or Ids(), "AUC by site", "AUC", items, pooled, 0.5, level_pct="95%")


def test_forest_axis_range() -> None:
    row = ForestRow("a", "internal", 10, 0.8, 0.7, 0.9)
    assert axis_range([row], [], 0.5) == (0.4, 1.0)
    assert axis_range([ForestRow("a", "internal", 10, 0.83, 0.72, 0.91)], [], None) == (0.7, 1.0)
    # narrower than 0.2: widened downwards from the top, or to (0, 0.2) near zero
    assert axis_range([ForestRow("a", "internal", 10, 0.96, 0.95, 0.97)], [], None) == (0.8, 1.0)
    assert axis_range([ForestRow("a", "internal", 10, 0.03, 0.01, 0.05)], [], None) == (0.0, 0.2)
    assert axis_range([], [], None) == (0.0, 1.0)


def test_forest_site_marker_and_whisker_sit_on_the_axis_scale() -> None:
    root = parse(auc_forest())
    # row 0 is centred at y = 40 + 24 / 2 = 52; x(0.8) = 597.33, x(0.7) = 534, x(0.9) = 660.67
    (square,) = find_all(root, "rect", fill=INTERNAL_COLOUR)
    assert (square.get("x"), square.get("y"), square.get("width")) == ("592.83", "47.5", "9")
    whisker = find_all(root, "line", y1="52", y2="52", stroke=INTERNAL_COLOUR)
    assert [(w.get("x1"), w.get("x2")) for w in whisker] == [("534", "660.67")]
    caps = find_all(root, "line", y1="48", y2="56")
    assert [c.get("x1") for c in caps] == ["534", "660.67"]
    assert "0.800 (0.700\u20130.900)" in texts(root)
    assert tooltips(root)[0] == "site-a (internal): 0.800 (0.700\u20130.900)"
    # the x axis: ticks 0.4 ... 1.0 at 344 + k * 63.33, labelled with one decimal
    labels = [t for t in texts(root) if re.fullmatch(r"\d\.\d", t)]
    assert labels == ["0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1.0"]
    grid = [g.get("x1") for g in find_all(root, "line", stroke="#e5e7eb")]
    assert grid == ["344", "407.33", "470.67", "534", "597.33", "660.67", "724"]
    marks = [m.get("x1") for m in find_all(root, "line", y1="116", y2="121")]
    assert marks == grid  # tick marks below the axis at 112 + 4


def test_forest_pooled_diamond_tips_at_the_ci_and_the_prediction_interval() -> None:
    root = parse(auc_forest())
    # pooled row: y = (40 + 24 + 6 + 8) + 34 / 2 - 2 = 93; x(0.65) = 502.33,
    # x(0.75) = 565.67, x(0.85) = 629, x(0.55) = 439, x(0.95) = 692.33
    (diamond,) = find_all(root, "polygon")
    assert diamond.get("points") == "502.33,93 565.67,85 629,93 565.67,101"
    assert diamond.get("fill") == INTERNAL_COLOUR
    (pi,) = find_all(root, "line", y1="93", y2="93")
    assert (pi.get("x1"), pi.get("x2"), pi.get("stroke-width")) == ("439", "692.33", "1.5")
    pi_caps = find_all(root, "line", y1="88", y2="98")
    assert [e.get("x1") for e in pi_caps] == ["439", "692.33"]
    assert "PI 0.550\u20130.950" in texts(root)
    # reference lines from y = 34 to the axis bottom 78 + 34 = 112: the pooled internal
    # estimate (dashed) and chance 0.5 at x = 407.33 (dotted)
    (ref,) = find_all(root, "line", stroke_dasharray="5 4")
    assert (ref.get("x1"), ref.get("y1"), ref.get("y2")) == ("565.67", "34", "112")
    (chance,) = find_all(root, "line", stroke_dasharray="2 3")
    assert chance.get("x1") == "407.33"
    assert root.get("height") == "166"  # axis bottom 112 + 54
    assert child(root, "desc").text == (
        "site-a: 0.800 (0.700\u20130.900); Pooled internal (k = 2): 0.750 (0.650\u20130.850)"
    )


def test_forest_external_row_and_row_without_estimate() -> None:
    items = [
        ForestRow("ext", "external", 80, 0.6, None, None),
        ForestRow("tiny", "internal", 6, None, None, None, "insufficient data", flagged=True),
    ]
    root = parse(forest_svg(Ids(), "AUC by site", "AUC", items, [], None, level_pct="90%"))
    # 0.6 rounds out to (0.5, 0.7), already 0.2 wide: x(0.6) = 344 + 0.5 * 380 = 534;
    # the external marker is an open circle of radius 9 / 2 + 0.5
    (circle,) = find_all(root, "circle")
    assert (circle.get("cx"), circle.get("cy"), circle.get("r")) == ("534", "52", "5")
    assert circle.get("stroke") == EXTERNAL_COLOUR
    assert find_all(root, "line", y1="52", y2="52") == []  # no CI, no whisker
    assert texts(root).count("insufficient data") == 2  # in the plot and the numbers column
    assert "tiny \u26a0" in texts(root)
    assert find_all(root, "rect", fill=INTERNAL_COLOUR) == []  # no marker for it
    assert "AUC (90% CI)" in texts(root)
    # zebra stripe behind the second row
    (stripe,) = find_all(root, "rect", fill="#f8fafc")
    assert (stripe.get("y"), stripe.get("height")) == ("64", "24")


# ---- ROC ----


def test_roc_step_path_vertices() -> None:
    def sx(v: float) -> float:
        return 58 + 320 * v

    def sy(v: float) -> float:
        return 16 + 320 * (1 - v)

    fpr = [0.0, 0.5, 1.0]
    # (0, .5) -> across to fpr .5 -> up to .75 -> across to fpr 1 -> up to 1
    assert step_path(fpr, [0.5, 0.75, 1.0], sx, sy) == "M58,176H218V96H378V16"
    assert step_path(fpr, [0.5, 0.5, 1.0], sx, sy) == "M58,176H218H378V16"  # no zero V
    assert step_path(fpr, [0.5, None, 1.0], sx, sy) == "M58,176M378,16"  # a gap restarts
    assert step_path(fpr, [0.5, 0.75, 1.0, 1.0], sx, sy) == "M58,176H218V96H378V16"


def test_roc_svg_draws_each_curve_with_its_colour_dash_and_auc() -> None:
    curves: list[dict[str, Any]] = [
        {"site": "a", "role": "internal", "model": "global", "tpr": [0.5, 0.75, 1.0]},
        {"site": "e", "role": "external", "model": "global", "tpr": [0.25, None, 1.0]},
    ]
    svg = roc_svg(
        Ids(),
        "ROC curves",
        curves,
        [0.0, 0.5, 1.0],
        colours={"a": "#009e73"},
        aucs={("a", "global"): 0.8125},
    )
    root = parse(svg)
    paths = root.findall(f"{NS}g/{NS}path")
    assert [p.get("d") for p in paths] == ["M58,176H218V96H378V16", "M58,256M378,16"]
    assert [p.get("stroke") for p in paths] == ["#009e73", SITE_PALETTE[0]]
    assert [p.get("stroke-dasharray") for p in paths] == [None, "7 4"]
    assert tooltips(root) == ["a (internal), AUC 0.812", "e (external), AUC n/a"]
    assert "internal \u00b7 AUC 0.812" in texts(root)
    # legend swatches: entry i at y = 16 + 34 i + 10, from x = 402 to 428
    swatches = [(s.get("x1"), s.get("x2"), s.get("y1")) for s in find_all(root, "line")]
    assert [s for s in swatches if s[:2] == ("402", "428")] == [
        ("402", "428", "26"),
        ("402", "428", "60"),
    ]
    assert root.get("width") == "602" and root.get("height") == "388"


# ---- reliability ----


def entry(role: str = "internal", site: str = "a") -> dict[str, Any]:
    bins = {"mean_predicted": [0.25, 0.5, 0.75], "observed_rate": [0.5, None, 1.0]}
    return {"site": site, "role": role, "model": "global", **bins, "count": [4, 0, 16]}


def test_reliability_bins_skip_empty_and_missing() -> None:
    assert bin_points(entry()) == [(0.25, 0.5, 4), (0.75, 1.0, 16)]


def test_reliability_point_position_and_area() -> None:
    svg = reliability_svg(Ids(), entry(), colours={"a": "#cc79a7"}, ece=0.0412, slope=0.934)
    root = parse(svg)
    # bin (0.25, 0.5, n 4): centre (88, 134), half-side 3 + 7 * sqrt(4 / 16) = 6.5
    # bin (0.75, 1.0, n 16): centre (176, 46), half-side 3 + 7 = 10
    marks = find_all(root, "rect", fill="#cc79a7")
    assert [(m.get("x"), m.get("y"), m.get("width"), m.get("height")) for m in marks] == [
        ("81.5", "127.5", "13", "13"),
        ("166", "36", "20", "20"),
    ]
    (path,) = find_all(root, "path")
    assert path.get("d") == "M88,134 L176,46"
    # counts written right of each mark: x + r + 3, y + 4
    labels = [
        t for t in root.iter(NS + "text") if t.get("class") == "tick" and t.text in ("4", "16")
    ]
    assert [(t.text, t.get("x"), t.get("y")) for t in labels] == [
        ("4", "97.5", "138"),
        ("16", "189", "50"),
    ]
    assert "internal \u00b7 ECE 0.041 \u00b7 slope 0.93" in texts(root)
    assert child(root, "title").text == "Reliability diagram: a (global, internal)"
    assert tooltips(root) == [
        "predicted 0.250, observed 0.500, 4 cases",
        "predicted 0.750, observed 1.000, 16 cases",
    ]


def test_reliability_external_circles_and_empty_panel() -> None:
    root = parse(reliability_svg(Ids(), entry("external"), colours={}, ece=None, slope=None))
    circles = find_all(root, "circle")
    assert [(c.get("cx"), c.get("cy"), c.get("r")) for c in circles] == [
        ("88", "134", "6.5"),
        ("176", "46", "10"),
    ]
    assert all(c.get("stroke") == SITE_PALETTE[0] for c in circles)
    assert "external" in texts(root)  # no ECE, no slope
    empty = {**entry(), "count": [0, 0, 0]}
    root = parse(reliability_svg(Ids(), empty, colours={}, ece=None, slope=None))
    assert "no populated bins" in texts(root)
    assert child(root, "desc").text == "no populated bins"


# ---- drift ----


def drift_points() -> list[dict[str, Any]]:
    return [
        {"site": "a", "role": "internal", "model": "global", "drift": 0.1, "auc_drop": 0.05},
        {"site": "e", "role": "external", "model": "global", "drift": 0.2, "auc_drop": -0.02},
        {"site": "x", "role": "external", "model": "global", "drift": None, "auc_drop": 0.1},
    ]


def test_drift_axes_and_ticks() -> None:
    # x: 0 .. 1.15 * 0.2; y: drops, 0 and the margin span -0.02 .. 0.05, padded by 0.02
    x_hi, y_lo, y_hi = axes([0.1, 0.2], [0.05, -0.02], 0.05)
    assert x_hi == pytest.approx(0.23)
    assert (y_lo, y_hi) == (pytest.approx(-0.04), pytest.approx(0.07))
    assert axes([0.0], [0.0], None) == (1.0, -0.02, 0.02)
    root = parse(drift_svg(Ids(), drift_points(), margin=0.05, flagged=set()))
    ticks_text = [t.text for t in root.iter(NS + "text") if t.get("class") == "tick"]
    # x step 0.05 (0.23 / 0.05 = 4.6 intervals), y step 0.02 (0.11 / 0.02 = 5.5)
    assert ticks_text == [
        *("0.00", "0.05", "0.10", "0.15", "0.20"),
        *("\u22120.04", "\u22120.02", "0.00", "0.02", "0.04", "0.06"),
    ]
    vertical = [e.get("x1") for e in find_all(root, "line", stroke="#e5e7eb", y1="20")]
    # 76 + t / 0.23 * 524
    assert vertical == ["76", "189.91", "303.83", "417.74", "531.65"]
    # zero drop at 360 - 0.04 / 0.11 * 340, the margin at 360 - 0.09 / 0.11 * 340
    (zero,) = find_all(root, "line", stroke_width="1.2")
    assert zero.get("y1") == "236.36"
    (margin,) = find_all(root, "line", stroke=FLAG_COLOUR, x1="76")
    assert margin.get("y1") == "81.82"
    assert "flag margin 0.050" in texts(root)


def test_drift_markers_labels_and_flags() -> None:
    root = parse(drift_svg(Ids(), drift_points(), margin=None, flagged={("e", "global")}))
    # a at (303.83, 360 - 0.09 / 0.11 * 340 = 81.82) with x_hi 0.23, y (-0.04, 0.07)
    # (no margin: y spans -0.02 .. 0.05 still, the same axes)
    squares = find_all(root, "rect", fill=INTERNAL_COLOUR, width="10")
    assert [(s.get("x"), s.get("y")) for s in squares] == [("298.83", "76.82")]
    circles = find_all(root, "circle", r="5.5")  # 10 / 2 + 0.5
    assert [(c.get("cx"), c.get("cy")) for c in circles] == [("531.65", "298.18")]
    assert tooltips(root) == [
        "a (internal): drift 0.100, AUC drop +0.050",
        "e (external): drift 0.200, AUC drop \u22120.020",
    ]  # x (no drift) is left out
    flagged = [t for t in root.iter(NS + "text") if t.get("class") == "lbl flagged"]
    assert [t.text for t in flagged] == ["e \u26a0"]
    (a_label,) = [t for t in root.iter(NS + "text") if t.text == "a"]
    assert (a_label.get("x"), a_label.get("y")) == ("312.83", "85.82")  # right of the mark
    with pytest.raises(ValueError, match="at least one point"):
        drift_svg(Ids(), drift_points()[2:], margin=None, flagged=set())


def test_place_label_avoids_earlier_labels() -> None:
    placed = [(93.0, 93.0, 107.0, 107.0)]  # the marker at (100, 100) itself
    x, y, anchor = place_label("ab", 100, 100, placed, (0, 0, 500, 500))
    assert (x, y, anchor) == (109, 104, "start")
    assert placed[-1] == pytest.approx((109, 91, 109 + 28.8, 105))  # "ab" + 2 spaces, 12 px
    # a second point 10 px right: its right slot overlaps the first label, its left slot
    # the first marker, so its label goes above it
    placed.append((103.0, 93.0, 117.0, 107.0))
    x, y, anchor = place_label("cd", 110, 100, placed, (0, 0, 500, 500))
    assert anchor == "middle" and (x, y) == (110, 88)


# ---- escaping and ids across a page ----


def test_site_names_are_escaped_in_every_chart() -> None:
    ids = Ids()
    curve = {"site": EVIL, "role": "internal", "model": "m", "tpr": [0.5, 1.0]}
    point = {"site": EVIL, "role": "internal", "model": "m", "drift": 0.1, "auc_drop": 0.0}
    charts = [
        auc_forest(ids, EVIL),
        roc_svg(ids, "ROC curves", [curve], [0.0, 1.0], colours={}, aucs={}),
        reliability_svg(ids, entry(site=EVIL), colours={}, ece=None, slope=None),
        drift_svg(ids, [point], margin=None, flagged=set()),
    ]
    for svg in charts:
        assert "<script" not in svg
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co" in svg
        root = parse(svg)  # well-formed, and the text reads back as the name
        assert any(EVIL in t for t in [*tooltips(root), child(root, "title").text or ""])


def test_ids_are_unique_across_charts_on_one_page() -> None:
    ids = Ids()
    page = str(auc_forest(ids)) + str(
        reliability_svg(ids, entry(), colours={}, ece=None, slope=None)
    )
    found = re.findall(r' id="([^"]+)"', page)
    assert found == ["svg-title-1", "svg-desc-2", "svg-title-3", "svg-desc-4"]
    for svg in re.findall(r"<svg [^>]*>", page):
        assert 'role="img"' in svg
    labelled = re.findall(r'aria-labelledby="([^"]+)"', page)
    assert labelled == ["svg-title-1 svg-desc-2", "svg-title-3 svg-desc-4"]
