"""The site's policy (client.policy): parsed from the node config, enforced at the site."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.config import flatten_dict, parse_config_args

from client.app import client_app
from client.node import init_site_folder
from client.policy import (
    PolicyError,
    PolicyRefusal,
    SitePolicy,
    policy_mod,
    restrict_tree,
    simulated_policy,
    site_policy,
    tensor_megabytes,
)
from client.policy_file import node_config_args, read_policy
from client.site import open_site
from client.trust import models_must_be_signed
from common.config import RunConfig

# Messages are built outside a run here: every test needs Flower's task identity, not only
# those that run after one that set it
pytestmark = pytest.mark.usefixtures("flower_task")


def _deployed(site: Path | str = "/srv/site", **policy: Any) -> dict[str, Any]:
    return {"site-dir": str(site), **{f"policy.{k}": v for k, v in policy.items()}}


def _message(overrides: dict[str, Any], kind: str = MessageType.EVALUATE) -> Message:
    flat = RunConfig().replace(overrides).to_flat()
    config = ConfigRecord({**flat, "server-round": 1})
    return Message(RecordDict({"config": config}), dst_node_id=0, message_type=kind)


def _reason(reply: Message) -> str:
    """An error reply's reason (Flower types it as optional)."""
    reason = reply.error.reason
    assert reason is not None
    return reason


def _context(node_config: dict[str, Any]) -> Context:
    return Context(run_id=1, node_id=0, node_config=node_config, state=RecordDict(), run_config={})


class Recorder:
    """Stands in for the handlers: records what reached them."""

    def __init__(self) -> None:
        self.seen: list[Message] = []

    def __call__(self, msg: Message, ctx: Context) -> Message:
        self.seen.append(msg)
        return Message(RecordDict(), reply_to=msg)


# ---- parsing ------------------------------------------------------------------------------


def test_the_node_config_round_trips_and_defaults_live_in_the_dataclass() -> None:
    policy = SitePolicy(min_cell=7, max_epsilon=3.5, allowed_hooks=("a.b:C", "d.e:F"))
    flat = {"site-dir": "/x", **policy.to_node_config()}
    assert SitePolicy.from_node_config(flat) == policy
    assert SitePolicy.from_node_config({"site-dir": "/x"}) == SitePolicy()
    # the node config's top-level allowed-hooks is the policy's
    legacy = SitePolicy.from_node_config({"site-dir": "/x", "allowed-hooks": "a.b:C, d.e:F"})
    assert legacy.allowed_hooks == ("a.b:C", "d.e:F")


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("policy.min-cel", 5, "unknown node-config key 'policy.min-cel'"),
        ("policy.min-cell", "5", "expected int, got str"),
        ("policy.require-signed-models", 1, "expected bool"),
        ("policy.min-cell", 0, "policy.min-cell = 0: must be >= 1"),
        ("policy.min-privacy-mode", "strong", "must be one of 'none'"),
        ("policy.max-delta", 1.5, "policy.max-delta = 1.5: must be in (0, 1)"),
    ],
)
def test_a_malformed_policy_is_a_named_error(key: str, value: Any, words: str) -> None:
    with pytest.raises(PolicyError) as err:
        SitePolicy.from_node_config({"site-dir": "/x", key: value})
    assert words in str(err.value)


def test_site_init_writes_the_default_policy_with_the_sites_own_folders(tmp_path: Path) -> None:
    folder = init_site_folder("hospital-a", tmp_path / "a")
    flat = flatten_dict(tomllib.loads(folder.node_config.read_text()))
    policy = SitePolicy.from_node_config({**flat, "site-dir": "/data"})
    root = (tmp_path / "a").resolve()
    assert policy == SitePolicy(state_dir=str(root / "state"), cache_dir=str(root / "cache"))
    assert flat["policy.min-cell"] == 5 and flat["policy.require-signed-models"] is True


def test_the_policy_reaches_the_clientapp_through_flowers_node_config(tmp_path: Path) -> None:
    """node-config.toml -> ``--node-config`` entries -> Flower's parser -> the same policy."""
    folder = init_site_folder("hospital-a", tmp_path / "a")
    text = folder.node_config.read_text().replace("min-cell = 5", "min-cell = 8")
    folder.node_config.write_text(text.replace('allowed-hooks = ""', 'allowed-hooks = "a.b:C"'))
    policy = read_policy(folder.node_config)
    assert policy.min_cell == 8 and policy.allowed_hooks == ("a.b:C",)
    flat = parse_config_args([f"site-dir='/data' {node_config_args(policy)}"])
    assert SitePolicy.from_node_config(flat) == policy
    folder.node_config.write_text(text.replace("min-cell = 8", "min-cel = 8"))
    with pytest.raises(PolicyError, match=r"node-config.toml: unknown node-config key"):
        read_policy(folder.node_config)
    assert read_policy(tmp_path / "missing.toml") == SitePolicy()


# ---- what the server may ask --------------------------------------------------------------


def test_the_attackers_run_config_is_refused_key_by_key() -> None:
    """The review's run config: every protection it tries to switch off is named."""
    cfg = RunConfig().replace(
        {
            "trust.sign-updates": False,
            "eval.min-cases": 4,
            "eval.min-per-class": 2,
            "eval.calibration-bins": 1_000_000,
            "eval.embedding-dims": 512,
            "data.roi-size": 4096,
        }
    )
    policy = SitePolicy(min_privacy_mode="local")
    problems = policy.request_problems(cfg)
    assert problems == [
        "trust.sign-updates = false: this site accepts only models signed by the server "
        "(policy.require-signed-models = true)",
        "privacy.mode = 'none': below this site's floor policy.min-privacy-mode = 'local'",
        "eval.min-cases = 4: this site's limit is policy.min-cases = 20",
        "eval.min-per-class = 2: this site's limit is policy.min-per-class = 5",
        "eval.calibration-bins = 1000000: this site's limit is policy.max-calibration-bins = 10",
        "eval.embedding-dims = 512: this site's limit is policy.max-embedding-dims = 8",
        "data.roi-size = 4096: this site's limit is policy.max-roi-size = 128",
    ]
    with pytest.raises(PolicyRefusal, match="refused by this site's policy: trust.sign-updates"):
        policy.check_request(cfg)
    assert SitePolicy().request_problems(RunConfig()) == []  # the defaults agree


def test_weak_dp_is_refused_by_a_site_with_a_floor() -> None:
    policy = SitePolicy(min_privacy_mode="central", min_noise_multiplier=1.0, max_delta=1e-6)
    weak = RunConfig().replace({"privacy.mode": "local", "privacy.noise-multiplier": 0.5})
    assert policy.request_problems(weak) == [
        "privacy.noise-multiplier = 0.5: this site's limit is policy.min-noise-multiplier = 1.0",
        "privacy.delta = 1e-05: this site's limit is policy.max-delta = 1e-06",
    ]
    strong = weak.replace({"privacy.noise-multiplier": 1.0, "privacy.delta": 1e-7})
    assert policy.request_problems(strong) == []


def test_the_memory_estimate_and_its_limit() -> None:
    cfg = RunConfig()  # 2-D, roi 64, 3 channels + mask: 4 x 64 x 64 float32 = 64 KiB per case
    assert tensor_megabytes(cfg, 100) == pytest.approx(6.25)
    big = cfg.replace({"data.spatial-dims": 3, "data.roi-size": 128})  # 128 x 128 x 32 voxels
    assert tensor_megabytes(big, 1000) == pytest.approx(1000 * 4 * 128 * 128 * 32 * 4 / 2**20)
    SitePolicy().check_resources(big, 1000)  # 8000 MB: within the default 8192
    with pytest.raises(PolicyRefusal) as err:
        SitePolicy().check_resources(big, 1100)
    assert "needs about 8800 MB for this site's 1100 cases" in str(err.value)
    assert "policy.max-memory-mb = 8192" in str(err.value)


def test_more_tables_than_cases_over_k_are_refused() -> None:
    cfg = RunConfig().replace({"eval.thresholds": "0.3,0.5,0.7", "eval.min-cases": 10})
    SitePolicy(min_cell=5).check_split(cfg, 15)  # 15 // 5 = 3 tables
    SitePolicy(min_cell=5).check_split(cfg, 9)  # under eval.min-cases: counts only
    with pytest.raises(PolicyRefusal) as err:
        SitePolicy(min_cell=5).check_split(cfg, 14)
    assert "eval.thresholds (and a recalibration) ask for 3 tables; with 14 cases" in str(err.value)
    assert "at most 2" in str(err.value)
    # calibration after a recalibration is one more table: 3 + 1 > 15 // 5
    with pytest.raises(PolicyRefusal, match="ask for 4 tables; with 15 cases"):
        SitePolicy(min_cell=5).check_split(cfg.replace({"eval.recalibration": (0.2, 1.5)}), 15)


def test_a_steep_or_shifted_recalibration_is_refused() -> None:
    """A map steep enough to be a step at a threshold of the server's choosing would turn
    the recalibrated sums into 2x2 tables: refused beyond max-recalibration (default 5);
    0 refuses every recalibration."""
    assert (
        SitePolicy().request_problems(RunConfig().replace({"eval.recalibration": (-0.6, 1.25)}))
        == []
    )
    for recal in [(0.0, 1e9), (0.0, 0.1), (6.0, 1.0), (-5.5, 2.0)]:
        problems = SitePolicy().request_problems(RunConfig().replace({"eval.recalibration": recal}))
        assert len(problems) == 1 and "1/5 <= b <= 5 and |a| <= 5" in problems[0], recal
    never = SitePolicy(max_recalibration=0).request_problems(
        RunConfig().replace({"eval.recalibration": (0.0, 1.0)})
    )
    assert "only with none (policy.max-recalibration)" in never[0]
    with pytest.raises(PolicyError, match="max-recalibration = 0.5: 0 \\(never\\) or >= 1"):
        SitePolicy(max_recalibration=0.5)


def test_the_cache_folder_is_the_sites_not_the_servers(tmp_path: Path) -> None:
    cfg = RunConfig().replace({"data.cache-dir": "/srv/public"})
    assert SitePolicy(cache_dir=str(tmp_path)).apply(cfg).data.cache_dir == str(tmp_path)
    assert SitePolicy().apply(cfg).data.cache_dir == ""  # a site without one caches nothing


def test_the_cache_folder_is_owner_only(site_factory: Callable[..., Path], tmp_path: Path) -> None:
    site = site_factory(n_cases=6)
    cache = tmp_path / "cache"
    cfg = SitePolicy(cache_dir=str(cache)).apply(
        RunConfig().replace({"data.roi-size": 32, "data.context-mm": 0.0})
    )
    opened = open_site({"site-dir": str(site)}, cfg)
    assert (cache.stat().st_mode & 0o777) == 0o700
    opened.split("train", cfg)
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert files and all((p.stat().st_mode & 0o777) == 0o600 for p in files)
    assert all((p.stat().st_mode & 0o777) == 0o700 for p in cache.rglob("*") if p.is_dir())


def test_restrict_tree_fixes_what_a_umask_left_open(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True, mode=0o755)
    (tmp_path / "a" / "b" / "crop.pt").write_bytes(b"x")
    (tmp_path / "a" / "b" / "crop.pt").chmod(0o644)
    restrict_tree(tmp_path / "a")
    assert ((tmp_path / "a" / "b" / "crop.pt").stat().st_mode & 0o777) == 0o600
    assert ((tmp_path / "a" / "b").stat().st_mode & 0o777) == 0o700


# ---- simulation ---------------------------------------------------------------------------


def test_a_simulated_site_follows_the_run_and_keeps_state_in_the_run_folder() -> None:
    cfg = RunConfig().replace(
        {
            "trust.sign-updates": False,
            "eval.min-cases": 4,
            "eval.min-per-class": 2,
            "eval.calibration-bins": 20,
            "output.run-dir": "/runs/r1",
        }
    )
    policy = site_policy({"partition-id": 2}, cfg.to_flat())
    assert policy == simulated_policy(cfg, "2")
    assert policy.request_problems(cfg) == []
    assert policy.min_cell == 2 and not policy.require_signed_models
    assert policy.state_dir == "/runs/r1/site-state/node-2"
    assert (
        simulated_policy(RunConfig()).min_cell == 5
        and simulated_policy(RunConfig()).state_dir == ""
    )


# ---- the mods -----------------------------------------------------------------------------


def test_the_mod_refuses_before_the_handler_runs() -> None:
    handler = Recorder()
    msg = _message({"eval.calibration-bins": 1_000_000})
    reply = policy_mod(msg, _context(_deployed()), handler)
    assert reply.has_error() and not handler.seen
    assert "eval.calibration-bins = 1000000: this site's limit is policy.max-calibration-bins" in (
        _reason(reply)
    )
    # a query (who the site is) is answered; a request within the policy reaches the handler
    assert not policy_mod(_message({"eval.calibration-bins": 50}, MessageType.QUERY),
                          _context(_deployed()), handler).has_error()  # fmt: skip
    assert not policy_mod(_message({}), _context(_deployed()), handler).has_error()
    assert len(handler.seen) == 2


def test_hook_code_is_refused_before_the_run_config_imports_it() -> None:
    msg = _message({})
    config = msg.content["config"]
    assert isinstance(config, ConfigRecord)
    config["hooks.use"] = "evil.module:Payload"  # would be imported by parsing
    handler = Recorder()
    reply = policy_mod(msg, _context(_deployed()), handler)
    assert "['evil.module:Payload']" in _reason(reply) and not handler.seen
    assert "policy.allowed-hooks = ''" in _reason(reply)


def test_the_clientapp_refuses_an_unsigned_model_at_a_site_that_requires_signatures() -> None:
    msg = _message({"trust.sign-updates": False}, MessageType.TRAIN)
    reply = client_app()(msg, _context(_deployed()))
    assert reply.has_error()
    assert "trust.sign-updates = false" in _reason(reply)
    assert "policy.require-signed-models = true" in _reason(reply)
    config = ConfigRecord({"trust.sign-updates": False})
    assert models_must_be_signed(config, _deployed())
    assert not models_must_be_signed(
        config, _deployed("/srv/site", **{"require-signed-models": False})
    )
    assert not models_must_be_signed(config, {"partition-id": 0})  # simulation: the run decides


def test_a_malformed_policy_is_a_named_error_reply() -> None:
    reply = policy_mod(_message({}), _context(_deployed(**{"min-cell": "five"})), Recorder())
    assert "node-config policy.min-cell = 'five': expected int" in _reason(reply)
