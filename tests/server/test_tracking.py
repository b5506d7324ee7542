"""Experiment tracking (``server.tracking``): what MLflow and TensorBoard hold, read back with
each library's own client, equals what the run folder records; parents and children for
--seeds and --compare; a missing package fails before any work; MLflow never phones home."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.config import ConfigError, RunConfig
from server.records import RunRecorder, read_config, read_rounds
from server.tracking import (
    SECRET_KEYS,
    TrackingRun,
    TrackingUnavailable,
    continue_run,
    ended,
    log_comparison,
    parent_params,
    read_record,
    relog_report,
    require_backend,
    start_parent,
    start_run,
)
from server.tracking_figures import comparison_figures, report_figures
from tests.conftest import make_site

ROOT = Path(__file__).resolve().parents[2]
REPORTS = ROOT / "tests" / "server" / "data" / "reports"
SITES = ("hospital-x", "hospital-y")


def _extra(module: str, extra: str) -> Any:
    """An extra's module; without it the test skips, or fails where ``HEPAFED_REQUIRE_TRACKING``
    is set (CI installs both extras: ``HEPAFED_EXTRAS`` in .ci/run)."""
    if os.environ.get("HEPAFED_REQUIRE_TRACKING"):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"the {extra} extra: pip install -e '.[{extra}]'")


def _mlflow() -> Any:
    return _extra("mlflow", "mlflow")


def _events(logdir: Path) -> Any:
    """TensorBoard's own reader of the event files in ``logdir``, loaded."""
    reader = _extra("tensorboard.backend.event_processing.event_accumulator", "tensorboard")
    events = reader.EventAccumulator(str(logdir))
    events.Reload()
    return events


# ---- one real federation, tracked in MLflow (the module's only training) -----------------


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny sites, two rounds, through Flower's simulation engine and the real
    ServerApp, with ``tracking.backend = "mlflow"``; then the report logged again as
    ``hepafed simulate`` does once it adds the pooled baseline."""
    from simulations.federated import run_federated

    _mlflow()
    root = tmp_path_factory.mktemp("tracking")
    for i, name in enumerate(SITES):
        make_site(root / "sites", name, n_cases=30, seed=i + 1, size=32)
    cfg = RunConfig().replace(
        {
            "data.site-root": str(root / "sites"),
            "data.roi-size": 16,
            "model.width": 4,
            "federation.num-rounds": 2,
            "train.local-epochs": 1,
            "eval.min-cases": 8,
            "eval.min-per-class": 3,
            "output.run-dir": str(root / "run"),
            "tracking.backend": "mlflow",
        }
    )
    run_federated(cfg)
    relog_report(cfg, root / "run")
    return root / "run"


def _mlflow_run(run_dir: Path) -> tuple[Any, Any]:
    record = read_record(run_dir)
    assert record is not None
    client = _mlflow().tracking.MlflowClient(tracking_uri=record["uri"])
    return client, client.get_run(record["run_id"])


def _history(client: Any, run_id: str, key: str) -> dict[int, float]:
    """A metric's latest value at each step."""
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)
    return {m.step: m.value for m in points}


@pytest.mark.slow  # (the module's one federation, ~30 s)
def test_mlflow_holds_every_round_and_the_report_as_the_run_folder_does(
    tracked_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, run = _mlflow_run(tracked_run)
    record = read_record(tracked_run)
    assert record is not None and record["uri"] == f"sqlite:///{tracked_run / 'mlflow.db'}"
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.info.artifact_uri.startswith((tracked_run / "mlartifacts").as_uri())
    rounds = read_rounds(tracked_run)
    trained = [r for r in rounds if r["phase"] == "train"]
    scored = [r for r in rounds if r["phase"] == "evaluate"]
    assert [r["round"] for r in scored] == [0, 1, 2] and len(trained) == 2
    for site in SITES:
        assert _history(client, run.info.run_id, f"train/loss/global/{site}") == {
            r["round"]: pytest.approx(r["sites"][site]["train-loss"]) for r in trained
        }
        for metric in ("auc", "loss", "n"):
            assert _history(client, run.info.run_id, f"test/{metric}/global/{site}") == {
                r["round"]: pytest.approx(r["sites"][site][metric]) for r in scored
            }
    assert not any("cal-" in k or "hist" in k or "emb" in k for k in run.data.metrics)
    # report.json's headline figures: the latest value (logged again after the run ended)
    report = json.loads((tracked_run / "report.json").read_text())
    pooled = report["pooled"]["internal"]["auc"]["estimate"]
    assert run.data.metrics["report/pooled-internal-auc"] == pytest.approx(pooled)
    assert len(client.get_metric_history(run.info.run_id, "report/pooled-internal-auc")) == 2
    for row in report["sites"]:
        key = f"report/auc/global/{row['site']}"
        assert run.data.metrics[key] == pytest.approx(row["auc"]["estimate"])
    assert run.data.tags["hepafed.model-sha256"] == report["provenance"]["model_sha256"]["global"]
    assert run.data.tags["hepafed.run-id"] == read_config(tracked_run)["run_id"]
    # the resolved config as parameters, less a key folder and the store's URI
    flat = read_config(tracked_run)["config"]
    assert run.data.params == {k: str(v) for k, v in flat.items() if k not in SECRET_KEYS}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"report.json", "report.html"}
    local = Path(client.download_artifacts(run.info.run_id, "report.json", str(tracked_run.parent)))
    assert json.loads(local.read_text()) == report
    # mlflow's own query API (its tracking URI from the environment) finds it by experiment
    monkeypatch.setenv("MLFLOW_TRACKING_URI", record["uri"])
    frame = _mlflow().search_runs(experiment_names=["hepafed"])
    assert list(frame["run_id"]) == [run.info.run_id]
    assert frame["metrics.report/pooled-internal-auc"].iloc[0] == pytest.approx(pooled)


@pytest.mark.slow  # (the module's one federation, ~30 s)
def test_tensorboard_holds_the_same_records_and_report(tracked_run: Path, tmp_path: Path) -> None:
    """The same run's records, through ``RunRecorder`` as the ServerApp logs them, into
    TensorBoard (the scalars a live run writes; no second training)."""
    cfg = RunConfig().replace({"tracking.backend": "tensorboard"})
    recorder = RunRecorder(tmp_path / "run")
    recorder.start(cfg, [], "rid")
    with recorder.tracked():
        for entry in read_rounds(tracked_run):
            recorder.log_round(entry)
        for name in ("report.json", "report.html"):
            (recorder.run_dir / name).write_bytes((tracked_run / name).read_bytes())
    events = _events(tmp_path / "run" / "tensorboard")
    rounds = read_rounds(tracked_run)
    for site in SITES:
        got = {e.step: e.value for e in events.Scalars(f"test/auc/global/{site}")}
        want = {r["round"]: r["sites"][site]["auc"] for r in rounds if r["phase"] == "evaluate"}
        assert got == pytest.approx(want)
        got = {e.step: e.value for e in events.Scalars(f"train/loss/global/{site}")}
        want = {r["round"]: r["sites"][site]["train-loss"] for r in rounds if r["phase"] == "train"}
        assert got == pytest.approx(want)
    report = json.loads((tracked_run / "report.json").read_text())
    (final,) = events.Scalars("report/pooled-internal-auc")
    assert final.step == 2
    assert final.value == pytest.approx(report["pooled"]["internal"]["auc"]["estimate"])
    assert {"config/text_summary", "tags/text_summary"} <= set(events.Tags()["tensors"])
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "federation.num-rounds" in config_text and "trust.keys-dir" not in config_text


# ---- parents and children (--seeds, --compare), with a stand-in for the federations --------


def _fake_seed(cfg: RunConfig, folder: Path, seed: int) -> None:
    """What a seed's ServerApp does to its tracking run: start, rounds, report, end."""
    recorder = RunRecorder(folder)
    recorder.start(cfg.replace({"seed": seed, "output.run-dir": str(folder)}), [], f"r{seed}")
    with recorder.tracked():
        recorder.log_round(
            {"phase": "train", "model": "fedavg", "round": 1, "sites": {"a": {"train-loss": 0.5}}}
        )


@pytest.fixture
def comparison(tmp_path: Path) -> Iterator[tuple[dict[str, Any], Path]]:
    doc = json.loads((REPORTS / "comparison-external" / "comparison.json").read_text())
    yield doc, tmp_path / "out"


def test_a_compare_run_is_a_parent_with_one_child_per_seed_in_mlflow(
    comparison: tuple[dict[str, Any], Path],
) -> None:
    _mlflow()
    doc, out = comparison
    keys = "/srv/hepafed/keys"  # the coordinating center's keyring: never a parameter
    cfg = RunConfig().replace({"tracking.backend": "mlflow", "trust.keys-dir": keys})
    with ended(start_parent(cfg, out)) as parent:
        parent.log_config(parent_params(cfg.to_flat()), {"hepafed.methods": "fedavg,fedbn"})
        for seed in doc["seeds"]:
            _fake_seed(cfg, out / f"seed-{seed}", seed)
        out.joinpath("comparison.json").write_text(json.dumps(doc))
        log_comparison(parent, out, doc, {s: out / f"seed-{s}" for s in doc["seeds"]})
    record = read_record(out)
    assert record is not None and record["role"] == "parent"
    client = _mlflow().tracking.MlflowClient(tracking_uri=record["uri"])
    top = client.get_run(record["run_id"])
    assert top.info.status == "FINISHED" and top.info.run_name == "out"
    children = client.search_runs(
        [record["experiment_id"]], f"tags.mlflow.parentRunId = '{record['run_id']}'"
    )
    assert sorted(c.info.run_name for c in children) == ["seed-2026", "seed-2027"]
    for child in children:
        seed = int(child.info.run_name.removeprefix("seed-"))
        assert child.info.status == "FINISHED" and child.data.params["seed"] == str(seed)
        assert not SECRET_KEYS & set(child.data.params) and keys not in str(child.data.params)
        assert child.data.metrics["train/loss/fedavg/a"] == 0.5
        one = doc["methods"]["fedbn"]["seeds"][str(seed)]
        assert child.data.metrics["compare/gap/fedbn"] == pytest.approx(one["gap"]["estimate"])
        site_c = one["sites"]["site-c"]["auc"]["estimate"]
        assert child.data.metrics["compare/auc/fedbn/site-c"] == pytest.approx(site_c)
    mean = doc["methods"]["fedavg"]["internal_auc"]["mean"]
    assert top.data.metrics["compare/pooled-internal-auc/fedavg"] == pytest.approx(mean)
    assert "compare/pooled-internal-auc-sd/fedavg" in top.data.metrics
    assert top.data.tags["hepafed.methods"] == "fedavg,fedbn"
    assert top.data.params["federation.num-rounds"] == "10"
    assert not {"seed", "output.run-dir", *SECRET_KEYS} & set(top.data.params)
    assert {a.path for a in client.list_artifacts(record["run_id"])} == {"comparison.json"}
    # each child's store is the parent's: one database, at the parent's folder
    assert not list(out.glob("seed-*/mlflow.db"))
    # a rerun into the same folder continues the parent instead of starting another
    again = start_parent(cfg, out)
    assert read_record(out) == record
    again.end()


def test_a_seeds_run_in_tensorboard_has_one_sub_folder_per_child(tmp_path: Path) -> None:
    _events(tmp_path)  # (skips without the tensorboard extra)
    out = tmp_path / "seeds"
    cfg = RunConfig().replace({"tracking.backend": "tensorboard"})
    with ended(start_parent(cfg, out)):
        for seed in (7, 8):
            _fake_seed(cfg, out / f"seed-{seed}", seed)
    logdir = out / "tensorboard"
    assert sorted(p.name for p in logdir.iterdir() if p.is_dir()) == ["seed-7", "seed-8"]
    for seed in (7, 8):
        assert read_record(out / f"seed-{seed}") == {
            "backend": "tensorboard",
            "logdir": str((logdir / f"seed-{seed}").resolve()),
            "role": "run",
        }
        events = _events(logdir / f"seed-{seed}")
        assert [(e.step, e.value) for e in events.Scalars("train/loss/fedavg/a")] == [(1, 0.5)]
    # a resumed run (output.resume) goes on in the tracking run it started
    resumed = RunRecorder(out / "seed-8")
    resumed.keep_rounds(lambda entry: True)
    with resumed.tracked():
        resumed.log_round(
            {"phase": "train", "model": "fedavg", "round": 2, "sites": {"a": {"train-loss": 0.25}}}
        )
    events = _events(logdir / "seed-8")
    got = [(e.step, e.value) for e in events.Scalars("train/loss/fedavg/a")]
    assert got == [(1, 0.5), (2, 0.25)]
    # a run outside a tracked parent folder is on its own; an untracked run tracks nothing
    assert read_record(tmp_path) is None
    assert start_run(RunConfig(), tmp_path / "plain").writer is None
    assert continue_run(tmp_path / "plain").writer is None


# ---- what is logged, from the report fixtures (pure) --------------------------------------


def test_report_figures_of_every_design() -> None:
    ext = json.loads((REPORTS / "holdout-external" / "report.json").read_text())
    step, values, tags = report_figures(ext)
    assert step == ext["provenance"]["config"]["federation.num-rounds"]
    for gap in ext["gaps"]:
        key = f"report/gap/{gap['model']}/{gap['site']}"
        assert values[key] == pytest.approx(gap["gap"]["estimate"])
    diff = ext["pooled"]["difference"]["auc"]["estimate"]
    assert values["report/pooled-difference-auc"] == pytest.approx(diff)
    assert tags["hepafed.design"] == "holdout"
    loso = json.loads((REPORTS / "loso" / "report.json").read_text())
    _, values, tags = report_figures(loso)
    for fold in loso["folds"]:
        if fold["internal"]:
            key = f"report/pooled-internal-auc/{fold['model']}"
            assert values[key] == pytest.approx(fold["internal"]["auc"]["estimate"])
    for model in loso["provenance"]["model_sha256"]:
        assert any(model in tag or model == "global" for tag in tags)
    cross = json.loads((REPORTS / "cross-site" / "report.json").read_text())
    _, values, _ = report_figures(cross)
    cells = [c for c in cross["matrix"] if c.get("auc")]
    assert len(cells) > len(cross["sites"])  # local-only models at every site, too
    for cell in cells:
        key = f"report/auc/{cell['model']}/{cell['site']}"
        assert values[key] == pytest.approx(cell["auc"]["estimate"])


def test_a_seeds_report_logs_its_combined_figures() -> None:
    def figure(estimate: float, sd: float) -> dict[str, Any]:
        return {"per_seed": [], "seeds_used": [1, 2], "combined": {
            "estimate": estimate, "between_sd": sd}}  # fmt: skip

    noise = {
        "pooled": {"internal": figure(0.8, 0.01), "external": figure(0.7, 0.02),
                   "difference": {"combined": None}},
        "sites": [{"site": "a", "model": "global", "auc": figure(0.9, 0.03)}],
        "gaps": [{"site": "e", "model": "global", "gap": figure(0.1, 0.04)}],
    }  # fmt: skip
    _, values, _ = report_figures({"training_noise": noise, "pooled": {"internal": {}}})
    assert values == {
        "seeds/pooled-internal-auc": 0.8,
        "seeds/pooled-internal-auc-sd": 0.01,
        "seeds/pooled-external-auc": 0.7,
        "seeds/pooled-external-auc-sd": 0.02,
        "seeds/auc/global/a": 0.9,
        "seeds/auc-sd/global/a": 0.03,
        "seeds/gap/global/e": 0.1,
        "seeds/gap-sd/global/e": 0.04,
    }


def test_comparison_figures_name_methods_safely() -> None:
    doc = {"methods": {"fedavg+finetune": {"gap": {"mean": 0.1, "sd": None}, "seeds": {}}}}
    assert comparison_figures(doc) == {"compare/gap/fedavg_finetune": 0.1}


# ---- failing early, and the site's view ----------------------------------------------------


@pytest.mark.parametrize("backend", ["mlflow", "tensorboard"])
def test_a_missing_package_names_the_extra_before_any_work(
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from common.cli import main
    from server.app import serve

    monkeypatch.setitem(sys.modules, backend, None)  # as if not installed
    cfg = RunConfig().replace({"tracking.backend": backend})
    with pytest.raises(TrackingUnavailable, match=rf"pip install -e '\.\[{backend}\]'"):
        require_backend(cfg)

    class NoGrid:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the grid was used: {name}")

    with pytest.raises(TrackingUnavailable):
        serve(NoGrid(), cfg.replace({"output.run-dir": str(tmp_path / "run")}))  # type: ignore[arg-type]
    assert not (tmp_path / "run").exists()
    data = tmp_path / "data"
    args = ["--quick", "--data-dir", str(data), "--run-config", f"tracking.backend={backend}"]
    for extra in ([], ["--seeds", "2"], ["--compare", "fedavg"]):
        assert main(["simulate", *args, *extra, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert f"pip install -e '.[{backend}]'" in err, extra
    assert not data.exists() and not (tmp_path / "out").exists()  # no phantom, no run
    # a site parses the same config without the package: tracking is the server's business
    assert RunConfig.from_flat(cfg.to_flat()).tracking.backend == backend


def test_a_backend_failing_mid_run_stops_tracking_not_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Gone:
        calls = 0

        def metrics(self, values: Any, step: int) -> None:
            Gone.calls += 1
            raise ConnectionError("tracking server unreachable")

        def end(self, failed: bool) -> None:
            raise AssertionError("a dropped backend is not called again")

    run = TrackingRun(Gone())  # type: ignore[arg-type]
    entry = {"phase": "train", "round": 1, "sites": {"a": {"train-loss": 0.3}}}
    run.log_round(entry)
    run.log_round(entry)
    run.end()
    assert Gone.calls == 1 and run.writer is None
    assert "tracking stopped (ConnectionError: tracking server unreachable)" in caplog.text


def test_credentials_never_ride_in_the_tracking_uri() -> None:
    with_secrets = (
        "https://user:secret@mlflow.example",
        "https://token@mlflow.example",
        "https://mlflow.example/?token=secret",
        "https://mlflow.example/#secret",
    )
    for uri in with_secrets:
        with pytest.raises(ConfigError, match="MLFLOW_TRACKING_PASSWORD"):
            RunConfig().replace({"tracking.uri": uri})
    assert RunConfig().replace({"tracking.uri": "https://mlflow.example"}).tracking.uri


def test_mlflow_telemetry_is_off_and_nothing_leaves_the_machine(tmp_path: Path) -> None:
    """A fresh interpreter, without CI or pytest in its environment (MLflow turns its
    telemetry off there by itself): hepafed's help and tracking modules import neither
    backend; a tracked MLflow run opens no network connection and MLflow's telemetry is off."""
    _mlflow()
    script = f"""
import socket, sys
reached = []
real_connect = socket.socket.connect
def connect(self, address):
    if self.family != socket.AF_UNIX:
        reached.append(address)
    return real_connect(self, address)
socket.socket.connect = connect
from common.cli import build_parser
build_parser().format_help()
import server.records, server.tracking
assert not {{"mlflow", "tensorboard"}} & set(sys.modules), "imported a backend"
from pathlib import Path
from common.config import RunConfig
cfg = RunConfig().replace({{"tracking.backend": "mlflow"}})
run = server.tracking.start_run(cfg, Path({str(tmp_path / "run")!r}), "rid")
run.log_round({{"phase": "train", "round": 1, "sites": {{"a": {{"train-loss": 0.3}}}}}})
run.end()
from mlflow.telemetry.client import get_telemetry_client
from mlflow.telemetry.utils import is_telemetry_disabled
assert get_telemetry_client() is None and is_telemetry_disabled()
assert not reached, reached
print("ok")
"""
    quiet = {
        "CI",
        "PYTEST_CURRENT_TEST",
        "GITHUB_ACTIONS",
        "MLFLOW_DISABLE_TELEMETRY",
        "DO_NOT_TRACK",
    }
    env = {k: v for k, v in os.environ.items() if k not in quiet}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
