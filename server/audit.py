"""A tamper-evident, hash-chained audit trail per run: ``audit.jsonl`` + ``audit.head.json``.

Each line of ``RUN_DIR/audit.jsonl`` is one entry ``{"seq", "time", "kind", "data", "prev",
"hash"}`` in canonical JSON; ``hash`` is the SHA-256 of the entry's canonical JSON without its
``hash`` field, and ``prev`` is the previous entry's ``hash`` (64 zeros for the first). After
every append ``audit.head.json`` is replaced atomically with the last entry's seq and hash, the
number of entries, the run id and whether the run ended, and, when the server has a key, its
signature over all of them (``server.audit_head``). ``seal`` ends a run: a ``final`` entry
holding the run id and the SHA-256 of the signed report files, and a head that says so.

What the chain guarantees: editing, removing, inserting or reordering entries without
rewriting everything after them breaks a hash or a link, and ``verify_trail`` says which line.
Removing entries from the end is caught by comparing the trail with the head; putting back an
older (genuine, signed) head with the trail cut back to it is caught because that head is
not final, or seals other report hashes than the files in the folder. What it does not
guarantee: the hashes use no secret. Without a server key, an attacker who can write the
run folder and recomputes every hash and the head forges a trail that verifies; the chain alone
only catches careless edits. With a key, the head signature by the server key is what pins the
end of the trail, and through the links every entry before it; someone who can rewrite the
whole file AND re-sign the head with the server's private key can still forge it. Check with
the federation's own copy of the public key: a copy inside the run folder can be replaced
along with the trail. Nor can the chain tell a deleted-and-restarted trail from a new one
unless the last head hash is also kept elsewhere (a report, the federation's own log).

A crash between writing an entry and replacing the head leaves one entry the head does not
cover. A resumed run continues such a trail and records it: an ``uncovered-entry`` entry
names that seq, so an auditor sees which entry was written while no signed head vouched for
it. Any other problem (two or more uncovered entries, a broken link) stops the run: a
tampered trail is evidence and is never continued.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from common.files import write_atomic
from server.audit_check import (
    AUDIT_FILE,
    GENESIS,
    HEAD_FILE,
    AuditError,
    AuditReport,
    canonical,
    entries,
    entry_hash,
    head_bytes,
    verify_trail,
)
from server.audit_head import CONFIG_KIND, FINAL_KIND, head_record

__all__ = [
    "AUDIT_FILE",
    "FINAL_KIND",
    "HEAD_FILE",
    "AuditError",
    "AuditReport",
    "AuditTrail",
    "entries",
    "verify_trail",
]

logger = logging.getLogger(__name__)


def _one_uncovered_entry(run_dir: Path, report: AuditReport) -> int | None:
    """The seq of the last entry when the only problem of a trail is that one entry was
    written after the head was last replaced: a server stopped between the two writes."""
    if len(report.problems) != 1 or "appended after the head was written" not in report.problems[0]:
        return None
    try:
        head = json.loads((run_dir / HEAD_FILE).read_text(encoding="utf-8"))
        items = entries(run_dir)
    except (OSError, ValueError, AuditError):
        return None
    if len(items) != int(head.get("entries", -1)) + 1:
        return None
    return int(items[-1]["seq"])


class AuditTrail:
    """Appends hash-chained entries to ``RUN_DIR/audit.jsonl`` and keeps its head current."""

    def __init__(self, run_dir: Path | str, sign: Callable[[bytes], bytes] | None = None) -> None:
        """Open ``RUN_DIR/audit.jsonl``; an existing trail (a resumed run) must verify first.

        ``sign`` signs bytes with the server's key; without it the head is unsigned. The run
        id the head carries is the one the trail's ``config`` entry names.
        """
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / AUDIT_FILE
        self.head_path = self.run_dir / HEAD_FILE
        self._sign = sign
        self._lock = threading.Lock()
        self._run_id = ""
        if self.path.exists():
            report = verify_trail(self.run_dir)
            uncovered = _one_uncovered_entry(self.run_dir, report)
            if not report.ok and uncovered is None:
                raise AuditError(
                    f"the audit trail {self.path} does not verify, refusing to continue it: "
                    + "; ".join(report.problems)
                    + ". Keep this folder as evidence and start the run in a new folder."
                )
            self._run_id = report.run_id
            last = entries(self.run_dir)[-1:] or [{"seq": -1, "hash": GENESIS}]
            self._seq, self._hash = int(last[0]["seq"]), str(last[0]["hash"])
            logger.info("continuing the audit trail %s after seq %d", self.path, self._seq)
            if uncovered is not None:  # the server stopped between an entry and its head
                self.append(
                    "uncovered-entry",
                    {
                        "seq": uncovered,
                        "note": "written before the server stopped, but not yet covered by "
                        "the signed head; kept as written and covered from here on",
                    },
                )
            return
        if self.head_path.exists():
            raise AuditError(
                f"{self.head_path} exists but {self.path} does not: the trail was deleted; "
                "keep this folder as evidence and start the run in a new folder"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._seq, self._hash = -1, GENESIS
        with self.path.open("xb") as f:
            os.fsync(f.fileno())
        self._write_head(self._signed(head_record(-1, GENESIS, "")))

    @property
    def run_id(self) -> str:
        """The run id the trail's ``config`` entry names ('' before it is written)."""
        return self._run_id

    @property
    def head(self) -> dict[str, Any]:
        """The last entry's ``{"seq", "hash"}`` (seq -1 and 64 zeros before the first)."""
        return {"seq": self._seq, "hash": self._hash}

    def append(self, kind: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """Append one entry (fsync'ed), replace the head atomically, and return the entry.

        Raises ValueError, writing nothing, if ``data`` is not JSON-serialisable or holds NaN
        or infinity, if ``kind`` is ``final`` (use ``seal``), or if a ``config`` entry names
        another run than the trail's.
        """
        if kind == FINAL_KIND:
            raise ValueError(f"audit entry {kind!r} ends the run: use AuditTrail.seal")
        return self._append(kind, data, None)

    def seal(self, report: Mapping[str, str]) -> dict[str, Any]:
        """End the run: a ``final`` entry with the run id and the SHA-256 of each signed report
        file, and a head that says the run ended and seals those hashes.

        Raises AuditError when no ``config`` entry names the run, ValueError when ``report`` is
        empty or not file name -> SHA-256 hex. A later ``append`` (a rewritten report) unseals
        the trail until it is sealed again."""
        if not self._run_id:
            raise AuditError(
                f"cannot seal {self.path}: no config entry names the run; the trail of a run "
                "starts with its config entry"
            )
        files = dict(report)
        if not files or not all(
            isinstance(v, str) and len(v) == 64 and set(v) <= set("0123456789abcdef")
            for v in files.values()
        ):
            raise ValueError(
                f"seal {self.path}: report must map each report file to its SHA-256 hex digest, "
                f"got {files!r}"
            )
        return self._append(FINAL_KIND, {"run_id": self._run_id, "report": files}, files)

    def _append(
        self, kind: str, data: Mapping[str, Any], report: Mapping[str, str] | None
    ) -> dict[str, Any]:
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"audit entry kind must be a non-empty string, got {kind!r}")
        if not isinstance(data, Mapping):
            raise ValueError(f"audit entry {kind!r}: data must be a mapping, got {type(data)}")
        try:
            data_json = json.loads(canonical(data))  # what a reader will see (str keys, lists)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"audit entry {kind!r}: data is not JSON-serialisable without NaN/infinity: {e}"
            ) from e
        run_id = self._run_id
        if kind == CONFIG_KIND:
            named = str(data_json.get("run_id", ""))
            if run_id and named != run_id:
                raise ValueError(
                    f"audit entry {kind!r}: run {named!r} in the trail of run {run_id!r}; a new "
                    "run starts a new trail (server.resume.archive_previous_trail)"
                )
            run_id = run_id or named
        with self._lock:
            seq = self._seq + 1
            entry: dict[str, Any] = {
                "seq": seq,
                "time": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
                "kind": kind,
                "data": data_json,
                "prev": self._hash,
            }
            entry["hash"] = entry_hash(entry)
            head = self._signed(head_record(seq, entry["hash"], run_id, report))  # sign first
            with self.path.open("ab") as f:
                f.write(canonical(entry) + b"\n")
                f.flush()
                os.fsync(f.fileno())
            self._seq, self._hash, self._run_id = seq, entry["hash"], run_id
            self._write_head(head)
        return entry

    def _signed(self, head: dict[str, Any]) -> dict[str, Any]:
        head["signature"] = self._sign(head_bytes(head)).hex() if self._sign else None
        return head

    def _write_head(self, head: Mapping[str, Any]) -> None:
        write_atomic(self.head_path, json.dumps(head, indent=2, sort_keys=True) + "\n")
