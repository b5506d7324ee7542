"""The hospital's site executor: runs a ClientApp task only for an app bundle the site approved.

Flower's SuperNode (started with ``--isolation process``) keeps the messages it
pulls from the SuperLink as tasks; an executor acquires each task's token from
the SuperNode's Runtime API (loopback) and starts a process that pulls the task
input (message, context, app bundle) and runs the bundle's ClientApp. Flower's
own executor (``flower-superexec``) runs whatever bundle arrives. This one runs
``python -m client.executor task``, hepafed's installed code, which checks the
bundle's SHA-256 against the site's ``approved-apps.toml`` *before* the bundle
is installed or imported (``client.app_approval``): an unapproved bundle gets an
error reply naming the refusal, and the refusal is logged at the site; an
approved one is then run whole (the site's own modules are dropped first).

Warm task processes. Flower's executor starts a fresh interpreter for every
message, which then imports torch, MONAI and Flower before any work: seconds per
message and site. This executor keeps a *warm zygote* instead (the standard
library's ``forkserver``): one process started with the site's ClientApp module
imported (``WARM_MODULES``), which never runs bundle code and only forks. Each
task is still its own process, forked from the zygote, so a task's state never
reaches the next one; it inherits the imported third-party libraries and drops
the site's own hepafed modules (``_forget_site_packages``) before the approved
bundle's code is loaded. ``--cold`` starts a fresh interpreter per task, as
Flower does.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from client.app_approval import AppNotApproved, log_refusal, read_approvals
from client.bundle_install import install_lock, installed_before, mark_installed
from client.task_phases import TaskPhases
from common.flower_pulls import LOCAL_BACKOFF_CAP_S, quicken_pulls

log = logging.getLogger("hepafed.site-executor")

POLL_S = 0.2  # how often an idle executor asks its SuperNode (loopback) for a task
BUSY_POLL_S = 0.05  # ... for BUSY_WINDOW_S after a task started or ended: a round's next
BUSY_WINDOW_S = 30.0  # message is likely near
CLIENT_APP_TASK = "flwr-clientapp"
MAX_TASKS = 4  # task processes at once; more messages wait at the SuperNode
TASK_STOP_S = 5.0  # a stopping executor's tasks: SIGTERM, then SIGKILL after this long
# imported once by the warm zygote: the site's ClientApp and, through it, torch, MONAI, Flower;
# and torch._dynamo, which torch's optimizers import on their first construction (about 800
# modules, 2 s of every training task on the reference machine when it was not preloaded)
WARM_MODULES = ("client.app", "flwr.supernode.runtime.run_clientapp", "torch._dynamo")
AUTH_METHODS = frozenset({"/flwr.proto.Runtime/AcquireTask"})
OWN_PACKAGES = ("client", "common", "server", "simulations")
FLOWER_ORIGINAL = "_hepafed_flower_original"  # on a wrapper: the Flower function it wraps
_PLAIN_ID = re.compile(r"[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+")
_PLAIN_VERSION = re.compile(r"[A-Za-z0-9_.+\-]+")


def task_command(args: argparse.Namespace, token: str) -> list[str]:
    """The command line of one task process (hepafed's code, not the bundle's)."""
    cmd = [sys.executable, "-m", "client.executor", "task", "--token", token,
           "--acquired-at", repr(time.time()),
           "--runtime-api-address", args.runtime_api_address, "--approvals", args.approvals,
           "--keys", args.keys, "--site", args.site]  # fmt: skip
    if args.parent_pid is not None:
        cmd += ["--parent-pid", str(args.parent_pid)]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    return cmd


def _auth_interceptors(secret_file: str | None) -> list[Any]:
    """The HMAC interceptor that proves to the SuperNode that this executor may take tasks
    (its ``--superexec-auth-secret-file``); none without a secret."""
    if not secret_file:
        return []
    from flwr.supercore.auth.superexec_secret import load_superexec_auth_secret
    from flwr.supercore.interceptors import SuperExecAuthHttpInterceptor

    secret = load_superexec_auth_secret(secret_file)
    assert secret is not None
    return [SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods=AUTH_METHODS)]


class _Task:
    """A running task process; ``running`` is polled by ``serve`` and logs how the task ended
    (its wall time, from the token acquired to the process gone, is the per-message cost)."""

    def __init__(self) -> None:
        self._started = time.monotonic()

    def _exit_code(self) -> int | None:
        raise NotImplementedError

    def running(self) -> bool:
        code = self._exit_code()
        if code is None:
            return True
        log.log(logging.WARNING if code else logging.INFO, "task done in %.2f s, exit code %s",
                time.monotonic() - self._started, code)  # fmt: skip
        return False

    def terminate(self) -> None:
        """SIGTERM, if the task still runs."""
        raise NotImplementedError

    def reap(self, deadline: float) -> None:
        """Wait for the task until ``deadline`` (monotonic), then SIGKILL it."""
        raise NotImplementedError


class _ColdTask(_Task):
    """A task in a fresh interpreter (``--cold``), as Flower's own executor runs it."""

    def __init__(self, args: argparse.Namespace, token: str) -> None:
        super().__init__()
        self._proc = subprocess.Popen(task_command(args, token))

    def _exit_code(self) -> int | None:
        return self._proc.poll()

    def terminate(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()

    def reap(self, deadline: float) -> None:
        try:
            self._proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


class _WarmTask(_Task):
    """A task forked from the warm zygote."""

    def __init__(self, context: Any, args: argparse.Namespace, token: str) -> None:
        super().__init__()
        task_args = argparse.Namespace(
            **{**vars(args), "mode": "task", "token": token, "acquired_at": time.time()}
        )
        self._proc = context.Process(target=warm_task, args=(task_args,), daemon=False)
        self._proc.start()

    def _exit_code(self) -> int | None:
        if self._proc.is_alive():
            return None
        code = self._proc.exitcode
        self._proc.close()
        return code

    def terminate(self) -> None:
        with contextlib.suppress(ValueError):  # ended and closed meanwhile
            if self._proc.is_alive():
                self._proc.terminate()

    def reap(self, deadline: float) -> None:
        with contextlib.suppress(ValueError):
            self._proc.join(max(0.0, deadline - time.monotonic()))
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()


def warm_zygote(modules: tuple[str, ...] = WARM_MODULES) -> Any:
    """The multiprocessing context whose processes fork from a zygote that imported
    ``modules`` once; the zygote is started (and warmed) now, before the first task."""
    import multiprocessing
    import multiprocessing.forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(modules))
    multiprocessing.forkserver.ensure_running()
    return context


def warm_task(args: argparse.Namespace) -> None:
    """The body of a task process forked from the zygote (``run_task``; Flower's runner
    ends the process with the task's exit code)."""
    _log_setup()
    run_task(args)


def serve(args: argparse.Namespace) -> int:
    """Acquire ClientApp tasks from the SuperNode and start a checked task process for each,
    at most ``MAX_TASKS`` at a time (a flood of messages cannot start unbounded processes)."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.app_utils import start_parent_process_monitor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)
    read_approvals(Path(args.approvals))  # a malformed list stops the site now, not per task
    zygote = None if args.cold else warm_zygote()
    client = RuntimeHttpClient.from_server_address(
        server_address=args.runtime_api_address,
        insecure=True,
        root_certificates=None,
        interceptors=_auth_interceptors(args.auth_secret_file),
        retry_invoker=make_simple_http_retry_invoker(),
    )
    running: list[_Task] = []
    active = float("-inf")  # when a task last started or ended
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    log.info("site %s: executor serving %s, approvals in %s, %s task processes", args.site,
             args.runtime_api_address, args.approvals, "cold" if args.cold else "warm")  # fmt: skip
    try:
        while True:
            still = [t for t in running if t.running()]
            if len(still) < len(running):
                active = time.monotonic()
            running = still
            if len(running) < MAX_TASKS:
                request = AcquireTaskRequest(supported_task_types=[CLIENT_APP_TASK])
                reply = client.AcquireTask(request)
                if reply.HasField("task") and reply.token:
                    task = _ColdTask(args, reply.token) if zygote is None else _WarmTask(
                        zygote, args, reply.token)  # fmt: skip
                    running.append(task)
                    active = time.monotonic()
                    continue  # another message may be waiting: ask again at once
            time.sleep(BUSY_POLL_S if time.monotonic() - active < BUSY_WINDOW_S else POLL_S)
    finally:
        try:  # none outlives the executor, none is waited on at its exit
            for left in running:
                left.terminate()
            deadline = time.monotonic() + TASK_STOP_S
            for left in running:
                left.reap(deadline)
        finally:
            client.close()
            if signal.getsignal(signal.SIGTERM) is _exit_on_sigterm and previous is not None:
                signal.signal(signal.SIGTERM, previous)  # no SIGTERM came: as it was


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    """SIGTERM (``hepafed site start`` stopping its processes) ends ``serve`` as an exit,
    not a kill: its ``finally`` stops the running tasks (SIGTERM, SIGKILL after
    ``TASK_STOP_S``) and the interpreter's exit handlers run, among them
    multiprocessing's, which removes the zygote's socket folder (``pymp-*`` in the
    temporary folder). Killed, the executor left one behind at every restart of the site,
    and its tasks running. A second SIGTERM is ignored: the exit is under way."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def _forget_site_packages() -> None:
    """Drop this site's own hepafed packages from the import system, so the bundle's code
    (approved, about to be installed) is what ``client.app`` and its imports load, never a
    mix of the site's installed modules and the bundle's."""
    for name in list(sys.modules):
        if name.split(".", 1)[0] in OWN_PACKAGES:
            del sys.modules[name]


def run_task(args: argparse.Namespace) -> None:
    """One ClientApp task, Flower's ``flwr-clientapp`` path with the bundle checked first.

    Flower's task runner pulls the task input, installs the bundle and imports its
    ClientApp. Installing is where a bundle's files first touch this host, so the
    site's check wraps it: an unapproved bundle raises ``AppNotApproved`` there, and
    Flower's runner turns that into an error reply to the server (message and
    context were pulled already) without installing or importing anything. The
    bundle's declared hash is forced to the hash of its bytes, the app's id and
    version must be plain names (no path), and the folder Flower then loads the
    ClientApp from must be the one the approved bytes were installed to.
    """
    import flwr.supernode.runtime.run_clientapp as runner
    from flwr.common.config import get_project_dir
    from flwr.supercore.fab import Fab

    approvals_path, keys_dir, site = Path(args.approvals), Path(args.keys), args.site
    # Flower's own functions, even where an earlier run_task in this process wrapped them
    pull_task_input = getattr(runner.pull_task_input, FLOWER_ORIGINAL, runner.pull_task_input)
    install_from_fab = getattr(runner.install_from_fab, FLOWER_ORIGINAL, runner.install_from_fab)
    pulled: dict[str, Any] = {}
    phases = TaskPhases()
    if args.acquired_at is not None:  # the task process's start: a fork or a fresh interpreter
        phases.seconds["start"] = max(0.0, time.time() - args.acquired_at)

    def pull_checked(client: Any) -> tuple[Any, Any, Any, Any]:
        message, context, run, fab = phases.pull(pull_task_input, client)
        digest = hashlib.sha256(fab.content).hexdigest()
        if fab.hash_str != digest:
            fab = Fab(hash_str=digest, content=fab.content, verifications=fab.verifications)
        pulled["run"] = run
        return message, context, run, fab

    def refuse(message: str) -> None:
        log_refusal(keys_dir, f"{message} (approvals: {approvals_path})")
        log.error("%s", message)
        raise AppNotApproved(message)

    @phases.timed("install")
    def install_checked(content: bytes, *a: Any, **k: Any) -> Path:
        try:
            digest = read_approvals(approvals_path).require(content, site)
        except AppNotApproved as e:
            refuse(str(e))
        run = pulled["run"]
        if not (_PLAIN_ID.fullmatch(run.fab_id) and _PLAIN_VERSION.fullmatch(run.fab_version)):
            refuse(f"the run names app {run.fab_id!r} version {run.fab_version!r}: not plain "
                   f"names; refused at site {site}")  # fmt: skip
        expected = Path(get_project_dir(run.fab_id, run.fab_version, digest)).resolve()
        with install_lock(expected.parent):  # another task of this host may be installing
            if installed_before(expected, digest):
                _forget_site_packages()
                return expected
            fresh = not expected.exists()
            installed = Path(install_from_fab(content, *a, **k)).resolve()
            if installed != expected:
                refuse(f"app bundle sha256 {digest} installs as {installed.name}, but the "
                       f"run would load {expected.name}; refused at site {site}")  # fmt: skip
            if fresh:  # these approved bytes were extracted here now: compile and mark them
                mark_installed(installed, digest)
        _forget_site_packages()
        return installed

    if args.threads is not None:  # the site's --threads: before any tensor work
        limit_threads(args.threads)
    # the message's objects, from this host's SuperNode while it still pulls them
    quicken_pulls(runner, backoff_cap=LOCAL_BACKOFF_CAP_S)
    setattr(pull_checked, FLOWER_ORIGINAL, pull_task_input)
    setattr(install_checked, FLOWER_ORIGINAL, install_from_fab)
    runner.pull_task_input = pull_checked
    runner.install_from_fab = install_checked
    phases.wrap_load_and_push(runner)
    runner.run_clientapp(
        runtime_api_address=args.runtime_api_address,
        token=args.token,
        insecure=True,
        certificates=None,
        parent_pid=args.parent_pid,
        runtime_dependency_install=False,
    )


def limit_threads(n: int) -> None:
    """Let this task's torch use ``n`` CPU threads (intra-op; the forked zygote's
    setting is the torch default, all cores; without ``--threads`` the site's code keeps
    it within the node's CPU limit, ``common.device.fit_threads``)."""
    from common.device import set_threads

    set_threads(n)
    log.info("task limited to %d torch thread(s)", n)


def _log_setup() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m client.executor", description=__doc__)
    p.add_argument("mode", choices=["serve", "task"])
    p.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API")
    p.add_argument("--approvals", required=True, help="the site's approved-apps.toml")
    p.add_argument("--keys", required=True, help="the site folder (refusals are logged there)")
    p.add_argument("--site", required=True, help="the site's name (for messages)")
    p.add_argument("--token", help="the task's token (mode task)")
    p.add_argument("--parent-pid", type=int, help="stop when this process ends")
    p.add_argument(
        "--auth-secret-file", help="the SuperNode's --superexec-auth-secret-file (mode serve)"
    )
    p.add_argument("--cold", action="store_true",
                   help="a fresh interpreter per task instead of a fork of the warm zygote "
                        "(mode serve; slower: every task imports torch again)")  # fmt: skip
    p.add_argument(
        "--threads", type=int, help="torch threads per task (mode serve passes it to each task)"
    )
    p.add_argument(
        "--acquired-at", type=float, help="when the executor acquired the task's token (Unix time)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _log_setup()
    if args.mode == "serve":
        return serve(args)
    if not args.token:
        parser().error("task needs --token")
    run_task(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
