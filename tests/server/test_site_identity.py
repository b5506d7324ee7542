"""A site name belongs to one key: the site-query answer is signed and checked.

The real site-side mod (``client.trust.trust_mod``) answers a real query; the
server's check (``server.site_identity.identity_problem``) accepts the genuine
site and refuses a node that claims another site's name with its own key, an
answer replayed to another query or from another node, and an altered answer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from client.trust import trust_mod
from common.config import RunConfig
from common.keys import ConfigKey, SiteKey
from common.signing import Keyring, create_key_pair
from server.site_identity import identity_problem, identity_required, new_challenge
from server.trust import ServerTrust

NODE = 4242
pytestmark = pytest.mark.usefixtures("flower_task")


def _answer(
    tmp_path: Path, cfg: RunConfig, challenge: str, site: str, key: Path, node: int = NODE
) -> ConfigRecord:
    """What a site's ClientApp (behind the real trust mod) answers to the site query."""
    config = ConfigRecord({**cfg.to_flat(), ConfigKey.SITE_CHALLENGE.value: challenge})
    msg = Message(RecordDict({"config": config}), dst_node_id=node,
                  message_type=MessageType.QUERY)  # fmt: skip
    msg = ServerTrust(cfg, tmp_path, "run").sign_instruction(msg, 1)  # the server sends it
    ctx = Context(run_id=1, node_id=node, node_config={"signing-key": str(key)},
                  state=RecordDict(), run_config={})  # fmt: skip

    def handler(m: Message, _: Context) -> Message:
        info = ConfigRecord(
            {
                SiteKey.NAME.value: site,
                SiteKey.N_TRAIN.value: 30,
                SiteKey.N_TEST.value: 10,
                SiteKey.MANIFEST_SHA256.value: "ab" * 32,
            }
        )
        return Message(RecordDict({"site": info}), reply_to=m)

    reply = trust_mod(msg, ctx, handler)
    record = reply.content["site"]
    assert isinstance(record, ConfigRecord)
    return ConfigRecord(dict(record))


@pytest.fixture
def deployment(tmp_path: Path) -> tuple[RunConfig, dict[str, Path]]:
    """A deployed run's keyring with site-a and site-b registered, and each site's own key."""
    keyring = Keyring(tmp_path / "keyring")
    keyring.ensure_server_key()
    private = {}
    for site in ("site-a", "site-b", "intruder"):
        private[site] = tmp_path / site / "site_key"
        public = keyring.site_public(site) if site != "intruder" else tmp_path / "intruder.pub"
        create_key_pair(private[site], public, site)
    cfg = RunConfig().replace({"trust.keys-dir": str(keyring.folder)})
    return cfg, private


def test_the_genuine_site_is_accepted(tmp_path: Path, deployment: Any) -> None:
    cfg, keys = deployment
    challenge = new_challenge()
    answer = _answer(tmp_path, cfg, challenge, "site-a", keys["site-a"])
    assert answer[SiteKey.SIGNATURE.value]
    assert identity_problem(cfg, challenge, NODE, answer) is None


CASES: list[tuple[str, Callable[[Path, RunConfig, dict[str, Path], str], Any], str]] = [
    # a node with a key of its own (the intruder's, or site-b's) claims site-a's name
    ("impersonation-other-key",
     lambda t, c, k, ch: (ch, NODE, _answer(t, c, ch, "site-a", k["intruder"])),
     "not signed by site-a's registered key"),
    ("impersonation-registered-key",
     lambda t, c, k, ch: (ch, NODE, _answer(t, c, ch, "site-a", k["site-b"])),
     "not signed by site-a's registered key"),
    # site-a's genuine answer to an earlier query, replayed to this one
    ("identity-replayed-query",
     lambda t, c, k, ch: (ch, NODE, _answer(t, c, new_challenge(), "site-a", k["site-a"])),
     "a replayed answer"),
    # site-a's genuine answer, replayed by another node
    ("identity-replayed-node",
     lambda t, c, k, ch: (ch, NODE + 1, _answer(t, c, ch, "site-a", k["site-a"])),
     "a replayed answer"),
    # the counts changed after signing (more weight in every mean)
    ("identity-altered",
     lambda t, c, k, ch: (ch, NODE, ConfigRecord({
         **_answer(t, c, ch, "site-a", k["site-a"]), SiteKey.N_TRAIN.value: 3000})),
     "an altered reply"),
    ("identity-unsigned",
     lambda t, c, k, ch: (ch, NODE, ConfigRecord({SiteKey.NAME.value: "site-a"})),
     "without signing its identity"),
    # site-b's own key, answering under a name dressed up as a path (a second identity)
    ("identity-path-name",
     lambda t, c, k, ch: (ch, NODE, _answer(t, c, ch, "../site-b", k["site-b"])),
     "site name '../site-b'"),
    ("identity-unregistered-name",
     lambda t, c, k, ch: (ch, NODE, _answer(t, c, ch, "site-z", k["intruder"])),
     "no key is registered for site-z"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "make", "expected"), CASES, ids=[c[0] for c in CASES])
def test_an_answer_that_cannot_speak_for_the_site_is_refused(
    tmp_path: Path, deployment: Any, case: str, make: Any, expected: str
) -> None:
    cfg, keys = deployment
    challenge = new_challenge()
    asked, node, answer = make(tmp_path, cfg, keys, challenge)
    problem = identity_problem(cfg, asked, node, answer)
    assert problem is not None and expected in problem, problem


def test_simulation_and_unsigned_runs_do_not_require_it(tmp_path: Path) -> None:
    assert not identity_required(RunConfig())  # simulated sites: keys made by the server
    signed_off = RunConfig().replace({"trust.keys-dir": str(tmp_path), "trust.sign-updates": False})
    assert not identity_required(signed_off)
    assert identity_problem(RunConfig(), "c", 1, ConfigRecord({"name": "x"})) is None


def test_challenges_are_fresh() -> None:
    seen = {new_challenge() for _ in range(1000)}
    assert len(seen) == 1000 and all(len(c) == 32 for c in seen)


def test_docs_list_every_identity_case() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "trust.md").read_text()
    missing = [c[0] for c in CASES if f"`{c[0]}`" not in text]
    assert not missing, f"docs/trust.md does not list {missing}"
