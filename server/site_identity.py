"""A site name belongs to one key: the check of a node's answer to the site query.

Flower authenticates SuperNodes by their registered keys, but a node *names*
itself: the site name is whatever its node config says, and the ServerApp sees
node ids only (``Grid.get_node_ids``), not keys. So the server sends a fresh
random challenge with the site query, and a deployed site answers with a
signature, by its own key, over (challenge, its node id, its name, the reply's
fields). The server checks it against the key registered for that name
(``keyring/sites/NAME.pub``, filed by ``hepafed server register-site
--keyring``): a node that claims another site's name, replays another node's
answer or alters the reply is refused, and nothing is recorded under that name.

Simulated sites (no keyring given: ``trust.keys-dir`` empty) run in the
server's own process and get their keys from it, so there is nothing to check.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.config import RunConfig
from common.keys import SiteKey
from common.signing import (
    Keyring,
    SigningKeyError,
    identity_statement,
    record_digest,
    verify,
)


def new_challenge() -> str:
    """A fresh challenge for one site query (128 random bits, hex)."""
    return secrets.token_hex(16)


def identity_required(cfg: RunConfig) -> bool:
    """Whether site-query answers must be signed: a deployment with signing on."""
    return bool(cfg.trust.sign_updates and cfg.trust.keys_dir)


def identity_problem(
    cfg: RunConfig, challenge: str, node_id: int, info: Mapping[str, Any]
) -> str | None:
    """Why node ``node_id``'s site-query answer ``info`` cannot speak for the site it names
    (None when it can, or when the run does not require it)."""
    if not identity_required(cfg):
        return None
    name = str(info.get(SiteKey.NAME.value, ""))
    keyring = Keyring(Path(cfg.trust.keys_dir))
    try:
        key = keyring.site_key(name)
    except SigningKeyError as e:
        return f"the registered key of {name} cannot be read: {e}"
    if key is None:
        return (
            f"no key is registered for {name} ({keyring.site_public(name)}); the coordinating "
            "center registers a site with `hepafed server register-site --keyring`"
        )
    statement_text = str(info.get(SiteKey.STATEMENT.value, ""))
    signature = str(info.get(SiteKey.SIGNATURE.value, ""))
    if not statement_text or not signature:
        return f"node {node_id} answered as {name} without signing its identity"
    digest = record_digest(info, (SiteKey.STATEMENT.value, SiteKey.SIGNATURE.value))
    expected = identity_statement(challenge, node_id, name, digest)
    try:
        claimed = json.loads(statement_text)
        valid = claimed == expected and verify(
            key, statement_text.encode(), bytes.fromhex(signature)
        )
    except (ValueError, TypeError):
        valid = False
    if not valid:
        return (
            f"node {node_id} claims to be {name}, but its answer is not signed by {name}'s "
            "registered key for this query (another key, a replayed answer, or an altered "
            "reply); refused, nothing is recorded under that name"
        )
    return None
