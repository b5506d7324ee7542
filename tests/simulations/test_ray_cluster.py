"""`hepafed simulate` on an existing Ray cluster (docs/cluster.md): the backend settings,
the address and its errors, and a run on a two-node cluster started on this machine.

The cluster test starts its own head and second node (``simulations.ray_cluster``: each
node in a process group of its own, stopped by signalling those groups, never with
``ray stop``, which would stop every Ray of this user on the machine)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from common.cli import main
from common.config import RunConfig
from simulations.bench_report import BenchResult, evaluate_targets, markdown
from simulations.federated import (
    RAY_ADDRESS_ENV,
    ClusterError,
    connect_cluster,
    resolve_ray_address,
    run_federated,
    simulation_backend,
)
from simulations.ray_cluster import (
    LocalCluster,
    cluster_nodes,
    free_port,
    ray_cli,
    start_local_cluster,
)

SCENARIO = """
name = "tiny-cluster"
seed = 3
dims = 2

[defaults]
n_cases = 32
fov_mm = 120.0
pixel_spacing_mm = 2.0
test_fraction = 0.5
prevalence = 0.5

[[site]]
name = "site-a"

[[site]]
name = "site-b"
"""

SETTINGS = (
    "federation.num-rounds=1 train.local-epochs=1 eval.min-cases=8 eval.min-per-class=3 "
    "data.roi-size=32 data.context-mm=0"
)


@pytest.fixture
def no_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """RAY_ADDRESS as it was after the test (``--ray-address`` sets it for the command)."""
    monkeypatch.setenv(RAY_ADDRESS_ENV, "")
    monkeypatch.delenv(RAY_ADDRESS_ENV)


# ---- settings and the address, without a cluster ------------------------------------------


def test_backend_joins_a_cluster_without_resources_and_runs_locally_as_before() -> None:
    joined = simulation_backend(address="10.1.2.3:6379")
    assert joined["init_args"] == {"address": "10.1.2.3:6379", "include_dashboard": False}
    assert joined["client_resources"] == {"num_cpus": 1, "num_gpus": 0.0}
    on_gpus = simulation_backend(address="10.1.2.3:6379", gpu_share=0.5)
    assert on_gpus["client_resources"] == {"num_cpus": 1, "num_gpus": 0.5}
    own = simulation_backend()  # a Ray of the run's own, even where RAY_ADDRESS is set
    assert own["init_args"] == {
        "address": "local",
        "num_cpus": os.cpu_count() or 1,
        "include_dashboard": False,
    }
    assert own["client_resources"]["num_cpus"] == 1


def test_the_flag_wins_over_ray_address_and_local_means_no_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    assert resolve_ray_address() is None
    monkeypatch.setenv(RAY_ADDRESS_ENV, "head:6379")
    assert resolve_ray_address() == "head:6379"
    assert resolve_ray_address("other:6380") == "other:6380"
    assert resolve_ray_address("local") is None


def test_an_unreachable_cluster_is_a_clear_error_and_usage_stats_are_off(
    site_factory: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site_factory("site-a", n_cases=4)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    cfg = RunConfig().replace(
        {"data.site-root": str(tmp_path / "sites"), "output.run-dir": str(tmp_path / "run")}
    )
    with pytest.raises(ClusterError, match=re.escape(address)) as caught:
        run_federated(cfg, ray_address=address)
    assert "ray start --head" in str(caught.value)
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
    assert not (tmp_path / "run").exists()  # refused before anything was written
    with pytest.raises(ClusterError, match="expected HOST:PORT"):
        run_federated(cfg, ray_address="just-a-host")
    with pytest.raises(FileNotFoundError, match="site root"):  # checked here before Ray
        run_federated(cfg.replace({"data.site-root": str(tmp_path / "none")}), ray_address=address)


def test_simulate_refuses_an_unreachable_cluster_before_generating_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray_address: None
) -> None:
    address = f"127.0.0.1:{free_port()}"
    code = main(
        ["simulate", "--scenario", "liver-2", "--data-dir", str(tmp_path / "data"),
         "--out", str(tmp_path / "run"), "--ray-address", address]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert f"no Ray cluster answers at {address}" in err and "Traceback" not in err
    assert not (tmp_path / "data").exists()


# ---- a two-node cluster on this machine ---------------------------------------------------


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    if ray_cli() is None:
        pytest.skip("the `ray` command is not installed: no Ray cluster to start")
    started = start_local_cluster(nodes=2, cpus_per_node=1)
    try:
        yield started
    finally:
        started.stop()


def _driver_logs(cluster: LocalCluster) -> set[str]:
    """The head's logs of drivers this process joined the cluster with (job ids)."""
    pattern = re.compile(rf"python-core-driver-([0-9a-f]{{8}})f+_{os.getpid()}\.log")
    return {m[1] for p in cluster.head_logs().iterdir() if (m := pattern.fullmatch(p.name))}


def _workers_of(cluster: LocalCluster, node: int, job: str) -> list[str]:
    logs = cluster.root / f"n{node}" / "session_latest" / "logs"
    return [p.name for p in logs.glob(f"worker-*-{job}-*.out")]


@pytest.mark.slow
def test_simulate_runs_its_sites_on_a_two_node_ray_cluster(
    cluster: LocalCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_ray_address: None,
) -> None:
    nodes = cluster_nodes(cluster.address)
    assert len(nodes) == 2 and sum(n["cpus"] for n in nodes) == 2
    before = _driver_logs(cluster)
    scenario = tmp_path / "tiny-cluster.toml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "run"
    code = main(
        ["simulate", "--scenario", str(scenario), "--data-dir", str(tmp_path / "data"),
         "--out", str(out), "--ray-address", cluster.address, "--run-config", SETTINGS]
    )  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    # the run joined this cluster (2 nodes, 1 CPU each) rather than starting a Ray of its own
    assert f"sites on the Ray cluster at {cluster.address}: 2 node(s), 2 CPU(s)" in err
    (job,) = _driver_logs(cluster) - before
    # one site actor per node: both nodes ran workers of the run's job
    assert _workers_of(cluster, 0, job) and _workers_of(cluster, 1, job)
    report = json.loads((out / "report.json").read_text())
    figures = {r["site"] for r in report["sites"] if r["model"] == "global"}
    assert figures == {"site-a", "site-b"}
    assert all(r["n"] == 16 for r in report["sites"] if r["model"] == "global")
    after = cluster_nodes(cluster.address)  # the run left the cluster as it found it
    assert len(after) == 2 and sum(n["cpus"] for n in after) == 2

    # a folder a node does not see is refused, node by node, before any site runs
    init_args = simulation_backend(address=cluster.address)["init_args"]
    missing = str(tmp_path / "not-shared")
    with pytest.raises(ClusterError, match="shared filesystem") as caught:
        connect_cluster(cluster.address, init_args, {"data.site-root": missing})
    assert str(caught.value).count(f"data.site-root {missing} is not a folder there") == 2


def test_the_cluster_section_of_the_benchmark_is_judged_and_written() -> None:
    figures = {
        "sites": 500, "cases_per_site": 8, "sites_trained": 500, "rejected": {}, "round_s": 300.0,
        "run_s": 420.0, "server_peak_mb": 900.0, "nodes": 2, "cpus": 16.0, "gpus": 0.0,
        "cpus_per_node": 8, "cluster_start_s": 9.0,
    }  # fmt: skip
    machine = {"cores": 16, "memory_gb": 125.0, "gpu": None, "torch": "2"}
    result = BenchResult(
        {"date": "d", "quick": False, "repeats": 3, "command": "hepafed bench", "machine": machine},
        {"cluster-500": figures},
    )
    evaluate_targets(result)
    assert result.targets["cluster_500"]["met"]
    text = markdown(result)
    assert "## 500 simulated sites on a Ray cluster" in text and "2 nodes" in text
    result.sections["cluster-500"] = {**figures, "sites": 20, "sites_trained": 20}  # a trial run
    evaluate_targets(result)
    assert not result.targets["cluster_500"]["met"]
