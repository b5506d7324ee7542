"""A Flower Grid stand-in for driving the server's jobs without Flower's runtime: each
message pushed is answered by a function of the message (what a site would send back)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

from flwr.app import Message

from common.packing import unpack_content

Answer = Callable[[Message], Message | None]


class ReplyGrid:
    """A Grid whose nodes answer each message with ``answer(message)`` (None: no reply);
    ``answer`` sees the message unpacked, as a site's handlers do (``common.packing``)."""

    def __init__(
        self, answer: Answer, nodes: tuple[int, ...] = (1, 2, 3), reverse: bool = False
    ) -> None:
        """``reverse``: replies arrive in the reverse of the order the messages were sent."""
        self.answer, self.nodes, self.reverse = answer, nodes, reverse
        self.pending: dict[str, Message] = {}
        self.sent: list[Message] = []
        self.run = SimpleNamespace(run_id=7)  # the Flower run messages are signed for

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def push_messages(self, messages: list[Message]) -> list[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"m{len(self.sent)}"
            self.sent.append(msg)
            self.pending[msg.metadata.message_id] = msg
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, ids: set[str]) -> list[Message]:
        out = []
        for mid in sorted(ids & set(self.pending), reverse=self.reverse):
            msg = self.pending.pop(mid)
            msg.content = unpack_content(msg.content)  # as the site's packing_mod does
            reply = self.answer(msg)
            if reply is not None:
                out.append(reply)
        return out
