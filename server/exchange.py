"""Send a batch of Messages and collect the replies as they arrive.

Like Flower's ``Grid.send_and_receive`` but it reports progress per reply
(round, sites done, elapsed) and polls briskly instead of every few seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

log = logging.getLogger("hepafed.progress")

POLL_INTERVAL_S = 0.1


def exchange(
    grid: Grid,
    messages: Iterable[Message],
    timeout_s: float,
    label: str,
    names: dict[int, str] | None = None,
) -> list[Message]:
    """Push ``messages``; return the replies received before ``timeout_s``."""
    start = time.monotonic()
    pending = set(grid.push_messages(list(messages)))
    total = len(pending)
    replies: list[Message] = []
    while pending and time.monotonic() - start < timeout_s:
        arrived = list(grid.pull_messages(pending))
        for msg in arrived:
            pending.discard(msg.metadata.reply_to_message_id)
            replies.append(msg)
            node = msg.metadata.src_node_id
            site = (names or {}).get(node, f"node {node}")
            log.info(
                "%s: %d/%d sites done (%s) [%.1fs]",
                label,
                len(replies),
                total,
                site,
                time.monotonic() - start,
            )
        if pending and not arrived:
            time.sleep(POLL_INTERVAL_S)
    if pending:
        log.warning("%s: %d site(s) did not reply within %.0fs", label, len(pending), timeout_s)
    return replies
