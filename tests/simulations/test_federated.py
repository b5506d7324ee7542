"""The real ServerApp and ClientApp through Flower: simulation engine and `flwr run .`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from common.config import RunConfig
from common.signing import state_hash
from server.records import load_checkpoint, read_evaluations, read_rounds
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
            "data.context-mm": 0.0,
            "federation.num-rounds": 2,
            "train.local-epochs": 3,
            "output.run-dir": str(run_dir),
        }
    )
    run_federated(cfg)

    rounds = read_rounds(run_dir)
    assert [(r.get("round"), r["phase"]) for r in rounds] == [
        (0, "evaluate"),
        (1, "train"),
        (1, "evaluate"),
        (2, "train"),
        (2, "evaluate"),
        (None, "threshold"),
        (None, "final-evaluate"),
    ]
    # these sites have no val split: the operating threshold stays eval.thresholds' first
    choice = rounds[-2]
    assert not choice["chosen"] and choice["threshold"] == 0.5
    assert choice["reason"].startswith("no training site has a val split")
    rounds = rounds[:-2]
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
    # the holdout design's final evaluation is the report's input, by site name
    report = json.loads((run_dir / "report.json").read_text())
    rows = {r["site"]: r for r in report["sites"]}
    assert set(rows) == {"hospital-x", "hospital-y"}
    for site, row in rows.items():
        assert row["model"] == "global" and row["role"] == "internal"
        assert row["auc"]["estimate"] == pytest.approx(final[site])
    pooled = report["pooled"]["internal"]
    perfect = {s for s, a in final.items() if a == 1.0}  # a logit cannot pool AUC = 1
    assert pooled["k"] == 2 - len(perfect) and set(pooled["excluded"]) == perfect
    assert report["provenance"]["model_sha256"]["global"] == state_hash(ckpt["model"])
    assert (run_dir / "report.html").stat().st_size > 10_000
    # updates are aggregated in site order, not arrival order: a rerun is identical
    run_federated(cfg.replace({"output.run-dir": str(tmp_path / "again")}))
    assert read_evaluations(tmp_path / "again") == read_evaluations(run_dir)


@pytest.mark.slow
def test_loso_design_leaves_each_site_out_once(
    site_factory: Callable[..., Path], tmp_path: Path
) -> None:
    for name, seed in (("hospital-x", 1), ("hospital-y", 2), ("hospital-z", 3)):
        site_factory(name, n_cases=30, seed=seed)
    run_dir = tmp_path / "run"
    cfg = RunConfig().replace(
        {
            "data.site-root": str(tmp_path / "sites"),
            "data.roi-size": 32,
            "data.context-mm": 0.0,
            "federation.num-rounds": 1,
            "eval.design": "loso",
            "eval.min-cases": 10,
            "output.run-dir": str(run_dir),
        }
    )
    run_federated(cfg)
    evaluations = read_evaluations(run_dir)
    trained = {}
    for fold in ("hospital-x", "hospital-y", "hospital-z"):
        model = f"without-{fold}"
        cells = {e["site"]: e for e in evaluations if e["model"] == model}
        assert cells[fold]["role"] == "external" and cells[fold]["split"] == "all"
        assert cells[fold]["summary"]["n"] == 30  # every case of the left-out site
        others = [s for s in cells if s != fold]
        assert all(
            cells[s]["role"] == "internal" and cells[s]["summary"]["n"] == 10 for s in others
        )
        trained[model] = load_checkpoint(run_dir / f"checkpoint-{model}.pt")["model"]
    # three different federations, three different models
    keys = list(trained["without-hospital-x"])
    assert not torch.equal(
        trained["without-hospital-x"][keys[0]], trained["without-hospital-y"][keys[0]]
    )
    report = json.loads((run_dir / "report.json").read_text())
    assert report["design"] == "loso" and len(report["gaps"]) == 3
    assert [r["site"] for r in report["sites"]] == ["hospital-x", "hospital-y", "hospital-z"]


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
        f"federation.num-rounds=1 federation.expected-sites=2 "
        f"data.site-root='{tmp_path / 'sites'}' "
        f"data.roi-size=32 data.context-mm=0 output.run-dir='{run_dir}'"
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
    assert [(r.get("round"), r["phase"]) for r in rounds] == [
        (0, "evaluate"),
        (1, "train"),
        (1, "evaluate"),
        (None, "threshold"),
        (None, "final-evaluate"),
    ]
    assert set(rounds[-3]["sites"]) == {"hospital-x", "hospital-y"}
    assert (run_dir / "report.json").is_file() and (run_dir / "report.html").is_file()
