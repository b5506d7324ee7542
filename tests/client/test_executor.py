"""The site executor's task checks, driven through Flower's own task runner entry points.

Flower's ``run_clientapp`` pulls the task input, then installs the bundle and loads its
ClientApp. Here a stand-in ``run_clientapp`` calls the (wrapped) pull and install exactly
as Flower does, so the test sees what the site lets happen before any bundle code runs.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import flwr.supernode.runtime.run_clientapp as runner
import pytest
from flwr.common.config import get_project_dir
from flwr.supercore.fab import Fab

from client import bundle_install, executor
from client.app_approval import APPROVALS_FILE, REFUSALS_LOG, AppNotApproved, approve
from client.task_phases import TaskPhases
from common.flower_pulls import LOCAL_BACKOFF_CAP_S

BUNDLE = b"PK-the-reviewed-release"
DIGEST = hashlib.sha256(BUNDLE).hexdigest()


@pytest.fixture
def flower(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """Flower's runner with its pull, install and run replaced by recorders."""
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    seen: dict[str, Any] = {"installed": [], "forgotten": 0}
    state: dict[str, Any] = {"run": SimpleNamespace(fab_id="hepafed/hepafed", fab_version="0.1.0"),
                             "fab": Fab("forged-hash", BUNDLE, {}), "install_to": None}  # fmt: skip

    def pull(_client: Any) -> tuple[Any, Any, Any, Any]:
        return "message", "context", state["run"], state["fab"]

    def install(content: bytes, *a: Any, **k: Any) -> Path:
        """Flower's install: extract into the folder unless it exists, return the folder."""
        seen["installed"].append(content)
        run = state["run"]
        folder = state["install_to"] or get_project_dir(run.fab_id, run.fab_version, DIGEST)
        if not Path(folder).exists():
            (Path(folder) / "client").mkdir(parents=True)
            (Path(folder) / "client" / "app.py").write_text("APP = 'the bundle'\n")
        return Path(folder)

    def run_clientapp(**_: Any) -> None:
        client: Any = None  # Flower passes its runtime HTTP client; the recorder ignores it
        _msg, _ctx, _run, fab = runner.pull_task_input(client)
        seen["hash_str"] = fab.hash_str
        runner.install_from_fab(fab.content, skip_prompt=True)

    monkeypatch.setattr(runner, "pull_task_input", pull)
    monkeypatch.setattr(runner, "install_from_fab", install)
    monkeypatch.setattr(runner, "run_clientapp", run_clientapp)
    # what run_task rebinds in Flower's runner (a task process's own copy): restored after
    for name in ("get_load_client_app_fn", "push_message", "pull_and_inflate_object_from_tree"):
        monkeypatch.setattr(runner, name, getattr(runner, name))
    monkeypatch.setattr(
        executor,
        "_forget_site_packages",
        lambda: seen.__setitem__("forgotten", seen["forgotten"] + 1),
    )
    return {"seen": seen, "state": state}


def _args(tmp_path: Path) -> argparse.Namespace:
    return executor.parser().parse_args(
        [
            "task",
            "--token",
            "t",
            "--runtime-api-address",
            "127.0.0.1:1",
            "--approvals",
            str(tmp_path / APPROVALS_FILE),
            "--keys",
            str(tmp_path),
            "--site",
            "site-a",
        ]
    )


def test_an_unapproved_bundle_is_never_installed(flower: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(AppNotApproved, match="is not approved; refused at site site-a"):
        executor.run_task(_args(tmp_path))
    assert flower["seen"]["installed"] == [] and flower["seen"]["forgotten"] == 0
    assert DIGEST in (tmp_path / REFUSALS_LOG).read_text()


def test_an_approved_bundle_installs_and_loads_from_its_own_folder(
    flower: dict[str, Any], tmp_path: Path
) -> None:
    approve(tmp_path / APPROVALS_FILE, DIGEST)
    executor.run_task(_args(tmp_path))
    seen = flower["seen"]
    assert seen["installed"] == [BUNDLE] and seen["forgotten"] == 1
    assert seen["hash_str"] == DIGEST  # the SuperNode's "forged-hash" is not what is loaded
    folder = Path(get_project_dir("hepafed/hepafed", "0.1.0", DIGEST))
    assert (folder / bundle_install.INSTALLED_MARK).read_text() == DIGEST  # the full hash
    assert list((folder / "client" / "__pycache__").glob("app.*.pyc"))  # compiled once
    # the next task loads the same folder without extracting the bundle again
    executor.run_task(_args(tmp_path))
    assert seen["installed"] == [BUNDLE] and seen["forgotten"] == 2
    # its pulls from this host's SuperNode back off at most LOCAL_BACKOFF_CAP_S
    quick = runner.pull_and_inflate_object_from_tree
    assert quick.keywords["backoff_cap"] == LOCAL_BACKOFF_CAP_S  # type: ignore[attr-defined]


def test_installs_on_one_host_take_turns_and_a_mark_that_fails_costs_only_speed(
    flower: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    apps = tmp_path / "apps"
    # another task's check, install and mark wait
    with (
        bundle_install.install_lock(apps),
        open(apps / bundle_install.INSTALL_LOCK) as other,
        pytest.raises(BlockingIOError),
    ):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(apps / bundle_install.INSTALL_LOCK) as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the task is done

    import common.files

    def full_disk(*_a: Any, **_k: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(common.files, "write_atomic", full_disk)
    approve(tmp_path / APPROVALS_FILE, DIGEST)
    executor.run_task(_args(tmp_path))  # the task runs; the next one installs again
    folder = Path(get_project_dir("hepafed/hepafed", "0.1.0", DIGEST))
    assert flower["seen"]["forgotten"] == 1
    assert not (folder / bundle_install.INSTALLED_MARK).exists()


def test_a_folder_not_installed_from_these_bytes_is_never_taken_as_them(
    flower: dict[str, Any], tmp_path: Path
) -> None:
    """A folder that was there before (an older install, or another bundle with the same
    eight-digit hash prefix) is not marked; a mark naming another hash is not trusted:
    Flower's install path runs for every task, as before."""
    approve(tmp_path / APPROVALS_FILE, DIGEST)
    folder = Path(get_project_dir("hepafed/hepafed", "0.1.0", DIGEST))
    folder.mkdir(parents=True)
    for _ in range(2):
        executor.run_task(_args(tmp_path))
    assert flower["seen"]["installed"] == [BUNDLE, BUNDLE]
    assert not (folder / bundle_install.INSTALLED_MARK).exists()
    (folder / bundle_install.INSTALLED_MARK).write_text(DIGEST[:8] + "0" * 56)
    executor.run_task(_args(tmp_path))
    assert len(flower["seen"]["installed"]) == 3


@pytest.mark.parametrize(
    ("fab_id", "version"),
    [("hepafed/../../../srv/x", "0.1.0"), ("hepafed/hepafed", "../../x"), ("a/b/c", "1")],
)
def test_a_run_that_names_a_path_is_refused(
    flower: dict[str, Any], tmp_path: Path, fab_id: str, version: str
) -> None:
    approve(tmp_path / APPROVALS_FILE, DIGEST)
    flower["state"]["run"] = SimpleNamespace(fab_id=fab_id, fab_version=version)
    with pytest.raises(AppNotApproved, match="not plain names"):
        executor.run_task(_args(tmp_path))
    assert flower["seen"]["installed"] == []


def test_a_bundle_that_installs_elsewhere_is_not_loaded(
    flower: dict[str, Any], tmp_path: Path
) -> None:
    """An existing folder with the same 8-hex prefix, or any other place: refused."""
    approve(tmp_path / APPROVALS_FILE, DIGEST)
    flower["state"]["install_to"] = tmp_path / "somewhere-else"
    with pytest.raises(AppNotApproved, match="but the run would load"):
        executor.run_task(_args(tmp_path))
    assert flower["seen"]["forgotten"] == 0


class _Stop(Exception):
    pass


def test_the_executor_never_runs_more_than_max_tasks_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A flood of messages: the executor takes a task only while fewer than MAX_TASKS run,
    and takes the next at once when one ends."""
    import flwr.supercore.runtime as runtime

    running: list[Any] = []
    peak, acquired = [0], [0]

    class Task:
        def __init__(self, _args: Any, token: str) -> None:
            self.token, self.done, self.stopped = token, False, False
            running.append(self)
            peak[0] = max(peak[0], sum(not t.done for t in running))

        def running(self) -> bool:
            return not self.done

        def terminate(self) -> None:
            self.stopped = True

        def reap(self, _deadline: float) -> None:
            assert self.stopped  # every task is sent SIGTERM before any is waited for

    class Client:
        def AcquireTask(self, _request: Any) -> Any:
            acquired[0] += 1
            if acquired[0] > 20:
                raise _Stop
            return SimpleNamespace(HasField=lambda _f: True, token=f"t{acquired[0]}")

        def close(self) -> None:
            pass

    def one_task_ends(_s: float) -> None:
        next(t for t in running if not t.done).done = True

    monkeypatch.setattr(runtime.RuntimeHttpClient, "from_server_address", lambda **_: Client())
    monkeypatch.setattr(executor, "_ColdTask", Task)
    monkeypatch.setattr(executor.time, "sleep", one_task_ends)
    argv = ["serve", "--runtime-api-address", "127.0.0.1:1", "--site", "s", "--cold",
            "--approvals", str(tmp_path / APPROVALS_FILE), "--keys", str(tmp_path)]  # fmt: skip
    args = executor.parser().parse_args(argv)
    with pytest.raises(_Stop):
        executor.serve(args)
    assert len(running) == 20 and [t.token for t in running] == [f"t{i}" for i in range(1, 21)]
    # the executor's end stops the tasks still running, and only those
    assert [t.stopped for t in running] == [not t.done for t in running]
    assert sum(t.stopped for t in running) == executor.MAX_TASKS - 1  # one had just ended
    assert peak[0] == executor.MAX_TASKS
    assert executor._auth_interceptors(None) == []


def test_the_executor_asks_often_only_near_a_task(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Idle, the executor asks its SuperNode every POLL_S; for BUSY_WINDOW_S after a task
    started it asks every BUSY_POLL_S (a round's next message is likely near), then idles."""
    import flwr.supercore.runtime as runtime

    calls: list[int] = [0]
    sleeps: list[float] = []

    class Client:
        def AcquireTask(self, _request: Any) -> Any:
            calls[0] += 1
            if calls[0] == 5:  # the window has passed
                monkeypatch.setattr(executor, "BUSY_WINDOW_S", -1.0)
            if calls[0] > 5:
                raise _Stop
            token = "t" if calls[0] == 3 else ""
            return SimpleNamespace(HasField=lambda _f: bool(token), token=token)

        def close(self) -> None:
            pass

    class Task:
        def __init__(self, _args: Any, _token: str) -> None:
            pass

        def running(self) -> bool:
            return True

        def terminate(self) -> None:
            pass

        def reap(self, _deadline: float) -> None:
            pass

    monkeypatch.setattr(runtime.RuntimeHttpClient, "from_server_address", lambda **_: Client())
    monkeypatch.setattr(executor, "_ColdTask", Task)
    monkeypatch.setattr(executor.time, "sleep", sleeps.append)
    argv = ["serve", "--runtime-api-address", "127.0.0.1:1", "--site", "s", "--cold",
            "--approvals", str(tmp_path / APPROVALS_FILE), "--keys", str(tmp_path)]  # fmt: skip
    with pytest.raises(_Stop):
        executor.serve(executor.parser().parse_args(argv))
    p, hot = executor.POLL_S, executor.BUSY_POLL_S
    assert sleeps == [p, p, hot, p]  # no sleep after the task: another may be waiting


def _report(conn: Any) -> None:
    """The body of a task process in the warm-zygote test: what it found already imported."""
    import os
    import sys

    torch = sys.modules.get("torch")
    preloaded = sorted(m for m in ("torch", "monai", "flwr", "client.app") if m in sys.modules)
    before = set(sys.modules)
    if torch is not None:  # a training step's first optimizer, as every training task makes one
        model = torch.nn.Linear(4, 1)
        optimizer = torch.optim.Adam(model.parameters())
        model(torch.ones(2, 4)).sum().backward()
        optimizer.step()
    conn.send({"pid": os.getpid(), "parent": os.getppid(), "preloaded": preloaded,
               "imported_by_first_step": sorted(set(sys.modules) - before),
               "left_by_an_earlier_task": getattr(torch, "_hepafed_task", None)})  # fmt: skip
    if torch is not None:
        torch._hepafed_task = os.getpid()  # type: ignore[attr-defined]
    conn.close()


def test_tasks_fork_from_a_warm_zygote_and_share_nothing_with_each_other() -> None:
    """Each task is a new process that finds torch, MONAI, Flower and the site's ClientApp
    imported already (the zygote's one import: a failed preload would show here), while
    what one task changes never reaches the next."""
    import os

    context = executor.warm_zygote()
    seen = []
    for _ in range(2):
        ours, theirs = context.Pipe(duplex=False)
        proc = context.Process(target=_report, args=(theirs,))
        proc.start()
        theirs.close()
        seen.append(ours.recv())
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert [s["preloaded"] for s in seen] == [["client.app", "flwr", "monai", "torch"]] * 2
    assert seen[0]["pid"] != seen[1]["pid"] and os.getpid() not in {s["pid"] for s in seen}
    assert seen[0]["parent"] == seen[1]["parent"] != os.getpid()  # both forks of the zygote
    assert [s["left_by_an_earlier_task"] for s in seen] == [None, None]
    # torch's optimizers import torch._dynamo (~800 modules) on first use: the zygote has
    first_step = seen[0]["imported_by_first_step"]
    assert not [m for m in first_step if m.startswith(("torch._dynamo", "sympy"))], first_step
    assert len(first_step) <= 3, first_step


def test_a_tasks_phases_are_timed_around_flowers_steps_and_logged_at_the_push(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Flower's loader, the ClientApp it returns and the reply's push are wrapped; the
    push logs every phase, in order, so the deploy benchmark locates a task's time."""
    import logging
    import time

    calls: list[Any] = []

    def slow(seconds: float, result: Any = None) -> Any:
        def run(*a: Any, **k: Any) -> Any:
            time.sleep(seconds)
            calls.append((a, k))
            return result

        return run

    runner = SimpleNamespace(push_message=slow(0.01))
    runner.get_load_client_app_fn = lambda **_k: slow(0.05, slow(0.1, "reply"))
    phases = TaskPhases()
    phases.seconds["start"] = 0.02
    phases.wrap_load_and_push(runner)
    app = runner.get_load_client_app_fn(default_app_ref="")("hepafed/hepafed", "0.1.0", "h")
    assert app(message="m", context="c") == "reply"
    with caplog.at_level(logging.INFO, logger="hepafed.site-executor"):
        runner.push_message("client", "reply", "c")
    assert calls[-2:] == [((), {"message": "m", "context": "c"}), (("client", "reply", "c"), {})]
    line = next(r.getMessage() for r in caplog.records if "task phases" in r.getMessage())
    names = re.findall(r"([a-z]+) [0-9.]+ s", line)
    assert names == ["start", "load", "app", "push"]
    s = phases.seconds
    assert 0.05 <= s["load"] < 1 and 0.1 <= s["app"] < 1 and 0.01 <= s["push"] < 1


def test_a_tasks_pull_is_split_into_its_input_request_and_its_message() -> None:
    """``input``: Flower's one PullTaskInput request (context, run, bundle); ``message``:
    the rest of the pull (the message's objects, waiting on the SuperNode). The client's
    request is its own again afterwards."""
    import time

    class Client:
        def PullTaskInput(self, request: Any) -> str:  # Flower's name
            time.sleep(0.4)
            return "input"

    client = Client()

    def pull_task_input(c: Any) -> tuple[str, str]:
        got = c.PullTaskInput(None)
        time.sleep(0.05)  # the message's objects
        return got, "message"

    phases = TaskPhases()
    assert phases.pull(pull_task_input, client) == ("input", "message")
    s = phases.seconds
    assert s["input"] >= 0.4 and 0.05 <= s["message"] < 0.4  # the input is not in it
    assert client.PullTaskInput.__func__ is Client.PullTaskInput  # type: ignore[attr-defined]
    assert phases.line().startswith("input ") and ", message " in phases.line()


STOPPED_BY_SIGTERM = """
import sys
from types import SimpleNamespace
import flwr.supercore.runtime as runtime
from client import executor

class Idle:  # a SuperNode with no task
    def AcquireTask(self, _request):
        return SimpleNamespace(HasField=lambda _f: False, token="")
    def close(self):
        print("closed", flush=True)

runtime.RuntimeHttpClient.from_server_address = lambda **_: Idle()
warm = executor.warm_zygote
executor.warm_zygote = lambda: warm(("json",))  # a zygote that starts in a moment
sys.exit(executor.main(sys.argv[1:]))
"""

# a SuperNode with one task, and (--cold) a task that ignores SIGTERM
STUBBORN_TASK = """
import os, sys
from types import SimpleNamespace
import flwr.supercore.runtime as runtime
from client import executor

class OneTask:
    given = False
    def AcquireTask(self, _request):
        token = "" if OneTask.given else "t"
        OneTask.given = True
        return SimpleNamespace(HasField=lambda _f: bool(token), token=token)
    def close(self):
        pass

runtime.RuntimeHttpClient.from_server_address = lambda **_: OneTask()
executor.TASK_STOP_S = 1.0
executor.task_command = lambda _args, _token: [sys.executable, "-c",
    "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('task', os.getpid(), flush=True); time.sleep(120)"]
sys.exit(executor.main(sys.argv[1:]))
"""


def test_a_sigterm_stops_the_executor_cleanly_leaving_no_zygote_socket_behind(
    tmp_path: Path,
) -> None:
    """``site start`` stops the executor with SIGTERM: it exits through its ``finally`` and
    the exit handlers, so multiprocessing removes the zygote's ``pymp-*`` socket folder (a
    kill left one in the temporary folder at every restart of the site)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    temp = tmp_path / "tmp"
    temp.mkdir()
    (tmp_path / APPROVALS_FILE).write_text("")
    argv = ["serve", "--runtime-api-address", "127.0.0.1:1", "--site", "s",
            "--approvals", str(tmp_path / APPROVALS_FILE), "--keys", str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", STOPPED_BY_SIGTERM, *argv],
        env={**os.environ, "TMPDIR": str(temp)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(temp.glob("pymp-*/listener-*")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        assert list(temp.glob("pymp-*/listener-*")), "the zygote never started"
        time.sleep(0.3)  # in its polling loop
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "closed" in out  # the loop's finally ran
    assert list(temp.iterdir()) == []


def test_a_stopping_executor_stops_its_tasks_and_ignores_a_second_sigterm(
    tmp_path: Path,
) -> None:
    """SIGTERM to the executor alone, with a task that ignores SIGTERM: the executor stops
    it (SIGKILL after ``TASK_STOP_S``) and exits, a second SIGTERM meanwhile changing
    nothing; no task outlives it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / APPROVALS_FILE).write_text("")
    argv = ["serve", "--runtime-api-address", "127.0.0.1:1", "--site", "s", "--cold",
            "--approvals", str(tmp_path / APPROVALS_FILE), "--keys", str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", STUBBORN_TASK, *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the task is running
        assert line.startswith("task "), (line, proc.stderr.read() if proc.stderr else "")
        task = int(line.split()[1])
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)  # while it waits for the task: ignored
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert 0.9 <= took < 20  # the task's grace (1 s), then SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(task, 0)  # killed and reaped
