"""The learning rate of each federated round (``common.schedule``), against hand-computed values."""

from __future__ import annotations

import math

import pytest

from common.config import ConfigError, RunConfig
from common.schedule import epoch_lrs, is_constant, round_lr


def _cfg(**kw: object) -> RunConfig:
    """Five rounds at lr 1, constant and without warm-up unless ``kw`` says otherwise."""
    base = {"train.lr-schedule": "constant", "train.warmup-rounds": 0}
    return RunConfig().replace({"train.lr": 1.0, "federation.num-rounds": 5, **base, **kw})


def test_the_default_recipe_is_one_warm_up_round_then_cosine_to_five_percent() -> None:
    # the recipe the stability study chose (docs/results/stability-liver-5.md)
    cfg = RunConfig()
    assert not is_constant(cfg)
    lr, rounds = cfg.train.lr, cfg.federation.num_rounds
    assert rounds == 10 and cfg.train.lr_min_factor == 0.05
    want = [lr / 2] + [lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * k / 8))) for k in range(9)]
    assert [round_lr(cfg, r) for r in range(1, 11)] == pytest.approx(want)
    assert round_lr(cfg, 10) == pytest.approx(lr * 0.05)


def test_the_constant_schedule_changes_nothing() -> None:
    cfg = _cfg()
    assert is_constant(cfg)
    assert [round_lr(cfg, r) for r in range(1, 6)] == [1.0] * 5


def test_warm_up_never_takes_a_short_runs_last_round() -> None:
    # the default's one warm-up round leaves a one-round run at full lr, no warm-up
    one = RunConfig().replace({"federation.num-rounds": 1, "train.lr-schedule": "constant"})
    assert round_lr(one, 1) == one.train.lr and is_constant(one)
    three = _cfg(**{"federation.num-rounds": 3, "train.warmup-rounds": 10})
    assert [round_lr(three, r) for r in range(1, 4)] == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_cosine_runs_from_lr_at_round_one_to_the_floor_at_the_last_round() -> None:
    cfg = _cfg(**{"train.lr-schedule": "cosine", "train.lr-min-factor": 0.2})
    # progress (r - 1) / 4; lr = 0.2 + 0.8 * (1 + cos(pi * progress)) / 2
    want = [
        1.0,
        0.2 + 0.4 * (1 + math.cos(math.pi / 4)),
        0.6,
        0.2 + 0.4 * (1 - math.cos(math.pi / 4)),
        0.2,
    ]
    assert [round_lr(cfg, r) for r in range(1, 6)] == pytest.approx(want)
    assert not is_constant(cfg)


def test_warm_up_ramps_linearly_then_the_schedule_starts() -> None:
    cfg = _cfg(**{"train.warmup-rounds": 2})
    assert [round_lr(cfg, r) for r in range(1, 6)] == pytest.approx([1 / 3, 2 / 3, 1, 1, 1])
    cos = _cfg(
        **{"train.warmup-rounds": 2, "train.lr-schedule": "cosine", "train.lr-min-factor": 0.0}
    )
    # after warm-up, cosine over rounds 3..5: progress 0, 1/2, 1
    assert [round_lr(cos, r) for r in range(1, 6)] == pytest.approx([1 / 3, 2 / 3, 1.0, 0.5, 0.0])


def test_rounds_outside_the_run_are_clamped() -> None:
    cfg = _cfg(**{"train.lr-schedule": "cosine", "train.lr-min-factor": 0.5})
    assert round_lr(cfg, 0) == round_lr(cfg, 1) == 1.0
    assert round_lr(cfg, 9) == round_lr(cfg, 5) == pytest.approx(0.5)


def test_a_model_trained_alone_spreads_the_schedule_over_its_epochs() -> None:
    cfg = _cfg(
        **{"train.warmup-rounds": 1, "train.lr-schedule": "cosine", "train.lr-min-factor": 0.0}
    )
    per_round = [round_lr(cfg, r) for r in range(1, 6)]
    assert epoch_lrs(cfg, 10) == pytest.approx([lr for lr in per_round for _ in range(2)])
    assert epoch_lrs(cfg, 5) == pytest.approx(per_round)
    assert len(epoch_lrs(cfg, 3)) == 3 and epoch_lrs(cfg, 3)[0] == per_round[0]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train.lr-schedule", "step", r"'constant', 'cosine'"),
        ("train.lr-min-factor", 1.5, r"train.lr-min-factor = 1.5: must be in \[0, 1\]"),
        ("train.warmup-rounds", -1, r"train.warmup-rounds = -1"),
        ("train.grad-clip", -1.0, r"train.grad-clip = -1.0: must be in \[0, inf\]"),
        ("federation.average-last", 11, r"federation.average-last = 11: must be in \[0, 10\]"),
        ("federation.average-last", 2.0, r"expected int, got float"),
    ],
)
def test_bad_recipe_values_are_named_errors(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig().replace({key: value})
