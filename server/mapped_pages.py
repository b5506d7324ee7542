"""A parked update's pages let go as it is folded (``server.folding``).

A reply that arrives before its turn waits on disk (``server.spill``) and is read back
memory-mapped; its pages, once read, would stay in the process's resident set until the
map is gone. ``drop_pages`` hands the span just folded back (the kernel keeps it in its
page cache), so a parked update is resident a few blocks at a time, not whole beside the
reply whose arrival made it due.
"""

from __future__ import annotations

import mmap

import numpy as np


def file_mapping(values: np.ndarray) -> mmap.mmap | None:
    """The file mapping ``values`` lie in (a parked update read back from disk,
    ``server.spill``), if the system can drop its pages (``drop_pages``); else None."""
    base = values.base
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    return base if base is not None and hasattr(base, "madvise") else None


def drop_pages(mapping: mmap.mmap, values: np.ndarray) -> None:
    """The pages of ``values``' span in the read-only file ``mapping`` leave this
    process's resident set: they stay in the kernel's page cache, and a later read maps
    them again (the same bytes). A parked update folded in its turn is then resident a
    few blocks at a time (``DROP_VALUES``), not whole beside the reply whose arrival
    made it due."""
    if values.nbytes == 0:
        return
    start = values.ctypes.data - np.frombuffer(mapping, np.uint8).ctypes.data
    first = start // mmap.PAGESIZE * mmap.PAGESIZE  # a shared page is only read again
    mapping.madvise(mmap.MADV_DONTNEED, first, start + values.nbytes - first)
