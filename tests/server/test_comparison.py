"""The comparison document: per-seed gaps, mean and sd over seeds, and the target."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from common.config import RunConfig
from common.stats import AUCResult
from common.stats.multiclass import OvRAUCResult, macro_auc, ovr_auc, ovr_pooled
from common.summary import SiteSummary
from server.designs import EXTERNAL, INTERNAL, Evaluation
from server.report.comparison import build_comparison, comparison_markdown


def _eval(method: str, site: str, role: str, auc: float, var: float) -> Evaluation:
    summary = SiteSummary(n=60, n_pos=30, n_neg=30, auc=auc, auc_var=var)
    return Evaluation(method, site, role, "test" if role == "internal" else "all", summary)


# internal and external AUC per (method, seed); one internal and one external site
AUCS = {
    ("fedavg", 1): (0.90, 0.70),
    ("fedavg", 2): (0.88, 0.74),
    ("fedavg", 3): (0.86, 0.72),
    ("better", 1): (0.90, 0.80),
    ("better", 2): (0.88, 0.83),
    ("better", 3): (0.86, 0.81),
    ("worse-inside", 1): (0.78, 0.70),
    ("worse-inside", 2): (0.76, 0.74),
    ("worse-inside", 3): (0.80, 0.72),
}
VAR = 0.0009


def _doc() -> dict:
    per_seed = {
        seed: [
            e
            for (m, s), (i, x) in AUCS.items()
            if s == seed
            for e in (_eval(m, "a", "internal", i, VAR), _eval(m, "x", "external", x, VAR))
        ]
        for seed in (1, 2, 3)
    }
    methods = {"fedavg": [], "better": ["bn-adapt"], "worse-inside": ["zscore"]}
    return build_comparison(per_seed, methods, RunConfig().to_flat())


def test_per_seed_gap_is_internal_minus_external_with_a_z_interval() -> None:
    doc = _doc()
    r = doc["methods"]["fedavg"]["seeds"]["1"]
    se = math.sqrt(2 * VAR)
    assert r["gap"]["estimate"] == pytest.approx(0.20)
    assert r["gap"]["se"] == pytest.approx(se)
    assert r["gap"]["lo"] == pytest.approx(0.20 - 1.959964 * se, abs=1e-6)
    lo, hi = AUCResult(0.70, VAR, 30, 30).ci(0.95)
    assert (r["external"]["lo"], r["external"]["hi"]) == pytest.approx((lo, hi))


def test_mean_sd_over_seeds_and_paired_gain_against_the_baseline() -> None:
    doc = _doc()
    base = doc["methods"]["fedavg"]
    assert base["external_auc"]["mean"] == pytest.approx(0.72)
    assert base["external_auc"]["sd"] == pytest.approx(statistics.stdev([0.70, 0.74, 0.72]))
    assert doc["baseline"] == "fedavg" and doc["baseline_external_sd"] == pytest.approx(0.02)
    better = doc["methods"]["better"]
    gains = [0.10, 0.09, 0.09]
    assert better["vs_baseline"]["external_gain"]["mean"] == pytest.approx(statistics.fmean(gains))
    assert better["vs_baseline"]["external_gain"]["sd"] == pytest.approx(statistics.stdev(gains))
    assert better["vs_baseline"]["gain_beats_seed_spread"]  # 0.093 > 0.02
    gap_ratio = statistics.fmean([0.10, 0.05, 0.05]) / statistics.fmean([0.20, 0.14, 0.14])
    assert better["vs_baseline"]["gap_ratio"] == pytest.approx(gap_ratio)
    assert better["vs_baseline"]["halves_gap"]  # 0.417 <= 0.5
    # a smaller gap from a worse internal AUC halves nothing external: the gain decides
    worse = doc["methods"]["worse-inside"]["vs_baseline"]
    assert worse["external_gain"]["mean"] == pytest.approx(0.0)
    assert not worse["gain_beats_seed_spread"]
    text = comparison_markdown(doc, "t", "cmd")
    assert "| better | bn-adapt |" in text and "| met |" in text


def test_no_gap_ratio_when_the_baseline_has_no_consistent_gap() -> None:
    per_seed = {
        seed: [_eval("fedavg", "a", "internal", i, VAR), _eval("fedavg", "x", "external", x, VAR)]
        + [_eval("m", "a", "internal", 0.8, VAR), _eval("m", "x", "external", 0.8, VAR)]
        for seed, (i, x) in {1: (0.80, 0.70), 2: (0.70, 0.80), 3: (0.76, 0.75)}.items()
    }
    doc = build_comparison(per_seed, {"fedavg": [], "m": []}, RunConfig().to_flat())
    assert doc["methods"]["m"]["vs_baseline"]["gap_ratio"] is None
    assert not doc["methods"]["m"]["vs_baseline"]["halves_gap"]


def test_a_gap_halved_by_a_lower_internal_auc_does_not_meet_the_target() -> None:
    doc = _doc()
    worse = doc["methods"]["worse-inside"]["vs_baseline"]
    assert worse["halves_gap"] and worse["internal_fell"]  # gaps 0.08, 0.02, 0.08 vs 0.2, ...
    text = comparison_markdown(doc, "t", "cmd")
    assert "| not met (gap halved by a lower internal AUC) |" in text
    assert not doc["methods"]["better"]["vs_baseline"]["internal_fell"]


# ---- three-way (task lesion-type): macro one-vs-rest AUC ----

K = 3
# (method, seed, site) -> class-separating signal; one internal site a, external x and y
THREE_WAY_SITES = {"a": INTERNAL, "x": EXTERNAL, "y": EXTERNAL}
SIGNAL = {"a": 1.6, "x": 0.9, "y": 1.1}
LIFT = {"fedavg": 0.0, "better": 0.3}
# non-default report settings: the level shows in the one-site macro interval; the pooled
# estimates of these two external sites happen to be the same under REML and DL
LESION_CONFIG = {
    **RunConfig().to_flat(),
    "task": "lesion-type",
    "eval.pooling": "DL",
    "eval.hartung-knapp": True,
    "eval.level": 0.9,
}


def _lesion_summary(seed: int, signal: float) -> SiteSummary:
    """A lesion-type summary of synthetic cases: OvR AUCs with their DeLong covariance and
    the class counts the report needs (the binary view is a fixed stand-in)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), (30, 25, 20))
    logits = rng.normal(size=(len(y), K))
    logits[np.arange(len(y)), y] += signal
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    full = np.bincount(y * K + p.argmax(axis=1), minlength=K * K).reshape(K, K)
    ovr = ovr_auc(y, p)
    return SiteSummary(
        n=len(y),
        n_pos=45,
        n_neg=30,
        auc=0.8,
        auc_var=VAR,
        class_n=tuple(int(v) for v in np.bincount(y, minlength=K)),
        class_pred=tuple(int(v) for v in full.sum(axis=0)),
        class_correct=tuple(int(v) for v in np.diag(full)),
        class_auc=ovr.aucs,
        class_auc_cov=tuple(float(v) for v in ovr.cov.ravel()),
    )


THREE_WAY = {
    (m, seed, site): _lesion_summary(100 * seed + 10 * i + j, SIGNAL[site] + LIFT[m])
    for i, m in enumerate(LIFT)
    for seed in (1, 2, 3)
    for j, site in enumerate(THREE_WAY_SITES)
}


def _three_way_doc() -> dict:
    per_seed = {
        seed: [
            Evaluation(m, site, THREE_WAY_SITES[site], "test", s)
            for (m, sd, site), s in THREE_WAY.items()
            if sd == seed
        ]
        for seed in (1, 2, 3)
    }
    return build_comparison(per_seed, {"fedavg": [], "better": ["bn-adapt"]}, LESION_CONFIG)


def _ovr(s: SiteSummary) -> OvRAUCResult:
    n = sum(s.class_n)
    cov = np.asarray(s.class_auc_cov).reshape(K, K)
    return OvRAUCResult(
        s.class_auc, tuple(map(tuple, cov)), s.class_n, tuple(n - m for m in s.class_n)
    )


def _external_pooled(m: str, seed: int) -> list[float]:
    """Each class's OvR AUC pooled over the external sites x and y, as the settings say."""
    ovrs = [_ovr(THREE_WAY[(m, seed, site)]) for site in ("x", "y")]
    fits = ovr_pooled(
        [o.aucs for o in ovrs],
        [[o.covariance[k][k] for k in range(K)] for o in ovrs],
        method="DL",
        hartung_knapp=True,
        level=0.9,
    )
    assert all(f is not None for f in fits)
    return [f.estimate for f in fits if f is not None]


def test_macro_auc_of_one_internal_site_is_its_macro_auc_with_its_interval() -> None:
    doc = _three_way_doc()
    for m in LIFT:
        for seed in (1, 2, 3):
            r = doc["methods"][m]["seeds"][str(seed)]
            ref = macro_auc(_ovr(THREE_WAY[(m, seed, "a")]), 0.9)
            macro = r["macro_internal"]
            assert macro["estimate"] == pytest.approx(ref.macro, abs=1e-12)
            assert (macro["lo"], macro["hi"]) == pytest.approx(ref.macro_ci, abs=1e-12)
            assert macro["k"] == 1
            assert r["class_internal"] == pytest.approx(list(THREE_WAY[(m, seed, "a")].class_auc))


def test_macro_auc_of_several_external_sites_is_the_mean_of_the_pooled_class_aucs() -> None:
    doc = _three_way_doc()
    assert doc["classes"] == ["benign", "primary malignant", "metastasis"]
    for m in LIFT:
        for seed in (1, 2, 3):
            r = doc["methods"][m]["seeds"][str(seed)]
            pooled = _external_pooled(m, seed)
            assert r["class_external"] == pytest.approx(pooled, abs=1e-12)
            macro = r["macro_external"]
            assert macro["estimate"] == pytest.approx(statistics.fmean(pooled), abs=1e-12)
            # the pooled classes share patients: no interval without their covariance
            assert macro["lo"] is None and macro["hi"] is None and macro["k"] == 2


def test_three_way_mean_and_sd_over_seeds() -> None:
    doc = _three_way_doc()
    for m in LIFT:
        block = doc["methods"][m]
        internal = [macro_auc(_ovr(THREE_WAY[(m, s, "a")])).macro for s in (1, 2, 3)]
        external = [statistics.fmean(_external_pooled(m, s)) for s in (1, 2, 3)]
        assert block["macro_internal_auc"]["mean"] == pytest.approx(statistics.fmean(internal))
        assert block["macro_internal_auc"]["sd"] == pytest.approx(statistics.stdev(internal))
        assert block["macro_external_auc"]["mean"] == pytest.approx(statistics.fmean(external))
        assert block["macro_external_auc"]["sd"] == pytest.approx(statistics.stdev(external))
        assert block["macro_external_auc"]["n"] == 3
        for k in range(K):
            per_class = [_external_pooled(m, s)[k] for s in (1, 2, 3)]
            assert block["class_external_auc"][k]["mean"] == pytest.approx(
                statistics.fmean(per_class)
            )
            assert block["class_external_auc"][k]["sd"] == pytest.approx(
                statistics.stdev(per_class)
            )


def test_three_way_table_in_the_markdown() -> None:
    doc = _three_way_doc()
    text = comparison_markdown(doc, "t", "cmd")
    assert "## Three-way (macro one-vs-rest AUC)" in text
    assert (
        "| method | internal macro AUC | external macro AUC | external AUC: benign "
        "| external AUC: primary malignant | external AUC: metastasis |"
    ) in text
    better = doc["methods"]["better"]
    cells = [better["macro_internal_auc"], better["macro_external_auc"]]
    cells += better["class_external_auc"]
    row = "| better | " + " | ".join(f"{c['mean']:.3f} ± {c['sd']:.3f}" for c in cells) + " |"
    assert row in text
    # the table sits between the summary table and the per-seed section
    assert text.index("## Three-way") < text.index("## Every seed")


def test_a_malignancy_comparison_has_no_three_way_keys() -> None:
    doc = _doc()
    assert "classes" not in doc
    for m in doc["methods"].values():
        assert not {"macro_internal_auc", "macro_external_auc"} & set(m)
        assert not {"class_internal_auc", "class_external_auc"} & set(m)
        for r in m["seeds"].values():
            assert not {"macro_internal", "macro_external"} & set(r)
            assert not {"class_internal", "class_external"} & set(r)
    assert "Three-way" not in comparison_markdown(doc, "t", "cmd")
