"""The server's side of signed updates: sign what it sends, verify what sites send.

See ``common.signing`` for the statements and keys. With ``trust.sign-updates``
off nothing is signed or checked, and the run says so loudly (log and audit
trail). With ``trust.keys-dir`` empty the run is a simulation: the server makes
its own key and one key pair per simulated site in RUN_DIR/keys. A deployment
sets ``trust.keys-dir`` to the coordinating center's keyring: its server key,
and every hospital's registered public key as ``sites/SITE.pub``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from common.array_views import records
from common.config import RunConfig
from common.files import write_atomic
from common.keys import ConfigKey, RecordKey, SiteKey
from common.signing import (
    SERVER_PUBLIC_KEY,
    UNSIGNED_WARNING,
    Keyring,
    SigningKeyError,
    arrays_hash,
    canonical,
    differences,
    instruction_digest,
    instruction_statement,
    model_statement,
    sign,
    signed_fields,
    update_digest,
    update_statement,
    verify,
)
from server.audit import AuditTrail

log = logging.getLogger("hepafed.progress")

KEYS_DIR = "keys"
MODELS_REMEMBERED = 4  # a round's shared weights, the full model, the evaluated model


class ServerTrust:
    """The run's keys, the models it signed, and the check of every signed update."""

    def __init__(self, cfg: RunConfig, run_dir: Path, run_id: str) -> None:
        self.enabled = cfg.trust.sign_updates
        self.run_id = run_id
        self.simulated = not cfg.trust.keys_dir
        folder = Path(cfg.trust.keys_dir) if cfg.trust.keys_dir else run_dir / KEYS_DIR
        self.keyring = Keyring(folder.resolve())
        self._key = self.keyring.ensure_server_key() if self.enabled else None
        # (model, hash) of the last models hashed: held, so an identity match is never a new
        # object at a freed one's address (an id()-keyed cache signed stale hashes)
        # weak: a model the run has let go of is not kept alive for its hash (442 MB each
        # for a 110M-parameter model)
        self._hashes: list[tuple[weakref.ref[ArrayRecord], str]] = []
        if not self.enabled:
            log.warning(UNSIGNED_WARNING)

    @property
    def keys_dir(self) -> Path:
        return self.keyring.folder

    def prepare_sites(self, sites: Iterable[str]) -> list[str]:
        """Simulation: a key pair for every site without one. Deployment: the sites with no
        registered key (their updates will be rejected), after a warning."""
        if not self.enabled:
            return []
        names = list(sites)
        if self.simulated:
            for name in names:
                self.keyring.ensure_simulated_site(name)
            return []
        missing = [n for n in names if not self.keyring.site_public(n).exists()]
        if missing:
            log.warning(
                "no registered signing key for %s in %s: their updates will be rejected; "
                "copy each hospital's site_key.pub to sites/SITE.pub there",
                ", ".join(missing),
                self.keyring.folder / "sites",
            )
        return missing

    def signer(self) -> Callable[[bytes], bytes] | None:
        """A function signing bytes with the server key (None when signing is off)."""
        key = self._key
        if key is None:
            return None
        return lambda data: sign(key, data)

    def publish_key(self, run_dir: Path) -> None:
        """A copy of the server's public key in RUN_DIR/keys/server.pub, where
        ``hepafed audit verify`` looks when not given the federation's own copy."""
        if not self.enabled:
            return
        copy = run_dir / KEYS_DIR / SERVER_PUBLIC_KEY
        if copy.resolve() != self.keyring.server_public.resolve():
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(self.keyring.server_public.read_bytes())

    def sign_bytes(self, data: bytes) -> bytes | None:
        """The server's signature of ``data`` (None when signing is off)."""
        return None if self._key is None else sign(self._key, data)

    def model_entries(self, server_round: int, model: str, arrays: ArrayRecord) -> dict[str, Any]:
        """Config entries that let sites check ``arrays``: the run id and the signature."""
        out: dict[str, Any] = {ConfigKey.RUN_ID.value: self.run_id}
        if self._key is None:
            return out
        digest = self.model_hash(arrays)
        statement = model_statement(self.run_id, server_round, model, digest)
        out[ConfigKey.MODEL_SIGNATURE.value] = sign(self._key, canonical(statement)).hex()
        return out

    def sign_instruction(self, msg: Message, flower_run: int) -> Message:
        """``msg`` with the server's signature of it, for its one destination node, in its
        ConfigRecord (a copy: one config object may be shared by several messages)."""
        if self._key is None:
            return msg
        content = msg.content
        config = content.get(RecordKey.CONFIG)
        fields = dict(config.items()) if isinstance(config, ConfigRecord) else {}
        signed = RecordDict({**dict(content.items()), RecordKey.CONFIG: ConfigRecord(fields)})
        arrays = content.get(RecordKey.ARRAYS)
        model = self.model_hash(arrays) if isinstance(arrays, ArrayRecord) else ""
        field = ConfigKey.INSTRUCTION_SIGNATURE.value
        digest = instruction_digest(signed, RecordKey.CONFIG, RecordKey.ARRAYS, field)
        statement = instruction_statement(
            flower_run, str(msg.metadata.message_type), int(msg.metadata.dst_node_id), model,
            digest,
        )  # fmt: skip
        cast(ConfigRecord, signed[RecordKey.CONFIG])[field] = sign(
            self._key, canonical(statement)
        ).hex()
        msg.content = signed
        return msg

    def model_hash(self, arrays: ArrayRecord) -> str:
        """SHA-256 of a model this server sends (computed once per ArrayRecord object)."""
        for seen, digest in self._hashes:
            if seen() is arrays:
                return digest
        digest = arrays_hash(arrays)
        alive = [(ref, d) for ref, d in self._hashes if ref() is not None]
        self._hashes = [*alive[-(MODELS_REMEMBERED - 1) :], (weakref.ref(arrays), digest)]
        return digest

    def update_problem(
        self,
        reply: Message,
        site: str,
        server_round: int,
        model: str,
        sent: ArrayRecord,
        digest: str = "",
    ) -> str | None:
        """Why ``reply``'s signature is not acceptable, or None (also None when off).
        ``digest``: the reply's ``update_digest`` if already computed."""
        if not self.enabled:
            return None
        config = records(reply.content, ConfigRecord).get(RecordKey.SITE, ConfigRecord())
        try:
            claimed, signature = signed_fields(config, SiteKey.STATEMENT, SiteKey.SIGNATURE)
        except ValueError as e:
            return f"signature: {e}"
        expected = update_statement(
            self.run_id,
            server_round,
            model,
            site,
            self.model_hash(sent),
            digest or update_digest(reply.content),
        )
        mismatch = differences(claimed, expected)
        if mismatch:
            what = _replay_kind(mismatch)
            return f"signature: {what} ({'; '.join(mismatch)})"
        try:
            key = self.keyring.site_key(site)
        except SigningKeyError as e:
            return f"signature: {e}"
        if key is None:
            return f"signature: no registered key for {site} ({self.keyring.site_public(site)})"
        if not verify(key, canonical(expected), signature):
            return f"signature: does not verify with {site}'s registered key"
        return None

    def describe(self) -> dict[str, Any]:
        """For the audit trail: whether updates are signed, and which keys are in use."""
        if not self.enabled:
            return {"signed": False}
        return {
            "signed": True,
            "keys-dir": str(self.keyring.folder),
            "simulated-keys": self.simulated,
            "server-key-sha256": file_sha256(self.keyring.server_public),
        }


def _replay_kind(mismatch: list[str]) -> str:
    fields = {m.split(":", 1)[0] for m in mismatch}
    if fields & {"run", "round", "model"}:
        return "replayed from another run, round or model"
    if "update" in fields:
        return "the update was altered after signing"
    if "site" in fields:
        return "signed as another site"
    return "signed for another global model"


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


REPORT_SIGNATURE = "report.sig.json"
REPORT_FILES = ("report.json", "report.html")


def sign_report(trust: ServerTrust, audit: AuditTrail, run_dir: Path) -> dict[str, Any]:
    """Sign the finished report (its files' SHA-256) and record it in the audit trail.

    Writes RUN_DIR/report.sig.json: the statement and the server's signature of it."""
    present = [name for name in REPORT_FILES if (run_dir / name).exists()]
    files = {name: file_sha256(run_dir / name) for name in present}
    statement = {"kind": "report", "run": trust.run_id, "files": files}
    signature = trust.sign_bytes(canonical(statement))
    doc = {"statement": statement, "signature": signature.hex() if signature else None}
    write_atomic(run_dir / REPORT_SIGNATURE, json.dumps(doc, indent=1, sort_keys=True))
    audit.append("report", {"files": files, "signed": signature is not None})
    audit.seal(files)  # the run ended: the signed head now covers these report hashes
    return doc


def report_problems(run_dir: Path, key: Any | None) -> list[str]:
    """What is wrong with a run's signed report: a file changed since it was signed, a
    signature that does not verify with ``key`` (a public key), no signature at all."""
    path = run_dir / REPORT_SIGNATURE
    if not path.exists():
        return [f"{REPORT_SIGNATURE} is missing: the report is not signed"]
    try:
        doc = json.loads(path.read_text())
        statement = dict(doc["statement"])
        files = dict(statement["files"])
    except (ValueError, KeyError, TypeError) as e:
        return [f"{REPORT_SIGNATURE} is unreadable: {e!r}"]
    problems = []
    for name, digest in sorted(files.items()):
        target = run_dir / name
        if not target.exists():
            problems.append(f"{name} is missing (it was signed)")
        elif file_sha256(target) != digest:
            problems.append(f"{name} was changed after the server signed it")
    if doc.get("signature") is None:
        problems.append(f"{REPORT_SIGNATURE}: the report was not signed (trust.sign-updates off)")
    elif key is not None:
        try:
            valid = verify(key, canonical(statement), bytes.fromhex(str(doc["signature"])))
        except ValueError:
            valid = False
        if not valid:
            problems.append(f"{REPORT_SIGNATURE}: signature does not verify with the server key")
    return problems


def resign_report(run_dir: Path, cfg: RunConfig, reason: str) -> dict[str, Any]:
    """Sign a report rewritten after the ServerApp finished (e.g. with the simulation's
    pooled baseline added): the audit trail records why, then the new report hashes."""
    run_id = str(json.loads((run_dir / "config.json").read_text())["run_id"])
    trust = ServerTrust(cfg, run_dir, run_id)
    audit = AuditTrail(run_dir, sign=trust.signer())
    audit.append("report-rewritten", {"reason": reason})
    return sign_report(trust, audit, run_dir)
