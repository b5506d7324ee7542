"""A site's identity and data as the ClientApp sees them, and its two jobs.

Identity comes from the SuperNode's ``node_config`` (``site-dir``, optional
``site-name``). In simulation Flower only gives a ``partition-id``; it indexes
the sorted site folders under ``data.site-root``, the same folders and
manifests a real hospital would have.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.evaluation import summarize
from client.trainer import train_local
from common.config import RunConfig
from common.data import SplitTensors, concat_splits, load_split
from common.device import Compute, derive_seed, seed_everything, select_compute
from common.keys import EVAL_ALL, MetricKey, NodeKey, Split
from common.manifest import SiteManifest, list_site_dirs, read_manifest
from common.models import build_model
from common.summary import SiteSummary
from common.weights import load_arrays, shared_state


class SiteConfigError(ValueError):
    """The node does not say which site folder it serves."""


@dataclass(frozen=True)
class Site:
    """A hospital node: its name and validated manifest."""

    name: str
    manifest: SiteManifest

    def split(self, split: str, cfg: RunConfig) -> SplitTensors:
        """One manifest split, or every case with ``split = "all"`` (a site that never trained)."""
        if split == EVAL_ALL:
            parts = [load_split(self.manifest, s, cfg.data, cfg.task) for s in Split]
            return concat_splits([p for p in parts if len(p)])
        return load_split(self.manifest, split, cfg.data, cfg.task)


def resolve_site_dir(node_config: Mapping[str, Any], cfg: RunConfig) -> Path:
    """The folder this node serves, from ``node_config`` (or the simulation index)."""
    if NodeKey.SITE_DIR in node_config:
        return Path(str(node_config[NodeKey.SITE_DIR]))
    if NodeKey.PARTITION_ID in node_config and cfg.data.site_root:
        sites = list_site_dirs(cfg.data.site_root)
        pid = int(node_config[NodeKey.PARTITION_ID])
        if pid >= len(sites):
            raise SiteConfigError(
                f"simulated node {pid} has no site: {cfg.data.site_root} holds "
                f"{len(sites)} site folder(s); run as many nodes as sites"
            )
        return sites[pid]
    raise SiteConfigError(
        "node_config has no 'site-dir': start the SuperNode with "
        "--node-config \"site-dir='/path/to/site'\" (or set data.site-root in simulation)"
    )


def open_site(node_config: Mapping[str, Any], cfg: RunConfig) -> Site:
    """Resolve and read this node's site (the manifest is checked, files exist)."""
    site_dir = resolve_site_dir(node_config, cfg)
    manifest = read_manifest(site_dir, cfg.data.channels, cfg.task)
    name = str(node_config.get(NodeKey.SITE_NAME, "")) or manifest.name
    return Site(name, manifest)


def site_train(
    site: Site, weights: Any, cfg: RunConfig, server_round: int, compute: Compute | None = None
) -> tuple[Any, dict[str, Any]]:
    """Train the received global model on the site's train split.

    Returns the updated shared state dict and aggregate metrics.
    """
    compute = compute or select_compute(cfg.train.amp)
    seed = derive_seed(cfg.seed, site.name, server_round)
    seed_everything(seed)
    model = build_model(cfg)
    load_arrays(model, weights)
    result = train_local(model, site.split(Split.TRAIN, cfg), cfg, compute, seed)
    metrics: dict[str, Any] = {
        MetricKey.NUM_EXAMPLES.value: float(len(site.manifest.split(Split.TRAIN))),
        MetricKey.TRAIN_LOSS.value: result.loss,
        MetricKey.SECONDS.value: result.seconds,
    }
    return shared_state(model), metrics


def site_evaluate(
    site: Site,
    weights: Any,
    cfg: RunConfig,
    split: str = Split.TEST,
    compute: Compute | None = None,
) -> SiteSummary:
    """Evaluate the received model on one split (``"all"``: every case); summaries only."""
    compute = compute or select_compute(cfg.train.amp)
    model = build_model(cfg)
    load_arrays(model, weights)
    return summarize(model, site.split(split, cfg), cfg, compute)
