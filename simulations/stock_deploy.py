"""Stock Flower deployed on loopback: the baseline of the deployed-round benchmark.

A Flower app as the Flower documentation builds one: a FedAvg ServerApp body
(``configure_train``, ``Grid.send_and_receive``, ``aggregate_train``) and a ClientApp
training with a plain PyTorch loop (``simulations.bench_round``), on the same site
folders, data pipeline, model and run config as hepafed. It runs on Flower's own
processes as shipped: ``flower-superlink`` and one ``flower-supernode`` per site,
which starts a fresh ``flwr-clientapp`` process for every message (``--isolation
subprocess``, Flower's default). No TLS, no site authentication, no signatures, no
gateway: the quickstart's deployment, with each site's torch threads limited as
hepafed's loopback sites are (``OMP_NUM_THREADS``), so both do the same work.

The ServerApp writes its per-round seconds and phases to ``stock_rounds.json`` in the
run's ``output.run-dir``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import RunConfig
from simulations.bench_round import stock_apps
from simulations.loopback import Processes, Started, free_port, snapshot_app, wait_until

ROUNDS_FILE = "stock_rounds.json"

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    run = RunConfig.from_flat(context.run_config)
    seconds: list[float] = []
    phases: list[dict[str, float]] = []
    body, _ = stock_apps(run, seconds, phases)
    body(grid, run)
    out = Path(run.output.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / ROUNDS_FILE).write_text(json.dumps({"seconds": seconds, "phases": phases}))


client_app = stock_apps(RunConfig(), [], [])[1]

COMPONENTS = (
    'serverapp = "simulations.stock_deploy:server_app"\n'
    'clientapp = "simulations.stock_deploy:client_app"\n'
)


def stock_app(dest: Path) -> Path:
    """This project's app folder with the stock ServerApp and ClientApp as components."""
    import re

    app = snapshot_app(dest)
    pyproject = app / "pyproject.toml"
    text = pyproject.read_text()
    text, n = re.subn(r'serverapp = "[^"]*"\nclientapp = "[^"]*"\n', COMPONENTS, text, count=1)
    if n != 1:
        raise RuntimeError(f"{pyproject}: no [tool.flwr.app.components] to replace")
    pyproject.write_text(text)
    return app


class StockFederation(Started):
    """Flower's SuperLink and one SuperNode per site on 127.0.0.1, as shipped (insecure).

    Use as a context manager: every process is stopped on exit."""

    def __init__(self, root: Path, sites: dict[str, Path], threads: int) -> None:
        self.root, self.sites, self.threads = root, sites, threads
        self.processes = Processes(root / "logs")
        self.address = ""
        self.app = root / "app"

    def start(self) -> None:
        from server.deploy import ControlConnection, list_nodes

        stock_app(self.app)
        from common.processes import with_flower_on_path

        env = with_flower_on_path(
            {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
        )
        state = self.root / "state"
        state.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self.processes.start(
            "superlink",
            [_tool("flower-superlink"), "--insecure", "--database", str(state / "db"),
             "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
             "--port", str(port)],
            cwd=state, env={**env, "FLWR_HOME": str(state / "flwr-home")},
        )  # fmt: skip
        if not self.processes.wait_for_log("superlink", "Application startup complete", 120):
            raise RuntimeError("stock SuperLink did not start:\n" + self.processes.log("superlink"))
        for name, site in self.sites.items():
            home = self.root / "nodes" / name
            home.mkdir(parents=True, exist_ok=True)
            self.processes.start(
                name,
                [_tool("flower-supernode"), "--insecure", "--superlink", self.address,
                 "--node-config", f"site-dir='{Path(site).resolve()}' site-name='{name}'",
                 "--port", str(free_port())],
                cwd=home,
                env={**env, "FLWR_HOME": str(home / "flwr-home"),
                     "OMP_NUM_THREADS": str(self.threads)},
            )  # fmt: skip
        connection = ControlConnection(self.address, insecure=True)

        def online() -> bool:
            return sum(n["status"] == "online" for n in list_nodes(connection)) == len(self.sites)

        if not wait_until(online, 180):
            logs = "\n".join(self.processes.log(n)[-2000:] for n in self.sites)
            raise RuntimeError(f"the stock SuperNodes did not come online:\n{logs}")

    def run(self, overrides: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
        """Submit a run of the stock app with ``overrides``; its ``stock_rounds.json``."""
        from common.cli import toml_value
        from server.deploy import ControlConnection, RunRequest, submit_run

        run_dir = Path(str(overrides["output.run-dir"]))
        config = " ".join(f"{k}={toml_value(v)}" for k, v in sorted(overrides.items()))
        lines: list[str] = []
        outcome = submit_run(
            ControlConnection(self.address, insecure=True),
            RunRequest(self.app, (config,)),
            echo=lines.append,
        )
        if not outcome.completed or not (run_dir / ROUNDS_FILE).is_file():
            tail = self.processes.log("superlink")[-4000:]
            raise RuntimeError(f"the stock run ended {outcome.status}:\n{''.join(lines)}\n{tail}")
        return dict(json.loads((run_dir / ROUNDS_FILE).read_text()))


def _tool(name: str) -> str:
    """A Flower command installed beside this Python."""
    import sys

    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError(f"{name} is not installed beside {sys.executable}")
    return found
