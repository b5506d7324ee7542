"""The cross-site report built from hand-made site summaries.

The pooled numbers must equal ``common.stats`` (itself checked against R
metafor 3.8 / pROC 1.18 in tests/common); here we check that the report feeds
it the right sites, computes gaps and drift correctly and raises the flags.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from common.config import RunConfig
from common.stats import AUCResult, pool_auc, pool_proportions, wasserstein_1
from common.summary import SiteSummary, Table2x2, histogram_edges
from server.designs import Evaluation
from server.report.build import build_report
from server.report.pooling import difference

HIST_BINS = 4


def summary(
    auc: float,
    var: float,
    n_pos: int = 30,
    n_neg: int = 30,
    table: tuple[int, int, int, int] = (24, 6, 6, 24),
    hist: tuple[int, ...] = (10, 20, 20, 10),
    emb_shift: float = 0.0,
) -> SiteSummary:
    tp, fp, fn, tn = table
    return SiteSummary(
        n=n_pos + n_neg,
        n_pos=n_pos,
        n_neg=n_neg,
        auc=auc,
        auc_var=var,
        tables=(Table2x2(0.5, tp, fp, fn, tn),),
        cal_count=(30, 30),
        cal_sum_p=(6.0, 24.0),
        cal_sum_y=(6, 24),
        cal_sum_sq=(3.0, 3.0),
        brier=0.1,
        hist_counts=(hist,),
        emb_mean=(emb_shift, 0.0),
        emb_cov=((1.0, 0.0), (0.0, 1.0)),
    )


def config(**kw: object) -> dict[str, object]:
    flat = RunConfig().replace({"eval.histogram-bins": HIST_BINS, **kw}).to_flat()
    return dict(flat)


SITES = [
    {"name": n, "role": r, "n_train": 90, "n_test": 60, "manifest_sha256": "0" * 64, "node_id": i}
    for i, (n, r) in enumerate([("a", "train"), ("b", "train"), ("c", "train"), ("e", "external")])
]


def holdout_evals() -> list[Evaluation]:
    return [
        Evaluation("global", "a", "internal", "test", summary(0.90, 0.0010)),
        Evaluation("global", "b", "internal", "test", summary(0.86, 0.0014, table=(22, 5, 8, 25))),
        Evaluation("global", "c", "internal", "test", summary(0.92, 0.0008)),
        Evaluation(
            "global",
            "e",
            "external",
            "test",
            summary(0.70, 0.0020, table=(18, 9, 12, 21), hist=(30, 20, 5, 5), emb_shift=2.0),
        ),
    ]


def test_holdout_pools_internal_and_external_sites_separately() -> None:
    report = build_report(holdout_evals(), config(), SITES)
    internal = report["pooled"]["internal"]
    ref = pool_auc(
        [
            AUCResult(0.90, 0.0010, 30, 30),
            AUCResult(0.86, 0.0014, 30, 30),
            AUCResult(0.92, 0.0008, 30, 30),
        ]
    )
    assert internal["sites"] == ["a", "b", "c"] and internal["k"] == 3
    assert internal["auc"]["estimate"] == pytest.approx(ref.estimate, abs=1e-12)
    assert (internal["auc"]["lo"], internal["auc"]["hi"]) == pytest.approx(ref.ci, abs=1e-12)
    assert internal["auc"]["i2"] == pytest.approx(ref.logit.i2, abs=1e-9)
    sens = pool_proportions([24, 22, 24], [30, 30, 30])
    assert internal["sensitivity"]["estimate"] == pytest.approx(sens.estimate, abs=1e-12)
    external = report["pooled"]["external"]
    assert external["sites"] == ["e"] and external["auc"]["estimate"] == pytest.approx(0.70)


def test_gap_is_pooled_internal_minus_site_with_independent_variances() -> None:
    report = build_report(holdout_evals(), config(), SITES)
    (gap,) = report["gaps"]
    a = report["pooled"]["internal"]["auc"]
    se_int = a["se"]
    # the pooled internal SE on the AUC scale is the delta-method transform of the logit SE
    ref = pool_auc(
        [
            AUCResult(0.90, 0.0010, 30, 30),
            AUCResult(0.86, 0.0014, 30, 30),
            AUCResult(0.92, 0.0008, 30, 30),
        ]
    )
    assert se_int == pytest.approx(ref.logit.se * ref.estimate * (1 - ref.estimate))
    se = math.sqrt(se_int**2 + 0.0020)
    d = a["estimate"] - 0.70
    assert gap["site"] == "e" and gap["gap"]["estimate"] == pytest.approx(d)
    assert gap["gap"]["se"] == pytest.approx(se)
    assert gap["gap"]["p"] == pytest.approx(2 * sps.norm.sf(d / se))
    assert report["pooled"]["difference"]["auc"]["estimate"] == pytest.approx(d)


def test_difference_ci_and_p_by_hand() -> None:
    out = difference(0.9, 0.03, 0.8, 0.04, 0.95)
    assert out["estimate"] == pytest.approx(0.1) and out["se"] == pytest.approx(0.05)
    assert (out["lo"], out["hi"]) == pytest.approx((0.1 - 1.959964 * 0.05, 0.1 + 1.959964 * 0.05))
    assert out["z"] == pytest.approx(2.0) and out["p"] == pytest.approx(0.0455003, abs=1e-6)


def test_flags_margin_prediction_interval_insufficient_and_missing() -> None:
    evals = [
        *holdout_evals(),
        Evaluation(
            "global",
            "tiny",
            "external",
            "test",
            SiteSummary(n=6, n_pos=1, n_neg=5, insufficient=True),
        ),
    ]
    failed = {"global": {"c": "no reply"}}
    report = build_report(evals, config(**{"eval.margin": 0.05}), SITES, failed=failed)
    kinds = {(f["site"], f["kind"]) for f in report["flags"]}
    assert ("e", "drop-exceeds-margin") in kinds
    assert ("tiny", "insufficient-data") in kinds
    assert ("c", "no-evaluation") in kinds
    assert not any(site in ("a", "c") and k == "drop-exceeds-margin" for site, k in kinds)
    pi_lo = report["pooled"]["internal"]["auc"]["prediction_interval"]["lo"]
    assert (("e", "below-prediction-interval") in kinds) == (pi_lo > 0.70)
    row = next(r for r in report["sites"] if r["site"] == "tiny")
    assert row["insufficient"] and "auc" not in row


def test_site_row_statistics_and_drift_against_the_internal_reference() -> None:
    report = build_report(holdout_evals(), config(), SITES)
    e = next(r for r in report["sites"] if r["site"] == "e")
    assert e["prevalence"] == pytest.approx(0.5)
    lo, hi = AUCResult(0.70, 0.0020, 30, 30).ci()
    assert (e["auc"]["lo"], e["auc"]["hi"]) == pytest.approx((lo, hi))
    op = e["thresholds"][0]
    assert op["sensitivity"]["estimate"] == pytest.approx(18 / 30)
    assert op["specificity"]["estimate"] == pytest.approx(21 / 30)
    assert e["calibration"]["ece"] == pytest.approx(0.0)
    # the reference is the three internal sites' histograms added up (all (10, 20, 20, 10))
    edges = histogram_edges(HIST_BINS)
    w1 = wasserstein_1([30, 20, 5, 5], [30, 60, 60, 30], edges)
    assert e["drift"]["wasserstein1"] == pytest.approx(w1)
    # embedding N((2, 0), I) against the internal sites pooled: mean 0 and covariance
    # c I with c = (3 x 59) / 179 (the combined sample's ddof=1 covariance); Fréchet =
    # ||mu||^2 + tr(I + cI - 2 sqrt(c) I) = 4 + 2 (1 - sqrt(c))^2
    c = 3 * 59 / 179
    fd = 4.0 + 2 * (1 - math.sqrt(c)) ** 2
    assert e["drift"]["frechet"] == pytest.approx(fd, abs=1e-9)
    assert e["drift"]["frechet_relative"] == pytest.approx(fd / (2 * c), abs=1e-9)
    # an internal site is compared with the other internal sites only (b and c: 2 x 59 / 119)
    a = next(r for r in report["sites"] if r["site"] == "a")
    c_ab = 2 * 59 / 119
    assert a["drift"]["frechet"] == pytest.approx(2 * (1 - math.sqrt(c_ab)) ** 2, abs=1e-9)
    assert e["reference"]["auc"] == report["pooled"]["internal"]["auc"]["estimate"]
    assert e["reference"]["sites"] == ["a", "b", "c"]
    points = report["drift_vs_degradation"]["points"]
    assert {p["site"] for p in points} == {"a", "b", "c", "e"}
    rho = report["drift_vs_degradation"]["spearman"]["rho"]
    drift = [p["drift"] for p in points]
    drop = [p["auc_drop"] for p in points]
    assert rho == pytest.approx(sps.spearmanr(drift, drop).statistic)


def test_loso_gap_per_fold_and_each_site_external_once() -> None:
    aucs = {"a": 0.88, "b": 0.84, "c": 0.90}
    evals = []
    for out in "abc":
        model = f"without-{out}"
        for site in "abc":
            if site == out:
                evals.append(
                    Evaluation(model, site, "external", "all", summary(aucs[site] - 0.1, 0.002))
                )
            else:
                evals.append(
                    Evaluation(model, site, "internal", "test", summary(aucs[site], 0.001))
                )
        evals.append(Evaluation(model, "e", "external", "test", summary(0.7, 0.002)))
    report = build_report(evals, config(**{"eval.design": "loso"}), SITES)
    # the left-out sites once each, then the designated external site under every fold
    assert [(r["site"], r["model"]) for r in report["sites"]] == [
        ("a", "without-a"),
        ("b", "without-b"),
        ("c", "without-c"),
        ("e", "without-a"),
        ("e", "without-b"),
        ("e", "without-c"),
    ]
    assert all(r["role"] == "external" for r in report["sites"])
    assert [r["split"] for r in report["sites"]] == ["all"] * 3 + ["test"] * 3
    assert len(report["gaps"]) == 6
    assert [f["model"] for f in report["folds"]] == ["without-a", "without-b", "without-c"]
    gap_a = next(g for g in report["gaps"] if g["site"] == "a")
    fold_a = pool_auc([AUCResult(0.84, 0.001, 30, 30), AUCResult(0.90, 0.001, 30, 30)])
    # the left-out site is compared with its own fold's internal sites, in rows and drops
    row_a = report["sites"][0]
    assert row_a["reference"]["sites"] == ["b", "c"]
    assert row_a["reference"]["auc"] == pytest.approx(fold_a.estimate)
    drop_a = next(p for p in report["drift_vs_degradation"]["points"] if p["site"] == "a")
    assert drop_a["auc_drop"] == pytest.approx(fold_a.estimate - 0.78)
    assert "conservative" in report["pooled"]["difference"]["note"]
    assert gap_a["internal_auc"] == pytest.approx(fold_a.estimate)
    assert gap_a["gap"]["estimate"] == pytest.approx(fold_a.estimate - 0.78)
    # pooled external: the three left-out sites (the designated external site is not re-counted)
    assert report["pooled"]["external"]["sites"] == ["a", "b", "c"]
    # pooled internal: each site's internal AUC is its mean over the folds it trained in
    assert report["pooled"]["internal"]["k"] == 3
    matrix_models = {c["model"] for c in report["matrix"]}
    assert matrix_models == {"without-a", "without-b", "without-c"}


def test_matrix_holds_every_model_and_site() -> None:
    evals = [
        *holdout_evals(),
        Evaluation("local-a", "a", "internal", "test", summary(0.8, 0.002)),
        Evaluation("local-a", "e", "external", "test", summary(0.6, 0.003)),
    ]
    report = build_report(evals, config(**{"eval.design": "cross-site"}), SITES)
    cells = {(c["model"], c["site"]): c for c in report["matrix"]}
    assert set(cells) == {("global", s) for s in "abce"} | {("local-a", "a"), ("local-a", "e")}
    assert cells[("local-a", "e")]["role"] == "external"
    assert cells[("local-a", "e")]["auc"]["estimate"] == pytest.approx(0.6)
    assert [r["model"] for r in report["sites"]] == ["global"] * 4


def test_roc_and_reliability_curves_are_carried_for_primary_evaluations() -> None:
    evals = holdout_evals()
    evals[0] = Evaluation(
        "global",
        "a",
        "internal",
        "test",
        SiteSummary(**{**evals[0].summary.__dict__, "roc_tpr": tuple(np.linspace(0, 1, 51))}),
    )
    report = build_report(evals, config(), SITES)
    assert len(report["curves"]["fpr"]) == 51
    assert [c["site"] for c in report["curves"]["roc"]] == ["a"]
    rel = {c["site"]: c for c in report["curves"]["reliability"]}
    assert rel["a"]["mean_predicted"] == pytest.approx([0.2, 0.8])
    assert rel["a"]["observed_rate"] == pytest.approx([0.2, 0.8])


def test_a_site_without_an_acquisition_summary_has_none_in_a_valid_report() -> None:
    """A site that sent no acquisition summary is recorded with ``{}`` (server.sites); the
    report leaves the key out, since a summary without its case count is not one."""
    from server.report.model_joined import SiteJoined

    acq = {"n_cases": 150, "vendor": {"GE": 150}}
    sites = [{**SITES[0], "acquisition": {}}, {**SITES[1], "acquisition": acq}, *SITES[2:]]
    report = build_report(holdout_evals(), config(), sites)
    joined = {s["name"]: s for s in report["sites_joined"]}
    assert "acquisition" not in joined["a"] and joined["b"]["acquisition"] == acq
    for site in report["sites_joined"]:
        SiteJoined.model_validate(site)  # an empty summary would fail: n_cases is required
