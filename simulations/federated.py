"""Run the real ServerApp and ClientApp in Flower's simulation engine.

Each simulated hospital is a Flower virtual SuperNode whose ``partition-id``
indexes the site folders under ``data.site-root``: the same manifests and
loaders a deployed hospital uses.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from client.app import app as client_app
from common.config import RunConfig
from common.manifest import list_site_dirs
from server.app import serve


def simulation_backend(num_cpus_per_site: int = 1) -> dict[str, object]:
    """Ray settings: one CPU (and a GPU share when present) per simulated site."""
    import torch

    gpus = 0.5 if torch.cuda.is_available() else 0.0
    return {
        "client_resources": {"num_cpus": num_cpus_per_site, "num_gpus": gpus},
        "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False},
    }


def _not_the_run_simulation_notice(record: logging.LogRecord) -> bool:
    """Drop Flower's notice that ``run_simulation`` is deprecated (we know; see README)."""
    return "run_simulation" not in str(record.args)


def run_federated(
    cfg: RunConfig,
    verbose: bool = False,
    body: Callable[[Grid, RunConfig], object] = serve,
    client: ClientApp = client_app,
) -> None:
    """Run ``cfg`` with one simulated SuperNode per site folder under ``data.site-root``.

    ``body`` is what the ServerApp does with the grid (default: ``server.app.serve``,
    the run config's evaluation design); ``client`` the ClientApp every site runs
    (default hepafed's; the benchmark passes a stock Flower one)."""
    n_sites = len(list_site_dirs(cfg.data.site_root))
    if cfg.federation.expected_sites == 0:  # one virtual node per site folder: wait for all
        cfg = cfg.replace({"federation.expected-sites": n_sites})
    # Ray's future default (sites with num_gpus=0 keep the visible-device variable); silences
    # its FutureWarning and changes nothing for sites that are given a GPU share
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
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
                backend_config=simulation_backend(),  # type: ignore[arg-type]
                verbose_logging=verbose,
            )
    finally:
        flwr_logger.setLevel(level)
        flwr_logger.removeFilter(_not_the_run_simulation_notice)
