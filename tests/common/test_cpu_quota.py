"""The CPUs a process may use under a container's CPU limit (cgroup v1 and v2 quotas)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common import cpu_quota, device
from common.cpu_quota import cpu_limit, usable_cpus

REPO = Path(__file__).resolve().parents[2]


def _v2(tmp_path: Path, own: str, levels: dict[str, str]) -> tuple[Path, Path]:
    """A cgroup v2 mount whose folders ``levels`` (path under the mount -> cpu.max) exist,
    and a /proc/self/cgroup naming ``own``."""
    root = tmp_path / "cgroup"
    for path, text in levels.items():
        folder = root / path.strip("/")
        folder.mkdir(parents=True, exist_ok=True)
        if text:
            (folder / "cpu.max").write_text(text)
    proc = tmp_path / "proc-cgroup"
    proc.write_text(f"0::{own}\n")
    return proc, root


def test_cgroup_v2_quota_of_the_process_and_its_parents(tmp_path: Path) -> None:
    # Docker --cpus 1.5 with a cgroup namespace: the container's cgroup is the mount's root
    proc, root = _v2(tmp_path, "/", {"/": "150000 100000\n"})
    assert cpu_limit(proc, root) == 1.5
    assert usable_cpus(proc, root, cores=64) == 1  # rounded down: no throttled thread
    # a pod's limit on the parent holds for the container below it, the smallest wins
    proc, root = _v2(tmp_path / "b", "/kubepods/pod1/ctr",
                     {"/kubepods": "max 100000", "/kubepods/pod1": "400000 100000",
                      "/kubepods/pod1/ctr": "max 100000"})  # fmt: skip
    assert cpu_limit(proc, root) == 4.0 and usable_cpus(proc, root, cores=64) == 4
    assert usable_cpus(proc, root, cores=2) == 2  # never more than the cores it may run on
    proc, root = _v2(tmp_path / "c", "/user.slice", {"/user.slice": "max 100000\n"})
    assert cpu_limit(proc, root) is None and usable_cpus(proc, root, cores=8) == 8
    proc, root = _v2(tmp_path / "d", "/", {"/": "20000 100000"})  # a fifth of a CPU
    assert cpu_limit(proc, root) == pytest.approx(0.2) and usable_cpus(proc, root, cores=8) == 1


def test_cgroup_v1_quota_also_where_the_path_is_the_hosts(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    mount = root / "cpu,cpuacct"
    mount.mkdir(parents=True)
    (mount / "cpu.cfs_quota_us").write_text("200000\n")
    (mount / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc-cgroup"
    # Docker without a cgroup namespace: the host's path, the mount is the container's own
    proc.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    assert cpu_limit(proc, root) == 2.0 and usable_cpus(proc, root, cores=32) == 2
    (mount / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert cpu_limit(proc, root) is None and usable_cpus(proc, root, cores=32) == 32
    # a co-mount under another name, the process's own cgroup below it with the limit
    other = tmp_path / "other"
    (other / "cpuset,cpu,cpuacct" / "pod" / "ctr").mkdir(parents=True)
    (other / "cpuacct").mkdir()
    for folder, quota in (("pod", "300000"), ("pod/ctr", "-1")):
        (other / "cpuset,cpu,cpuacct" / folder / "cpu.cfs_quota_us").write_text(quota)
        (other / "cpuset,cpu,cpuacct" / folder / "cpu.cfs_period_us").write_text("100000")
    proc.write_text("3:cpuset,cpu,cpuacct:/pod/ctr\n")
    assert cpu_limit(proc, other) == 3.0


@pytest.mark.parametrize(
    "text", ["", "garbage\n", "0::/\n", "4:cpu:/x\n"], ids=["empty", "garbage", "v2", "v1"]
)
def test_no_quota_file_or_an_unreadable_one_means_no_limit(tmp_path: Path, text: str) -> None:
    proc = tmp_path / "proc-cgroup"
    proc.write_text(text)
    (tmp_path / "cgroup" / "cpu").mkdir(parents=True)
    (tmp_path / "cgroup" / "cpu" / "cpu.cfs_quota_us").write_text("not a number")
    assert cpu_limit(proc, tmp_path / "cgroup") is None
    assert cpu_limit(tmp_path / "absent", tmp_path / "cgroup") is None
    assert usable_cpus(proc, tmp_path / "cgroup", cores=3) == 3


def test_without_an_affinity_call_the_cpu_count_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(cpu_quota.os, "sched_getaffinity")  # macOS
    monkeypatch.setattr(cpu_quota.os, "cpu_count", lambda: 6)
    assert usable_cpus(tmp_path / "absent", tmp_path) == 6


def test_torch_threads_are_lowered_to_the_quota_never_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(device, "process_cpus", lambda: 1)
        assert device.select_compute(prefer="cpu").device.type == "cpu"
        assert torch.get_num_threads() == 1
        torch.set_num_threads(1)  # fewer threads than a larger quota: never raised
        monkeypatch.setattr(device, "process_cpus", lambda: 4)
        assert device.fit_threads() == 1
        monkeypatch.setattr(device, "_EXPLICIT_THREADS", [])
        device.set_threads(2)  # the site's --threads 2 under a 1-CPU limit: its choice
        monkeypatch.setattr(device, "process_cpus", lambda: 1)
        assert device.fit_threads() == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_real_cgroup_v1_quota_is_read_by_a_process_inside_it() -> None:
    """On Linux as root with cgroup v1's cpu controller mounted writable (this project's
    CI machines): a process in a child of a cgroup limited to 1.5 CPUs sees 1.5."""
    mount = Path("/sys/fs/cgroup/cpu")
    parent = mount / f"hepafed-test-{os.getpid()}"
    try:
        (parent / "child").mkdir(parents=True)
    except OSError as e:
        pytest.skip(f"no writable cgroup v1 cpu controller here: {e}")
    try:
        (parent / "cpu.cfs_quota_us").write_text("150000")
        code = ("import os, sys; open(sys.argv[1], 'w').write(str(os.getpid())); "
                "from common.cpu_quota import cpu_limit, usable_cpus; "
                "print(cpu_limit(), usable_cpus(cores=8))")  # fmt: skip
        out = subprocess.run(
            ["sh", "-c", f'echo $$ > {parent / "child" / "cgroup.procs"} && exec "$@"', "sh",
             sys.executable, "-c", code, "/dev/null"],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert out.stdout.split() == ["1.5", "1"]
    finally:
        for folder in (parent / "child", parent):
            folder.rmdir()
