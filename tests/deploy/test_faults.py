"""Faults with real processes: the server killed mid-run and resumed; a hospital killed
mid-round; the SuperLink restarted.

One loopback federation (SuperLink with TLS and site authentication, three
SuperNodes, the federation's signing keyring) serves the three tests, in this order:
the ServerApp process is killed with SIGKILL after a completed round and
``hepafed run --resume RUN_DIR`` finishes the run; then one hospital's SuperNode
is killed (SIGKILL) while a round is under way and the run completes without it; then
the SuperLink (and its gateway) is stopped and started again on the same state folder:
the sites are still registered, with the same SuperNode ids, their nodes come back
online by themselves, and a run completes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from server.audit import entries
from server.deploy import ControlConnection, list_nodes
from tests.deploy import (
    HEPAFED,
    Processes,
    approve_app,
    descendants,
    free_port,
    hepafed,
    requires_nginx,
    set_site_policy,
    snapshot_app,
    wait_until,
)

SITES = ("site-a", "site-b", "site-c")
BASE_CONFIG = (
    "federation.expected-sites=3 data.roi-size=32 data.context-mm=0 train.local-epochs=1 "
    "train.amp=false "
    "eval.min-cases=8 eval.min-per-class=3"
)


@dataclass
class Deployment:
    root: Path
    superlink: str
    ca: Path
    keyring: Path
    procs: Processes
    superlink_args: list[str]

    def run_args(self, *extra: str) -> list[str]:
        return [
            HEPAFED, "run", "--superlink", self.superlink, "--ca", str(self.ca),
            "--keyring", str(self.keyring), "--app", str(self.root / "app"), *extra,
        ]  # fmt: skip


pytestmark = requires_nginx()


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    from tests.conftest import make_site

    root = tmp_path_factory.mktemp("faults")
    procs = Processes(root / "logs")
    try:
        certs, keyring = root / "certs", root / "keyring"
        out = hepafed(
            "certs", "init", "--out", str(certs), "--host", "127.0.0.1", "--keyring", str(keyring)
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        ca = certs / "ca.pem"
        port, control_port = free_port(), free_port()
        fleet, superlink = f"127.0.0.1:{port}", f"127.0.0.1:{control_port}"
        superlink_args = [
            HEPAFED, "server", "start", "--certs", str(certs), "--state", str(root / "state"),
            "--host", "127.0.0.1", "--port", str(port), "--control-port", str(control_port),
        ]  # fmt: skip
        procs.start("superlink", superlink_args, cwd=root)
        assert procs.wait_for_log("superlink", "Application startup complete", 90)
        app = snapshot_app(root / "app")
        for i, name in enumerate(SITES):
            keys = root / "hospitals" / name
            assert hepafed("site", "init", name, "--out", str(keys)).returncode == 0
            set_site_policy(keys, {"min-cases": 8, "min-per-class": 3})
            approve_app(app, keys)
            out = hepafed(
                "server", "register-site", str(keys / "site_key.pub"), "--superlink", superlink,
                "--ca", str(ca), "--keyring", str(keyring),
            )  # fmt: skip
            assert out.returncode == 0, out.stdout + out.stderr
            data = make_site(root / "data", name, n_cases=30, seed=i)
            procs.start(
                name,
                [
                    HEPAFED, "site", "start", "--site-dir", str(data), "--keys", str(keys),
                    "--superlink", fleet, "--ca", str(ca), "--runtime-port", str(free_port()),
                    "--flwr-home", str(keys / "flwr-home"),
                    "--server-key", str(keyring / "server.pub"),
                    "--threads", "1",  # the sites share this machine's cores
                ],
            )  # fmt: skip
        connection = ControlConnection(superlink, ca)
        assert wait_until(
            lambda: sum(n["status"] == "online" for n in list_nodes(connection)) == len(SITES),
            120,
        )
        yield Deployment(root, superlink, ca, keyring, procs, superlink_args)
    finally:
        procs.stop_all()


def _checkpoint_round(run_dir: Path) -> int:
    try:
        return int(torch.load(run_dir / "checkpoint.pt", weights_only=True)["round"])
    except Exception:
        return 0


def _serverapps(deployment: Deployment) -> list[int]:
    """The pids of ``flwr-serverapp`` processes under the SuperLink."""
    pids = descendants(deployment.procs.procs["superlink"].pid)
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            if b"flwr-serverapp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
    return out


def _audit(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in entries(run_dir) if e["kind"] == kind]


@pytest.mark.slow
def test_server_killed_mid_run_resumes_from_the_last_completed_round(
    deployment: Deployment,
) -> None:
    run_dir = deployment.root / "run-resume"
    config = (
        f"{BASE_CONFIG} federation.num-rounds=3 eval.every-round=false output.run-dir='{run_dir}'"
    )
    deployment.procs.start("run-1", deployment.run_args("--run-config", config))
    assert wait_until(lambda: _checkpoint_round(run_dir) >= 1, 600, 0.2), deployment.procs.log(
        "run-1"
    )
    killed_after = _checkpoint_round(run_dir)
    pids = _serverapps(deployment)
    assert pids, "no flwr-serverapp process found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deployment.procs.stop("run-1")
    assert killed_after < 3, "the run finished before the server could be killed"

    out = hepafed(*deployment.run_args("--resume", str(run_dir))[1:], timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr + deployment.procs.log("superlink")[-3000:]

    rounds = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
    # every round trained exactly once in the record the report is built from
    assert [r["round"] for r in rounds if r["phase"] == "train"] == [1, 2, 3]
    # no completed round lost or repeated: each round checkpointed exactly once, and the
    # resumed run started right after the last one completed before the kill
    assert [e["data"]["round"] for e in _audit(run_dir, "checkpoint")] == [1, 2, 3]
    resumed = _audit(run_dir, "resume-model")
    assert [e["data"]["completed_rounds"] for e in resumed] == [killed_after]
    assert len(_audit(run_dir, "resume")) == 1 and len(_audit(run_dir, "config")) == 1
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["round"] == 3
    out = hepafed(
        "audit", "verify", str(run_dir), "--public-key", str(deployment.keyring / "server.pub")
    )
    assert out.returncode == 0, out.stdout
    assert (run_dir / "report.json").is_file()


@pytest.mark.slow
def test_site_killed_mid_round_the_round_completes_without_it(
    deployment: Deployment,
) -> None:
    run_dir = deployment.root / "run-dropout"
    config = (
        f"{BASE_CONFIG} federation.num-rounds=2 federation.round-timeout-s=90 "
        f"eval.every-round=false output.run-dir='{run_dir}'"
    )
    started = time.monotonic()
    deployment.procs.start("run-2", deployment.run_args("--run-config", config))

    def training_started() -> bool:
        return bool(_audit(run_dir, "config"))  # written once the sites are known

    assert wait_until(training_started, 600, 0.2), deployment.procs.log("run-2")
    # the run has started: round 1 is under way. SIGKILL, no goodbye to the SuperLink:
    # the round waits until the SuperLink reports the node gone or round-timeout-s passes
    node = deployment.procs.procs.pop("site-c")
    for pid in [node.pid, *descendants(node.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    node.wait(timeout=30)

    assert wait_until(lambda: deployment.procs.procs["run-2"].poll() is not None, 900)
    log = deployment.procs.log("run-2")
    assert deployment.procs.procs["run-2"].returncode == 0, log
    rounds = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
    train = [r for r in rounds if r["phase"] == "train"]
    assert [r["round"] for r in train] == [1, 2]
    for record in train:
        assert set(record["sites"]) == {"site-a", "site-b"}
        assert record["applied"] is True
        gone = set(record["no_reply"]) | set(record["rejected"])
        assert gone == {"site-c"}
    round_entries = _audit(run_dir, "round")
    assert all("site-c" in e["data"]["no_reply"] or not e["data"]["updates"]["site-c"]["accepted"]
               for e in round_entries)  # fmt: skip
    final = [r for r in rounds if r["phase"] == "final-evaluate"][-1]
    assert "site-c" in final["failed"]
    assert (run_dir / "report.json").is_file()
    out = hepafed(
        "audit", "verify", str(run_dir), "--public-key", str(deployment.keyring / "server.pub")
    )
    assert out.returncode == 0, out.stdout
    print(f"\nsite dropout run: {time.monotonic() - started:.0f} s")


def test_superlink_restarted_keeps_its_sites_and_serves_a_run(deployment: Deployment) -> None:
    """The SuperLink keeps its state in memory and its registered sites in a file beside
    it (``server.superlink_state``): after a restart the two sites still running are
    registered with the same SuperNode ids, online again by their own heartbeats, and a
    run completes; the killed one is still registered, offline."""
    connection = ControlConnection(deployment.superlink, deployment.ca)
    before = {n["node-id"]: n["status"] for n in list_nodes(connection)}
    assert len(before) == 3  # site-c was killed: offline, or not yet noticed
    deployment.procs.stop("superlink")
    deployment.procs.start("superlink", deployment.superlink_args, cwd=deployment.root)
    assert deployment.procs.wait_for_log("superlink", "Application startup complete", 90)
    registry = deployment.root / "state" / "superlink.db.sites.json"
    assert registry.is_file()

    def nodes() -> dict[Any, str]:
        return {n["node-id"]: n["status"] for n in list_nodes(connection)}

    assert wait_until(lambda: sorted(nodes().values()) == ["online", "online", "registered"],
                      120), nodes()  # fmt: skip
    assert set(nodes()) == set(before)  # the same SuperNode ids
    run_dir = deployment.root / "run-after-restart"
    base = BASE_CONFIG.replace("federation.expected-sites=3", "federation.expected-sites=2")
    config = f"{base} federation.num-rounds=1 eval.every-round=false output.run-dir='{run_dir}'"
    out = hepafed(*deployment.run_args("--run-config", config)[1:], timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr + deployment.procs.log("superlink")[-3000:]
    rounds = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
    train = [r for r in rounds if r["phase"] == "train"]
    assert [sorted(r["sites"]) for r in train] == [["site-a", "site-b"]]
