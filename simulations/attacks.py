"""A poisoned site: a ClientApp mod that turns one hospital Byzantine, for robustness studies.

``poison_mod(site, kind, scale)`` alters the training replies of the named site after it
has trained honestly and *before* it signs them (it runs inside ``client.trust``'s mod, as
``client.app.client_app(inner_mods=...)`` installs it): a malicious hospital signs its own
poisoned update with its own key, so signatures alone cannot stop it; the server's norm
check (``trust.norm-z``) and robust aggregation (``federation.strategy``) have to. With
``u = trained - received`` (received: the global weights the server sent) the site sends

* ``scale``: ``received + scale * u`` (a boosted update, x100 by default);
* ``sign-flip``: ``received - u`` (it pushes the model away from what its data teach).

Not used in normal runs: only the robustness tests and studies build ``poisoned_client``.
"""

from __future__ import annotations

from collections import OrderedDict
from enum import StrEnum
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable, Mod

from client.app import client_app
from common.keys import RecordKey, SiteKey


class AttackKind(StrEnum):
    """How the poisoned site changes its update ``u = trained - received``."""

    SCALE = "scale"  # received + scale * u
    SIGN_FLIP = "sign-flip"  # received - u


class AttackError(ValueError):
    """The attack cannot be applied as asked (unknown kind, or no float weights to poison)."""


def poison_mod(site: str, kind: str, scale: float = 100.0) -> Mod:
    """A ClientApp mod that poisons the training replies of ``site`` (by its reported name).

    Every other site, and every query or evaluate reply, passes through untouched. The
    attack is defined on float weights: a reply that carries a compressed update
    (``federation.compression`` other than ``none``) makes the mod raise ``AttackError``.
    """
    try:
        attack = AttackKind(kind)
    except ValueError:
        valid = ", ".join(repr(k.value) for k in AttackKind)
        raise AttackError(f"attack kind {kind!r} is unknown; valid kinds: {valid}") from None
    if not np.isfinite(scale):
        raise AttackError(f"attack scale = {scale!r}: must be finite")
    factor = scale if attack is AttackKind.SCALE else -1.0

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN or reply.has_error():
            return reply
        identity = reply.content.get(RecordKey.SITE)
        if not isinstance(identity, ConfigRecord) or identity.get(SiteKey.NAME) != site:
            return reply
        received = cast(ArrayRecord, msg.content[RecordKey.ARRAYS])
        reply.content[RecordKey.ARRAYS] = poisoned(received, _sent(reply, received), factor)
        return reply

    return mod


def poisoned(received: ArrayRecord, sent: ArrayRecord, factor: float) -> ArrayRecord:
    """``received + factor * (sent - received)`` for every tensor of ``sent``, in its key
    order and dtypes (computed in float64); ``factor = -1`` is the sign flip."""
    out: OrderedDict[str, Array] = OrderedDict()
    for key, array in sent.items():
        trained = array.numpy()
        base = received[key].numpy().astype(np.float64)
        sent_back = base + factor * (trained.astype(np.float64) - base)
        out[key] = Array(sent_back.astype(trained.dtype))
    return ArrayRecord(out)


def poisoned_client(site: str, kind: str, scale: float = 100.0) -> ClientApp:
    """hepafed's ClientApp in which ``site`` poisons its updates (``poison_mod``)."""
    return client_app(inner_mods=[poison_mod(site, kind, scale)])


def _sent(reply: Message, received: ArrayRecord) -> ArrayRecord:
    """The float weights of a training reply, or ``AttackError`` if it carries none."""
    sent = reply.content.get(RecordKey.ARRAYS)
    if RecordKey.SCALES in reply.content or not isinstance(sent, ArrayRecord):
        raise AttackError(_COMPRESSED)
    for key, array in sent.items():
        if key not in received or array.shape != received[key].shape:
            raise AttackError(
                f"{_COMPRESSED} (the reply's tensor {key!r} is not one the server sent)"
            )
        if not np.issubdtype(np.dtype(array.dtype), np.floating):
            raise AttackError(f"{_COMPRESSED} (tensor {key!r} is {array.dtype})")
    return sent


_COMPRESSED = (
    "the poisoned site's reply carries no float weights: the attack is defined on weights; "
    "run it with federation.compression = 'none'"
)
