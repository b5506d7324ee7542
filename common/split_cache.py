"""A split's stacked tensors in one file of the site's cache folder, for its next process.

A deployed site runs every task in a new process (``client.executor``), so the
in-memory cache of ``common.data`` does not reach the next round; the per-case disk
cache (MONAI ``PersistentDataset``) saves the preprocessing, but every task still reads,
checks and stacks each case again. This keeps the stacked split in one file, beside the
per-case files, named by the split and the hash of the in-memory cache's own key (site
folder, manifest hash, split, data settings, task, and the size and modification time of
every file a case reads), so a changed file, manifest or setting reads another name; a
new file of a split replaces the split's older ones.

The file is read with ``torch.load(weights_only=True)``: tensors, strings, numbers and
lists, never code. A file that cannot be read is ignored, and the split is loaded from
its cases and written again. Files are written whole (a temporary file renamed over the
name, owner-only), so a reader never sees part of one.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("hepafed.progress")

SUFFIX = ".split"
_SPLIT_NAME = re.compile(r"[a-z]+")


def split_file(folder: Path, split: str, key: Any) -> Path:
    """The file of ``split`` under ``folder`` (the site's per-case cache folder for its
    pipeline) for the cache key ``key`` (its ``repr`` is hashed)."""
    if not _SPLIT_NAME.fullmatch(split):
        raise ValueError(f"split {split!r}: a split's name is lowercase letters, not a path")
    digest = hashlib.sha256(repr(key).encode("utf-8")).hexdigest()[:32]
    return folder / f"{split}-{digest}{SUFFIX}"


def read_stacked(path: Path) -> dict[str, Any] | None:
    """The content ``write_stacked`` wrote at ``path``; ``None`` when there is none or it
    cannot be read (then it is loaded from the cases again)."""
    if not path.is_file():
        return None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        log.warning("cached split %s not read (%s): loading its cases again", path, err)
        return None
    return content if isinstance(content, dict) else None


def write_stacked(path: Path, content: dict[str, Any]) -> None:
    """Write ``content`` (tensors, strings, lists) at ``path``, whole and owner-only, and
    remove the same split's files of older keys."""
    buffer = io.BytesIO()
    torch.save(content, buffer)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    split = path.name.rsplit("-", 1)[0]
    for old in path.parent.glob(f"{split}-*{SUFFIX}"):
        if old != path and old.name.rsplit("-", 1)[0] == split:
            old.unlink(missing_ok=True)
