"""Replies are filed under the site a message was sent to, even when the SuperLink answers."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict

from server.exchange import exchange

pytestmark = pytest.mark.usefixtures("flower_task")


def _sent(dst: int, message_id: str) -> Message:
    msg = Message(RecordDict({"c": ConfigRecord()}), dst_node_id=dst,
                  message_type=MessageType.TRAIN)  # fmt: skip
    msg.metadata.__dict__["_message_id"] = message_id
    return msg


class _Grid:
    """Two sites; node 7's reply is the SuperLink's 'Node Unavailable' error (source 1)."""

    def __init__(self) -> None:
        self.sent = [_sent(5, "m5"), _sent(7, "m7")]

    def push_messages(self, messages: list[Message]) -> list[str]:
        for msg, sent in zip(messages, self.sent, strict=True):
            msg.metadata.__dict__["_message_id"] = sent.metadata.message_id
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, ids: set[str]) -> list[Message]:
        ok = Message(RecordDict({"c": ConfigRecord()}), reply_to=self.sent[0])
        from_link = _sent(1, "m7")  # what the SuperLink answers in the node's place
        error = Message(Error(code=5, reason="Node Unavailable"), reply_to=from_link)
        assert error.metadata.src_node_id == 1
        return [r for r in (ok, error) if r.metadata.reply_to_message_id in ids]


def test_superlink_error_is_filed_under_the_site_it_was_meant_for() -> None:
    grid = _Grid()
    replies = exchange(grid, list(grid.sent), 5.0, "test")  # type: ignore[arg-type]
    by_node = {r.metadata.src_node_id: r for r in replies}
    assert set(by_node) == {5, 7}
    assert by_node[7].has_error() and by_node[7].error.reason == "Node Unavailable"
    assert not by_node[5].has_error()
