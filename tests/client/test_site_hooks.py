"""Hooks at a site: local layers kept in the site's memory, harmonised inputs, and
test-time adaptation that cannot see labels."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, RecordDict

import client.site as site_module
from client.memory import has_trained, layers_key
from client.site import Instructions, open_site, site_evaluate, site_train
from common.config import RunConfig
from common.hooks import ADAPT_OWN_LAYERS, HookSet
from common.keys import Share
from common.models import build_model
from common.weights import subset, to_arrays


def _cfg(root: Path, **kw: object) -> RunConfig:
    return RunConfig().replace(
        {
            "data.site-root": str(root),
            "data.roi-size": 32,
            "data.context-mm": 0.0,
            "train.local-epochs": 1,
            **kw,
        }
    )


def test_fedbn_layers_stay_at_the_site_differ_per_site_and_come_back(
    site_factory: Callable[..., Path],
) -> None:
    a, b = (
        site_factory("site-a", n_cases=12, seed=1),
        site_factory("site-b", n_cases=12, seed=2, contrast=40.0),
    )
    cfg = _cfg(a.parent, **{"hooks.use": "fedbn"})
    model = build_model(cfg)
    local = HookSet(cfg).local_keys(model)
    sent = subset(to_arrays(model), local)  # what the server sends in a round
    memories = {}
    for path in (a, b):
        site = open_site({"site-dir": str(path)}, cfg)
        memory = RecordDict()
        update, _ = site_train(site, sent, cfg, 1, instructions=Instructions(), state=memory)
        assert not set(update) & local  # local layers are never sent
        assert has_trained(memory, "global")
        memories[site.name] = memory.array_records[layers_key("global")].to_torch_state_dict()
    assert set(memories["site-a"]) == local
    key = next(k for k in sorted(local) if k.endswith("running_mean"))
    assert not torch.equal(memories["site-a"][key], memories["site-b"][key])
    # a training site scores the global model with its own layers, whatever the server holds
    site = open_site({"site-dir": str(a)}, cfg)
    memory = RecordDict({layers_key("global"): ArrayRecord(memories["site-a"])})
    from client.memory import mark_trained

    mark_trained(memory, "global", 1)
    _, adaptation = site_evaluate(site, to_arrays(model), cfg, "test", state=memory)
    assert adaptation == ADAPT_OWN_LAYERS


def test_an_unseen_site_of_a_fedbn_model_reestimates_statistics(
    site_factory: Callable[..., Path],
) -> None:
    a = site_factory("site-a", n_cases=12)
    cfg = _cfg(a.parent, **{"hooks.use": "fedbn"})
    site = open_site({"site-dir": str(a)}, cfg)
    _, adaptation = site_evaluate(site, to_arrays(build_model(cfg)), cfg, "all", state=RecordDict())
    assert adaptation.startswith("bn-adapt")
    whole = Instructions(share=Share.ALL.value)  # a model trained whole: nothing to re-estimate
    _, adaptation = site_evaluate(
        site, to_arrays(build_model(cfg)), cfg, "all", instructions=whole, state=RecordDict()
    )
    assert adaptation == "none"
    # with a test-time hook the statistics are re-estimated first, then the hook runs
    cfg_tent = _cfg(a.parent, **{"hooks.use": "fedbn,tent", "hooks.tent-steps": 1})
    _, adaptation = site_evaluate(
        site, to_arrays(build_model(cfg_tent)), cfg_tent, "all", state=RecordDict()
    )
    assert adaptation == "tent"


@pytest.mark.parametrize("hooks", ["bn-adapt", "tent", "zscore,tent"])
def test_test_time_adaptation_never_reads_labels(
    site_factory: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, hooks: str
) -> None:
    path = site_factory("site-a", n_cases=16)
    cfg = _cfg(path.parent, **{"hooks.use": hooks})
    site = open_site({"site-dir": str(path)}, cfg)
    adapted: list[dict[str, torch.Tensor]] = []

    def record(model: torch.nn.Module, *args: Any, **kw: Any) -> Any:
        adapted.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        from common.summary import SiteSummary

        return SiteSummary(n=0, n_pos=0, n_neg=0, insufficient=True)

    real_prepared = site_module.Site.prepared

    def relabelled(flip: bool) -> Callable[..., Any]:
        def prepared(self: Any, *args: Any, **kw: Any) -> Any:
            data, raw = real_prepared(self, *args, **kw)
            labels = 1.0 - data.labels if flip else data.labels
            masks = torch.zeros_like(data.masks) if flip else data.masks
            return replace(data, labels=labels, masks=masks), raw

        return prepared

    monkeypatch.setattr(site_module, "summarize", record)
    weights = to_arrays(build_model(cfg))
    for flip in (False, True):
        monkeypatch.setattr(site_module.Site, "prepared", relabelled(flip))
        _, adaptation = site_evaluate(site, weights, cfg, "all", state=RecordDict())
        assert adaptation == hooks.replace("zscore,", "").replace(",", "+")
    assert adapted[0].keys() == adapted[1].keys()
    assert all(torch.equal(adapted[0][k], adapted[1][k]) for k in adapted[0])
    initial = build_model(cfg).state_dict()["bn1.running_mean"]
    assert not torch.equal(adapted[0]["bn1.running_mean"], initial)


def test_nyul_statistics_are_landmarks_only_and_inputs_are_mapped(
    site_factory: Callable[..., Path],
) -> None:
    path = site_factory("site-a", n_cases=12)
    cfg = _cfg(path.parent, **{"hooks.use": "nyul"})
    site = open_site({"site-dir": str(path)}, cfg)
    stats, n_cases = site.statistics(cfg)
    assert n_cases == 12 and list(stats) == ["nyul"]
    assert sorted(stats["nyul"]) == ["landmarks-0", "landmarks-1", "landmarks-2"]
    assert all(len(v) == len(cfg.hooks.landmarks) for v in stats["nyul"].values())
    json.dumps(stats)  # it travels as JSON text
    shared = {"nyul": {k: [x * 0.5 for x in v] for k, v in stats["nyul"].items()}}
    data, raw = site.prepared("test", cfg, HookSet(cfg), shared)
    assert not torch.equal(data.images, raw)
    plain, _ = site.prepared("test", cfg, HookSet(RunConfig()), {})
    assert torch.equal(plain.images, raw)
    # with the site's memory the statistics are fitted once per run, not every round
    hooks, memory, fits = HookSet(cfg), RecordDict(), []
    real_fit = hooks.fit

    def counted(images: torch.Tensor, shared: Any) -> Any:
        fits.append(1)
        return real_fit(images, shared)

    hooks.fit = counted  # type: ignore[method-assign]
    first, _ = site.prepared("train", cfg, hooks, shared, memory)
    again, _ = site.prepared("train", cfg, hooks, shared, memory)
    assert len(fits) == 1 and torch.equal(first.images, again.images)
    site.prepared("train", cfg, hooks, {"nyul": stats["nyul"]}, memory)  # other scale: refit
    assert len(fits) == 2
