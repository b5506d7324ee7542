"""Several training methods on the same connected sites, splits and seeds.

A method is a name and a run config (``hooks.use``, ``hooks.finetune-epochs``,
``federation.strategy``...). Methods that train the same way share one
federation: hooks that act only at test time (``bn-adapt``, ``tent``) and
fine-tuning change what happens after training, so e.g. ``fedavg``,
``bn-adapt`` and ``finetune`` reuse one FedAvg model and differ only in how
it is scored. Every method yields one evaluation per site, labelled with the
method's name:

- a training site scores the method's model on its test split (its own local
  layers where a hook keeps some local; with fine-tuning, its own fine-tuned
  model);
- an external site scores every case with what an unseen site gets: the
  global model, after the method's test-time adaptation if it has one (a site
  without labels cannot fine-tune).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from flwr.app import ArrayRecord
from flwr.serverapp import Grid

from common.config import RunConfig
from common.hooks import HookPoint, HookSet, hook_class
from common.keys import Share, StrategyName, finetuned_model
from server.designs import Evaluation, evaluation_records
from server.federation import Federation, connect
from server.records import RunRecorder
from server.sites import default_splits

log = logging.getLogger("hepafed.progress")

ADAPT_FINETUNED = "fine-tuned at the site"


def training_signature(cfg: RunConfig) -> RunConfig:
    """``cfg`` without what acts only after training: equal signatures, same model."""
    train_hooks = [
        name for name in cfg.hooks.use if set(hook_class(name).points) != {HookPoint.TEST_TIME}
    ]
    return cfg.replace({"hooks.use": ",".join(train_hooks), "hooks.finetune-epochs": 0})


def run_methods(fed: Federation, methods: Mapping[str, RunConfig]) -> list[Evaluation]:
    """Train and score every method (see the module docstring); their evaluations."""
    trained: dict[RunConfig, tuple[str, ArrayRecord]] = {}
    evaluations: list[Evaluation] = []
    for method, cfg in methods.items():
        view = fed.with_config(cfg)
        signature = training_signature(cfg)
        if signature in trained:
            model_id, arrays = trained[signature]
            log.info("method %s: scoring the model trained for %s", method, model_id)
        else:
            model_id = method
            log.info("method %s: federating %s", method, ", ".join(s.name for s in view.trainers))
            arrays = view.train_global(view.trainers, model_id)
            trained[signature] = (model_id, arrays)
        evaluations += score_method(view, method, model_id, arrays)
    return evaluations


def score_method(
    view: Federation, method: str, model_id: str, arrays: ArrayRecord
) -> list[Evaluation]:
    """One evaluation per site of ``method``, whose federated model is ``model_id``."""
    splits = default_splits(view.sites)
    inside = {s.name for s in view.trainers}
    if view.cfg.hooks.finetune_epochs <= 0:
        results = view.evaluate(arrays, splits, model_id, label=method)
        return evaluation_records(results, method, inside, splits)
    outside = {site: split for site, split in splits.items() if site not in inside}
    out = evaluation_records(
        view.evaluate(arrays, outside, model_id, label=method), method, inside, outside
    )
    for site in view.trainers:
        if site.name not in splits:
            continue
        tuned_id = f"{method}/{finetuned_model(site.name)}"
        tuned = view.finetune(site, arrays, model_id, tuned_id)
        if tuned is None:  # recorded by Federation.train_alone
            continue
        own = {site.name: splits[site.name]}
        results = view.evaluate(tuned, own, tuned_id, Share.ALL, label=method)
        out += [
            replace(e, adaptation=ADAPT_FINETUNED)
            for e in evaluation_records(results, method, {site.name}, own)
        ]
    return sorted(out, key=lambda e: e.site)


FINETUNE_DEFAULT_EPOCHS = 2  # a "finetune" method when hooks.finetune-epochs is 0


CHANNELS_PART = "channels="


def method_config(cfg: RunConfig, method: str) -> RunConfig:
    """The run config of a method name: ``+``-joined parts, each a strategy name
    (``fedavg``, ``fedadam``...), ``finetune``, ``channels=A:B`` (train and score on
    those image channels only, e.g. ``channels=t2:dwi``: a channel-subset comparison on
    the same cases), or a hook name."""
    hooks: list[str] = []
    # fine-tuning belongs to the methods that name it, never to the baseline
    overrides: dict[str, object] = {"hooks.finetune-epochs": 0}
    for part in (p.strip() for p in method.split("+")):
        if part.startswith(CHANNELS_PART):
            overrides["data.channels"] = channel_subset(cfg, part.removeprefix(CHANNELS_PART))
        elif part in {s.value for s in StrategyName}:  # "fedavg" is FedAvg whatever the config
            overrides["federation.strategy"] = part
        elif part == "finetune":
            epochs = cfg.hooks.finetune_epochs or FINETUNE_DEFAULT_EPOCHS
            overrides["hooks.finetune-epochs"] = epochs
        else:
            hooks.append(part)
    return cfg.replace({**overrides, "hooks.use": ",".join([*cfg.hooks.use, *hooks])})


def channel_subset(cfg: RunConfig, text: str) -> str:
    """``A:B`` -> ``"A,B"`` after checking each is one of the run's channels (a subset is
    compared on the same cases, so it cannot name a channel the sites were not given)."""
    wanted = [c.strip() for c in text.split(":") if c.strip()]
    unknown = [c for c in wanted if c not in cfg.data.channels]
    if not wanted or unknown or len(set(wanted)) != len(wanted):
        raise ValueError(
            f"{CHANNELS_PART}{text}: name distinct channels of data.channels, ':'-joined "
            f"(unknown: {', '.join(unknown) or 'none'}; the run has "
            f"{', '.join(cfg.data.channels)})"
        )
    return ",".join(wanted)


def describe_method(cfg: RunConfig, base: RunConfig | None = None) -> list[str]:
    """What a method does beyond FedAvg, one entry per part, for the comparison table
    (its channels when they differ from ``base``'s)."""
    parts = HookSet(cfg).describe()
    if base is not None and cfg.data.channels != base.data.channels:
        parts.insert(0, f"channels {', '.join(cfg.data.channels)}")
    if cfg.federation.strategy != StrategyName.FEDAVG:
        parts.insert(0, f"strategy {cfg.federation.strategy}")
    if cfg.hooks.finetune_epochs:
        parts.append(f"finetune ({cfg.hooks.finetune_epochs} epochs)")
    return parts


def serve_comparison(grid: Grid, cfg: RunConfig, methods: Mapping[str, RunConfig]) -> Path:
    """A ServerApp body: connect the sites, run every method, write evaluations.json."""
    recorder = RunRecorder(Path(cfg.output.run_dir))
    fed = connect(grid, cfg, recorder)
    evaluations = run_methods(fed, methods)
    recorder.write_evaluations([e.to_dict() for e in evaluations])
    return recorder.run_dir
