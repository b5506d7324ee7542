"""A real deployment on loopback: SuperLink + 3 SuperNodes with TLS and site authentication.

Everything goes through the ``hepafed`` command line a hospital IT team and the
coordinating center would use: ``certs init``, ``site init``, ``server
register-site``, ``server start``, ``site start`` and ``run``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from common.config import RunConfig
from common.hooks import HookSet
from common.models import build_model
from server.deploy import ControlConnection, list_nodes
from tests.deploy import HEPAFED, ROOT, Processes, free_port, hepafed, wait_until

SITES = ("site-a", "site-b", "site-c")


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Every process a test starts; all of them are stopped even when the test fails."""
    procs = Processes(tmp_path / "logs")
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.mark.slow
def test_two_round_deployment_with_tls_and_site_auth(
    tmp_path: Path, processes: Processes, site_factory: Callable[..., Path]
) -> None:
    started = time.monotonic()
    center = tmp_path / "center"
    certs = center / "certs"
    keyring = center / "keyring"
    out = hepafed(
        "certs", "init", "--out", str(certs), "--host", "127.0.0.1", "--host", "localhost",
        "--keyring", str(keyring),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    ca = certs / "ca.pem"
    assert (certs / "server.key").stat().st_mode & 0o777 == 0o600

    data = {name: site_factory(name, n_cases=30, seed=i) for i, name in enumerate(SITES)}
    keys: dict[str, Path] = {}
    for name in SITES:
        keys[name] = tmp_path / "hospitals" / name
        out = hepafed("site", "init", name, "--out", str(keys[name]))
        assert out.returncode == 0, out.stderr
        assert (keys[name] / "site_key").stat().st_mode & 0o777 == 0o600

    port = free_port()
    superlink = f"127.0.0.1:{port}"
    processes.start(
        "superlink",
        [
            HEPAFED, "server", "start", "--certs", str(certs), "--state", str(center / "state"),
            "--host", "127.0.0.1", "--port", str(port),
        ],
        cwd=center,
    )  # fmt: skip
    assert processes.wait_for_log("superlink", "Application startup complete", 90), processes.log(
        "superlink"
    )

    pubkeys = [str(keys[n] / "site_key.pub") for n in SITES]
    out = hepafed(
        "server", "register-site", *pubkeys, "--superlink", superlink, "--ca", str(ca),
        "--keyring", str(keyring),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    for name in SITES:
        assert f"{name}: registered" in out.stdout

    for name in SITES:
        processes.start(
            name,
            [
                HEPAFED, "site", "start", "--site-dir", str(data[name]), "--keys", str(keys[name]),
                "--superlink", superlink, "--ca", str(ca), "--runtime-port", str(free_port()),
                "--flwr-home", str(keys[name] / "flwr-home"),
                "--server-key", str(keyring / "server.pub"),
            ],
        )  # fmt: skip
    connection = ControlConnection(superlink, ca)
    assert wait_until(
        lambda: sum(n["status"] == "online" for n in list_nodes(connection)) == len(SITES), 120
    ), "\n".join(processes.log(n)[-2000:] for n in SITES)

    run_dir = tmp_path / "run"
    run_config = (
        "federation.num-rounds=2 federation.expected-sites=3 data.roi-size=32 "
        "train.local-epochs=1 train.amp=false hooks.use='fedbn,fedprox' "
        f"eval.min-cases=8 eval.min-per-class=3 output.run-dir='{run_dir}'"
    )
    out = hepafed(
        "run", "--superlink", superlink, "--ca", str(ca), "--run-config", run_config,
        "--app", str(ROOT), "--keyring", str(keyring), timeout=900,
    )  # fmt: skip
    log = out.stdout + out.stderr
    assert out.returncode == 0, log + processes.log("superlink")[-4000:]
    assert "finished:completed" in log
    assert f"run folder at the coordinating center: {run_dir}" in log

    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    train = [r for r in rounds if r["phase"] == "train"]
    evaluate = [r for r in rounds if r["phase"] == "evaluate"]
    assert [r["round"] for r in train] == [1, 2]
    for r in train:
        assert set(r["sites"]) == set(SITES)
        assert not r["rejected"]
        for metrics in r["sites"].values():
            assert math.isfinite(metrics["train-loss"]) and metrics["num-examples"] > 0
    first, last = evaluate[0], evaluate[-1]
    assert (first["round"], last["round"]) == (0, 2)
    assert set(last["sites"]) == set(SITES)
    changed = [first["sites"][s]["brier"] != last["sites"][s]["brier"] for s in SITES]
    assert all(changed), "the global model did not change between round 0 and round 2"
    # FedBN in deployment: each SuperNode kept its BatchNorm layers in its Flower Context
    # across rounds and scored the global model with them; the server never changed them
    evaluations = json.loads((run_dir / "evaluations.json").read_text())
    assert {e["site"]: e["adaptation"] for e in evaluations} == dict.fromkeys(
        SITES, "own-local-layers"
    )
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]
    cfg = RunConfig().replace({"data.roi-size": 32, "hooks.use": "fedbn"})
    model = build_model(cfg)
    initial = model.state_dict()
    bn = HookSet(cfg).local_keys(model)
    assert bn and all(torch.equal(state[k], initial[k]) for k in bn)
    assert not torch.equal(state["conv1.weight"], initial["conv1.weight"])
    report = json.loads((run_dir / "report.json").read_text())
    assert report["settings"]["hooks"] == ["fedbn", "fedprox (mu = 0.01)"]
    assert {s["name"] for s in report["sites_joined"]} == set(SITES)
    assert set(SITES) <= {s["site"] for s in report["sites"]}
    assert (run_dir / "report.html").is_file()
    # every update was signed by its hospital's registered key and the trail verifies with
    # the federation's own server key
    out = hepafed("audit", "verify", str(run_dir), "--public-key", str(keyring / "server.pub"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "chain intact, head signed by the server key" in out.stdout

    elapsed = time.monotonic() - started
    print(f"\nloopback deployment (3 sites, 2 rounds, TLS + site auth): {elapsed:.1f} s wall time")
