"""A real deployment on this machine's loopback: SuperLink and SuperNodes as processes.

What the deployment tests and the deployed-round benchmark share. Everything goes
through the ``hepafed`` command line a coordinating center and hospital IT would use
(``certs init``, ``site init``, ``server start``, ``server register-site``, ``site
start``, ``run``), with TLS and site authentication as shipped.

``Processes`` starts every process in its own session and, on cleanup, stops it together
with all its descendants (Flower detaches its SuperExec and app processes into their own
sessions, so killing one process group is not enough). ``LoopbackFederation`` sets up a
federation of site folders on loopback and submits runs to it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from common.cli import toml_value
from common.cpu_quota import process_cpus

ROOT = Path(__file__).resolve().parents[1]
HEPAFED = str(Path(sys.executable).parent / "hepafed")
APP_PARTS = ("pyproject.toml", "README.md", ".gitignore", "common", "client", "server",
             "simulations")  # fmt: skip


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parents(proc: Path = Path("/proc")) -> dict[int, int]:
    """Every live process's parent (pid -> ppid), read from ``proc``; a process that exits
    while it is read is left out."""
    out: dict[int, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        out[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])  # after the name
    return out


def children_map(parent_of: Mapping[int, int]) -> dict[int, list[int]]:
    """Each process's children, from ``parents``."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parent_of.items():
        children.setdefault(ppid, []).append(pid)
    return children


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children, grandchildren...)."""
    children = children_map(parents())
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


SHORT_TMP = "/tmp" if os.path.isdir("/tmp") else None  # None: the system's temporary folder


class Processes:
    """Starts named processes (logs in ``log_dir``) and always stops all of them.

    Their temporary files go to a folder of their own (``TMPDIR``, in ``/tmp``: a Unix
    socket's path must stay under 108 bytes; a caller's own ``TMPDIR`` wins), which
    ``stop_all`` removes: a process that was killed (a fault test's SIGKILL, a stop's
    SIGKILL after the grace period) leaves nothing in the system's temporary folder, such
    as the site executor's ``pymp-*`` socket folder."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.tmp: Path | None = None  # made at the first start after ``stop_all``

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new session, stdout and stderr to ``log_dir/name.log``."""
        if self.tmp is None:  # /tmp itself: a long TMPDIR would lengthen every socket path
            self.tmp = Path(tempfile.mkdtemp(prefix="hepafed-procs-", dir=SHORT_TMP))
        merged = {**os.environ, **(env or {})}
        if merged.get("TMPDIR") == os.environ.get("TMPDIR"):  # a caller's own TMPDIR is kept
            merged["TMPDIR"] = str(self.tmp)
        with (self.log_dir / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=merged,
                cwd=cwd,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        """What process ``name`` has printed so far."""
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def wait_for_log(self, name: str, text: str, timeout: float) -> bool:
        """Wait until ``text`` appears in the log of ``name`` (False on timeout or exit)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log(name):
                return True
            if self.procs[name].poll() is not None:
                return text in self.log(name)
            time.sleep(0.5)
        return False

    def stop(self, name: str) -> None:
        """Stop one process and all its descendants: SIGTERM, then SIGKILL after 10 s."""
        proc = self.procs.pop(name)
        pids = [proc.pid, *descendants(proc.pid)]
        for pid in pids:
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            proc.poll()
            time.sleep(0.2)
        for pid in pids:
            if _alive(pid):
                for kill in (os.killpg, os.kill):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def stop_all(self) -> None:
        """Stop every process started here (nodes first, the SuperLink last), then remove
        their temporary folder."""
        try:
            for name in reversed(list(self.procs)):
                self.stop(name)
        finally:
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.tmp = None


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 1.0) -> bool:
    """Poll ``check`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except Exception:
            pass
        time.sleep(interval)
    return False


def hepafed(*args: str, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run ``hepafed ARGS`` to completion and return its output."""
    return subprocess.run(
        [HEPAFED, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,  # type: ignore[call-overload]
    )


def snapshot_app(dest: Path) -> Path:
    """A copy of this project's Flower app (the packages the Dockerfile copies) in ``dest``,
    so the bundle a site approves is the bundle that is submitted, whatever changes in the
    tree meanwhile."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in APP_PARTS:
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, dest / part, ignore=ignore)
        else:
            shutil.copy2(source, dest / part)
    return dest


def approve_app(app_dir: Path, *keys_dirs: Path) -> str:
    """Approve the app bundle ``flwr run`` builds from ``app_dir`` at each site; its hash."""
    from client.app_approval import APPROVALS_FILE, approve
    from common.app_bundle import bundle_sha256

    digest = bundle_sha256(str(app_dir))
    for keys in keys_dirs:
        approve(keys / APPROVALS_FILE, digest, "hepafed (loopback)")
    return digest


class DeploymentError(RuntimeError):
    """A loopback deployment did not start or a run on it failed (the message has the logs)."""


class Started:
    """Processes started on entry (``start``) and all stopped on exit, or at once if
    starting fails part-way."""

    processes: Processes

    def start(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.processes.stop_all()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.processes.stop_all()


class LoopbackFederation(Started):
    """A SuperLink and one SuperNode per site folder on 127.0.0.1, TLS and site keys as
    shipped; ``run`` submits a run with the app snapshot every site approved.

    The sites share this machine's cores, as hospitals on their own machines do not:
    each site's tasks get ``threads`` torch threads (``hepafed site start --threads``),
    by default the cores divided among the sites (at least one), so that concurrent
    sites do not oversubscribe the cores. Use as a context manager: every process is
    stopped on exit."""

    def __init__(self, root: Path, sites: Mapping[str, Path], threads: int | None = None) -> None:
        self.root = root
        self.sites = dict(sites)
        self.threads = threads or max(1, process_cpus() // max(1, len(self.sites)))
        self.processes = Processes(root / "logs")
        self.center = root / "center"
        self.ca = self.center / "certs" / "ca.pem"
        self.keyring = self.center / "keyring"
        self.keys = {name: root / "hospitals" / name for name in self.sites}
        self.app = root / "app"
        self.superlink = ""

    def _check(self, out: subprocess.CompletedProcess[str], what: str) -> None:
        if out.returncode != 0:
            raise DeploymentError(f"{what} failed ({out.returncode}):\n{out.stdout}{out.stderr}")

    def start(self) -> None:
        """Certificates and keyring, site keys, the SuperLink, the sites' registration,
        the app's approval, then one SuperNode per site; waits until all are online."""
        from server.deploy import ControlConnection, list_nodes

        certs = self.center / "certs"
        self._check(hepafed("certs", "init", "--out", str(certs), "--host", "127.0.0.1",
                            "--keyring", str(self.keyring)), "certs init")  # fmt: skip
        for name, keys in self.keys.items():
            self._check(hepafed("site", "init", name, "--out", str(keys)), f"site init {name}")
        port, control_port = free_port(), free_port()
        fleet, self.superlink = f"127.0.0.1:{port}", f"127.0.0.1:{control_port}"
        self.processes.start(
            "superlink",
            [HEPAFED, "server", "start", "--certs", str(certs), "--state",
             str(self.center / "state"), "--host", "127.0.0.1", "--port", str(port),
             "--control-port", str(control_port)],
            cwd=self.center,
        )  # fmt: skip
        if not self.processes.wait_for_log("superlink", "Application startup complete", 120):
            raise DeploymentError(
                "the SuperLink did not start:\n" + self.processes.log("superlink")
            )
        pubkeys = [str(k / "site_key.pub") for k in self.keys.values()]
        self._check(hepafed("server", "register-site", *pubkeys, "--superlink", self.superlink,
                            "--ca", str(self.ca), "--keyring", str(self.keyring)),
                    "server register-site")  # fmt: skip
        approve_app(snapshot_app(self.app), *self.keys.values())
        for name, site_dir in self.sites.items():
            keys = self.keys[name]
            self.processes.start(
                name,
                [HEPAFED, "site", "start", "--site-dir", str(site_dir), "--keys", str(keys),
                 "--superlink", fleet, "--ca", str(self.ca), "--runtime-port", str(free_port()),
                 "--flwr-home", str(keys / "flwr-home"),
                 "--server-key", str(self.keyring / "server.pub"),
                 "--threads", str(self.threads)],
            )  # fmt: skip
        connection = ControlConnection(self.superlink, self.ca)

        def online() -> bool:
            return sum(n["status"] == "online" for n in list_nodes(connection)) == len(self.sites)

        if not wait_until(online, 180):
            logs = "\n".join(self.processes.log(n)[-2000:] for n in self.sites)
            raise DeploymentError(f"the SuperNodes did not come online:\n{logs}")

    def run(self, overrides: Mapping[str, Any], timeout: float = 1800) -> Path:
        """Submit a run with ``overrides`` (flat run-config keys); its run folder."""
        run_dir = Path(str(overrides["output.run-dir"]))
        config = " ".join(f"{k}={toml_value(v)}" for k, v in sorted(overrides.items()))
        out = hepafed("run", "--superlink", self.superlink, "--ca", str(self.ca), "--run-config",
                      config, "--app", str(self.app), "--keyring", str(self.keyring),
                      timeout=timeout)  # fmt: skip
        if out.returncode != 0 or "finished:completed" not in out.stdout + out.stderr:
            tail = self.processes.log("superlink")[-4000:]
            raise DeploymentError(f"the run failed:\n{out.stdout}{out.stderr}\n{tail}")
        return run_dir
