"""The comparison document: per-seed gaps, mean and sd over seeds, and the target."""

from __future__ import annotations

import math
import statistics

import pytest

from common.config import RunConfig
from common.stats import AUCResult
from common.summary import SiteSummary
from server.designs import Evaluation
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
