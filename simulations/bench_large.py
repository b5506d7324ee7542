"""A ~100M-parameter model through a real deployment, compression off and on.

The deployment is ``simulations.loopback``'s: a SuperLink and one SuperNode per site on
127.0.0.1, TLS, site authentication and signed updates as shipped. The network is the
configured one (the task's default when ``model.name`` is empty) at the ``model.width``
that gives about ``TARGET_PARAMS`` parameters (``width_for``: convolution weights grow
with the width squared, so three small widths fix the count exactly and the width is
solved for, then checked by building the model). One federation is started; each
``federation.compression`` setting is one run on it, one round of one local epoch.

While a run goes a background thread samples, every ``SAMPLE_S`` seconds, the resident
set (``VmRSS``) of every process under the SuperLink and under each SuperNode, summed by
role: the ServerApp (a process whose command line holds ``flwr-serverapp``, and its
children), the rest of the SuperLink's tree (SuperLink, its executor, the gateway), and
each SuperNode with its executor and tasks. A sum of RSS counts pages a forked task
shares with its parent twice. Sampling misses peaks shorter than the interval; the
largest ``VmHWM`` (the kernel's high-water mark) of a single process of each role is
recorded beside it, and for the one ServerApp process that is its true peak up to the
last sample. Per run: wall time, each training round's ``seconds`` from ``rounds.jsonl``,
the bytes a round puts on the wire (computed from the count of shared values), and
whether the run completed.
"""

from __future__ import annotations

import csv
import math
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from common.keys import Compression
from simulations.proc_memory import (
    SAMPLE_S,
    SERVERAPP,
    SUPERLINK,
    RssSampler,
    executor_alive,
    read_proc_table,
)

TARGET_PARAMS = 110_000_000
PARAM_RANGE = (90_000_000, 130_000_000)
FIT_WIDTHS = (8, 16, 24)  # three widths fix a count quadratic in the width
WIDTH_STEP = 8  # widths are multiples of the GroupNorm group count
MB = 1e6
LARGE_SETTINGS: dict[str, Any] = {
    # a reply Flower drops (a ClientApp it declared unresponsive) is waited for this long,
    # not the default hour; a round takes about 3 minutes on two cores
    "federation.round-timeout-s": 900,
    "federation.num-rounds": 1,
    "train.local-epochs": 1,
    "eval.every-round": False,
    "federation.external-sites": "",
}
# bytes per value of what a site sends back: float32 weights, or the encoded update
# (int8: the codes and one float32 scale per block of 1024 values)
UPDATE_BYTES_PER_VALUE = {
    Compression.NONE.value: 4.0,
    Compression.FP16.value: 2.0,
    Compression.INT8.value: 1.0 + 4 / 1024,
}
LARGE_TARGET = (
    "100M-parameter model through a real deployment: completes, ServerApp peak <= 3 x model size"
)


class LargeModelError(ValueError):
    """No width of the configured network gives a parameter count in ``PARAM_RANGE``."""


# ---- the model ------------------------------------------------------------------------------


def param_count(cfg: Any) -> int:
    """Parameters of ``cfg``'s network."""
    from common.models import build_model

    return sum(p.numel() for p in build_model(cfg).parameters())


def width_for(
    cfg: Any, target: int = TARGET_PARAMS, count: Callable[[Any], int] = param_count
) -> int:
    """The ``model.width`` (a multiple of ``WIDTH_STEP``) whose network has about ``target``
    parameters: the count at ``FIT_WIDTHS`` fixes ``a w^2 + b w + c``, solved for the
    target; raises ``LargeModelError`` when the count at that width is not in
    ``PARAM_RANGE``."""
    ws = FIT_WIDTHS
    ns = [count(cfg.replace({"model.width": w})) for w in ws]
    # Newton's divided differences through the three points
    d1 = (ns[1] - ns[0]) / (ws[1] - ws[0])
    d2 = (ns[2] - ns[1]) / (ws[2] - ws[1])
    a = (d2 - d1) / (ws[2] - ws[0])
    b = d1 - a * (ws[0] + ws[1])
    c = ns[0] - a * ws[0] ** 2 - b * ws[0]
    if a > 0:
        w = (-b + math.sqrt(b * b - 4 * a * (c - target))) / (2 * a)
    elif b > 0:
        w = (target - c) / b
    else:
        raise LargeModelError("the network's parameter count does not grow with model.width")
    width = max(WIDTH_STEP, WIDTH_STEP * round(w / WIDTH_STEP))
    n = count(cfg.replace({"model.width": width}))
    if not PARAM_RANGE[0] <= n <= PARAM_RANGE[1]:
        raise LargeModelError(
            f"model.width = {width} gives {n} parameters, not {PARAM_RANGE[0]}-{PARAM_RANGE[1]}"
        )
    return width


def wire_bytes(params: int, compression: str, sites: int) -> dict[str, int]:
    """Bytes one training round puts on the wire for a model of ``params`` float32 values:
    the global model to each site, each site's update back, and all of it (payload only:
    no message headers, signatures or TLS)."""
    to_site = 4 * params
    from_site = math.ceil(params * UPDATE_BYTES_PER_VALUE[str(compression)])
    return {
        "to_each_site": to_site,
        "from_each_site": from_site,
        "per_round": sites * (to_site + from_site),
    }


# ---- the section ---------------------------------------------------------------------------


def train_cases(site_dir: Path) -> int:
    """Cases of the train split in a site's ``manifest.csv``."""
    with (site_dir / "manifest.csv").open(newline="") as fh:
        return sum(row.get("split") == "train" for row in csv.DictReader(fh))


def _mb(kb: int) -> float:
    return kb * 1024 / MB


def _run_figures(
    rounds: list[dict[str, Any]], images: int, sampler: RssSampler, model_bytes: int
) -> dict[str, Any]:
    """A run's training rounds and what the sampler saw, in MB and x model bytes."""
    round_s = [float(e["seconds"]) for e in rounds]
    peak_mb = {role: _mb(kb) for role, kb in sampler.peak_kb.items()}
    return {
        "round_s": round_s,
        "phase_seconds": [e.get("phase_seconds", {}) for e in rounds],
        "images_per_s": images / sum(round_s) if sum(round_s) > 0 else 0.0,
        "peak_mb": peak_mb,
        "peak_x_model": {role: mb * MB / model_bytes for role, mb in peak_mb.items()},
        "hwm_mb": {role: _mb(kb) for role, kb in sampler.hwm_kb.items()},
        "idle_mb": {role: _mb(kb) for role, kb in sampler.first_kb.items()},
        "machine_used_peak_mb": _mb(sampler.machine_peak_kb),
        "samples": sampler.samples,
        "server_memory_mb": [e.get("server_memory_mb", {}) for e in rounds],
    }


def above_runtime_x(run: dict[str, Any], model_bytes: int) -> float | None:
    """The ServerApp's peak above its own runtime, over the model's bytes: the high-water
    mark its last training round recorded less the process's memory before it built any
    model (``server_memory_mb``); None when the round records do not say."""
    memory = run.get("server_memory_mb") or [{}]
    start, peak = memory[-1].get("at_start"), memory[-1].get("peak")
    if start is None or peak is None:
        return None
    return (float(peak) - float(start)) * MB / model_bytes


def large_model(
    cfg: Any,
    phantom_dir: Path,
    sites: list[str],
    compressions: Sequence[str] = ("none", "int8"),
    run_timeout_s: float = 3600,
    on_run: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """One run per compression of a ~100M-parameter ``cfg`` network on a loopback
    deployment of ``sites`` (site folders under ``phantom_dir``): times, bytes on the wire
    and each process role's peak RSS (``on_run`` gets each run's figures as they come).

    The deployment is started once. When a run leaves the SuperLink without its executor
    (``flower-superexec``, which starts each run's ServerApp), the next run would never
    start, so it gets a fresh deployment; each run records which one it ran on."""
    import tempfile

    from common.models import build_model, model_name
    from common.weights import shared_state
    from simulations.bench_deploy import flat_overrides, train_rounds
    from simulations.loopback import DeploymentError, LoopbackFederation

    cfg = cfg.replace({**LARGE_SETTINGS, "federation.expected-sites": len(sites)})
    width = width_for(cfg)
    cfg = cfg.replace({"model.width": width})
    model = build_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    state_values = sum(v.numel() for v in shared_state(model).values())
    del model
    model_bytes = 4 * params
    cases = {name: train_cases(phantom_dir / name) for name in sites}
    runs: list[dict[str, Any]] = []
    setup_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="hepafed-large-") as tmp, ExitStack() as stack:
        root = Path(tmp)

        def deploy() -> LoopbackFederation:
            started = time.monotonic()
            folder = root / f"loopback-{len(setup_s) + 1}"
            fed = LoopbackFederation(folder, {n: phantom_dir / n for n in sites})
            stack.enter_context(fed)
            setup_s.append(time.monotonic() - started)
            return fed

        fed = deploy()
        for compression in compressions:
            if runs and not runs[-1]["executor_alive"]:
                fed.processes.stop_all()  # the SuperLink runs no ServerApp without it
                fed = deploy()
            link = fed.processes.procs[SUPERLINK].pid
            nodes = {n: fed.processes.procs[n].pid for n in sites}
            run_cfg = cfg.replace({"federation.compression": compression})
            run_dir = root / f"run-{compression}"
            overrides = {**flat_overrides(run_cfg), "output.run-dir": str(run_dir)}
            error = ""
            t = time.monotonic()
            with RssSampler(link, nodes) as sampler:
                try:
                    fed.run(overrides, timeout=run_timeout_s)
                except DeploymentError as exc:
                    error = str(exc)[-4000:]
                except subprocess.TimeoutExpired:
                    error = f"the run did not finish in {run_timeout_s:g} s"
            wall = time.monotonic() - t
            rounds = train_rounds(run_dir) if (run_dir / "rounds.jsonl").exists() else []
            if error:  # what the run's own records say failed comes first
                error = "; ".join([*_site_failures(run_dir), error])
            images = sum(cases.values()) * cfg.train.local_epochs * len(rounds)
            runs.append(
                {
                    "compression": str(compression),
                    "completed": not error,
                    "error": error,
                    "deployment": len(setup_s),
                    "executor_alive": executor_alive(read_proc_table([link])),
                    "wall_s": wall,
                    "wire_bytes": wire_bytes(state_values, compression, len(sites)),
                    **_run_figures(rounds, images, sampler, model_bytes),
                }
            )
            if on_run is not None:
                on_run(runs[-1])
    return {
        "network": model_name(cfg),
        "width": width,
        "params": params,
        "state_values": state_values,
        "model_bytes": model_bytes,
        "sites": sites,
        "train_cases": cases,
        "rounds_per_run": cfg.federation.num_rounds,
        "local_epochs": cfg.train.local_epochs,
        "batch_size": cfg.train.batch_size,
        "roi_size": cfg.data.roi_size,
        "setup_s": setup_s,
        "sample_s": SAMPLE_S,
        "runs": runs,
    }


def _site_failures(run_dir: Path) -> list[str]:
    """``phase: site: reason`` for every site a phase of the run recorded as failed."""
    from server.records import read_rounds

    if not (run_dir / "rounds.jsonl").exists():
        return []
    return [
        f"{e.get('phase')}: {site}: {reason}"
        for e in read_rounds(run_dir)
        for site, reason in (e.get("failed") or {}).items()
    ]


def large_target(r: dict[str, Any]) -> dict[str, Any]:
    """The large-model target's row: every run completed, the ServerApp's sampled peak
    within 3 x the model's float32 bytes in every run."""
    runs = r["runs"]
    done = sum(run["completed"] for run in runs)
    peaks = ", ".join(
        f"{run['compression']} {run['peak_x_model'].get(SERVERAPP, 0.0):.2f} x"
        + ("" if (x := above_runtime_x(run, r["model_bytes"])) is None else
           f" ({x:.2f} x above its runtime)")
        for run in runs
    )  # fmt: skip
    return {
        "target": LARGE_TARGET,
        "value": f"{r['params'] / 1e6:.1f}M parameters, {done} of {len(runs)} runs completed; "
        f"ServerApp peak {peaks}",
        "met": bool(runs)
        and done == len(runs)
        and all(run["peak_x_model"].get(SERVERAPP, math.inf) <= 3.0 for run in runs),
    }


def _role_name(role: str) -> str:
    return {SERVERAPP: "ServerApp", SUPERLINK: "SuperLink (and its executor, gateway)"}.get(
        role, f"SuperNode {role} (and its tasks)"
    )


def large_markdown(r: dict[str, Any]) -> list[str]:
    """The large-model section of bench.md."""
    cases = ", ".join(f"{n} {c}" for n, c in r["train_cases"].items())
    lines = [
        "",
        "## A 100M-parameter model through a real deployment",
        "",
        f"{r['network']} at model.width = {r['width']}: {r['params']:,} parameters, "
        f"{r['model_bytes'] / MB:.0f} MB as float32. A loopback deployment (SuperLink, "
        f"{len(r['sites'])} SuperNodes, TLS, site authentication, signed updates), set up "
        f"in {r['setup_s'][0]:.0f} s; one run per compression, {r['rounds_per_run']} rounds "
        f"of {r['local_epochs']} local epoch(s), batch size {r['batch_size']}, crops of "
        f"{r['roi_size']} px; train cases per site: {cases}. Resident memory is summed over "
        f"each role's processes, sampled every {r['sample_s']:g} s (a shorter peak is missed); "
        "x model is the peak over the model's float32 bytes. Bytes on the wire are computed "
        "from the count of shared values (parameters and BatchNorm statistics; payload "
        "only, no headers, signatures or TLS). The SuperLink holds the messages in flight "
        "in memory (`server.superlink`). The ServerApp pulls the replies one at a time, "
        "joins each one's chunks into one copy, dropping each chunk as it is copied, and "
        "collects the HTTP client's dead responses every 32 MiB (`server.pull`), folds a "
        "reply that arrived before its turn from disk 16 MiB at a time "
        "(`server.folding`), hands freed buffers back to the system at once "
        "(`common.malloc`), and checkpoints from views of the model's bytes; a deployed "
        "site keeps its compression residual in its state folder (`client.memory`); a "
        "reply Flower drops is waited for "
        f"{LARGE_SETTINGS['federation.round-timeout-s']} s (`federation.round-timeout-s`).",
    ]
    for run in r["runs"]:
        wire = run["wire_bytes"]
        rounds = ", ".join(f"{s:.1f}" for s in run["round_s"])
        rounds = f"training rounds {rounds} s" if rounds else "no training round recorded"
        lines += [
            "",
            f"### compression = {run['compression']}",
            "",
            f"- completed: {'yes' if run['completed'] else '**no**'}; run (submitted to "
            f"finished) {run['wall_s']:.0f} s; {rounds} "
            f"({run['images_per_s']:.2f} images/s over all sites)",
            f"- on the wire per round: {wire['to_each_site'] / MB:.1f} MB to each site, "
            f"{wire['from_each_site'] / MB:.1f} MB from each site, "
            f"{wire['per_round'] / MB:.1f} MB in all",
            f"- machine memory in use, peak: {run['machine_used_peak_mb']:.0f} MB "
            f"({run['samples']} samples)",
            "",
            "| process | peak MB | x model | largest single-process VmHWM MB |",
            "|---|---|---|---|",
        ]
        for role, mb in run["peak_mb"].items():
            lines.append(
                f"| {_role_name(role)} | {mb:.0f} | {run['peak_x_model'][role]:.2f} | "
                f"{run['hwm_mb'].get(role, 0.0):.0f} |"
            )
        above = above_runtime_x(run, r["model_bytes"])
        if above is not None:
            memory = run["server_memory_mb"][-1]
            lines += [
                "",
                f"The ServerApp's own record of its last training round: "
                f"{memory['at_start']:.0f} MB resident before it built any model (Python, "
                f"torch, Flower: its runtime), a high-water mark of {memory['peak']:.0f} MB; "
                f"{above:.2f} x model above its runtime.",
            ]
        if run["deployment"] > 1:
            lines += [
                "",
                f"This run had a fresh deployment (set up in "
                f"{r['setup_s'][run['deployment'] - 1]:.0f} s): the run before it left the "
                "SuperLink without its executor (flower-superexec), which starts each ServerApp.",
            ]
        if run["error"]:
            last = run["error"].strip().splitlines()[0][:600]
            alive = "" if run["executor_alive"] else " The SuperLink's executor had exited."
            lines += ["", f"The run failed: `{last}`.{alive}"]
    return lines
