"""Local training and site-side evaluation on a tiny synthetic site."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from client.evaluation import summarize
from client.site import SiteConfigError, open_site, resolve_site_dir, site_evaluate, site_train
from client.trainer import train_local
from common.config import RunConfig
from common.device import derive_seed, select_compute
from common.models import build_model
from common.weights import to_arrays


def _cfg(root: Path, **kw: object) -> RunConfig:
    return RunConfig().replace(
        {"data.site-root": str(root), "data.roi-size": 32, "data.context-mm": 0.0, **kw}
    )


def test_cpu_compute_has_no_amp_and_seeds_are_stable() -> None:
    compute = select_compute(amp=True, prefer="cpu")
    assert compute.device.type == "cpu" and not compute.uses_amp
    assert not compute.grad_scaler().is_enabled()
    assert derive_seed(1, "site-a", 3) == derive_seed(1, "site-a", 3)
    assert derive_seed(1, "site-a", 3) != derive_seed(1, "site-b", 3)


def test_training_learns_the_synthetic_signal(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=60, seed=3)
    cfg = _cfg(site.parent)
    s = open_site({"site-dir": str(site)}, cfg)
    compute = select_compute(prefer="cpu")
    model = build_model(cfg)
    test = s.split("test", cfg)
    before = summarize(model, test, cfg, compute).auc
    result = train_local(model, s.split("train", cfg), cfg, compute, seed=1, epochs=6)
    after = summarize(model, test, cfg, compute)
    assert result.num_examples == 6 * 40 and np.isfinite(result.loss)
    assert before is not None and after.auc is not None
    assert after.auc >= 0.9 > before
    assert after.n == 20 and after.n_pos == 10 and after.n_neg == 10


def test_site_jobs_are_reproducible_and_summaries_only(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=12)
    cfg = _cfg(site.parent)
    s = open_site({"partition-id": 0}, cfg)
    arrays = to_arrays(build_model(cfg))
    state1, metrics1 = site_train(s, arrays, cfg, server_round=2)
    state2, metrics2 = site_train(s, arrays, cfg, server_round=2)
    assert all(torch.equal(state1[k], state2[k]) for k in state1)
    assert metrics1["num-examples"] == 8.0 and metrics1["train-loss"] == metrics2["train-loss"]
    summary, adaptation = site_evaluate(s, arrays, cfg)
    assert adaptation == "none"
    assert summary.n == 4 and summary.insufficient  # 4 test cases < eval.min-cases


def test_node_without_site_is_a_named_error(tmp_path: Path) -> None:
    with pytest.raises(SiteConfigError, match="site-dir"):
        resolve_site_dir({}, RunConfig())
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "manifest.csv").write_text("case_id\n")
    with pytest.raises(SiteConfigError, match="holds 1 site folder"):
        resolve_site_dir(
            {"partition-id": 3}, RunConfig().replace({"data.site-root": str(tmp_path)})
        )
