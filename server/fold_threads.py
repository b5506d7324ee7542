"""How many threads a fold takes: torch's own count only where that many cores are free.

An update's fold (``server.folding``) is a few torch operations per block. On torch's
thread pool, each operation waits for its slowest thread: where the other cores are busy
(a simulated round folds each reply while the other sites train on the same cores) that
thread waits for the scheduler, and a default-model update took 20 to 88 ms beside two
CPU-bound processes against 2.3 ms on an idle machine (4 to 8 ms on one thread). So each
update is folded on ``pool_size`` threads, read when it arrives. What the fold computes
does not depend on it: its element-wise operations give the same bits on any number of
threads, and its sums of squares are taken so that they do too
(``sum_of_squares``).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from common.cpu_quota import process_cpus

SPIN_S = 0.05  # a fold's threads may still be running this long after it (``FoldThreads``)
# a block's sum of squares (``sum_of_squares``): in rows from this size, each row on one
# thread; below it on one thread (torch's element-wise operations start threads at 32,768)
SPLIT_VALUES = 32_768
ROWS = 8


def pool_size(
    limit: int, own: int = 0, loadavg: Path = Path("/proc/loadavg"), cores: int | None = None
) -> int:
    """How many threads a fold may use now: ``limit`` (torch's own count), at most the
    cores this process may use (``cores``, by default ``common.cpu_quota.process_cpus``:
    its affinity, at most its container's CPU quota) that no other task is running on
    (Linux: the running tasks of ``/proc/loadavg``, less this thread and ``own`` more of
    this process's); ``limit`` where the system does not say. A container sees its
    host's tasks: a busy host folds on one thread."""
    try:
        running = int(loadavg.read_text(encoding="ascii").split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return limit
    cores = process_cpus() if cores is None else cores
    return max(1, min(limit, cores - max(0, running - 1 - own)))


@functools.cache
def _settable_threads() -> bool:
    """Whether torch's thread count can change at any time (its OpenMP backend, that of
    the Linux, Windows and macOS wheels); its native pool keeps its first size."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's operations in this thread on ``n`` threads, the count before restored
    after (torch's OpenMP count is the calling thread's own; a thread that makes its
    first torch call meanwhile starts with ``n``: in a ServerApp, only the thread that
    runs it calls torch). Nothing changes where the count is fixed (``_settable_threads``)."""
    before = torch.get_num_threads()
    if n != before and not _settable_threads():
        n = before
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


class FoldThreads:
    """The threads of one aggregator's folds: each update's on ``pool_size`` threads, at
    most torch's count when the aggregator was made. torch's OpenMP threads keep running
    (spinning) for some milliseconds after an operation (15 to 22 ms measured here):
    within ``SPIN_S`` of the last fold they are this process's own, not another task's.
    A pass inside a fold (taking a rejected update out) keeps its threads."""

    def __init__(self) -> None:
        self.limit = min(torch.get_num_threads(), process_cpus())
        self._used, self._ended = 1, -math.inf  # the last fold's threads, when it ended
        self._inside = False

    @contextmanager
    def fold(self) -> Iterator[None]:
        if self._inside:
            yield
            return
        spinning = self._used - 1 if time.monotonic() - self._ended < SPIN_S else 0
        n = pool_size(self.limit, spinning)
        self._inside = True
        try:
            with torch_threads(n):
                yield
        finally:
            self._inside, self._used, self._ended = False, n, time.monotonic()


def sum_of_squares(values: torch.Tensor) -> float:
    """The sum of squares of ``values``, the same bits on any number of threads.

    torch (and MKL) split a reduction to one number between their threads, each summing
    its own part, so its bits depend on the thread count; but a reduction to several
    numbers gives each row to one thread whole. A block of ``SPLIT_VALUES`` values or
    more is therefore summed as ``ROWS`` row norms (and the few values left over), whose
    squares are added in float64; a smaller one on one thread. Where float32 squares
    overflow (finite values), the sum is taken in float64 on one thread: infinite only if
    the values are not finite or the sum overflows float64 too."""
    n = values.numel()
    if n < SPLIT_VALUES:
        with torch_threads(1):
            total = float(torch.dot(values, values))
    else:
        whole = n // ROWS * ROWS
        rows = torch.linalg.vector_norm(values[:whole].view(ROWS, -1), dim=1).tolist()
        tail = values[whole:]
        total = math.fsum(r * r for r in rows) + float(torch.dot(tail, tail))
    if not math.isfinite(total):
        with torch_threads(1):
            total = float(torch.linalg.vector_norm(values, dtype=torch.float64)) ** 2
    return total
