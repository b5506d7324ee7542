"""The site's one reading of a message's config record (``client.message_config``)."""

from __future__ import annotations

import sys

import pytest
from flwr.app import ConfigRecord

from client.message_config import named_hooks, run_config, split_config
from common.config import ConfigError, RunConfig
from common.keys import ConfigKey, EvalDesign, PrivacyMode


def _record(**extra: bool | int | float | str) -> ConfigRecord:
    flat = RunConfig().replace({"eval.design": "loso", "privacy.mode": "local"}).to_flat()
    return ConfigRecord({**flat, **extra})


def test_split_separates_run_config_round_and_server_keys() -> None:
    extra: dict[str, bool | int | float | str] = {ConfigKey.ROUND.value: 3, "model": "without-a"}
    record = _record(**extra)
    cfg, server_round, extras = split_config(record)
    assert server_round == 3
    assert extras == {"model": "without-a"}  # the round is returned on its own
    assert cfg.eval.design is EvalDesign.LOSO and cfg.privacy.mode is PrivacyMode.LOCAL
    assert run_config(record) == cfg


def test_flowers_clipping_norm_is_tolerated_an_unknown_key_is_named() -> None:
    assert run_config(_record(clipping_norm=1.0)).privacy.mode is PrivacyMode.LOCAL
    with pytest.raises(ConfigError, match="config key 'train.lrr'.*another hepafed version"):
        split_config(_record(**{"train.lrr": 0.1}))


def test_hook_names_are_read_without_importing_them() -> None:
    record = _record(**{"hooks.use": " fedbn , no_such_pkg_xyz.mod:Payload ,"})
    assert named_hooks(record) == ["fedbn", "no_such_pkg_xyz.mod:Payload"]
    assert "no_such_pkg_xyz" not in sys.modules
    assert named_hooks(ConfigRecord({})) == []
