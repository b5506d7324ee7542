"""A deployed round against a simulated one: the same sites, model, data and rounds.

The deployment is real (``simulations.loopback``): a SuperLink and one SuperNode per
site on 127.0.0.1, TLS and site authentication on, the site executor checking the app
bundle and forking each task from its warm process, updates signed. It is started once;
then runs are paired and interleaved with the same run in Flower's simulation engine
(deployed then simulated, simulated then deployed, ...), so a machine that slows down
slows both sides of a pair alike. Both are timed by hepafed's own round records
(``rounds.jsonl``: ``seconds`` and ``phase_seconds``), the first round of each run left
out (it starts the simulation's workers); the ratio is the median of the pairs' ratios
of median rounds, with its spread. The sites' executors log each task's wall time, from
the token acquired to the process gone: the per-message cost a hospital pays.
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common.keys import RecordPhase
from simulations.bench_measure import spread

TASK_DONE = re.compile(r"task done in ([0-9.]+) s, exit code 0")


def _flat_overrides(cfg: Any) -> dict[str, Any]:
    """The keys of ``cfg`` that differ from the app's defaults: what a deployed run is
    submitted with (``data.site-root`` is the simulation's: a SuperNode has its folder)."""
    from common.config import RunConfig

    defaults = RunConfig().to_flat()
    return {
        k: v
        for k, v in cfg.to_flat().items()
        if defaults.get(k) != v and k not in ("data.site-root", "output.run-dir")
    }


def _train_rounds(run_dir: Path) -> list[dict[str, Any]]:
    from server.records import read_rounds

    return [e for e in read_rounds(run_dir) if e.get("phase") == RecordPhase.TRAIN]


def _medians(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: statistics.median(row.get(k, 0.0) for row in rows) for k in keys}


def _task_seconds(logs: list[str]) -> list[float]:
    return [float(m) for text in logs for m in TASK_DONE.findall(text)]


def deploy_round(cfg: Any, phantom_dir: Path, sites: list[str], repeats: int) -> dict[str, Any]:
    """``repeats`` pairs of a deployed and a simulated run of ``cfg`` on ``sites`` (site
    folders under ``phantom_dir``), interleaved; per-round times, phases and their ratio."""
    from simulations.federated import run_federated
    from simulations.loopback import LoopbackFederation

    cfg = cfg.replace({"eval.every-round": False, "federation.expected-sites": len(sites),
                       "federation.external-sites": ""})  # fmt: skip
    overrides = _flat_overrides(cfg)
    sides: dict[str, dict[str, list[Any]]] = {
        side: {"rounds": [], "phases": [], "wall": []} for side in ("deployed", "simulated")
    }
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="hepafed-deploy-") as tmp:
        root = Path(tmp)
        site_root = root / "sites"  # the simulation sees exactly the deployed sites
        site_root.mkdir()
        for name in sites:
            (site_root / name).symlink_to((phantom_dir / name).resolve())
        started = time.monotonic()
        with LoopbackFederation(root / "loopback", {n: phantom_dir / n for n in sites}) as fed:
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

            def _record(side: str, run_dir: Path, wall: float) -> float:
                rounds = _train_rounds(run_dir)[1:]
                sides[side]["rounds"] += [e["seconds"] for e in rounds]
                sides[side]["phases"] += [e.get("phase_seconds", {}) for e in rounds]
                sides[side]["wall"].append(wall)
                return statistics.median(e["seconds"] for e in rounds)

            for pair in range(repeats):
                if pair % 2 == 0:
                    a, b = deployed(pair), simulated(pair)
                else:
                    b, a = simulated(pair), deployed(pair)
                ratios.append(a / b)
            tasks = _task_seconds([fed.processes.log(n) for n in sites])
    return {
        "sites": len(sites),
        "rounds_per_run": cfg.federation.num_rounds,
        "runs": repeats,
        "setup_s": setup_s,
        "deployed_round_s": spread(sides["deployed"]["rounds"]),
        "simulated_round_s": spread(sides["simulated"]["rounds"]),
        "deployed_run_s": spread(sides["deployed"]["wall"]),
        "simulated_run_s": spread(sides["simulated"]["wall"]),
        "task_s": spread(tasks) if tasks else {},
        "tasks": len(tasks),
        "pair_ratios": ratios,
        "ratio_spread": spread(ratios),
        "ratio": statistics.median(ratios),
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
        return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})" if s else "not measured"

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
        f"- deployed round: {fmt(r['deployed_round_s'])} s",
        f"- simulated round: {fmt(r['simulated_round_s'])} s",
        f"- ratio: {r['ratio']:.3f} ({r['ratio_spread']['min']:.3f}-"
        f"{r['ratio_spread']['max']:.3f}), the median of the pairs' ratios",
        f"- whole run, submitted to finished: deployed {fmt(r['deployed_run_s'])} s, "
        f"simulated {fmt(r['simulated_run_s'])} s",
        f"- one task at a site (token acquired to process gone, {r['tasks']} tasks): "
        f"{fmt(r['task_s'])} s",
    ]
    ours, theirs = r.get("deployed_phases_s") or {}, r.get("simulated_phases_s") or {}
    if ours or theirs:
        lines += ["", "| phase (median s) | deployed | simulated |", "|---|---|---|"]
        for phase in dict.fromkeys([*ours, *theirs]):
            a, b = ours.get(phase), theirs.get(phase)
            lines.append(
                f"| {phase} | {'' if a is None else f'{a:.3f}'} | "
                f"{'' if b is None else f'{b:.3f}'} |"
            )
    return lines
