"""A model's operating threshold, chosen on validation data only.

The threshold at which a model calls a lesion malignant decides its sensitivity and
specificity; choosing it on the test split would make those figures optimistic. With
``eval.threshold-rule`` other than ``fixed`` it is chosen from the 2x2 tables that the
sites which trained the model send for their **validation** split, at the candidate
thresholds ``eval.threshold-candidates`` (a site's policy caps how many tables it sends,
``policy.max-thresholds`` and cases / ``policy.min-cell``, so the candidates are a short
grid, not every score: four fit any site with ``eval.min-cases`` = 20 validation cases
under the default ``min-cell`` of 5):

- the tables are pooled by adding counts (``sum tp / sum (tp + fn)``, the sensitivity of
  all the sites' validation cases together);
- ``youden``: the candidate with the largest sensitivity + specificity - 1 (Youden's J;
  ties go to the lower threshold, the more sensitive one);
- ``sensitivity``: the highest candidate whose pooled sensitivity reaches
  ``eval.target-sensitivity`` (the most specific one that does); when none does, the
  lowest candidate, and the record says the target was not reached.

A site whose validation summary is insufficient (too few cases) or missing adds
nothing. With no usable table at all the choice falls back to the first of
``eval.thresholds`` and records why. The test evaluation then uses the chosen
threshold first (the operating point), followed by ``eval.thresholds``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from common.config_sections import EvalConfig
from common.keys import Recalibrate, ThresholdRule
from common.recalibration import Recalibration, fit_recalibration
from common.summary import SiteSummary


@dataclass(frozen=True)
class Candidate:
    """The validation cases of every site used, at one candidate threshold."""

    threshold: float
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def sensitivity(self) -> float | None:
        pos = self.tp + self.fn
        return self.tp / pos if pos else None

    @property
    def specificity(self) -> float | None:
        neg = self.tn + self.fp
        return self.tn / neg if neg else None

    @property
    def youden(self) -> float | None:
        se, sp = self.sensitivity, self.specificity
        return None if se is None or sp is None else se + sp - 1.0


@dataclass(frozen=True)
class ThresholdChoice:
    """What was chosen, from what, and why."""

    rule: ThresholdRule
    threshold: float  # the operating threshold the test evaluation uses
    chosen: bool  # False: fell back to the first of eval.thresholds (see reason)
    reason: str
    sites: tuple[str, ...]  # whose validation tables were pooled
    candidates: tuple[Candidate, ...]
    target_sensitivity: float | None = None
    # fitted on the same validation summaries under eval.recalibrate (common.recalibration)
    recalibration: Recalibration | None = None

    def to_record(self, model: str) -> dict[str, Any]:
        """The JSON form (``rounds.jsonl`` and the report's ``settings.threshold_choices``)."""
        return {
            "model": model,
            "rule": self.rule.value,
            "threshold": self.threshold,
            "chosen": self.chosen,
            "reason": self.reason,
            "sites": list(self.sites),
            "target_sensitivity": self.target_sensitivity,
            "candidates": [
                {
                    "threshold": c.threshold,
                    "tp": c.tp,
                    "fp": c.fp,
                    "fn": c.fn,
                    "tn": c.tn,
                    "sensitivity": c.sensitivity,
                    "specificity": c.specificity,
                }
                for c in self.candidates
            ],
            **({"recalibration": self.recalibration.to_record()} if self.recalibration else {}),
        }


def pool_candidates(
    summaries: Mapping[str, SiteSummary], thresholds: tuple[float, ...]
) -> tuple[tuple[Candidate, ...], tuple[str, ...]]:
    """Counts added over the sites that sent a table at every candidate."""
    used = []
    totals = {t: [0, 0, 0, 0] for t in thresholds}
    for site, s in sorted(summaries.items()):
        tables = {t.threshold: t for t in s.tables}
        if s.insufficient or not all(t in tables for t in thresholds):
            continue
        used.append(site)
        for t in thresholds:
            tab = tables[t]
            for i, v in enumerate((tab.tp, tab.fp, tab.fn, tab.tn)):
                totals[t][i] += v
    candidates = tuple(Candidate(t, *totals[t]) for t in thresholds) if used else ()
    return candidates, tuple(used)


def choose_threshold(
    ev: EvalConfig, summaries: Mapping[str, SiteSummary], failed: str = ""
) -> ThresholdChoice:
    """The operating threshold by ``ev.threshold_rule`` from validation ``summaries``;
    ``failed``: why sites sent none (said in the reason of a fall-back)."""
    rule = ev.threshold_rule
    target = ev.target_sensitivity if rule is ThresholdRule.SENSITIVITY else None
    fallback = ev.thresholds[0]
    if rule is ThresholdRule.FIXED:
        return ThresholdChoice(rule, fallback, False, "eval.threshold-rule = 'fixed'", (), ())
    candidates, sites = pool_candidates(summaries, ev.threshold_candidates)
    usable = [c for c in candidates if c.youden is not None]
    if not usable:
        why = failed or (
            "no training site sent a sufficient validation summary (a val split of at least "
            "eval.min-cases cases with eval.min-per-class of each class)"
        )
        return ThresholdChoice(rule, fallback, False, f"{why}: kept {fallback:g}", sites, ())
    if rule is ThresholdRule.YOUDEN:
        # J equal up to rounding error is a tie: it goes to the lower threshold
        best = max(usable, key=lambda c: (round(c.youden or 0.0, 12), -c.threshold))
        reason = f"largest pooled sensitivity + specificity - 1 = {best.youden:.3f}"
        return ThresholdChoice(rule, best.threshold, True, reason, sites, candidates)
    reaching = [c for c in usable if (c.sensitivity or 0.0) >= ev.target_sensitivity]
    if reaching:
        best = reaching[-1]
        reason = (
            f"highest candidate with pooled sensitivity >= {ev.target_sensitivity:g} "
            f"({best.sensitivity:.3f})"
        )
    else:
        best = usable[0]
        reason = (
            f"no candidate reaches sensitivity {ev.target_sensitivity:g}: the lowest, "
            f"{best.threshold:g}, reaches {best.sensitivity:.3f}"
        )
    return ThresholdChoice(rule, best.threshold, True, reason, sites, candidates, target)


def on_validation(ev: EvalConfig) -> bool:
    """Whether anything is chosen on validation summaries: the threshold or a recalibration."""
    return ev.threshold_rule is not ThresholdRule.FIXED or ev.recalibrate is not Recalibrate.NONE


def choose_on_validation(
    ev: EvalConfig, summaries: Mapping[str, SiteSummary], failed: str = ""
) -> ThresholdChoice:
    """The operating threshold (``choose_threshold``) and, under ``eval.recalibrate``, the
    recalibration, both from the same validation ``summaries``."""
    choice = choose_threshold(ev, summaries, failed)
    recal = fit_recalibration(ev, summaries)
    if recal is not None and failed and not recal.sites:
        recal = replace(recal, reason=f"{failed}: nothing applied")
    return replace(choice, recalibration=recal)


def evaluation_config(ev: EvalConfig, choice: ThresholdChoice | None) -> dict[str, Any]:
    """The ``eval.*`` overrides of a test evaluation after ``choice``: its thresholds (the
    chosen one first) and the fitted recalibration, where they differ from ``ev``."""
    out: dict[str, Any] = {}
    thresholds = evaluation_thresholds(ev, choice)
    if thresholds != ev.thresholds:
        out["eval.thresholds"] = thresholds
    recal = choice.recalibration if choice else None
    if recal is not None and recal.parameters != ev.recalibration:
        out["eval.recalibration"] = recal.parameters
    return out


def evaluation_thresholds(ev: EvalConfig, choice: ThresholdChoice | None) -> tuple[float, ...]:
    """The thresholds a test evaluation asks for: the chosen one first, then the others of
    ``eval.thresholds``."""
    if choice is None:
        return ev.thresholds
    return (choice.threshold, *(t for t in ev.thresholds if t != choice.threshold))
