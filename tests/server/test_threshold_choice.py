"""A model's operating threshold is chosen on its training sites' validation split, then
its test evaluation asks for that threshold first (``server.threshold_choice``).

The federation is a stand-in that records what it is asked and answers with fixed
summaries, so the test sees which split, thresholds and sites each request names.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from common.config import RunConfig
from common.keys import RecordPhase, Share
from common.summary import SiteSummary, Table2x2
from server.sites import SiteInfo
from server.threshold_choice import evaluate_at_operating_point


def _site(name: str, n_val: int, role: str = "train") -> SiteInfo:
    return SiteInfo(1, name, role, n_train=80, n_test=20, manifest_sha256="0" * 64, n_val=n_val)


def _summary(thresholds: tuple[float, ...]) -> SiteSummary:
    # 10 malignant, 10 benign: sensitivity falls and specificity rises with the threshold
    tables = []
    for t in thresholds:
        tp, fp = round(10 * (1 - t)), round(10 * (1 - t) ** 2)
        tables.append(Table2x2(t, tp=tp, fp=fp, fn=10 - tp, tn=10 - fp))
    return SiteSummary(n=20, n_pos=10, n_neg=10, tables=tuple(tables))


class FakeFederation:
    """What ``evaluate_at_operating_point`` uses of a Federation."""

    def __init__(self, cfg: RunConfig, asked: list[dict[str, Any]], log: list[Any]) -> None:
        self.cfg, self.asked, self.log = cfg, asked, log
        self.recorder = self
        self.audit = self

    def with_config(self, cfg: RunConfig) -> FakeFederation:
        return FakeFederation(cfg, self.asked, self.log)

    def log_round(self, entry: dict[str, Any]) -> None:
        self.log.append(entry)

    def append(self, kind: str, data: dict[str, Any]) -> None:
        self.log.append((kind, data))

    def _answer(self, splits: dict[str, str], phase: str, share: str) -> dict[str, Any]:
        thresholds = self.cfg.eval.thresholds
        self.asked.append(
            {"splits": splits, "thresholds": thresholds, "phase": phase, "share": share}
        )
        return {site: (_summary(thresholds), "none") for site in splits}

    def evaluate_split(self, arrays: Any, splits: dict[str, str], model: str, share: str,
                       phase: RecordPhase) -> dict[str, Any]:  # fmt: skip
        return self._answer(splits, phase.value, share)

    def evaluate(self, arrays: Any, splits: dict[str, str], model: str, share: str = Share.SHARED
                 ) -> dict[str, Any]:  # fmt: skip
        return self._answer(splits, "final", share)


def test_validation_first_then_the_test_split_at_the_chosen_threshold() -> None:
    asked: list[dict[str, Any]] = []
    log: list[Any] = []
    cfg = RunConfig().replace({"eval.thresholds": "0.5,0.9"})
    fed = FakeFederation(cfg, asked, log)
    trainers = [_site("a", 20), _site("b", 0), _site("c", 20)]
    test_splits = {"a": "test", "b": "test", "c": "test", "e": "all"}
    out = evaluate_at_operating_point(fed, None, test_splits, "global", trainers)  # type: ignore[arg-type]
    validation, final = asked
    # only the training sites with a validation split are asked, for it, at the candidates
    assert validation["splits"] == {"a": "val", "c": "val"}
    assert validation["phase"] == "validate"
    assert validation["thresholds"] == (0.2, 0.35, 0.5, 0.65)
    # J = tp/10 + (10 - fp)/10 - 1 per candidate (both sites alike): 0.2 -> tp 8, fp 6:
    # 0.2; 0.35 -> 6, 4: 0.2; 0.5 -> 5, 2: 0.3; 0.65 -> 4, 1: 0.3; the tie of 0.5 and
    # 0.65 goes to the lower threshold
    record = next(e for e in log if isinstance(e, dict) and e["phase"] == "threshold")
    assert record["threshold"] == 0.5 and record["sites"] == ["a", "c"]
    assert final["splits"] == test_splits and final["phase"] == "final"
    assert final["thresholds"] == (0.5, 0.9)
    assert set(out) == set(test_splits)
    assert ("threshold", {k: v for k, v in record.items() if k != "phase"}) in log


def test_a_chosen_threshold_leads_the_tables_and_fixed_asks_nothing_more() -> None:
    asked: list[dict[str, Any]] = []
    log: list[Any] = []
    cfg = RunConfig().replace({"eval.threshold-candidates": "0.3,0.7", "eval.thresholds": "0.5"})
    fed = FakeFederation(cfg, asked, log)
    evaluate_at_operating_point(fed, None, {"a": "test"}, "local-a", [_site("a", 20)], Share.ALL)  # type: ignore[arg-type]
    # 0.3: tp 7, fp 5 -> J 0.2; 0.7: tp 3, fp 1 -> J 0.2: the tie goes to 0.3
    assert asked[0]["share"] == Share.ALL and asked[1]["thresholds"] == (0.3, 0.5)
    asked.clear()
    fixed = FakeFederation(cfg.replace({"eval.threshold-rule": "fixed"}), asked, [])
    evaluate_at_operating_point(fixed, None, {"a": "test"}, "global", [_site("a", 20)])  # type: ignore[arg-type]
    assert [a["phase"] for a in asked] == ["final"] and asked[0]["thresholds"] == (0.5,)


def test_without_validation_splits_the_configured_threshold_is_kept_and_recorded() -> None:
    asked: list[dict[str, Any]] = []
    log: list[Any] = []
    fed = FakeFederation(RunConfig(), asked, log)
    evaluate_at_operating_point(fed, None, {"a": "test"}, "global", [_site("a", 0)])  # type: ignore[arg-type]
    assert [a["phase"] for a in asked] == ["final"]
    record = next(e for e in log if isinstance(e, dict))
    assert record["chosen"] is False and record["threshold"] == 0.5
    assert "no training site has a val split" in record["reason"]


def test_sites_refusing_the_validation_request_are_named_in_the_fallback() -> None:
    """A site whose policy refuses the candidate tables (too few validation cases per
    table) sends nothing; when none sends, the record says why."""
    from server.final_evaluation import EvaluationsFailedError

    class Refusing(FakeFederation):
        def with_config(self, cfg: RunConfig) -> Refusing:
            return Refusing(cfg, self.asked, self.log)

        def evaluate_split(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            raise EvaluationsFailedError("global validate", {"a": "refused by this site's policy"})

    log: list[Any] = []
    fed = Refusing(RunConfig(), [], log)
    evaluate_at_operating_point(fed, None, {"a": "test"}, "global", [_site("a", 12)])  # type: ignore[arg-type]
    record = next(e for e in log if isinstance(e, dict))
    assert not record["chosen"] and record["reason"].startswith("a: refused by this site's policy")


def test_a_recalibration_is_fitted_on_the_same_validation_and_sent_to_the_test_sites() -> None:
    """Under eval.recalibrate = logistic the validation answers' calibration groups fit
    (a, b); the test evaluation asks every site for calibration after that map; with the
    threshold rule fixed the validation split is still asked, for the fit alone."""
    from dataclasses import replace

    class Binned(FakeFederation):
        def with_config(self, cfg: RunConfig) -> Binned:
            self.recalibrations.append(cfg.eval.recalibration)
            return Binned(cfg, self.asked, self.log)

        recalibrations: ClassVar[list[tuple[float, ...]]] = []

        def _answer(self, splits: dict[str, str], phase: str, share: str) -> dict[str, Any]:
            out = super()._answer(splits, phase, share)
            # 10 + 10 cases in two groups: 2 of 10 malignant at p 0.4, 8 of 10 at p 0.6
            bins = {"cal_count": (10, 10), "cal_sum_p": (4.0, 6.0), "cal_sum_y": (2, 8)}
            return {site: (replace(s, **bins), why) for site, (s, why) in out.items()}

    log: list[Any] = []
    cfg = RunConfig().replace({"eval.recalibrate": "logistic", "eval.threshold-rule": "fixed"})
    fed = Binned(cfg, [], log)
    trainers = [_site("a", 20), _site("b", 20)]
    evaluate_at_operating_point(fed, None, {"a": "test"}, "global", trainers)  # type: ignore[arg-type]
    assert [a["phase"] for a in fed.asked] == ["validate", "final"]
    record = next(e for e in log if isinstance(e, dict))
    recal = record["recalibration"]
    # two groups, a perfect fit: logit(0.2) = a + b logit(0.4), logit(0.8) = a + b logit(0.6)
    # -> b = logit(0.8) / logit(0.6) = 3.419, a = 0
    assert recal["fitted"] and recal["sites"] == ["a", "b"] and recal["n"] == 40
    assert recal["slope"] == pytest.approx(3.4190, abs=1e-4)
    assert recal["intercept"] == pytest.approx(0.0, abs=1e-9)
    assert Binned.recalibrations[-1] == pytest.approx((0.0, 3.4190), abs=1e-4)
