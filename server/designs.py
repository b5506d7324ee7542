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
simulate`` does, for its comparison table). Every design returns a flat list
of ``Evaluation`` records; the report is built from them alone, so simulation
and deployment share the code.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from common.keys import EVAL_ALL, EvalDesign, Split
from common.summary import SiteSummary
from server.federation import Federation, FederationError, default_splits

log = logging.getLogger("hepafed.progress")

GLOBAL = "global"
INTERNAL, EXTERNAL = "internal", "external"


@dataclass(frozen=True)
class Evaluation:
    """One model's summary at one site, and whether the site trained that model."""

    model: str  # "global", "without-SITE" (loso fold), "local-SITE", "pooled" (simulation)
    site: str
    role: str  # "internal": the site's data trained the model; "external": it did not
    split: str  # which cases were scored: "test" or "all"
    summary: SiteSummary

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["summary"] = self.summary.to_record()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Evaluation:
        return cls(
            d["model"], d["site"], d["role"], d["split"], SiteSummary.from_record(d["summary"])
        )


def loso_model(site: str) -> str:
    return f"without-{site}"


def local_model(site: str) -> str:
    return f"local-{site}"


def run_design(fed: Federation) -> list[Evaluation]:
    """Train and evaluate the models of ``eval.design``; every final evaluation."""
    design = EvalDesign(fed.cfg.eval.design)
    trainers = fed.trainers
    evaluations: list[Evaluation] = []
    if design is EvalDesign.LOSO:
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
            evaluations += _records(fed.evaluate(arrays, splits, model), model, inside, splits)
        return evaluations
    arrays = fed.train_global(trainers, GLOBAL)
    splits = default_splits(fed.sites)
    inside = {s.name for s in trainers}
    evaluations += _records(fed.evaluate(arrays, splits, GLOBAL), GLOBAL, inside, splits)
    if design is EvalDesign.CROSS_SITE or fed.cfg.eval.local_only:
        for site in trainers:
            model = local_model(site.name)
            local = fed.train_local_only(site)
            if local is not None:  # a failure is recorded and flagged in the report
                evaluations += _records(
                    fed.evaluate(local, splits, model), model, {site.name}, splits
                )
    return evaluations


def _records(
    summaries: dict[str, SiteSummary], model: str, inside: set[str], splits: dict[str, str]
) -> list[Evaluation]:
    return [
        Evaluation(
            model,
            site,
            INTERNAL if site in inside else EXTERNAL,
            splits.get(site, Split.TEST.value),
            summary,
        )
        for site, summary in summaries.items()
    ]
