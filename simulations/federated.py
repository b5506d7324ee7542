"""Run the real ServerApp and ClientApp in Flower's simulation engine.

Each simulated hospital is a Flower virtual SuperNode whose ``partition-id``
indexes the site folders under ``data.site-root``: the same manifests and
loaders a deployed hospital uses.

The engine runs the sites as Ray actors: on a Ray started for the run on this
machine, or on an existing Ray cluster named by ``ray_address`` or the
``RAY_ADDRESS`` environment variable (``hepafed simulate --ray-address``;
docs/cluster.md). Ray's usage statistics are off either way.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import socket
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from client.app import app as client_app
from common.config import RunConfig
from common.cpu_quota import process_cpus
from common.manifest import list_site_dirs
from server.app import serve

log = logging.getLogger("hepafed.progress")

RAY_ADDRESS_ENV = "RAY_ADDRESS"  # Ray's own variable: the cluster `ray.init()` joins
LOCAL = "local"  # Ray's name for "start a Ray of this run's own on this machine"
GPU_SHARE = 0.5  # of a GPU per simulated site, where the Ray has GPUs
NODE_CHECK_S = 120.0  # how long the per-node check may wait for every node to answer


class ClusterError(ValueError):
    """The Ray cluster named by ``--ray-address`` or ``RAY_ADDRESS`` cannot run the sites."""


@dataclass(frozen=True)
class RayCluster:
    """The existing Ray cluster a simulation runs on, as it was when the run joined it."""

    address: str
    nodes: int  # alive nodes
    cpus: float
    gpus: float

    def describe(self) -> str:
        return (
            f"Ray cluster at {self.address}: {self.nodes} node(s), {self.cpus:g} CPU(s), "
            f"{self.gpus:g} GPU(s)"
        )


def resolve_ray_address(explicit: str | None = None) -> str | None:
    """The Ray cluster to run on: ``explicit`` (``--ray-address``), else ``RAY_ADDRESS``;
    None (or ``local``) for a Ray of the run's own on this machine."""
    address = (explicit or os.environ.get(RAY_ADDRESS_ENV) or "").strip()
    return None if address in ("", LOCAL) else address


def usage_stats_off() -> None:
    """Ray's usage statistics off for this process and the Ray it starts (before Ray starts;
    a cluster's own nodes are started with ``ray start --disable-usage-stats``)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


def simulation_backend(
    num_cpus_per_site: int = 1, address: str | None = None, gpu_share: float | None = None
) -> dict[str, Any]:
    """Flower's Ray backend settings: one CPU (and ``gpu_share`` of a GPU) per simulated site.

    Without ``address`` the run starts its own Ray on this machine's CPUs (``local``: not
    the one ``RAY_ADDRESS`` names), a GPU share when this machine has a GPU. With one, Ray
    joins that cluster: ``ray.init`` refuses resources when it connects, so none are given;
    pass ``gpu_share`` from the cluster's resources. No dashboard either way."""
    init_args: dict[str, Any] = {"include_dashboard": False}
    if address is None:
        init_args.update(address=LOCAL, num_cpus=process_cpus())
        if gpu_share is None:
            import torch

            gpu_share = GPU_SHARE if torch.cuda.is_available() else 0.0
    else:
        init_args["address"] = address
    return {
        "client_resources": {"num_cpus": num_cpus_per_site, "num_gpus": gpu_share or 0.0},
        "init_args": init_args,
    }


def probe_ray_address(address: str) -> None:
    """Refuse an address Ray could only time out on (minutes of retries) with what to do."""
    if address == "auto":  # Ray reads this machine's current cluster and fails fast itself
        return
    if "://" in address:
        raise ClusterError(
            f"Ray address {address!r}: Ray Client addresses are not supported; run hepafed "
            "on a node of the cluster and give the head's GCS address HOST:PORT "
            "(docs/cluster.md)"
        )
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(
            f"Ray address {address!r}: expected HOST:PORT, the head node's address as "
            "`ray start --head --port=PORT` prints it (docs/cluster.md)"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5.0).close()
    except OSError as e:
        raise ClusterError(
            f"no Ray cluster answers at {address} ({e.strerror or e}): start its head node "
            f"there (`ray start --head --port={port} --disable-usage-stats`), check the host "
            "and port and that no firewall blocks it, or unset RAY_ADDRESS and drop "
            "--ray-address to run on a Ray of this machine's own (docs/cluster.md)"
        ) from None


def connect_cluster(
    address: str, init_args: dict[str, Any], folders: Mapping[str, str]
) -> RayCluster:
    """Join the Ray cluster at ``address`` (``probe_ray_address`` first) with ``init_args``
    (Flower's Ray backend then finds Ray initialised and uses this connection), and check
    that every node which can host a site has this hepafed installed and sees ``folders``
    (run-config key -> absolute path): no code or data is shipped to the nodes."""
    import ray

    try:
        ray.init(**init_args)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(
            f"cannot join the Ray cluster at {address}: {e} (docs/cluster.md)"
        ) from None
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources")]
        total = ray.cluster_resources()
        cluster = RayCluster(
            address, len(nodes), float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0))
        )
        hosts = [n for n in nodes if n["Resources"].get("CPU", 0.0) >= 1.0]
        if not hosts:
            raise ClusterError(f"{cluster.describe()}: no node has a CPU to run a site on")
        _check_nodes(hosts, folders)
    except BaseException:
        ray.shutdown()
        raise
    return cluster


def _check_nodes(nodes: list[dict[str, Any]], folders: Mapping[str, str]) -> None:
    """One zero-CPU task on each node: can it import hepafed, does it see ``folders``?"""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def look(paths: list[str]) -> tuple[str, list[bool]]:  # pickled by value: no hepafed
        import importlib.metadata as md
        import os as _os

        try:
            version = md.version("hepafed")
        except md.PackageNotFoundError:
            version = ""
        return version, [_os.path.isdir(p) for p in paths]

    check = ray.remote(num_cpus=0)(look)
    try:
        ours = importlib.metadata.version("hepafed")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree: no version
        ours = ""
    keys, paths = list(folders), list(folders.values())
    refs = {
        f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})": check.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(paths)
        for n in nodes
    }
    try:
        answers = dict(zip(refs, ray.get(list(refs.values()), timeout=NODE_CHECK_S), strict=True))
    except ray.exceptions.GetTimeoutError:
        raise ClusterError(
            f"not every node of the Ray cluster answered within {NODE_CHECK_S:.0f} s"
        ) from None
    except ray.exceptions.RayError as e:
        raise ClusterError(f"a node of the Ray cluster failed its check: {e}") from None
    problems = []
    for node, (version, seen) in answers.items():
        if not version:
            problems.append(f"node {node}: hepafed is not installed in the Python its Ray runs")
        elif ours and version != ours:
            problems.append(f"node {node}: hepafed {version}, this machine {ours}")
        problems += [
            f"node {node}: {key} {path} is not a folder there"
            for key, path, ok in zip(keys, paths, seen, strict=True)
            if not ok
        ]
    if problems:
        raise ClusterError(
            "the Ray cluster cannot run these sites: every node needs the same hepafed "
            "installed and the site folders and the run folder at the same path, on a shared "
            "filesystem (docs/cluster.md):\n  " + "\n  ".join(problems)
        )


def _not_the_run_simulation_notice(record: logging.LogRecord) -> bool:
    """Drop Flower's notice that ``run_simulation`` is deprecated (we know; see README)."""
    return "run_simulation" not in str(record.args)


def run_federated(
    cfg: RunConfig,
    verbose: bool = False,
    body: Callable[[Grid, RunConfig], object] = serve,
    client: ClientApp = client_app,
    ray_address: str | None = None,
) -> RayCluster | None:
    """Run ``cfg`` with one simulated SuperNode per site folder under ``data.site-root``.

    ``body`` is what the ServerApp does with the grid (default: ``server.app.serve``,
    the run config's evaluation design); ``client`` the ClientApp every site runs
    (default hepafed's; the benchmark passes a stock Flower one). ``ray_address`` (else
    ``RAY_ADDRESS``) names an existing Ray cluster to run the sites on; the ServerApp
    runs here either way. Returns that cluster as the run found it, None for a local Ray."""
    n_sites = len(list_site_dirs(cfg.data.site_root))  # the site root must exist here too
    if cfg.federation.expected_sites == 0:  # one virtual node per site folder: wait for all
        cfg = cfg.replace({"federation.expected-sites": n_sites})
    usage_stats_off()
    # Ray's future default (sites with num_gpus=0 keep the visible-device variable); silences
    # its FutureWarning and changes nothing for sites that are given a GPU share
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    address = resolve_ray_address(ray_address)
    backend = simulation_backend(address=address)
    cluster = None
    if address is not None:
        probe_ray_address(address)  # before anything is written
        cfg = _absolute_paths(cfg)  # the same on every node
        Path(cfg.output.run_dir).mkdir(parents=True, exist_ok=True)  # sites keep state there
        folders = {"data.site-root": cfg.data.site_root, "output.run-dir": cfg.output.run_dir}
        ray_level = logging.INFO if verbose else logging.WARNING
        init_args = {**backend["init_args"], "logging_level": ray_level}
        cluster = connect_cluster(address, init_args, folders)
        backend = simulation_backend(address=address, gpu_share=GPU_SHARE if cluster.gpus else 0.0)
        log.info("sites on the %s", cluster.describe())
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        body(grid, cfg)

    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    flwr_logger.addFilter(_not_the_run_simulation_notice)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            run_simulation(
                server_app=server_app,
                client_app=client,
                num_supernodes=n_sites,
                backend_config=backend,
                verbose_logging=verbose,
            )
    finally:
        flwr_logger.setLevel(level)
        flwr_logger.removeFilter(_not_the_run_simulation_notice)
        if cluster is not None:
            _disconnect()
    return cluster


def _absolute_paths(cfg: RunConfig) -> RunConfig:
    """``cfg`` with its folders absolute: a node's Ray worker has a working folder of its own."""
    keys = {
        "data.site-root": cfg.data.site_root,
        "data.cache-dir": cfg.data.cache_dir,
        "output.run-dir": cfg.output.run_dir,
        "trust.keys-dir": cfg.trust.keys_dir,
    }
    return cfg.replace({k: str(Path(v).resolve()) for k, v in keys.items() if v})


def _disconnect() -> None:
    """Leave the cluster (Flower's backend already has unless the run failed before it
    started); the cluster itself keeps running."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
