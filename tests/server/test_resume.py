"""What a resumed run needs: optimiser and RNG state round-trip through a checkpoint, and
resuming what cannot be resumed fails with a named error."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvgM

from common.config import RunConfig
from server.audit import AuditTrail
from server.records import RunRecorder, load_checkpoint
from server.resume import (
    CheckpointMismatch,
    ResumeError,
    checkpoint_round,
    load_strategy_state,
    resumed_run_id,
    rng_state,
    set_rng_state,
    strategy_state,
)
from server.trust import file_sha256

pytestmark = pytest.mark.usefixtures("flower_task")


def _arrays(value: float) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.full((3, 2), value, np.float32))})


def _step(strategy: FedAvgM | FedAdam, rnd: int, arrays: ArrayRecord, value: float) -> ArrayRecord:
    """One server step from ``arrays`` towards a single site's weights ``value``."""
    strategy.configure_train(rnd, arrays, ConfigRecord(), cast(Grid, _Grid()))
    content = RecordDict({"arrays": _arrays(value), "metrics": MetricRecord({"num-examples": 1})})
    reply = Message(content, dst_node_id=1, message_type=MessageType.TRAIN)
    out = strategy.aggregate_train(rnd, [reply])[0]
    assert out is not None
    return out


class _Grid:
    def get_node_ids(self) -> list[int]:
        return [1]


@pytest.mark.parametrize("make", [
    lambda: FedAvgM(server_learning_rate=1.0, server_momentum=0.9, min_available_nodes=0,
                    min_train_nodes=1),
    lambda: FedAdam(eta=0.1, min_available_nodes=0, min_train_nodes=1),
], ids=["fedavgm", "fedadam"])  # fmt: skip
def test_server_optimiser_state_survives_a_checkpoint(
    make: Callable[[], FedAvgM | FedAdam], tmp_path: Path
) -> None:
    """Three steps straight == two steps, checkpoint, a fresh strategy loaded, one step."""
    straight = make()
    a = _arrays(0.0)
    for rnd, target in ((1, 1.0), (2, 2.0), (3, 0.5)):
        a = _step(straight, rnd, a, target)

    first = make()
    b = _arrays(0.0)
    for rnd, target in ((1, 1.0), (2, 2.0)):
        b = _step(first, rnd, b, target)
    recorder = RunRecorder(tmp_path)
    recorder.checkpoint(b.to_torch_state_dict(), RunConfig(), 2,
                        resume={"strategy": strategy_state(first), "rng": rng_state()})  # fmt: skip
    payload = load_checkpoint(tmp_path / "checkpoint.pt")  # weights_only=True
    second = make()
    load_strategy_state(second, payload["resume"]["strategy"])
    c = _step(second, 3, ArrayRecord(payload["model"]), 0.5)
    np.testing.assert_array_equal(a["w"].numpy(), c["w"].numpy())
    fresh = _step(make(), 3, ArrayRecord(payload["model"]), 0.5)  # without the state: differs
    assert not np.array_equal(fresh["w"].numpy(), a["w"].numpy())


def test_rng_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    random.seed(5)
    np.random.seed(6)
    RunRecorder(tmp_path).checkpoint({"w": torch.zeros(1)}, RunConfig(), 1,
                                     resume={"rng": rng_state()})  # fmt: skip
    expected = (random.random(), np.random.normal())
    set_rng_state(load_checkpoint(tmp_path / "checkpoint.pt")["resume"]["rng"])
    assert (random.random(), np.random.normal()) == expected


def test_resume_with_another_config_names_the_keys(tmp_path: Path) -> None:
    cfg = RunConfig().replace({"output.run-dir": str(tmp_path)})
    recorder = RunRecorder(tmp_path)
    recorder.start(cfg, [], "run-1")
    resumed = cfg.replace({"output.resume": True})
    assert resumed_run_id(recorder, resumed) == "run-1"
    changed = resumed.replace({"federation.num-rounds": 3, "train.lr": 0.01})
    with pytest.raises(ResumeError, match="federation.num-rounds, train.lr differ"):
        resumed_run_id(recorder, changed)


def test_resume_of_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    cfg = RunConfig().replace({"output.run-dir": str(tmp_path), "output.resume": True})
    with pytest.raises(ResumeError, match="config.json is missing or unreadable"):
        resumed_run_id(RunRecorder(tmp_path), cfg)


def test_unreadable_checkpoint_is_a_named_error(tmp_path: Path) -> None:
    recorder = RunRecorder(tmp_path)
    assert checkpoint_round(recorder, "global") is None
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    _record(AuditTrail(tmp_path), tmp_path / "checkpoint.pt", "global", 1)
    with pytest.raises(ResumeError, match=r"checkpoint .*checkpoint.pt is unreadable"):
        checkpoint_round(recorder, "global")


def _record(trail: AuditTrail, path: Path, model: str, rnd: int) -> None:
    """The trail's ``checkpoint`` entry, as the federation writes it."""
    trail.append(
        "checkpoint", {"model": model, "round": rnd, "file": path.name, "sha256": file_sha256(path)}
    )


def _checkpointed_run(tmp_path: Path) -> tuple[RunRecorder, dict[str, bytes]]:
    """A run folder whose trail recorded global rounds 1 and 2 and site-a's model (round 0);
    returns the recorder and each checkpoint's bytes as recorded (``global@1`` too)."""
    cfg = RunConfig()
    recorder, trail = RunRecorder(tmp_path), AuditTrail(tmp_path)
    trail.append("config", {"run_id": "run-1"})
    saved = {}
    for rnd in (1, 2):
        state = {"w": torch.full((3, 2), float(rnd))}
        path = recorder.checkpoint(state, cfg, rnd, "global", resume={"rng": rng_state()})
        _record(trail, path, "global", rnd)
        saved[f"global@{rnd}"] = path.read_bytes()
    path = recorder.checkpoint({"w": torch.zeros(3, 2)}, cfg, 0, "local-site-a")
    _record(trail, path, "local-site-a", 0)
    saved["local-site-a"] = path.read_bytes()
    return recorder, saved


@pytest.mark.parametrize(
    ("tamper", "named"),
    [
        ("another-model", "checkpoint.pt: swapped: it is checkpoint-local-site-a.pt of model "
                          "'local-site-a', round 0, not the checkpoint the audit trail recorded "
                          "for model 'global', round 2"),
        ("older-round", "checkpoint.pt: swapped: it is checkpoint.pt of model 'global', round 1, "
                        "not the checkpoint the audit trail recorded for model 'global', round 2"),
        ("edited", "checkpoint.pt: edited or replaced: its SHA-256 "),
        ("unrecorded", "checkpoint-later.pt: not recorded in the audit trail"),
    ],
)  # fmt: skip
def test_resume_refuses_a_checkpoint_its_trail_does_not_vouch_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tamper: str, named: str
) -> None:
    """``resume-checkpoint-swapped``: the file a resumed run would continue from must have the
    SHA-256 of its last ``checkpoint`` entry; anything else is named and never loaded."""
    recorder, saved = _checkpointed_run(tmp_path)
    assert checkpoint_round(recorder, "global") == 2  # control: as recorded
    assert checkpoint_round(recorder, "local-site-a") == 0
    target = tmp_path / "checkpoint.pt"
    if tamper == "another-model":
        target.write_bytes(saved["local-site-a"])
    elif tamper == "older-round":
        target.write_bytes(saved["global@1"])
    elif tamper == "edited":
        target.write_bytes(saved["global@2"] + b"\0")
    else:
        (tmp_path / "checkpoint-later.pt").write_bytes(saved["global@2"])
        target = tmp_path / "checkpoint-later.pt"
    loaded: list[Path] = []
    monkeypatch.setattr("server.resume.load_checkpoint", lambda p: loaded.append(p))
    model = "later" if tamper == "unrecorded" else "global"
    with pytest.raises(CheckpointMismatch, match=re.escape(named)) as caught:
        checkpoint_round(recorder, model)
    assert isinstance(caught.value, ResumeError)
    assert str(target) in str(caught.value) and "start the run in a new folder" in str(caught.value)
    assert loaded == []  # refused before torch.load ever read the file


def test_resume_without_the_trail_that_vouches_for_a_checkpoint(tmp_path: Path) -> None:
    recorder, _ = _checkpointed_run(tmp_path)
    (tmp_path / "audit.jsonl").unlink()
    with pytest.raises(CheckpointMismatch, match="the audit trail that vouches for checkpoint.pt"):
        checkpoint_round(recorder, "global")


def test_a_dp_accountant_resumes_with_the_epsilon_already_spent(tmp_path: Path) -> None:
    """Central DP: the accountant's releases are in the checkpoint, so a resumed run keeps
    counting from the epsilon spent before the server stopped (not from zero)."""
    from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

    from server.privacy import privacy_spent, sample_size, wrap_for_privacy
    from server.strategies import build_strategy

    cfg = RunConfig().replace({"privacy.mode": "central", "privacy.noise-multiplier": 2.0})

    def dp() -> object:
        return wrap_for_privacy(build_strategy(cfg, 4), cfg, sample_size(cfg, 4), population=4)

    before = dp()
    accountant = before.accountant  # type: ignore[attr-defined]
    for _ in range(3):
        accountant.compose(GaussianPrivacyEvent(noise_multiplier=2.0, sample_size=4,
                                                population_size=4))  # fmt: skip
    before.releases = 3  # type: ignore[attr-defined]  # three noised aggregates released
    spent = privacy_spent(before)  # type: ignore[arg-type]
    assert spent is not None and spent["releases"] == 3 and spent["epsilon"] > 0
    RunRecorder(tmp_path).checkpoint({"w": torch.zeros(1)}, cfg, 3,
                                     resume={"strategy": strategy_state(before)})  # type: ignore[arg-type]  # fmt: skip
    after = dp()
    assert privacy_spent(after)["releases"] == 0  # type: ignore[arg-type,index]
    load_strategy_state(after, load_checkpoint(tmp_path / "checkpoint.pt")["resume"]["strategy"])  # type: ignore[arg-type]
    assert privacy_spent(after) == spent  # type: ignore[arg-type]
