"""The pooled baseline of a simulated federation, on the same splits.

One centralised model on all training hospitals' train splits: the upper bound
that privacy rules out in practice, so it exists only in simulation. It trains
for as many epochs as the federation's rounds x local epochs, with the same
trainer, seeds and preprocessing, and is evaluated through the same site-side
summaries on every site's held-out test split, the external hospital included, at an
operating threshold chosen like a federated model's: on the training hospitals'
validation splits (``common.operating_point``).
(The other reference point, each hospital's local-only model, is trained by
the federation itself through the ClientApp: ``eval.local-only``.)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from client.evaluation import summarize
from client.trainer import train_local
from common.config import RunConfig
from common.data import SplitTensors, concat_splits, load_split
from common.dates import acquired_before
from common.device import Compute, derive_seed, seed_everything, select_compute
from common.keys import Split, Task
from common.manifest import list_site_dirs, open_manifest
from common.models import build_model
from common.operating_point import (
    ThresholdChoice,
    choose_on_validation,
    evaluation_config,
    on_validation,
)
from common.schedule import epoch_lrs, is_constant
from common.summary import SiteSummary
from server.designs import EXTERNAL, INTERNAL, Evaluation

log = logging.getLogger("hepafed.progress")

POOLED = "pooled"  # the model id of the centralised baseline


@dataclass(frozen=True)
class SiteData:
    """A simulated hospital's preprocessed train, validation and test splits."""

    name: str
    train: SplitTensors
    test: SplitTensors
    val: SplitTensors


def load_sites(cfg: RunConfig) -> list[SiteData]:
    """Every site under ``data.site-root``, preprocessed by the sites' own pipeline (bad
    cases fail or are skipped by ``data.on-bad-case``, as at the sites themselves)."""
    out = []
    for site_dir in list_site_dirs(Path(cfg.data.site_root)):
        manifest = open_manifest(site_dir, cfg.data.channels, cfg.task)
        if cfg.data.acquired_before:  # as the sites do (client.site.open_site)
            kept = acquired_before(manifest.cases, cfg.data.acquired_before)
            manifest = dataclasses.replace(manifest, cases=tuple(kept))
        out.append(
            SiteData(
                manifest.name,
                load_split(manifest, Split.TRAIN, cfg.data, cfg.task),
                load_split(manifest, Split.TEST, cfg.data, cfg.task),
                load_split(manifest, Split.VAL, cfg.data, cfg.task),
            )
        )
    return out


def train_baseline(
    cfg: RunConfig, train: SplitTensors, seed_tag: str, compute: Compute
) -> nn.Module:
    """One model trained for as many epochs as the federation (rounds x local epochs),
    following the federation's lr schedule over them (``common.schedule.epoch_lrs``)."""
    seed = derive_seed(cfg.seed, seed_tag)
    seed_everything(seed)
    model = build_model(cfg)
    epochs = cfg.federation.num_rounds * cfg.train.local_epochs
    lrs = None if is_constant(cfg) else epoch_lrs(cfg, epochs)
    train_local(model, train, cfg, compute, seed, epochs=epochs, lrs=lrs)
    return model


@dataclass(frozen=True)
class PooledBaseline:
    """What ``pooled`` returns."""

    evaluations: list[Evaluation]  # at every site with a test split
    internal: SiteSummary  # on all training sites' test cases together
    threshold: ThresholdChoice | None  # None under eval.threshold-rule = fixed


def pooled(cfg: RunConfig, sites: Sequence[SiteData], trainers: Sequence[str]) -> PooledBaseline:
    """The centralised model's evaluation at every site, and on all internal test cases.

    The internal figure is the in-distribution one the phantom's difficulty is tuned
    to: the pooled model on the training sites' test cases together.
    """
    compute = select_compute(cfg.train.amp)
    train = concat_splits([s.train for s in sites if s.name in trainers])
    log.info("baseline pooled: training on %d cases from %d sites", len(train), len(trainers))
    model = train_baseline(cfg, train, POOLED, compute)
    choice = None
    if on_validation(cfg.eval) and cfg.task == Task.MALIGNANCY:
        at_candidates = cfg.replace({"eval.thresholds": cfg.eval.threshold_candidates})
        validation = {
            s.name: summarize(model, s.val, at_candidates, compute)
            for s in sites
            if s.name in trainers and len(s.val)
        }
        choice = choose_on_validation(cfg.eval, validation)
        cfg = cfg.replace(evaluation_config(cfg.eval, choice))
    evaluations = [
        Evaluation(
            POOLED,
            s.name,
            INTERNAL if s.name in trainers else EXTERNAL,
            Split.TEST.value,
            summarize(model, s.test, cfg, compute),
        )
        for s in sites
        if len(s.test)
    ]
    internal = concat_splits([s.test for s in sites if s.name in trainers])
    return PooledBaseline(evaluations, summarize(model, internal, cfg, compute), choice)
