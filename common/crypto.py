"""Certificates and keys for a deployment, made with ``cryptography``.

The coordinating center holds a small certificate authority (CA) and a server
certificate signed by it whose subject alternative names (SANs) list every host
name and IP address the hospitals use to reach the SuperLink; hospitals get only
``ca.pem``. Each hospital holds an ECDSA P-384 key pair in the OpenSSH format
Flower's SuperNode authentication reads (``flower-supernode
--auth-supernode-private-key`` loads an OpenSSH private key, ``flwr supernode
register`` an OpenSSH public key, both on a NIST curve). Private keys are
written with mode 0600 and never overwritten.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
SITE_PRIVATE_KEY = "site_key"
SITE_PUBLIC_KEY = "site_key.pub"
PRIVATE_MODE = 0o600

_CURVE = ec.SECP384R1


@dataclass(frozen=True)
class CertificateFiles:
    """Where ``create_certificates`` wrote the CA and the server certificate."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class SiteKeyFiles:
    """A site's SuperNode authentication key pair."""

    private_key: Path
    public_key: Path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file readable by its owner only (mode 0600).

    Refuses to overwrite: replacing a key silently would lock a site out or
    invalidate every issued certificate.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, PRIVATE_MODE)  # the umask may have narrowed it; make it exact


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o644)


def _subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_certificates(
    out: Path,
    hosts: Sequence[str],
    *,
    days: int = 825,
    organization: str = "hepafed federation",
) -> CertificateFiles:
    """Create a CA and a server certificate for ``hosts`` (names or IPs) in ``out``.

    The server certificate carries every host as a SAN (IP or DNS entry) and
    the first one as its common name. Existing files are never overwritten.
    """
    if not hosts:
        raise ValueError("certs init: give at least one --host (name or IP of the SuperLink)")
    files = CertificateFiles(out / CA_CERT, out / CA_KEY, out / SERVER_CERT, out / SERVER_KEY)
    existing = [str(p) for p in vars(files).values() if Path(p).exists()]
    if existing:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)}")
    now = dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(minutes=5)

    ca_key = ec.generate_private_key(_CURVE())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{organization} CA"),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA384())
    )

    server_key = ec.generate_private_key(_CURVE())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                    x509.NameAttribute(NameOID.COMMON_NAME, hosts[0]),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )

    write_private(files.ca_key, _pem_key(ca_key))
    write_private(files.server_key, _pem_key(server_key))
    _write_public(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_public(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    return files


def create_site_keys(out: Path, comment: str = "") -> SiteKeyFiles:
    """Create a site's ECDSA P-384 key pair in OpenSSH format in ``out``.

    ``site_key`` (0600) stays at the hospital; ``site_key.pub`` is sent to the
    coordinating center, which registers it with ``flwr supernode register``.
    """
    files = SiteKeyFiles(out / SITE_PRIVATE_KEY, out / SITE_PUBLIC_KEY)
    for path in (files.private_key, files.public_key):
        if path.exists():
            raise FileExistsError(f"refusing to overwrite {path}")
    key = ec.generate_private_key(_CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    write_private(files.private_key, private)
    _write_public(files.public_key, public + (f" {comment}".encode() if comment else b"") + b"\n")
    return files


def certificate_hosts(cert_file: Path) -> list[str]:
    """The SAN entries (DNS names and IPs) of a PEM certificate, as strings."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    ]


def public_key_fingerprint(public_key_file: Path) -> str:
    """SHA-256 fingerprint (hex, colon-separated) of an OpenSSH public key file."""
    key = serialization.load_ssh_public_key(public_key_file.read_bytes())
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return ":".join(f"{b:02x}" for b in digest.finalize())


INSECURE_WARNING = (
    "\n"
    "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    "!! WARNING: --insecure: TLS is OFF and site authentication is OFF.           !!\n"
    "!! Model updates and metrics travel UNENCRYPTED and ANY node can join.        !!\n"
    "!! Use this only for a local test, never with patient data or across sites.  !!\n"
    "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
)


def warn_insecure() -> None:
    """Print the loud ``--insecure`` warning on stderr."""
    print(INSECURE_WARNING, file=sys.stderr, flush=True)
