"""Trust features through the real ServerApp and ClientApp in Flower's simulation engine:
a run stopped after a completed round and resumed gives the same model bit for bit as a
run never stopped; central and local differential privacy report what they spend."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.serverapp import Grid

from common.config import RunConfig
from server.app import serve
from server.audit import AuditTrail, entries, verify_trail
from server.records import load_checkpoint, read_rounds
from simulations.federated import run_federated

SITES = (("site-a", 1), ("site-b", 2), ("site-c", 3))


class Stop(Exception):
    """Stands for the server dying right after a round is complete."""


@pytest.fixture
def sites(site_factory: Callable[..., Path], tmp_path: Path) -> Path:
    for name, seed in SITES:
        site_factory(name, n_cases=24, seed=seed)
    return tmp_path / "sites"


def _config(sites: Path, run_dir: Path, **extra: Any) -> RunConfig:
    return RunConfig().replace(
        {
            "data.site-root": str(sites),
            "data.roi-size": 32,
            "data.context-mm": 0.0,
            "train.local-epochs": 1,
            "train.amp": False,
            "eval.min-cases": 4,
            "eval.min-per-class": 2,
            "federation.strategy": "fedavgm",  # server momentum: optimiser state must resume
            "federation.num-rounds": 3,
            "output.run-dir": str(run_dir),
            **extra,
        }
    )


def _stopping_after(rounds: int) -> Callable[[Grid, RunConfig], object]:
    """A ServerApp body that dies once round ``rounds`` is checkpointed and audited."""

    def body(grid: Grid, cfg: RunConfig) -> object:
        original = AuditTrail.append

        def append(self: AuditTrail, kind: str, data: Any) -> dict[str, Any]:
            entry = original(self, kind, data)
            if kind == "checkpoint" and data["round"] >= rounds:
                raise Stop
            return entry

        AuditTrail.append = append  # type: ignore[method-assign]
        try:
            return serve(grid, cfg)
        except Stop:
            return None
        finally:
            AuditTrail.append = original  # type: ignore[method-assign]

    return body


@pytest.mark.slow
def test_a_resumed_run_equals_a_run_never_stopped(sites: Path, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    run_federated(_config(sites, straight))

    resumed = tmp_path / "resumed"
    cfg = _config(sites, resumed)
    run_federated(cfg, body=_stopping_after(2))
    assert load_checkpoint(resumed / "checkpoint.pt")["round"] == 2
    assert not (resumed / "report.json").exists()
    run_federated(cfg.replace({"output.resume": True}))

    a = load_checkpoint(straight / "checkpoint.pt")
    b = load_checkpoint(resumed / "checkpoint.pt")
    assert a["round"] == b["round"] == 3
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    train = [r["round"] for r in read_rounds(resumed) if r["phase"] == "train"]
    assert train == [1, 2, 3]
    kinds = [e["kind"] for e in entries(resumed)]
    assert kinds.count("resume") == 1 and kinds.count("config") == 1
    rounds_checkpointed = [
        e["data"]["round"] for e in entries(resumed) if e["kind"] == "checkpoint"
    ]
    assert rounds_checkpointed == [1, 2, 3]
    assert verify_trail(resumed).ok


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["central", "local"])
def test_differential_privacy_reports_what_each_round_spends(
    sites: Path, tmp_path: Path, mode: str
) -> None:
    run_dir = tmp_path / mode
    cfg = _config(
        sites,
        run_dir,
        **{
            "federation.strategy": "fedavg",
            "federation.num-rounds": 2,
            "privacy.mode": mode,
            "privacy.clip-norm": 5.0,
            "privacy.noise-multiplier": 0.5,
            "trust.norm-z": 0.0,
        },
    )
    run_federated(cfg)
    train = [r for r in read_rounds(run_dir) if r["phase"] == "train"]
    assert [r["round"] for r in train] == [1, 2]
    if mode == "central":
        spent = [r["privacy"] for r in train]
        assert [s["releases"] for s in spent] == [1, 2]
        assert 0 < spent[0]["epsilon"] < spent[1]["epsilon"]
        assert spent[0]["delta"] == pytest.approx(1e-5)
        audited = [e["data"]["privacy"] for e in entries(run_dir) if e["kind"] == "round"]
        assert audited == spent
    else:
        for record in train:
            assert record["privacy"] is None
            epsilons = {m["dp-epsilon-total"] for m in record["sites"].values()}
            assert len(epsilons) == 1 and next(iter(epsilons)) > 0  # same noise at every site
    model = load_checkpoint(run_dir / "checkpoint.pt")["model"]
    assert all(torch.isfinite(v).all() for v in model.values())
    assert (run_dir / "report.json").is_file()


@pytest.mark.slow
def test_report_trail_and_checkpoint_name_the_model_by_one_hash(
    sites: Path, tmp_path: Path
) -> None:
    """One model hash: report.json's model_sha256 of each model is the hash the audit trail
    recorded for its checkpoint and for the model it scored; the run ends sealed, and a
    checkpoint swapped afterwards is named by ``hepafed audit verify``."""
    from common.cli import main
    from common.signing import state_hash
    from server.audit_run import verify_run

    run_dir = tmp_path / "one-hash"
    run_federated(_config(sites, run_dir, **{"federation.num-rounds": 1, "eval.local-only": True}))
    report = json.loads((run_dir / "report.json").read_text())
    hashes = report["provenance"]["model_sha256"]
    items = entries(run_dir)
    checkpoints = {e["data"]["model"]: e["data"] for e in items if e["kind"] == "checkpoint"}
    scored = {e["data"]["model"]: e["data"]["model_sha256"]
              for e in items if e["kind"] == "final-evaluation"}  # fmt: skip
    assert "global" in hashes and len(hashes) >= 2  # the global and the local-only models
    for model, digest in hashes.items():
        assert digest == checkpoints[model]["model_sha256"], model
        model_state = load_checkpoint(run_dir / checkpoints[model]["file"])["model"]
        assert digest == state_hash(model_state), model
    assert hashes["global"] == scored["global"]
    assert items[-1]["kind"] == "final"
    audit = verify_run(run_dir)
    assert (audit.problems, audit.finished, audit.trail.run_id) == (
        [],
        True,
        report_run_id(run_dir),
    )
    assert main(["audit", "verify", str(run_dir)]) == 0
    other = next(m for m in hashes if m != "global")
    shutil.copy(run_dir / checkpoints[other]["file"], run_dir / "checkpoint.pt")
    assert main(["audit", "verify", str(run_dir)]) == 1
    assert verify_run(run_dir).problems == [
        f"checkpoint.pt: swapped: it is {checkpoints[other]['file']} of model {other!r}, round "
        f"0, not the checkpoint the audit trail recorded for model 'global', round 1"
    ]


def report_run_id(run_dir: Path) -> str:
    """The run id config.json names."""
    return str(json.loads((run_dir / "config.json").read_text())["run_id"])
