"""The loopback deployment's process starter: what its processes leave in the temporary
folder goes when they are stopped, even when a process is killed (fault tests SIGKILL
sites; a stop's SIGKILL follows a grace period), so a run leaves no ``pymp-*`` folders."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from simulations.loopback import Processes

# makes a folder the way multiprocessing does (tempfile, TMPDIR), then is killed by the
# stop's signal before it could remove it
LEAVES_A_FOLDER = (
    "import tempfile, time; print(tempfile.mkdtemp(prefix='pymp-'), flush=True); time.sleep(120)"
)
PRINTS_ITS_TMP = "import tempfile; print(tempfile.gettempdir())"


def test_a_killed_process_leaves_nothing_in_the_system_temporary_folder(tmp_path: Path) -> None:
    procs = Processes(tmp_path / "logs")
    try:
        procs.start("stubborn", [sys.executable, "-c", LEAVES_A_FOLDER])
        assert procs.wait_for_log("stubborn", "pymp-", 60), procs.log("stubborn")
        left = Path(procs.log("stubborn").split()[0])
        own = procs.tmp
        assert own is not None and left.parent == own and left.is_dir()
        assert own.parent == Path("/tmp") and len(str(left)) < 60
    finally:
        procs.stop_all()
    assert procs.procs == {} and procs.tmp is None
    assert not left.exists() and not own.exists()
    # a later start (bench_large stops all and starts again) gets a new folder
    try:
        procs.start("again", [sys.executable, "-c", PRINTS_ITS_TMP])
        procs.procs["again"].wait(timeout=60)
        assert procs.log("again").strip() == str(procs.tmp) != str(own)
    finally:
        procs.stop_all()


def test_a_callers_own_temporary_folder_is_kept(tmp_path: Path) -> None:
    """Stock Flower's deployment passes the whole environment: only a TMPDIR that differs
    from this process's is the caller's choice."""
    procs = Processes(tmp_path / "logs")
    mine = tmp_path / "mine"
    mine.mkdir()
    try:
        procs.start("inherits", [sys.executable, "-c", PRINTS_ITS_TMP], env=dict(os.environ))
        procs.start("chooses", [sys.executable, "-c", PRINTS_ITS_TMP], env={"TMPDIR": str(mine)})
        for name in ("inherits", "chooses"):
            procs.procs[name].wait(timeout=60)
        assert procs.log("inherits").strip() == str(procs.tmp)
        assert procs.log("chooses").strip() == str(mine)
    finally:
        procs.stop_all()
