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

The loop (``serve``) and the task (``run_task``) are separate functions so a
warm task process can later serve several tokens without re-importing torch.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from client.app_approval import AppNotApproved, log_refusal, read_approvals

log = logging.getLogger("hepafed.site-executor")

POLL_S = 0.2
CLIENT_APP_TASK = "flwr-clientapp"
MAX_TASKS = 4  # task processes at once; more messages wait at the SuperNode
AUTH_METHODS = frozenset({"/flwr.proto.Runtime/AcquireTask"})
OWN_PACKAGES = ("client", "common", "server", "simulations")
_PLAIN_ID = re.compile(r"[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+")
_PLAIN_VERSION = re.compile(r"[A-Za-z0-9_.+\-]+")


def task_command(args: argparse.Namespace, token: str) -> list[str]:
    """The command line of one task process (hepafed's code, not the bundle's)."""
    cmd = [sys.executable, "-m", "client.executor", "task", "--token", token,
           "--runtime-api-address", args.runtime_api_address, "--approvals", args.approvals,
           "--keys", args.keys, "--site", args.site]  # fmt: skip
    if args.parent_pid is not None:
        cmd += ["--parent-pid", str(args.parent_pid)]
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
    client = RuntimeHttpClient.from_server_address(
        server_address=args.runtime_api_address,
        insecure=True,
        root_certificates=None,
        interceptors=_auth_interceptors(args.auth_secret_file),
        retry_invoker=make_simple_http_retry_invoker(),
    )
    running: list[subprocess.Popen[bytes]] = []
    log.info("site %s: executor serving %s, approvals in %s", args.site,
             args.runtime_api_address, args.approvals)  # fmt: skip
    try:
        while True:
            running = [p for p in running if p.poll() is None]
            if len(running) < MAX_TASKS:
                request = AcquireTaskRequest(supported_task_types=[CLIENT_APP_TASK])
                reply = client.AcquireTask(request)
                if reply.HasField("task") and reply.token:
                    running.append(subprocess.Popen(task_command(args, reply.token)))
            time.sleep(POLL_S)
    finally:
        client.close()


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
    pull_task_input, install_from_fab = runner.pull_task_input, runner.install_from_fab
    pulled: dict[str, Any] = {}

    def pull_checked(client: Any) -> tuple[Any, Any, Any, Any]:
        message, context, run, fab = pull_task_input(client)
        digest = hashlib.sha256(fab.content).hexdigest()
        if fab.hash_str != digest:
            fab = Fab(hash_str=digest, content=fab.content, verifications=fab.verifications)
        pulled["run"] = run
        return message, context, run, fab

    def refuse(message: str) -> None:
        log_refusal(keys_dir, f"{message} (approvals: {approvals_path})")
        log.error("%s", message)
        raise AppNotApproved(message)

    def install_checked(content: bytes, *a: Any, **k: Any) -> Path:
        try:
            digest = read_approvals(approvals_path).require(content, site)
        except AppNotApproved as e:
            refuse(str(e))
        run = pulled["run"]
        if not (_PLAIN_ID.fullmatch(run.fab_id) and _PLAIN_VERSION.fullmatch(run.fab_version)):
            refuse(f"the run names app {run.fab_id!r} version {run.fab_version!r}: not plain "
                   f"names; refused at site {site}")  # fmt: skip
        installed = Path(install_from_fab(content, *a, **k)).resolve()
        expected = Path(get_project_dir(run.fab_id, run.fab_version, digest)).resolve()
        if installed != expected:
            refuse(f"app bundle sha256 {digest} installs as {installed.name}, but the run "
                   f"would load {expected.name}; refused at site {site}")  # fmt: skip
        _forget_site_packages()
        return installed

    runner.pull_task_input = pull_checked
    runner.install_from_fab = install_checked  # type: ignore[assignment]
    runner.run_clientapp(
        runtime_api_address=args.runtime_api_address,
        token=args.token,
        insecure=True,
        certificates=None,
        parent_pid=args.parent_pid,
        runtime_dependency_install=False,
    )


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
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    if args.mode == "serve":
        return serve(args)
    if not args.token:
        parser().error("task needs --token")
    run_task(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
