"""One array per record on the wire: how the model and the updates cross a deployment.

Flower moves a message as a tree of objects, one per record, per array and per 5 MB
chunk of an array, and a SuperNode pulls them one request at a time. The default
model is 65 tensors, so every instruction and every reply was about 130 round
trips through the SuperLink's gateway, most of a deployed round's time
(``docs/results/bench.md``, section deploy).

At the message boundary each ArrayRecord of two or more arrays therefore travels as
one array (``PACKED``, stype ``STYPE``): the arrays' serialised bytes one after
another, and, under the record key ``PACKING``, an index of what was packed (per
record: each array's name, dtype, stype, shape and byte count, in order).
Unpacking gives back Arrays with the same names, order and bytes, so everything
signed or hashed (``common.signing``) is the same as if the arrays had travelled
one by one:

- the server packs an instruction *after* signing it and unpacks a reply *before*
  verifying the site's signature (``server.exchange``);
- a site unpacks an instruction before its trust mod verifies it, and packs its
  reply after the reply is signed (``packing_mod``, the outermost mod), and only
  when the instruction came packed.

The index is read as untrusted input: it must account for every byte of the packed
array, name each array once, and list only records that hold exactly one packed
array; anything else is refused before any mod or check sees the message. What the
arrays hold is then checked as before, by the code that reads them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode

Next = Callable[[Message, Context], Message]

PACKING = "hepafed.packing"  # RecordDict key of the index (a ConfigRecord)
INDEX = "index"  # its one field: the index as JSON
PACKED = "hepafed.packed"  # the one key of a packed ArrayRecord
STYPE = "hepafed.packed/1"  # the packed array's stype
VERSION = 1
MAX_INDEX_CHARS = 16 * 1024 * 1024  # a 100k-tensor model's index is a few MB


class PackingError(ValueError):
    """A packed message is inconsistent: its index does not describe its arrays."""


Shared = dict[int, tuple[ArrayRecord, ArrayRecord, list[list[Any]]]]
"""ArrayRecords packed for a batch of messages: id -> (the record, packed, its index)."""


def pack_content(content: RecordDict, shared: Shared | None = None) -> RecordDict:
    """``content`` with every ArrayRecord of two or more arrays as one packed array, and
    the index under ``PACKING``; ``content`` itself if there is nothing to pack. With
    ``shared``, a record already packed for another message of the batch (the same
    object: one model sent to every site) is not packed again: the messages share it."""
    if PACKING in content:
        raise PackingError(f"the message already holds a record {PACKING!r}")
    index: dict[str, list[list[Any]]] = {}
    packed: dict[str, Any] = {}
    for key, record in content.items():
        if not (isinstance(record, ArrayRecord) and len(record) > 1):
            packed[key] = record
            continue
        known = None if shared is None else shared.get(id(record))
        if known is None or known[0] is not record:
            known = (record, *_pack_record(record))
            if shared is not None:
                shared[id(record)] = known
        packed[key], index[key] = known[1], known[2]
    if not index:
        return content
    packed[PACKING] = ConfigRecord(
        {INDEX: json.dumps({"version": VERSION, "records": index}, separators=(",", ":"))}
    )
    return RecordDict(packed)


def _pack_record(record: ArrayRecord) -> tuple[ArrayRecord, list[list[Any]]]:
    arrays = [(name, cast(Array, record[name])) for name in record]
    entries = [[n, a.dtype, a.stype, list(a.shape), len(a.data)] for n, a in arrays]
    data = b"".join(a.data for _, a in arrays)
    array = Array(dtype="uint8", shape=(len(data),), stype=STYPE, data=data)
    return ArrayRecord({PACKED: array}), entries


def is_packed(content: RecordDict) -> bool:
    return PACKING in content


def unpack_content(content: RecordDict, copy: bool = True) -> RecordDict:
    """``content`` with each packed ArrayRecord back as its arrays, and without the index;
    ``PackingError`` naming the record and what is wrong when the two disagree.

    With ``copy=False`` each array's ``data`` is a ``memoryview`` into the packed bytes
    instead of a copy (the server's replies: read through ``common.array_views``, hashed,
    folded, never sent on as they are): a large model's reply is then in memory once."""
    if PACKING not in content:
        return content
    index = _read_index(content[PACKING])
    out: dict[str, Any] = {}
    for key, record in content.items():
        if key == PACKING:
            continue
        if key not in index:
            if isinstance(record, ArrayRecord) and any(
                cast(Array, record[n]).stype == STYPE for n in record
            ):
                raise PackingError(f"record {key!r} holds a packed array the index does not list")
            out[key] = record
            continue
        out[key] = _unpack_record(key, record, index[key], copy)
    missing = sorted(set(index) - set(out))
    if missing:
        raise PackingError(f"the index lists records the message does not hold: {missing}")
    return RecordDict(out)


def _read_index(record: Any) -> dict[str, list[tuple[str, str, str, tuple[int, ...], int]]]:
    where = f"record {PACKING!r}"
    if not isinstance(record, ConfigRecord) or set(record) != {INDEX}:
        raise PackingError(f"{where} must be a ConfigRecord with the one field {INDEX!r}")
    text = record[INDEX]
    if not isinstance(text, str) or len(text) > MAX_INDEX_CHARS:
        raise PackingError(f"{where}: {INDEX!r} must be JSON text of at most {MAX_INDEX_CHARS}")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise PackingError(f"{where}: {INDEX!r} is not JSON ({e})") from e
    if not isinstance(raw, dict) or raw.get("version") != VERSION:
        raise PackingError(f"{where}: not a version-{VERSION} packing index")
    records = raw.get("records")
    if not isinstance(records, dict) or not records:
        raise PackingError(f"{where}: 'records' must map record keys to their arrays")
    return {str(k): _entries(k, v) for k, v in records.items()}


def _entries(key: str, raw: Any) -> list[tuple[str, str, str, tuple[int, ...], int]]:
    where = f"record {PACKING!r}, entry {key!r}"
    if not isinstance(raw, list) or not raw:
        raise PackingError(f"{where}: must list the record's arrays")
    out = []
    seen: set[str] = set()
    for i, e in enumerate(raw):
        ok = (
            isinstance(e, list)
            and len(e) == 5
            and all(isinstance(s, str) for s in e[:3])
            and isinstance(e[3], list)
            and all(_count(d) for d in e[3])
            and _count(e[4])
        )
        if not ok:
            raise PackingError(
                f"{where}, array {i}: must be [name, dtype, stype, shape, bytes] with a "
                "list of non-negative integers as shape and a non-negative byte count"
            )
        if not e[0] or e[0] in seen:
            raise PackingError(f"{where}, array {i}: name {e[0]!r} is empty or repeated")
        seen.add(e[0])
        out.append((e[0], e[1], e[2], tuple(e[3]), e[4]))
    return out


def _count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _unpack_record(
    key: str, record: Any, entries: list[tuple[str, str, str, tuple[int, ...], int]], copy: bool
) -> ArrayRecord:
    if not isinstance(record, ArrayRecord) or list(record) != [PACKED]:
        raise PackingError(f"record {key!r} must be an ArrayRecord with the one array {PACKED!r}")
    array = cast(Array, record[PACKED])
    if array.stype != STYPE:
        raise PackingError(f"record {key!r}: the packed array's stype is not {STYPE!r}")
    data = array.data
    total = sum(e[4] for e in entries)
    if total != len(data):
        raise PackingError(
            f"record {key!r}: the index accounts for {total} bytes, the packed array holds "
            f"{len(data)}"
        )
    view = memoryview(data)
    parts, offset = [], 0
    for *_, size in entries:
        parts.append(view[offset : offset + size])
        offset += size
    out = ArrayRecord(
        {
            name: Array(dtype=dtype, shape=shape, stype=stype, data=part.tobytes() if copy else b"")
            for (name, dtype, stype, shape, _), part in zip(entries, parts, strict=True)
        }
    )
    if not copy:  # Flower's Array and ArrayRecord take bytes only: views are set after
        for (name, *_), part in zip(entries, parts, strict=True):
            cast(Array, out[name]).data = part  # type: ignore[assignment]
    return out


def pack_message(msg: Message, shared: Shared | None = None) -> Message:
    """``msg`` with its content packed (in place: its metadata is unchanged)."""
    msg.content = pack_content(msg.content, shared)
    return msg


def packing_mod(msg: Message, context: Context, call_next: Next) -> Message:
    """A site's outermost mod: a packed instruction is unpacked before any other mod sees
    it (refused with an error reply if inconsistent), and the reply to it is packed
    after every other mod (the site's signature among them) has run."""
    if not msg.has_content() or not is_packed(msg.content):
        return call_next(msg, context)
    try:
        msg.content = unpack_content(msg.content)
    except PackingError as e:
        reason = f"the server's message could not be unpacked: {e}"
        return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)
    reply = call_next(msg, context)
    if reply.has_content():
        reply.content = pack_content(reply.content)
    return reply
