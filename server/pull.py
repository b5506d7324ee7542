"""Replies pulled from the SuperLink one at a time, so the ServerApp holds one at once.

Flower's ``HttpGrid.pull_messages`` asks the SuperLink which of the given replies are in
(one request, metadata only), then pulls every one of them, object by object, and
inflates them all before it returns the list. When several sites finish together, the
ServerApp holds all their updates at once: with a 110M-parameter model (442 MB) and
three sites that was most of the ServerApp's peak of 6.8 times the model in
``hepafed bench --sections large-model``.

``pull_replies`` makes the same requests of the same API, but it is a generator: each
reply's objects are pulled and inflated only when the caller asks for it, so the reply
before it has been handed on (``server.exchange`` folds it and lets it go) before the
next one's bytes arrive. The replies are confirmed to the SuperLink (which then deletes
their objects) one by one, as Flower does, once their objects are in. A reply whose
objects cannot be pulled becomes an error reply from the SuperLink, as in Flower; the
exchange then files it under the site it was sent to.

A reply is inflated by ``inflate_reply``: its arrays are joined from their chunks
straight into buffers of their final size, each chunk's content dropped as soon as it is
copied, so a reply costs about its own size, not the 2.4 times of Flower's inflation. A
packed array's ``data`` (``common.packing``: the whole update of a packed reply) is a
read-only view of its buffer, not ``bytes``; any other array's is copied into ``bytes``.

The SuperLink forgets which replies it listed as soon as it answers (it deletes the
instructions they answer), so every listed reply must be pulled: the caller iterates the
generator to the end. On Flower's in-memory grid (simulation) messages are Python
objects with nothing to inflate, and its own ``pull_messages`` is used.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import numpy as np
from flwr.app import Array, ArrayRecord, Error, Message, Metadata
from flwr.app.message import make_message
from flwr.common.constant import ErrorCode
from flwr.proto.message_pb2 import ConfirmMessageReceivedRequest  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import PullAppMessagesRequest  # pylint: disable=E0611
from flwr.serverapp import Grid
from flwr.supercore.constant import HEAD_BODY_DIVIDER, HEAD_VALUE_DIVIDER, SYSTEM_MESSAGE_TYPE
from flwr.supercore.date import now
from flwr.supercore.inflatable.inflatable_object import (
    InflatableObject,
    get_object_head_values_from_object_content,
    iterate_object_tree,
)
from flwr.supercore.inflatable.inflatable_protobuf_utils import make_pull_object_fn_protobuf
from flwr.supercore.inflatable.inflatable_utils import (
    ObjectPullError,
    inflate_object_from_contents,
    pull_objects,
)
from flwr.superlink.grid.http_grid import HttpGrid

from common.packing import STYPE as PACKED_STYPE

log = logging.getLogger(__name__)
ARRAY_HEAD = b"Array" + HEAD_VALUE_DIVIDER.encode()  # how an Array object's content begins
GC_BYTES = 32 * 2**20  # pulled between two runs of the cycle collector (``_Counted``)


class OverBudget(ObjectPullError):
    """A reply's objects add up to more bytes than the server accepts from a site."""

    def __init__(self, object_id: str, reason: str) -> None:
        Exception.__init__(self, reason)
        self.object_id = object_id


def pull_replies(
    grid: Grid, message_ids: Iterable[str], max_bytes: int | None = None
) -> Iterator[Message]:
    """The replies among ``message_ids`` that have arrived, each pulled and inflated when
    the caller asks for it (see the module docstring); iterate to the end.

    ``max_bytes`` bounds what one reply may bring into the ServerApp: its objects are
    counted as they arrive, and a reply past the bound is not pulled further (a few
    objects already in flight still arrive) but confirmed, so the SuperLink drops it
    too, and becomes an error reply saying so. A site cannot make the server hold a
    reply larger than this, whatever it sends."""
    if not isinstance(grid, HttpGrid):
        arrived = list(grid.pull_messages(message_ids))
        arrived.reverse()
        while arrived:  # each released by the caller, not kept here to the end
            yield arrived.pop()
        return
    client = grid._runtime_client
    run_id = grid.run.run_id
    try:
        listed = client.PullMessages(PullAppMessagesRequest(message_ids=list(message_ids)))
    except httpx.HTTPStatusError as e:
        if e.response.status_code != httpx.codes.REQUEST_ENTITY_TOO_LARGE:
            raise
        log.error("the SuperLink refused to list the replies: the request is too large")
        return
    pull_object_fn = make_pull_object_fn_protobuf(
        pull_object_protobuf=client.PullObject, node=grid.node, run_id=run_id
    )
    pairs = list(zip(listed.messages_list, listed.message_object_trees, strict=True))
    del listed
    pairs.reverse()
    while pairs:
        proto, tree = pairs.pop()
        message_id = proto.metadata.message_id
        confirm = ConfirmMessageReceivedRequest(
            node=grid.node, run_id=run_id, message_object_id=message_id
        )
        counted = _Counted(pull_object_fn, max_bytes)
        try:
            contents = pull_objects(
                [t.object_id for t in iterate_object_tree(tree)], pull_object_fn=counted
            )
        except OverBudget as e:
            client.ConfirmMessageReceived(confirm)  # the SuperLink drops it too
            yield _refused(grid, run_id, proto.metadata.reply_to_message_id, str(e))
            continue
        except ObjectPullError as e:
            yield _unavailable(grid, run_id, proto.metadata.reply_to_message_id, str(e))
            continue
        finally:
            counted.settle()
        client.ConfirmMessageReceived(confirm)
        try:
            message = inflate_reply(message_id, contents, max_bytes)  # empties ``contents``
        except UnreadableReply as e:
            why = f"the reply could not be read: {e}"
            yield _refused(grid, run_id, proto.metadata.reply_to_message_id, why)
            continue
        finally:
            del contents
        message.metadata.__dict__["_message_id"] = message_id  # as Flower sets it
        yield message
        del message  # released before the next reply's objects are pulled


class UnreadableReply(ValueError):
    """A reply's objects do not make a message the server accepts (``inflate_reply``)."""


def inflate_reply(
    message_id: str, contents: dict[str, bytes], max_bytes: int | None = None
) -> Message:
    """The message ``message_id`` from its objects' ``contents`` (emptied as it goes).

    Flower's ``Array.inflate`` copies every chunk's body out of its content, keeps all the
    chunks of the message until the whole message is inflated, and joins an array's chunks
    in a growing buffer: about 2.4 times the update at once. Here each array's data is
    copied from its chunks' contents into one buffer of its final size (``_joined``: a
    read-only view), and a chunk's content is dropped once its last use is copied, so an
    update costs its own size plus one chunk: a packed reply is one array of all the
    update's chunks.

    The contents are the site's: every array must be well formed (its metadata typed, its
    chunks all there and all named in its head), and the arrays' data together at most
    ``max_bytes``, since an array may name one chunk many times (Flower's way to send
    repeated data once) and a small reply could otherwise unfold to any size. Anything
    else that stops the message being inflated is ``UnreadableReply`` too, saying what."""
    plans: dict[str, tuple[Any, list[str]]] = {}
    total = 0
    for oid, content in contents.items():
        if content.startswith(ARRAY_HEAD):
            meta, chunks = plans[oid] = _array_plan(oid, content, contents)
            total += sum(_body_len(contents[chunk]) for chunk in chunks)
            if max_bytes is not None and total > max_bytes:
                raise UnreadableReply(
                    f"its arrays unfold to more than {max_bytes / 2**20:.1f} MiB, the most "
                    "the server accepts from a site (trust.max-update-mb)"
                )
    objects: dict[str, InflatableObject] = {}
    uses = Counter(chunk for _, chunks in plans.values() for chunk in chunks)
    # Flower's ArrayRecord rebuilds its Arrays, which take bytes only: each array is made
    # with a stand-in of its own (an object told apart by identity) and its data set after
    # (only a packed array, read as views by common.packing: any other array gets bytes,
    # which an ArrayRecord made from existing Arrays, common.weights.subset say, needs)
    joined: dict[int, tuple[bytes, memoryview]] = {}
    for oid, (meta, chunks) in plans.items():
        if meta["stype"] == PACKED_STYPE:
            data = oid.encode()  # the stand-in
            joined[id(data)] = (data, _joined(chunks, contents, uses))
        else:
            data = b"".join(_body(contents[chunk]) for chunk in chunks)  # one copy
            for chunk in chunks:
                _used(chunk, contents, uses)
        del contents[oid]
        objects[oid] = Array(dtype=meta["dtype"], shape=tuple(meta["shape"]),
                             stype=meta["stype"], data=data)  # fmt: skip
        del data
    try:
        message = inflate_object_from_contents(message_id, contents, objects=objects)
    except Exception as e:  # the site's bytes: whatever Flower's inflation makes of them
        raise UnreadableReply(f"{type(e).__name__}: {e}") from e
    if not isinstance(message, Message):
        raise UnreadableReply(f"its root object is a {type(message).__name__}, not a message")
    if message.has_content():
        for record in message.content.values():
            for array in record.values() if isinstance(record, ArrayRecord) else ():
                if array.stype != PACKED_STYPE:
                    continue
                entry = joined.get(id(array.data))
                if entry is None or array.data is not entry[0]:  # Flower copied its data
                    raise RuntimeError("an inflated array does not hold its joined data")
                array.data = entry[1]  # type: ignore[assignment]
    return message


def _joined(chunks: list[str], contents: dict[str, bytes], uses: Counter[str]) -> memoryview:
    """The bodies of ``chunks`` one after another, as a read-only view of one buffer of
    their total size; each chunk's content is deleted from ``contents`` as soon as its
    last use (``uses``, decremented here) is copied. The buffer is mapped, not filled
    (``np.empty``; a ServerApp serves large blocks from their own maps,
    ``common.malloc``), so a page is resident only once a chunk is copied into it: while
    the bytes move from the chunks to the array, the reply is held about once, not
    twice as when a ``bytes`` object (which can only be built whole) is joined from
    chunks that are all still held."""
    buffer = np.empty(sum(_body_len(contents[chunk]) for chunk in chunks), np.uint8)
    at = 0
    for chunk in chunks:
        body = np.frombuffer(_body(contents[chunk]), np.uint8)
        buffer[at : at + body.size] = body
        at += body.size
        del body
        _used(chunk, contents, uses)
    return buffer.data.toreadonly()


def _used(chunk: str, contents: dict[str, bytes], uses: Counter[str]) -> None:
    """One use of ``chunk`` is copied: its content goes from ``contents`` after the last."""
    uses[chunk] -= 1
    if uses[chunk] == 0:
        del contents[chunk]


def _body(content: bytes) -> memoryview:
    """An object's body within its content, without copying it."""
    return memoryview(content)[content.find(HEAD_BODY_DIVIDER) + len(HEAD_BODY_DIVIDER) :]


def _body_len(content: bytes) -> int:
    return len(content) - content.find(HEAD_BODY_DIVIDER) - len(HEAD_BODY_DIVIDER)


def _array_plan(oid: str, content: bytes, contents: dict[str, bytes]) -> tuple[Any, list[str]]:
    """(metadata, chunk IDs in order) of the ``Array`` object ``oid``; UnreadableReply
    when it is not well formed or a chunk it names is not among ``contents``."""
    try:
        _, children, _ = get_object_head_values_from_object_content(content)
        meta = json.loads(bytes(_body(content)))
        chunks = [children[i] for i in meta["arraychunk_ids"]]
        typed = all(isinstance(meta[k], t) for k, t in (("dtype", str), ("stype", str),
                                                         ("shape", list)))  # fmt: skip
        heads = [get_object_head_values_from_object_content(contents[c]) for c in children]
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise UnreadableReply(f"array {oid[:12]}: {type(e).__name__}: {e}") from e
    plain = all(kind == "ArrayChunk" and not grandchildren for kind, grandchildren, _ in heads)
    if not (typed and plain and set(chunks) == set(children)):
        raise UnreadableReply(
            f"array {oid[:12]}: its metadata and chunks do not agree (dtype, shape and stype "
            "typed, every chunk named in its head used, each an ArrayChunk)"
        )
    return meta, chunks


class _Counted:
    """``pull`` (one object's bytes by ID), raising ``OverBudget`` once the bytes pulled
    through it exceed ``max_bytes`` (None: no bound). Flower calls it from its pull
    threads.

    Every ``GC_BYTES`` pulled the cycle collector runs in full, and once more when the
    reply's pull ends (``settle``) if it brought that much: Flower's HTTP client (httpx)
    leaves every response in a reference cycle (response and stream), with its body, a
    whole 5 MB chunk, which only the collector frees. On the collector's own schedule,
    responses still in flight in the other pull thread are promoted to its oldest
    generation, which it seldom visits: a 122 MB reply's pull held half as much again in
    dead bodies, and more stayed behind after it. A pull thread's collection is skipped
    while the other thread's runs (CPython collects in one thread at a time), so the
    bound during a pull is approximate; the collection in ``settle`` is made when no pull
    runs. The deployed ServerApp freezes its start-up heap (``server.app``), so a full
    collection takes about a millisecond."""

    def __init__(self, pull: Callable[[str], bytes], max_bytes: int | None) -> None:
        self.pull, self.max_bytes = pull, max_bytes
        self.total = self._uncollected = self._pulled = 0
        self._lock = threading.Lock()

    def settle(self) -> None:
        """The dead responses of a large reply's pull are freed (see the class docstring):
        call it when the pull has ended, from the thread that pulled."""
        if self._pulled >= GC_BYTES:
            gc.collect()

    def __call__(self, object_id: str) -> bytes:
        content = self.pull(object_id)
        with self._lock:
            self._pulled += len(content)
            self._uncollected += len(content)
            collect = self._uncollected >= GC_BYTES
            if collect:
                self._uncollected = 0
        if collect:
            gc.collect()  # the dead responses' bodies (see the class docstring)
        if self.max_bytes is None:
            return content
        with self._lock:
            self.total += len(content)
            total = self.total
        if total > self.max_bytes:
            raise OverBudget(
                object_id,
                f"the reply is over {self.max_bytes / 2**20:.1f} MiB ({total / 2**20:.1f} MiB "
                "pulled when the server stopped): larger than the server accepts from a site "
                "(trust.max-update-mb); it was not pulled further",
            )
        return content


def _refused(grid: HttpGrid, run_id: int, reply_to: str, why: str) -> Message:
    """The error reply for a reply the server stopped pulling (``OverBudget``)."""
    return _error_reply(grid, run_id, reply_to, ErrorCode.UNKNOWN, why)


def _unavailable(grid: HttpGrid, run_id: int, reply_to: str, why: str) -> Message:
    """The error reply Flower makes for a reply whose objects cannot be pulled."""
    reason = (
        "the reply's objects could not be pulled from the SuperLink (the site may not have "
        f"finished sending it before its upload expired): {why}"
    )
    return _error_reply(grid, run_id, reply_to, ErrorCode.MESSAGE_UNAVAILABLE, reason)


def _error_reply(grid: HttpGrid, run_id: int, reply_to: str, code: int, reason: str) -> Message:
    """An error reply from the SuperLink's node to the message ``reply_to`` (the exchange
    files it under the site that message went to)."""
    metadata = Metadata(
        run_id=run_id,
        message_id="",
        src_node_id=grid.node.node_id,
        dst_node_id=grid.node.node_id,
        message_type=SYSTEM_MESSAGE_TYPE,
        group_id="",
        ttl=0,
        reply_to_message_id=reply_to,
        created_at=now().timestamp(),
    )
    return make_message(metadata=metadata, error=Error(code=code, reason=reason))
