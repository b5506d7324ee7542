"""`hepafed simulate --compare` through Flower's simulation engine, on a tiny scenario
with one training and one external hospital: the hooks' contracts end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.cli import main
from common.config import RunConfig
from common.hooks import HookSet
from common.models import build_model
from server.records import load_checkpoint, read_evaluations
from simulations.compare import compare

SCENARIO = """
name = "tiny-shift"
description = "one training hospital, one external hospital at 80 kVp"
seed = 11
dims = 2

[defaults]
n_cases = 48
fov_mm = 180.0
pixel_spacing_mm = 1.8

[[site]]
name = "site-a"
kernel = "standard"
prevalence = 0.5

[[site]]
name = "site-b"
role = "external"
kvp = 80
kernel = "sharp"
prevalence = 0.5
"""

SETTINGS = {
    "federation.min-sites": 1,
    "eval.min-cases": 8,
    "eval.min-per-class": 3,
    "data.roi-size": 32,
    "data.context-mm": 0.0,
}


@pytest.mark.slow
def test_compare_runs_every_method_on_the_same_sites_and_keeps_the_contracts(
    tmp_path: Path,
) -> None:
    scenario = tmp_path / "tiny-shift.toml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "cmp"
    methods = ["fedavg", "fedbn", "silobn", "bn-adapt", "finetune", "nyul"]
    doc = compare(methods, 1, scenario, tmp_path / "data", out, SETTINGS, quick=True, command="cmd")
    run = out / "seed-2026"
    evals = {(e["model"], e["site"]): e for e in read_evaluations(run)}
    adaptation = {key: e["adaptation"] for key, e in evals.items()}
    assert adaptation == {
        ("fedavg", "site-a"): "none",
        ("fedavg", "site-b"): "none",
        ("fedbn", "site-a"): "own-local-layers",
        ("fedbn", "site-b"): "bn-adapt (the model has no global normalisation statistics)",
        ("silobn", "site-a"): "own-local-layers",
        ("silobn", "site-b"): "bn-adapt (the model has no global normalisation statistics)",
        ("bn-adapt", "site-a"): "none",  # the site trained the model: no test-time change
        ("bn-adapt", "site-b"): "bn-adapt",
        ("finetune", "site-a"): "fine-tuned at the site",
        ("finetune", "site-b"): "none",  # an unseen site cannot fine-tune without labels
        ("nyul", "site-a"): "none",
        ("nyul", "site-b"): "none",
    }
    assert {e["role"] for (m, s), e in evals.items() if s == "site-b"} == {"external"}
    # test-time-only methods reuse fedavg's model: identical where no adaptation happens
    assert evals[("bn-adapt", "site-a")]["summary"] == evals[("fedavg", "site-a")]["summary"]
    assert evals[("finetune", "site-b")]["summary"] == evals[("fedavg", "site-b")]["summary"]
    assert evals[("bn-adapt", "site-b")]["summary"] != evals[("fedavg", "site-b")]["summary"]
    # the server never changed FedBN's layers; SiloBN shared the affine part only
    cfg = RunConfig().replace({**SETTINGS, "hooks.use": "fedbn"})
    model = build_model(cfg)
    initial = model.state_dict()
    fedbn_keys = HookSet(cfg).local_keys(model)
    fedbn = load_checkpoint(run / "checkpoint-fedbn.pt")["model"]
    silobn = load_checkpoint(run / "checkpoint-silobn.pt")["model"]
    assert all(torch.equal(fedbn[k], initial[k]) for k in fedbn_keys)
    assert not torch.equal(fedbn["conv1.weight"], initial["conv1.weight"])
    stats = [k for k in fedbn_keys if "running" in k]
    affine = [k for k in fedbn_keys if "running" not in k]
    assert all(torch.equal(silobn[k], initial[k]) for k in stats)
    assert any(not torch.equal(silobn[k], initial[k]) for k in affine)
    assert (run / "checkpoint-finetune_finetuned-site-a.pt").is_file()
    # only four trainings ran: fedavg, fedbn, silobn, nyul
    rounds = [json.loads(x) for x in (run / "rounds.jsonl").read_text().splitlines()]
    assert sorted({r["model"] for r in rounds if r.get("phase") == "train"}) == [
        "fedavg",
        "fedbn",
        "nyul",
        "silobn",
    ]
    # Nyul: the training site's landmarks became the scale, stored with the checkpoint
    (stats,) = [r for r in rounds if r.get("phase") == "statistics"]
    assert stats["sites"] == ["site-a"]
    nyul = load_checkpoint(run / "checkpoint-nyul.pt")
    assert json.loads(nyul["shared_statistics"]) == stats["statistics"]
    assert len(stats["statistics"]["nyul"]["landmarks-0"]) == 11
    assert load_checkpoint(run / "checkpoint-fedavg.pt")["shared_statistics"] == ""
    assert not [r for r in rounds if r.get("phase") == "evaluate"]  # every-round off
    # the comparison document
    assert list(doc["methods"]) == methods and doc["seeds"] == [2026]
    fedavg = doc["methods"]["fedavg"]["seeds"]["2026"]
    assert fedavg["internal"]["k"] == 1
    gap = fedavg["internal"]["estimate"] - fedavg["external"]["estimate"]
    assert fedavg["gap"]["estimate"] == pytest.approx(gap)
    assert doc["methods"]["bn-adapt"]["adaptation"] == ["bn-adapt"]
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["command"] == "cmd" and saved["methods"].keys() == doc["methods"].keys()
    text = (out / "comparison.md").read_text()
    assert "| bn-adapt | bn-adapt | bn-adapt |" in text and "cmd" in text


def test_compare_rejects_bad_method_names_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["simulate", "--scenario", "liver-2", "--compare", "fedavg,fedbm", "--seeds", "1",
         "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--compare method 'fedbm'" in err and "fedbn" in err
    code = main(["simulate", "--compare", "fedavg", "--design", "loso"])
    assert code == 2 and "--compare evaluates the holdout design" in capsys.readouterr().err
