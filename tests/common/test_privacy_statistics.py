"""Normalisation statistics under differential privacy: kept at the site, never noised.

Case ``dp-bn-noise`` (docs/trust.md): with central DP, noise on BatchNorm's
``running_var`` made variances negative and every evaluation NaN. The default network
(a ResNet with 12 BatchNorm layers) goes through one noised central round here; the
sites' variances stay their own and positive, and the model scores finite values.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import cast

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from common.config import RunConfig
from common.hooks import HookSet
from common.hooks.normalization import batchnorm_layers
from common.models import build_model
from common.privacy import running_statistics
from common.weights import load_arrays, merge, subset, to_arrays
from server.privacy import sample_size, wrap_for_privacy
from server.sites import NodeView
from server.strategies import build_strategy

pytestmark = pytest.mark.usefixtures("flower_task")

SITES = 3


def _cfg(mode: str) -> RunConfig:
    return RunConfig().replace(
        {"federation.min-sites": SITES, "privacy.mode": mode, "privacy.noise-multiplier": 20.0}
    )


def _site_model(cfg: RunConfig, seed: int) -> torch.nn.Module:
    """The global model after a site's "training": shifted weights, its own BN statistics."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        for bn in batchnorm_layers(model).values():
            assert bn.running_mean is not None and bn.running_var is not None
            bn.running_mean.normal_(0.0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return model


def _noised_round(cfg: RunConfig, shared: ArrayRecord, updates: list[ArrayRecord]) -> ArrayRecord:
    dp = wrap_for_privacy(build_strategy(cfg, SITES), cfg, sample_size(cfg, SITES))
    grid = cast(Grid, NodeView(range(1, SITES + 1)))
    messages = list(dp.configure_train(1, shared, ConfigRecord({"x": 1}), grid))
    replies = [
        Message(
            RecordDict({"arrays": u, "metrics": MetricRecord({"num-examples": 10.0})}), reply_to=m
        )
        for m, u in zip(messages, updates, strict=True)
    ]
    arrays = dp.aggregate_train(1, replies)[0]
    assert arrays is not None
    return arrays


def test_dp_keeps_every_running_statistic_local_and_nothing_else() -> None:
    model = build_model(RunConfig())
    expected = {
        f"{name}.{entry}"
        for name in batchnorm_layers(model)
        for entry in ("running_mean", "running_var")
    }
    assert len(expected) == 24 and running_statistics(model) == expected
    for mode in ("central", "central-client-clip", "local"):
        assert HookSet(_cfg(mode)).local_keys(model) == expected
    assert HookSet(_cfg("none")).local_keys(model) == set()
    with_fedbn = _cfg("central").replace({"hooks.use": "fedbn"})
    assert expected < HookSet(with_fedbn).local_keys(model)  # the hook's keys are kept too
    shared = subset(to_arrays(model), HookSet(_cfg("central")).local_keys(model))
    assert not set(shared) & expected
    assert set(shared) == {k for k, _ in model.named_parameters()}  # every trainable tensor


def test_central_dp_leaves_every_bn_variance_positive_and_scores_finite() -> None:
    cfg = _cfg("central")
    start = build_model(cfg)
    local = HookSet(cfg).local_keys(start)
    full = to_arrays(start)
    shared = subset(full, local)
    sites = [_site_model(cfg, seed) for seed in range(SITES)]
    updates = [subset(to_arrays(m), local) for m in sites]
    new_global = merge(full, _noised_round(cfg, shared, updates))
    images = torch.randn(4, 3, 32, 32)
    for site in sites:
        own = {k: v.clone() for k, v in site.state_dict().items() if k in local}
        load_arrays(site, subset(new_global, local), optional=local)
        variances = [bn.running_var for bn in batchnorm_layers(site).values()]
        assert all(v is not None and bool((v > 0).all()) for v in variances)
        for key, value in own.items():  # the site's own statistics, untouched by the round
            assert torch.equal(site.state_dict()[key], value)
        with torch.no_grad():
            scores = site.eval()(images)
        assert scores.shape == (4, 1) and bool(torch.isfinite(scores).all())


def test_the_same_noise_on_running_statistics_makes_variances_negative() -> None:
    """What the attacker saw, reproduced: the statistics inside the noised vector."""
    cfg = _cfg("central")
    start = build_model(cfg)
    full = to_arrays(start)
    sites = [_site_model(cfg, seed) for seed in range(SITES)]
    noised = _noised_round(cfg, full, [to_arrays(m) for m in sites])
    variances = np.concatenate(
        [noised[k].numpy().ravel() for k in noised if k.endswith("running_var")]
    )
    assert variances.size == 720 and int((variances < 0).sum()) > 100
    broken = build_model(cfg)
    broken.load_state_dict(
        OrderedDict((k, torch.from_numpy(v.numpy().copy())) for k, v in noised.items()),
        strict=False,
    )
    with torch.no_grad():
        scores = broken.eval()(torch.randn(4, 3, 32, 32))
    assert not bool(torch.isfinite(scores).all())


def test_local_dp_sends_no_running_statistics_to_noise() -> None:
    """client.privacy noises what the site sends; under DP that excludes the statistics."""
    cfg = _cfg("local")
    model = _site_model(cfg, 0)
    sent = subset(to_arrays(model), HookSet(cfg).local_keys(model))
    assert not any(k.endswith(("running_mean", "running_var")) for k in sent)
    assert set(sent) == {k for k, _ in model.named_parameters()}
