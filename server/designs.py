"""Evaluation designs: which models are trained and where each one is evaluated.

- ``holdout`` (default): one federation among the training sites; the final
  global model is evaluated on every site's test split (internal) and on the
  designated external sites (external).
- ``loso``: leave one site out. For each training site k, a federation of the
  other training sites; its model is evaluated on all of k's cases (external:
  k never trained) and on the other sites' test splits (internal). Designated
  external sites are external in every fold.
- ``cross-site``: the holdout federation plus one local-only model per
  training site (trained alone for rounds x local epochs), each evaluated on
  every site: the model x site matrix.

``eval.local-only`` adds the local-only models to ``holdout`` too (``hepafed
simulate`` does, for its comparison table). ``hooks.finetune-epochs`` > 0 adds,
in ``holdout`` and ``cross-site``, one fine-tuned model per training site (the
final global model trained that many more epochs at the site, from its own
local layers), evaluated at every site like a local-only model. Every design returns a flat list
of ``Evaluation`` records; the report is built from them alone, so simulation
and deployment share the code.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from common.keys import (
    EVAL_ALL,
    GLOBAL_MODEL,
    EvalDesign,
    Share,
    Split,
    finetuned_model,
    local_model,
    loso_model,
)
from common.summary import SiteSummary
from server.federation import Federation
from server.sites import FederationError, default_splits
from server.threshold_choice import evaluate_at_operating_point

log = logging.getLogger("hepafed.progress")

INTERNAL, EXTERNAL = "internal", "external"


@dataclass(frozen=True)
class Evaluation:
    """One model's summary at one site, and whether the site trained that model."""

    model: str  # "global", "without-SITE" (loso fold), "local-SITE", "pooled" (simulation)
    site: str
    role: str  # "internal": the site's data trained the model; "external": it did not
    split: str  # which cases were scored: "test" or "all"
    summary: SiteSummary
    # how the site adapted the model before scoring it: "none", "own-local-layers",
    # a test-time hook ("bn-adapt", "tent"), ... (client.site.prepare_for_scoring)
    adaptation: str = "none"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["summary"] = self.summary.to_dict()  # numbers, and the ids of skipped bad cases
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Evaluation:
        return cls(
            d["model"],
            d["site"],
            d["role"],
            d["split"],
            SiteSummary.from_record(d["summary"]),
            str(d.get("adaptation", "none")),
        )


def run_design(fed: Federation) -> list[Evaluation]:
    """Train and evaluate the models of ``eval.design``; every final evaluation."""
    design = fed.cfg.eval.design
    if design is EvalDesign.MONITOR:
        raise FederationError(
            "eval.design = 'monitor' trains and evaluates nothing here: the ServerApp runs "
            "it (server.monitoring.design), as `hepafed monitor` does"
        )
    trainers = fed.trainers
    evaluations: list[Evaluation] = []
    if design is EvalDesign.LOSO:
        if fed.cfg.hooks.finetune_epochs > 0:
            log.warning("hooks.finetune-epochs is not used by the loso design (holdout only)")
        if len(trainers) - 1 < fed.cfg.federation.min_sites:
            raise FederationError(
                f"loso needs at least federation.min-sites + 1 = "
                f"{fed.cfg.federation.min_sites + 1} training sites, got {len(trainers)}"
            )
        for left_out in trainers:
            model = loso_model(left_out.name)
            others = [s for s in trainers if s.name != left_out.name]
            log.info("fold %s: federating %s", model, ", ".join(s.name for s in others))
            arrays = fed.train_global(others, model)
            splits = default_splits(s for s in fed.sites if s.name != left_out.name)
            splits[left_out.name] = EVAL_ALL
            inside = {s.name for s in others}
            evaluations += evaluation_records(
                evaluate_at_operating_point(fed, arrays, splits, model, others),
                model,
                inside,
                splits,
            )
        return evaluations
    arrays = fed.train_global(trainers, GLOBAL_MODEL)
    splits = default_splits(fed.sites)
    inside = {s.name for s in trainers}
    evaluations += evaluation_records(
        evaluate_at_operating_point(fed, arrays, splits, GLOBAL_MODEL, trainers),
        GLOBAL_MODEL,
        inside,
        splits,
    )
    if design is EvalDesign.CROSS_SITE or fed.cfg.eval.local_only:
        for site in trainers:
            model = local_model(site.name)
            local = fed.train_local_only(site, model)
            if local is not None:  # a failure is recorded and flagged in the report
                scores = evaluate_at_operating_point(fed, local, splits, model, [site], Share.ALL)
                evaluations += evaluation_records(scores, model, {site.name}, splits)
    evaluations += finetuned_evaluations(fed, arrays, GLOBAL_MODEL, splits)
    return evaluations


def finetuned_evaluations(
    fed: Federation, arrays: Any, base: str, splits: dict[str, str]
) -> list[Evaluation]:
    """With ``hooks.finetune-epochs`` > 0: each training site's fine-tuned ``base``,
    evaluated at every site (internal only at the site that fine-tuned it)."""
    out: list[Evaluation] = []
    if fed.cfg.hooks.finetune_epochs <= 0:
        return out
    for site in fed.trainers:
        model = finetuned_model(site.name)
        tuned = fed.finetune(site, arrays, base, model)
        if tuned is not None:  # a failure is recorded and flagged in the report
            summaries = evaluate_at_operating_point(fed, tuned, splits, model, [site], Share.ALL)
            out += evaluation_records(summaries, model, {site.name}, splits)
    return out


def evaluation_records(
    results: dict[str, tuple[SiteSummary, str]],
    model: str,
    inside: set[str],
    splits: dict[str, str],
) -> list[Evaluation]:
    """Evaluation records of one model's site results; ``inside``: the sites that trained it."""
    return [
        Evaluation(
            model,
            site,
            INTERNAL if site in inside else EXTERNAL,
            splits.get(site, Split.TEST.value),
            summary,
            adaptation,
        )
        for site, (summary, adaptation) in results.items()
    ]
