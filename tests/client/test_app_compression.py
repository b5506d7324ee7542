"""The ClientApp's train reply under update compression, with error feedback across rounds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from client.app import train as train_handler
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
