"""The signed head of an audit trail (``audit.head.json``): what it covers and how it is checked.

The head names the trail's last entry (seq, hash, entry count), the run id (the one the trail's
``config`` entry names), whether the run ended (``final``: the last entry is the ``final``
entry written once the report is signed) and the SHA-256 of the report files that entry
seals. The server signs all of it, so an older head (a genuine one, from before the end of the
run) cannot pass for the end of the run: it is not final, or it seals another report.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from common.signing import canonical
from server.audit_chain import GENESIS, Chain, Item, at

HEAD_FILE = "audit.head.json"
HEAD_FORMAT = "hepafed-audit-head/2"
HEAD_FIELDS = ("format", "seq", "hash", "entries", "run_id", "final", "report")
CONFIG_KIND = "config"
FINAL_KIND = "final"
RUN_ID_KINDS = (CONFIG_KIND, "resume", FINAL_KIND)  # entries that name the run they belong to


def is_hex64(value: Any) -> bool:
    """Whether ``value`` is a SHA-256 in lowercase hex."""
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def head_bytes(head: Mapping[str, Any]) -> bytes:
    """The bytes the server signs for a head: canonical JSON of every ``HEAD_FIELDS`` value."""
    return canonical({k: head[k] for k in HEAD_FIELDS})


def head_record(
    seq: int, hash_: str, run_id: str, report: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """An unsigned head for the entry ``seq``/``hash_``; ``report`` given: the run ended."""
    return {
        "format": HEAD_FORMAT,
        "seq": seq,
        "hash": hash_,
        "entries": seq + 1,
        "run_id": run_id,
        "final": report is not None,
        "report": dict(report) if report is not None else None,
    }


def reject_constant(name: str) -> Any:
    """``json.loads`` hook: NaN and infinity are not JSON."""
    raise ValueError(f"{name} is not valid JSON")


def read_head(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The head record and its problems; None when it cannot be used at all."""
    if not path.is_file():
        return None, [f"{path.name} missing: the end of the trail cannot be checked"]
    try:
        head = json.loads(path.read_text(encoding="utf-8"), parse_constant=reject_constant)
    except ValueError as e:
        return None, [f"{path.name} is not JSON ({e})"]
    if not isinstance(head, dict):
        return None, [f"{path.name} is not a JSON object"]
    for field in ("seq", "entries"):
        value = head.get(field)
        if not isinstance(value, int) or isinstance(value, bool):
            return None, [f"{path.name}: {field} must be an integer, got {value!r}"]
    if not is_hex64(head.get("hash")):
        got = head.get("hash")
        return None, [f"{path.name}: hash must be 64 lowercase hex digits, got {got!r}"]
    signature = head.get("signature")
    if signature is not None and not isinstance(signature, str):
        return None, [f"{path.name}: signature must be hex text or null, got {signature!r}"]
    if "format" not in head:
        return head, [
            f"{path.name} is in the old format (it signs only seq, hash and entries, not the run "
            "id, the end of the run or the report), so it cannot show that the trail was not "
            "rolled back; check this run with the hepafed version that wrote it, or run it again"
        ]
    return head, _format_problems(path.name, head)


def _format_problems(name: str, head: Mapping[str, Any]) -> list[str]:
    if head["format"] != HEAD_FORMAT:
        return [f"{name}: format {head['format']!r} is not {HEAD_FORMAT!r}"]
    if not isinstance(head.get("run_id"), str):
        return [f"{name}: run_id must be a string, got {head.get('run_id')!r}"]
    if not isinstance(head.get("final"), bool):
        return [f"{name}: final must be true or false, got {head.get('final')!r}"]
    report = head.get("report")
    if head["final"] != (report is not None):
        return [f"{name}: final is {head['final']} but report is {report!r}"]
    if report is not None and not (
        isinstance(report, dict) and report and all(is_hex64(v) for v in report.values())
    ):
        return [f"{name}: report must map file names to SHA-256 hex digests, got {report!r}"]
    return []


def trail_run_id(items: list[Item]) -> tuple[str, list[str]]:
    """The run id the trail's first ``config`` entry names ('' if none), and each entry
    that names another run."""
    run_id = next((str(i.data.get("run_id", "")) for i in items if i.kind == CONFIG_KIND), "")
    problems = [
        f"{at(i)}: {i.kind} entry names run {i.data.get('run_id')!r}, but this trail's config "
        f"entry names run {run_id!r}: an entry from another run"
        for i in items
        if run_id and i.kind in RUN_ID_KINDS and i.data.get("run_id") != run_id
    ]
    return run_id, problems


def check_head(chain: Chain, head: Mapping[str, Any]) -> list[str]:
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
        where = chain.items[named[0]]
        problems.append(
            f"entries after {at(where)} (up to {at(tip)}) are not covered by {HEAD_FILE}, "
            f"which says seq {seq}: appended after the head was written"
        )
    elif hash_ != tip_hash:
        problems.append(
            f"the trail ends at {at(tip)} but {HEAD_FILE} says seq {seq} with a hash that "
            "does not match it: the end of the trail or the head was replaced"
        )
    return problems


def check_seal(tip: Item | None, head: Mapping[str, Any], run_id: str) -> list[str]:
    """For a head that names the trail's last entry: its run id, end-of-run marker and sealed
    report hashes must be the trail's."""
    problems = []
    if head["run_id"] != run_id:
        problems.append(
            f"{HEAD_FILE} names run {head['run_id']!r} but the trail's config entry names run "
            f"{run_id!r}: the head belongs to another run"
        )
    ended = tip is not None and tip.kind == FINAL_KIND
    if head["final"] and not ended:
        problems.append(
            f"{HEAD_FILE} says the run ended, but the trail's last entry, {at(tip)}, is not a "
            f"{FINAL_KIND} entry"
        )
    elif ended and not head["final"]:
        problems.append(
            f"the trail ends with the {FINAL_KIND} entry {at(tip)}, but {HEAD_FILE} does not "
            "say the run ended: the head was replaced"
        )
    elif ended and tip is not None and head["report"] != tip.data.get("report"):
        problems.append(
            f"{HEAD_FILE} seals other report hashes than the {FINAL_KIND} entry {at(tip)}"
        )
    return problems


def check_signature(
    head: Mapping[str, Any], verify: Callable[[bytes, bytes], bool], problems: list[str]
) -> bool:
    """Whether the head carries the server's valid signature; appends the problem if not."""
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
