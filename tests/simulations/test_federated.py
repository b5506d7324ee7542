"""The real ServerApp and ClientApp through Flower: simulation engine and `flwr run .`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from common.config import RunConfig
from server.records import load_checkpoint, read_rounds
from simulations.federated import run_federated

ROOT = Path(__file__).resolve().parents[2]


def _aucs(entry: dict) -> dict[str, float]:
    return {site: m["auc"] for site, m in entry["sites"].items()}


@pytest.mark.slow
def test_two_sites_two_rounds_learn_and_report_by_site(
    site_factory: Callable[..., Path], tmp_path: Path
) -> None:
    for name, seed in (("hospital-x", 1), ("hospital-y", 2)):
        site_factory(name, n_cases=60, seed=seed)
    run_dir = tmp_path / "run"
    cfg = RunConfig().replace(
        {
            "data.site-root": str(tmp_path / "sites"),
            "data.roi-size": 32,
            "federation.num-rounds": 2,
            "train.local-epochs": 3,
            "output.run-dir": str(run_dir),
        }
    )
    run_federated(cfg)

    rounds = read_rounds(run_dir)
    assert [(r["round"], r["phase"]) for r in rounds] == [
        (0, "evaluate"),
        (1, "train"),
        (1, "evaluate"),
        (2, "train"),
        (2, "evaluate"),
    ]
    for r in rounds:
        assert set(r["sites"]) == {"hospital-x", "hospital-y"}  # site names, not node ids
    assert rounds[1]["sites"]["hospital-x"]["num-examples"] == 40
    initial, final = _aucs(rounds[0]), _aucs(rounds[-1])
    for site in initial:
        assert final[site] > initial[site], (initial, final)
    assert sum(final.values()) / 2 >= 0.8
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt["round"] == 2 and ckpt["config"]["federation.num-rounds"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def _kill_local_superlink(port: str) -> None:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"flower-superlink" in c for c in cmd) and port.encode() in b" ".join(cmd):
            os.kill(int(proc.name), signal.SIGTERM)


@pytest.mark.slow
def test_flwr_run_dot_runs_the_same_apps(site_factory: Callable[..., Path], tmp_path: Path) -> None:
    for name, seed in (("hospital-x", 1), ("hospital-y", 2)):
        site_factory(name, n_cases=12, seed=seed)
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local-in-memory:"\n'
    )
    port, control = "39291", "39293"
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        # `flwr run` starts `flower-superlink` from PATH, as for a user whose venv is active
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": port,
        "FLWR_LOCAL_CONTROL_API_PORT": control,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    run_dir = tmp_path / "run"
    run_config = (
        f"federation.num-rounds=1 data.site-root='{tmp_path / 'sites'}' "
        f"data.roi-size=32 output.run-dir='{run_dir}'"
    )
    flwr = bin_dir / "flwr"
    try:
        proc = subprocess.run(
            [
                str(flwr),
                "run",
                ".",
                "--stream",
                "--run-config",
                run_config,
                "--federation-config",
                "num-supernodes=2",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        _kill_local_superlink(control)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rounds = read_rounds(run_dir)
    assert [(r["round"], r["phase"]) for r in rounds] == [
        (0, "evaluate"),
        (1, "train"),
        (1, "evaluate"),
    ]
    assert set(rounds[-1]["sites"]) == {"hospital-x", "hospital-y"}
