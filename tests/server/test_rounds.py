"""Federated rounds (``server.rounds``) driven with a fake grid: the sites' updates are known
numbers, so the new global model, the records and the audit trail can be checked exactly.

Each site k answers a training message with the model it received plus ``k / 1000`` in
every floating-point tensor, and reports its declared training cases as its weight.
FedAvg's new model is then the old one plus the case-weighted mean of those shifts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MessageType, MetricRecord, RecordDict

from common.config import RunConfig
from common.keys import ConfigKey, RecordKey
from common.summary import SiteSummary
from server.audit import AuditTrail, entries
from server.federation import Federation
from server.records import RunRecorder, load_checkpoint
from server.sites import SiteInfo
from server.trust import ServerTrust
from tests.server.fake_grid import Answer, ReplyGrid

pytestmark = pytest.mark.usefixtures("flower_task")

N_TRAIN = {1: 10, 2: 20, 3: 30}  # node id -> declared training cases


def _site(node: int) -> str:
    return f"site-{node}"


def _shifted(msg: Message, shift: float) -> ArrayRecord:
    sent = msg.content[RecordKey.ARRAYS]
    assert isinstance(sent, ArrayRecord)
    out = {}
    for key, array in sent.items():
        values = array.numpy()
        if np.issubdtype(values.dtype, np.floating):
            values = (values + np.float32(shift)).astype(values.dtype)
        out[key] = Array(values)
    return ArrayRecord(out)


def _sites_answer(
    failing: int | None = None,
    seen: list[Message] | None = None,
    val_auc: dict[int, float] | None = None,
) -> Answer:
    """``val_auc``: round -> the AUC each site reports for the val split after it."""

    def answer(msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        config = msg.content[RecordKey.CONFIG]
        if msg.metadata.message_type == MessageType.EVALUATE:
            assert val_auc is not None and config[ConfigKey.EVAL_SPLIT.value] == "val"
            auc = val_auc.get(int(str(config[ConfigKey.ROUND.value])), 0.5)
            summary = SiteSummary(n=20, n_pos=10, n_neg=10, auc=auc, auc_var=0.01)
            return Message(RecordDict({"metrics": MetricRecord(summary.to_record())}),
                           reply_to=msg)  # fmt: skip
        assert msg.metadata.message_type == MessageType.TRAIN
        if seen is not None:
            seen.append(msg)
        if node == failing:
            return Message(Error(code=0, reason="out of memory"), reply_to=msg)
        metrics = MetricRecord({"num-examples": float(N_TRAIN[node]), "train-loss": 0.5})
        content = RecordDict({RecordKey.ARRAYS: _shifted(msg, node / 1000),
                              RecordKey.METRICS: metrics})  # fmt: skip
        return Message(content, reply_to=msg)

    return answer


def _federation(
    tmp_path: Path, answer: Answer, reverse: bool = False, **settings: Any
) -> Federation:
    run = tmp_path / "run"
    cfg = RunConfig().replace({
        "output.run-dir": str(run), "model.width": 4, "federation.num-rounds": 2,
        "federation.round-timeout-s": 0.5, "data.channels": "arterial,portal",
        "eval.every-round": False, "trust.sign-updates": False, **settings,
    })  # fmt: skip
    sites = [SiteInfo(n, _site(n), "train", N_TRAIN[n], 5, "ab" * 32, n_val=20) for n in N_TRAIN]
    recorder = RunRecorder(run)
    (run / "rounds.jsonl").write_text("")
    grid = ReplyGrid(answer, tuple(N_TRAIN), reverse=reverse)
    return Federation(grid, cfg, recorder, sites, ServerTrust(cfg, run, "run-1"),  # type: ignore[arg-type]
                      AuditTrail(run))  # fmt: skip


def _float_shift(before: ArrayRecord, after: ArrayRecord) -> set[float]:
    """The shifts between two models over their floating-point tensors (rounded)."""
    out = set()
    for key, array in before.items():
        old, new = array.numpy(), after[key].numpy()
        if np.issubdtype(old.dtype, np.floating):
            out |= {round(float(x), 6) for x in np.unique(new.astype(np.float64) - old)}
        else:
            assert np.array_equal(old, new), key  # counters are not averaged into nonsense
    return out


def _train_records(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("phase") == "train"]


def test_two_rounds_average_the_known_updates_weighted_by_cases(tmp_path: Path) -> None:
    seen: list[Message] = []
    fed = _federation(tmp_path, _sites_answer(seen=seen))
    start = fed.initial_arrays()
    final = fed.train_global(fed.trainers)
    # per round: (10 x 1 + 20 x 2 + 30 x 3) / 60 / 1000 = 0.0023333; two rounds
    assert _float_shift(start, final) == {round(2 * 140 / 60 / 1000, 6)}
    # every site got both rounds, each message saying its round
    rounds = sorted((m.metadata.dst_node_id, int(str(m.content[RecordKey.CONFIG][
        ConfigKey.ROUND.value]))) for m in seen)  # fmt: skip
    assert rounds == [(n, r) for n in N_TRAIN for r in (1, 2)]
    records = _train_records(tmp_path)
    assert [r["round"] for r in records] == [1, 2]
    assert all(sorted(r["sites"]) == [_site(n) for n in N_TRAIN] for r in records)
    assert all(r["applied"] and not r["rejected"] and not r["no_reply"] for r in records)
    for r in records:  # the ServerApp process's memory (Linux /proc), after each round
        memory = r["server_memory_mb"]
        assert memory["at_start"] is None  # (a federation not started by ``connect``)
        assert 0 < memory["rss"] <= memory["peak"]
    assert records[0]["server_memory_mb"]["peak"] <= records[1]["server_memory_mb"]["peak"]
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert saved["round"] == 2
    kinds = [e["kind"] for e in entries(tmp_path / "run")]
    assert kinds.count("round") == 2 and kinds.count("checkpoint") == 2


def test_the_result_does_not_depend_on_the_order_replies_arrive_in(tmp_path: Path) -> None:
    forward = _federation(tmp_path / "a", _sites_answer())
    backward = _federation(tmp_path / "b", _sites_answer(), reverse=True)
    one, two = forward.train_global(forward.trainers), backward.train_global(backward.trainers)
    assert all(np.array_equal(one[k].numpy(), two[k].numpy()) for k in one)


def test_a_failing_site_is_left_out_and_the_others_are_averaged(tmp_path: Path) -> None:
    fed = _federation(tmp_path, _sites_answer(failing=2))
    start = fed.initial_arrays()
    final = fed.train_global(fed.trainers)
    # per round: (10 x 1 + 30 x 3) / 40 / 1000 = 0.0025
    assert _float_shift(start, final) == {round(2 * 100 / 40 / 1000, 6)}
    records = _train_records(tmp_path)
    assert all(sorted(r["sites"]) == ["site-1", "site-3"] for r in records)
    assert all("out of memory" in r["rejected"]["site-2"] for r in records), records


def test_the_round_with_the_best_validation_auc_is_the_final_model(tmp_path: Path) -> None:
    """federation.select-round = best-val-auc: every round's model is scored on the sites'
    val split (never test), and the best round's model is the final one."""
    seen: list[Message] = []
    settings: dict[str, Any] = {"federation.num-rounds": 3, "eval.every-round": True,
                                "federation.select-round": "best-val-auc"}  # fmt: skip
    answer = _sites_answer(seen=seen, val_auc={1: 0.70, 2: 0.90, 3: 0.80})
    fed = _federation(tmp_path, answer, **settings)
    start = fed.initial_arrays()
    final = fed.train_global(fed.trainers)
    # round 2's model: two rounds of (10 x 1 + 20 x 2 + 30 x 3) / 60 / 1000
    assert _float_shift(start, final) == {round(2 * 140 / 60 / 1000, 6)}
    lines = (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    select = next(r for r in records if r["phase"] == "select")
    assert select["round"] == 2 and select["val_auc"] == pytest.approx(0.90)
    assert select["scores"] == {"1": 0.7, "2": 0.9, "3": 0.8}  # round 0 is no candidate
    assert {r["split"] for r in records if r["phase"] == "evaluate"} == {"val"}
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert saved["round"] == 3  # written over the last checkpoint, saying which round it is
    restored = ArrayRecord(saved["model"])
    assert all(np.array_equal(restored[k].numpy(), final[k].numpy()) for k in final)
    checkpoints = [e for e in entries(tmp_path / "run") if e["kind"] == "checkpoint"]
    assert checkpoints[-1]["data"]["selected_round"] == 2
