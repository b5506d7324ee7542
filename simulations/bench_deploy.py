"""A deployed round against a simulated one and against stock Flower deployed.

The deployment is real (``simulations.loopback``): a SuperLink and one SuperNode per
site on 127.0.0.1, TLS and site authentication on, the site executor checking the app
bundle and forking each task from its warm process, updates signed. Beside it runs stock
Flower's own deployment of a plain FedAvg app on the same sites
(``simulations.stock_deploy``). Both are started once; then sets of three runs (hepafed
deployed, the same run in Flower's simulation engine, stock deployed) are interleaved
with the order rotating, so a machine that slows down slows every side of a set alike.
hepafed is timed by its own round records (``rounds.jsonl``: ``seconds`` and
``phase_seconds``), stock Flower by its ServerApp around each round; the first round of
each run is left out (it starts the simulation's workers and reads the sites' data). Each
ratio is the median of the sets' ratios of median rounds, with its spread. The sites'
executors log each task's wall time, from the token acquired to the process gone: the
per-message cost a hospital pays.
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common.keys import RecordPhase
from simulations.bench_measure import fmt_spread, spread

SIDES = ("deployed", "simulated", "stock")  # hepafed deployed and simulated, stock deployed
TASK_DONE = re.compile(r"task done in ([0-9.]+) s, exit code 0")
TASK_PHASES = re.compile(r"task phases: (.*)")
PHASE = re.compile(r"([a-z]+) ([0-9.]+) s")
SUPERNODE_PULL = re.compile(  # client.supernode.log_object_pulls, one line per message
    r"Pulled (\d+) objects from the SuperLink in ([0-9.]+) s \((\d+) requests, (\d+) bytes\)"
)


def flat_overrides(cfg: Any) -> dict[str, Any]:
    """The keys of ``cfg`` that differ from the app's defaults: what a deployed run is
    submitted with (``data.site-root`` is the simulation's: a SuperNode has its folder)."""
    from common.config import RunConfig

    defaults = RunConfig().to_flat()
    return {
        k: v
        for k, v in cfg.to_flat().items()
        if defaults.get(k) != v and k not in ("data.site-root", "output.run-dir")
    }


def train_rounds(run_dir: Path) -> list[dict[str, Any]]:
    from server.records import read_rounds

    return [e for e in read_rounds(run_dir) if e.get("phase") == RecordPhase.TRAIN]


def _medians(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: statistics.median(row.get(k, 0.0) for row in rows) for k in keys}


def _task_seconds(logs: list[str]) -> list[float]:
    return [float(m) for text in logs for m in TASK_DONE.findall(text)]


def _task_phases(logs: list[str]) -> dict[str, float]:
    """The median seconds of each phase of a task (``client.task_phases.TaskPhases``), over
    every task the executors logged."""
    rows = [{name: float(x) for name, x in PHASE.findall(line)}
            for text in logs for line in TASK_PHASES.findall(text)]  # fmt: skip
    names = list(dict.fromkeys(k for row in rows for k in row))
    # over the tasks that had the phase (a refused bundle has no load or app)
    return {k: statistics.median(row[k] for row in rows if k in row) for k in names}


def _supernode_pulls(logs: list[str]) -> dict[str, Any]:
    """The SuperNodes' pulls of a message's objects from the SuperLink: seconds, objects
    and requests per message (medians), and how many messages; {} if none was logged."""
    pulls = [(int(n), float(t), int(r)) for text in logs for n, t, r, _ in
             SUPERNODE_PULL.findall(text)]  # fmt: skip
    if not pulls:
        return {}
    return {
        "messages": len(pulls),
        "seconds": spread(t for _, t, _ in pulls),
        "objects": statistics.median(n for n, _, _ in pulls),
        "requests": statistics.median(r for _, _, r in pulls),
    }


def deploy_round(cfg: Any, phantom_dir: Path, sites: list[str], repeats: int) -> dict[str, Any]:
    """``repeats`` sets of runs of ``cfg`` on ``sites`` (site folders under ``phantom_dir``):
    hepafed deployed, hepafed simulated and stock Flower deployed (``simulations.stock_deploy``),
    interleaved with the order rotating; per-round times, phases, and the ratios of
    hepafed's deployed round to its simulated one and to stock Flower's deployed one."""
    from simulations.federated import run_federated
    from simulations.loopback import LoopbackFederation
    from simulations.stock_deploy import StockFederation

    cfg = cfg.replace({"eval.every-round": False, "federation.expected-sites": len(sites),
                       "federation.external-sites": ""})  # fmt: skip
    overrides = flat_overrides(cfg)
    sides: dict[str, dict[str, list[Any]]] = {
        side: {"rounds": [], "phases": [], "wall": []} for side in SIDES
    }
    ratios: list[float] = []
    stock_ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="hepafed-deploy-") as tmp:
        root = Path(tmp)
        site_root = root / "sites"  # the simulation sees exactly the deployed sites
        site_root.mkdir()
        for name in sites:
            (site_root / name).symlink_to((phantom_dir / name).resolve())
        started = time.monotonic()
        # absolute: a SuperNode's task runs elsewhere than this process (the stock one
        # resolves a relative site-dir against its own working folder)
        folders = {n: (phantom_dir / n).resolve() for n in sites}
        with (
            LoopbackFederation(root / "loopback", folders) as fed,
            StockFederation(root / "stock", folders, fed.threads) as stock_fed,
        ):
            setup_s = time.monotonic() - started

            def deployed(i: int) -> float:
                t = time.monotonic()
                run_dir = fed.run({**overrides, "output.run-dir": str(root / f"deployed-{i}")})
                return _record("deployed", run_dir, time.monotonic() - t)

            def simulated(i: int) -> float:
                t = time.monotonic()
                run_dir = root / f"simulated-{i}"
                run_federated(cfg.replace({"data.site-root": str(site_root),
                                           "output.run-dir": str(run_dir)}))  # fmt: skip
                return _record("simulated", run_dir, time.monotonic() - t)

            def stock(i: int) -> float:
                t = time.monotonic()
                run_dir = root / f"stock-{i}"
                timed = stock_fed.run({**overrides, "output.run-dir": str(run_dir)})
                pairs = zip(timed["seconds"], timed["phases"], strict=True)
                rounds = [{"seconds": x, "phase_seconds": p} for x, p in pairs][1:]
                return _keep("stock", rounds, time.monotonic() - t)

            def _record(side: str, run_dir: Path, wall: float) -> float:
                return _keep(side, train_rounds(run_dir)[1:], wall)

            def _keep(side: str, rounds: list[dict[str, Any]], wall: float) -> float:
                sides[side]["rounds"] += [e["seconds"] for e in rounds]
                sides[side]["phases"] += [e.get("phase_seconds", {}) for e in rounds]
                sides[side]["wall"].append(wall)
                return statistics.median(e["seconds"] for e in rounds)

            orders = [(deployed, simulated, stock), (stock, simulated, deployed),
                      (simulated, deployed, stock), (stock, deployed, simulated)]  # fmt: skip
            for i in range(repeats):  # each run's median round, by side
                got = {run.__name__: run(i) for run in orders[i % len(orders)]}
                ratios.append(got["deployed"] / got["simulated"])
                stock_ratios.append(got["deployed"] / got["stock"])
            site_logs = [fed.processes.log(n) for n in sites]
            tasks, task_phases = _task_seconds(site_logs), _task_phases(site_logs)
            supernode_pulls = _supernode_pulls(site_logs)
            threads = fed.threads
    return {
        "sites": len(sites),
        "rounds_per_run": cfg.federation.num_rounds,
        "runs": repeats,
        "setup_s": setup_s,
        "threads_per_site": threads,
        "deployed_round_s": spread(sides["deployed"]["rounds"]),
        "simulated_round_s": spread(sides["simulated"]["rounds"]),
        "deployed_run_s": spread(sides["deployed"]["wall"]),
        "simulated_run_s": spread(sides["simulated"]["wall"]),
        "task_s": spread(tasks) if tasks else {},
        "tasks": len(tasks),
        "task_phases_s": task_phases,
        "supernode_pulls": supernode_pulls,
        "pair_ratios": ratios,
        "ratio_spread": spread(ratios),
        "ratio": statistics.median(ratios),
        "stock_round_s": spread(sides["stock"]["rounds"]),
        "stock_run_s": spread(sides["stock"]["wall"]),
        "stock_pair_ratios": stock_ratios,
        "stock_ratio_spread": spread(stock_ratios),
        "stock_ratio": statistics.median(stock_ratios),
        "stock_phases_s": _medians(sides["stock"]["phases"]),
        "deployed_phases_s": _medians(sides["deployed"]["phases"]),
        "simulated_phases_s": _medians(sides["simulated"]["phases"]),
    }


DEPLOY_TARGET = "deployed round <= 1.2 x simulated round, same work"


def deploy_target(r: dict[str, Any]) -> dict[str, Any]:
    """The deployed-round target's row: the median of the pairs' ratios."""
    return {
        "target": DEPLOY_TARGET,
        "value": f"{r['ratio']:.3f} x ({r['ratio_spread']['min']:.3f}-"
        f"{r['ratio_spread']['max']:.3f}, {r['runs']} pairs)",
        "met": r["ratio"] <= 1.2,
    }


def deploy_markdown(r: dict[str, Any]) -> list[str]:
    """The deployed-round section of bench.md."""

    def fmt(s: dict[str, float]) -> str:
        return fmt_spread(s) if s else "not measured"

    lines = [
        "",
        "## A deployed round against a simulated one",
        "",
        f"{r['sites']} sites on a real loopback deployment (SuperLink, one SuperNode per site, "
        "TLS, site authentication, signed updates, the site executor checking the app bundle "
        "and forking each task from its warm process) against Flower's simulation engine, "
        f"same sites, config and {r['rounds_per_run']} rounds; {r['runs']} paired, interleaved "
        "runs (the order alternating), the first round of each run left out; hepafed's round "
        f"records time both sides. Setting the deployment up (certificates, keys, SuperLink, "
        f"registration, SuperNodes online) took {r['setup_s']:.0f} s, once.",
        "",
        "The model and the updates cross the SuperLink as one packed array per record "
        "(`common.packing`). The sites share this machine's cores, as hospitals on their "
        f"own machines do not: each site's tasks use {r.get('threads_per_site', 'all')} "
        "torch thread(s) (`hepafed site start --threads`, the cores divided among the "
        "sites); the simulation runs one site per core, one thread each (Ray's default). "
        "Stock Flower deployed (`simulations.stock_deploy`): `flower-superlink` and "
        "`flower-supernode` as shipped, insecure, a fresh `flwr-clientapp` process per "
        "message, a FedAvg ServerApp body and a ClientApp with a plain PyTorch loop on the "
        "same sites, data pipeline, model and config, the same torch threads per site.",
        "",
        f"- deployed round: {fmt(r['deployed_round_s'])} s",
        f"- simulated round: {fmt(r['simulated_round_s'])} s",
        f"- ratio: {r['ratio']:.3f} ({r['ratio_spread']['min']:.3f}-"
        f"{r['ratio_spread']['max']:.3f}), the median of the pairs' ratios",
        f"- whole run, submitted to finished: deployed {fmt(r['deployed_run_s'])} s, "
        f"simulated {fmt(r['simulated_run_s'])} s",
        f"- one task at a site (token acquired to process gone, {r['tasks']} tasks): "
        f"{fmt(r['task_s'])} s",
    ]
    if r.get("stock_round_s"):
        lines[-2:-2] = [
            f"- stock Flower deployed round: {fmt(r['stock_round_s'])} s; hepafed deployed "
            f"against it: {r['stock_ratio']:.3f} ({r['stock_ratio_spread']['min']:.3f}-"
            f"{r['stock_ratio_spread']['max']:.3f}), the median of the sets' ratios; its "
            f"whole run {fmt(r['stock_run_s'])} s",
        ]
    if r.get("task_phases_s"):
        phases = ", ".join(f"{k} {v:.3f}" for k, v in r["task_phases_s"].items())
        lines.append(
            f"- where a task's time goes (median s over the tasks; `client.task_phases."
            f"TaskPhases`): {phases}"
        )
    pulls = r.get("supernode_pulls")
    if pulls:
        lines.append(
            f"- a SuperNode's pull of a message's objects from the SuperLink "
            f"(`client.supernode`, {pulls['messages']} messages; a task's `message` phase "
            f"waits for it): {fmt(pulls['seconds'])} s for {pulls['objects']:.0f} objects "
            f"in {pulls['requests']:.0f} requests (medians)"
        )
    columns = [r.get(f"{side}_phases_s") or {} for side in SIDES]
    if any(columns):
        lines += ["", "| phase (median s) | hepafed deployed | hepafed simulated | stock "
                  "deployed |", "|---|---|---|---|"]  # fmt: skip
        for phase in dict.fromkeys(p for c in columns for p in c):
            cells = ["" if c.get(phase) is None else f"{c[phase]:.3f}" for c in columns]
            lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    return lines
