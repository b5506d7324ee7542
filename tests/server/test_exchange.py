"""Replies are filed under the site a message was sent to, even when the SuperLink answers."""

from __future__ import annotations

from typing import cast

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


def test_every_message_is_signed_for_its_own_node(tmp_path: object) -> None:
    """One config shared by the messages to two nodes: each leaves with its own signature,
    valid only at its node (``client.trust.check_instruction``)."""
    from pathlib import Path
    from types import SimpleNamespace

    from flwr.app import Context

    from client.trust import TrustError, check_instruction
    from common.config import RunConfig
    from common.keys import ConfigKey
    from server.trust import ServerTrust

    cfg = RunConfig().replace({"output.run-dir": str(tmp_path)})
    trust = ServerTrust(cfg, Path(str(tmp_path)), "run-1")
    shared = RecordDict({"config": ConfigRecord({**cfg.to_flat(), "server-round": 1})})
    grid = _Grid()
    grid.run = SimpleNamespace(run_id=3)  # type: ignore[attr-defined]
    outgoing = [Message(shared, dst_node_id=n, message_type=MessageType.QUERY) for n in (5, 7)]
    exchange(grid, outgoing, 5, "query", sign=trust.sign_instruction)  # type: ignore[arg-type]
    field = ConfigKey.INSTRUCTION_SIGNATURE.value
    signatures = [str(m.content["config"][field]) for m in outgoing]
    assert len(set(signatures)) == 2 and field not in shared["config"]
    for msg, node, other in ((outgoing[0], 5, 7), (outgoing[1], 7, 5)):
        ctx = Context(run_id=3, node_id=node, node_config={}, state=RecordDict(), run_config={})
        check_instruction(msg, ctx, {}, "")
        wrong = Context(run_id=3, node_id=other, node_config={}, state=RecordDict(),
                        run_config={})  # fmt: skip
        with pytest.raises(TrustError, match="not signed by the server for this node"):
            check_instruction(msg, wrong, {}, "")


class _PackedGrid(_Grid):
    """Node 5 replies with packed arrays; node 7's packed reply has an index that claims
    one byte fewer than its packed array holds."""

    def pull_messages(self, ids: set[str]) -> list[Message]:
        import json

        import numpy as np
        from flwr.app import Array, ArrayRecord

        from common.packing import INDEX, PACKING, pack_content

        def model() -> ArrayRecord:
            return ArrayRecord({f"w{i}": Array(np.full(3, i, np.float32)) for i in range(4)})

        good = Message(pack_content(RecordDict({"arrays": model()})), reply_to=self.sent[0])
        bad = pack_content(RecordDict({"arrays": model()}))
        index = json.loads(str(bad[PACKING][INDEX]))
        index["records"]["arrays"][0][4] -= 1
        bad[PACKING] = ConfigRecord({INDEX: json.dumps(index)})
        return [good, Message(bad, reply_to=self.sent[1])]


def test_replies_are_unpacked_and_one_that_cannot_be_is_the_sites_error() -> None:
    """``common.packing``: the server unpacks each reply before anything reads it."""
    grid = _PackedGrid()
    replies = exchange(grid, list(grid.sent), 5.0, "test")  # type: ignore[arg-type]
    by_node = {r.metadata.src_node_id: r for r in replies}
    assert set(by_node) == {5, 7}
    from flwr.app import Array, ArrayRecord

    arrays = cast(ArrayRecord, by_node[5].content["arrays"])
    assert list(arrays) == ["w0", "w1", "w2", "w3"]
    assert cast(Array, arrays["w2"]).numpy().tolist() == [2.0, 2.0, 2.0]
    size = 4 * len(cast(Array, arrays["w0"]).data)
    assert by_node[7].has_error()
    assert by_node[7].error.reason == (
        "the site's reply could not be unpacked: record 'arrays': the index accounts for "
        f"{size - 1} bytes, the packed array holds {size}"
    )
