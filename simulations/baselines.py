"""The two reference points of every simulated federation, on the same splits.

- local-only: each training hospital trains alone on its own train split;
- pooled: one centralised model on all training hospitals' train splits
  (the upper bound that privacy rules out in practice).

Both train for as many epochs as the federation's rounds x local epochs, with
the same trainer, seeds and preprocessing, and are evaluated on every site's
held-out test split, the external hospital included.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from client.trainer import evaluate, train_local
from common.config import RunConfig
from common.data import SplitTensors, concat_splits, load_split
from common.device import Compute, derive_seed, seed_everything, select_compute
from common.keys import Split
from common.manifest import list_site_dirs, read_manifest
from common.models import build_model

log = logging.getLogger("hepafed.progress")

SiteMetrics = dict[str, dict[str, float]]  # evaluation site -> metrics


@dataclass(frozen=True)
class SiteData:
    """A simulated hospital's preprocessed train and test splits."""

    name: str
    train: SplitTensors
    test: SplitTensors


def load_sites(cfg: RunConfig) -> list[SiteData]:
    """Every site under ``data.site-root``, preprocessed by the sites' own pipeline."""
    out = []
    for site_dir in list_site_dirs(Path(cfg.data.site_root)):
        manifest = read_manifest(site_dir, cfg.data.channels, cfg.task)
        out.append(
            SiteData(
                manifest.name,
                load_split(manifest, Split.TRAIN, cfg.data, cfg.task),
                load_split(manifest, Split.TEST, cfg.data, cfg.task),
            )
        )
    return out


def train_baseline(
    cfg: RunConfig, train: SplitTensors, seed_tag: str, compute: Compute
) -> nn.Module:
    """One model trained for as many epochs as the federation (rounds x local epochs)."""
    seed = derive_seed(cfg.seed, seed_tag)
    seed_everything(seed)
    model = build_model(cfg)
    epochs = cfg.federation.num_rounds * cfg.train.local_epochs
    train_local(model, train, cfg, compute, seed, epochs=epochs)
    return model


def evaluate_at_sites(
    model: nn.Module, cfg: RunConfig, sites: Sequence[SiteData], compute: Compute
) -> SiteMetrics:
    """The model's summary metrics on every site's test split."""
    return {s.name: evaluate(model, s.test, cfg, compute) for s in sites if len(s.test)}


def local_only(
    cfg: RunConfig, sites: Sequence[SiteData], trainers: Sequence[str]
) -> dict[str, SiteMetrics]:
    """For each training site, its own model's metrics at every site."""
    compute = select_compute(cfg.train.amp)
    out = {}
    for site in sites:
        if site.name in trainers:
            log.info("baseline local-only: training at %s (%d cases)", site.name, len(site.train))
            model = train_baseline(cfg, site.train, f"local-only/{site.name}", compute)
            out[site.name] = evaluate_at_sites(model, cfg, sites, compute)
    return out


def pooled(
    cfg: RunConfig, sites: Sequence[SiteData], trainers: Sequence[str]
) -> tuple[SiteMetrics, dict[str, float]]:
    """The centralised model on the union of the training sites' train splits.

    Returns its metrics at every site, and on all training sites' test cases
    together (the in-distribution figure the phantom's difficulty is tuned to).
    """
    compute = select_compute(cfg.train.amp)
    train = concat_splits([s.train for s in sites if s.name in trainers])
    log.info("baseline pooled: training on %d cases from %d sites", len(train), len(trainers))
    model = train_baseline(cfg, train, "pooled", compute)
    internal = concat_splits([s.test for s in sites if s.name in trainers])
    return evaluate_at_sites(model, cfg, sites, compute), evaluate(model, internal, cfg, compute)
