"""The ClientApp's train reply under update compression, with error feedback across rounds."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from client.app import train as train_handler
from client.memory import RESIDUAL_KEEP_S, ResidualFiles
from client.site import open_site, site_train
from common.compression import PACKED, unpack
from common.config import RunConfig
from common.models import build_model
from common.weights import to_arrays
from server.validation import update_problem

pytestmark = pytest.mark.usefixtures("flower_task")


def _train(site: Path, cfg: RunConfig, arrays: ArrayRecord, rnd: int, ctx: Context) -> Message:
    config = ConfigRecord({**cfg.to_flat(), "server-round": rnd, "share": "shared"})
    msg = Message(
        RecordDict({"arrays": arrays, "config": config}),
        dst_node_id=0,
        message_type=MessageType.TRAIN,
    )
    return train_handler(msg, ctx)


@pytest.mark.parametrize("method", ["fp16", "int8"])
def test_compressed_reply_decodes_to_the_trained_model_minus_what_feedback_keeps(
    site_factory: Callable[..., Path], method: str
) -> None:
    site = site_factory(n_cases=12)
    cfg = RunConfig().replace(
        {
            "data.roi-size": 32,
            "data.context-mm": 0.0,
            "train.local-epochs": 1,
            "federation.compression": method,
        }
    )
    received = to_arrays(build_model(cfg))
    ctx = Context(
        run_id=1, node_id=0, node_config={"site-dir": str(site)}, state=RecordDict(), run_config={}
    )
    reply = _train(site, cfg, received, 1, ctx)
    assert update_problem(reply, received, method) is None
    # the uncompressed model this round would have sent (same seed: same training)
    plain, _ = site_train(open_site({"site-dir": str(site)}, cfg), received, cfg, 1)
    residual = ctx.state.array_records["hepafed.residual.global"]
    arrays = reply.content.array_records
    codes = arrays["arrays"][PACKED].numpy()
    assert codes.dtype == ("float16" if method == "fp16" else "int8")
    scales = arrays["scales"][PACKED].numpy() if method == "int8" else None
    shapes = [(k, tuple(v.shape)) for k, v in received.items()]
    for key, sent in unpack(codes, scales, shapes, method):
        update = plain[key].numpy() - received[key].numpy()
        # what was sent + what the site keeps = the true update (first round: no carry)
        np.testing.assert_allclose(sent + residual[key].numpy(), update, rtol=0, atol=1e-6)
    # round 2 adds the carried residual before encoding
    reply2 = _train(site, cfg, received, 2, ctx)
    assert update_problem(reply2, received, method) is None
    assert ctx.state.array_records["hepafed.residual.global"] is not residual


def test_uncompressed_reply_is_the_float32_model(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=12)
    cfg = RunConfig().replace(
        {"data.roi-size": 32, "data.context-mm": 0.0, "train.local-epochs": 1}
    )
    received = to_arrays(build_model(cfg))
    ctx = Context(
        run_id=1, node_id=0, node_config={"site-dir": str(site)}, state=RecordDict(), run_config={}
    )
    reply = _train(site, cfg, received, 1, ctx)
    assert "scales" not in reply.content and update_problem(reply, received) is None
    assert "hepafed.residual.global" not in ctx.state


def test_a_deployed_site_keeps_its_residual_in_its_state_folder(
    site_factory: Callable[..., Path], tmp_path: Path
) -> None:
    """Not in Context.state (Flower sends the whole Context with every task): in a file
    under policy.state-dir, written whole, recalled the next round; the reply is the same
    as a site keeping it in Context.state (the simulated path)."""
    site = site_factory(n_cases=12)
    cfg = RunConfig().replace(
        {"data.roi-size": 32, "data.context-mm": 0.0, "train.local-epochs": 1,
         "federation.compression": "int8"}
    )  # fmt: skip
    received = to_arrays(build_model(cfg))
    state = tmp_path / "state"
    node_config: dict[str, bool | float | int | str] = {
        "site-dir": str(site), "policy.state-dir": str(state)}  # fmt: skip
    deployed = Context(run_id=7, node_id=0, state=RecordDict(), run_config={},
                       node_config=node_config)  # fmt: skip
    in_memory = Context(run_id=7, node_id=0, node_config={"site-dir": str(site)},
                        state=RecordDict(), run_config={})  # fmt: skip
    for rnd in (1, 2):
        on_disk = _train(site, cfg, received, rnd, deployed)
        kept = _train(site, cfg, received, rnd, in_memory)
        assert not any(k.startswith("hepafed.residual") for k in deployed.state)
        files = list((state / "residuals" / "run-7").iterdir())
        assert len(files) == 1 and files[0].suffix == ".npz"  # no temporary file left
        assert files[0].stat().st_mode & 0o777 == 0o600  # the site's alone
        assert (state / "residuals").stat().st_mode & 0o777 == 0o700
        recalled = ResidualFiles(state, 7).recall("global")
        assert recalled is not None
        residual = in_memory.state.array_records["hepafed.residual.global"]
        assert set(recalled) == set(residual)
        for key, values in recalled.items():
            np.testing.assert_array_equal(values, residual[key].numpy())
        for record in ("arrays", "scales"):  # round 2 added the recalled residual alike
            a, b = on_disk.content[record], kept.content[record]
            assert isinstance(a, ArrayRecord) and isinstance(b, ArrayRecord)
            np.testing.assert_array_equal(a[PACKED].numpy(), b[PACKED].numpy())


def test_old_runs_residuals_are_pruned_and_current_ones_kept(tmp_path: Path) -> None:
    now = time.time()
    old, recent = ResidualFiles(tmp_path, 1), ResidualFiles(tmp_path, 2)
    old.keep("global", {"w": np.ones(3, np.float32)})
    recent.keep("global", {"w": np.zeros(3, np.float32)})
    stale = now - RESIDUAL_KEEP_S - 60
    os.utime(old.path("global"), (stale, stale))
    current = ResidualFiles(tmp_path, 3)
    current.keep("a model id with / and spaces", {"allow_pickle": np.arange(2.0)})
    assert not old.folder.exists() and recent.folder.exists()
    assert recent.recall("global") is not None and old.recall("global") is None
    got = current.recall("a model id with / and spaces")
    assert got is not None and list(got) == ["allow_pickle"]
    np.testing.assert_array_equal(got["allow_pickle"], [0.0, 1.0])
    assert current.recall("never kept") is None
