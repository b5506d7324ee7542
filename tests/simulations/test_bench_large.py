"""The large-model benchmark's arithmetic, process accounting and text (the measurement
itself runs on a real loopback deployment, not in CI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from common.config import RunConfig
from simulations.bench_large import (
    PARAM_RANGE,
    LargeModelError,
    above_runtime_x,
    large_markdown,
    large_target,
    param_count,
    train_cases,
    width_for,
    wire_bytes,
)
from simulations.proc_memory import (
    SERVERAPP,
    SUPERLINK,
    Proc,
    RssSampler,
    executor_alive,
    read_proc_table,
    role_pids,
    role_rss_kb,
)


def test_the_width_chosen_for_the_default_task_gives_90_to_130m_parameters() -> None:
    cfg = RunConfig()
    width = width_for(cfg)
    assert width % 8 == 0
    n = param_count(cfg.replace({"model.width": width}))
    assert PARAM_RANGE[0] <= n <= PARAM_RANGE[1]


def test_the_width_is_solved_from_a_count_quadratic_in_it() -> None:
    def count(cfg: Any) -> int:
        w = cfg.model.width
        return 1000 * w * w + 50 * w + 7

    assert width_for(RunConfig(), 110_000_000, count) == 328  # sqrt(110e3) = 331.7
    with pytest.raises(LargeModelError, match="not 90000000-130000000"):
        width_for(RunConfig(), 500_000_000, count)


def test_bytes_on_the_wire_per_compression() -> None:
    n = 100 * 1024
    none, fp16, int8 = (wire_bytes(n, c, 3) for c in ("none", "fp16", "int8"))
    assert none == {"to_each_site": 4 * n, "from_each_site": 4 * n, "per_round": 24 * n}
    assert fp16["to_each_site"] == 4 * n  # the global model always travels as float32
    assert fp16["from_each_site"] == 2 * n
    assert int8["from_each_site"] == n + 4 * 100  # the codes and one scale per 1024 values
    assert int8["per_round"] == 3 * (4 * n + n + 400)


def test_the_computed_bytes_match_what_the_clientapp_packs() -> None:
    from common.models import build_model
    from common.weights import shared_state
    from simulations.bench_client import update_bytes

    cfg = RunConfig()
    state = shared_state(build_model(cfg))
    values = sum(v.numel() for v in state.values())
    for row in update_bytes(cfg):
        computed = wire_bytes(values, row["compression"], 1)["from_each_site"]
        # .npy headers (one per tensor uncompressed, two packed) and int8's per-tensor blocks
        assert abs(row["bytes"] - computed) <= 128 * len(state) + 4 * len(state)


def _table() -> dict[int, Proc]:
    return {
        1: Proc(0, "init", 10),
        100: Proc(1, "hepafed server start", 50_000, 60_000),
        101: Proc(100, "flower-superlink --fleet", 300_000, 900_000),
        102: Proc(101, "superexec --plugin-type serverapp", 80_000),
        103: Proc(102, "python flwr-serverapp --run-once", 1_200_000, 1_500_000),
        104: Proc(103, "python -c resource_tracker", 5_000),
        105: Proc(100, "nginx: master process", 4_000),
        200: Proc(1, "hepafed site start hospital-a", 40_000),
        201: Proc(200, "flower-supernode", 700_000),
        202: Proc(200, "hepafed site executor", 250_000),
        203: Proc(202, "hepafed site executor task", 3_000_000, 3_100_000),
        300: Proc(1, "hepafed site start hospital-b", 41_000),
        400: Proc(1, "an unrelated flwr-serverapp", 9_999_999),
    }


def test_processes_are_split_by_role() -> None:
    roles = role_pids(_table(), 100, {"hospital-a": 200, "hospital-b": 300})
    assert sorted(roles[SERVERAPP]) == [103, 104]  # the ServerApp and its children
    assert sorted(roles[SUPERLINK]) == [100, 101, 102, 105]
    assert sorted(roles["hospital-a"]) == [200, 201, 202, 203]
    assert roles["hospital-b"] == [300]
    rss = role_rss_kb(_table(), 100, {"hospital-a": 200, "hospital-b": 300})
    assert rss == {
        SERVERAPP: 1_205_000,
        SUPERLINK: 434_000,
        "hospital-a": 3_990_000,
        "hospital-b": 41_000,
    }
    # a root that is gone has no processes
    assert role_rss_kb(_table(), 999, {"hospital-c": 998}) == {
        SERVERAPP: 0, SUPERLINK: 0, "hospital-c": 0
    }  # fmt: skip


def test_the_process_table_is_read_under_the_roots_only(tmp_path: Path) -> None:
    def proc(pid: int, ppid: int, cmd: str, status: str) -> None:
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "stat").write_text(f"{pid} ({cmd.split()[0]}) S {ppid} 1 1 0\n")
        (d / "cmdline").write_bytes(cmd.replace(" ", "\0").encode() + b"\0")
        (d / "status").write_text(status)

    proc(10, 1, "flower-superlink a b", "Name:\tx\nVmHWM:\t  900 kB\nVmRSS:\t  700 kB\n")
    proc(11, 10, "python flwr-serverapp", "Name:\ty\nVmRSS:\t  50 kB\n")
    proc(12, 11, "zombie", "Name:\tz\nState:\tZ\n")
    proc(20, 1, "elsewhere", "VmRSS:\t 5 kB\n")
    (tmp_path / "meminfo").write_text("MemTotal: 10 kB\n")  # not a process
    table = read_proc_table([10], tmp_path)
    assert table == {
        10: Proc(1, "flower-superlink a b", 700, 900),
        11: Proc(10, "python flwr-serverapp", 50, 0),
        12: Proc(11, "zombie", 0, 0),
    }


def test_the_sampler_keeps_each_roles_peak() -> None:
    tables = iter(
        [
            {100: Proc(1, "link", 100), 103: Proc(100, "flwr-serverapp", 500, 800),
             200: Proc(1, "node", 50)},
            {100: Proc(1, "link", 90), 103: Proc(100, "flwr-serverapp", 700, 900),
             200: Proc(1, "node", 40)},
            {100: Proc(1, "link", 120), 200: Proc(1, "node", 60)},  # the ServerApp is gone
        ]
    )  # fmt: skip
    used = iter([1000, 3000, 2000])
    sampler = RssSampler(100, {"a": 200}, read=lambda _: next(tables), used=lambda: next(used))
    for _ in range(3):
        sampler.sample()
    assert sampler.peak_kb == {SERVERAPP: 700, SUPERLINK: 120, "a": 60}
    assert sampler.first_kb == {SERVERAPP: 500, SUPERLINK: 100, "a": 50}
    assert sampler.hwm_kb[SERVERAPP] == 900
    assert sampler.machine_peak_kb == 3000 and sampler.samples == 3


def test_the_executor_is_alive_while_a_process_runs_it() -> None:
    table = _table()
    assert not executor_alive(table)  # 102 runs "--plugin-type serverapp" only by name
    table[102] = Proc(101, "/venv/bin/flower-superexec --plugin-type serverapp", 80_000)
    assert executor_alive(table)
    table[102] = Proc(101, "", 0)  # exited, not yet reaped: a zombie has no command line
    assert not executor_alive(table)


def test_train_cases_are_counted_from_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text(
        "case_id,label,split\na,0,train\nb,1,test\nc,1,train\nd,0,val\n"
    )
    assert train_cases(tmp_path) == 2


def _run(compression: str, serverapp_x: float, completed: bool = True) -> dict[str, Any]:
    model = 440e6
    peak = {SERVERAPP: serverapp_x * model / 1e6, SUPERLINK: 900.0, "hospital-a": 3500.0}
    return {
        "compression": compression, "completed": completed,
        "error": "" if completed else "validate: hospital-c: boom; the run failed:\nlog tail",
        "deployment": 1 if completed else 2, "executor_alive": completed,
        "wall_s": 612.4, "round_s": [250.0, 244.5], "phase_seconds": [{}, {}],
        "wire_bytes": wire_bytes(110_000_000, compression, 3), "images_per_s": 1.3,
        "peak_mb": peak, "peak_x_model": {r: mb * 1e6 / model for r, mb in peak.items()},
        "hwm_mb": {SERVERAPP: 1300.0}, "idle_mb": {}, "machine_used_peak_mb": 12000.0,
        "samples": 3000,
    }  # fmt: skip


def _result(*runs: dict[str, Any]) -> dict[str, Any]:
    return {
        "network": "resnet", "width": 304, "params": 110_000_000, "state_values": 110_010_000,
        "model_bytes": 440_000_000, "sites": ["hospital-a"], "train_cases": {"hospital-a": 108},
        "rounds_per_run": 2, "local_epochs": 1, "batch_size": 32, "roi_size": 64,
        "setup_s": [40.0, 38.0], "sample_s": 0.2, "runs": list(runs),
    }  # fmt: skip


def test_the_target_needs_every_run_completed_and_the_serverapp_within_3_x() -> None:
    met = large_target(_result(_run("none", 2.5), _run("int8", 1.8)))
    assert met["met"] is True
    assert met["value"] == (
        "110.0M parameters, 2 of 2 runs completed; ServerApp peak none 2.50 x, int8 1.80 x"
    )
    assert large_target(_result(_run("none", 3.2), _run("int8", 1.8)))["met"] is False
    assert large_target(_result(_run("none", 2.0), _run("int8", 1.0, False)))["met"] is False
    assert large_target(_result())["met"] is False


def test_the_section_text_has_every_figure_and_consistent_tables() -> None:
    text = "\n".join(large_markdown(_result(_run("none", 2.5), _run("int8", 1.0, False))))
    assert "110,000,000 parameters, 440 MB as float32" in text
    assert "sampled every 0.2 s" in text
    assert "### compression = none" in text and "### compression = int8" in text
    assert "training rounds 250.0, 244.5 s" in text and "run (submitted to finished) 612 s" in text
    assert "440.0 MB to each site, 440.0 MB from each site, 2640.0 MB in all" in text
    assert "440.0 MB to each site, 110.4 MB from each site" in text  # int8
    assert "| ServerApp | 1100 | 2.50 | 1300 |" in text
    assert "completed: **no**" in text
    assert (
        "The run failed: `validate: hospital-c: boom; the run failed:`. The SuperLink's "
        "executor had exited." in text
    )
    assert "fresh deployment (set up in 38 s)" in text and "set up in 40 s;" in text
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert len({row.count("|") for row in rows}) == 1


def test_the_serverapps_peak_above_its_runtime_comes_from_its_round_record() -> None:
    """The last training round's ``server_memory_mb``: (peak - at start) over the model's
    bytes, in the target's row and the run's text; absent from older records."""
    run = _run("none", 4.0)
    run["server_memory_mb"] = [{"at_start": 450.0, "rss": 1400.0, "peak": 1600.0},
                               {"at_start": 450.0, "rss": 1350.0, "peak": 1770.0}]  # fmt: skip
    assert above_runtime_x(run, 440_000_000) == pytest.approx(3.0)
    row = large_target(_result(run))
    assert row["value"].endswith("ServerApp peak none 4.00 x (3.00 x above its runtime)")
    assert row["met"] is False  # judged on the whole process
    text = "\n".join(large_markdown(_result(run)))
    assert "450 MB resident before it built any model" in text
    assert "a high-water mark of 1770 MB; 3.00 x model above its runtime" in text
    assert above_runtime_x(_run("int8", 1.0), 440_000_000) is None
    assert "above its runtime" not in large_target(_result(_run("int8", 1.0)))["value"]
