"""The operating threshold chosen on validation summaries (``common.operating_point``).

Worked by hand: two sites' validation tables at three candidates, pooled by adding
counts; Youden's J = sensitivity + specificity - 1 (Youden 1950, "Index for rating
diagnostic tests", Cancer 3:32-35).
"""

from __future__ import annotations

import pytest

from common.config import RunConfig
from common.keys import ThresholdRule
from common.operating_point import choose_threshold, evaluation_thresholds, pool_candidates
from common.summary import SiteSummary, Table2x2


def _site(*tables: tuple[float, int, int, int, int]) -> SiteSummary:
    tabs = tuple(Table2x2(t, tp, fp, fn, tn) for t, tp, fp, fn, tn in tables)
    pos, neg = tabs[0].tp + tabs[0].fn, tabs[0].fp + tabs[0].tn
    return SiteSummary(n=pos + neg, n_pos=pos, n_neg=neg, tables=tabs)


# site a: 10 malignant, 20 benign; site b: 8 malignant, 12 benign
SITES = {
    "a": _site((0.2, 10, 12, 0, 8), (0.5, 8, 4, 2, 16), (0.8, 4, 1, 6, 19)),
    "b": _site((0.2, 8, 8, 0, 4), (0.5, 6, 3, 2, 9), (0.8, 3, 0, 5, 12)),
}


def _ev(**kw: object) -> RunConfig:
    return RunConfig().replace({"eval.threshold-candidates": "0.2,0.5,0.8", **kw})


def test_tables_are_pooled_by_adding_counts() -> None:
    candidates, sites = pool_candidates(SITES, (0.2, 0.5, 0.8))
    assert sites == ("a", "b")
    mid = candidates[1]
    assert (mid.tp, mid.fp, mid.fn, mid.tn) == (14, 7, 4, 25)
    assert mid.sensitivity == pytest.approx(14 / 18)
    assert mid.specificity == pytest.approx(25 / 32)


def test_youden_picks_the_largest_j() -> None:
    # J: 0.2 -> 18/18 + 12/32 - 1 = 0.375; 0.5 -> 14/18 + 25/32 - 1 = 0.559;
    #    0.8 -> 7/18 + 31/32 - 1 = 0.358
    choice = choose_threshold(_ev().eval, SITES)
    assert choice.rule is ThresholdRule.YOUDEN and choice.chosen
    assert choice.threshold == 0.5
    assert "0.559" in choice.reason
    assert evaluation_thresholds(_ev(**{"eval.thresholds": "0.5,0.3"}).eval, choice) == (0.5, 0.3)


def test_sensitivity_rule_takes_the_most_specific_candidate_reaching_the_target() -> None:
    cfg = _ev(**{"eval.threshold-rule": "sensitivity", "eval.target-sensitivity": 0.75})
    choice = choose_threshold(cfg.eval, SITES)
    assert choice.threshold == 0.5  # 14/18 = 0.778 >= 0.75; 0.8 reaches only 0.389
    assert choice.target_sensitivity == 0.75
    strict = _ev(**{"eval.threshold-rule": "sensitivity", "eval.target-sensitivity": 0.99})
    choice = choose_threshold(strict.eval, SITES)
    assert choice.threshold == 0.2 and "(1.000)" in choice.reason  # only 0.2: 18/18
    unreachable = {"a": _site((0.2, 9, 12, 1, 8), (0.5, 8, 4, 2, 16), (0.8, 4, 1, 6, 19))}
    choice = choose_threshold(strict.eval, unreachable)
    assert choice.threshold == 0.2 and "no candidate reaches sensitivity 0.99" in choice.reason


def test_a_site_without_every_candidate_or_with_too_few_cases_adds_nothing() -> None:
    partial = {**SITES, "c": _site((0.5, 5, 5, 5, 5))}
    insufficient = {**SITES, "d": SiteSummary(n=6, n_pos=3, n_neg=3, insufficient=True)}
    for summaries in (partial, insufficient):
        assert pool_candidates(summaries, (0.2, 0.5, 0.8))[1] == ("a", "b")


def test_without_usable_validation_the_first_fixed_threshold_is_kept_and_said() -> None:
    cfg = _ev(**{"eval.thresholds": "0.4"})
    choice = choose_threshold(cfg.eval, {})
    assert not choice.chosen and choice.threshold == 0.4
    assert "no training site sent a sufficient validation summary" in choice.reason
    assert evaluation_thresholds(cfg.eval, choice) == (0.4,)
    fixed = choose_threshold(_ev(**{"eval.threshold-rule": "fixed"}).eval, SITES)
    assert not fixed.chosen and fixed.threshold == 0.5 and fixed.candidates == ()


def test_a_tie_goes_to_the_lower_threshold() -> None:
    same = {"a": _site((0.3, 5, 5, 5, 5), (0.6, 5, 5, 5, 5))}
    cfg = _ev(**{"eval.threshold-candidates": "0.3,0.6"})
    assert choose_threshold(cfg.eval, same).threshold == 0.3


def test_bad_candidates_are_named() -> None:
    from common.config import ConfigError

    with pytest.raises(ConfigError, match="eval.threshold-candidates = '0.5,0.2'"):
        RunConfig().replace({"eval.threshold-candidates": "0.5,0.2"})
    with pytest.raises(ConfigError, match="eval.target-sensitivity"):
        RunConfig().replace({"eval.target-sensitivity": 1.0})
