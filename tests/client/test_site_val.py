"""A site's val split: read from the manifest, counted in the query reply and by
``hepafed site check``, never trained on, and scored when a message asks for it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from client.app import evaluate as evaluate_handler
from client.app import query as query_handler
from client.site import Instructions, open_site, site_train
from common.cli import main
from common.config import RunConfig
from common.keys import ConfigKey, MetricKey, RecordKey, SiteKey, Split
from common.models import build_model
from common.weights import to_arrays

SPLITS = ("train", "val", "train", "test")  # of 12 cases: 6 train, 3 val, 3 test


def _cfg(root: Path) -> RunConfig:
    return RunConfig().replace(
        {
            "data.site-root": str(root),
            "data.roi-size": 32,
            "data.context-mm": 0.0,
            "train.local-epochs": 1,
        }
    )


def _handle(
    handler: Callable[[Message, Context], Message],
    site: Path,
    config: dict[str, Any],
    message_type: str,
    arrays: ArrayRecord | None = None,
) -> Message:
    content = RecordDict({RecordKey.CONFIG: ConfigRecord(config)})
    if arrays is not None:
        content[RecordKey.ARRAYS] = arrays
    msg = Message(content, dst_node_id=0, message_type=message_type)
    ctx = Context(
        run_id=1,
        node_id=0,
        node_config={"site-dir": str(site)},
        state=RecordDict(),
        run_config={},
    )
    return handler(msg, ctx)


def test_val_rows_are_read_as_their_own_split(site_factory: Callable[..., Path]) -> None:
    path = site_factory(n_cases=12, splits=SPLITS)
    site = open_site({"site-dir": str(path)}, _cfg(path.parent))
    counts = {s.value: len(site.manifest.split(s)) for s in Split}
    assert counts == {"train": 6, "val": 3, "test": 3}
    val_ids = {c.case_id for c in site.manifest.split(Split.VAL)}
    assert val_ids == {"site-a-001", "site-a-005", "site-a-009"}


@pytest.mark.usefixtures("flower_task")
def test_query_reply_counts_val_next_to_train_and_test(site_factory: Callable[..., Path]) -> None:
    path = site_factory(n_cases=12, splits=SPLITS)
    reply = _handle(query_handler, path, RunConfig().to_flat(), MessageType.QUERY)
    info = reply.content[RecordKey.SITE]
    assert isinstance(info, ConfigRecord)
    assert (info[SiteKey.N_TRAIN], info[SiteKey.N_VAL], info[SiteKey.N_TEST]) == (6, 3, 3)


def test_a_site_trains_on_its_train_split_only(site_factory: Callable[..., Path]) -> None:
    path = site_factory(n_cases=12, splits=SPLITS)
    cfg = _cfg(path.parent)
    site = open_site({"site-dir": str(path)}, cfg)
    seen: list[str] = []
    original = site.prepared

    def prepared(split: str, *args: Any, **kw: Any) -> Any:
        seen.append(split)
        return original(split, *args, **kw)

    object.__setattr__(site, "prepared", prepared)  # Site is frozen; spy on this one
    _, metrics = site_train(site, to_arrays(build_model(cfg)), cfg, 1, instructions=Instructions())
    assert seen == [Split.TRAIN.value]
    assert metrics[MetricKey.NUM_EXAMPLES.value] == 6.0  # no val (nor test) case


@pytest.mark.usefixtures("flower_task")
@pytest.mark.parametrize(("split", "n"), [("val", 3), ("test", 3), ("all", 12)])
def test_an_evaluation_message_scores_the_split_it_names(
    site_factory: Callable[..., Path], split: str, n: int
) -> None:
    path = site_factory(n_cases=12, splits=SPLITS)
    cfg = _cfg(path.parent)
    config = {**cfg.to_flat(), ConfigKey.EVAL_SPLIT.value: split}
    arrays = to_arrays(build_model(cfg))
    reply = _handle(evaluate_handler, path, config, MessageType.EVALUATE, arrays)
    metrics = reply.content[RecordKey.METRICS]
    assert metrics[MetricKey.N.value] == n


def test_site_check_shows_the_val_count(
    site_factory: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    site = site_factory(n_cases=12, splits=SPLITS)
    assert main(["site", "check", str(site)]) == 0
    assert "splits: train=6, val=3, test=3" in capsys.readouterr().out


@pytest.mark.parametrize("split", ["../../../../tmp/evil", "validation", "test/.."])
def test_a_split_the_server_names_is_one_a_site_has_never_a_path(split: str) -> None:
    """The eval split is the server's word; a site scores train, val, test or all."""
    from client.site import InstructionError

    with pytest.raises(InstructionError, match="a site scores one of train, val, test, all"):
        Instructions.from_config({ConfigKey.EVAL_SPLIT.value: split})
    assert Instructions.from_config({ConfigKey.EVAL_SPLIT.value: "val"}).split == "val"
    assert Instructions.from_config({}).split == Split.TEST.value
