"""Which Flower app bundles (FABs) this hospital has approved to run.

Whoever submits a run to the SuperLink chooses the app bundle, and a bundle
carries its own ClientApp code, so a check inside hepafed's ClientApp would be
no check at all. The site decides instead, before any bundle code is installed
or imported: the site executor (``client.executor``) runs a bundle only if the
SHA-256 of its bytes is in the site's ``approved-apps.toml`` (the Fed-BioMed
pattern of approving training plans by hash).

A bundle's hash is reproducible: Flower builds a FAB with fixed file dates, so
a hospital computes the hash of a release it reviewed with ``hepafed site
approve-app APP_FOLDER`` (or approves a hash the coordinating center announced
and confirmed by a second channel). A new release has a new hash and needs a new
approval; ``hepafed site revoke-app HASH`` withdraws one (recorded with the
time, so it cannot be mistaken for never approved). No signing key is involved:
the site's own list is the root of trust, and nothing on the SuperLink host can
add to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from common.app_bundle import SHA256 as _SHA256
from common.files import write_atomic

log = logging.getLogger("hepafed.site-executor")

APPROVALS_FILE = "approved-apps.toml"
REFUSALS_LOG = "refused-apps.log"


class AppNotApproved(PermissionError):
    """A bundle this site has not approved (or has revoked) was asked to run here."""


class ApprovalsError(ValueError):
    """``approved-apps.toml`` is unreadable or malformed."""


@dataclass(frozen=True)
class Approval:
    """One approved bundle: its hash, a label saying what it is, and when."""

    sha256: str
    label: str
    approved_at: str


@dataclass(frozen=True)
class Revocation:
    """A bundle hash withdrawn, and when."""

    sha256: str
    revoked_at: str


@dataclass(frozen=True)
class Approvals:
    """The site's approved and revoked bundle hashes (``approved-apps.toml``)."""

    path: Path
    approved: tuple[Approval, ...] = ()
    revoked: tuple[Revocation, ...] = ()

    def allows(self, sha256: str) -> bool:
        return sha256 in {a.sha256 for a in self.approved}

    def require(self, content: bytes, site: str = "") -> str:
        """The bundle's hash if it is approved; else ``AppNotApproved`` naming it.

        The message travels back to whoever submitted the run: it names the bundle and the
        site, never the site's files (the site's own log has the list's path)."""
        digest = hashlib.sha256(content).hexdigest()
        if self.allows(digest):
            return digest
        revoked = next((r for r in self.revoked if r.sha256 == digest), None)
        why = f"was revoked at {revoked.revoked_at}" if revoked else "is not approved"
        where = f" at site {site}" if site else ""
        raise AppNotApproved(
            f"app bundle sha256 {digest} {why}; refused{where} before any of its code ran. "
            f"The site approves a reviewed release with `hepafed site approve-app`"
        )


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _check_hash(value: object, where: str) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise ApprovalsError(f"{where}: sha256 {value!r} is not 64 lowercase hex digits")
    return value


def read_approvals(path: Path) -> Approvals:
    """The approvals in ``path`` (none when it does not exist); named errors when malformed."""
    if not path.exists():
        return Approvals(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ApprovalsError(f"{path}: cannot read the approved apps ({e})") from e
    unknown = sorted(set(data) - {"app", "revoked"})
    if unknown:
        raise ApprovalsError(f"{path}: unknown table(s) {unknown}; expected [[app]], [[revoked]]")
    approved, revoked = [], []
    for i, entry in enumerate(data.get("app", [])):
        where = f"{path} [[app]] #{i + 1}"
        if not isinstance(entry, dict):
            raise ApprovalsError(f"{where}: not a table")
        approved.append(
            Approval(
                _check_hash(entry.get("sha256"), where),
                str(entry.get("label", "")),
                str(entry.get("approved", "")),
            )
        )
    for i, entry in enumerate(data.get("revoked", [])):
        where = f"{path} [[revoked]] #{i + 1}"
        if not isinstance(entry, dict):
            raise ApprovalsError(f"{where}: not a table")
        revoked.append(
            Revocation(_check_hash(entry.get("sha256"), where), str(entry.get("revoked", "")))
        )
    return Approvals(path, tuple(approved), tuple(revoked))


def write_approvals(approvals: Approvals) -> None:
    """Write ``approvals`` atomically (0600: the list is the site's own policy)."""
    lines = [
        "# Flower app bundles (FABs) this site runs, by SHA-256 of the bundle's bytes.",
        "# Managed with `hepafed site approve-app` / `revoke-app`; read before every task.",
    ]
    for a in approvals.approved:
        lines += [
            "",
            "[[app]]",
            f"sha256 = {json.dumps(a.sha256)}",
            f"label = {json.dumps(a.label)}",
            f"approved = {json.dumps(a.approved_at)}",
        ]
    for r in approvals.revoked:
        lines += ["", "[[revoked]]", f"sha256 = {json.dumps(r.sha256)}",
                  f"revoked = {json.dumps(r.revoked_at)}"]  # fmt: skip
    path = approvals.path
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "\n".join(lines) + "\n", mode=0o600)


def approve(path: Path, sha256: str, label: str = "") -> Approvals:
    """Add ``sha256`` to the site's approvals (a revoked hash becomes approved again)."""
    current = read_approvals(path)
    _check_hash(sha256, "approve")
    if current.allows(sha256):
        return current
    updated = Approvals(
        path,
        (*current.approved, Approval(sha256, label, _now())),
        tuple(r for r in current.revoked if r.sha256 != sha256),
    )
    write_approvals(updated)
    return updated


def revoke(path: Path, sha256: str) -> Approvals:
    """Withdraw ``sha256``; a KeyError when it was never approved here."""
    current = read_approvals(path)
    if not current.allows(_check_hash(sha256, "revoke")):
        raise KeyError(f"{sha256} is not approved in {path}")
    updated = Approvals(
        path,
        tuple(a for a in current.approved if a.sha256 != sha256),
        (*current.revoked, Revocation(sha256, _now())),
    )
    write_approvals(updated)
    return updated


def log_refusal(keys_dir: Path, message: str) -> None:
    """Append a refusal to the site's ``refused-apps.log`` (what was refused, and when).

    A read-only site folder (a container mounting its keys read-only) keeps the refusal in
    the executor's own log only; the refusal itself never depends on the file."""
    try:
        fd = os.open(keys_dir / REFUSALS_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(f"{_now()} {message}\n")
    except OSError as e:
        log.warning("refusal not written to %s (%s): %s", keys_dir / REFUSALS_LOG, e, message)
