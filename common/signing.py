"""Signatures over model updates and global models, made with ``cryptography``.

A site signs a *statement*: the run id, round, model id, its own name, the
SHA-256 of the global model it received and the SHA-256 digest of the update it
sends. The server rebuilds the statement from what it expects (its run, its
round, the model it sent, the site the message came from, the digest of the
bytes that arrived) and verifies the signature over *that*, so a tampered
update, another site's key, or a replay of an old round or another run fails.
The server signs the global model it sends (run, round, model id, hash) the
same way, and sites check it before they train on or score it.

Keys are ECDSA P-384 with SHA-384, the key type a site already holds for
SuperNode authentication (``common.crypto.create_site_keys``): a hospital has
one key pair, registered once. Private keys are OpenSSH or PEM files; public
keys OpenSSH or PEM ``SubjectPublicKeyInfo``.

Layout of a keyring folder (``trust.keys-dir``; a simulation's is RUN_DIR/keys)::

    server_key            the server's private key (0600, never leaves the center)
    server.pub            its public key: every site gets a copy
    sites/SITE.pub        each site's registered public key
    sites/SITE/site_key   simulation only: the simulated site's private key
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common.crypto import PRIVATE_MODE, write_private
from common.keys import site_name_problem

UNSIGNED_WARNING = (
    "trust.sign-updates = false: updates and models are NOT signed or checked; "
    "any party on the path could alter them. Use this only for a local experiment."
)

SERVER_PRIVATE_KEY = "server_key"
SERVER_PUBLIC_KEY = "server.pub"
SITES_DIR = "sites"
SIM_SITE_KEY = "site_key"

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class SigningKeyError(ValueError):
    """A key file is missing, unreadable or of a type that cannot sign."""


def load_private_key(path: Path | str) -> PrivateKey:
    """An ECDSA or Ed25519 private key from an OpenSSH or PEM file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SigningKeyError(f"signing key {path}: {e.strerror or e}") from e
    try:
        key: Any = (
            serialization.load_ssh_private_key(data, password=None)
            if data.lstrip().startswith(b"-----BEGIN OPENSSH")
            else serialization.load_pem_private_key(data, password=None)
        )
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise SigningKeyError(f"signing key {path} is not a readable private key: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise SigningKeyError(f"signing key {path}: {type(key).__name__} cannot sign; use ECDSA")
    return key


def load_public_key(path: Path | str) -> PublicKey:
    """An ECDSA or Ed25519 public key from an OpenSSH line or a PEM file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SigningKeyError(f"public key {path}: {e.strerror or e}") from e
    try:
        key: Any = (
            serialization.load_pem_public_key(data)
            if data.lstrip().startswith(b"-----BEGIN")
            else serialization.load_ssh_public_key(data.strip())
        )
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise SigningKeyError(f"public key {path} is not a readable public key: {e}") from e
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise SigningKeyError(f"public key {path}: {type(key).__name__} is not an ECDSA key")
    return key


def sign(key: PrivateKey, data: bytes) -> bytes:
    """A signature of ``data`` (ECDSA with SHA-384, DER; or Ed25519)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, ec.ECDSA(hashes.SHA384()))


def verify(key: PublicKey, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``key``'s signature of ``data``."""
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            key.verify(signature, data, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return False
    return True


def canonical(value: Any) -> bytes:
    """The bytes that are hashed and signed: sorted-key compact UTF-8 JSON, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def arrays_hash(arrays: ArrayRecord) -> str:
    """SHA-256 (hex) of an ArrayRecord: every tensor's name and serialised bytes, in order.

    A Flower ``Array`` keeps its ``.npy`` bytes (dtype and shape in the header) as they
    travel, so server and site hash exactly the same bytes."""
    digest = hashlib.sha256()
    _hash_arrays(digest, arrays)
    return digest.hexdigest()


def state_hash(state: Mapping[str, Any]) -> str:
    """``arrays_hash`` of a model state dict (name -> tensor), e.g. a checkpoint's model.

    The one model hash of a run: the ArrayRecord the server signed and sent and the checkpoint
    written from it give the same SHA-256, so the trail, the report and resume can match them."""
    return arrays_hash(ArrayRecord(dict(state)))


def _hash_arrays(digest: Any, arrays: ArrayRecord) -> None:
    for name, array in arrays.items():
        digest.update(f"{len(name)}:{name}:{array.stype}:{len(array.data)}:".encode())
        digest.update(array.data)


def update_digest(content: RecordDict, exclude: Iterable[str] = ()) -> str:
    """SHA-256 (hex) of what a reply carries: every ArrayRecord and MetricRecord by key.

    The metrics are covered too: the example count weighs the update in the mean.
    ConfigRecords (the site's name and the signature itself) are not."""
    digest = hashlib.sha256()
    skip = set(exclude)
    for key in sorted(k for k in content if k not in skip):
        record = content[key]
        if isinstance(record, ArrayRecord):
            digest.update(f"arrays:{key}:".encode())
            _hash_arrays(digest, record)
        elif isinstance(record, MetricRecord):
            digest.update(f"metrics:{key}:".encode())
            digest.update(canonical({k: _plain(v) for k, v in record.items()}))
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


def signed_fields(
    record: ConfigRecord, statement_key: str, signature_key: str
) -> tuple[dict[str, Any], bytes]:
    """The statement (JSON text) and signature (hex) a ConfigRecord carries.

    Raises ValueError naming what is missing or malformed."""
    if statement_key not in record or signature_key not in record:
        raise ValueError("unsigned: no statement and signature")
    try:
        statement = json.loads(str(record[statement_key]))
        signature = bytes.fromhex(str(record[signature_key]))
    except (json.JSONDecodeError, ValueError) as e:
        raise ValueError(f"malformed statement or signature: {e}") from e
    if not isinstance(statement, dict):
        raise ValueError("malformed statement: not a JSON object")
    return statement, signature


def differences(claimed: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """Which fields of a signed statement differ from what the receiver expects, e.g.
    ``round: signed 2, expected 3``."""
    out = []
    for key, want in expected.items():
        got = claimed.get(key)
        if got != want:
            out.append(f"{key}: signed {_short(got)!r}, expected {_short(want)!r}")
    return out


def _short(value: Any) -> Any:
    return f"{value[:12]}..." if isinstance(value, str) and len(value) > 16 else value


def create_key_pair(private_path: Path, public_path: Path, comment: str = "") -> PublicKey:
    """A new ECDSA P-384 key pair: OpenSSH private key (0600, never overwritten) and
    public key."""
    key = ec.generate_private_key(ec.SECP384R1())
    write_private(
        private_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    public_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.write_bytes(public + (f" {comment}".encode() if comment else b"") + b"\n")
    return key.public_key()


class Keyring:
    """The server's keys and the registered site keys in one folder (see module doc)."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)

    @property
    def server_private(self) -> Path:
        return self.folder / SERVER_PRIVATE_KEY

    @property
    def server_public(self) -> Path:
        return self.folder / SERVER_PUBLIC_KEY

    def site_public(self, site: str) -> Path:
        problem = site_name_problem(site)
        if problem is not None:  # a name never becomes a path outside sites/
            raise SigningKeyError(problem)
        return self.folder / SITES_DIR / f"{site}.pub"

    def simulated_site_private(self, site: str) -> Path:
        return self.folder / SITES_DIR / site / SIM_SITE_KEY

    def ensure_server_key(self) -> PrivateKey:
        """The server's signing key, made on first use (0600)."""
        if not self.server_private.exists():
            create_key_pair(self.server_private, self.server_public, "hepafed-server")
        key = load_private_key(self.server_private)
        if self.server_private.stat().st_mode & 0o077:
            raise SigningKeyError(
                f"{self.server_private} is readable by others; chmod {PRIVATE_MODE:o} it"
            )
        return key

    def ensure_simulated_site(self, site: str) -> None:
        """A key pair for a simulated site whose registered key is missing."""
        if not self.site_public(site).exists():
            create_key_pair(self.simulated_site_private(site), self.site_public(site), site)

    def site_key(self, site: str) -> PublicKey | None:
        """The registered public key of ``site``, or None if it has none."""
        path = self.site_public(site)
        return load_public_key(path) if path.exists() else None


def model_statement(run_id: str, server_round: int, model: str, model_hash: str) -> dict[str, Any]:
    """What the server signs for a model it sends."""
    return {"kind": "model", "run": run_id, "round": server_round, "model": model,
            "global": model_hash}  # fmt: skip


def update_statement(
    run_id: str, server_round: int, model: str, site: str, model_hash: str, digest: str
) -> dict[str, Any]:
    """What a site signs for an update it sends."""
    return {"kind": "update", "run": run_id, "round": server_round, "model": model,
            "site": site, "global": model_hash, "update": digest}  # fmt: skip


def identity_statement(challenge: str, node_id: int, site: str, digest: str) -> dict[str, Any]:
    """What a site signs when it answers the site query: its name, for this node and this
    query's fresh challenge, over the reply's content (``update_digest``)."""
    return {"kind": "identity", "challenge": challenge, "node": node_id, "site": site,
            "reply": digest}  # fmt: skip


def record_digest(record: Mapping[str, Any], exclude: Iterable[str] = ()) -> str:
    """SHA-256 (hex) of a ConfigRecord's fields (a site-query reply), less ``exclude``
    (the statement and signature themselves)."""
    skip = set(exclude)
    return hashlib.sha256(
        canonical({k: _plain(v) for k, v in record.items() if k not in skip})
    ).hexdigest()


def instruction_statement(
    run: int, message_type: str, node: int, model_hash: str, digest: str
) -> dict[str, Any]:
    """What the server signs for every message it sends: the Flower run, the kind of
    message, the one node it is for, the model it carries ("" for none) and the digest of
    everything else it carries (``instruction_digest``), so a site cannot pass its own
    instruction on to another node, nor change what it asks."""
    return {"kind": "instruction", "run": run, "type": message_type, "node": node,
            "model": model_hash, "content": digest}  # fmt: skip


def instruction_digest(
    content: RecordDict, config_key: str, model_key: str, signature_field: str
) -> str:
    """SHA-256 (hex) of a server message's content less its model (``model_key``, hashed
    apart): every field of its ConfigRecord (but the signature itself) and every other
    ArrayRecord and MetricRecord."""
    config = content.get(config_key)
    fields = dict(config.items()) if isinstance(config, Mapping) else {}
    digest = hashlib.sha256(record_digest(fields, (signature_field,)).encode())
    digest.update(update_digest(content, exclude=(model_key, config_key)).encode())
    return digest.hexdigest()
