"""``federation.average-last`` through the real ServerApp and ClientApp: the final model is
the mean of the last rounds' global models, and checkpoint, trail and report agree on it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from common.config import RunConfig
from common.signing import state_hash
from server.audit import entries, verify_trail
from server.audit_run import verify_run
from server.averaging import RESUME_KEY, average_states
from server.records import load_checkpoint, read_rounds
from simulations.federated import run_federated


@pytest.mark.slow
def test_the_final_model_is_the_mean_of_the_last_rounds(
    site_factory: Callable[..., Path], tmp_path: Path
) -> None:
    for name, seed in (("site-a", 1), ("site-b", 2)):
        site_factory(name, n_cases=24, seed=seed)
    run_dir = tmp_path / "run"
    cfg = RunConfig().replace(
        {
            "data.site-root": str(tmp_path / "sites"),
            "data.roi-size": 32,
            "data.context-mm": 0.0,
            "train.local-epochs": 1,
            "train.amp": False,
            "eval.min-cases": 4,
            "eval.min-per-class": 2,
            "eval.every-round": False,
            "federation.num-rounds": 3,
            "federation.average-last": 2,
            "train.lr-schedule": "cosine",
            "train.warmup-rounds": 1,
            "output.run-dir": str(run_dir),
        }
    )
    run_federated(cfg)

    final = load_checkpoint(run_dir / "checkpoint.pt")
    window = final["resume"][RESUME_KEY]
    assert [w["round"] for w in window] == [2, 3] and final["round"] == 3
    want = average_states([w["model"] for w in window])
    assert all(torch.equal(want[k], final["model"][k]) for k in want)
    last = window[-1]["model"]
    assert any(not torch.equal(last[k], final["model"][k]) for k in last)  # not round 3's

    averaged = [r for r in read_rounds(run_dir) if r["phase"] == "average"]
    assert averaged == [{"model": "global", "phase": "average", "rounds": [2, 3]}]
    checkpoints = [e["data"] for e in entries(run_dir) if e["kind"] == "checkpoint"]
    assert checkpoints[-1]["averaged_rounds"] == [2, 3]
    digest = state_hash(final["model"])
    assert checkpoints[-1]["model_sha256"] == digest
    finals = [e["data"] for e in entries(run_dir) if e["kind"] == "final-evaluation"]
    assert any(f["model"] == "global" and f["model_sha256"] == digest for f in finals)
    assert verify_trail(run_dir).ok
    assert verify_run(run_dir).problems == []
