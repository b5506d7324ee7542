"""Each model's operating threshold, chosen on the validation split of the sites that
trained it, before its test evaluation (``common.operating_point`` has the rule).

For a model the server asks every site that trained it and has a validation split
(``SiteInfo.n_val``) to score the model on that split, with 2x2 tables at
``eval.threshold-candidates``; the pooled tables choose the threshold (and, under
``eval.recalibrate``, the pooled calibration bins fit a recalibration); the choice is
recorded (``rounds.jsonl``, phase ``threshold``, and the audit trail); then the model's
test evaluation asks for the chosen threshold first. The validation scores never reach
the report's statistics, and the test split never reaches the choice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord

from common.keys import RecordPhase, Share, Split, ThresholdRule, classifies
from common.operating_point import (
    ThresholdChoice,
    choose_on_validation,
    evaluation_config,
    on_validation,
)
from common.summary import SiteSummary
from server.final_evaluation import EvaluationsFailedError
from server.sites import SiteInfo

if TYPE_CHECKING:
    from server.federation import Federation

log = logging.getLogger(__name__)


def choose_operating_threshold(
    fed: Federation,
    arrays: ArrayRecord,
    model: str,
    trainers: Sequence[SiteInfo],
    share: str = Share.SHARED,
) -> ThresholdChoice | None:
    """``model``'s operating threshold and, under ``eval.recalibrate``, its recalibration,
    from ``trainers``' validation summaries (recorded); None when neither is chosen
    (``eval.threshold-rule = fixed`` without a recalibration) or for a task without one."""
    ev = fed.cfg.eval
    if not on_validation(ev) or not classifies(fed.cfg.task):
        return None
    splits = {s.name: Split.VAL.value for s in trainers if s.n_val > 0}
    summaries: dict[str, SiteSummary] = {}
    failed = ""
    if splits:
        view = fed.with_config(fed.cfg.replace({"eval.thresholds": ev.threshold_candidates}))
        try:
            results = view.evaluate_split(arrays, splits, model, share, RecordPhase.VALIDATE)
        except EvaluationsFailedError as e:
            results = {}
            failed = "; ".join(f"{site}: {why}" for site, why in sorted(e.failed.items()))
        summaries = {site: summary for site, (summary, _) in results.items()}
    else:
        failed = "no training site has a val split"
    choice = choose_on_validation(ev, summaries, failed)
    record = choice.to_record(model)
    fed.recorder.log_round({"phase": RecordPhase.THRESHOLD.value, **record})
    fed.audit.append(RecordPhase.THRESHOLD.value, record)
    if choice.chosen:
        log.info("%s: operating threshold %g (%s)", model, choice.threshold, choice.reason)
    elif ev.threshold_rule is not ThresholdRule.FIXED:
        log.warning("%s: operating threshold %g: %s", model, choice.threshold, choice.reason)
    recal = choice.recalibration
    if recal is not None and recal.fitted:
        log.info("%s: recalibration a = %.3f, b = %.3f (%s; %d validation cases)", model,
                 recal.intercept, recal.slope, recal.reason, recal.n)  # fmt: skip
    elif recal is not None:
        log.warning("%s: no recalibration: %s", model, recal.reason)
    return choice


def evaluate_at_operating_point(
    fed: Federation,
    arrays: ArrayRecord,
    splits: dict[str, str],
    model: str,
    trainers: Sequence[SiteInfo],
    share: str = Share.SHARED,
) -> dict[str, tuple[SiteSummary, str]]:
    """``model``'s test evaluation at its operating threshold, chosen first on the
    validation split of ``trainers`` (the sites that trained it)."""
    choice = choose_operating_threshold(fed, arrays, model, trainers, share)
    overrides = evaluation_config(fed.cfg.eval, choice)
    view = fed.with_config(fed.cfg.replace(overrides)) if overrides else fed
    return view.evaluate(arrays, splits, model, share)
