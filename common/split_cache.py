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

import functools
import hashlib
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("hepafed.progress")

SUFFIX = ".split"
STALE_TMP_S = 3600.0  # a temporary file this old was left by a killed writer
_SPLIT_NAME = re.compile(r"[a-z]+")


def split_file(folder: Path, split: str, key: Any) -> Path:
    """The file of ``split`` under ``folder`` (the site's per-case cache folder for its
    pipeline) for the cache key ``key`` (its ``repr`` is hashed, with the code that makes
    a split, ``code_version``)."""
    if not _SPLIT_NAME.fullmatch(split):
        raise ValueError(f"split {split!r}: a split's name is lowercase letters, not a path")
    text = repr((code_version(), key)).encode("utf-8")
    return folder / f"{split}-{hashlib.sha256(text).hexdigest()[:32]}{SUFFIX}"


@functools.cache
def code_version() -> str:
    """What else decides a split's tensors: the code that loads and preprocesses cases
    (``common.data``, ``common.preprocess``, ``common.checkedload``: a bundle or release
    that changes them reads other files) and the torch and MONAI versions."""
    import monai

    from common import checkedload, data, preprocess

    digest = hashlib.sha256()
    for module in (data, preprocess, checkedload):
        digest.update(Path(str(module.__file__)).read_bytes())
    return f"{digest.hexdigest()[:16]} torch {torch.__version__} monai {monai.__version__}"


def read_stacked(path: Path) -> dict[str, Any] | None:
    """The content ``write_stacked`` wrote at ``path``; ``None`` when there is none or it
    cannot be read (then it is loaded from the cases again)."""
    try:
        if not path.is_file():
            return None
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged or unreadable file is a cache miss
        log.warning("cached split %s not read (%s): loading its cases again", path, err)
        return None
    return content if isinstance(content, dict) else None


def write_stacked(path: Path, content: dict[str, Any]) -> None:
    """Write ``content`` (tensors, strings, lists) at ``path``, whole and owner-only, and
    remove the same split's files of older keys (and temporary files a killed writer left
    an hour ago or more). A file that cannot be written is only a warning: the split was
    loaded, the next process loads it from its cases again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")  # 0600
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(content, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        log.warning("split %s not stacked on disk (%s): the next process reads its cases",
                    path, err)  # fmt: skip
        return
    split = path.name.rsplit("-", 1)[0]
    for old in path.parent.glob(f"{split}-*{SUFFIX}*"):
        if old == path or old.name.rsplit("-", 1)[0] != split:
            continue
        try:
            if old.name.endswith(SUFFIX) or time.time() - old.stat().st_mtime > STALE_TMP_S:
                old.unlink(missing_ok=True)
        except OSError:  # gone meanwhile, or not ours to remove: the next writer tries again
            continue
