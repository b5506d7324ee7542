"""Training-recipe options at the site: each epoch's lr and gradient clipping."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from client.site import _site_lrs, open_site
from client.trainer import train_local
from common.config import RunConfig
from common.device import select_compute
from common.models import build_model
from common.schedule import round_lr


def _cfg(root: Path, **kw: object) -> RunConfig:
    return RunConfig().replace(
        {
            "data.site-root": str(root),
            "data.roi-size": 32,
            "data.context-mm": 0.0,
            "data.augment": False,
            **kw,
        }
    )


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def test_a_zero_lr_epoch_leaves_the_weights_and_a_bad_length_is_named(
    site_factory: Callable[..., Path],
) -> None:
    site = site_factory(n_cases=12, seed=1)
    cfg = _cfg(site.parent, **{"train.local-epochs": 2})
    data = open_site({"site-dir": str(site)}, cfg).split("train", cfg)
    compute = select_compute(prefer="cpu")
    model = build_model(cfg)
    before = _params(model)
    train_local(model, data, cfg, compute, seed=1, lrs=[0.0, 0.0])
    assert all(torch.equal(before[k], p) for k, p in model.named_parameters())
    train_local(model, data, cfg, compute, seed=1, lrs=[0.0, 1e-3])
    assert any(not torch.equal(before[k], p) for k, p in model.named_parameters())
    with pytest.raises(ValueError, match="lrs gives 1 learning rate"):
        train_local(model, data, cfg, compute, seed=1, lrs=[1e-3])


def test_grad_clip_bounds_one_sgd_step(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=12, seed=2)
    cfg = _cfg(
        site.parent,
        **{
            "train.optimizer": "sgd",
            "train.weight-decay": 0.0,
            "train.lr": 0.1,
            "train.grad-clip": 1e-6,
            "train.local-epochs": 1,
            "train.batch-size": 64,  # one step over the 8 training cases
        },
    )
    data = open_site({"site-dir": str(site)}, cfg).split("train", cfg)
    model = build_model(cfg)
    before = _params(model)
    train_local(model, data, cfg, select_compute(prefer="cpu"), seed=1)
    step = torch.cat([(p.detach() - before[k]).flatten() for k, p in model.named_parameters()])
    assert 0 < float(step.norm()) <= 0.1 * 1e-6 * 1.001  # lr x clip


def test_site_lrs_follow_the_round_and_a_model_trained_alone_gets_the_whole_schedule() -> None:
    cfg = RunConfig().replace({"train.lr-schedule": "constant", "train.warmup-rounds": 0})
    assert _site_lrs(cfg, 3) is None  # constant: train.lr, nothing set
    cos = RunConfig()  # the default: one warm-up round, then cosine
    assert _site_lrs(cos, 4) == [round_lr(cos, 4)] * 2
    alone = cos.replace({"train.local-epochs": 20})  # local-only: rounds x epochs, round 0
    lrs = _site_lrs(alone, 0)
    assert lrs is not None and len(lrs) == 20
    assert lrs[0] == lrs[1] == round_lr(cos, 1) and lrs[-1] == pytest.approx(round_lr(cos, 10))
    # fine-tuning goes on at the lr the federation's last round used: lr x min-factor here
    tuned = cos.replace({"train.local-epochs": 2})
    assert _site_lrs(tuned, 0, finetune=True) == pytest.approx([1e-3 * 0.05] * 2)
    assert _site_lrs(cfg, 0, finetune=True) is None  # constant schedule: train.lr, as before
