"""Reading and checking a run's audit trail: the entry format and ``verify_trail``.

The format (``server.audit`` writes it): each line of ``RUN_DIR/audit.jsonl`` is one entry
``{"seq", "time", "kind", "data", "prev", "hash"}`` in canonical JSON, ``hash`` the SHA-256 of
the entry without it, ``prev`` the previous entry's hash (64 zeros for the first);
``audit.head.json`` (``server.audit_head``) names the last entry, the run and whether the run
ended, signed by the server. ``verify_trail`` re-derives every hash and link and names each
edited, removed, inserted or reordered entry, entries removed from the end, a head that does
not match the trail, and a head whose signature does not verify. Whether the run ended is
reported apart from tampering (``AuditReport.final``).
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
from server.audit_chain import GENESIS, Chain, Item, at
from server.audit_head import (
    FINAL_KIND,
    HEAD_FILE,
    check_head,
    check_seal,
    check_signature,
    head_bytes,
    is_hex64,
    read_head,
    reject_constant,
    trail_run_id,
)

__all__ = [
    "AUDIT_FILE",
    "GENESIS",
    "HEAD_FILE",
    "AuditError",
    "AuditReport",
    "canonical",
    "entries",
    "entry_hash",
    "head_bytes",
    "verify_trail",
]

AUDIT_FILE = "audit.jsonl"
ENTRY_FIELDS = frozenset({"seq", "time", "kind", "data", "prev", "hash"})

logger = logging.getLogger(__name__)


class AuditError(RuntimeError):
    """The audit trail on disk cannot be continued (it is corrupt, or incomplete)."""


def canonical(obj: Any) -> bytes:
    """The canonical JSON bytes that hashes and signatures are computed over."""
    return canonical_json(obj)


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 hex of an entry's canonical JSON without its ``hash`` field."""
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


@dataclass(frozen=True)
class AuditReport:
    """What ``verify_trail`` found: entries read, problems (empty when intact), whether the
    head is signed, whether the run ended (a ``final`` entry sealed by the head), the run id
    and the report hashes the head seals (None before the end)."""

    entries: int
    problems: list[str]
    head_signed: bool
    final: bool = False
    run_id: str = ""
    report: dict[str, str] | None = None

    @property
    def ok(self) -> bool:
        """True when the chain and the head verified without a problem."""
        return not self.problems


def _read_lines(path: Path) -> tuple[list[Item], list[int], list[str]]:
    """Parse the trail: well-formed entries, unreadable line numbers, per-line problems."""
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    torn = lines[-1] != b""
    if not torn:
        lines.pop()
    items: list[Item] = []
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
            obj: Any = json.loads(blob.decode("utf-8"), parse_constant=reject_constant)
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            bad.append(number)
            problems.append(f"line {number}: not JSON ({e})")
            continue
        why = _malformed(obj)
        if why:
            bad.append(number)
            problems.append(f"line {number}: not an audit entry: {why}")
            continue
        item = Item(number, obj["seq"], obj["prev"], obj["hash"], obj["kind"], obj["data"])
        if entry_hash(obj) != obj["hash"]:
            problems.append(f"{at(item)}: content edited, hash does not match")
        elif canonical(obj) != blob:
            problems.append(f"{at(item)}: bytes changed (not in canonical form), content intact")
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
        if not is_hex64(obj[field]):
            return f"{field} must be 64 lowercase hex digits, got {obj[field]!r}"
    return ""


def verify_trail(
    run_dir: Path | str, verify: Callable[[bytes, bytes], bool] | None = None
) -> AuditReport:
    """Re-derive every hash and link of ``RUN_DIR/audit.jsonl`` and check it against the head.

    ``verify(data, signature) -> bool`` checks the head signature with the server's public
    key; given it, an unsigned or badly signed head is a problem. Every problem is reported,
    each naming its line and seq; after a broken link the walk re-synchronises on the next
    entry's own prev and hash, so one tampering is reported once. A trail without its
    ``final`` entry is not a problem: ``final`` is False (a run in progress, or cut back).
    """
    folder = Path(run_dir)
    path = folder / AUDIT_FILE
    if not path.is_file():
        return AuditReport(0, [f"{path} missing: no audit trail in {folder}"], False)
    items, bad, problems = _read_lines(path)
    head, head_problems = read_head(folder / HEAD_FILE)
    chain = Chain(items, bad, head["hash"] if head else None)
    chain.walk()
    problems += chain.problems
    run_id, foreign = trail_run_id(items)
    problems += foreign + head_problems
    if head is None or head_problems:  # missing, unreadable or old format: nothing it seals
        if head is not None:
            problems += check_head(chain, head)
        return AuditReport(len(items), problems, False, run_id=run_id)
    tip_problems = check_head(chain, head)
    problems += tip_problems or check_seal(chain.last, head, run_id)
    signed = check_signature(head, verify, problems) if verify is not None else False
    final = bool(head["final"]) and chain.last is not None and chain.last.kind == FINAL_KIND
    sealed = head["report"] if final and not tip_problems else None
    return AuditReport(len(items), problems, signed, final and not tip_problems, run_id, sealed)


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
