"""report.schema.json: real reports validate, damaged copies are rejected at the right path.

The schema is generated from the pydantic models of ``server.report.model``, and
``validate`` checks a document through those models; so every check here runs twice,
with the models (``validate``) and with ``jsonschema`` against the generated schema,
and the committed ``report.schema.json`` must be the generated one.

The two examples under ``tests/server/data`` are report.json files written by
``hepafed simulate`` (a 5-hospital phantom, one external hospital): a holdout run
and a leave-one-site-out run; ``tests/server/data/reports/*/report.json`` are the
fixtures of small liver-2 runs (their README). Reports built by
``server.report.build_report`` for the shapes the examples lack (segmentation,
insufficient sites, missing evaluations, cross-site) must validate too, so the schema
tracks the producer.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import pytest
from jsonschema import Draft202012Validator

import server.report.schema as schema_module
from common.config import RunConfig
from common.keys import PrivacyMode
from common.summary import SiteSummary, Table2x2
from server.designs import Evaluation
from server.report import model as report_model
from server.report.build import build_report
from server.report.files import ReportError, load_report, schema, upgrade, validate
from server.report.model import REPORT_VERSION, Report
from server.report.model_privacy import DpMode
from server.report.schema import SCHEMA_FILE, schema_text

DATA = Path(__file__).parent / "data"
EXAMPLES = ("report-holdout.json", "report-loso.json")
# every committed report.json: the two above and the fixtures of tests/server/data/reports
ALL_EXAMPLES = (
    *EXAMPLES,
    *sorted(str(p.relative_to(DATA)) for p in DATA.glob("reports/*/report.json")),
)


def example(name: str) -> dict[str, Any]:
    return dict(json.loads((DATA / name).read_text(encoding="utf-8")))


def error_paths(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    validator = Draft202012Validator(schema())
    return [tuple(e.absolute_path) for e in validator.iter_errors(report)]


# ---- reports of other shapes, built by the producer -----------------------------------------

SITES = [
    {"node_id": i, "name": n, "role": r, "n_train": 90, "n_test": 60, "manifest_sha256": "ab" * 32}
    for i, (n, r) in enumerate([("a", "train"), ("b", "train"), ("c", "train"), ("e", "external")])
]
# acquisition summaries as sites send them: full (CT), MRI, empty; site "c" sent none
SITES[0]["acquisition"] = {
    "n_cases": 150,
    "vendor": {"GE": 100, "Siemens": 50},
    "scanner_model": {"Revolution CT": 100, "SOMATOM Force": 50},
    "kernel": {"STANDARD": 100, "Br40": 50},
    "slice_thickness_mm": {"n": 150, "min": 0.625, "median": 1.25, "max": 2.5},
    "kvp": {"n": 150, "min": 100.0, "median": 120.0, "max": 120.0},
    "contrast_delay_s": {"arterial": {"n": 150, "min": 30.0, "median": 35.0, "max": 40.0}},
}
SITES[1]["acquisition"] = {
    "n_cases": 150,
    "vendor": {"Philips": 150},
    "field_strength_t": {"n": 150, "min": 1.5, "median": 3.0, "max": 3.0},
}
SITES[3]["acquisition"] = {"n_cases": 150}
PROVENANCE = {
    "run_dir": "/runs/x",
    "model_sha256": {"global": "0" * 64},
    "manifest_sha256": {"a": "ab" * 32, "e": ""},
    "code_version": "0.1.0",
    "config": {"task": "lesion-malignancy", "eval.level": 0.95, "train.amp": True},
}


def config(**kw: object) -> dict[str, Any]:
    return dict(RunConfig().replace({"eval.histogram-bins": 4, **kw}).to_flat())


def classification(auc: float, var: float, shift: float = 0.0) -> SiteSummary:
    return SiteSummary(
        n=60,
        n_pos=30,
        n_neg=30,
        auc=auc,
        auc_var=var,
        tables=(Table2x2(0.5, 24, 6, 6, 24),),
        roc_tpr=tuple(min(1.0, 0.2 + i / 10) for i in range(11)),
        cal_count=(30, 30),
        cal_sum_p=(6.0, 24.0),
        cal_sum_y=(6, 24),
        cal_sum_sq=(3.0, 3.0),
        brier=0.1,
        cal_citl=0.1,
        cal_citl_se=0.2,
        cal_slope=0.9,
        cal_slope_se=0.1,
        cal_intercept=0.05,
        cal_intercept_se=0.2,
        hist_counts=((10, 20, 20, 10),),
        emb_mean=(shift, 0.0),
        emb_cov=((1.0, 0.0), (0.0, 1.0)),
    )


def segmentation(dice: float | None, n: int = 40) -> SiteSummary:
    if dice is None:
        return SiteSummary(n=n, insufficient=True)
    return SiteSummary(
        n=n,
        dice_mean=dice,
        dice_sd=0.1,
        dice_median=dice,
        dice_q1=dice - 0.05,
        dice_q3=dice + 0.05,
        hd95_mean=4.5,
        hd95_n=n - 1,
        hist_counts=((10, 20, 20, 10),),
    )


# site b left two bad cases out (data.on-bad-case = skip)
SKIPPING = replace(classification(0.86, 0.0014), skipped=2, skipped_ids=("b-003", "b-011"))


def holdout_with_problems() -> dict[str, Any]:
    evals = [
        Evaluation("global", "a", "internal", "test", classification(0.90, 0.001)),
        Evaluation("global", "b", "internal", "test", SKIPPING),
        Evaluation("global", "e", "external", "test", classification(0.70, 0.002, 2.0)),
        Evaluation("global", "tiny", "external", "test", SiteSummary(6, 1, 5, insufficient=True)),
    ]
    failed = {"global": {"c": "no reply within federation.round-timeout-s"}}
    return build_report(evals, config(), SITES, provenance=PROVENANCE, failed=failed)


def segmentation_report() -> dict[str, Any]:
    evals = [
        Evaluation("global", "a", "internal", "test", segmentation(0.8)),
        Evaluation("global", "b", "internal", "test", segmentation(0.75)),
        Evaluation("global", "e", "external", "test", segmentation(0.6)),
        Evaluation("global", "tiny", "external", "test", segmentation(None, 5)),
    ]
    cfg = config(task="lesion-segmentation")
    return build_report(evals, cfg, SITES, provenance=PROVENANCE)


def loso_report() -> dict[str, Any]:
    evals = []
    for out in "abc":
        model = f"without-{out}"
        for site in "abc":
            role, split = ("external", "all") if site == out else ("internal", "test")
            auc = 0.75 if site == out else 0.88
            evals.append(Evaluation(model, site, role, split, classification(auc, 0.002)))
        evals.append(Evaluation(model, "e", "external", "test", classification(0.7, 0.002)))
    return build_report(evals, config(**{"eval.design": "loso"}), SITES, provenance=PROVENANCE)


def cross_site_report() -> dict[str, Any]:
    evals = []
    for model in ("global", "local-a", "local-b"):
        for site in "abe":
            inside = (model == "global" and site != "e") or model == f"local-{site}"
            role = "internal" if inside else "external"
            evals.append(Evaluation(model, site, role, "test", classification(0.8, 0.002)))
    cfg = config(**{"eval.design": "cross-site"})
    return build_report(evals, cfg, SITES, provenance=PROVENANCE)


# a model's logistic recalibration, fitted on the validation splits of a and b
RECALIBRATION: dict[str, Any] = {
    "method": "logistic",
    "fitted": True,
    "intercept": -0.214,
    "slope": 0.873,
    "reason": "grouped logistic fit on 14 calibration groups",
    "sites": ["a", "b"],
    "n": 104,
    "n_groups": 14,
}
NOT_FITTED: dict[str, Any] = {
    **RECALIBRATION,
    "fitted": False,
    "intercept": None,
    "slope": None,
    "reason": "12 validation cases (3 positive) from 1 site(s): nothing applied",
    "sites": ["a"],
    "n": 12,
    "n_groups": 3,
}


def candidate(threshold: float, tp: int, fp: int) -> dict[str, Any]:
    """A candidate threshold over 52 malignant and 52 benign validation cases."""
    counts = {"tp": tp, "fp": fp, "fn": 52 - tp, "tn": 52 - fp}
    return {"threshold": threshold, **counts, "sensitivity": tp / 52, "specificity": 1 - fp / 52}


def threshold_choice(model: str = "global", **extra: Any) -> dict[str, Any]:
    """A Youden choice of 0.5 on a's and b's validation cases, as rounds.jsonl records it."""
    choice = {
        "model": model,
        "rule": "youden",
        "threshold": 0.5,
        "chosen": True,
        "reason": "largest pooled sensitivity + specificity - 1 = 0.538",
        "sites": ["a", "b"],
        "target_sensitivity": None,
        "candidates": [candidate(t, tp, fp) for t, tp, fp in ((0.35, 48, 30), (0.5, 40, 12))],
    }
    return {**choice, **extra}


def fixed_choice(model: str = "global", **extra: Any) -> dict[str, Any]:
    """eval.threshold-rule = fixed with a recalibration: the first threshold, not chosen."""
    fixed = {
        "rule": "fixed",
        "chosen": False,
        "reason": "eval.threshold-rule = 'fixed'",
        "sites": [],
        "candidates": [],
        "recalibration": RECALIBRATION,
    }
    return threshold_choice(model, **{**fixed, **extra})


# each site's calibration after the recalibration (the "before" is the row's own)
RECALIBRATED: dict[str, dict[str, Any]] = {
    "a": {
        "citl": {"estimate": 0.021, "lo": -0.37, "hi": 0.412, "se": 0.2},
        "slope": {"estimate": 1.043, "lo": 0.847, "hi": 1.239, "se": 0.1},
        "intercept": {"estimate": 0.018, "lo": -0.374, "hi": 0.41, "se": 0.2},
        "ece": 0.0412,
        "brier": 0.0917,
    },
    "e": {
        "citl": {"estimate": -0.114, "lo": -0.506, "hi": 0.278, "se": 0.2},
        "slope": {"estimate": 0.968, "lo": 0.772, "hi": 1.164, "se": 0.1},
        "intercept": {"estimate": -0.12, "lo": -0.512, "hi": 0.272, "se": 0.2},
        "ece": 0.0634,
        "brier": None,  # nullable after as before
    },
}


def recalibrated_report(choice: dict[str, Any] | None = None) -> dict[str, Any]:
    """A holdout report whose global model was recalibrated: the choice carries the map,
    sites a and e their calibration after it (b's row has none, as from an older site)."""
    worse = replace(classification(0.90, 0.001), cal_sum_p=(7.5, 22.5), brier=0.1234)
    evals = [
        Evaluation("global", "a", "internal", "test", worse),
        Evaluation("global", "b", "internal", "test", classification(0.86, 0.0014)),
        Evaluation("global", "e", "external", "test", classification(0.70, 0.002, 2.0)),
    ]
    chosen = choice or threshold_choice(recalibration=RECALIBRATION)
    report = build_report(evals, config(), SITES, provenance=PROVENANCE, threshold_choices=[chosen])
    for row in report["sites"]:
        if row["site"] in RECALIBRATED:
            row["calibration"]["recalibrated"] = copy.deepcopy(RECALIBRATED[row["site"]])
    return report


BUILT: dict[str, Callable[[], dict[str, Any]]] = {
    "holdout-with-problems": holdout_with_problems,
    "segmentation": segmentation_report,
    "loso": loso_report,
    "cross-site": cross_site_report,
    "recalibrated": recalibrated_report,
    "recalibrated-fixed-threshold": lambda: recalibrated_report(fixed_choice()),
}


# ---- the schema itself -----------------------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema_with_identity() -> None:
    s = schema()
    Draft202012Validator.check_schema(s)
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert s["$id"] and s["title"] and s["description"]
    assert s["properties"]["report_version"]["const"] == REPORT_VERSION
    assert s["additionalProperties"] is False


def test_every_property_says_what_it_means() -> None:
    missing: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for name, sub in node.get("properties", {}).items():
                if not sub.get("description"):
                    missing.append(f"{where}/{name}")
            for key, sub in node.items():
                if key != "if":  # conditions, not definitions
                    walk(sub, f"{where}/{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{where}/{i}")

    walk(schema(), "")
    assert not missing, f"properties without a description: {missing}"


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_reports_validate(name: str) -> None:
    report = example(name)
    assert error_paths(report) == []
    validate(report)  # what write_report and load_report use


@pytest.mark.parametrize("name", sorted(BUILT))
def test_reports_of_every_shape_built_by_the_server_validate(name: str) -> None:
    report = json.loads(json.dumps(BUILT[name](), allow_nan=False))
    assert error_paths(report) == []


def test_acquisition_summaries_reach_sites_joined() -> None:
    for name in EXAMPLES:
        joined = {s["name"]: s for s in example(name)["sites_joined"]}
        assert joined["hospital-a"]["acquisition"]["vendor"] == {"Siemens": 180}
    built = {s["name"]: s for s in BUILT["holdout-with-problems"]()["sites_joined"]}
    assert built["a"]["acquisition"] == SITES[0]["acquisition"]
    assert "acquisition" not in built["c"]  # optional: reports from older sites validate


def test_built_reports_exercise_the_nullable_and_optional_parts() -> None:
    seg = segmentation_report()
    assert seg["pooled"] == {"internal": None, "external": None, "difference": None}
    assert seg["curves"]["roc"] == [] and seg["drift_vs_degradation"]["spearman"]["rho"] is None
    problems = holdout_with_problems()
    assert any(r["insufficient"] for r in problems["sites"])
    assert {f["kind"] for f in problems["flags"]} >= {"insufficient-data", "no-evaluation"}


def test_skipped_cases_reach_the_site_rows() -> None:
    report = json.loads(json.dumps(holdout_with_problems(), allow_nan=False))
    rows = {r["site"]: r for r in report["sites"]}
    assert rows["b"]["skipped_cases"] == {"n": 2, "ids": ["b-003", "b-011"]}
    assert rows["a"]["skipped_cases"] == {"n": 0, "ids": []}
    assert rows["tiny"]["skipped_cases"] == {"n": 0, "ids": []}  # insufficient rows too
    b = [r["site"] for r in report["sites"]].index("b")
    report["sites"][b]["skipped_cases"]["ids"] = [f"b-{i:03d}" for i in range(21)]
    assert ("sites", b, "skipped_cases", "ids") in error_paths(report)  # 20 ids at most
    report["sites"][b]["skipped_cases"] = {"n": -1, "ids": []}
    assert ("sites", b, "skipped_cases", "n") in error_paths(report)


# ---- damaged reports ---------------------------------------------------------------------------


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(report: dict[str, Any]) -> None:
        node: Any = report
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _delete(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
    def mutate(report: dict[str, Any]) -> None:
        node: Any = report
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


# ---- recalibration ---------------------------------------------------------------------------


def _jsonschema_and_models(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The paths jsonschema finds wrong; the models must agree on whether any is."""
    paths = error_paths(report)
    if paths:
        with pytest.raises(ReportError):
            validate(report)
    else:
        validate(report)
        Report.model_validate(report)
    return paths


def test_a_recalibration_and_the_calibration_after_it_validate() -> None:
    report = json.loads(json.dumps(recalibrated_report(), allow_nan=False))
    assert _jsonschema_and_models(report) == []
    rows = {r["site"]: r for r in report["sites"]}
    assert rows["a"]["calibration"]["recalibrated"]["ece"] == 0.0412
    assert "recalibrated" not in rows["b"]["calibration"]  # optional: older rows validate
    model = Report.model_validate(report)
    choice = (model.settings.threshold_choices or [])[0]
    assert choice.recalibration is not None
    assert (choice.recalibration.intercept, choice.recalibration.slope) == (-0.214, 0.873)
    assert (choice.recalibration.n, choice.recalibration.n_groups) == (104, 14)
    a = model.sites[0].calibration
    assert a is not None and a.recalibrated is not None and a.recalibrated.slope.estimate == 1.043
    # a recalibration that could not be fitted: no coefficients, nothing applied
    report["settings"]["threshold_choices"][0]["recalibration"] = copy.deepcopy(NOT_FITTED)
    for row in report["sites"]:
        row["calibration"].pop("recalibrated", None)
    assert _jsonschema_and_models(report) == []


def test_a_fixed_threshold_with_a_recalibration_validates() -> None:
    report = json.loads(json.dumps(recalibrated_report(fixed_choice()), allow_nan=False))
    assert _jsonschema_and_models(report) == []
    choice = report["settings"]["threshold_choices"][0]
    assert (choice["rule"], choice["chosen"], choice["candidates"]) == ("fixed", False, [])
    assert report["settings"]["operating_threshold"] == 0.5


RECALIBRATION_DAMAGE: list[tuple[str, Callable[[dict[str, Any]], None], tuple[Any, ...]]] = [
    (
        "recalibrated block without ece",
        _delete(("sites", 0, "calibration", "recalibrated", "ece")),
        ("sites", 0, "calibration", "recalibrated"),
    ),
    (
        "recalibrated ece above 1",
        _set(("sites", 0, "calibration", "recalibrated", "ece"), 1.5),
        ("sites", 0, "calibration", "recalibrated", "ece"),
    ),
    (
        "recalibrated block with an extra key",
        _set(("sites", 0, "calibration", "recalibrated", "recalibrated"), {}),
        ("sites", 0, "calibration", "recalibrated"),
    ),
    (
        "recalibrated null, not absent",
        _set(("sites", 0, "calibration", "recalibrated"), None),
        ("sites", 0, "calibration", "recalibrated"),
    ),
    (
        "recalibration of another method",
        _set(("settings", "threshold_choices", 0, "recalibration", "method"), "isotonic"),
        ("settings", "threshold_choices", 0, "recalibration", "method"),
    ),
    (
        "recalibration without n_groups",
        _delete(("settings", "threshold_choices", 0, "recalibration", "n_groups")),
        ("settings", "threshold_choices", 0, "recalibration"),
    ),
    (
        "fitted recalibration without its slope",
        _set(("settings", "threshold_choices", 0, "recalibration", "slope"), None),
        ("settings", "threshold_choices", 0, "recalibration"),
    ),
    (
        "recalibration not fitted but with coefficients",
        _set(("settings", "threshold_choices", 0, "recalibration", "fitted"), False),
        ("settings", "threshold_choices", 0, "recalibration"),
    ),
    (
        "recalibration slope not positive",
        _set(("settings", "threshold_choices", 0, "recalibration", "slope"), -0.5),
        ("settings", "threshold_choices", 0, "recalibration", "slope"),
    ),
    (
        "fixed threshold without a recalibration",
        lambda r: r["settings"]["threshold_choices"].__setitem__(
            0, {k: v for k, v in fixed_choice().items() if k != "recalibration"}
        ),
        ("settings", "threshold_choices", 0),
    ),
    (
        "fixed threshold said to be chosen",
        _set(("settings", "threshold_choices", 0), fixed_choice(chosen=True)),
        ("settings", "threshold_choices", 0),
    ),
    (
        "fixed threshold with candidates",
        _set(
            ("settings", "threshold_choices", 0),
            fixed_choice(candidates=threshold_choice()["candidates"]),
        ),
        ("settings", "threshold_choices", 0),
    ),
    (
        "unknown threshold rule",
        _set(("settings", "threshold_choices", 0, "rule"), "manual"),
        ("settings", "threshold_choices", 0, "rule"),
    ),
]


@pytest.mark.parametrize(
    ("mutate", "where"), [pytest.param(m, w, id=label) for label, m, w in RECALIBRATION_DAMAGE]
)
def test_a_damaged_recalibration_is_rejected_by_both_validators(
    mutate: Callable[[dict[str, Any]], None], where: tuple[Any, ...]
) -> None:
    report = json.loads(json.dumps(recalibrated_report(), allow_nan=False))
    assert report["sites"][0]["site"] == "a"
    mutate(report)
    assert where in error_paths(report), f"jsonschema: no error at {where}: {error_paths(report)}"
    location = "/".join(str(p) for p in where) or "(top level)"
    with pytest.raises(ReportError, match=re.escape(f"at {location}: ")):
        validate(report)


# (name, example, mutation, path where the error must be reported)
DAMAGE: list[tuple[str, str, Callable[[dict[str, Any]], None], tuple[Any, ...]]] = [
    ("missing top-level key", EXAMPLES[0], _delete(("pooled",)), ()),
    ("missing site count", EXAMPLES[0], _delete(("sites", 0, "n")), ("sites", 0)),
    ("count as string", EXAMPLES[0], _set(("sites", 0, "n"), "45"), ("sites", 0, "n")),
    ("extra top-level key", EXAMPLES[0], _set(("comment",), "hi"), ()),
    ("wrong report version", EXAMPLES[0], _set(("report_version",), "2.0"), ("report_version",)),
    (
        "AUC as string",
        EXAMPLES[0],
        _set(("sites", 0, "auc", "estimate"), "0.658"),
        ("sites", 0, "auc", "estimate"),
    ),
    ("AUC above 1", EXAMPLES[1], _set(("sites", 1, "auc", "hi"), 1.2), ("sites", 1, "auc", "hi")),
    (
        "I² above 100 percent",
        EXAMPLES[0],
        _set(("pooled", "internal", "auc", "i2"), 120.0),
        ("pooled", "internal"),
    ),
    (
        "AUC variance null",
        EXAMPLES[0],
        _set(("sites", 2, "auc", "variance"), None),
        ("sites", 2, "auc", "variance"),
    ),
    ("unknown settings key", EXAMPLES[0], _set(("settings", "alpha"), 0.05), ("settings",)),
    ("unknown design", EXAMPLES[0], _set(("design",), "bootstrap"), ("design",)),
    (
        "manifest hash not hex",
        EXAMPLES[0],
        _set(("sites_joined", 0, "manifest_sha256"), "not-a-hash"),
        ("sites_joined", 0, "manifest_sha256"),
    ),
    (
        "unknown sites_joined key",
        EXAMPLES[1],
        _set(("sites_joined", 0, "address"), "10.0.0.1"),
        ("sites_joined", 0),
    ),
    (
        "per-case values in an acquisition summary",
        EXAMPLES[0],
        _set(("sites_joined", 1, "acquisition", "kvp"), [120, 100, 120]),
        ("sites_joined", 1, "acquisition", "kvp"),
    ),
    (
        "unknown acquisition key",
        EXAMPLES[1],
        _set(("sites_joined", 2, "acquisition", "case_ids"), "x"),
        ("sites_joined", 2, "acquisition"),
    ),
    (
        "vendor count as text",
        EXAMPLES[0],
        _set(("sites_joined", 0, "acquisition", "vendor", "Siemens"), "180"),
        ("sites_joined", 0, "acquisition", "vendor", "Siemens"),
    ),
    ("unknown flag kind", EXAMPLES[0], _set(("flags", 0, "kind"), "odd"), ("flags", 0, "kind")),
    ("loso without folds", EXAMPLES[1], _delete(("folds",)), ()),
    ("holdout with folds", EXAMPLES[0], _set(("folds",), []), ()),
    (
        "insufficient row with an AUC",
        EXAMPLES[0],
        _set(("sites", 0, "insufficient"), True),
        ("sites", 0),
    ),
    (
        "W1 without PSI",
        EXAMPLES[0],
        _delete(("sites", 0, "drift", "psi")),
        ("sites", 0, "drift"),
    ),
    (
        "Spearman rho outside [-1, 1]",
        EXAMPLES[1],
        _set(("drift_vs_degradation", "spearman", "rho"), 1.5),
        ("drift_vs_degradation", "spearman", "rho"),
    ),
    (
        "config value not a scalar",
        EXAMPLES[0],
        _set(("provenance", "config", "eval.thresholds"), [0.5]),
        ("provenance", "config", "eval.thresholds"),
    ),
    (
        "model hash truncated",
        EXAMPLES[1],
        _set(("provenance", "model_sha256", "without-hospital-a"), "0799"),
        ("provenance", "model_sha256", "without-hospital-a"),
    ),
    (
        "negative case count in the matrix",
        EXAMPLES[1],
        _set(("matrix", 3, "n"), -1),
        ("matrix", 3, "n"),
    ),
]


@pytest.mark.parametrize(
    ("mutate", "name", "where"),
    [pytest.param(m, n, w, id=label) for label, n, m, w in DAMAGE],
)
def test_damaged_reports_are_rejected_naming_the_path(
    mutate: Callable[[dict[str, Any]], None], name: str, where: tuple[Any, ...]
) -> None:
    report = copy.deepcopy(example(name))
    mutate(report)
    paths = error_paths(report)
    assert paths, "the damaged report validated"
    assert where in paths, f"no error at {where}: {paths}"
    with pytest.raises(ReportError) as err:
        validate(report)
    location = "/".join(str(p) for p in where) or "(top level)"
    assert f"at {location}" in str(err.value)


# ---- the schema is generated from the models ---------------------------------------------------


def test_the_committed_schema_is_the_generated_one() -> None:
    committed = Path(schema_module.__file__).with_name(SCHEMA_FILE).read_text(encoding="utf-8")
    assert committed == schema_text(), (
        f"server/report/{SCHEMA_FILE} differs from the models: regenerate it with "
        "`python -m server.report.schema` (never edit it by hand)"
    )


def test_one_report_version_and_the_choices_of_the_runtime() -> None:
    assert get_args(Report.model_fields["report_version"].annotation) == (REPORT_VERSION,)
    assert report_model.REPORT_VERSION == REPORT_VERSION
    assert set(get_args(DpMode)) == {m.value for m in PrivacyMode} - {PrivacyMode.NONE.value}


def test_validation_lives_in_schema_and_files_re_exports_it() -> None:
    from server.report import files

    assert files.schema is schema_module.schema
    assert files.validate is schema_module.validate
    assert files.ReportError is schema_module.ReportError


def test_the_models_import_nothing_of_the_runtime() -> None:
    code = (
        "import sys, server.report.schema, server.report.model; "
        "print(sorted({'torch', 'flwr', 'monai', 'numpy', 'scipy'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def same_document(a: Any, b: Any, where: str = "") -> None:
    """``a == b`` with the types checked too (``True == 1`` in Python), except that an integer
    in a ``number`` field comes back as a float (120 as 120.0: the same JSON number)."""
    if isinstance(a, dict):
        assert isinstance(b, dict), where
        assert a.keys() == b.keys(), f"{where}: keys differ: {sorted(set(a) ^ set(b))}"
        for key in a:
            same_document(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same_document(x, y, f"{where}/{i}")
    else:
        numbers = (type(a), type(b)) == (int, float)
        assert type(a) is type(b) or numbers, f"{where}: {a!r} came back as {b!r}"
        assert a == b, f"{where}: {a!r} came back as {b!r}"


@pytest.mark.parametrize("name", ALL_EXAMPLES)
def test_every_example_validates_with_the_models_and_the_generated_schema(name: str) -> None:
    report = example(name)
    Report.model_validate(report)
    validate(report)
    Draft202012Validator(schema()).validate(report)


@pytest.mark.parametrize("name", ALL_EXAMPLES)
def test_the_models_give_back_every_example_unchanged(name: str) -> None:
    # exclude_unset: a key the document leaves out (privacy, folds, a row's auc...) stays out;
    # every value it has, null included, comes back as it was
    report = example(name)
    dumped = Report.model_validate(report).model_dump(mode="json", exclude_unset=True)
    same_document(report, dumped)


@pytest.mark.parametrize("name", sorted(BUILT))
def test_built_reports_validate_with_the_models_and_come_back_unchanged(name: str) -> None:
    built = BUILT[name]()
    validate(built)  # as write_report does, before the JSON is written
    report = json.loads(json.dumps(built, allow_nan=False))
    dumped = Report.model_validate(report).model_dump(mode="json", exclude_unset=True)
    same_document(report, dumped)


# (label, mutation, path both validators must name); applied to every example
MUTATIONS: list[tuple[str, Callable[[dict[str, Any]], None], tuple[Any, ...]]] = [
    ("wrong role", _set(("sites", 0, "role"), "sideways"), ("sites", 0, "role")),
    (
        "wrong joined role",
        _set(("sites_joined", 0, "role"), "internal"),
        ("sites_joined", 0, "role"),
    ),
    ("wrong pooling", _set(("settings", "pooling"), "ML"), ("settings", "pooling")),
    ("wrong task", _set(("task",), "lesion-detection"), ("task",)),
    ("no adaptation", _delete(("matrix", 0, "adaptation")), ("matrix", 0)),
    (
        "no spearman n",
        _delete(("drift_vs_degradation", "spearman", "n")),
        ("drift_vs_degradation", "spearman"),
    ),
    ("no created", _delete(("created",)), ()),
    ("extra curves key", _set(("curves", "precision_recall"), []), ("curves",)),
    ("extra provenance key", _set(("provenance", "signature"), "ab"), ("provenance",)),
    ("extra matrix key", _set(("matrix", 1, "auc_text"), "0.7"), ("matrix", 1)),
    ("level as string", _set(("settings", "level"), "0.95"), ("settings", "level")),
    ("count as string", _set(("matrix", 0, "n"), "10"), ("matrix", 0, "n")),
    ("count as boolean", _set(("sites", 0, "n"), True), ("sites", 0, "n")),
    ("count as float", _set(("sites", 0, "n_pos"), 4.5), ("sites", 0, "n_pos")),
    ("boolean as number", _set(("sites", 0, "insufficient"), 0), ("sites", 0, "insufficient")),
    ("report version 1.0", _set(("report_version",), "1.0"), ("report_version",)),
    ("report version 1.2", _set(("report_version",), "1.2"), ("report_version",)),
    (
        "null, not absent",
        _set(("sites_joined", 0, "acquisition"), None),
        ("sites_joined", 0, "acquisition"),
    ),
    ("null joined count", _set(("sites_joined", 1, "n_test"), None), ("sites_joined", 1, "n_test")),
    ("too few thresholds", _set(("settings", "thresholds"), []), ("settings", "thresholds")),
]


@pytest.mark.parametrize("name", ALL_EXAMPLES)
@pytest.mark.parametrize(
    ("mutate", "where"), [pytest.param(m, w, id=label) for label, m, w in MUTATIONS]
)
def test_both_validators_reject_a_mutation_at_its_path(
    mutate: Callable[[dict[str, Any]], None], where: tuple[Any, ...], name: str
) -> None:
    report = copy.deepcopy(example(name))
    mutate(report)
    assert where in error_paths(report), f"jsonschema: no error at {where}"
    location = "/".join(str(p) for p in where) or "(top level)"
    with pytest.raises(ReportError, match=re.escape(f"at {location}: ")):
        validate(report)


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (_set(("settings", "margin"), float("nan")), "settings/margin"),
        (_set(("sites", 0, "drift", "psi"), float("inf")), "sites/0/drift/psi"),
        (_set(("created",), "5 December 2026"), "created"),
        (_set(("created",), "2026-12-05T18:01:08"), "created"),  # no UTC offset
    ],
)
def test_the_models_also_refuse_what_json_cannot_hold_and_bad_dates(
    mutate: Callable[[dict[str, Any]], None], where: str
) -> None:
    # the generated schema says "number" and "format: date-time"; jsonschema accepts NaN as a
    # number and checks formats only when asked, but write_report must not get that far
    report = copy.deepcopy(example(EXAMPLES[0]))
    mutate(report)
    with pytest.raises(ReportError, match=f"at {where}: "):
        validate(report)


def test_a_union_names_every_alternative() -> None:
    report = copy.deepcopy(example(EXAMPLES[0]))
    report["provenance"]["config"]["eval.thresholds"] = [0.5]
    with pytest.raises(ReportError) as err:
        validate(report)
    assert str(err.value).endswith(
        "at provenance/config/eval.thresholds: Input should be a valid string, a valid "
        "boolean, a valid integer or a valid number"
    )


def _as_version_1_0(report: dict[str, Any]) -> dict[str, Any]:
    """A 1.1 report as 1.0 wrote it: no hooks, no adaptation."""
    old = copy.deepcopy(report)
    old["report_version"] = "1.0"
    del old["settings"]["hooks"]
    for row in [*old["sites"], *old["matrix"]]:
        del row["adaptation"]
    return old


@pytest.mark.parametrize("name", ALL_EXAMPLES)
def test_reports_of_version_1_0_validate_after_upgrade(name: str, tmp_path: Path) -> None:
    old = _as_version_1_0(example(name))
    with pytest.raises(ReportError):
        validate(old)  # not without its upgrade
    path = tmp_path / "report.json"
    path.write_text(json.dumps(old), encoding="utf-8")
    loaded = load_report(path)  # upgrades, then validates
    assert loaded["report_version"] == REPORT_VERSION
    validate(upgrade(_as_version_1_0(example(name))))
