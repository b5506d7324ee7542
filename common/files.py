"""Writing a file so that a reader, or a crash, sees the old content or the new, never part.

One writer for every state and record file (run records, checkpoints, the report and its
signature, the audit head, a site's approvals and privacy ledger, the SuperLink's site
registry): the content goes to ``NAME.tmp`` in the same folder (a stale one is reused; a
link planted by that name to redirect the write is refused, never followed), is flushed
and fsynced, renamed over ``NAME`` (atomic on POSIX), and the folder is fsynced so the
rename survives a power cut. A failed write removes its temporary file and leaves
``NAME`` as it was; a folder sync that fails after the rename raises ``NotDurable``: the
new content is in place, but a power cut could still undo it. Folders that hold patient
data (cached crops, explanations) are owner-only: ``private_folder``, ``restrict_tree``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX only; elsewhere a no-op)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NotDurable(OSError):
    """The new content replaced the file, but its folder could not be synced."""


@contextmanager
def atomic_file(path: Path, mode: int | None = None) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces ``path`` when the block ends without an
    error. ``mode``: the file's permissions from the moment it exists (e.g. 0o600 for a
    site's private state), whatever the umask; ``None`` keeps the usual umask rule."""
    tmp = path.with_name(path.name + ".tmp")
    # a stale temporary is reused; a link in its place is an error, never followed
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)  # an existing .tmp kept its old permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fsync_dir(path.parent)
    except OSError as e:
        raise NotDurable(e.errno, f"{path} was replaced, but its folder was not synced: "
                         f"{e.strerror}") from e  # fmt: skip


def write_atomic(path: Path, data: bytes | str, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8), atomically and durably."""
    with atomic_file(path, mode) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def try_lock(path: Path) -> IO[str] | None:
    """An open handle on ``path`` (created if need be) holding its exclusive lock, or None
    at once if another process holds it. The lock lasts until the handle is closed or the
    process ends, however it ends (``flock``: a killed holder leaves no stale lock)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("a")  # append: never truncates what is there by that name
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


def private_folder(path: Path) -> Path:
    """Create ``path`` (and parents) if needed, owner-only (0700); return it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def restrict_tree(root: Path) -> None:
    """Make ``root`` and every folder under it 0700, every file 0600 (cached patient crops)."""
    if not root.is_dir():
        return
    os.chmod(root, 0o700)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(Path(folder) / name, 0o700)
        for name in files:
            os.chmod(Path(folder) / name, 0o600)
