"""Reading and checking a run's audit trail: the entry format and ``verify_trail``.

The format (``server.audit`` writes it): each line of ``RUN_DIR/audit.jsonl`` is one entry
``{"seq", "time", "kind", "data", "prev", "hash"}`` in canonical JSON, ``hash`` the SHA-256 of
the entry without it, ``prev`` the previous entry's hash (64 zeros for the first);
``audit.head.json`` holds the last seq, hash and entry count, signed by the server.
``verify_trail`` re-derives every hash and link and names each edited, removed, inserted or
reordered entry, entries removed from the end, and a head whose signature does not verify.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.signing import canonical as canonical_json

AUDIT_FILE = "audit.jsonl"
HEAD_FILE = "audit.head.json"
GENESIS = "0" * 64
ENTRY_FIELDS = frozenset({"seq", "time", "kind", "data", "prev", "hash"})
HEAD_FIELDS = ("seq", "hash", "entries")

logger = logging.getLogger(__name__)


class AuditError(RuntimeError):
    """The audit trail on disk cannot be continued (it is corrupt, or incomplete)."""


def canonical(obj: Any) -> bytes:
    """The canonical JSON bytes that hashes and signatures are computed over."""
    return canonical_json(obj)


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 hex of an entry's canonical JSON without its ``hash`` field."""
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def head_bytes(head: Mapping[str, Any]) -> bytes:
    """The bytes the server signs for a head: canonical ``{"seq", "hash", "entries"}``."""
    return canonical({k: head[k] for k in HEAD_FIELDS})


def _is_hex64(value: Any) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


@dataclass(frozen=True)
class AuditReport:
    """What ``verify_trail`` found: entries read, problems (empty when intact), signed head."""

    entries: int
    problems: list[str]
    head_signed: bool

    @property
    def ok(self) -> bool:
        """True when the chain and the head verified without a problem."""
        return not self.problems


@dataclass(frozen=True)
class _Item:
    """One well-formed entry and the line it was read from."""

    line: int
    seq: int
    prev: str
    hash: str


def _at(item: _Item | None) -> str:
    return "the start of the trail" if item is None else f"line {item.line} (seq {item.seq})"


def _seq_list(items: list[_Item]) -> str:
    """The seqs of ``items``, shortened in the middle when there are many."""
    seqs = [str(item.seq) for item in items]
    return ", ".join(seqs if len(seqs) <= 8 else [*seqs[:4], "...", *seqs[-3:]])


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _read_lines(path: Path) -> tuple[list[_Item], list[int], list[str]]:
    """Parse the trail: well-formed entries, unreadable line numbers, per-line problems."""
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    torn = lines[-1] != b""
    if not torn:
        lines.pop()
    items: list[_Item] = []
    bad: list[int] = []
    problems: list[str] = []
    for number, blob in enumerate(lines, start=1):
        if torn and number == len(lines):
            problems.append(f"line {number}: no newline at the end: the last write was cut off")
        if not blob:
            bad.append(number)
            problems.append(f"line {number}: empty line")
            continue
        try:
            obj: Any = json.loads(blob.decode("utf-8"), parse_constant=_reject_constant)
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            bad.append(number)
            problems.append(f"line {number}: not JSON ({e})")
            continue
        why = _malformed(obj)
        if why:
            bad.append(number)
            problems.append(f"line {number}: not an audit entry: {why}")
            continue
        item = _Item(number, obj["seq"], obj["prev"], obj["hash"])
        if entry_hash(obj) != obj["hash"]:
            problems.append(f"{_at(item)}: content edited, hash does not match")
        elif canonical(obj) != blob:
            problems.append(f"{_at(item)}: bytes changed (not in canonical form), content intact")
        items.append(item)
    return items, bad, problems


def _malformed(obj: Any) -> str:
    """Why ``obj`` is not an audit entry ('' when it is one)."""
    if not isinstance(obj, dict):
        kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
        return f"{kinds.get(type(obj), 'a number')}, not an object"
    missing, extra = ENTRY_FIELDS - obj.keys(), obj.keys() - ENTRY_FIELDS
    if missing or extra:
        return ", ".join(
            f"{what} {', '.join(sorted(names))}"
            for what, names in (("missing", missing), ("unexpected", extra))
            if names
        )
    if not isinstance(obj["seq"], int) or isinstance(obj["seq"], bool) or obj["seq"] < 0:
        return f"seq must be an integer >= 0, got {obj['seq']!r}"
    if not isinstance(obj["time"], str) or not isinstance(obj["kind"], str):
        return "time and kind must be strings"
    if not isinstance(obj["data"], dict):
        return f"data must be an object, got {obj['data']!r}"
    for field in ("prev", "hash"):
        if not _is_hex64(obj[field]):
            return f"{field} must be 64 lowercase hex digits, got {obj[field]!r}"
    return ""


class _Chain:
    """Walks the entries in file order, following links and re-synchronising after a break."""

    def __init__(self, items: list[_Item], bad: list[int], head_hash: str | None) -> None:
        self.items, self.bad, self.head_hash = items, bad, head_hash
        self.by_hash: dict[str, list[int]] = {}
        self.linked_from: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            self.by_hash.setdefault(item.hash, []).append(i)
            self.linked_from.setdefault(item.prev, []).append(i)
        self.problems: list[str] = []
        self.last: _Item | None = None  # the last entry accepted into the chain
        self.accepted: dict[str, _Item | None] = {GENESIS: None}  # hash -> accepted entry
        self.successor: dict[str, _Item] = {}  # accepted hash -> the accepted entry after it
        self.expected_seq = 0

    def walk(self) -> None:
        i = 0
        while i < len(self.items):
            i = self._step(i)

    def _accept(self, item: _Item, seq: int) -> None:
        self.successor[self.last.hash if self.last else GENESIS] = item
        self.accepted.setdefault(item.hash, item)
        self.last, self.expected_seq = item, seq + 1

    def _continues(self, i: int) -> bool:
        """Whether a later entry links to entry ``i``, or the head names it."""
        h = self.items[i].hash
        return h == self.head_hash or any(j > i for j in self.linked_from.get(h, []))

    def _in_place(self, j: int) -> bool:
        """Whether entry ``j`` links to the line before it, or the line after links to it."""
        item, items = self.items[j], self.items
        before = items[j - 1].hash if j > 0 else GENESIS
        return item.prev == before or (j + 1 < len(items) and items[j + 1].prev == item.hash)

    def _inserted(self, item: _Item, note: str) -> None:
        copies = [self.items[j].line for j in self.by_hash[item.hash] if self.items[j] is not item]
        copy = f" (a copy of line {copies[0]})" if copies else ""
        self.problems.append(f"{_at(item)}: inserted entry{copy}, not part of the chain: {note}")

    def _step(self, i: int) -> int:
        item, want = self.items[i], self.last.hash if self.last else GENESIS
        forks = [j for j in self.linked_from.get(want, []) if j > i]
        if item.prev == want:
            if not self._continues(i) and any(self._continues(j) for j in forks):
                self._inserted(
                    item,
                    f"the chain continues from {_at(self.last)} at {_at(self.items[forks[0]])}",
                )
                return i + 1
            if item.seq != self.expected_seq:
                self.problems.append(
                    f"{_at(item)}: seq should be {self.expected_seq}; its link to the previous "
                    "entry is intact, so the seq field was rewritten"
                )
            self._accept(item, self.expected_seq)
            return i + 1
        if item.hash in self.accepted:
            self._inserted(item, "it repeats an entry already in the chain")
            return i + 1
        if any(self._in_place(j) for j in self.by_hash[item.hash] if j > i):
            self._inserted(item, "it repeats an entry ahead of that entry's place in the chain")
            return i + 1
        window = self._reordered(i, want)
        if window:
            moved = self.items[i : i + len(window)]
            self.problems.append(
                f"lines {moved[0].line}-{moved[-1].line} are out of order "
                f"(seq {_seq_list(moved)}): entries reordered"
            )
            for w in window:
                self._accept(w, w.seq)
            return i + len(window)
        if forks:  # a later entry continues the chain: everything up to it was inserted
            note = f"the chain goes from {_at(self.last)} to {_at(self.items[forks[0]])}"
            if forks[0] == i + 1:
                self._inserted(item, note)
            else:
                block = self.items[i : forks[0]]
                self.problems.append(
                    f"lines {block[0].line}-{block[-1].line} (seq {_seq_list(block)}): "
                    f"{len(block)} inserted entries, not part of the chain: {note}"
                )
            return forks[0]
        if item.prev in self.successor:  # a second branch off an entry already continued
            branch = self.accepted[item.prev]
            self._inserted(
                item,
                f"it branches off {_at(branch)}, which the chain continues "
                f"from at {_at(self.successor[item.prev])}",
            )
            return i + 1
        self._broken_link(item, self.by_hash.get(item.prev, []))
        self._accept(item, item.seq)
        return i + 1

    def _broken_link(self, item: _Item, targets: list[int]) -> None:
        gap = item.seq - self.expected_seq
        if targets:
            self.problems.append(
                f"{_at(item)}: links to {_at(self.items[targets[0]])}, not to the entry before "
                f"it, {_at(self.last)}"
            )
        elif item.prev == GENESIS:
            self.problems.append(
                f"{_at(item)}: claims to start the trail (prev is all zeros) but follows "
                f"{_at(self.last)}"
            )
        elif gap > 0:
            after = self.last.line if self.last else 0
            unreadable = sum(1 for n in self.bad if after < n < item.line)
            if unreadable != gap:  # otherwise the unreadable lines were these entries
                first, end = self.expected_seq, item.seq - 1
                what = f"entry seq {first}" if gap == 1 else f"entries seq {first}-{end}"
                where = (
                    f"between {_at(self.last)} and {_at(item)}"
                    if self.last
                    else f"before {_at(item)}, at the start of the trail"
                )
                self.problems.append(f"{what} missing {where}")
        elif gap == 0:
            self.problems.append(
                f"{_at(item)}: prev link broken: it does not match the hash of {_at(self.last)}; "
                "that entry was edited and its hash recomputed, or this prev was changed"
            )
        else:
            self.problems.append(
                f"{_at(item)}: seq goes back after {_at(self.last)} and its prev matches no "
                "entry: inserted or forged"
            )

    def _reordered(self, i: int, want: str) -> list[_Item]:
        """The entries from ``i`` on, in seq order, when sorting them makes a valid chain.

        Grows the window one entry at a time, counting entries linked to the one a seq
        before them, so a move across the whole trail is found in one pass.
        """
        if not any(t > i for t in self.by_hash.get(self.items[i].prev, [])):
            return []  # it does not link to a later entry: not a reordering
        base, linked = self.expected_seq, 0
        by_seq: dict[int, _Item] = {}
        for end in range(i, len(self.items)):
            item = self.items[end]
            if item.seq < base or item.seq in by_seq:
                return []  # every larger window holds this entry too
            by_seq[item.seq] = item
            before = want if item.seq == base else getattr(by_seq.get(item.seq - 1), "hash", "")
            linked += item.prev == before
            after = by_seq.get(item.seq + 1)
            linked += after is not None and after.prev == item.hash
            if linked == end - i + 1:  # each entry links to its seq predecessor: contiguous
                return [by_seq[seq] for seq in range(base, base + linked)]
        return []


def _read_head(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The head record, or None and why it cannot be used."""
    if not path.is_file():
        return None, f"{path.name} missing: the end of the trail cannot be checked"
    try:
        head = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except ValueError as e:
        return None, f"{path.name} is not JSON ({e})"
    if not isinstance(head, dict):
        return None, f"{path.name} is not a JSON object"
    for field in ("seq", "entries"):
        value = head.get(field)
        if not isinstance(value, int) or isinstance(value, bool):
            return None, f"{path.name}: {field} must be an integer, got {value!r}"
    if not _is_hex64(head.get("hash")):
        return None, f"{path.name}: hash must be 64 lowercase hex digits, got {head.get('hash')!r}"
    signature = head.get("signature")
    if signature is not None and not isinstance(signature, str):
        return None, f"{path.name}: signature must be hex text or null, got {signature!r}"
    return head, ""


def _check_head(chain: _Chain, head: Mapping[str, Any]) -> list[str]:
    """Compare the end of the chain with the head: truncation, appends, a replaced tip."""
    problems = []
    tip = chain.last
    tip_seq, tip_hash = (tip.seq, tip.hash) if tip else (-1, GENESIS)
    seq, hash_ = head["seq"], head["hash"]
    if head["entries"] != seq + 1:
        problems.append(f"{HEAD_FILE} is inconsistent: entries {head['entries']} but seq {seq}")
    named = chain.by_hash.get(hash_, [])
    if seq > tip_seq and not named:
        after = tip.line if tip else 0
        unreadable = sum(1 for n in chain.bad if n > after)
        if unreadable < seq - tip_seq:
            ends = f"ends at seq {tip_seq}" if tip else "is empty"
            problems.append(
                f"the trail {ends} but {HEAD_FILE} says seq {seq}: entries removed from the end"
            )
    elif seq < tip_seq and named:
        at = chain.items[named[0]]
        problems.append(
            f"entries after {_at(at)} (up to {_at(tip)}) are not covered by {HEAD_FILE}, "
            f"which says seq {seq}: appended after the head was written"
        )
    elif hash_ != tip_hash:
        problems.append(
            f"the trail ends at {_at(tip)} but {HEAD_FILE} says seq {seq} with a hash that "
            "does not match it: the end of the trail or the head was replaced"
        )
    return problems


def verify_trail(
    run_dir: Path | str, verify: Callable[[bytes, bytes], bool] | None = None
) -> AuditReport:
    """Re-derive every hash and link of ``RUN_DIR/audit.jsonl`` and check it against the head.

    ``verify(data, signature) -> bool`` checks the head signature with the server's public
    key; given it, an unsigned or badly signed head is a problem. Every problem is reported,
    each naming its line and seq; after a broken link the walk re-synchronises on the next
    entry's own prev and hash, so one tampering is reported once.
    """
    folder = Path(run_dir)
    path = folder / AUDIT_FILE
    if not path.is_file():
        return AuditReport(0, [f"{path} missing: no audit trail in {folder}"], False)
    items, bad, problems = _read_lines(path)
    head, head_problem = _read_head(folder / HEAD_FILE)
    chain = _Chain(items, bad, head["hash"] if head else None)
    chain.walk()
    problems += chain.problems
    signed = False
    if head is None:
        problems.append(head_problem)
    else:
        problems += _check_head(chain, head)
        if verify is not None:
            signed = _check_signature(head, verify, problems)
    return AuditReport(len(items), problems, signed)


def _check_signature(
    head: Mapping[str, Any], verify: Callable[[bytes, bytes], bool], problems: list[str]
) -> bool:
    signature = head.get("signature")
    if signature is None:
        problems.append(
            f"{HEAD_FILE} is unsigned, but a server key was given: the end of the trail is "
            "not pinned"
        )
        return False
    try:
        raw = bytes.fromhex(signature)
    except ValueError:
        problems.append(f"{HEAD_FILE} signature is not hex")
        return False
    if not verify(head_bytes(head), raw):
        problems.append(f"{HEAD_FILE} signature does not verify with the server key")
        return False
    return True


def entries(run_dir: Path | str) -> list[dict[str, Any]]:
    """The parsed entries of ``RUN_DIR/audit.jsonl`` in file order (not verified).

    Raises FileNotFoundError if there is no trail, AuditError naming the line if a line is
    not JSON.
    """
    path = Path(run_dir) / AUDIT_FILE
    out = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            try:
                out.append(json.loads(line))
            except ValueError as e:
                raise AuditError(f"{path} line {number}: not JSON ({e})") from e
    return out
