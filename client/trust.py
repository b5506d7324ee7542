"""The site's side of signed updates: check the server's model, sign the update.

A ClientApp mod (``(msg, context, call_next)``), outside every mod that reads or
changes the arrays, so that what the site signs is exactly what leaves it and what
it checks is exactly what came in (only ``common.packing``'s mod is outside it, and
unpacking and packing give back the same bytes). With ``trust.sign-updates`` (the
default) a message carrying a model must carry the server's valid signature of it
for this run and round, or the site refuses it (the server sees the reason as the
reply's error); a training reply gets the site's signature of its update
(``common.signing``).

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

from client.message_config import run_config
from client.policy import SitePolicy
from common.keys import GLOBAL_MODEL, ConfigKey, NodeKey, RecordKey, SiteKey
from common.signing import (
    Keyring,
    SigningKeyError,
    arrays_hash,
    canonical,
    identity_statement,
    instruction_digest,
    instruction_statement,
    load_private_key,
    load_public_key,
    model_statement,
    record_digest,
    sign,
    update_digest,
    update_statement,
    verify,
)

log = logging.getLogger(__name__)


class TrustError(RuntimeError):
    """The model the server sent cannot be trusted, or the site cannot sign."""


def _keyring(config: ConfigRecord) -> Keyring:
    """A simulated site's keyring: ``trust.keys-dir``, by default RUN_DIR/keys."""
    cfg = run_config(config)
    return Keyring(cfg.trust.keys_dir or Path(cfg.output.run_dir) / "keys")


def _server_key_path(config: ConfigRecord, node_config: dict[str, Any]) -> Path:
    """The server's public key: the node config's at a deployed site (never a path the
    message names), the run keyring's for a simulated one."""
    explicit = node_config.get(NodeKey.SERVER_KEY.value)
    if explicit:
        return Path(str(explicit))
    if NodeKey.SITE_DIR.value in node_config:
        raise TrustError(
            f"this site has no '{NodeKey.SERVER_KEY.value}' in its node config, and takes the "
            "server's key from no message: start it with `hepafed site start --server-key "
            "server.pub`"
        )
    return _keyring(config).server_public


def _site_key_path(config: ConfigRecord, node_config: dict[str, Any], site: str) -> Path:
    explicit = node_config.get(NodeKey.SIGNING_KEY.value)
    return Path(str(explicit)) if explicit else _keyring(config).simulated_site_private(site)


def _server_key(path: Path) -> Any:
    """The server's public key at ``path``; TrustError saying how to give it."""
    try:
        return load_public_key(path)
    except SigningKeyError as e:
        raise TrustError(
            f"cannot check the server's signature: {e}; give the node "
            f"'{NodeKey.SERVER_KEY.value}' (the federation's server.pub)"
        ) from e


def _verifies(key: Any, statement: dict[str, Any], signature: str) -> bool:
    """Whether ``signature`` (hex) is ``key``'s signature of ``statement``."""
    try:
        return verify(key, canonical(statement), bytes.fromhex(signature))
    except ValueError:
        return False


def check_model(msg: Message, node_config: dict[str, Any]) -> str:
    """The hash of the model ``msg`` carries, once its server signature is checked."""
    config = cast(ConfigRecord, msg.content[RecordKey.CONFIG])
    arrays = cast(ArrayRecord, msg.content[RecordKey.ARRAYS])
    digest = arrays_hash(arrays)
    path = _server_key_path(config, node_config)
    key = _server_key(path)
    signature = str(config.get(ConfigKey.MODEL_SIGNATURE, ""))
    if not signature:
        raise TrustError("the model arrived unsigned; refusing to use it")
    statement = model_statement(
        str(config.get(ConfigKey.RUN_ID, "")),
        int(cast(int, config.get(ConfigKey.ROUND, 0))),
        str(config.get(ConfigKey.MODEL, GLOBAL_MODEL)),
        digest,
    )
    valid = _verifies(key, statement, signature)
    if not valid:
        raise TrustError(
            f"the model's signature does not verify with the server key {path}: the model was "
            "altered in transit, or signed by another server; refusing to use it"
        )
    return digest


def check_instruction(
    msg: Message, context: Context, node_config: dict[str, Any], model_hash: str
) -> None:
    """Refuse a message the server did not sign for this node, this run and this content.

    Flower lets any registered node push a message to another node; the server's signature
    over (Flower run, message type, destination node, model, everything else the message
    carries) is what tells a site an instruction really comes from its federation's server
    and was meant for it."""
    config = cast(ConfigRecord, msg.content[RecordKey.CONFIG])
    field = ConfigKey.INSTRUCTION_SIGNATURE.value
    signature = str(config.get(field, ""))
    if not signature:
        raise TrustError("the message arrived without the server's signature; refusing it")
    path = _server_key_path(config, node_config)
    key = _server_key(path)
    digest = instruction_digest(msg.content, RecordKey.CONFIG, RecordKey.ARRAYS, field)
    statement = instruction_statement(
        int(context.run_id), str(msg.metadata.message_type), int(context.node_id), model_hash,
        digest,
    )  # fmt: skip
    valid = _verifies(key, statement, signature)
    if not valid:
        raise TrustError(
            "the message is not signed by the server for this node, run and content (another "
            "node's instruction passed on, or altered in transit); refusing it"
        )


def _sign_into(
    site_record: ConfigRecord,
    config: ConfigRecord,
    node_config: dict[str, Any],
    statement: dict[str, Any],
    what: str,
) -> None:
    """Sign ``statement`` with this site's key into ``site_record`` (statement + signature)."""
    site = str(site_record[SiteKey.NAME])
    path = _site_key_path(config, node_config, site)
    try:
        key = load_private_key(path)
    except SigningKeyError as e:
        raise TrustError(
            f"site {site} cannot sign its {what}: {e}; give the node "
            f"'{NodeKey.SIGNING_KEY.value}' (its site_key from `hepafed site init`)"
        ) from e
    data = canonical(statement)
    site_record[SiteKey.STATEMENT.value] = data.decode()
    site_record[SiteKey.SIGNATURE.value] = sign(key, data).hex()


def sign_reply(msg: Message, reply: Message, node_config: dict[str, Any], model_hash: str) -> None:
    """Add the site's signature of its update to ``reply`` (its ``site`` ConfigRecord)."""
    config = cast(ConfigRecord, msg.content[RecordKey.CONFIG])
    site_record = cast(ConfigRecord, reply.content[RecordKey.SITE])
    statement = update_statement(
        str(config.get(ConfigKey.RUN_ID, "")),
        int(cast(int, config.get(ConfigKey.ROUND, 0))),
        str(config.get(ConfigKey.MODEL, GLOBAL_MODEL)),
        str(site_record[SiteKey.NAME]),
        model_hash,
        update_digest(reply.content),
    )
    _sign_into(site_record, config, node_config, statement, "update")


def sign_identity(msg: Message, reply: Message, context: Context) -> None:
    """Sign the site-query reply: this site's name, for this node and the server's fresh
    challenge, over the reply's content, so no other key can answer in this site's name."""
    config = cast(ConfigRecord, msg.content[RecordKey.CONFIG])
    challenge = str(config.get(ConfigKey.SITE_CHALLENGE, ""))
    if not challenge:
        return
    site_record = cast(ConfigRecord, reply.content[RecordKey.SITE])
    digest = record_digest(site_record, (SiteKey.STATEMENT.value, SiteKey.SIGNATURE.value))
    statement = identity_statement(
        challenge, int(context.node_id), str(site_record[SiteKey.NAME]), digest
    )
    _sign_into(site_record, config, dict(context.node_config), statement, "identity")


def models_must_be_signed(config: ConfigRecord, node_config: dict[str, Any]) -> bool:
    """Whether a model must carry the server's signature: the run asks for it, or the site's
    policy requires it (``policy.require-signed-models``; the server cannot switch it off)."""
    if run_config(config).trust.sign_updates:
        return True
    return NodeKey.SITE_DIR.value in node_config and (
        SitePolicy.from_node_config(node_config).require_signed_models
    )


def trust_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Check the server's signature of an incoming model and message; sign an outgoing
    update. (The hooks a run names were checked against the site's policy by the outer
    ``client.policy.policy_mod``.)"""
    content = msg.content
    config = content.get(RecordKey.CONFIG)
    node_config = dict(context.node_config)
    if not isinstance(config, ConfigRecord) or not models_must_be_signed(config, node_config):
        return cast(Message, call_next(msg, context))
    model_hash = ""
    if RecordKey.ARRAYS in content:
        model_hash = check_model(msg, node_config)
    check_instruction(msg, context, node_config, model_hash)
    reply = cast(Message, call_next(msg, context))
    if msg.metadata.message_type == MessageType.TRAIN and not reply.has_error():
        sign_reply(msg, reply, node_config, model_hash)
    if (msg.metadata.message_type == MessageType.QUERY and not reply.has_error()
            and RecordKey.SITE in reply.content):  # fmt: skip
        sign_identity(msg, reply, context)
    return reply
