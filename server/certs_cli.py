"""The coordinating center's ``hepafed certs init``: the federation's CA, the SuperLink's
server certificate and (``--keyring``) the server's update-signing key.

The CA key goes to a folder of its own (``OUT-ca-offline`` by default), never beside the
SuperLink's files: it is needed only to issue new certificates, so it is kept offline.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from common.cli import EXIT_OK
from common.crypto import (
    CA_CERT,
    CA_KEY,
    SERVER_CERT,
    SERVER_KEY,
    CertificateFiles,
    certificate_hosts,
    create_certificates,
)
from common.signing import SERVER_PUBLIC_KEY, Keyring
from server.deploy import LOOPBACK_NAMES


def cmd_certs_init(args: argparse.Namespace) -> int:
    """Create the CA and the server certificate (or keep complete existing ones)."""
    out = Path(args.out)
    # the CA key never sits with the SuperLink's files: by default in a sibling folder that
    # the operator moves offline (it is needed only to issue new certificates)
    ca_dir = Path(args.ca_dir) if args.ca_dir else out.parent / f"{out.name}-ca-offline"
    if not args.ca_dir and (out / CA_KEY).is_file():
        ca_dir = out  # a folder made before: kept as it is (`server start` warns about it)
    # The SuperLink's own SuperExec reaches its Runtime API over TLS on loopback.
    args.host = [*args.host, *(h for h in LOOPBACK_NAMES if h not in args.host)]
    wanted = [out / CA_CERT, out / SERVER_CERT, out / SERVER_KEY, ca_dir / CA_KEY]
    if args.exist_ok and all(p.is_file() for p in wanted):
        have = set(certificate_hosts(out / SERVER_CERT))
        missing = [h for h in args.host if h not in have]
        if missing:
            raise ValueError(
                f"{out / SERVER_CERT} exists but lacks {', '.join(missing)}; "
                "create new certificates in a fresh folder"
            )
        print(f"certificates in {out} kept (server names: {', '.join(sorted(have))})")
        files = CertificateFiles(
            out / CA_CERT, ca_dir / CA_KEY, out / SERVER_CERT, out / SERVER_KEY
        )
    else:
        files = create_certificates(out, args.host, days=args.days)
        if ca_dir != out:
            ca_dir.mkdir(parents=True, exist_ok=True)
            shutil.move(files.ca_key, ca_dir / CA_KEY)
            shutil.copyfile(files.ca_cert, ca_dir / CA_CERT)
            files = CertificateFiles(
                files.ca_cert, ca_dir / CA_KEY, files.server_cert, files.server_key
            )
        print(f"CA and server certificate for {', '.join(args.host)} in {out}")
    if args.public_out:
        public = Path(args.public_out)
        public.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files.ca_cert, public / CA_CERT)
        print(f"  {public / CA_CERT}: give this file to every site")
    print(f"  {files.ca_cert}: the CA certificate, give it to every site")
    print(f"  {files.server_cert}, {files.server_key}: for `hepafed server start --certs {out}`")
    print(f"  {files.ca_key}: the CA's private key; move {files.ca_key.parent} off this host "
          "(offline storage), never send it")  # fmt: skip
    if args.keyring:
        keyring = Keyring(Path(args.keyring))
        keyring.ensure_server_key()
        print(f"  {keyring.server_private}: the server's signing key (runs: --keyring)")
        print(f"  {keyring.server_public}: give it to every site (`site start --server-key`)")
        if args.public_out:
            shutil.copyfile(keyring.server_public, Path(args.public_out) / SERVER_PUBLIC_KEY)
            print(f"  {Path(args.public_out) / SERVER_PUBLIC_KEY}: the same, for the sites")
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``certs`` and its commands to the root's subparsers (``common.cli``)."""
    p = sub.add_parser("certs", help="TLS certificates for a deployment")
    certs_sub = p.add_subparsers(dest="certs_command", required=True)
    c = certs_sub.add_parser("init", help="create a CA and the SuperLink's server certificate")
    c.add_argument("--out", required=True, help="folder for ca.pem, server.pem, server.key")
    c.add_argument(
        "--host",
        action="append",
        required=True,
        help="a host name or IP the sites use to reach the SuperLink (repeat for several); "
        "localhost and 127.0.0.1 are always added",
    )
    c.add_argument(
        "--ca-dir",
        help="write ca.key (and a copy of ca.pem) here, to keep offline "
        "(default: OUT-ca-offline beside --out, never inside it)",
    )
    c.add_argument("--public-out", help="also copy ca.pem here, to hand to the sites")
    c.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    c.add_argument("--exist-ok", action="store_true", help="keep complete existing files")
    c.add_argument("--keyring", help="also create the server's update-signing key here")
    c.set_defaults(func=cmd_certs_init)
