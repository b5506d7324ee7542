"""The one atomic writer (``common.files``): old content or new, never part, never a leftover."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from common.files import atomic_file, write_atomic


def test_a_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_atomic(path, "old")
    write_atomic(path, b"new \xe2\x9c\x93")
    assert path.read_text(encoding="utf-8") == "new ✓"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_private_state_is_0600_from_the_start_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    (tmp_path / "ledger.json.tmp").write_text("a stale temporary, world-readable")
    os.chmod(tmp_path / "ledger.json.tmp", 0o644)
    old = os.umask(0)
    try:
        write_atomic(path, "{}", mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    write_atomic(path, b"round 3")
    with pytest.raises(RuntimeError, match="disk full"), atomic_file(path) as f:
        f.write(b"round 4, half writ")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"round 3"
    assert not (tmp_path / "checkpoint.pt.tmp").exists()
