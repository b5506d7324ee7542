"""Per-round wall time of hepafed against a stock Flower FedAvg federation.

Both run in Flower's simulation engine on the same sites, model, data and rounds:
hepafed as ``hepafed simulate`` runs it, timed by its own round records; stock
Flower as a FedAvg ServerApp body (``configure_train``, ``Grid.send_and_receive``,
``aggregate_train``) with a ClientApp that trains with the plain PyTorch loop of
``bench_client``, timed from sending the model to the aggregate. The first round of
each run is left out of both: for stock Flower it includes starting the workers.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common.keys import RecordPhase
from simulations.bench_client import plain_train
from simulations.bench_measure import spread

# ---- per-round time: hepafed vs stock Flower -----------------------------------------------


def _stock_apps(cfg: Any, round_seconds: list[float]) -> tuple[Any, Any]:
    """A stock Flower FedAvg ServerApp body and a ClientApp with a plain training loop."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import FedAvg

    from client.site import open_site
    from common.config import RunConfig
    from common.keys import Split
    from common.models import build_model

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        run = RunConfig.from_flat(
            {k: v for k, v in msg.content["config"].items() if k in cfg.to_flat()}
        )
        site = open_site(context.node_config, run)
        data = site.split(Split.TRAIN, run)
        model = build_model(run)
        model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
        plain_train(model, data.images, data.masks, data.labels, run, run.train.local_epochs)
        content = RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "metrics": MetricRecord({"num-examples": len(data)}),
            }
        )
        return Message(content, reply_to=msg)

    def server(grid: Grid, run: RunConfig) -> None:
        from flwr.app import ConfigRecord

        # training rounds only: this loop never asks the strategy to configure evaluation
        strategy = FedAvg(min_available_nodes=len(list(grid.get_node_ids())))
        arrays = ArrayRecord(build_model(run).state_dict())
        for rnd in range(1, run.federation.num_rounds + 1):
            t = time.monotonic()
            messages = strategy.configure_train(rnd, arrays, ConfigRecord(run.to_flat()), grid)
            replies = list(grid.send_and_receive(messages))
            failed = [r.error.reason for r in replies if r.has_error()]
            if failed:
                raise RuntimeError(f"stock Flower round {rnd} failed: {failed[0]}")
            new, _ = strategy.aggregate_train(rnd, replies)
            arrays = new if new is not None else arrays
            round_seconds.append(time.monotonic() - t)

    return server, client


def round_time(cfg: Any, repeats: int) -> dict[str, Any]:
    """Per-round wall time of hepafed vs stock Flower FedAvg, same sites and settings."""
    from server.records import read_rounds
    from simulations.federated import run_federated

    cfg = cfg.replace({"eval.every-round": False})
    # the first round of each run is left out: for stock Flower it includes starting the
    # simulation's workers (hepafed starts them with its site query, before round 1)
    ours: list[float] = []
    stock: list[float] = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            run = cfg.replace({"output.run-dir": str(Path(tmp) / "run")})
            run_federated(run)
            rounds = read_rounds(Path(tmp) / "run")
            ours += [e["seconds"] for e in rounds if e.get("phase") == RecordPhase.TRAIN][1:]
            seconds: list[float] = []
            server, client = _stock_apps(cfg, seconds)
            run_federated(run, body=server, client=client)
            stock += seconds[1:]
    med_ours, med_stock = statistics.median(ours), statistics.median(stock)
    return {
        "sites": cfg.federation.expected_sites,
        "rounds_per_run": cfg.federation.num_rounds,
        "runs": repeats,
        "hepafed_round_s": spread(ours),
        "flower_round_s": spread(stock),
        "ratio": med_ours / med_stock,
    }
