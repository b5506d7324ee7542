"""Per-round wall time of hepafed against a stock Flower FedAvg federation.

Both run in Flower's simulation engine on the same sites, model, data and rounds:
hepafed as ``hepafed simulate`` runs it, timed by its own round records; stock
Flower as a FedAvg ServerApp body (``configure_train``, ``Grid.send_and_receive``,
``aggregate_train``) with a ClientApp that trains with the plain PyTorch loop of
``bench_client``, timed from sending the model to the aggregate. The first round of
each run is left out of both: for stock Flower it includes starting the workers.

The runs are paired and interleaved (hepafed then stock, stock then hepafed, ...), so a
machine that slows down during the benchmark slows both sides of a pair alike; the
ratio is the median of the pairs' ratios (each pair: the median round of each side),
with its spread. A full run adds a third arm to every set, hepafed with its trust
features off (no signed models or updates, no norm-outlier rule), the order rotating
from set to set: the overhead with and without them, and what they cost, from the
same sets. Each side's round is also split into phases: hepafed's from its
round records (``phase_seconds``: prepare, exchange, screen_fold, finish), stock
Flower's timed around ``configure_train``, ``send_and_receive`` and ``aggregate_train``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from simulations.bench_client import plain_train
from simulations.bench_measure import spread

# ---- per-round time: hepafed vs stock Flower -----------------------------------------------


def stock_apps(
    cfg: Any, round_seconds: list[float], phases: list[dict[str, float]]
) -> tuple[Any, Any]:
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
            prepared = time.monotonic()
            replies = list(grid.send_and_receive(messages))
            exchanged = time.monotonic()
            failed = [r.error.reason for r in replies if r.has_error()]
            if failed:
                raise RuntimeError(f"stock Flower round {rnd} failed: {failed[0]}")
            new, _ = strategy.aggregate_train(rnd, replies)
            arrays = new if new is not None else arrays
            done = time.monotonic()
            round_seconds.append(done - t)
            phases.append(
                {
                    "prepare": prepared - t,
                    "exchange": exchanged - prepared,
                    "finish": done - exchanged,
                }
            )

    return server, client


def _medians(rows: list[dict[str, float]]) -> dict[str, float]:
    """Each phase's median over ``rows`` (one dict of phase seconds per round)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: statistics.median(row.get(k, 0.0) for row in rows) for k in keys}


def _hepafed_run(cfg: Any, ours: list[float], phases: list[dict[str, float]]) -> float:
    """One hepafed run; its rounds (first left out) appended; the median round."""
    from simulations.bench_deploy import train_rounds
    from simulations.federated import run_federated

    with tempfile.TemporaryDirectory() as tmp:
        run_federated(cfg.replace({"output.run-dir": str(Path(tmp) / "run")}))
        rounds = train_rounds(Path(tmp) / "run")
    ours += [e["seconds"] for e in rounds[1:]]
    phases += [e.get("phase_seconds", {}) for e in rounds[1:]]
    return statistics.median(e["seconds"] for e in rounds[1:])


def _stock_run(cfg: Any, stock: list[float], phases: list[dict[str, float]]) -> float:
    """One stock Flower run on the same sites; its rounds (first left out) appended."""
    from simulations.federated import run_federated

    seconds: list[float] = []
    per_phase: list[dict[str, float]] = []
    server, client = stock_apps(cfg, seconds, per_phase)
    with tempfile.TemporaryDirectory() as tmp:
        run_federated(cfg.replace({"output.run-dir": str(Path(tmp) / "run")}), body=server,
                      client=client)  # fmt: skip
    stock += seconds[1:]
    phases += per_phase[1:]
    return statistics.median(seconds[1:])


TRUST_OFF = {"trust.sign-updates": False, "trust.norm-z": 0.0}  # no signatures, no norm rule


def round_time(cfg: Any, repeats: int, trust_off: bool = True) -> dict[str, Any]:
    """Per-round wall time of hepafed vs stock Flower FedAvg, same sites and settings:
    ``repeats`` sets of runs, interleaved, the order rotating from set to set. hepafed
    runs as shipped (signed models and updates, the norm-outlier rule) and, with
    ``trust_off``, also with both off (``TRUST_OFF``), so what they cost is measured
    in the same sets."""
    cfg = cfg.replace({"eval.every-round": False})
    # the first round of each run is left out: for stock Flower it includes starting the
    # simulation's workers (hepafed starts them with its site query, before round 1)
    rounds: dict[str, list[float]] = {"hepafed": [], "trust_off": [], "flower": []}
    phases: dict[str, list[dict[str, float]]] = {k: [] for k in rounds}
    arms = {
        "hepafed": lambda: _hepafed_run(cfg, rounds["hepafed"], phases["hepafed"]),
        "flower": lambda: _stock_run(cfg, rounds["flower"], phases["flower"]),
    }
    if trust_off:
        off = cfg.replace(TRUST_OFF)
        arms["trust_off"] = lambda: _hepafed_run(off, rounds["trust_off"], phases["trust_off"])
    order = list(arms)
    sets = []
    for i in range(repeats):
        turn = order[i % len(order) :] + order[: i % len(order)]  # who goes first rotates
        sets.append({name: arms[name]() for name in turn})
    ratios = [m["hepafed"] / m["flower"] for m in sets]
    out = {
        "sites": cfg.federation.expected_sites,
        "rounds_per_run": cfg.federation.num_rounds,
        "runs": repeats,
        "hepafed_round_s": spread(rounds["hepafed"]),
        "flower_round_s": spread(rounds["flower"]),
        "pair_ratios": ratios,
        "ratio_spread": spread(ratios),
        "ratio": statistics.median(ratios),
        "hepafed_phases_s": _medians(phases["hepafed"]),
        "flower_phases_s": _medians(phases["flower"]),
    }
    if trust_off:
        off_ratios = [m["trust_off"] / m["flower"] for m in sets]
        cost = [m["hepafed"] / m["trust_off"] for m in sets]
        out.update(
            trust_off_round_s=spread(rounds["trust_off"]),
            trust_off_ratios=off_ratios,
            trust_off_ratio=statistics.median(off_ratios),
            trust_off_ratio_spread=spread(off_ratios),
            trust_cost_ratio=statistics.median(cost),
            trust_cost_spread=spread(cost),
            trust_off_phases_s=_medians(phases["trust_off"]),
        )
    return out
