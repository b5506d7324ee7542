"""The site's side of signed updates: check the server's model, sign the update.

A ClientApp mod (``(msg, context, call_next)``), outermost, so that what the
site signs is exactly what leaves it and what it checks is exactly what came
in. With ``trust.sign-updates`` (the default) a message carrying a model must
carry the server's valid signature of it for this run and round, or the site
refuses it (the server sees the reason as the reply's error); a training reply
gets the site's signature of its update (``common.signing``).

Where the keys are: a deployed SuperNode's ``node_config`` names its private
key (``signing-key``, the ``site_key`` made by ``hepafed site init``) and the
server's public key (``server-public-key``). A simulated site uses the run's
keyring (``trust.keys-dir``, by default RUN_DIR/keys), where the server made a
key pair for it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType

from common.keys import ConfigKey, NodeKey, RecordKey, SiteKey
from common.signing import (
    Keyring,
    SigningKeyError,
    arrays_hash,
    canonical,
    load_private_key,
    load_public_key,
    model_statement,
    sign,
    update_digest,
    update_statement,
    verify,
)

log = logging.getLogger(__name__)

SIGN_KEY = "trust.sign-updates"
KEYS_DIR_KEY = "trust.keys-dir"
RUN_DIR_KEY = "output.run-dir"
HOOKS_KEY = "hooks.use"


class TrustError(RuntimeError):
    """The model the server sent cannot be trusted, or the site cannot sign."""


def _keyring(config: ConfigRecord) -> Keyring:
    folder = str(config.get(KEYS_DIR_KEY, "") or "")
    return Keyring(folder or Path(str(config.get(RUN_DIR_KEY, ""))) / "keys")


def _server_key_path(config: ConfigRecord, node_config: dict[str, Any]) -> Path:
    explicit = node_config.get(NodeKey.SERVER_KEY.value)
    return Path(str(explicit)) if explicit else _keyring(config).server_public


def _site_key_path(config: ConfigRecord, node_config: dict[str, Any], site: str) -> Path:
    explicit = node_config.get(NodeKey.SIGNING_KEY.value)
    return Path(str(explicit)) if explicit else _keyring(config).simulated_site_private(site)


def check_model(msg: Message, node_config: dict[str, Any]) -> str:
    """The hash of the model ``msg`` carries, once its server signature is checked."""
    config = cast(ConfigRecord, msg.content[RecordKey.CONFIG])
    arrays = cast(ArrayRecord, msg.content[RecordKey.ARRAYS])
    digest = arrays_hash(arrays)
    path = _server_key_path(config, node_config)
    try:
        key = load_public_key(path)
    except SigningKeyError as e:
        raise TrustError(
            f"cannot check the server's signature: {e}; give the node "
            f"'{NodeKey.SERVER_KEY.value}' (the federation's server.pub)"
        ) from e
    signature = str(config.get(ConfigKey.MODEL_SIGNATURE, ""))
    if not signature:
        raise TrustError("the model arrived unsigned; refusing to use it")
    statement = model_statement(
        str(config.get(ConfigKey.RUN_ID, "")),
        int(cast(int, config.get(ConfigKey.ROUND, 0))),
        str(config.get(ConfigKey.MODEL, "global")),
        digest,
    )
    try:
        valid = verify(key, canonical(statement), bytes.fromhex(signature))
    except ValueError:
        valid = False
    if not valid:
        raise TrustError(
            f"the model's signature does not verify with the server key {path}: the model was "
            "altered in transit, or signed by another server; refusing to use it"
        )
    return digest


def sign_reply(msg: Message, reply: Message, node_config: dict[str, Any], model_hash: str) -> None:
    """Add the site's signature of its update to ``reply`` (its ``site`` ConfigRecord)."""
    config = cast(ConfigRecord, msg.content[RecordKey.CONFIG])
    site_record = cast(ConfigRecord, reply.content[RecordKey.SITE])
    site = str(site_record[SiteKey.NAME])
    path = _site_key_path(config, node_config, site)
    try:
        key = load_private_key(path)
    except SigningKeyError as e:
        raise TrustError(
            f"site {site} cannot sign its update: {e}; give the node "
            f"'{NodeKey.SIGNING_KEY.value}' (its site_key from `hepafed site init`)"
        ) from e
    statement = update_statement(
        str(config.get(ConfigKey.RUN_ID, "")),
        int(cast(int, config.get(ConfigKey.ROUND, 0))),
        str(config.get(ConfigKey.MODEL, "global")),
        site,
        model_hash,
        update_digest(reply.content),
    )
    data = canonical(statement)
    site_record[SiteKey.STATEMENT.value] = data.decode()
    site_record[SiteKey.SIGNATURE.value] = sign(key, data).hex()


def check_hooks(config: ConfigRecord, node_config: dict[str, Any]) -> None:
    """A deployed site imports no code the server names unless the site allowed it.

    ``hooks.use`` may name a hook by import path ('package.module:Class'); the site would
    import that module. A SuperNode serving a site folder (``site-dir``) accepts only
    built-in hooks and those listed in its node config's ``allowed-hooks``
    (comma-separated). Simulated sites (no ``site-dir``) run the user's own code anyway.
    """
    if NodeKey.SITE_DIR.value not in node_config:
        return
    allowed = {h.strip() for h in str(node_config.get(NodeKey.ALLOWED_HOOKS.value, "")).split(",")}
    named = [h.strip() for h in str(config.get(HOOKS_KEY, "")).split(",") if ":" in h]
    refused = [h for h in named if h not in allowed]
    if refused:
        raise TrustError(
            f"the run asks this site to import hook code {refused}; a site imports only "
            f"built-in hooks and those in its node config '{NodeKey.ALLOWED_HOOKS.value}'"
        )


def trust_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Check the hooks the run names, and the server's signature of an incoming model; sign
    an outgoing update."""
    content = msg.content
    config = content.get(RecordKey.CONFIG)
    node_config = dict(context.node_config)
    if isinstance(config, ConfigRecord):
        check_hooks(config, node_config)
    if not isinstance(config, ConfigRecord) or not bool(config.get(SIGN_KEY, True)):
        return cast(Message, call_next(msg, context))
    model_hash = ""
    if RecordKey.ARRAYS in content:
        model_hash = check_model(msg, node_config)
    reply = cast(Message, call_next(msg, context))
    if msg.metadata.message_type == MessageType.TRAIN and not reply.has_error():
        sign_reply(msg, reply, node_config, model_hash)
    return reply
