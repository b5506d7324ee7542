"""A Flower app bundle's identity: the SHA-256 of its bytes (FAB).

The operator prints it when submitting a run (``hepafed run``) and a hospital approves
it (``hepafed site approve-app``); both compute it here, the same way ``flwr run``
builds the bundle (with fixed file dates, so the hash is reproducible from the source).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

SHA256 = re.compile(r"[0-9a-f]{64}")


def bundle_sha256(source: str) -> str:
    """The hash to approve, from a hash, a ``.fab`` file, or an app folder (built as
    ``flwr run`` builds it)."""
    if SHA256.fullmatch(source):
        return source
    path = Path(source)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if (path / "pyproject.toml").is_file():
        from flwr.cli.build import build_fab_from_disk

        return hashlib.sha256(build_fab_from_disk(path)).hexdigest()
    raise ValueError(
        f"{source!r} is not a SHA-256, a .fab file or a Flower app folder (with pyproject.toml)"
    )
