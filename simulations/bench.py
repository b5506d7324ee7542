"""`hepafed bench`: what hepafed costs on top of Flower, and how it scales.

Every figure is measured on this machine in one run and written to
``OUT/bench.json`` and ``OUT/bench.md`` (default ``docs/results/``); timings
are medians over ``repeats`` runs, with min and max. Sections:

- ``bandwidth``: the machine's memory bandwidth, NumPy ``a += b`` (one thread)
  and torch ``a.add_(b)`` (all threads) on arrays far larger than the caches;
- ``aggregation``: aggregating one round of a synthetic ~10M-parameter model
  from 5, 20, 50 and 100 sites, hepafed's streaming aggregation (validation
  included) against stock Flower (``FedAvg.aggregate_train`` over the list of
  replies ``Grid.send_and_receive`` returns): seconds, throughput and the
  ServerApp's peak memory above what it held before the round (each case in a
  fresh process; peak from the kernel's high-water mark, reset first);
- ``client``: local training throughput (images/s) of hepafed's ``train_local``
  and of the whole ClientApp job (``site_train``: data from the cache, model,
  training), against a plain PyTorch loop on the same model, tensors and
  settings;
- ``bytes``: bytes of the update one site sends per round for the default
  model, with and without compression;
- ``round``: per-round wall time of hepafed against a stock Flower FedAvg
  ServerApp/ClientApp (plain PyTorch training loop) on the same sites, model,
  data and rounds, both in Flower's simulation engine;
- ``sites-100`` (full only): a federation of 100 simulated phantom sites,
  one round;
- ``simulate`` (full only): end-to-end ``hepafed simulate`` with its defaults,
  then again with ``fp16`` and ``int8`` update compression, and the AUC changes.

``--quick`` runs every section in a tiny configuration (the smoke test).
This is a benchmark, not a test: it reports figures against targets and never
fails on a missed one.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from common.keys import RecordPhase
from simulations.bench_report import BenchResult, evaluate_targets, markdown

GB = 1e9
SITE_COUNTS = (5, 20, 50, 100)
MODEL_PARAMS = 10_000_000


def spread(values: Iterable[float]) -> dict[str, float]:
    """Median, min and max (and the runs) of repeated measurements."""
    vals = sorted(float(v) for v in values)
    return {
        "median": statistics.median(vals),
        "min": vals[0],
        "max": vals[-1],
        "runs": len(vals),
    }


# ---- peak memory of this process ------------------------------------------------------------


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_bytes(field_name: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field_name} not in /proc/self/status")


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


def _aggregation_case(method: str, sites: int, params: int, trace: bool = False) -> dict[str, Any]:
    """Aggregate one round of ``sites`` replies (run in its own process).

    With ``trace`` the peak of live memory is measured with ``tracemalloc`` (it sees
    every NumPy buffer and bytes object; timings of a traced run are not used)."""
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

    seconds = 0.0
    reset = reset_peak_rss()
    before = rss_bytes()
    if trace:
        tracemalloc.start()
    if method == "hepafed":
        with tempfile.TemporaryDirectory() as park:
            aggregator = RoundAggregator(FedAvg(), reference, names, park_root=Path(park))
            for i, name in enumerate(names):
                message = reply(i)  # arrives; building it is the network's cost, not timed
                t = time.perf_counter()
                if update_problem(message, reference) is not None:
                    raise RuntimeError("benchmark update rejected")
                aggregator.accept(name, message)
                seconds += time.perf_counter() - t
                del message
            t = time.perf_counter()
            result = aggregator.result(1, [sent])
            seconds += time.perf_counter() - t
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
        "sites": sites,
        "params": sum(v.size for v in model.values()),
        "model_mb": model_bytes / 1e6,
        "seconds": seconds,
        "throughput_gbps": sites * model_bytes / seconds / GB,
        "rss_peak_mb": peak / 1e6,
        "rss_peak_x_model": peak / model_bytes,
        "rss_peak_measured": reset,
        "live_peak_mb": live / 1e6,
        "live_peak_x_model": live / model_bytes,
        "max_abs_error": error,
    }


def aggregation(counts: Iterable[int], params: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for sites in counts:
        for method in ("hepafed", "flower"):
            runs = [
                _in_subprocess("_aggregation_case", method, sites, params) for _ in range(repeats)
            ]
            traced = _in_subprocess("_aggregation_case", method, sites, params, True)
            row = {k: v for k, v in runs[0].items() if k not in ("seconds", "throughput_gbps")}
            row["seconds"] = spread(r["seconds"] for r in runs)
            row["throughput_gbps"] = spread(r["throughput_gbps"] for r in runs)
            row["rss_peak_x_model"] = max(r["rss_peak_x_model"] for r in runs)
            row["rss_peak_mb"] = max(r["rss_peak_mb"] for r in runs)
            row["live_peak_mb"] = traced["live_peak_mb"]
            row["live_peak_x_model"] = traced["live_peak_x_model"]
            rows.append(row)
    return rows


def _in_subprocess(function: str, *args: Any) -> Any:
    """Run ``function(*args)`` of this module in a fresh Python; its JSON result."""
    code = (
        "import json, sys; from simulations import bench; "
        f"print(json.dumps(bench.{function}(*json.loads(sys.argv[1]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)],
        check=False,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    if done.returncode:
        raise RuntimeError(f"bench.{function}{args} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- client training throughput ----------------------------------------------------------


def plain_train(model: Any, images: Any, masks: Any, labels: Any, cfg: Any, epochs: int) -> int:
    """A plain PyTorch training loop (what a Flower tutorial's ClientApp does): the images
    trained on."""
    import torch

    from common.tasks import loss_function, targets

    model.train()
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    criterion = loss_function(cfg.task)
    generator = torch.Generator().manual_seed(cfg.seed)
    bs, seen = cfg.train.batch_size, 0
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for lo in range(0, len(images), bs):
            idx = order[lo : lo + bs]
            if len(idx) < 2:
                continue
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(images[idx]), targets(cfg.task, labels[idx], masks[idx]))
            loss.backward()
            optimizer.step()
            seen += len(idx)
    return seen


def client_throughput(cfg: Any, site_dir: Path, repeats: int) -> dict[str, Any]:
    """images/s of a plain loop, of ``train_local`` and of the whole ``site_train`` job."""
    from client.site import open_site, site_train
    from client.trainer import train_local
    from common.device import select_compute
    from common.keys import Split
    from common.models import build_model
    from common.weights import to_arrays

    cfg = cfg.replace({"data.augment": False})  # the plain loop has no augmentation
    compute = select_compute(cfg.train.amp)
    site = open_site({"site-dir": str(site_dir)}, cfg)
    data = site.split(Split.TRAIN, cfg)  # warms the preprocessing cache
    epochs = cfg.train.local_epochs
    plain, loop, job = [], [], []
    plain_train(build_model(cfg), data.images, data.masks, data.labels, cfg, 1)  # warm-up
    for r in range(repeats):
        model = build_model(cfg)
        t = time.perf_counter()
        seen = plain_train(model, data.images, data.masks, data.labels, cfg, epochs)
        plain.append(seen / (time.perf_counter() - t))
        model = build_model(cfg)
        result = train_local(model, data, cfg, compute, seed=cfg.seed + r)
        loop.append(result.num_examples / result.seconds)
        t = time.perf_counter()
        site_train(site, to_arrays(build_model(cfg)), cfg, r + 1, compute)
        job.append(result.num_examples / (time.perf_counter() - t))
    return {
        "site": site.name,
        "cases": len(data),
        "epochs": epochs,
        "batch_size": cfg.train.batch_size,
        "augment": cfg.data.augment,
        "device": str(compute.device),
        "amp": compute.uses_amp,
        "plain_images_per_s": spread(plain),
        "train_local_images_per_s": spread(loop),
        "site_train_images_per_s": spread(job),
    }


# ---- bytes per round ------------------------------------------------------------------------


def update_bytes(cfg: Any) -> list[dict[str, Any]]:
    """Bytes of one site's update for the default model, per compression."""
    from flwr.app import Array

    from common.compression import compress_update, pack
    from common.keys import Compression
    from common.models import build_model
    from common.weights import shared_state

    received = {k: v.numpy() for k, v in shared_state(build_model(cfg)).items()}
    rng = np.random.default_rng(0)
    trained = {
        k: v + rng.normal(scale=1e-3, size=v.shape).astype(np.float32) for k, v in received.items()
    }
    plain = sum(len(Array(v).data) for v in trained.values())
    rows = [{"compression": "none", "bytes": plain, "ratio": 1.0}]
    for method in (Compression.FP16, Compression.INT8):
        codes, scales, _ = compress_update(trained, received, method)
        flat, flat_scales = pack(codes, scales, list(received))  # what the ClientApp sends
        n = len(Array(flat).data) + (0 if flat_scales is None else len(Array(flat_scales).data))
        rows.append({"compression": method.value, "bytes": n, "ratio": n / plain})
    return rows


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


def machine() -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


# ---- 100 simulated sites --------------------------------------------------------------------


def hundred_sites(cfg: Any, data_dir: Path, sites: int, cases: int) -> dict[str, Any]:
    """One round with ``sites`` small phantom hospitals in the simulation engine."""
    from server.records import read_rounds
    from simulations.federated import run_federated
    from simulations.phantom import generate_phantom
    from simulations.scenario import parse_scenario

    spec = parse_scenario(
        {
            "name": f"bench-{sites}",
            "description": f"{sites} small hospitals for the scaling benchmark",
            "seed": 7,
            "dims": 2,
            "defaults": {"test_fraction": 0.25, "prevalence": 0.5},
            "site": [{"name": f"site-{i:03d}", "n_cases": cases} for i in range(sites)],
        },
        "bench",
    )
    root = data_dir / "phantom" / spec.name
    generate_phantom(spec, root)
    with tempfile.TemporaryDirectory() as tmp:
        run = cfg.replace(
            {
                "data.site-root": str(root.resolve()),
                "data.cache-dir": str((data_dir / "cache" / spec.name).resolve()),
                "federation.expected-sites": sites,
                "federation.external-sites": "",
                "federation.num-rounds": 1,
                "federation.min-sites": 2,
                "eval.every-round": False,
                "eval.min-cases": 4,  # the smallest allowed: these sites have 2 test cases
                "output.run-dir": str(Path(tmp) / "run"),
            }
        )
        reset_peak_rss()
        t = time.monotonic()
        run_federated(run)
        run_s = time.monotonic() - t
        train = [e for e in read_rounds(Path(tmp) / "run") if e.get("phase") == RecordPhase.TRAIN]
    return {
        "sites": sites,
        "cases_per_site": cases,
        "sites_trained": len(train[0]["sites"]),
        "rejected": train[0]["rejected"],
        "round_s": train[0]["seconds"],
        "run_s": run_s,
        "server_peak_mb": rss_bytes("VmHWM") / 1e6,
    }


# ---- hepafed simulate end to end, with and without compression ----------------------------


def simulate_runs(data_dir: Path) -> dict[str, Any]:
    """`hepafed simulate` with defaults (timed end to end, in a fresh process), then with
    fp16 and int8 update compression; per-site federated AUCs and their changes."""
    runs: dict[str, Any] = {}
    for method in ("none", "fp16", "int8"):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            command = [sys.executable, "-c", "from common.cli import main; exit(main())"]
            command += ["simulate", "--out", str(out), "--data-dir", str(data_dir)]
            if method != "none":
                command += ["--run-config", f"federation.compression='{method}'"]
            t = time.monotonic()
            subprocess.run(command, check=True, capture_output=True, text=True)
            wall = time.monotonic() - t
            summary = json.loads((out / "summary.json").read_text())
        runs[method] = {
            "wall_s": wall,
            "federation_s": summary["seconds"]["federation"],
            "auc": {r["site"]: r["federated"]["auc"] for r in summary["rows"]},
        }
    sites = list(runs["none"]["auc"])
    change = {
        m: max(abs(runs[m]["auc"][s] - runs["none"]["auc"][s]) for s in sites)
        for m in ("fp16", "int8")
    }
    return {"sites": sites, "runs": runs, "max_abs_auc_change": change}


def _keep_earlier_sections(result: BenchResult, path: Path) -> None:
    """Sections not measured now but present in an earlier ``bench.json`` of the same kind
    (quick or full) and machine are kept, with the date they were measured."""
    if not path.exists():
        return
    try:
        earlier = json.loads(path.read_text())
        same = (
            earlier["settings"]["quick"] == result.settings["quick"]
            and earlier["settings"]["machine"]["cores"] == result.settings["machine"]["cores"]
        )
    except (ValueError, KeyError, TypeError):
        return
    if not same:
        return
    for name, figures in earlier.get("sections", {}).items():
        if name in SECTIONS and name not in result.sections:
            result.sections[name] = figures
            when = earlier["settings"].get("measured", {}).get(name, earlier["settings"]["date"])
            result.settings["measured"][name] = when


# ---- orchestration ------------------------------------------------------------------------

SECTIONS = ("bandwidth", "aggregation", "client", "bytes", "round", "sites-100", "simulate")
FULL_ONLY = ("sites-100", "simulate")

GPU_NOTE = (
    "No GPU was available for this run. On a CUDA machine, `hepafed bench --sections client` "
    "measures the same training throughput with AMP (bf16 where supported, else fp16) and "
    "`--run-config train.amp=false` in fp32; the device is named in the header."
)


def run_bench(
    out_dir: Path,
    quick: bool = False,
    repeats: int | None = None,
    sections: Iterable[str] = SECTIONS,
    data_dir: Path = Path("data"),
    overrides: dict[str, Any] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> BenchResult:
    """Measure ``sections`` and write ``bench.json`` and ``bench.md`` to ``out_dir``."""
    from datetime import datetime

    from simulations.simulate import prepare_phantom, scenario_config

    wanted = [s for s in SECTIONS if s in set(sections) and not (quick and s in FULL_ONLY)]
    repeats = repeats or (1 if quick else 3)
    scenario = "liver-2" if quick else "liver-5"
    command = "hepafed bench" + (" --quick" if quick else "")
    result = BenchResult(
        {
            "date": datetime.now().strftime("%Y-%m-%d"),
            "quick": quick,
            "repeats": repeats,
            "scenario": scenario,
            "command": command,
            "machine": machine(),
            "measured": {},  # section -> date
        }
    )
    spec, phantom_dir = prepare_phantom(scenario, data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = scenario_config(spec, phantom_dir, data_dir, Path(tmp) / "run", overrides or {})
    cfg = cfg.replace({"federation.num-rounds": 3})  # round: the first of each run is left out
    if quick:
        cfg = cfg.replace({"train.local-epochs": 1})
    for section in wanted:
        progress(f"bench: {section}")
        t = time.monotonic()
        if section == "bandwidth":
            result.sections[section] = bandwidth(
                64_000_000 if quick else 512_000_000, max(repeats, 3)
            )
        elif section == "aggregation":
            counts = (2, 5) if quick else SITE_COUNTS
            params = 1_000_000 if quick else MODEL_PARAMS
            result.sections[section] = aggregation(counts, params, repeats)
        elif section == "client":
            site = phantom_dir / spec.training_sites[0]
            result.sections[section] = client_throughput(cfg, site, repeats)
        elif section == "bytes":
            result.sections[section] = update_bytes(cfg)
        elif section == "round":
            result.sections[section] = round_time(cfg, repeats)
        elif section == "sites-100":
            result.sections[section] = hundred_sites(cfg, data_dir, 100, 8)
        elif section == "simulate":
            result.sections[section] = simulate_runs(data_dir)
        progress(f"bench: {section} done in {time.monotonic() - t:.0f} s")
        result.settings["measured"][section] = result.settings["date"]
        _write(result, out_dir)  # after every section: a later failure loses nothing measured
    _write(result, out_dir)
    return result


def _write(result: BenchResult, out_dir: Path) -> None:
    _keep_earlier_sections(result, out_dir / "bench.json")
    if result.settings["machine"]["gpu"] is None:
        result.sections["gpu"] = GPU_NOTE
    evaluate_targets(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(result.to_json() + "\n")
    (out_dir / "bench.md").write_text(markdown(result))
