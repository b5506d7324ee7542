"""The Flower processes hepafed starts (SuperLink, SuperNode, flwr): their environment, and
supervising the ones that run together."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger("hepafed.progress")


def status_kb(text: str, field: str) -> int:
    """A kB field of a ``/proc/PID/status`` or ``/proc/meminfo`` text (0 when absent: a
    kernel thread or a zombie has no resident set)."""
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def own_memory_mb(status: Path = Path("/proc/self/status")) -> dict[str, float]:
    """This process's resident memory now (``rss``) and its high-water mark so far
    (``peak``), in MB; empty where there is no ``/proc`` (not Linux)."""
    try:
        text = status.read_text(encoding="ascii")
    except OSError:
        return {}
    return {key: round(status_kb(text, field) * 1024 / 1e6, 1)
            for key, field in (("rss", "VmRSS"), ("peak", "VmHWM"))}  # fmt: skip


def with_flower_on_path(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with this interpreter's scripts folder first on ``PATH``.

    ``hepafed`` may be run as ``.venv/bin/hepafed`` without activating the
    environment; Flower then still finds its own executables
    (``flower-superexec``, ``flwr-serverapp``, ``flwr-clientapp``), which it
    starts by name.
    """
    bin_dir = str(Path(sys.executable).parent)
    parts = [p for p in env.get("PATH", "").split(os.pathsep) if p]
    if bin_dir not in parts:
        parts.insert(0, bin_dir)
    return {**env, "PATH": os.pathsep.join(parts)}


def supervise(children: Mapping[str, subprocess.Popen[bytes]], poll_s: float = 0.2) -> int:
    """Wait on processes that only make sense together; the exit code of the first to end.

    When one ends (or this process gets SIGTERM/SIGINT), the others are stopped
    (SIGTERM, then SIGKILL after 10 s), so a gateway never outlives its SuperLink
    and a site's executor never outlives its SuperNode.
    """
    stop = {"signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    code = 0
    try:
        while not stop["signal"]:
            ended = [(name, p.poll()) for name, p in children.items() if p.poll() is not None]
            if ended:
                name, returncode = ended[0]
                code = int(returncode or 0)
                log.warning("%s exited with code %s; stopping the others", name, code)
                break
            time.sleep(poll_s)
        else:
            code = 128 + stop["signal"]
    finally:
        for p in children.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in children.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return code
