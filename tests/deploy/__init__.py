"""Deployment tests: real SuperLink/SuperNode processes on loopback, and compose.yaml.

Helpers shared by the test modules: what a completed deployed run must show, site
policies, monitoring checks; free ports, the ``hepafed`` executable and ``Processes``
come from ``simulations.loopback`` (shared with the deployed-round benchmark).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from simulations.loopback import (  # noqa: F401  (the test modules import them from here)
    APP_PARTS,
    HEPAFED,
    ROOT,
    Processes,
    approve_app,
    descendants,
    free_port,
    hepafed,
    snapshot_app,
    wait_until,
)

if TYPE_CHECKING:
    import pytest


def check_completed_run(run_dir: Path, keyring: Path, sites: Sequence[str]) -> None:
    """What a completed two-round deployed run (``RUN_CONFIG``) must show: every site trained
    and was scored in both rounds, FedBN kept BatchNorm at the sites, the report names
    exactly ``sites``, and the audit trail verifies with the federation's server key."""
    import json
    import math

    import torch

    from common.config import RunConfig
    from common.hooks import HookSet
    from common.models import build_model

    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    train = [r for r in rounds if r["phase"] == "train"]
    evaluate = [r for r in rounds if r["phase"] == "evaluate"]
    assert [r["round"] for r in train] == [1, 2]
    for r in train:
        assert set(r["sites"]) == set(sites)
        assert not r["rejected"]
        for metrics in r["sites"].values():
            assert math.isfinite(metrics["train-loss"]) and metrics["num-examples"] > 0
    first, last = evaluate[0], evaluate[-1]
    assert (first["round"], last["round"]) == (0, 2)
    assert set(last["sites"]) == set(sites)
    changed = [first["sites"][s]["brier"] != last["sites"][s]["brier"] for s in sites]
    assert all(changed), "the global model did not change between round 0 and round 2"
    # FedBN in deployment: each SuperNode kept its BatchNorm layers in its Flower Context
    # across rounds and scored the global model with them; the server never changed them
    evaluations = json.loads((run_dir / "evaluations.json").read_text())
    assert {e["site"]: e["adaptation"] for e in evaluations} == dict.fromkeys(
        sites, "own-local-layers"
    )
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]
    cfg = RunConfig().replace({"data.roi-size": 32, "data.context-mm": 0.0, "hooks.use": "fedbn"})
    model = build_model(cfg)
    initial = model.state_dict()
    bn = HookSet(cfg).local_keys(model)
    assert bn and all(torch.equal(state[k], initial[k]) for k in bn)
    assert not torch.equal(state["conv1.weight"], initial["conv1.weight"])
    report = json.loads((run_dir / "report.json").read_text())
    assert report["settings"]["hooks"] == ["fedbn", "fedprox (mu = 0.01)"]
    assert {s["name"] for s in report["sites_joined"]} == set(sites)
    assert set(sites) <= {s["site"] for s in report["sites"]}
    assert (run_dir / "report.html").is_file()
    # every update was signed by its hospital's registered key and the trail verifies with
    # the federation's own server key
    out = hepafed("audit", "verify", str(run_dir), "--public-key", str(keyring / "server.pub"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "chain intact, head signed by the server key" in out.stdout


RUN_CONFIG = (
    "federation.num-rounds=2 data.roi-size=32 data.context-mm=0 train.local-epochs=1 "
    "train.amp=false "
    "hooks.use='fedbn,fedprox' eval.min-cases=8 eval.min-per-class=3"
)
"""The deployed run the real-process tests submit (``check_completed_run`` checks it)."""


def netns_available() -> bool:
    """Whether hosts can be simulated with network namespaces (root and ``ip netns``)."""
    import shutil

    return os.geteuid() == 0 and shutil.which("ip") is not None


def set_site_policy(keys_dir: Path, values: Mapping[str, int | float | str | bool]) -> None:
    """Set keys of the ``[policy]`` table in a site folder's node-config.toml (the site's own
    decision, as a hospital would edit it)."""
    import json
    import re

    path = keys_dir / "node-config.toml"
    text = path.read_text()
    for key, value in values.items():
        literal = json.dumps(value) if not isinstance(value, bool) else str(value).lower()
        pattern = re.compile(rf"^{re.escape(key)}\s*=.*$", re.M)
        body = text.split("[policy]", 1)
        assert len(body) == 2, f"{path} has no [policy] table"
        if pattern.search(body[1]):
            body[1] = pattern.sub(f"{key} = {literal}", body[1], count=1)
        else:
            body[1] = f"\n{key} = {literal}" + body[1]
        text = "[policy]".join(body)
    path.write_text(text)


def _nginx_missing() -> bool:
    from server.gateway import GatewayError, find_nginx

    try:
        find_nginx()
    except GatewayError:
        return not os.environ.get("HEPAFED_REQUIRE_NGINX")  # CI installs it and requires it
    return False


def requires_nginx() -> pytest.MarkDecorator:
    """Skip a test that starts `hepafed server start` where nginx (its gateway) is missing."""
    import pytest

    return pytest.mark.skipif(
        _nginx_missing(), reason="nginx is not installed (apt-get install nginx)"
    )


# ---- monitoring on a deployed federation (test_deployment, test_netns) ----------------------

DATED_CASES = 48  # every third case is test: 16, eight acquired in March 2024, eight in April


def dated_site(site: Path, n_cases: int = DATED_CASES) -> Path:
    """Acquisition and label dates on a synthetic site: train cases in January and February,
    the test cases half in March and half in April (two monitoring windows of eight), labels
    ten days after acquisition."""
    from datetime import date, timedelta

    from tests.common.test_manifest_dates import with_dates

    cells = {}
    for i in range(n_cases):
        test = i % 3 == 2  # conftest.make_site's default splits: train, train, test
        month = (3 if i // 3 < n_cases // 6 else 4) if test else 1 + i % 2
        acquired = date(2024, month, 1 + i // 3)
        cells[i] = (acquired.isoformat(), (acquired + timedelta(days=10)).isoformat())
    with_dates(site, cells)
    return site


def watched_model(site_root: Path, run_dir: Path) -> Path:
    """A model without local layers to monitor (the deployed run's uses FedBN), trained in
    simulation on the same site folders; its run is sealed like any other."""
    from common.config import RunConfig
    from simulations.federated import run_federated

    settings = {
        "data.site-root": str(site_root), "data.roi-size": 32, "data.context-mm": 0.0,
        "federation.num-rounds": 1, "train.local-epochs": 1, "train.amp": False,
        "eval.min-cases": 8, "eval.min-per-class": 3, "output.run-dir": str(run_dir),
    }  # fmt: skip
    run_federated(RunConfig().replace(settings))
    return run_dir


def monitor_args(
    superlink: str, ca: Path, keyring: Path, app: Path, watched: Path, out: Path, sites: int
) -> list[str]:
    """``hepafed monitor --deployed`` over March and April 2024 (both the reference period:
    nothing to alarm about, exit 0)."""
    return [
        "monitor", "--deployed", "--superlink", superlink, "--ca", str(ca),
        "--keyring", str(keyring), "--app", str(app), "--run", str(watched),
        "--windows", "2024-03..2024-04", "--as-of", "2024-12-31", "--out", str(out),
        "--run-config", f"monitor.reference-windows=2 federation.expected-sites={sites}",
    ]  # fmt: skip


def check_monitoring(stdout: str, watched: Path, out: Path, sites: Sequence[str]) -> None:
    """Two windows of eight cases at every genuine site, every label known, nothing failed."""
    import json

    doc = json.loads((watched / "monitor" / "monitor.json").read_text())
    windows = {s["site"]: [w["n"] for w in s["windows"]] for s in doc["sites"]}
    assert windows == {name: [8, 8] for name in sites}, windows
    assert all(w["actual"]["n_labelled"] == 8 for s in doc["sites"] for w in s["windows"])
    outcome = json.loads((out / "monitor-run.json").read_text())
    assert outcome["failed"] == {} and outcome["status"] == "none", outcome
    assert "monitor.json and monitor.html in" in stdout
