"""A process's own memory as ``/proc`` reports it (``common.processes.own_memory_mb``),
which every training round's record carries for the ServerApp's process."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.processes import own_memory_mb, status_kb

STATUS = """Name:\tflwr-serverapp
VmPeak:\t 9000000 kB
VmHWM:\t 3342000 kB
VmRSS:\t 1790000 kB
Threads:\t12
"""


def test_rss_and_its_high_water_mark_in_mb(tmp_path: Path) -> None:
    (tmp_path / "status").write_text(STATUS)
    # kB are KiB in /proc: 1790000 x 1024 bytes = 1833.0 MB, 3342000 x 1024 = 3422.2 MB
    assert own_memory_mb(tmp_path / "status") == {"rss": 1833.0, "peak": 3422.2}
    assert status_kb(STATUS, "VmPeak") == 9_000_000
    assert status_kb(STATUS, "VmSwap") == 0  # absent: a kernel thread has none


def test_no_proc_no_figures(tmp_path: Path) -> None:
    assert own_memory_mb(tmp_path / "missing") == {}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_this_process_is_resident() -> None:
    memory = own_memory_mb()
    assert 10 < memory["rss"] <= memory["peak"]
