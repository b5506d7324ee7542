"""Replies are pulled from the SuperLink one at a time (``server.pull``): the next reply's
objects are fetched only after the one before it was handed on, and a reply whose objects
are gone is an error reply filed under its site. The SuperLink's Runtime API is played by
a fake client that serves messages as Flower's own push deflates them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.app.message import remove_content_from_message
from flwr.common.constant import ErrorCode
from flwr.common.serde import message_to_proto
from flwr.proto.message_pb2 import PullObjectResponse  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import PullAppMessagesResponse  # pylint: disable=E0611
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.run import Run
from flwr.superlink.grid.http_grid import HttpGrid

from server.exchange import exchange
from server.pull import pull_replies

pytestmark = pytest.mark.usefixtures("flower_task")


def _instruction(dst: int) -> Message:
    msg = Message(RecordDict({"c": ConfigRecord({"round": 1})}), dst_node_id=dst,
                  message_type=MessageType.TRAIN)  # fmt: skip
    msg.metadata.__dict__["_message_id"] = msg.object_id
    return msg


def _reply(to: Message, value: float) -> Message:
    arrays = ArrayRecord({"w": Array(np.full(1000, value, np.float32)),
                          "b": Array(np.arange(3, dtype=np.float32) + value)})  # fmt: skip
    reply = Message(RecordDict({"arrays": arrays}), reply_to=to)
    reply.metadata.__dict__["_message_id"] = reply.object_id
    return reply


class _Link:
    """The Runtime API of a SuperLink holding ``replies`` (message ID -> reply); ``log``
    records, in order, every object pulled (with the reply it belongs to) and every
    confirmation; ``lost`` object IDs are not found."""

    def __init__(self, replies: list[Message]) -> None:
        self.protos, self.trees = [], []
        self.objects: dict[str, bytes] = {}
        self.owner: dict[str, str] = {}  # object ID -> the reply's message ID
        self.lost: set[str] = set()
        self.log: list[tuple[str, str]] = []
        for reply in replies:
            self.protos.append(message_to_proto(remove_content_from_message(reply)))
            self.trees.append(get_object_tree(reply))
            for object_id, obj in get_all_nested_objects(reply).items():
                self.objects[object_id] = obj.deflate()
                self.owner[object_id] = reply.metadata.message_id

    def PullMessages(self, request: Any) -> PullAppMessagesResponse:
        wanted = set(request.message_ids)
        keep = [i for i, p in enumerate(self.protos) if p.metadata.reply_to_message_id in wanted]
        response = PullAppMessagesResponse(
            messages_list=[self.protos[i] for i in keep],
            message_object_trees=[self.trees[i] for i in keep],
        )
        for i in sorted(keep, reverse=True):  # listed once, as the SuperLink forgets them
            del self.protos[i], self.trees[i]
        return response

    def PullObject(self, request: Any) -> PullObjectResponse:
        object_id = request.object_id
        self.log.append(("pull", self.owner[object_id]))
        if object_id in self.lost:
            return PullObjectResponse(object_found=False, object_available=False)
        return PullObjectResponse(object_found=True, object_available=True,
                                  object_content=self.objects[object_id])  # fmt: skip

    def ConfirmMessageReceived(self, request: Any) -> None:
        self.log.append(("confirm", request.message_object_id))


def _grid(link: _Link) -> HttpGrid:
    grid = HttpGrid(token="test")
    grid._client = link  # type: ignore[assignment]
    grid.set_run(Run.create_empty(7))
    return grid


def test_each_reply_is_pulled_after_the_one_before_was_handed_on() -> None:
    sent = [_instruction(n) for n in (11, 12, 13)]
    replies = [_reply(m, float(i)) for i, m in enumerate(sent)]
    link = _Link(replies)
    ids = [r.metadata.message_id for r in replies]
    got = []
    for reply in pull_replies(_grid(link), [m.metadata.message_id for m in sent]):
        link.log.append(("handed on", reply.metadata.message_id))
        got.append(reply)
    # every object of reply k, then its confirmation, then the caller has it; only then k+1
    steps = [(kind, mid) for kind, mid in link.log if kind != "pull"]
    assert steps == [step for mid in ids for step in (("confirm", mid), ("handed on", mid))]
    pulls = [mid for kind, mid in link.log if kind == "pull"]
    assert pulls == sorted(pulls, key=ids.index)  # no reply's objects before the last one's
    handed = [i for i, (kind, _) in enumerate(link.log) if kind == "handed on"]
    for k, mid in enumerate(ids[1:]):
        first_pull = link.log.index(("pull", mid))
        assert first_pull > handed[k]
    for i, reply in enumerate(got):
        assert reply.metadata.reply_to_message_id == sent[i].metadata.message_id
        arrays = cast(ArrayRecord, reply.content["arrays"])
        np.testing.assert_array_equal(arrays["w"].numpy(), np.full(1000, float(i), np.float32))
        np.testing.assert_array_equal(arrays["b"].numpy(), np.arange(3) + float(i))


def test_a_reply_whose_objects_are_gone_is_its_sites_error() -> None:
    """Through ``exchange``: the lost reply is filed under node 12, the others arrive."""
    sent = [_instruction(n) for n in (11, 12)]
    replies = [_reply(m, float(i)) for i, m in enumerate(sent)]
    link = _Link(replies)
    lost = replies[1]
    link.lost = {oid for oid, mid in link.owner.items() if mid == lost.metadata.message_id}

    grid = _grid(link)
    grid.push_messages = lambda messages: [m.metadata.message_id for m in messages]  # type: ignore[method-assign]
    got = exchange(grid, sent, 5.0, "test")
    by_node = {r.metadata.src_node_id: r for r in got}
    assert set(by_node) == {11, 12}
    assert not by_node[11].has_error()
    assert by_node[12].has_error()
    assert by_node[12].error.code == ErrorCode.MESSAGE_UNAVAILABLE
    assert "could not be pulled from the SuperLink" in str(by_node[12].error.reason)
    assert ("confirm", lost.metadata.message_id) not in link.log


def test_the_in_memory_grid_hands_over_its_list() -> None:
    class _Memory:
        def pull_messages(self, ids: list[str]) -> list[str]:
            return [f"reply to {i}" for i in ids]

    assert list(pull_replies(_Memory(), ["a", "b"])) == ["reply to a", "reply to b"]  # type: ignore[arg-type]


def test_a_reply_over_the_budget_is_not_pulled_to_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """A site sends 400 KB in 4 KB chunks against a 64 KiB budget: the server stops after a
    few chunks (what its two pull threads had in flight), confirms the reply so the SuperLink
    drops it, and files it as that site's error; the other site's reply arrives whole."""
    import flwr.app.message.array as flower_array

    monkeypatch.setattr(flower_array, "FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE", 4096)
    sent = [_instruction(n) for n in (11, 12)]
    small = _reply(sent[0], 1.0)  # 4 KB of weights and a bias
    # random values: chunks are stored by their content's hash, so equal chunks are one
    noise = np.random.default_rng(0).standard_normal(100_000, dtype=np.float32)
    big = Message(RecordDict({"arrays": ArrayRecord({"w": Array(noise)})}), reply_to=sent[1])
    big.metadata.__dict__["_message_id"] = big.object_id
    link = _Link([small, big])
    chunks = sum(1 for mid in link.owner.values() if mid == big.metadata.message_id)
    assert chunks > 90  # 400 KB in 4 KB chunks

    grid = _grid(link)
    grid.push_messages = lambda messages: [m.metadata.message_id for m in messages]  # type: ignore[method-assign]
    got = exchange(grid, sent, 5.0, "test", max_reply_bytes=64 * 1024)
    by_node = {r.metadata.src_node_id: r for r in got}
    assert not by_node[11].has_error()
    assert by_node[12].has_error()
    reason = str(by_node[12].error.reason)
    assert reason.startswith("the reply is over 0.1 MiB") and "trust.max-update-mb" in reason
    pulled = sum(1 for kind, mid in link.log if kind == "pull" and mid == big.metadata.message_id)
    assert pulled <= 64 * 1024 // 4096 + 4 < chunks  # the budget, and what was in flight
    assert ("confirm", big.metadata.message_id) in link.log


def test_the_budget_is_the_largest_accepted_update_and_room_for_the_rest() -> None:
    from common.config import RunConfig
    from server.validation import REPLY_OVERHEAD_BYTES, reply_budget

    cfg = RunConfig().replace({"trust.max-update-mb": 3.0})
    assert reply_budget(cfg) == 3 * 2**20 + REPLY_OVERHEAD_BYTES == 3 * 2**20 + 16 * 2**20


def _contents(msg: Message) -> dict[str, bytes]:
    """The message's objects as the SuperLink holds them (Flower's own deflation)."""
    return {oid: obj.deflate() for oid, obj in get_all_nested_objects(msg).items()}


def _update(monkeypatch: pytest.MonkeyPatch, sizes: dict[str, int], chunk: int) -> Message:
    """A reply with float32 arrays of ``sizes`` values, cut in chunks of ``chunk`` bytes."""
    import flwr.app.message.array as flower_array

    monkeypatch.setattr(flower_array, "FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE", chunk)
    rng = np.random.default_rng(3)
    arrays = ArrayRecord({k: Array(rng.standard_normal(n).astype(np.float32))
                          for k, n in sizes.items()})  # fmt: skip
    arrays["zeros"] = Array(np.zeros(1000, np.float32))  # identical chunks, twice
    arrays["zeros2"] = Array(np.zeros(600, np.float32))  # and shared with another array
    arrays["empty"] = Array(np.zeros(0, np.float32))
    arrays["steps"] = Array(np.arange(7, dtype=np.int64).reshape(7, 1))
    reply = Message(RecordDict({"arrays": arrays, "c": ConfigRecord({"num-examples": 5})}),
                    reply_to=_instruction(11))  # fmt: skip
    reply.metadata.__dict__["_message_id"] = reply.object_id
    return reply


def test_a_reply_is_inflated_as_flower_inflates_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every array's dtype, shape and bytes, the other records, and so the message's own
    object ID: the same as Flower's ``inflate_object_from_contents`` gives."""
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    from server.pull import inflate_reply

    reply = _update(monkeypatch, {"w": 5000, "b": 3}, chunk=1024)
    mid = reply.metadata.message_id
    contents = _contents(reply)
    ours = inflate_reply(mid, dict(contents))
    theirs = cast(Message, inflate_object_from_contents(mid, dict(contents)))
    a, b = cast(ArrayRecord, ours.content["arrays"]), cast(ArrayRecord, theirs.content["arrays"])
    assert list(a) == list(b) == list(cast(ArrayRecord, reply.content["arrays"]))
    for key in a:
        assert (a[key].dtype, a[key].shape, a[key].stype) == (b[key].dtype, b[key].shape,
                                                              b[key].stype)  # fmt: skip
        assert a[key].data == b[key].data
    assert dict(ours.content["c"]) == {"num-examples": 5}
    ours.metadata.__dict__["_message_id"] = mid
    assert ours.object_id == theirs.object_id == reply.object_id


def test_only_a_packed_array_is_inflated_as_a_view(monkeypatch: pytest.MonkeyPatch) -> None:
    """A packed array is read as views (``common.packing``); every other array's data is
    ``bytes``, which an ArrayRecord made from existing Arrays needs."""
    from common.packing import pack_content
    from server.pull import inflate_reply

    reply = _update(monkeypatch, {"w": 5000, "b": 3}, chunk=1024)
    arrays = cast(ArrayRecord, reply.content["arrays"])
    content = pack_content(RecordDict({"packed": arrays, "one": ArrayRecord({"s": arrays["w"]})}))
    packed = Message(content, reply_to=_instruction(11))
    packed.metadata.__dict__["_message_id"] = packed.object_id
    got = inflate_reply(packed.metadata.message_id, _contents(packed))
    kinds = {name: type(array.data) for name, record in got.content.items()
             if isinstance(record, ArrayRecord) for array in record.values()}  # fmt: skip
    assert kinds == {"packed": memoryview, "one": bytes}
    ArrayRecord(dict(cast(ArrayRecord, got.content["one"])))  # takes it as it is


def test_inflating_a_reply_holds_its_update_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's inflation holds the chunks' copies and the arrays together (about twice
    the update above its contents); here the contents go as the arrays come, so the
    most held above the contents is about two of its arrays."""
    import tracemalloc

    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    from server.pull import inflate_reply

    sizes = {f"layer{i}": 250_000 for i in range(10)}  # 10 MB in ten 1 MB arrays
    size = 4 * sum(sizes.values())
    peaks = {}
    for name, inflate in (("ours", inflate_reply), ("flower", inflate_object_from_contents)):
        tracemalloc.start()  # before the contents are made: their release counts too
        reply = _update(monkeypatch, sizes, chunk=64 * 1024)
        mid, contents = reply.metadata.message_id, _contents(reply)
        del reply
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        got = inflate(mid, contents)
        peaks[name] = (tracemalloc.get_traced_memory()[1] - start) / size
        tracemalloc.stop()
        assert not contents  # emptied as it went, both ways
        del got
    assert peaks["ours"] < 0.3, peaks  # two arrays of ten, and the bookkeeping
    assert peaks["flower"] > 0.9, peaks


PACKED_REPLY_PEAK = """
import sys
import numpy as np
import flwr.app.message.array as flower_array
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.task_identity import TaskIdentity
from common.malloc import return_large_blocks
from common.packing import PACKED, STYPE
from server.pull import inflate_reply

assert return_large_blocks()  # as the ServerApp does: freed chunks leave at once
TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # flower_task
flower_array.FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE = 1 << 20
size = 64 << 20
data = np.random.default_rng(5).bytes(size)
packed = ArrayRecord({PACKED: Array("uint8", (size,), STYPE, data)})  # common.packing's
reply = Message(RecordDict({"arrays": packed}), dst_node_id=3, message_type="train")
mid = reply.object_id
contents = {oid: o.deflate() for oid, o in get_all_nested_objects(reply).items()}
del reply


def kb(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # the high-water mark starts again from the resident size now
base = kb("VmRSS")
got = inflate_reply(mid, contents)
peak = kb("VmHWM")
joined = got.content["arrays"][PACKED].data
assert not contents and isinstance(joined, memoryview) and bytes(joined) == data
print((peak - base) * 1024 / size)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc only")
def test_a_packed_reply_is_held_once_while_its_chunks_are_joined() -> None:
    """A packed reply is one array of all its chunks. Its buffer is filled as the chunks
    go, so the process's resident high-water mark rises above the pulled contents by
    about a chunk; a ``bytes`` join, which holds every chunk until the whole array is
    built, rose by the whole update (64 MiB in 1 MiB chunks: 1.0). Its own process: the
    allocator setting of the ServerApp (``common.malloc``) is not this suite's. Any
    other array is still ``bytes`` (see the test after)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", PACKED_REPLY_PEAK], capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    above = float(done.stdout.split()[-1])
    assert above < 0.25, above


class _Body:
    """A response body in a reference cycle, as Flower's HTTP client leaves each one."""

    def __init__(self, content: bytes) -> None:
        self.content, self.me = content, self


def test_each_pulled_objects_response_is_freed_before_the_reply_is_handed_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cycle collector is off here (its own schedule is what is not relied on): with
    a collection every 64 kB pulled and once the pull of a reply that large has ended,
    none of the objects' responses, left in cycles, is alive when the reply is handed
    on (each reply: 400 kB in 16 kB chunks)."""
    import gc
    import weakref

    import flwr.app.message.array as flower_array

    from server import pull

    monkeypatch.setattr(pull, "GC_BYTES", 64_000)
    monkeypatch.setattr(flower_array, "FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE", 16_000)
    sent = [_instruction(n) for n in (11, 12)]
    replies = []
    for i, to in enumerate(sent):
        values = np.random.default_rng(i).standard_normal(100_000).astype(np.float32)
        arrays = ArrayRecord({"w": Array(values)})  # distinct chunks: none sent once
        replies.append(Message(RecordDict({"arrays": arrays}), reply_to=to))
        replies[-1].metadata.__dict__["_message_id"] = replies[-1].object_id
    link = _Link(replies)
    bodies: list[tuple[weakref.ref[_Body], int]] = []
    serve = link.PullObject

    def pull_object(request: Any) -> PullObjectResponse:
        response = serve(request)
        body = _Body(response.object_content)
        bodies.append((weakref.ref(body), len(body.content)))
        return response

    monkeypatch.setattr(link, "PullObject", pull_object)
    gc.disable()
    try:
        for reply in pull_replies(_grid(link), [m.metadata.message_id for m in sent]):
            assert [body for body, _ in bodies if body() is not None] == []
            assert sum(size for _, size in bodies) > 400_000
            del reply
    finally:
        gc.enable()
    assert len(bodies) == len(link.objects)


def test_a_malformed_array_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """An array whose head and body disagree on its chunks, or names a chunk past its
    head's list: ``UnreadableReply`` naming the array (Flower's own inflation raised an
    IndexError out of the ServerApp's round for the second)."""
    from server.pull import UnreadableReply, inflate_reply

    for change, why in ((lambda ids: ids[:-1], "do not agree"),
                        (lambda ids: [*ids, 99], "IndexError")):  # fmt: skip
        reply = _update(monkeypatch, {"w": 3000}, chunk=1024)
        contents = _contents(reply)
        oid = cast(ArrayRecord, reply.content["arrays"])["w"].object_id
        head, _, body = contents[oid].partition(b"\x00")
        meta = json.loads(body)
        meta["arraychunk_ids"] = change(meta["arraychunk_ids"])
        contents[oid] = head + b"\x00" + json.dumps(meta).encode()
        with pytest.raises(UnreadableReply, match=f"array {oid[:12]}: .*{why}"):
            inflate_reply(reply.metadata.message_id, contents)


def test_a_reply_that_unfolds_past_the_budget_is_its_sites_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An array may name one chunk many times: 4 MB of zeros cross the wire as a few
    4 KB chunks. Past the budget once unfolded, the reply is the site's error, before any
    buffer of that size is made; a reply whose array names a chunk it does not have is
    the site's error too (it used to stop the round); the third site's reply arrives."""
    import flwr.app.message.array as flower_array

    monkeypatch.setattr(flower_array, "FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE", 4096)
    sent = [_instruction(n) for n in (11, 12, 13)]
    zeros = ArrayRecord({"w": Array(np.zeros(1_000_000, np.float32))})
    unfolding = Message(RecordDict({"arrays": zeros}), reply_to=sent[1])
    unfolding.metadata.__dict__["_message_id"] = unfolding.object_id
    broken = _reply(sent[2], 2.0)
    link = _Link([_reply(sent[0], 1.0), unfolding, broken])
    assert sum(len(c) for c in _contents(unfolding).values()) < 20_000  # on the wire
    oid = cast(ArrayRecord, broken.content["arrays"])["w"].object_id
    head, _, body = link.objects[oid].partition(b"\x00")
    meta = json.loads(body)
    link.objects[oid] = head + b"\x00" + json.dumps({**meta, "arraychunk_ids": [5]}).encode()

    grid = _grid(link)
    grid.push_messages = lambda messages: [m.metadata.message_id for m in messages]  # type: ignore[method-assign]
    got = {r.metadata.src_node_id: r for r in exchange(grid, sent, 5.0, "test",
                                                       max_reply_bytes=1 << 20)}  # fmt: skip
    assert not got[11].has_error()
    assert str(got[12].error.reason) == (
        "the reply could not be read: its arrays unfold to more than 1.0 MiB, the most the "
        "server accepts from a site (trust.max-update-mb)"
    )
    assert str(got[13].error.reason).startswith(
        f"the reply could not be read: array {oid[:12]}: IndexError"
    )
