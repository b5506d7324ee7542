"""Freed large buffers go back to the operating system at once (glibc ``mallopt``).

glibc serves a request of at least ``M_MMAP_THRESHOLD`` bytes with its own memory map,
which ``free`` unmaps. The threshold starts at 128 KiB and rises, up to 32 MiB, to the
size of any such block freed; past that, blocks of a few MiB (Flower's 5 MB array chunks,
a layer of an update) come from the heap, where a freed block stays resident until
everything above it is freed too. A process that pulls, folds and drops one large update
after another then keeps the resident size of its worst moment, plus the fragments
between. Setting the threshold fixes it (glibc stops adjusting it), so every block from
``LARGE`` up is unmapped when freed. The cost is a fresh, zeroed mapping for every such
block, which is why a process that trains (and allocates large tensors at every step)
does not call this: the deployed ServerApp does.

On a C library without ``mallopt`` (macOS, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h
LARGE = 1 << 20  # bytes

log = logging.getLogger(__name__)


def return_large_blocks(threshold: int = LARGE) -> bool:
    """Serve blocks of ``threshold`` bytes and more with their own memory maps, unmapped
    when freed; whether the C library took the setting."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no mallopt in the C library (%s): the allocator keeps its default", name)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))


def freeze_start() -> None:
    """The objects alive now (at a process's start: the imported modules) leave the cycle
    collector's generations for good (``gc.freeze``), after one full collection (what is
    dead now would otherwise stay): later full collections visit only what the process
    made since, about a millisecond against a fifth of a second with torch and Flower
    imported. For a process that must run full collections often (``server.pull``)."""
    gc.collect()
    gc.freeze()
