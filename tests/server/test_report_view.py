"""The report page's view model (server/report/html/view*.py), on small hand-made documents.

The view model is where the report document is read: these check what it resolves
(flag numbers, the operating-threshold table, site order and colours, forest rows,
missing values) without rendering a page.
"""

from __future__ import annotations

from typing import Any

from server.report.html.charts.svg import SITE_PALETTE
from server.report.html.view import read_page
from server.report.html.view_context import read_context
from server.report.html.view_forest import forest_row
from server.report.html.view_read import Estimate, estimate
from server.report.html.view_sites import skipped_text


def interval(value: float | None, lo: float | None = None, hi: float | None = None) -> Any:
    return {"estimate": value, "lo": lo, "hi": hi}


def row(site: str, model: str = "global", role: str = "internal", **extra: Any) -> dict[str, Any]:
    base = {"site": site, "model": model, "role": role, "n": 40, "insufficient": False}
    return {**base, **extra}


def report(**parts: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "design": "holdout",
        "task": "lesion-malignancy",
        "settings": {"level": 0.95, "operating_threshold": 0.5, "margin": 0.05},
        "sites_joined": [],
        "sites": [],
        "flags": [],
        "matrix": [],
        "curves": {"fpr": [], "roc": [], "reliability": []},
    }
    return {**doc, **parts}


def flag(site: str, kind: str, model: str = "global") -> dict[str, Any]:
    return {"site": site, "model": model, "role": "external", "kind": kind, "message": f"{site}!"}


def test_flags_are_numbered_in_document_order_and_found_by_site_and_model() -> None:
    flags = [
        flag("e", "drop-exceeds-margin"),
        flag("tiny", "insufficient-data"),
        flag("e", "below-prediction-interval"),
        flag("e", "drop-exceeds-margin", model="local-a"),
    ]
    doc = report(flags=flags, sites=[row("e", role="external"), row("tiny")])
    ctx = read_context(doc)
    assert [(f.number, f.short) for f in ctx.flags_of("e", "global")] == [
        (1, "drop > margin"),
        (3, "below PI"),
    ]
    assert [f.number for f in ctx.flags_of("e", "local-a")] == [4]
    assert ctx.flags_of("a", "global") == ()
    view = read_page(doc)
    assert [(f.number, f.name) for f in view.flags] == [
        (1, "AUC drop exceeds margin"),
        (2, "Insufficient data"),
        (3, "Below prediction interval"),
        (4, "AUC drop exceeds margin"),
    ]
    assert view.flags[0].about == "e \u00b7 global \u00b7 external"
    assert [len(r.flags) for r in view.sites.rows] == [2, 1]
    assert view.summary.flagged == ("e", "tiny") and view.summary.flag_total == 2


def test_the_operating_threshold_table_is_the_one_at_the_setting() -> None:
    tables = [
        {"threshold": 0.3, "sensitivity": interval(0.9)},
        {"threshold": 0.5, "sensitivity": interval(0.7)},
    ]
    site = row("a", thresholds=tables)
    at = read_context(report(sites=[site]))
    assert at.operating_table(site)["threshold"] == 0.5
    assert at.threshold_text == "threshold 0.5"
    unset = read_context(report(settings={"level": 0.9}, sites=[site]))
    assert unset.operating_table(site)["threshold"] == 0.3  # none set: the first table
    assert unset.threshold_text == "the operating threshold" and unset.level_pct == "90%"
    other = read_context(report(settings={"operating_threshold": 0.7}))
    assert other.operating_table(site)["threshold"] == 0.3  # none matches: the first
    assert other.operating_table(row("b")) == {}  # no tables at all
    cells = read_page(report(sites=[site])).sites.rows[0].classification
    assert cells is not None and cells.sensitivity == Estimate(0.7)


def test_sites_are_ordered_by_first_appearance_and_coloured_in_that_order() -> None:
    doc = report(
        sites_joined=[{"name": "b", "role": "train"}, {"name": "a", "role": "external"}],
        sites=[row("c"), row("a")],
        matrix=[{"site": "d", "model": "global"}],
        curves={"fpr": [0, 1], "roc": [{"site": "e"}], "reliability": [{"site": "b"}]},
    )
    ctx = read_context(doc)
    assert ctx.site_order == ("b", "a", "c", "d", "e")
    assert [ctx.colours[s] for s in ctx.site_order] == list(SITE_PALETTE[:5])
    many = read_context(report(sites=[row(f"s{i}") for i in range(12)]))
    assert many.colours["s10"] == many.colours["s0"] == SITE_PALETTE[0]  # ten, then again
    assert ctx.designated_external == 1


def test_forest_rows_say_why_a_site_has_no_estimate() -> None:
    tiny = row("tiny", n=6, insufficient=True)
    odd = row("odd", model="local-odd", auc=interval(None))
    fine = row("a", auc=interval(0.8, 0.7, 0.9))
    doc = report(sites=[tiny, odd, fine], flags=[flag("tiny", "insufficient-data")])
    ctx = read_context(doc)
    insufficient = forest_row(ctx, tiny, tiny.get("auc"))
    assert (insufficient.estimate, insufficient.note) == (None, "insufficient data")
    assert insufficient.text() == "insufficient data" and insufficient.flagged
    assert insufficient.label == "tiny (global)"  # models differ between rows: named
    assert insufficient.n == 6
    missing = forest_row(ctx, odd, odd["auc"])
    assert missing.text() == "not estimable" and not missing.flagged
    value = forest_row(ctx, fine, fine["auc"])
    assert value.text() == "0.800 (0.700\u20130.900)" and value.note == ""
    loso = read_context({**doc, "design": "loso"})
    assert forest_row(loso, fine, fine["auc"]).label == "a"  # the fold model is implied


def test_forest_notes_say_what_could_not_be_pooled() -> None:
    auc = {"estimate": 0.8, "lo": 0.7, "hi": 0.9, "prediction_interval": {"lo": 0.6, "hi": 0.95}}
    pooled = {
        "internal": {"k": 2, "auc": {**auc, "i2": 12.5}, "excluded": {"x": "no AUC"}},
        "external": None,
    }
    doc = report(sites=[row("a", auc=interval(0.8))], pooled=pooled)
    figures = read_page(doc).forest.figures
    assert [f.fig_id for f in figures] == ["forest-auc", "forest-sensitivity", "forest-specificity"]
    assert figures[0].note == (
        "No pooled external estimate (no usable site). Left out of the pooled internal AUC: "
        "x: no AUC."
    )
    assert figures[1].note == "At threshold 0.5. No pooled external estimate (no usable site)."
    assert "Pooled internal (k = 2, I\u00b2 12.5%)" in figures[0].svg


def test_missing_values_resolve_to_none_not_to_numbers() -> None:
    assert estimate(None) == Estimate() and not Estimate().known
    assert estimate({"estimate": float("nan"), "lo": 0.1, "hi": True}) == Estimate(None, 0.1)
    view = read_page(report(sites=[row("a")], pooled={"difference": {"auc": interval(None)}}))
    cells = view.sites.rows[0].classification
    assert cells is not None and cells.auc == Estimate() and cells.prevalence is None
    assert view.summary.difference is not None and view.summary.lede is None
    assert view.summary.heterogeneity is None and not view.summary.internal.auc.known
    assert view.privacy is None and view.roc.figures == () and view.drift.svg is None
    assert view.footer.code_version == "" and view.provenance.models == ()


def test_the_lede_says_which_way_and_whether_the_interval_holds_zero() -> None:
    diff = {"auc": {"estimate": 0.12, "lo": 0.02, "hi": 0.22, "p": 0.01}}
    lede = read_page(report(pooled={"difference": diff})).summary.lede
    assert lede is not None and lede.lower and lede.includes_zero is False
    assert abs(lede.magnitude - 0.12) < 1e-12
    diff = {"auc": {"estimate": -0.05, "lo": -0.2, "hi": 0.1}}
    lede = read_page(report(pooled={"difference": diff})).summary.lede
    assert lede is not None and not lede.lower and lede.includes_zero is True
    lede = read_page(report(pooled={"difference": {"auc": interval(0.1)}})).summary.lede
    assert lede is not None and lede.includes_zero is None


def test_matrix_cells_follow_the_site_order_and_mark_what_was_not_evaluated() -> None:
    matrix = [
        {"model": "global", "site": "b", "role": "internal", "n": 10, "auc": interval(0.8)},
        {"model": "local-a", "site": "a", "role": "internal", "n": 9, "split": "all",
         "adaptation": "test-time-adapt", "insufficient": True},
    ]  # fmt: skip
    doc = report(sites_joined=[{"name": "a"}, {"name": "b"}], matrix=matrix)
    mx = read_page(doc).matrix
    assert mx.sites == ("a", "b")
    assert [r.model for r in mx.rows] == ["global", "local-a"]
    assert mx.rows[0].cells[0] is None and mx.rows[1].cells[1] is None
    cell = mx.rows[1].cells[0]
    assert cell is not None and cell.role == "internal"
    assert cell.entries[0].kind == "insufficient"
    assert cell.entries[0].about == "internal, all cases, test time adapt"


def test_skipped_cases_text() -> None:
    assert skipped_text({"skipped_cases": {"n": 0, "ids": []}}) == ""
    assert skipped_text({}) == ""
    assert skipped_text({"skipped_cases": {"n": 2, "ids": ["x", "y"]}}) == (
        "skipped cases: 2 (x, y)"
    )
    assert skipped_text({"skipped_cases": {"n": 5, "ids": ["x"]}}) == (
        "skipped cases: 5 (x, \u2026)"
    )


def calibration(ece: float | None, brier: float, citl: float, slope: float) -> dict[str, Any]:
    return {"ece": ece, "brier": brier, "citl": interval(citl), "slope": interval(slope)}


def recalibration(fitted: bool = True, **extra: Any) -> dict[str, Any]:
    block = {
        "method": "logistic",
        "fitted": fitted,
        "intercept": -0.3 if fitted else None,
        "slope": 1.2 if fitted else None,
        "reason": "fit" if fitted else "too few validation cases",
        "sites": ["a"],
        "n": 40,
        "n_groups": 6,
    }
    return {**block, **extra}


def test_calibration_before_and_after_recalibration_by_model() -> None:
    before = calibration(0.08, 0.21, 0.4, 0.7)
    after = calibration(0.03, 0.19, -0.05, 1.1)
    sites = [
        row("a", calibration={**before, "recalibrated": after}),
        row("b", calibration=before),  # not recalibrated: no row in the table
        row("c", model="local-c", calibration={**before, "recalibrated": after}),
        row("tiny", insufficient=True),
    ]
    choices = [
        {"model": "global", "rule": "youden", "threshold": 0.35, "chosen": True,
         "recalibration": recalibration(sites=["a", "b"])},
        {"model": "local-c", "rule": "youden", "threshold": 0.5, "chosen": True,
         "recalibration": recalibration(fitted=False)},
    ]  # fmt: skip
    doc = report(sites=sites, settings={"level": 0.95, "threshold_choices": choices})
    groups = read_page(doc).calibration.recalibrated
    assert [(g.model, [r.site for r in g.rows]) for g in groups] == [
        ("global", ["a"]),
        ("local-c", ["c"]),
    ]
    a = groups[0].rows[0]
    assert (a.ece.before, a.ece.after) == (0.08, 0.03)
    assert (a.brier.before, a.brier.after) == (0.21, 0.19)
    assert (a.citl.before, a.citl.after) == (0.4, -0.05)
    assert (a.slope.before, a.slope.after) == (0.7, 1.1)
    fit = groups[0].fit
    assert fit is not None
    assert (fit.intercept, fit.slope, fit.n, fit.n_groups) == (-0.3, 1.2, "40", "6")
    assert fit.sites == "a, b" and fit.many_sites
    assert groups[1].fit is None  # recalibrated rows, but no fitted map recorded for local-c
    sites_view = read_page(doc).sites
    assert sites_view.recalibrated
    assert [c.recalibration.fitted if c.recalibration else None for c in sites_view.choices] == [
        True,
        False,
    ]
    assert sites_view.choices_caption.startswith("Operating thresholds and recalibration")


def test_a_fixed_threshold_is_not_said_to_be_chosen() -> None:
    fixed = {"model": "global", "rule": "fixed", "threshold": 0.5, "chosen": False,
             "sites": [], "candidates": [], "recalibration": recalibration()}  # fmt: skip
    doc = report(settings={"level": 0.95, "operating_threshold": 0.5, "threshold_choices": [fixed]})
    assert read_context(doc).threshold_text == "threshold 0.5"
    line = read_page(doc).sites.choices[0]
    assert line.fixed and not line.chosen and line.sensitivity is None
    assert line.recalibration is not None and not line.recalibration.many_sites
    assert read_page(doc).sites.choices_caption.endswith("operating thresholds fixed")
    assert not read_page(doc).sites.recalibrated
    chosen = {**fixed, "rule": "youden", "chosen": True}
    doc = report(settings={"level": 0.95, "threshold_choices": [chosen]})
    assert read_context(doc).threshold_text == (
        "threshold 0.5 (chosen by Youden's J on the training sites' validation split)"
    )
    assert not read_page(doc).sites.choices[0].fixed
