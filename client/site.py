"""A site's identity and data as the ClientApp sees them, and its jobs.

Identity comes from the SuperNode's ``node_config`` (``site-dir``, optional
``site-name``). In simulation Flower only gives a ``partition-id``; it indexes
the sorted site folders under ``data.site-root``, the same folders and
manifests a real hospital would have.

Domain-adaptation hooks (``common.hooks``) act here at four of their five
points: site preprocessing, which layers stay local, the local objective, and
test-time adaptation when the site scores a model it did not train.

Preprocessed crops are cached only in the site's own ``policy.cache-dir``
(``client.policy``; the run config's ``data.cache-dir`` is replaced by it), a 0700
folder whose files are made 0600 after every load.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from flwr.app import RecordDict
from torch import nn

from client.evaluation import summarize
from client.memory import (
    has_trained,
    mark_trained,
    recall,
    remember,
    restore_local_layers,
    save_local_layers,
)
from client.policy import SitePolicy, private_folder, restrict_tree, simulated_policy
from client.trainer import train_local
from common.badcases import SKIPPED_CASES
from common.config import RunConfig
from common.data import SplitTensors, load_split, load_splits
from common.dates import acquired_before
from common.device import Compute, derive_seed, seed_everything, select_compute
from common.dicomweb import open_source
from common.hooks import ADAPT_NONE, ADAPT_OWN_LAYERS, HookPoint, HookSet, Statistics
from common.hooks.normalization import batchnorm_layers
from common.hooks.tta import reestimate_statistics
from common.keys import EVAL_ALL, GLOBAL_MODEL, ConfigKey, MetricKey, NodeKey, Share, Split
from common.manifest import SiteManifest, list_site_dirs, open_manifest
from common.models import build_model
from common.schedule import epoch_lrs, is_constant, round_lr
from common.summary import SiteSummary
from common.weights import load_arrays, shared_state

EVAL_SPLITS = (*(s.value for s in Split), EVAL_ALL)  # what ConfigKey.EVAL_SPLIT may name
# what a site that never trained a model with local layers gets when no TEST_TIME hook is set
ADAPT_FORCED = "bn-adapt (the model has no global normalisation statistics)"


class SiteConfigError(ValueError):
    """The node does not say which site folder it serves."""


class InstructionError(ValueError):
    """A message's instructions name something a site does not do (the server's word)."""


@dataclass(frozen=True)
class Instructions:
    """What a message's config says beyond the run config (``common.keys.ConfigKey``)."""

    model: str = GLOBAL_MODEL
    base_model: str = ""  # fine-tuning: start from this model's local layers
    share: str = Share.SHARED.value
    split: str = Split.TEST.value
    shared_statistics: dict[str, Statistics] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict)  # the ConfigKey entries, e.g. proximal-mu

    @classmethod
    def from_config(cls, extras: Mapping[str, Any]) -> Instructions:
        stats = str(extras.get(ConfigKey.SHARED_STATISTICS, "") or "")
        split = str(extras.get(ConfigKey.EVAL_SPLIT, Split.TEST.value))
        if split not in EVAL_SPLITS:  # the server's word: a name, never a path
            raise InstructionError(
                f"the server asked to score split {split!r}: a site scores one of "
                f"{', '.join(EVAL_SPLITS)}"
            )
        return cls(
            model=str(extras.get(ConfigKey.MODEL, GLOBAL_MODEL)),
            base_model=str(extras.get(ConfigKey.BASE_MODEL, "")),
            share=str(extras.get(ConfigKey.SHARE, Share.SHARED.value)),
            split=split,
            shared_statistics=json.loads(stats) if stats else {},
            raw=dict(extras),
        )


@dataclass(frozen=True)
class Site:
    """A hospital node: its name and validated manifest."""

    name: str
    manifest: SiteManifest

    def split(self, split: str, cfg: RunConfig) -> SplitTensors:
        """One manifest split, or every case with ``split = "all"`` (a site that never trained).

        Bad cases fail the job or are skipped by ``data.on-bad-case`` (``common.data``)."""
        if split == EVAL_ALL:
            data = load_splits(self.manifest, list(Split), cfg.data, cfg.task, self.name)
        else:
            data = load_split(self.manifest, split, cfg.data, cfg.task, self.name)
        if cfg.data.cache_dir:  # crops of patients: owner-only, whatever the umask
            restrict_tree(Path(cfg.data.cache_dir) / self.manifest.name)
        return data

    def prepared(
        self,
        split: str,
        cfg: RunConfig,
        hooks: HookSet,
        shared: Mapping[str, Statistics],
        memory: RecordDict | None = None,
    ) -> tuple[SplitTensors, torch.Tensor]:
        """A split after the PREPROCESS hooks, and its images before them.

        Hook statistics are fitted on every case of the site (images only), so
        train and test cases are mapped the same way; kept in ``memory`` (the
        site's Context state), they are fitted once per run, not every round.
        """
        data = self.split(split, cfg)
        preprocess = hooks.at(HookPoint.PREPROCESS)
        if not preprocess or not len(data):
            return data, data.images
        depends = [[h.describe() for h in preprocess], repr(cfg.data), dict(shared)]
        key = hashlib.sha256(json.dumps(depends, sort_keys=True).encode()).hexdigest()[:16]
        text = recall(memory, key) if memory is not None else None
        if text is None:
            every = data if split == EVAL_ALL else self.split(EVAL_ALL, cfg)
            text = json.dumps(hooks.fit(every.images, shared))
            if memory is not None:
                remember(memory, key, text)
        fitted = json.loads(text)
        return replace(data, images=hooks.preprocess(data.images, fitted, shared)), data.images

    def statistics(self, cfg: RunConfig) -> tuple[dict[str, Statistics], int]:
        """What this site shares for hooks that pool statistics (e.g. Nyul landmarks),
        and the number of cases they were fitted on (the server's weight)."""
        images = self.split(EVAL_ALL, cfg).images
        return HookSet(cfg).shared_statistics(images), len(images)


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


def site_policy_data_root(node_config: Mapping[str, Any]) -> Path | None:
    """The folder outside the site folder that this site's policy lets manifest paths reach
    (``policy.data-root``), or None: then every path stays inside the site folder."""
    root = SitePolicy.from_node_config(node_config).data_root
    return Path(root) if root else None


def open_site(node_config: Mapping[str, Any], cfg: RunConfig) -> Site:
    """Resolve and read this node's site. The manifest table is checked; a row with a
    missing file or a bad label is kept for loading to fail or skip (``open_manifest``).
    The cache folder ``data.cache-dir`` (the site's own, ``SitePolicy.apply``) is created
    owner-only (0700); the series of ``dicomweb:`` cells are retrieved into it from the
    site's DICOMweb server (``policy.dicomweb-secrets``, ``common.dicomweb.open_source``)."""
    site_dir = resolve_site_dir(node_config, cfg)
    if cfg.data.cache_dir:
        private_folder(Path(cfg.data.cache_dir))
    data_root = site_policy_data_root(node_config)
    secrets = SitePolicy.from_node_config(node_config).dicomweb_secrets
    pacs = open_source(secrets, cfg.data.cache_dir)
    manifest = open_manifest(site_dir, cfg.data.channels, cfg.task, data_root=data_root, pacs=pacs)
    if cfg.data.acquired_before:  # the data of the model's time only
        manifest = replace(
            manifest, cases=tuple(acquired_before(manifest.cases, cfg.data.acquired_before))
        )
    name = str(node_config.get(NodeKey.SITE_NAME, "")) or manifest.name
    return Site(name, manifest)


def _received_model(
    cfg: RunConfig, weights: Any, hooks: HookSet, share: str
) -> tuple[nn.Module, set[str]]:
    """The network with the received weights, and the keys its hooks keep local."""
    model = build_model(cfg)
    hooks.check_model(model)
    local = hooks.local_keys(model) if share == Share.SHARED else set()
    load_arrays(model, weights, optional=local)
    return model, local


def site_train(
    site: Site,
    weights: Any,
    cfg: RunConfig,
    server_round: int,
    compute: Compute | None = None,
    instructions: Instructions | None = None,
    state: RecordDict | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train the received model on the site's train split.

    Returns the state dict to send (without the layers a hook keeps local in a
    federated round) and aggregate metrics. ``state`` is the site's memory
    (Flower ``Context.state``): its local layers are put back before training
    and saved after it.
    """
    compute = compute or select_compute(cfg.train.amp)
    todo = instructions or Instructions()
    memory = state if state is not None else RecordDict()
    seed = derive_seed(cfg.seed, site.name, server_round)
    seed_everything(seed)
    hooks = HookSet(cfg, todo.raw)
    model, local = _received_model(cfg, weights, hooks, todo.share)
    restore_local_layers(memory, todo.base_model or todo.model, model)
    penalty = None
    if hooks.at(HookPoint.OBJECTIVE):
        reference = {
            k: p.detach().clone().to(compute.device)
            for k, p in model.named_parameters()
            if k not in local
        }

        def penalty(m: nn.Module) -> torch.Tensor | None:
            return hooks.penalty(m, reference, todo.raw)

    data, _ = site.prepared(Split.TRAIN, cfg, hooks, todo.shared_statistics, memory)
    result = train_local(
        model, data, cfg, compute, seed, penalty=penalty,
        lrs=_site_lrs(cfg, server_round, finetune=bool(todo.base_model)),
    )  # fmt: skip
    mark_trained(memory, todo.model, server_round)
    if todo.share == Share.SHARED:
        save_local_layers(memory, todo.model, model, local)
    metrics: dict[str, Any] = {
        MetricKey.NUM_EXAMPLES.value: float(len(data)),  # the cases trained on, none skipped
        MetricKey.TRAIN_LOSS.value: result.loss,
        MetricKey.SECONDS.value: result.seconds,
        SKIPPED_CASES: len(data.skipped),  # data.on-bad-case = skip; their ids are logged
    }
    state_dict = shared_state(model)
    for key in local:
        state_dict.pop(key, None)
    return state_dict, metrics


def _site_lrs(cfg: RunConfig, server_round: int, finetune: bool = False) -> list[float] | None:
    """Each local epoch's lr: the round's (``common.schedule``); a local-only model (round 0)
    spreads the whole schedule over its epochs; fine-tuning goes on from the federated model
    at the lr its last round trained at (a decayed schedule ends far below ``train.lr``, and
    fine-tuning at ``train.lr`` would undo what the federation converged to). None:
    ``train.lr`` in every epoch."""
    if is_constant(cfg):
        return None
    if finetune:
        return [round_lr(cfg, cfg.federation.num_rounds)] * cfg.train.local_epochs
    if server_round > 0:
        return [round_lr(cfg, server_round)] * cfg.train.local_epochs
    return epoch_lrs(cfg, cfg.train.local_epochs)


def prepare_for_scoring(
    model: nn.Module,
    images: torch.Tensor,
    hooks: HookSet,
    instructions: Instructions,
    memory: RecordDict,
    compute: Compute,
    local: set[str],
) -> str:
    """Make ``model`` what this site should score; how, for the report.

    A site that trained the model uses its own local layers. A site that did
    not (an unseen site) runs the TEST_TIME hooks on its images; if there are
    none and the model's normalisation layers were kept local during training,
    the global model has no trained statistics, so they are re-estimated on the
    site's images. Only images are passed in: labels cannot be read.
    """
    if has_trained(memory, instructions.model):
        return (
            ADAPT_OWN_LAYERS
            if restore_local_layers(memory, instructions.model, model)
            else ADAPT_NONE
        )
    test_time = bool(hooks.at(HookPoint.TEST_TIME))
    done = []
    if local and batchnorm_layers(model):
        # statistics first: a user's test-time hook may not touch them (the built-in ones
        # re-estimate them again after their own changes)
        reestimate_statistics(model, images, compute, hooks.cfg.train.batch_size)
        if not test_time:
            done.append(ADAPT_FORCED)
    if test_time:
        done.append(hooks.adapt(model, images, compute))
    return "+".join(done) if done else ADAPT_NONE


def site_evaluate(
    site: Site,
    weights: Any,
    cfg: RunConfig,
    split: str = Split.TEST,
    compute: Compute | None = None,
    instructions: Instructions | None = None,
    state: RecordDict | None = None,
    policy: SitePolicy | None = None,
) -> tuple[SiteSummary, str]:
    """Score the received model on one split (``"all"``: every case): summaries only,
    and how the site adapted the model before scoring it (``prepare_for_scoring``).

    Under ``policy`` (default: a simulated site's, matching the run) the summary obeys
    its small-cell rule, and more 2x2 tables than cases / ``min-cell`` are refused."""
    compute = compute or select_compute(cfg.train.amp)
    todo = instructions or Instructions()
    memory = state if state is not None else RecordDict()
    rules = policy or simulated_policy(cfg)
    hooks = HookSet(cfg, todo.raw)
    model, local = _received_model(cfg, weights, hooks, todo.share)
    data, raw_images = site.prepared(split, cfg, hooks, todo.shared_statistics, memory)
    rules.check_split(cfg, len(data))
    adaptation = prepare_for_scoring(model, data.images, hooks, todo, memory, compute, local)
    summary = summarize(model, data, cfg, compute, drift_images=raw_images, min_cell=rules.min_cell)
    return summary, adaptation
