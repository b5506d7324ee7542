"""The ``hepafed audit`` subcommands: check a run's hash-chained audit trail.

``hepafed audit verify RUN_DIR [--public-key FILE] [--allow-unfinished]`` re-derives every
hash and link of ``RUN_DIR/audit.jsonl``, checks ``audit.head.json`` (and its signature, given
the server's public key), the signed report and every checkpoint against the trail
(``server.audit_run``). Exit status 0 when the run is intact and ended, 1 when anything was
tampered with, 2 when it is intact but the run did not end (its trail is not sealed), which
``--allow-unfinished`` accepts for a run in progress.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.signing import PublicKey, SigningKeyError, load_public_key, verify
from server.audit import AUDIT_FILE, HEAD_FILE

EXIT_OK, EXIT_PROBLEMS, EXIT_UNFINISHED = 0, 1, 2
RUN_KEY_COPY = Path("keys") / "server.pub"


def verify_with(key: PublicKey) -> Callable[[bytes, bytes], bool]:
    """A ``(data, signature) -> bool`` check with the server's public key."""
    return lambda data, signature: verify(key, data, signature)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Print each problem of the run folder against its trail (or that it is intact): 0 when
    intact and ended, 1 on any problem, 2 when intact but not ended."""
    run_dir = Path(args.run_dir)
    trail = run_dir / AUDIT_FILE
    if not run_dir.is_dir():
        print(f"audit: no run folder at {run_dir}")
        return EXIT_PROBLEMS
    if not trail.is_file():
        print(f"audit: no audit trail in {run_dir}: {trail} does not exist")
        return EXIT_PROBLEMS
    key_file = Path(args.public_key) if args.public_key else run_dir / RUN_KEY_COPY
    check = None
    key: PublicKey | None = None
    if args.public_key or key_file.is_file():
        try:
            key = load_public_key(key_file)
            check = verify_with(key)
        except (OSError, ValueError, SigningKeyError) as e:
            print(f"audit: cannot use the public key {key_file}: {e}")
            return EXIT_PROBLEMS
        if args.public_key:
            print(f"key: {key_file}")
        else:
            print(
                f"key: {key_file}, the copy inside the run folder: whoever could rewrite the "
                "trail could replace it too, so this proves less than checking with the "
                "federation's own copy (--public-key)"
            )
    else:
        print(f"key: none (no --public-key and no {key_file}): the head signature is not checked")
    from server.audit_run import verify_run  # server.trust imports torch: not for --help

    audit = verify_run(run_dir, check, key)
    if audit.problems:
        for problem in audit.problems:
            print(problem)
        print(f"audit trail NOT intact: {len(audit.problems)} problem(s)")
        return EXIT_PROBLEMS
    report = audit.trail
    if report.head_signed:
        head = "head signed by the server key"
    else:
        head = "head unsigned" if _unsigned(run_dir) else "head signature not checked (no key)"
    print(f"audit trail {trail}: {report.entries} entries, chain intact, {head}")
    if audit.finished:
        print(f"run {report.run_id} finished: trail sealed, report and checkpoints match it")
        return EXIT_OK
    print(
        "run not finished / trail not sealed: no final entry at the end of the trail (a run "
        "in progress or stopped, or an older head and trail put back); nothing was found "
        "tampered with"
    )
    if args.allow_unfinished:
        return EXIT_OK
    print("use --allow-unfinished to accept a run in progress")
    return EXIT_UNFINISHED


def _unsigned(run_dir: Path) -> bool:
    """Whether the run's (already verified, so readable) head carries no signature."""
    head = json.loads((run_dir / HEAD_FILE).read_text(encoding="utf-8"))
    return head.get("signature") is None


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``audit`` and its commands to the root's subparsers (``common.cli``)."""
    p = sub.add_parser("audit", help="check a run's tamper-evident audit trail")
    audit_sub = p.add_subparsers(dest="audit_command", required=True)
    c = audit_sub.add_parser(
        "verify", help="re-derive every hash and link of RUN_DIR/audit.jsonl and check its head"
    )
    c.add_argument("run_dir", help="the run folder holding audit.jsonl and audit.head.json")
    c.add_argument(
        "--public-key",
        metavar="FILE",
        help="the server's public key (OpenSSH or PEM) to check the head signature with "
        f"(default: RUN_DIR/{RUN_KEY_COPY.as_posix()}, the copy the server writes there)",
    )
    c.add_argument(
        "--allow-unfinished",
        action="store_true",
        help="exit 0 for an intact run that has not ended (no final entry): a run in progress",
    )
    c.set_defaults(func=cmd_audit_verify)
