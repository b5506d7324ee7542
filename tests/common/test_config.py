"""RunConfig: defaults, parsing of Flower's flat config, and loud errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from flwr.common.config import flatten_dict

from common.config import ConfigError, RunConfig, valid_keys

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_flower_config_equals_the_dataclass_defaults() -> None:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    flat = flatten_dict(doc["tool"]["flwr"]["app"]["config"])
    assert flat == RunConfig().to_flat()


def test_flat_round_trip_and_types() -> None:
    cfg = RunConfig.from_flat({"train.lr": 1, "data.channels": "t1, t2", "seed": 7})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data.channels == ("t1", "t2")
    assert RunConfig.from_flat(cfg.to_flat()) == cfg


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown run-config key 'train.lrr'.*train\.lr"):
        RunConfig.from_flat({"train.lrr": 0.1})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("federation.strategy", "fedfoo", r"'fedavg', 'fedavgm'.*'krum'"),
        ("task", "liver-volume", r"'lesion-malignancy', 'lesion-segmentation'"),
        ("train.optimizer", "lion", r"'adam', 'adamw', 'sgd'"),
        ("train.batch-size", 0, r"must be > 0"),
        ("train.batch-size", 2.5, r"expected int, got float"),
        ("train.amp", "yes", r"expected bool, got str"),
        ("federation.num-rounds", True, r"expected int, got bool"),
        ("data.window-max", -500.0, r"must exceed data.window-min"),
        ("data.spatial-dims", 4, r"must be 2 or 3"),
        ("eval.thresholds", "0.5,1.0", r"give one or more values in \(0, 1\)"),
        ("eval.thresholds", "0.5,high", "expected comma-separated numbers"),
        ("eval.design", "kfold", "must be one of"),
        ("eval.min-cases", 2, "must be >= 4"),
    ],
)
def test_bad_values_name_key_and_valid_choices(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        RunConfig.from_flat({key: value})
    assert key.split(".")[-1] in str(err.value) or "window" in str(err.value)


def test_replace_keeps_other_values() -> None:
    cfg = RunConfig().replace({"federation.num-rounds": 9})
    assert cfg.federation.num_rounds == 9
    assert cfg.train == RunConfig().train
    assert "federation.num-rounds" in valid_keys()


def test_replace_takes_a_tuple_for_a_list_field_and_checks_it_alike() -> None:
    """Code may pass a tuple where Flower's flat config writes "0.3,0.5"; a rogue value is
    refused the same way (a site's policy then counts the parsed thresholds)."""
    assert RunConfig().replace({"eval.thresholds": (0.3, 0.5)}).eval.thresholds == (0.3, 0.5)
    with pytest.raises(ConfigError, match="eval.thresholds"):
        RunConfig().replace({"eval.thresholds": [0.3, 1.5]})
