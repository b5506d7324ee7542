"""Resident memory of a deployment's processes by role, sampled in a background thread.

The roles: the ServerApp (a process whose command line holds ``flwr-serverapp``, and its
children), the rest of the SuperLink's tree (SuperLink, its executor, the gateway), and
each SuperNode with its executor and tasks. A sum of RSS counts pages a forked task
shares with its parent twice; sampling misses peaks shorter than the interval, so the
largest ``VmHWM`` (the kernel's high-water mark) of a single process of each role is kept
beside it. ``simulations.bench_large`` reads a real deployment with it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from common.processes import status_kb
from simulations.loopback import children_map, parents

SAMPLE_S = 0.2
SERVERAPP, SUPERLINK = "serverapp", "superlink"  # role names
SERVERAPP_CMD = "flwr-serverapp"
SUPEREXEC_CMD = "flower-superexec"


# ---- resident memory by role ---------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    """What the sampler reads of one process: parent, command line, RSS and its peak (kB)."""

    ppid: int
    cmdline: str
    rss_kb: int
    hwm_kb: int = 0


ProcTable = dict[int, Proc]


def _tree(table: ProcTable, children: Mapping[int, list[int]], root: int) -> list[int]:
    """``root`` and its descendants, as far as ``table`` holds them."""
    if root not in table:
        return []
    out, todo = [root], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child in table:
                out.append(child)
                todo.append(child)
    return out


def role_pids(table: ProcTable, superlink: int, sites: Mapping[str, int]) -> dict[str, list[int]]:
    """The processes of each role: ``serverapp`` (a process under the SuperLink whose
    command line holds ``flwr-serverapp``, and its descendants), ``superlink`` (the rest of
    the SuperLink's tree) and each site (its SuperNode's tree)."""
    children: dict[int, list[int]] = {}
    for pid, p in table.items():
        children.setdefault(p.ppid, []).append(pid)
    link = _tree(table, children, superlink)
    app: set[int] = set()
    for pid in link:
        if SERVERAPP_CMD in table[pid].cmdline and pid not in app:
            app.update(_tree(table, children, pid))
    roles = {
        SERVERAPP: [p for p in link if p in app],
        SUPERLINK: [p for p in link if p not in app],
    }
    for name, pid in sites.items():
        roles[name] = _tree(table, children, pid)
    return roles


def role_rss_kb(table: ProcTable, superlink: int, sites: Mapping[str, int]) -> dict[str, int]:
    """Summed RSS (kB) of each role's processes (``role_pids``)."""
    return {
        role: sum(table[p].rss_kb for p in pids)
        for role, pids in role_pids(table, superlink, sites).items()
    }


def read_proc_table(roots: Iterable[int], proc: Path = Path("/proc")) -> ProcTable:
    """The live processes under ``roots`` (included), read from ``proc``; a process that
    exits while it is read is left out."""
    parent_of = parents(proc)
    children = children_map(parent_of)
    wanted: list[int] = []
    todo = [r for r in roots if r in parent_of]
    while todo:
        pid = todo.pop()
        wanted.append(pid)
        todo += children.get(pid, [])
    table: ProcTable = {}
    for pid in wanted:
        try:
            status = (proc / str(pid) / "status").read_text()
            cmdline = (proc / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        table[pid] = Proc(
            parent_of[pid],
            cmdline.decode(errors="replace").strip(),
            status_kb(status, "VmRSS"),
            status_kb(status, "VmHWM"),
        )
    return table


def executor_alive(table: ProcTable) -> bool:
    """Whether a live ``flower-superexec`` is in ``table`` (an exited one that is not yet
    reaped has an empty command line)."""
    return any(SUPEREXEC_CMD in p.cmdline for p in table.values())


def machine_used_kb(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Memory in use on the machine (kB): MemTotal - MemAvailable."""
    text = meminfo.read_text()
    return status_kb(text, "MemTotal") - status_kb(text, "MemAvailable")


class RssSampler:
    """Samples each role's summed RSS every ``interval`` seconds in a background thread
    and keeps the peaks (kB): use as a context manager around a run."""

    def __init__(
        self,
        superlink: int,
        sites: Mapping[str, int],
        interval: float = SAMPLE_S,
        read: Callable[[Iterable[int]], ProcTable] = read_proc_table,
        used: Callable[[], int] = machine_used_kb,
    ) -> None:
        self.superlink, self.sites = superlink, dict(sites)
        self.interval, self.read, self.used = interval, read, used
        self.peak_kb: dict[str, int] = {}
        self.hwm_kb: dict[str, int] = {}
        self.first_kb: dict[str, int] = {}
        self.machine_peak_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        """Read the process table once and fold it into the peaks."""
        table = self.read([self.superlink, *self.sites.values()])
        for role, pids in role_pids(table, self.superlink, self.sites).items():
            rss = sum(table[p].rss_kb for p in pids)
            hwm = max((table[p].hwm_kb for p in pids), default=0)
            self.first_kb.setdefault(role, rss)
            self.peak_kb[role] = max(self.peak_kb.get(role, 0), rss)
            self.hwm_kb[role] = max(self.hwm_kb.get(role, 0), hwm)
        self.machine_peak_kb = max(self.machine_peak_kb, self.used())
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            # a table read while processes come and go can fail; the next one counts
            with contextlib.suppress(OSError, ValueError, IndexError):
                self.sample()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
