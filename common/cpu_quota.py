"""The CPUs this process may use: the cores it may run on, at most its cgroup's CPU quota.

A container or a Kubernetes pod with a CPU limit (``docker run --cpus 4``, ``resources:
limits: cpu``) still sees every core of its host: ``os.sched_getaffinity`` and torch's
default thread count say 64 on a 64-core host. The limit is a quota of CPU time per
period (the kernel's CFS bandwidth control): 64 threads share 4 CPUs' worth of each
100 ms, run for a few milliseconds and are then all stopped until the next period. Each
torch operation waits for its slowest thread, so a throttled thread stalls the whole
operation: training and aggregation slow down, the more the larger the host.

``cpu_limit`` reads the quota this process runs under: cgroup v2's ``cpu.max``
(``QUOTA PERIOD``, or ``max``) or cgroup v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``
(``-1``: none), for the process's own cgroup and every cgroup above it up to the
mount's root (a limit set on a parent holds for its children); the smallest. Where the
process's cgroup path is not under the mount (a container that sees its own cgroup as
the mount's root), the mount's root is read. ``usable_cpus`` is the affinity's core
count, at most the limit rounded down (at least 1): a thread more than the quota would
be the one throttled.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from pathlib import Path

PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cpu_limit(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> float | None:
    """The CPUs' worth of time per period this process's cgroups allow (1.5: one and a
    half CPUs), the smallest over its cgroup and those above it; None where no quota is
    set or the system does not say."""
    try:
        lines = proc_cgroup.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    limits: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2's unified hierarchy
            limits += _levels(root, path, _v2_limit)
        elif "cpu" in controllers.split(","):
            mount = _v1_cpu_mount(root)
            if mount is not None:
                limits += _levels(mount, path, _v1_limit)
    return min(limits) if limits else None


def _v1_cpu_mount(root: Path) -> Path | None:
    """cgroup v1's folder of the ``cpu`` controller: ``cpu``, or a co-mount naming it
    (``cpu,cpuacct``, ``cpuacct,cpu``, ...)."""
    if (root / "cpu").is_dir():
        return root / "cpu"
    try:
        names = sorted(p.name for p in root.iterdir() if p.is_dir())
    except OSError:
        return None
    return next((root / n for n in names if "cpu" in n.split(",")), None)


def _levels(mount: Path, path: str, read: Callable[[Path], float | None]) -> list[float]:
    """``read``'s limit at the process's cgroup under ``mount`` and each one above it."""
    here = mount / path.strip("/")
    if not here.is_dir():  # the mount is the container's own cgroup
        here = mount
    out: list[float] = []
    while True:
        limit = read(here)
        if limit is not None:
            out.append(limit)
        if here == mount or mount not in here.parents:
            return out
        here = here.parent


def _v2_limit(folder: Path) -> float | None:
    """cgroup v2: ``cpu.max`` is ``QUOTA PERIOD`` in microseconds, or ``max PERIOD``."""
    try:
        quota, period = (folder / "cpu.max").read_text(encoding="ascii").split()[:2]
        return None if quota == "max" else _ratio(int(quota), int(period))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _v1_limit(folder: Path) -> float | None:
    """cgroup v1: ``cpu.cfs_quota_us`` (-1: none) over ``cpu.cfs_period_us``."""
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text(encoding="ascii"))
        period = int((folder / "cpu.cfs_period_us").read_text(encoding="ascii"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return _ratio(quota, period)


def _ratio(quota: int, period: int) -> float | None:
    return quota / period if quota > 0 and period > 0 else None


def usable_cpus(
    proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT, cores: int | None = None
) -> int:
    """The cores this process may run on (``cores``, by default its affinity's), at most
    its cgroup's CPU limit rounded down, at least 1."""
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
    limit = cpu_limit(proc_cgroup, root)
    if limit is not None:
        cores = min(cores, math.floor(limit))
    return max(1, cores)


@functools.cache
def process_cpus() -> int:
    """``usable_cpus`` of this process, read once (a quota rarely changes while it runs;
    the fold asks for every update)."""
    return usable_cpus()
