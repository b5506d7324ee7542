"""The site's privacy mod (client.privacy): clipping, local noise and what the site reports."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
    UserConfig,
)

from client.app import client_app
from client.privacy import local_epsilon, privacy_mod
from common.config import RunConfig
from common.models import build_model
from common.privacy import gaussian_epsilon, running_statistics, update_norm
from common.weights import to_arrays
from server.validation import update_problem

pytestmark = pytest.mark.usefixtures("flower_task")

RECEIVED = {"conv.weight": np.full((2, 3), 0.5), "fc.bias": np.array([1.0, -1.0])}


def _record(tensors: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in tensors.items()})


def _arrays(msg: Message) -> ArrayRecord:
    return cast(ArrayRecord, msg.content["arrays"])


def _reason(reply: Message) -> str:
    assert reply.has_error()
    return str(reply.error.reason)


def _context() -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})


def _message(
    privacy: dict[str, Any],
    received: dict[str, np.ndarray] = RECEIVED,
    kind: str = MessageType.TRAIN,
    **extra: Any,
) -> Message:
    flat = RunConfig().replace({f"privacy.{k}": v for k, v in privacy.items()}).to_flat()
    config = ConfigRecord({**flat, "server-round": 1, "share": "shared", **extra})
    content = RecordDict({"arrays": _record(received), "config": config})
    return Message(content, dst_node_id=0, message_type=kind)


class Handler:
    """Stands in for the ClientApp's handlers: replies with ``received + update``."""

    def __init__(self, update: dict[str, np.ndarray]) -> None:
        self.update = update
        self.seen: list[Message] = []

    def __call__(self, msg: Message, ctx: Context) -> Message:
        self.seen.append(msg)
        received = _arrays(msg)
        weights = {k: received[k].numpy() + self.update[k] for k in self.update}
        content = RecordDict(
            {
                "arrays": _record(weights),
                "metrics": MetricRecord({"num-examples": 12, "train-loss": 0.3}),
                "site": ConfigRecord({"name": "site-a"}),
            }
        )
        return Message(content, reply_to=msg)


def _sent_update(reply: Message, received: dict[str, np.ndarray] = RECEIVED) -> dict[str, Any]:
    arrays = _arrays(reply)
    return {k: arrays[k].numpy().astype(np.float64) - received[k] for k in received}


BIG = {"conv.weight": np.full((2, 3), 2.0), "fc.bias": np.array([1.0, -3.0])}  # norm 5.83
SMALL = {"conv.weight": np.full((2, 3), 0.05), "fc.bias": np.array([0.1, 0.0])}  # norm 0.16


@pytest.mark.parametrize("mode", ["central-client-clip", "local"])
def test_a_long_update_is_clipped_to_exactly_the_clip_norm(mode: str) -> None:
    clip = 0.75
    sigma = 0.0  # local without noise: the clipping alone
    msg = _message({"mode": mode, "clip-norm": clip, "noise-multiplier": sigma})
    reply = privacy_mod(msg, _context(), Handler(BIG))
    sent = _sent_update(reply)
    assert update_norm(sent) == pytest.approx(clip, rel=1e-6)
    scale = clip / update_norm(BIG)
    for key in BIG:  # same direction
        np.testing.assert_allclose(sent[key], BIG[key] * scale, atol=1e-6)
    assert list(_arrays(reply)) == list(RECEIVED)


def test_a_short_update_leaves_the_reply_untouched() -> None:
    msg = _message({"mode": "central-client-clip", "clip-norm": 1.0})
    handler = Handler(SMALL)
    reply = privacy_mod(msg, _context(), handler)
    expected = Handler(SMALL)(_message({"mode": "central-client-clip"}), _context())
    for key in RECEIVED:  # bit for bit what the trainer produced
        assert np.array_equal(_arrays(reply)[key].numpy(), _arrays(expected)[key].numpy())
    assert dict(reply.content["metrics"]) == {"num-examples": 12, "train-loss": 0.3}


def test_local_noise_has_std_sigma_clip_and_the_site_reports_its_epsilon() -> None:
    sigma, clip, size = 1.5, 0.2, 40_000
    received = {"w": np.zeros(size)}
    ctx = _context()
    privacy = {"mode": "local", "clip-norm": clip, "noise-multiplier": sigma, "delta": 1e-6}
    draws = []
    for releases in (1, 2):
        np.random.seed(0)  # what the site's seed_everything does with the public run seed
        msg = _message(privacy, received)
        reply = privacy_mod(msg, ctx, Handler({"w": np.zeros(size)}))
        noise = _sent_update(reply, received)["w"]
        assert noise.std() == pytest.approx(sigma * clip, rel=0.03)
        assert abs(noise.mean()) < 5 * sigma * clip / math.sqrt(size)
        draws.append(noise)
        metrics = reply.content["metrics"]
        # any two datasets of the site: clipped updates up to 2C apart, noise sigma C
        assert metrics["dp-epsilon"] == pytest.approx(gaussian_epsilon(2 / sigma, 1e-6))
        assert metrics["dp-epsilon-total"] == pytest.approx(
            gaussian_epsilon(2 * math.sqrt(releases) / sigma, 1e-6)
        )
        assert metrics["dp-delta"] == 1e-6 and metrics["dp-releases"] == releases
        assert metrics["num-examples"] == 12
    assert not np.array_equal(draws[0], draws[1])  # not derived from NumPy's global seed


def test_local_budget_is_refused_before_training() -> None:
    p = RunConfig().replace({"privacy.noise-multiplier": 2.0}).privacy
    budget = (local_epsilon(p, 2) + local_epsilon(p, 3)) / 2  # two updates fit, not three
    privacy = {"mode": "local", "noise-multiplier": 2.0, "max-epsilon": budget}
    ctx = _context()
    handler = Handler(SMALL)
    for _ in range(2):
        assert not privacy_mod(_message(privacy), ctx, handler).has_error()
    reply = privacy_mod(_message(privacy), ctx, handler)
    assert len(handler.seen) == 2
    assert "privacy.max-epsilon" in _reason(reply) and "update 3" in _reason(reply)


def test_local_mode_refuses_to_send_a_whole_local_model() -> None:
    handler = Handler(SMALL)
    reply = privacy_mod(_message({"mode": "local"}, share="all"), _context(), handler)
    assert "eval.local-only" in _reason(reply) and not handler.seen


@pytest.mark.parametrize(
    ("privacy", "kind", "extra"),
    [
        ({"mode": "none"}, MessageType.TRAIN, {}),
        ({"mode": "central"}, MessageType.TRAIN, {}),  # the server clips
        ({"mode": "local"}, MessageType.EVALUATE, {}),
        ({"mode": "central-client-clip"}, MessageType.TRAIN, {"share": "all"}),
    ],
)
def test_other_modes_and_messages_pass_through(
    privacy: dict[str, Any], kind: str, extra: dict[str, Any]
) -> None:
    reply = privacy_mod(_message(privacy, kind=kind, **extra), _context(), Handler(BIG))
    assert update_norm(_sent_update(reply)) == pytest.approx(update_norm(BIG), rel=1e-6)
    assert "dp-epsilon" not in reply.content["metrics"]


def test_flowers_clipping_norm_key_never_reaches_the_handler() -> None:
    handler = Handler(BIG)
    msg = _message({"mode": "central-client-clip", "clip-norm": 0.5}, clipping_norm=0.5)
    reply = privacy_mod(msg, _context(), handler)
    assert "clipping_norm" not in handler.seen[0].content["config"]
    assert update_norm(_sent_update(reply)) == pytest.approx(0.5, rel=1e-6)
    clash = _message({"mode": "central-client-clip", "clip-norm": 0.5}, clipping_norm=2.0)
    assert privacy_mod(clash, _context(), handler).has_error()


def test_the_clientapp_with_the_mod_sends_a_clipped_valid_update(
    site_factory: Callable[..., Path],
) -> None:
    site = site_factory(n_cases=12)
    clip = 1e-3
    cfg = RunConfig().replace(
        {
            "data.roi-size": 32,
            "data.context-mm": 0.0,
            "train.local-epochs": 1,
            "privacy.mode": "central-client-clip",
            "privacy.clip-norm": clip,
            "trust.sign-updates": False,  # signing is client.trust's business, tested there
        }
    )
    model = build_model(cfg)
    received = to_arrays(model)
    # under DP the BatchNorm running statistics stay at the site: the server sends and
    # expects back the other tensors only
    kept = running_statistics(model)
    assert kept and all(k.endswith(("running_mean", "running_var")) for k in kept)
    received = ArrayRecord({k: v for k, v in received.items() if k not in kept})
    config = ConfigRecord({**cfg.to_flat(), "server-round": 1, "share": "shared"})
    msg = Message(
        RecordDict({"arrays": received, "config": config}),
        dst_node_id=0,
        message_type=MessageType.TRAIN,
    )
    # a site whose policy lets unsigned models in (the default refuses them)
    node_config: UserConfig = {"site-dir": str(site), "policy.require-signed-models": False}
    ctx = Context(run_id=1, node_id=0, node_config=node_config, state=RecordDict(), run_config={})
    reply = client_app(inner_mods=[privacy_mod])(msg, ctx)
    assert update_problem(reply, received) is None
    sent = {k: v.numpy().astype(np.float64) for k, v in _arrays(reply).items()}
    update = {k: sent[k] - received[k].numpy() for k in received}
    assert update_norm(update) == pytest.approx(clip, rel=1e-3)


# ---- the site's ledger: persistent across runs, in the site's own state folder --------------


def _deployed(site_dir: Path, state: Path | None, **policy: Any) -> Context:
    """A fresh Context (a new run) of a deployed site whose policy keeps state in ``state``."""
    node_config: dict[str, Any] = {"site-dir": str(site_dir)}
    if state is not None:
        node_config["policy.state-dir"] = str(state)
    node_config.update({f"policy.{k}": v for k, v in policy.items()})
    return Context(run_id=1, node_id=0, node_config=node_config, state=RecordDict(), run_config={})


def test_the_ledger_outlives_the_run_and_is_owner_only(tmp_path: Path) -> None:
    """Every new run starts with a fresh Context.state; the ledger file still counts."""
    state = tmp_path / "state"
    privacy = {"mode": "local", "noise-multiplier": 2.0, "delta": 1e-5}
    for run in (1, 2, 3):
        reply = privacy_mod(_message(privacy), _deployed(tmp_path, state), Handler(SMALL))
        metrics = reply.content["metrics"]
        assert metrics["dp-releases"] == run
        assert metrics["dp-epsilon-total"] == pytest.approx(
            gaussian_epsilon(2 * math.sqrt(run) / 2.0, 1e-5)
        )
    ledger = state / "dp-ledger.json"
    assert (ledger.stat().st_mode & 0o777) == 0o600 and (state.stat().st_mode & 0o777) == 0o700
    assert '"releases": 3' in ledger.read_text()


def test_releases_of_different_noise_compose_exactly(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for sigma in (1.0, 2.0):
        privacy = {"mode": "local", "noise-multiplier": sigma, "delta": 1e-5}
        reply = privacy_mod(_message(privacy), _deployed(tmp_path, state), Handler(SMALL))
    # mu^2 = (2/1)^2 + (2/2)^2 = 5
    assert reply.content["metrics"]["dp-epsilon-total"] == pytest.approx(
        gaussian_epsilon(math.sqrt(5.0), 1e-5)
    )


def test_the_sites_budget_holds_when_the_server_drops_its_own(tmp_path: Path) -> None:
    """The run sets no budget (privacy.max-epsilon = 0); the site's policy.max-epsilon binds,
    counted over the releases of earlier runs."""
    p = RunConfig().replace({"privacy.noise-multiplier": 2.0}).privacy
    site_budget = (local_epsilon(p, 2) + local_epsilon(p, 3)) / 2  # two updates fit, not three
    state = tmp_path / "state"
    privacy = {"mode": "local", "noise-multiplier": 2.0, "max-epsilon": 0.0}
    for _ in range(2):
        ctx = _deployed(tmp_path, state, **{"max-epsilon": site_budget})
        assert not privacy_mod(_message(privacy), ctx, Handler(SMALL)).has_error()
    handler = Handler(SMALL)
    ctx = _deployed(tmp_path, state, **{"max-epsilon": site_budget})
    reason = _reason(privacy_mod(_message(privacy), ctx, handler))
    assert not handler.seen
    assert "policy.max-epsilon" in reason and "update 3" in reason
    assert f"{local_epsilon(p, 3):.3f}" in reason


def test_a_deployed_site_without_a_state_folder_sends_no_local_dp_update(tmp_path: Path) -> None:
    handler = Handler(SMALL)
    reply = privacy_mod(_message({"mode": "local"}), _deployed(tmp_path, None), handler)
    assert "policy.state-dir" in _reason(reply) and not handler.seen


def test_an_unreadable_ledger_stops_releases(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "dp-ledger.json").write_text("{truncated")
    handler = Handler(SMALL)
    reply = privacy_mod(_message({"mode": "local"}), _deployed(tmp_path, state), handler)
    assert "dp-ledger.json cannot be read" in _reason(reply) and not handler.seen


def test_a_simulated_site_keeps_its_ledger_in_the_run_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    privacy = {"mode": "local", "noise-multiplier": 2.0}
    msg = _message(privacy, RECEIVED, **{"output.run-dir": str(run_dir)})
    ctx = Context(
        run_id=1, node_id=0, node_config={"partition-id": 3}, state=RecordDict(), run_config={}
    )
    assert not privacy_mod(msg, ctx, Handler(SMALL)).has_error()
    assert (run_dir / "site-state" / "node-3" / "dp-ledger.json").is_file()
