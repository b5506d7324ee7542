"""The ServerApp's cost of aggregating one round, against the machine's memory bandwidth.

``bandwidth``: GB/s of an in-place add of two arrays far larger than the caches,
NumPy ``a += b`` (one thread) and torch ``a.add_(b)`` (all threads): the access
pattern of aggregation, and the yardstick its throughput is judged against.

``aggregation``: one round of a synthetic model's updates from N sites, hepafed's
streaming aggregation (validation included) against stock Flower
(``FedAvg.aggregate_train`` over the list of replies ``Grid.send_and_receive``
returns): seconds and GB/s, the process's peak RSS above what it held before the
round, and (in a separate traced run) the peak of live memory from ``tracemalloc``.
hepafed takes every update's norm, as a round does (``server.rounds``; the copies the
norm-outlier rule keeps on disk are measured in ``one_pass``); its rows also give
``fold_gbps``, the update bytes folded per second by the aggregator alone (the
one-pass fold of ``server.folding``: check, norm and add), without screening.
Each case runs in a fresh process, so no case sees another's memory.

``one_pass``: the fold's GB/s as a fraction of the measured memory bandwidth, and the
peak memory in model sizes, at 20 and 100 sites, and at 20 with the norm-outlier rule on
(``python -m simulations.bench_aggregation``; about a minute on two idle cores).
"""

from __future__ import annotations

import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from simulations.bench_measure import GB, in_fresh_process, reset_peak_rss, rss_bytes, spread

SITE_COUNTS = (5, 20, 50, 100)
MODULE = "simulations.bench_aggregation"  # what fresh processes import, also under ``-m``
MODEL_PARAMS = 10_000_000


# ---- bandwidth ---------------------------------------------------------------------------


def bandwidth(n_bytes: int, repeats: int) -> dict[str, Any]:
    """GB/s of the second operand of an in-place add (the same access pattern as
    aggregation: read a, read b, write a)."""
    import torch

    n = n_bytes // 4
    a = np.ones(n, np.float32)
    b = np.full(n, 1e-6, np.float32)
    a += b  # touch every page first
    numpy_runs, torch_runs = [], []
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    for _ in range(repeats):
        t = time.perf_counter()
        a += b
        numpy_runs.append(n * 4 / (time.perf_counter() - t) / GB)
        t = time.perf_counter()
        ta.add_(tb, alpha=0.5)
        torch_runs.append(n * 4 / (time.perf_counter() - t) / GB)
    return {
        "array_mb": n * 4 / 1e6,
        "numpy_add_gbps": spread(numpy_runs),
        "torch_add_gbps": spread(torch_runs),
        "torch_threads": torch.get_num_threads(),
    }


# ---- aggregation: one round of N updates, in a fresh process per case ---------------------


def synthetic_model(params: int) -> OrderedDict[str, np.ndarray]:
    """~``params`` float32 values in 10 weight matrices and 10 bias vectors."""
    rng = np.random.default_rng(0)
    per = max((params // 10 - 64) // 64 * 64, 64)
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for i in range(10):
        out[f"layer{i}.weight"] = rng.standard_normal(per, dtype=np.float32).reshape(-1, 64)
        out[f"layer{i}.bias"] = rng.standard_normal(64, dtype=np.float32)
    return out


def aggregation_case(
    method: str, sites: int, params: int, trace: bool = False, norm_rule: bool = False
) -> dict[str, Any]:
    """Aggregate one round of ``sites`` replies (run in its own process).

    With ``trace`` the peak of live memory is measured with ``tracemalloc`` (it sees
    every NumPy buffer and bytes object; timings of a traced run are not used). With
    ``norm_rule`` hepafed keeps a copy of each folded update on disk until the round's
    norms are known, as a round does with ``trust.norm-z`` on and 3 sites or more."""
    import tracemalloc

    from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.task_identity import TaskIdentity

    from server.aggregation import RoundAggregator
    from server.validation import update_problem

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    model = synthetic_model(params)
    reference = ArrayRecord(OrderedDict((k, Array(v)) for k, v in model.items()))
    model_bytes = sum(v.nbytes for v in model.values())
    names = [f"site-{i:03d}" for i in range(sites)]
    sent = Message(RecordDict({"arrays": reference}), dst_node_id=1, message_type=MessageType.TRAIN)

    def reply(i: int) -> Message:
        """Site i's update as Flower delivers it: an ArrayRecord of .npy bytes."""
        arrays = ArrayRecord(
            OrderedDict((k, Array(v * np.float32(1 + 1e-3 * i))) for k, v in model.items())
        )
        metrics = MetricRecord({"num-examples": float(50 + i)})
        content = RecordDict({"arrays": arrays, "metrics": metrics})
        return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)

    seconds = fold = 0.0
    reset = reset_peak_rss()
    before = rss_bytes()
    if trace:
        tracemalloc.start()
    if method == "hepafed":
        with tempfile.TemporaryDirectory() as park:
            aggregator = RoundAggregator(
                FedAvg(), reference, names, park_root=Path(park), defer=norm_rule, track_norms=True
            )
            for i, name in enumerate(names):
                message = reply(i)  # arrives; building it is the network's cost, not timed
                t = time.perf_counter()
                if update_problem(message, reference, values=False) is not None:
                    raise RuntimeError("benchmark update rejected")
                screened = time.perf_counter()
                aggregator.accept(name, message)
                done = time.perf_counter()
                seconds += done - t
                fold += done - screened
                del message
            t = time.perf_counter()
            result = aggregator.result(1, [sent])
            seconds += time.perf_counter() - t
            fold += time.perf_counter() - t
    else:
        replies = [reply(i) for i in range(sites)]  # what Grid.send_and_receive returns
        t = time.perf_counter()
        result, _ = FedAvg().aggregate_train(1, replies)
        seconds = time.perf_counter() - t
    peak = rss_bytes("VmHWM") - before
    live = tracemalloc.get_traced_memory()[1] if trace else 0
    tracemalloc.stop()
    assert result is not None
    check = result["layer0.bias"].numpy()
    weights = np.array([50.0 + i for i in range(sites)])
    scale = float((weights * (1 + 1e-3 * np.arange(sites))).sum() / weights.sum())
    error = float(np.abs(check - model["layer0.bias"] * scale).max())
    return {
        "method": method,
        "norm_rule": norm_rule,
        "sites": sites,
        "params": sum(v.size for v in model.values()),
        "model_mb": model_bytes / 1e6,
        "seconds": seconds,
        "throughput_gbps": sites * model_bytes / seconds / GB,
        "fold_gbps": sites * model_bytes / fold / GB if fold else None,
        "rss_peak_mb": peak / 1e6,
        "rss_peak_x_model": peak / model_bytes,
        "rss_peak_measured": reset,
        "live_peak_mb": live / 1e6,
        "live_peak_x_model": live / model_bytes,
        "max_abs_error": error,
    }


def yardstick(n_bytes: int) -> float:
    """The memory bandwidth now: the larger of NumPy's and torch's in-place add (median of
    3), in a fresh process."""
    bw = in_fresh_process(MODULE, "bandwidth", n_bytes, 3)
    return float(max(bw["numpy_add_gbps"]["median"], bw["torch_add_gbps"]["median"]))


def aggregation(
    counts: Iterable[int], params: int, repeats: int, bandwidth_bytes: int = 512_000_000
) -> list[dict[str, Any]]:
    """One row per site count and method: timings over ``repeats`` fresh processes, their
    largest RSS peak, and the live peak of one more, traced, process.

    Each hepafed run is paired with the memory bandwidth measured just before it
    (``yardstick``, ``bandwidth_bytes`` per array): a shared machine's bandwidth moves
    between runs (9.4 GB/s one day here, 13.3 to 19.4 within one run the next), so a
    throughput is compared only
    with the bandwidth of its own moment; ``of_bandwidth`` is the spread of those per-run
    ratios."""
    rows = []
    for sites in counts:
        for method in ("hepafed", "flower"):
            runs = []
            for _ in range(repeats):
                bw = yardstick(bandwidth_bytes) if method == "hepafed" else None
                run = in_fresh_process(MODULE, "aggregation_case", method, sites, params)
                runs.append({**run, "bandwidth_gbps": bw})
            traced = in_fresh_process(MODULE, "aggregation_case", method, sites, params, True)
            timed = ("seconds", "throughput_gbps", "fold_gbps", "bandwidth_gbps")
            row = {k: v for k, v in runs[0].items() if k not in timed}
            row["seconds"] = spread(r["seconds"] for r in runs)
            row["throughput_gbps"] = spread(r["throughput_gbps"] for r in runs)
            if method == "hepafed":
                row["fold_gbps"] = spread(r["fold_gbps"] for r in runs)
                row["bandwidth_gbps"] = spread(r["bandwidth_gbps"] for r in runs)
                row["of_bandwidth"] = spread(
                    r["throughput_gbps"] / r["bandwidth_gbps"] for r in runs
                )
            row["rss_peak_x_model"] = max(r["rss_peak_x_model"] for r in runs)
            row["rss_peak_mb"] = max(r["rss_peak_mb"] for r in runs)
            row["live_peak_mb"] = traced["live_peak_mb"]
            row["live_peak_x_model"] = traced["live_peak_x_model"]
            rows.append(row)
    return rows


# ---- one_pass: the fold against the machine's memory bandwidth ---------------------------


def one_pass(
    counts: Iterable[int] = (20, 100),
    params: int = MODEL_PARAMS,
    repeats: int = 3,
    norm_rule_counts: Iterable[int] = (20,),
) -> dict[str, Any]:
    """The one-pass fold at ``counts`` sites: GB/s of update bytes folded (aggregator only)
    and with screening, each as a fraction of the memory bandwidth measured just before
    the run (``yardstick``; the median of each count's per-run ratios), and the peak memory in
    model sizes (live: tracemalloc; RSS: the process's high-water mark). At
    ``norm_rule_counts`` also with the norm-outlier rule on (a copy of every update
    written to disk as it is folded)."""
    cases = [(n, False) for n in counts] + [(n, True) for n in norm_rule_counts]
    rows, bandwidths = [], []
    for sites, rule in cases:
        args = ("hepafed", sites, params)
        runs = []
        for _ in range(repeats):
            bw = yardstick(512_000_000)
            bandwidths.append(bw)
            run = in_fresh_process(MODULE, "aggregation_case", *args, False, rule)
            runs.append({**run, "bandwidth_gbps": bw})
        traced = in_fresh_process(MODULE, "aggregation_case", *args, True, rule)
        rows.append(
            {
                "sites": sites,
                "norm_rule": rule,
                "fold_gbps": spread(r["fold_gbps"] for r in runs),
                "fold_of_bandwidth": spread(r["fold_gbps"] / r["bandwidth_gbps"] for r in runs),
                "with_screening_gbps": spread(r["throughput_gbps"] for r in runs),
                "with_screening_of_bandwidth": spread(
                    r["throughput_gbps"] / r["bandwidth_gbps"] for r in runs
                ),
                "live_peak_x_model": traced["live_peak_x_model"],
                "rss_peak_x_model": max(r["rss_peak_x_model"] for r in runs),
            }
        )
    return {"bandwidth_gbps": spread(bandwidths), "model_mb": runs[0]["model_mb"], "rows": rows}


def _print_one_pass(result: dict[str, Any]) -> None:
    bw = result["bandwidth_gbps"]
    print(f"memory bandwidth (in-place add, before each run): {bw['median']:.2f} "
          f"({bw['min']:.2f}-{bw['max']:.2f}) GB/s; model {result['model_mb']:.0f} MB")  # fmt: skip
    print("sites | norm rule | fold GB/s (min-max) | of bandwidth | with screening "
          "| peak live / RSS, x model")  # fmt: skip
    for r in result["rows"]:
        f, w = r["fold_gbps"], r["with_screening_gbps"]
        print(
            f"{r['sites']:5d} | {'on' if r['norm_rule'] else 'off':9s} | "
            f"{f['median']:5.2f} ({f['min']:.2f}-{f['max']:.2f}) | "
            f"{r['fold_of_bandwidth']['median']:12.0%} | {w['median']:5.2f} = "
            f"{r['with_screening_of_bandwidth']['median']:.0%} | "
            f"{r['live_peak_x_model']:.2f} / {r['rss_peak_x_model']:.2f}"
        )


if __name__ == "__main__":
    _print_one_pass(one_pass())
