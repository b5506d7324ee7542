"""A Ray cluster of several nodes on this machine: what the cluster test and the ``cluster-500``
benchmark run ``hepafed simulate`` on (docs/cluster.md).

A head (``ray start --head``) and nodes joining it (``ray start --address=HEAD``), each with
its CPUs, a small object store, no dashboard and usage statistics off, as an operator starts
a real cluster's nodes. Each node runs ``ray start --block`` in a process group of its own,
with its own temporary folder (a short path: Ray's socket paths must stay under about 107
characters) and its own ports, so the cluster stops by signalling those process groups
alone. ``ray stop`` is never used: it stops every Ray of this user on the machine, other
runs' included.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from simulations.loopback import free_port

STARTED = "Ray runtime started."  # what `ray start` prints once its node is up
OBJECT_STORE_BYTES = 150_000_000  # per node: the sites send models, not data, through it


def ray_cli() -> str | None:
    """The ``ray`` command of this Python (its virtual environment's), else on PATH."""
    here = Path(sys.executable).with_name("ray")
    return str(here) if here.is_file() else shutil.which("ray")


@dataclass
class LocalCluster:
    """The nodes' ``ray start --block`` processes, each leading its process group."""

    address: str  # the head's GCS address, HOST:PORT: what --ray-address takes
    root: Path  # the nodes' temporary folders and logs
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    keep_root: bool = False

    def head_logs(self) -> Path:
        """The head's session logs (a driver that joined leaves a ``python-core-driver-*``)."""
        return self.root / "n0" / "session_latest" / "logs"

    def stop(self, grace_s: float = 15.0) -> None:
        """Stop the nodes (joined ones first): SIGTERM to each node's process group, SIGKILL
        to what is left after ``grace_s``, then any process still naming this cluster's
        folder (a worker that left the group)."""
        for proc in reversed(self.processes):
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in reversed(self.processes):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        for pid in _pids_naming(str(self.root)):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        self.processes.clear()
        if not self.keep_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


def start_local_cluster(
    nodes: int = 2,
    cpus_per_node: int = 1,
    object_store_bytes: int = OBJECT_STORE_BYTES,
    timeout_s: float = 90.0,
    root: Path | None = None,
) -> LocalCluster:
    """Start a head and ``nodes - 1`` nodes joining it, ``cpus_per_node`` CPUs each; return
    once Ray lists them all alive. Stop it with ``stop()`` (or use it as a context)."""
    ray = ray_cli()
    if ray is None:
        raise FileNotFoundError("the `ray` command is not installed (pip install 'ray')")
    keep = root is not None
    root = root or Path(tempfile.mkdtemp(prefix="hr-", dir="/tmp"))
    port = free_port()
    cluster = LocalCluster(f"127.0.0.1:{port}", root, keep_root=keep)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)  # `ray start --head` must not look for another cluster
    common = [
        f"--num-cpus={cpus_per_node}",
        "--num-gpus=0",
        f"--object-store-memory={object_store_bytes}",
        "--disable-usage-stats",
        f"--dashboard-agent-listen-port={free_port()}",
        "--block",
    ]
    head = [
        "--head",
        f"--port={port}",
        "--include-dashboard=false",
        f"--dashboard-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
    ]
    try:
        for i in range(nodes):
            where = head if i == 0 else [f"--address={cluster.address}"]
            folder = root / f"n{i}"
            folder.mkdir(parents=True, exist_ok=True)
            command = [ray, "start", *where, *common, f"--temp-dir={folder}"]
            log = (root / f"node-{i}.log").open("wb")
            cluster.processes.append(
                subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
            )
            _wait_started(cluster.processes[-1], root / f"node-{i}.log", timeout_s)
        wait_for_nodes(cluster.address, nodes, timeout_s)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_started(proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if STARTED in text:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"`ray start` exited with {proc.returncode}:\n{text[-3000:]}")
        time.sleep(0.25)
    raise TimeoutError(f"`ray start` not up in {timeout_s:.0f} s; its log: {log}")


def cluster_nodes(address: str) -> list[dict[str, Any]]:
    """The alive nodes of the cluster at ``address``: id, address, CPUs, GPUs (joins the
    cluster for the question and leaves it)."""
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # as simulations do
    ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR)
    try:
        return [
            {
                "node_id": n["NodeID"],
                "address": n["NodeManagerAddress"],
                "cpus": n["Resources"].get("CPU", 0.0),
                "gpus": n["Resources"].get("GPU", 0.0),
            }
            for n in ray.nodes()
            if n.get("Alive")
        ]
    finally:
        ray.shutdown()


def wait_for_nodes(address: str, count: int, timeout_s: float) -> list[dict[str, Any]]:
    """Poll until ``count`` nodes are alive in the cluster at ``address``."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = cluster_nodes(address)
        if len(alive) >= count:
            return alive
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(alive)} of {count} Ray nodes alive after {timeout_s:.0f} s")
        time.sleep(1.0)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # the group this node's `ray start` leads (its session)


def _pids_naming(text: str) -> list[int]:
    """Processes of this user whose command line contains ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found
