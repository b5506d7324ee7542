"""Walking a run's audit entries in file order: links, seqs, and what broke where.

``Chain`` follows each entry's ``prev`` link from the start of the trail, re-synchronising
after a break, and names each edited, removed, inserted or reordered entry once, by line and
seq. ``server.audit_check`` reads the lines and the head and runs the walk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GENESIS = "0" * 64


@dataclass(frozen=True)
class Item:
    """One well-formed entry, the line it was read from, and its kind and data."""

    line: int
    seq: int
    prev: str
    hash: str
    kind: str = ""
    data: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def at(item: Item | None) -> str:
    """Where an entry is, for messages: ``line 4 (seq 3)``."""
    return "the start of the trail" if item is None else f"line {item.line} (seq {item.seq})"


def seq_list(items: list[Item]) -> str:
    """The seqs of ``items``, shortened in the middle when there are many."""
    seqs = [str(item.seq) for item in items]
    return ", ".join(seqs if len(seqs) <= 8 else [*seqs[:4], "...", *seqs[-3:]])


class Chain:
    """Walks the entries in file order, following links and re-synchronising after a break."""

    def __init__(self, items: list[Item], bad: list[int], head_hash: str | None) -> None:
        self.items, self.bad, self.head_hash = items, bad, head_hash
        self.by_hash: dict[str, list[int]] = {}
        self.linked_from: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            self.by_hash.setdefault(item.hash, []).append(i)
            self.linked_from.setdefault(item.prev, []).append(i)
        self.problems: list[str] = []
        self.last: Item | None = None  # the last entry accepted into the chain
        self.accepted: dict[str, Item | None] = {GENESIS: None}  # hash -> accepted entry
        self.successor: dict[str, Item] = {}  # accepted hash -> the accepted entry after it
        self.expected_seq = 0

    def walk(self) -> None:
        i = 0
        while i < len(self.items):
            i = self._step(i)

    def _accept(self, item: Item, seq: int) -> None:
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

    def _inserted(self, item: Item, note: str) -> None:
        copies = [self.items[j].line for j in self.by_hash[item.hash] if self.items[j] is not item]
        copy = f" (a copy of line {copies[0]})" if copies else ""
        self.problems.append(f"{at(item)}: inserted entry{copy}, not part of the chain: {note}")

    def _step(self, i: int) -> int:
        item, want = self.items[i], self.last.hash if self.last else GENESIS
        forks = [j for j in self.linked_from.get(want, []) if j > i]
        if item.prev == want:
            if not self._continues(i) and any(self._continues(j) for j in forks):
                self._inserted(
                    item,
                    f"the chain continues from {at(self.last)} at {at(self.items[forks[0]])}",
                )
                return i + 1
            if item.seq != self.expected_seq:
                self.problems.append(
                    f"{at(item)}: seq should be {self.expected_seq}; its link to the previous "
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
                f"(seq {seq_list(moved)}): entries reordered"
            )
            for w in window:
                self._accept(w, w.seq)
            return i + len(window)
        if forks:  # a later entry continues the chain: everything up to it was inserted
            note = f"the chain goes from {at(self.last)} to {at(self.items[forks[0]])}"
            if forks[0] == i + 1:
                self._inserted(item, note)
            else:
                block = self.items[i : forks[0]]
                self.problems.append(
                    f"lines {block[0].line}-{block[-1].line} (seq {seq_list(block)}): "
                    f"{len(block)} inserted entries, not part of the chain: {note}"
                )
            return forks[0]
        if item.prev in self.successor:  # a second branch off an entry already continued
            branch = self.accepted[item.prev]
            self._inserted(
                item,
                f"it branches off {at(branch)}, which the chain continues "
                f"from at {at(self.successor[item.prev])}",
            )
            return i + 1
        self._broken_link(item, self.by_hash.get(item.prev, []))
        self._accept(item, item.seq)
        return i + 1

    def _broken_link(self, item: Item, targets: list[int]) -> None:
        gap = item.seq - self.expected_seq
        if targets:
            self.problems.append(
                f"{at(item)}: links to {at(self.items[targets[0]])}, not to the entry before "
                f"it, {at(self.last)}"
            )
        elif item.prev == GENESIS:
            self.problems.append(
                f"{at(item)}: claims to start the trail (prev is all zeros) but follows "
                f"{at(self.last)}"
            )
        elif gap > 0:
            after = self.last.line if self.last else 0
            unreadable = sum(1 for n in self.bad if after < n < item.line)
            if unreadable != gap:  # otherwise the unreadable lines were these entries
                first, end = self.expected_seq, item.seq - 1
                what = f"entry seq {first}" if gap == 1 else f"entries seq {first}-{end}"
                where = (
                    f"between {at(self.last)} and {at(item)}"
                    if self.last
                    else f"before {at(item)}, at the start of the trail"
                )
                self.problems.append(f"{what} missing {where}")
        elif gap == 0:
            self.problems.append(
                f"{at(item)}: prev link broken: it does not match the hash of {at(self.last)}; "
                "that entry was edited and its hash recomputed, or this prev was changed"
            )
        else:
            self.problems.append(
                f"{at(item)}: seq goes back after {at(self.last)} and its prev matches no "
                "entry: inserted or forged"
            )

    def _reordered(self, i: int, want: str) -> list[Item]:
        """The entries from ``i`` on, in seq order, when sorting them makes a valid chain.

        Grows the window one entry at a time, counting entries linked to the one a seq
        before them, so a move across the whole trail is found in one pass.
        """
        if not any(t > i for t in self.by_hash.get(self.items[i].prev, [])):
            return []  # it does not link to a later entry: not a reordering
        base, linked = self.expected_seq, 0
        by_seq: dict[int, Item] = {}
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
