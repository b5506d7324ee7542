"""The report's three-way block (task lesion-type), built from hand-made site summaries.

Every number must equal ``common.stats`` fed the summary's counts (itself checked against
pROC / metafor / sklearn in tests/common): per-class DeLong intervals, the macro AUC with
the class covariance, Wilson sensitivity and specificity, logit-scale pooling per class.
Here we check that the block feeds them the right numbers and sites, sums the confusion
matrices without inventing a suppressed cell, validates against the schema and reaches
the page and the terminal; and that other tasks have no such block.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from jsonschema import Draft202012Validator
from scipy import stats as sps

from common.stats import AUCResult, calibration_bins, ece_from_bins
from common.stats.multiclass import OvRAUCResult, macro_auc, ovr_auc, ovr_pooled
from common.summary import SiteSummary
from server.designs import Evaluation
from server.report.build import build_report
from server.report.files import schema
from server.report.html import render_html
from server.report.model import Report
from server.report.pooling import difference
from server.report.schema import ReportError, validate
from server.report.terminal import format_summary
from tests.server.test_report_schema import PROVENANCE, SITES, classification, config

K = 3
BINS = 5
LESION = {"task": "lesion-type", "eval.calibration-bins": BINS}


def per_case(seed: int, n_per_class: tuple[int, int, int], signal: float):
    """Labels and softmax rows whose true class gets ``signal`` more logit on average."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), n_per_class)
    logits = rng.normal(size=(len(y), K))
    logits[np.arange(len(y)), y] += signal
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def three_way(
    seed: int,
    n_per_class: tuple[int, int, int] = (30, 25, 20),
    signal: float = 1.5,
    suppress: tuple[int, ...] = (),
) -> tuple[SiteSummary, Any, Any]:
    """A lesion-type summary of synthetic cases (its binary view is a fixed stand-in), the
    cases' labels and probabilities. ``suppress``: flat confusion cells sent as -1."""
    y, p = per_case(seed, n_per_class, signal)
    pred = p.argmax(axis=1)
    full = np.bincount(y * K + pred, minlength=K * K).reshape(K, K)
    ovr = ovr_auc(y, p)
    bins = [calibration_bins(y == k, p[:, k], BINS) for k in range(K)]
    confusion = [-1 if i in suppress else int(v) for i, v in enumerate(full.ravel())]
    base = classification(0.85, 0.001)
    summary = replace(
        base,
        n=len(y),
        class_n=tuple(int(v) for v in np.bincount(y, minlength=K)),
        class_pred=tuple(int(v) for v in full.sum(axis=0)),
        class_correct=tuple(int(v) for v in np.diag(full)),
        confusion=tuple(confusion),
        class_auc=ovr.aucs,
        class_auc_cov=tuple(float(v) for v in ovr.cov.ravel()),
        class_cal_count=tuple(int(c) for b in bins for c in b.count),
        class_cal_sum_p=tuple(float(v) for b in bins for v in b.sum_p),
        class_cal_sum_y=tuple(round(v) for b in bins for v in b.sum_y),
        brier_multi=float(np.mean(np.sum((p - np.eye(K)[y]) ** 2, axis=1))),
    )
    return summary, y, p


A, A_Y, A_P = three_way(1)
B, _, _ = three_way(2, (24, 30, 22), signal=1.2, suppress=(1,))  # true benign, called primary
E1, E1_Y, E1_P = three_way(3, signal=0.8)
E2, _, _ = three_way(4, (20, 20, 26), signal=0.9)
# too few metastases: the site sends its class counts only
C = replace(classification(0.80, 0.002), class_n=(30, 26, 3))

LT_SITES = [*SITES, {**SITES[3], "node_id": 4, "name": "f"}]


def evaluations() -> list[Evaluation]:
    return [
        Evaluation("global", "a", "internal", "test", A),
        Evaluation("global", "b", "internal", "test", B),
        Evaluation("global", "c", "internal", "test", C),
        Evaluation("global", "e", "external", "test", E1),
        Evaluation("global", "f", "external", "test", E2),
    ]


def built(evals: list[Evaluation], task: str = "lesion-type") -> dict[str, Any]:
    """The report as JSON gives it back (NaN refused)."""
    cfg = config(**LESION) if task == "lesion-type" else config()
    provenance: dict[str, Any] = dict(PROVENANCE)
    provenance["config"] = {**provenance["config"], "task": task}
    report = build_report(evals, cfg, LT_SITES, provenance)
    return dict(json.loads(json.dumps(report, allow_nan=False)))


REPORT = built(evaluations())
BLOCK = REPORT["lesion_type"]


def site(name: str) -> dict[str, Any]:
    (row,) = [r for r in BLOCK["sites"] if r["site"] == name]
    return row


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float, float]:
    z = sps.norm.ppf(0.5 + level / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, centre - half, centre + half


# ---- per site ----------------------------------------------------------------------------------


def test_the_block_names_the_classes_the_rule_and_the_binary_view() -> None:
    assert BLOCK["classes"] == ["benign", "primary malignant", "metastasis"]
    assert BLOCK["rule"] == "argmax" and "largest predicted probability" in BLOCK["rule_text"]
    assert "benign (0) vs malignant (1 or 2)" in BLOCK["binary_view"]
    assert [r["site"] for r in BLOCK["sites"]] == ["a", "b", "c", "e", "f"]
    assert [r["role"] for r in BLOCK["sites"]] == ["internal"] * 3 + ["external"] * 2


def test_per_class_auc_is_the_delong_interval_of_each_class() -> None:
    ovr = ovr_auc(A_Y, A_P)
    row = site("a")
    assert row["class_n"] == [30, 25, 20] and row["n"] == 75 and not row["insufficient"]
    for k, c in enumerate(row["per_class"]):
        ref = AUCResult(ovr.aucs[k], ovr.covariance[k][k], ovr.n_pos[k], ovr.n_neg[k])
        assert c["class_name"] == BLOCK["classes"][k]
        assert c["auc"]["estimate"] == pytest.approx(ref.auc, abs=1e-12)
        assert c["auc"]["variance"] == pytest.approx(ref.variance, abs=1e-15)
        assert (c["auc"]["lo"], c["auc"]["hi"]) == pytest.approx(ref.ci(0.95), abs=1e-12)


def test_macro_auc_uses_the_covariance_of_the_class_aucs() -> None:
    ref = macro_auc(ovr_auc(A_Y, A_P), 0.95)
    macro = site("a")["macro"]
    assert macro["estimate"] == pytest.approx(ref.macro, abs=1e-12)
    assert macro["variance"] == pytest.approx(ref.macro_variance, abs=1e-15)
    assert (macro["lo"], macro["hi"]) == pytest.approx(ref.macro_ci, abs=1e-12)
    # not the naive mean of the variances / K^2: the class AUCs are correlated
    diag = sum(ovr_auc(A_Y, A_P).covariance[k][k] for k in range(K)) / K**2
    assert macro["variance"] != pytest.approx(diag, rel=1e-6)


def test_sensitivity_and_specificity_are_wilson_on_the_counts() -> None:
    # a small site by hand: 20 per class; assigned 22, 18, 20; correct 15, 12, 14
    small = replace(
        classification(0.8, 0.002),
        n=60,
        class_n=(20, 20, 20),
        class_pred=(22, 18, 20),
        class_correct=(15, 12, 14),
    )
    report = built([Evaluation("global", "a", "internal", "test", small)])
    (row,) = report["lesion_type"]["sites"]
    benign = row["per_class"][0]
    assert tuple(benign["sensitivity"].values()) == pytest.approx(wilson(15, 20))
    # the others (40) not called benign: 60 - 20 - 22 + 15 = 33
    assert tuple(benign["specificity"].values()) == pytest.approx(wilson(33, 40))
    primary = row["per_class"][1]
    assert tuple(primary["specificity"].values()) == pytest.approx(wilson(60 - 20 - 18 + 12, 40))
    # no AUCs sent: the counts still give sensitivity and specificity, the AUCs are null
    assert benign["auc"] is None and row["macro"] is None and row["confusion"] is None


def test_ece_and_brier_come_from_the_class_bins() -> None:
    row = site("e")
    for k, c in enumerate(row["per_class"]):
        ref = ece_from_bins(calibration_bins(np.equal(E1_Y, k), E1_P[:, k], BINS))
        assert c["ece"] == pytest.approx(ref, abs=1e-12)
    assert row["brier_multi"] == pytest.approx(E1.brier_multi)


def test_a_suppressed_cell_is_null_and_the_site_says_so() -> None:
    b = site("b")
    assert b["suppressed"] is True and b["confusion"][0][1] is None
    assert sum(v is None for r in b["confusion"] for v in r) == 1
    a = site("a")
    assert a["suppressed"] is False
    assert a["confusion"] == np.asarray(A.confusion).reshape(K, K).tolist()


def test_a_site_with_too_few_cases_of_a_class_is_insufficient() -> None:
    c = site("c")
    assert c["insufficient"] is True and c["class_n"] == [30, 26, 3]
    assert c["per_class"] == [] and c["macro"] is None and c["confusion"] is None
    assert c["brier_multi"] is None and c["suppressed"] is False


# ---- pooled and the gap ------------------------------------------------------------------------


def _ovr(s: SiteSummary) -> OvRAUCResult:
    cov = np.asarray(s.class_auc_cov).reshape(K, K)
    n = sum(s.class_n)
    return OvRAUCResult(
        s.class_auc, tuple(map(tuple, cov)), s.class_n, tuple(n - m for m in s.class_n)
    )


@pytest.mark.parametrize(("role", "summaries"), [("internal", (A, B)), ("external", (E1, E2))])
def test_each_class_is_pooled_over_the_sites_of_a_role(
    role: str, summaries: tuple[SiteSummary, ...]
) -> None:
    aucs = [list(s.class_auc) for s in summaries]
    variances = [[_ovr(s).covariance[k][k] for k in range(K)] for s in summaries]
    refs = ovr_pooled(aucs, variances, method="REML", hartung_knapp=False, level=0.95)
    block = BLOCK["pooled"][role]
    assert block["sites"] == (["a", "b"] if role == "internal" else ["e", "f"])  # not c
    for k, (entry, ref) in enumerate(zip(block["per_class"], refs, strict=True)):
        assert ref is not None and entry["class_name"] == BLOCK["classes"][k]
        assert entry["sites"] == block["sites"]
        auc = entry["auc"]
        assert auc["estimate"] == pytest.approx(ref.estimate, abs=1e-12)
        assert (auc["lo"], auc["hi"]) == pytest.approx(ref.ci, abs=1e-12)
        pi = auc["prediction_interval"]
        assert (pi["lo"], pi["hi"]) == pytest.approx(ref.prediction_interval, abs=1e-12)
        assert auc["tau2"] == pytest.approx(ref.logit.tau2, abs=1e-12)
        assert auc["i2"] == pytest.approx(ref.logit.i2, abs=1e-9)
        assert auc["k"] == 2 and auc["scale"] == "logit"


def test_pooled_confusion_sums_the_cells_and_keeps_a_suppressed_one_unknown() -> None:
    internal = BLOCK["pooled"]["internal"]["confusion"]
    a = np.asarray(A.confusion).reshape(K, K)
    b = np.asarray(B.confusion).reshape(K, K)
    for r in range(K):
        for c in range(K):
            expected = None if b[r, c] < 0 else int(a[r, c] + b[r, c])
            assert internal[r][c] == expected
    assert internal[0][1] is None
    external = BLOCK["pooled"]["external"]["confusion"]
    e = np.asarray(E1.confusion).reshape(K, K) + np.asarray(E2.confusion).reshape(K, K)
    assert external == e.tolist()


def test_the_gap_is_pooled_internal_minus_external_per_class() -> None:
    for k, g in enumerate(BLOCK["gap"]):
        a = BLOCK["pooled"]["internal"]["per_class"][k]["auc"]
        b = BLOCK["pooled"]["external"]["per_class"][k]["auc"]
        ref = difference(a["estimate"], a["se"], b["estimate"], b["se"], 0.95)
        assert g["class_name"] == BLOCK["classes"][k]
        assert (g["internal_auc"], g["external_auc"]) == (a["estimate"], b["estimate"])
        assert g["difference"] == pytest.approx(ref)
        assert g["difference"]["se"] == pytest.approx(math.hypot(a["se"], b["se"]))


def test_without_external_sites_the_gap_is_null() -> None:
    report = built(evaluations()[:3])
    block = report["lesion_type"]
    assert block["pooled"]["external"] is None
    assert [g["difference"] for g in block["gap"]] == [None, None, None]
    assert all(g["external_auc"] is None for g in block["gap"])
    validate(report)


# ---- schema, page, terminal --------------------------------------------------------------------


def test_the_lesion_type_report_validates_with_both_validators_and_comes_back_unchanged() -> None:
    assert list(Draft202012Validator(schema()).iter_errors(REPORT)) == []
    validate(REPORT)
    dumped = Report.model_validate(REPORT).model_dump(mode="json", exclude_unset=True)
    assert dumped == REPORT


def test_the_block_belongs_to_its_task_only() -> None:
    validator = Draft202012Validator(schema())
    without = {k: v for k, v in REPORT.items() if k != "lesion_type"}
    assert list(validator.iter_errors(without))
    with pytest.raises(ReportError, match="lesion_type"):
        validate(without)
    malignancy = {**REPORT, "task": "lesion-malignancy"}
    assert list(validator.iter_errors(malignancy))
    with pytest.raises(ReportError, match="lesion_type"):
        validate(malignancy)


def test_a_damaged_block_is_rejected_at_its_path() -> None:
    damaged = json.loads(json.dumps(REPORT))
    damaged["lesion_type"]["sites"][0]["class_n"] = [1, 2]
    paths = [tuple(e.absolute_path) for e in Draft202012Validator(schema()).iter_errors(damaged)]
    assert paths == [("lesion_type", "sites", 0, "class_n")]
    with pytest.raises(ReportError, match="lesion_type/sites/0/class_n"):
        validate(damaged)


def test_the_page_has_the_three_way_section_with_suppressed_cells() -> None:
    html = render_html(REPORT)
    assert 'id="lesion-type"' in html and "Three-way lesion type" in html
    section = html.split('id="lesion-type"', 1)[1].split("</section>", 1)[0]
    assert "suppressed" in section and "insufficient data" in section
    assert "primary malignant" in section and "metastasis" in section
    macro = site("a")["macro"]
    assert f"{macro['estimate']:.3f}" in section
    gap = BLOCK["gap"][2]["difference"]["estimate"]
    assert f"{abs(gap):.3f}" in section
    assert "Pooled internal: summed over a, b" in section


def test_the_terminal_shows_macro_aucs_and_the_per_class_gap() -> None:
    text = format_summary(REPORT)
    assert "three-way lesion type" in text
    macro = site("e")["macro"]["estimate"]
    assert f"e (global, external, n 30/25/20): macro AUC {macro:.3f}" in text
    assert "c (global, internal, n 30/26/3): insufficient data" in text
    g = BLOCK["gap"][0]
    assert f"benign            pooled internal {g['internal_auc']:.3f}" in text


def test_a_malignancy_report_has_no_three_way_block_section_or_lines() -> None:
    evals = [replace(e, summary=classification(0.85, 0.001)) for e in evaluations()]
    report = built(evals, task="lesion-malignancy")
    assert "lesion_type" not in report
    validate(report)
    assert 'id="lesion-type"' not in render_html(report)
    assert "three-way" not in format_summary(report)


def test_training_noise_combines_each_sites_macro_auc_over_seeds() -> None:
    """`--seeds N` on lesion-type: each site's macro AUC per seed, combined like the AUC
    (common.stats.seeds.combine_seeds: mean, U + B/S); a malignancy run has none."""
    from common.stats import combine_seeds
    from server.report.training_noise import combined_report

    second = built(
        [
            Evaluation("global", "a", "internal", "test", three_way(11)[0]),
            Evaluation("global", "b", "internal", "test", three_way(12, signal=1.0)[0]),
            Evaluation("global", "c", "internal", "test", C),
            Evaluation("global", "e", "external", "test", three_way(13, signal=0.7)[0]),
            Evaluation("global", "f", "external", "test", E2),
        ]
    )
    doc = combined_report([(2026, REPORT), (2027, second)], ["seed-2026", "seed-2027"])
    validate(doc)
    rows = {r["site"]: r for r in doc["training_noise"]["sites"]}
    for name in ("a", "b", "e", "f"):
        macros = [
            next(r["macro"] for r in d["lesion_type"]["sites"] if r["site"] == name)
            for d in (REPORT, second)
        ]
        figure = rows[name]["macro_auc"]
        assert figure["per_seed"] == pytest.approx([m["estimate"] for m in macros])
        c = combine_seeds([m["estimate"] for m in macros], [m["variance"] for m in macros])
        assert figure["combined"]["estimate"] == pytest.approx(c.estimate)
        assert figure["combined"]["se"] == pytest.approx(c.se)
    assert rows["c"]["macro_auc"]["combined"] is None  # insufficient in both seeds
    assert "a (global) macro" in format_summary(doc)
    assert "global, macro" in render_html(doc)
    plain = combined_report([(1, built(evaluations(), "lesion-malignancy"))] * 2, ["x", "y"])
    assert all("macro_auc" not in r for r in plain["training_noise"]["sites"])
