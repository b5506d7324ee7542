"""Send a batch of Messages and collect the replies as they arrive.

Like Flower's ``Grid.send_and_receive`` but it reports progress per reply
(round, sites done, elapsed), polls briskly instead of every few seconds, and
can hand each reply to a callback the moment it arrives instead of keeping
them all (streaming aggregation, ``server.aggregation``).

Replies are pulled one at a time (``server.pull``): the next reply's bytes are
fetched only once the one before it has been handled and released.

It is also the server's message boundary for ``common.packing``: each message is
packed after it is signed, and each reply unpacked (on arrival, one at a time)
before anything reads or verifies it; a reply that cannot be unpacked becomes the
site's error reply, naming what is wrong.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from flwr.app import Error, Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from common.packing import PackingError, Shared, pack_message, unpack_content
from server.pull import pull_replies

log = logging.getLogger("hepafed.progress")

POLL_INTERVAL_S = 0.1


def exchange(
    grid: Grid,
    messages: Iterable[Message],
    timeout_s: float,
    label: str,
    names: dict[int, str] | None = None,
    on_reply: Callable[[Message], None] | None = None,
    sign: Callable[[Message, int], Message] | None = None,
    max_reply_bytes: int | None = None,
) -> list[Message]:
    """Push ``messages``; return the replies received before ``timeout_s``.

    With ``on_reply`` each reply is passed to it on arrival and not kept (the
    returned list is then empty). ``sign`` (``ServerTrust.sign_instruction``) signs each
    outgoing message for its destination node and this Flower run. A reply whose bytes
    pass ``max_reply_bytes`` (``server.validation.reply_budget``) is not pulled further
    and becomes its site's error reply (``server.pull``)."""
    start = time.monotonic()
    outgoing = list(messages)
    if sign is not None:  # each message signed for its one node (server.trust)
        outgoing = [sign(m, int(grid.run.run_id)) for m in outgoing]
    shared: Shared = {}  # one model sent to every site is packed once (common.packing)
    signed = [m.content for m in outgoing]
    outgoing = [pack_message(m, shared) for m in outgoing]  # after signing
    del shared
    ids = list(grid.push_messages(outgoing))
    for msg, content in zip(outgoing, signed, strict=True):  # the packed copy is released
        msg.content = content
    sent = dict(zip(ids, outgoing, strict=False))
    pending = set(ids)
    total = len(pending)
    replies: list[Message] = []
    done = 0
    while pending and time.monotonic() - start < timeout_s:
        got_any = False
        # one reply at a time: each is pulled when the one before it has been handled and
        # released (server.pull), not all of a batch at once
        for arrived in pull_replies(grid, set(pending), max_reply_bytes):  # a copy
            got_any = True
            msg = _unpacked(_attributed(arrived, sent), sent)
            del arrived
            pending.discard(msg.metadata.reply_to_message_id)
            done += 1
            if on_reply is None:
                replies.append(msg)
            else:
                on_reply(msg)
            node = msg.metadata.src_node_id
            site = (names or {}).get(node, f"node {node}")
            log.info(
                "%s: %d/%d sites done (%s) [%.1fs]",
                label,
                done,
                total,
                site,
                time.monotonic() - start,
            )
            del msg
        if pending and not got_any:
            time.sleep(POLL_INTERVAL_S)
    if pending:
        log.warning("%s: %d site(s) did not reply within %.0fs", label, len(pending), timeout_s)
    return replies


def _unpacked(reply: Message, sent: dict[str, Message]) -> Message:
    """``reply`` with its packed records as their arrays (``common.packing``); an error
    reply from the site if they disagree with its index."""
    if not reply.has_content():
        return reply
    try:
        reply.content = unpack_content(reply.content, copy=False)  # views, read only
    except PackingError as e:
        reason = f"the site's reply could not be unpacked: {e}"
        error = Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason)
        return Message(error, reply_to=sent[reply.metadata.reply_to_message_id])
    return reply


def _attributed(reply: Message, sent: dict[str, Message]) -> Message:
    """``reply`` as coming from the node its message was sent to.

    When a node is gone, the SuperLink itself answers with an error ("Node
    Unavailable") whose source is the SuperLink, not the site; rebuilt as a reply
    to the original message, the error is recorded under the site's name."""
    original = sent.get(reply.metadata.reply_to_message_id)
    if (
        original is None
        or not reply.has_error()
        or reply.metadata.src_node_id == original.metadata.dst_node_id
    ):
        return reply
    return Message(reply.error, reply_to=original)
