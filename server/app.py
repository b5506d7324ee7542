"""The ServerApp: reads the run config, runs the evaluation design, writes the report.

The same app serves ``hepafed simulate``, ``flwr run .`` and a deployed
SuperLink; the federation's mechanics live in ``server.federation``, the
designs in ``server.designs`` and the report in ``server.report.build``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import RunConfig
from common.flower_pulls import quicken_pulls
from common.keys import EvalDesign
from common.malloc import freeze_start, return_large_blocks
from server.designs import run_design
from server.federation import connect
from server.records import RunRecorder
from server.report.files import write_report
from server.tracking import require_backend
from server.trust import sign_report

app = ServerApp()
log = logging.getLogger("hepafed.progress")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run a federated training with the run config Flower hands us (deployed: the grid
    pulls the sites' replies with a short retry backoff, ``common.flower_pulls``, and the
    process, which aggregates but never trains, hands freed updates back to the operating
    system at once, ``common.malloc``, and freezes the objects of its start out of the
    cycle collector's reach, ``freeze_start``, for the full collections that free the
    pulls' dead responses, ``server.pull``)."""
    import flwr.superlink.grid.http_grid as http_grid

    from server import pull

    quicken_pulls(http_grid)
    quicken_pulls(pull)  # where the replies are pulled (one at a time)
    if isinstance(grid, http_grid.HttpGrid):
        return_large_blocks()
        freeze_start()
    serve(grid, RunConfig.from_flat(context.run_config))


def serve(grid: Grid, cfg: RunConfig) -> Path:
    """Run the design of ``cfg``, write evaluations and the report; the run folder."""
    require_backend(cfg)  # a missing tracking package fails before any site is asked
    if cfg.eval.design is EvalDesign.MONITOR:  # a trained model watched over time: no training
        from server.monitoring.design import run_monitor

        return run_monitor(grid, cfg)
    recorder = RunRecorder(Path(cfg.output.run_dir))
    with recorder.tracked():  # tracking.backend: the report's figures, then the run ends
        federation = connect(grid, cfg, recorder)
        evaluations = run_design(federation)
        recorder.write_evaluations([e.to_dict() for e in evaluations])
        write_report(recorder.run_dir)
        sign_report(federation.trust, federation.audit, recorder.run_dir)
    log.info("run finished; results and report in %s", recorder.run_dir)
    return recorder.run_dir
