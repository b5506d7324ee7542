"""The one atomic writer (``common.files``): old content or new, never part, never a leftover."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from common import files
from common.files import NotDurable, atomic_file, try_lock, write_atomic


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


def test_a_link_planted_as_the_temporary_is_refused_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not to be overwritten")
    write_atomic(tmp_path / "sites.json", "old")
    (tmp_path / "sites.json.tmp").symlink_to(elsewhere)
    with pytest.raises(OSError):
        write_atomic(tmp_path / "sites.json", "{}", mode=0o600)
    assert elsewhere.read_text() == "not to be overwritten"
    assert (tmp_path / "sites.json").read_text() == "old"


def test_a_folder_that_cannot_be_synced_says_the_new_content_is_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"

    def broken(folder: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(files, "fsync_dir", broken)
    with pytest.raises(NotDurable, match="state.json was replaced.*Input/output error"):
        write_atomic(path, "new")
    assert path.read_text() == "new"  # an OSError a caller can tell from a failed write


def test_a_lock_is_held_by_one_handle_at_a_time_and_freed_with_it(tmp_path: Path) -> None:
    lock = tmp_path / "new" / "results.jsonl.lock"
    first = try_lock(lock)  # the folder and the file are made
    assert first is not None
    assert try_lock(lock) is None  # another holder (flock: per open file, as a process)
    first.close()
    again = try_lock(lock)
    assert again is not None
    again.close()
