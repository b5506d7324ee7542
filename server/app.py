"""The ServerApp: reads the run config and runs the federation.

The same app serves ``hepafed simulate``, ``flwr run .`` and a deployed
SuperLink; all federation logic lives in ``server.federation``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import RunConfig
from server.federation import run_federation
from server.records import RunRecorder

app = ServerApp()
log = logging.getLogger("hepafed.progress")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run a federated training with the run config Flower hands us."""
    serve(grid, RunConfig.from_flat(context.run_config))


def serve(grid: Grid, cfg: RunConfig) -> Path:
    """Run the federation for ``cfg`` and return the run folder."""
    recorder = RunRecorder(Path(cfg.output.run_dir))
    run_federation(grid, cfg, recorder)
    log.info("run finished; results in %s", recorder.run_dir)
    return recorder.run_dir
