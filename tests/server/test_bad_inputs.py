"""Bad updates and bad models: what each returns, case by case.

A real site-side signing mod (``client.trust.trust_mod``) signs a real update of a
small model with the site's key; each case then damages one thing (before or
after signing, as an attacker or a broken site would) and the server's screen
(``server.validation.screen_update`` and ``norm_outliers``) or the site's model
check must name the problem. ``CASES`` is the table in docs/trust.md: a test
keeps the two in step.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
    UserConfig,
)

from client.trust import TrustError, check_model, trust_mod
from common.config import RunConfig
from common.keys import ConfigKey, RecordKey, SiteKey
from common.signing import Keyring, create_key_pair
from server.round_screen import reply_digest
from server.trust import ServerTrust
from server.validation import norm_outliers, screen_update

pytestmark = pytest.mark.usefixtures("flower_task")

ROOT = Path(__file__).resolve().parents[2]
RUN_ID = "run-0001"
SITE = "site-a"
ROUND = 3
DECLARED = 5000  # the training cases site-a declared when it joined (every case screens so)


def _global() -> ArrayRecord:
    rng = np.random.default_rng(0)
    return ArrayRecord(
        {
            "conv.weight": Array(rng.normal(size=(4, 3)).astype(np.float32)),
            "conv.bias": Array(np.zeros(4, np.float32)),
        }
    )


FLOWER_RUN, NODE = 1, 1  # the Flower run and the site's node the messages are signed for


@dataclass
class Setup:
    cfg: RunConfig
    trust: ServerTrust
    sent: ArrayRecord
    run_dir: Path

    def message(self, rnd: int = ROUND, model: str = "global", run_id: str = RUN_ID) -> Message:
        """The train message the server sends: model, config, the server's signature."""
        values: dict[str, Any] = {**self.cfg.to_flat(), ConfigKey.MODEL.value: model}
        values[ConfigKey.ROUND.value] = rnd
        trust = self.trust
        if run_id != trust.run_id:  # a message signed for another run
            trust = ServerTrust(self.cfg, self.run_dir, run_id)
        values.update(trust.model_entries(rnd, model, self.sent))
        content = RecordDict({RecordKey.ARRAYS: self.sent, RecordKey.CONFIG: ConfigRecord(values)})
        message = Message(content, dst_node_id=NODE, message_type=MessageType.TRAIN)
        return trust.sign_instruction(message, FLOWER_RUN)

    def reply(
        self,
        msg: Message | None = None,
        before: Callable[[RecordDict], object] | None = None,
        site: str = SITE,
        n: float = 20,
        node_config: dict[str, Any] | None = None,
    ) -> Message:
        """The site's signed reply to ``msg``; ``before`` alters it before it is signed (what
        it returns is ignored)."""
        msg = msg or self.message()

        def handler(m: Message, _: Context) -> Message:
            received = cast(ArrayRecord, m.content[RecordKey.ARRAYS])
            trained = {k: v.numpy() + 0.01 for k, v in received.items()}
            content = RecordDict(
                {
                    RecordKey.ARRAYS: ArrayRecord({k: Array(v) for k, v in trained.items()}),
                    RecordKey.METRICS: MetricRecord({"num-examples": n, "train-loss": 0.5}),
                    RecordKey.SITE: ConfigRecord({SiteKey.NAME.value: site}),
                }
            )
            if before is not None:
                before(content)
            return Message(content, reply_to=m)

        ctx = Context(
            run_id=FLOWER_RUN, node_id=NODE, node_config=node_config or {}, state=RecordDict(),
            run_config={},
        )  # fmt: skip
        return trust_mod(msg, ctx, handler)

    def unregistered(self) -> Message:
        """site-z signs with a key pair of its own that the server never registered."""
        key = self.run_dir / "site-z" / "site_key"
        create_key_pair(key, key.with_suffix(".pub"))
        return self.reply(site="site-z", node_config={"signing-key": str(key)})

    def screen(
        self, reply: Message, site: str = SITE, rnd: int = ROUND, declared: int | None = None
    ) -> str | None:
        """What the round screen says of ``reply`` (digested as ``RoundScreen`` does)."""
        digest = "" if reply.has_error() else reply_digest(reply)
        return screen_update(
            reply, self.sent, self.cfg, self.trust, site, rnd, "global", digest, declared
        )


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    cfg = RunConfig().replace({"output.run-dir": str(tmp_path / "run")})
    trust = ServerTrust(cfg, tmp_path / "run", RUN_ID)
    trust.prepare_sites([SITE, "site-b"])
    return Setup(cfg, trust, _global(), tmp_path / "run")


def _arrays(content: RecordDict) -> ArrayRecord:
    return cast(ArrayRecord, content[RecordKey.ARRAYS])


def _set(content: RecordDict, key: str, value: np.ndarray) -> None:
    _arrays(content)[key] = Array(value)


def _after(reply: Message, change: Callable[[RecordDict], object]) -> Message:
    change(reply.content)
    return reply


def _metrics(**values: Any) -> Callable[[RecordDict], None]:
    """Replace the reply's metrics with num-examples 20, train-loss 0.5 and ``values``."""

    def change(content: RecordDict) -> None:
        metrics: dict[str, Any] = {"num-examples": 20, "train-loss": 0.5}
        metrics.update({k.replace("_", "-"): v for k, v in values.items()})
        content[RecordKey.METRICS] = MetricRecord(metrics)

    return change


def _garbage(content: RecordDict) -> None:
    """A tensor whose metadata match the global model but whose bytes are not .npy."""
    _arrays(content)["conv.bias"] = Array(
        dtype="float32", shape=(4,), stype="numpy.ndarray", data=b"not an npy file"
    )


# ---- the table: (case id, what, how the reply is made, what the server says) ---------------

Make = Callable[[Setup], Message]

CASES: list[tuple[str, str, Make, str]] = [
    ("signed-ok", "a correct signed update (control)", lambda s: s.reply(), ""),
    (
        "unsigned",
        "update without statement and signature",
        lambda s: _after(
            s.reply(), lambda c: cast(ConfigRecord, c[RecordKey.SITE]).pop(SiteKey.SIGNATURE.value)
        ),
        "signature: unsigned",
    ),
    (
        "tampered-weights",
        "a weight changed after signing (in transit)",
        lambda s: _after(s.reply(), lambda c: _set(c, "conv.bias", np.full(4, 9, np.float32))),
        "signature: the update was altered after signing",
    ),
    (
        "tampered-count",
        "num-examples inflated after signing (more weight in the mean)",
        lambda s: _after(
            s.reply(),
            lambda c: c.__setitem__(
                RecordKey.METRICS, MetricRecord({"num-examples": 2000.0, "train-loss": 0.5})
            ),
        ),
        "signature: the update was altered after signing",
    ),
    (
        "bad-signature",
        "signature bytes corrupted",
        lambda s: _after(
            s.reply(),
            lambda c: cast(ConfigRecord, c[RecordKey.SITE]).__setitem__(
                SiteKey.SIGNATURE.value, "00" * 96
            ),
        ),
        "signature: does not verify with site-a's registered key",
    ),
    (
        "other-site-key",
        "site-b signs its update as itself but the message comes from site-a's node",
        lambda s: s.reply(site="site-b"),
        "signature: signed as another site",
    ),
    (
        "replay-old-round",
        "a genuine update of round 2 replayed in round 3",
        lambda s: s.reply(s.message(rnd=ROUND - 1)),
        "signature: replayed from another run, round or model",
    ),
    (
        "replay-other-run",
        "a genuine update from another run",
        lambda s: s.reply(s.message(run_id="run-0000")),
        "signature: replayed from another run, round or model",
    ),
    (
        "replay-other-model",
        "a genuine update for another model of the same run (a LOSO fold)",
        lambda s: s.reply(s.message(model="without-site-b")),
        "signature: replayed from another run, round or model",
    ),
    (
        "unregistered-site",
        "a site with no registered key",
        lambda s: s.unregistered(),
        "signature: no registered key for site-z",
    ),
    (
        "nan",
        "a NaN in the weights (signed by the site)",
        lambda s: s.reply(
            before=lambda c: _set(c, "conv.bias", np.array([0, np.nan, 0, 0], np.float32))
        ),
        "tensor 'conv.bias' contains NaN or Inf",
    ),
    (
        "inf",
        "an infinity in the weights",
        lambda s: s.reply(
            before=lambda c: _set(c, "conv.weight", np.full((4, 3), np.inf, np.float32))
        ),
        "tensor 'conv.weight' contains NaN or Inf",
    ),
    (
        "wrong-shape",
        "a tensor of the wrong shape",
        lambda s: s.reply(before=lambda c: _set(c, "conv.bias", np.zeros(5, np.float32))),
        "tensor 'conv.bias' is float32[5], expected float32[4]",
    ),
    (
        "wrong-dtype",
        "float64 instead of float32",
        lambda s: s.reply(before=lambda c: _set(c, "conv.bias", np.zeros(4, np.float64))),
        "tensor 'conv.bias' is float64[4], expected float32[4]",
    ),
    (
        "missing-tensor",
        "a tensor left out",
        lambda s: s.reply(before=lambda c: _arrays(c).pop("conv.bias")),
        "tensor names differ from the global model (missing ['conv.bias']",
    ),
    (
        "extra-tensor",
        "an unknown tensor added",
        lambda s: s.reply(before=lambda c: _set(c, "extra", np.zeros(2, np.float32))),
        "extra ['extra']",
    ),
    (
        "zero-examples",
        "num-examples = 0",
        lambda s: s.reply(n=0),
        "num-examples = 0: must be a positive number",
    ),
    (
        "negative-examples",
        "num-examples < 0",
        lambda s: s.reply(n=-5),
        "num-examples = -5: must be a positive number",
    ),
    (
        "no-metrics",
        "the MetricRecord left out",
        lambda s: s.reply(before=lambda c: c.pop(RecordKey.METRICS)),
        "expected one MetricRecord, got 0",
    ),
    (
        "no-weights",
        "the weights record left out",
        lambda s: s.reply(before=lambda c: c.pop(RecordKey.ARRAYS)),
        "expected the ArrayRecord 'arrays'",
    ),
    (
        "site-error",
        "the site's job failed (e.g. a corrupt case under data.on-bad-case = fail)",
        lambda s: Message(Error(code=0, reason="BadCaseError: case-07 ..."), reply_to=s.message()),
        "site reported an error: BadCaseError: case-07",
    ),
    (
        "oversized",
        "a reply larger than trust.max-update-mb",
        lambda s: s.reply(before=lambda c: _set(c, "conv.weight", np.zeros((4, 3), np.float32))),
        "over trust.max-update-mb",
    ),
    (
        "metric-nan",
        "a NaN training loss (after signing: a site cannot sign NaN; crashed the digest)",
        lambda s: _after(s.reply(), _metrics(train_loss=float("nan"))),
        "metric 'train-loss' = nan: must be finite (no NaN or infinity)",
    ),
    (
        "metric-inf",
        "num-examples = +infinity (all the weight of the mean)",
        lambda s: _after(s.reply(), _metrics(num_examples=float("inf"))),
        "metric 'num-examples' = inf: must be finite",
    ),
    (
        "metric-nan-list",
        "a NaN inside a list-valued metric",
        lambda s: _after(s.reply(), _metrics(curve=[0.5, float("nan")])),
        "metric 'curve'[1] = nan: must be finite",
    ),
    (
        "metric-huge-int",
        "an integer metric outside int64",
        lambda s: _after(s.reply(), _metrics(train_loss=2**70)),
        "metric 'train-loss' = 1180591620717411303424: out of the int64 range",
    ),
    (
        "examples-fractional",
        "num-examples = 20.5 (not a count of cases)",
        lambda s: s.reply(n=20.5),
        "num-examples = 20.5: must be a whole number",
    ),
    (
        "examples-absurd",
        "a signed num-examples = 1e12 from a site with no declared count",
        lambda s: s.reply(n=1e12),
        "num-examples = 1000000000000.0: more than the 1e+07 cases a site can hold",
    ),
    (
        "examples-over-declared",
        f"a signed num-examples = 6000 from a site that declared n_train = {DECLARED}",
        lambda s: s.reply(n=6000),
        f"num-examples = 6000: more than the {DECLARED} training case(s) the site declared",
    ),
    (
        "unreadable-tensor",
        "a tensor whose bytes are not .npy (metadata right)",
        lambda s: s.reply(before=_garbage),
        "unreadable update: ValueError",
    ),
]
OVERSIZE_MB = 1e-5  # the "oversized" case runs with this limit (the reply is ~0.0003 MiB)


@pytest.mark.parametrize(("case", "what", "make", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_update_is_rejected_with_its_reason(
    setup: Setup, case: str, what: str, make: Make, expected: str
) -> None:
    if case == "oversized":
        setup.cfg = setup.cfg.replace({"trust.max-update-mb": OVERSIZE_MB})
    site = "site-z" if case == "unregistered-site" else SITE  # the name its node gave
    declared = None if case == "examples-absurd" else DECLARED
    problem = setup.screen(make(setup), site=site, declared=declared)
    if not expected:
        assert problem is None, what
    else:
        assert problem is not None and expected in problem, (what, problem)


def test_update_signed_with_another_key_under_the_right_name(setup: Setup, tmp_path: Path) -> None:
    """A stolen name: a key pair made elsewhere signs as site-a (statement all correct)."""
    rogue = tmp_path / "rogue"
    create_key_pair(rogue / "site_key", rogue / "site_key.pub")
    msg = setup.message()

    def handler(m: Message, _: Context) -> Message:
        content = RecordDict(
            {
                RecordKey.ARRAYS: m.content[RecordKey.ARRAYS],
                RecordKey.METRICS: MetricRecord({"num-examples": 10}),
                RecordKey.SITE: ConfigRecord({SiteKey.NAME.value: SITE}),
            }
        )
        return Message(content, reply_to=m)

    ctx = Context(
        run_id=1,
        node_id=1,
        node_config={"signing-key": str(rogue / "site_key")},
        state=RecordDict(),
        run_config={},
    )
    problem = setup.screen(trust_mod(msg, ctx, handler))
    assert problem == "signature: does not verify with site-a's registered key"


def test_norm_outliers_x100_and_not_an_honest_large_site() -> None:
    honest = {"a": 1.0, "b": 1.1, "c": 1.2, "d": 2.5}  # d trains on more data: larger, honest
    assert norm_outliers(honest, 3.5, 3.0) == {}
    poisoned = {**honest, "e": 110.0}  # x100
    out = norm_outliers(poisoned, 3.5, 3.0)
    assert set(out) == {"e"} and "robust z" in out["e"] and "x the median" in out["e"]
    # Iglewicz & Hoaglin's modified z by hand: median 1.2, |x - 1.2| = 0.2, 0.1, 0, 1.3,
    # 108.8, so MAD = 0.2
    z = 0.6745 * (110.0 - 1.2) / 0.2
    assert f"robust z = {z:.1f}" in out["e"]
    assert norm_outliers({"a": 1.0, "b": 100.0}, 3.5, 3.0) == {}  # two sites: no robust z
    assert norm_outliers(poisoned, 0.0, 3.0) == {}  # off
    assert set(norm_outliers({"a": 1.0, "b": 1.0, "c": float("nan")}, 3.5, 3.0)) == {"c"}


# ---- the site's side: the model it receives ---------------------------------------------

MODEL_CASES: list[tuple[str, str, Callable[[Setup, Message], object], str]] = [
    ("model-ok", "a signed model (control)", lambda s, m: None, ""),
    (
        "model-unsigned",
        "the model arrives without the server's signature",
        lambda s, m: cast(ConfigRecord, m.content[RecordKey.CONFIG]).pop(
            ConfigKey.MODEL_SIGNATURE.value
        ),
        "the model arrived unsigned",
    ),
    (
        "model-tampered",
        "a weight of the global model changed in transit",
        lambda s, m: cast(ArrayRecord, m.content[RecordKey.ARRAYS]).__setitem__(
            "conv.bias", Array(np.ones(4, np.float32))
        ),
        "the model's signature does not verify",
    ),
    (
        "model-round-changed",
        "the round number changed in transit (a replayed model)",
        lambda s, m: cast(ConfigRecord, m.content[RecordKey.CONFIG]).__setitem__(
            ConfigKey.ROUND.value, ROUND + 1
        ),
        "the model's signature does not verify",
    ),
]


@pytest.mark.parametrize(
    ("case", "what", "damage", "expected"), MODEL_CASES, ids=[c[0] for c in MODEL_CASES]
)
def test_site_refuses_a_model_the_server_did_not_sign(
    setup: Setup, case: str, what: str, damage: Callable[[Setup, Message], object], expected: str
) -> None:
    msg = setup.message()
    msg.content[RecordKey.ARRAYS] = ArrayRecord(dict(setup.sent.items()))  # a copy to damage
    damage(setup, msg)
    if not expected:
        assert check_model(msg, {}) == setup.trust.model_hash(setup.sent)
    else:
        with pytest.raises(TrustError, match=re.escape(expected)):
            check_model(msg, {})


def _config_set(key: str, value: Any) -> Callable[[Message], None]:
    def change(msg: Message) -> None:
        config = cast(ConfigRecord, msg.content[RecordKey.CONFIG])
        if value is None:
            config.pop(key)
        else:
            config[key] = value

    return change


# (case, what, change to the message, the node and Flower run the site sees, expected)
INSTRUCTION_CASES: list[tuple[str, str, Callable[[Message], None], int, int, str]] = [
    ("instruction-other-node",
     "site-a passes its own signed train message on to another node (Flower lets a node "
     "push a message to any node)",
     lambda m: None, NODE + 1, FLOWER_RUN,
     "not signed by the server for this node, run and content"),
    ("instruction-config-changed",
     "the message's config changed after the server signed it (more local epochs)",
     _config_set("train.local-epochs", 500), NODE, FLOWER_RUN,
     "not signed by the server for this node, run and content"),
    ("instruction-other-run",
     "a message the server signed in another Flower run, replayed",
     lambda m: None, NODE, FLOWER_RUN + 1,
     "not signed by the server for this node, run and content"),
    ("instruction-unsigned",
     "a message without the server's instruction signature",
     _config_set(ConfigKey.INSTRUCTION_SIGNATURE.value, None), NODE, FLOWER_RUN,
     "arrived without the server's signature"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "what", "change", "node", "run", "expected"),
    INSTRUCTION_CASES,
    ids=[c[0] for c in INSTRUCTION_CASES],
)
def test_site_refuses_an_instruction_the_server_did_not_sign_for_it(
    setup: Setup,
    case: str,
    what: str,
    change: Callable[[Message], None],
    node: int,
    run: int,
    expected: str,
) -> None:
    from client.trust import check_instruction

    def context(node: int, run: int) -> Context:
        return Context(run_id=run, node_id=node, node_config={}, state=RecordDict(),
                       run_config={})  # fmt: skip

    genuine = setup.message()
    model_hash = check_model(genuine, {})
    check_instruction(genuine, context(NODE, FLOWER_RUN), {}, model_hash)  # control
    msg = setup.message()
    change(msg)
    with pytest.raises(TrustError, match=re.escape(expected)):
        check_instruction(msg, context(node, run), {}, model_hash)


def test_site_refuses_a_model_signed_by_another_server(setup: Setup, tmp_path: Path) -> None:
    other = Keyring(tmp_path / "other")
    other.ensure_server_key()
    with pytest.raises(TrustError, match="does not verify with the server key"):
        check_model(setup.message(), {"server-public-key": str(other.server_public)})


def test_docs_table_lists_every_case() -> None:
    """docs/trust.md's table of bad inputs names every case tested here."""
    text = (ROOT / "docs" / "trust.md").read_text()
    ids = [c[0] for c in CASES] + [c[0] for c in MODEL_CASES] + [c[0] for c in INSTRUCTION_CASES]
    missing = [i for i in ids if f"`{i}`" not in text]
    assert not missing, f"docs/trust.md does not list {missing}"
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) >= 20 and len({r.split("|")[1] for r in rows}) == len(rows)


def test_json_is_what_the_site_signed(setup: Setup) -> None:
    """The statement a site sends is the canonical JSON it signed, with this run's fields."""
    reply = setup.reply()
    statement = json.loads(str(reply.content[RecordKey.SITE][SiteKey.STATEMENT]))
    assert statement["run"] == RUN_ID and statement["round"] == ROUND
    assert statement["site"] == SITE and statement["model"] == "global"
    assert statement["global"] == setup.trust.model_hash(setup.sent)


def test_report_edited_after_the_run_is_caught(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """``report-edited``: hepafed audit verify compares the report files with the trail's
    ``report`` entry and the server's signature."""
    from common.cli import main
    from server.audit import AuditTrail
    from server.trust import sign_report

    run = setup.run_dir
    setup.trust.publish_key(run)
    trail = AuditTrail(run, sign=setup.trust.signer())
    trail.append("config", {"run_id": RUN_ID})
    (run / "report.json").write_text('{"sites": []}')
    (run / "report.html").write_text("<html></html>")
    sign_report(setup.trust, trail, run)
    assert main(["audit", "verify", str(run)]) == 0
    (run / "report.json").write_text('{"sites": [{"auc": 0.99}]}')
    assert main(["audit", "verify", str(run)]) == 1
    out = capsys.readouterr().out
    assert "report.json: changed since the audit trail recorded its hash" in out
    assert "report.json was changed after the server signed it" in out


def test_deployed_site_imports_only_hooks_it_allowed(setup: Setup) -> None:
    """``hook-not-allowed``: a run naming hook code by import path is refused by a deployed
    site (``site-dir`` in its node config) unless its node config allows that hook, before
    anything imports it (``client.policy.policy_mod``, the first mod that reads the message)."""
    from client.app import OUTER_MODS, redaction_mod
    from client.policy import policy_mod
    from client.trust import trust_mod
    from common.packing import packing_mod

    # it runs before trust_mod and the ClientApp; only the unpacking of a packed message
    # (JSON and bytes, no import) and the redaction of error replies wrap it
    assert OUTER_MODS[:4] == [packing_mod, redaction_mod, policy_mod, trust_mod]
    deployed: UserConfig = {"site-dir": "/srv/data"}

    def reason(hooks: str, node_config: UserConfig) -> str | None:
        msg = setup.message()
        cast(ConfigRecord, msg.content[RecordKey.CONFIG])["hooks.use"] = hooks
        ctx = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(),
                      run_config={})  # fmt: skip
        reply = policy_mod(msg, ctx, lambda m, c: Message(RecordDict(), reply_to=m))
        return reply.error.reason if reply.has_error() else None

    sample = "tests.common.hooks.test_registry_compose:Shift"  # a real hook class
    refused = reason(f"fedbn,{sample}", deployed)
    assert refused is not None and f"import hook code ['{sample}']" in refused
    assert "policy.allowed-hooks = ''" in refused
    assert "os:system" in str(reason("os:system", deployed))
    assert reason(f"fedbn,{sample}", {**deployed, "allowed-hooks": sample}) is None
    assert reason("fedbn,fedprox", deployed) is None  # built-ins: fine
    assert reason(sample, {"partition-id": 0}) is None  # a simulated site runs the user's code


def test_model_hash_is_never_a_stale_one_of_a_freed_model(setup: Setup) -> None:
    """Each new model object gets its own hash, even at a freed one's address (a cache keyed
    by ``id()`` signed stale hashes, and sites refused the model)."""
    from common.signing import arrays_hash

    for i in range(50):
        record = ArrayRecord({"w": Array(np.full(4, float(i), np.float32))})
        assert setup.trust.model_hash(record) == arrays_hash(record)
        del record


def test_a_hashed_model_is_not_kept_alive_by_its_hash(setup: Setup) -> None:
    """The hash cache holds models weakly: once the run lets a model go, its memory goes
    (a 110M-parameter model is 442 MB, and the cache remembers four)."""
    import gc
    import weakref

    record = ArrayRecord({"w": Array(np.full(4, 1.0, np.float32))})
    first = setup.trust.model_hash(record)
    assert setup.trust.model_hash(record) == first  # still remembered while alive
    gone = weakref.ref(record)
    del record
    gc.collect()
    assert gone() is None


def test_a_deployed_site_never_takes_the_server_key_from_the_message(
    setup: Setup, tmp_path: Path
) -> None:
    """``server-key-from-message``: a message signed by another key that names that key's
    keyring in its run config (trust.keys-dir) is refused at a deployed site; the key comes
    from the site's node config only."""
    other = Keyring(tmp_path / "other")
    other.ensure_server_key()
    cfg = setup.cfg.replace({"trust.keys-dir": str(other.folder)})
    forged = Setup(cfg, ServerTrust(cfg, setup.run_dir, RUN_ID), setup.sent, setup.run_dir)
    deployed = {"site-dir": str(tmp_path)}
    with pytest.raises(TrustError, match="takes the server's key from no message"):
        check_model(forged.message(), deployed)
    genuine = {**deployed, "server-public-key": str(setup.trust.keys_dir / "server.pub")}
    with pytest.raises(TrustError, match="does not verify with the server key"):
        check_model(forged.message(), genuine)
