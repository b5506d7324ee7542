"""Grad-CAM at the site (client.explain): the shares in the lesion and in the liver outside
it, the numbers that travel (eval.saliency), the site's say over them, and ``hepafed site
explain``."""

from __future__ import annotations

import csv
import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from client.evaluation import summarize
from client.explain import (
    CamMaps,
    ExplainError,
    grad_cam,
    lesion_shares,
    liver_means,
    liver_shares,
    saliency_fields,
    saliency_means,
    target_layer,
)
from client.explain_cli import run_config
from client.policy import PolicyRefusal, SitePolicy, policy_mod
from client.policy_file import policy_toml
from common.cli import main
from common.config import RunConfig
from common.data import SplitTensors
from common.device import Compute
from common.models import build_model
from common.signing import state_hash
from common.summary import SiteSummary
from common.weights import shared_state
from server.records import RunRecorder
from server.reply_checks import summary_problem
from tests.conftest import write_nifti

CPU = Compute(torch.device("cpu"), None)
SMALL = {"data.roi-size": 32, "data.context-mm": 0.0, "model.width": 8}


# ---- the shares ---------------------------------------------------------------------------


def test_shares_of_hand_made_maps_and_masks() -> None:
    mask = np.zeros((4, 4))
    mask[:2, :2] = 1  # a lesion on a quarter of the image
    inside = mask.copy()
    uniform = np.full((4, 4), 0.3)
    clipped = np.where(mask > 0, 1.0, -2.0)
    clipped[3, 3] = 3.0  # one positive pixel outside: 4 of 7 units inside
    negative = np.full((4, 4), -1.0)  # all zero once clipped: left out
    no_lesion = np.ones((4, 4))
    maps = np.stack([inside, uniform, clipped, negative, no_lesion])
    masks = np.stack([mask, mask, mask, mask, np.zeros((4, 4))])
    share, area = lesion_shares(maps[:, None], masks[:, None])
    assert share[:3] == pytest.approx([1.0, 0.25, 4 / 7])
    assert np.isnan(share[3]) and np.isnan(share[4])  # all-zero map, empty mask
    assert area == pytest.approx([0.25, 0.25, 0.25, 0.25, 0.0])
    means = saliency_means(share, area, min_cell=3)
    assert means == {
        "saliency_lesion": pytest.approx((1 + 0.25 + 4 / 7) / 3),
        "saliency_chance": pytest.approx(0.25),
        "saliency_n": 3,
    }
    assert saliency_means(share, area, min_cell=4) == {}  # fewer usable cases than k
    empty = lesion_shares(np.zeros((0, 1, 4, 4)), np.zeros((0, 1, 4, 4)))
    assert empty[0].shape == (0,) and saliency_means(*empty, min_cell=1) == {}


def _regions() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 4 x 4 image: a lesion of 2 pixels, the liver around it 4 more, 10 pixels outside;
    a map with mass 0.6 in the lesion, 0.3 in the liver outside it and 0.1 outside."""
    lesion = np.zeros((4, 4))
    lesion[1, 1:3] = 1
    liver = np.zeros((4, 4))
    liver[1:3, 0:3] = 1  # 6 pixels, the lesion's 2 among them
    cam = np.where(lesion > 0, 0.3, np.where(liver > 0, 0.075, 0.01))
    return cam, lesion, liver


def test_liver_shares_of_hand_made_maps_and_masks() -> None:
    cam, lesion, liver = _regions()
    assert cam.sum() == pytest.approx(1.0)
    elsewhere = np.where(liver > 0, 0.0, 1.0)  # all the mass outside the liver
    no_liver = np.full((4, 4), np.nan)
    maps = np.stack([cam, cam, np.zeros((4, 4)), elsewhere, cam])
    masks = np.stack([lesion, lesion, lesion, lesion, np.zeros((4, 4))])
    livers = np.stack([liver, no_liver, liver, liver, liver])
    share, area = lesion_shares(maps[:, None], masks[:, None])
    liver_share, liver_area = liver_shares(maps[:, None], masks[:, None], livers[:, None])
    assert share[[0, 1, 3]] == pytest.approx([0.6, 0.6, 0.0])
    assert liver_share[[0, 3]] == pytest.approx([0.3, 0.0])
    # no liver mask; an all-zero map; an empty lesion mask (no lesion share: no liver share)
    assert np.isnan(liver_share[[1, 2, 4]]).all()
    assert liver_area[[0, 2, 3]] == pytest.approx([4 / 16] * 3)  # chance: 4 of 16 pixels
    assert liver_area[4] == pytest.approx(6 / 16)  # no lesion: the whole liver
    assert np.isnan(liver_area[1])
    assert area[:4] == pytest.approx([2 / 16] * 4)
    # the lesion's mean keeps the case without a liver mask, the liver's leaves it out
    assert saliency_means(share, area, min_cell=3) == {
        "saliency_lesion": pytest.approx(0.4),
        "saliency_chance": pytest.approx(2 / 16),
        "saliency_n": 3,
    }
    assert liver_means(liver_share, liver_area, min_cell=2) == {
        "saliency_liver": pytest.approx(0.15),
        "saliency_liver_chance": pytest.approx(4 / 16),
        "saliency_liver_n": 2,
    }
    assert liver_means(liver_share, liver_area, min_cell=3) == {}  # 2 cases < k
    empty = liver_shares(*(np.zeros((0, 1, 4, 4)),) * 3)
    assert empty[0].shape == (0,) and liver_means(*empty, min_cell=1) == {}


def test_saliency_fields_gate_the_liver_on_its_own_count(monkeypatch: pytest.MonkeyPatch) -> None:
    cam, lesion, liver = _regions()
    n = 5
    maps = torch.tensor(np.stack([cam] * n)[:, None], dtype=torch.float32)
    monkeypatch.setattr(
        "client.explain.grad_cam",
        lambda *a, **k: CamMaps(maps, (0,) * n, torch.zeros(n), (2, 2), "layer4"),
    )
    known = torch.tensor(np.stack([liver] * 3 + [np.full((4, 4), np.nan)] * 2)[:, None])
    data = SplitTensors(
        torch.zeros(n, 3, 4, 4),
        torch.tensor(np.stack([lesion] * n)[:, None], dtype=torch.float32),
        torch.zeros(n),
        tuple(f"c{i}" for i in range(n)),
        livers=known.float(),
    )
    cfg = RunConfig().replace({"eval.saliency": True})
    both = saliency_fields(torch.nn.Identity(), data, cfg, CPU, 3)
    assert both == {
        "saliency_lesion": pytest.approx(0.6),
        "saliency_chance": pytest.approx(2 / 16),
        "saliency_n": 5,
        "saliency_liver": pytest.approx(0.3),
        "saliency_liver_chance": pytest.approx(4 / 16),
        "saliency_liver_n": 3,
    }
    lesion_only = saliency_fields(torch.nn.Identity(), data, cfg, CPU, 4)  # 3 liver cases < 4
    assert set(lesion_only) == {"saliency_lesion", "saliency_chance", "saliency_n"}
    assert saliency_fields(torch.nn.Identity(), data, cfg, CPU, 6) == {}  # 5 lesion cases < 6
    without = SplitTensors(data.images, data.masks, data.labels, data.case_ids)
    assert without.livers is None
    assert set(saliency_fields(torch.nn.Identity(), without, cfg, CPU, 1)) == set(lesion_only)


# ---- Grad-CAM on MONAI networks -----------------------------------------------------------


def test_grad_cam_of_a_small_resnet_has_the_input_size_and_leaves_the_model_alone() -> None:
    cfg = RunConfig().replace(SMALL)
    model = build_model(cfg).eval()
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cams = grad_cam(model, images, cfg, CPU, batch_size=2)
    assert cams.maps.shape == (3, 1, 32, 32) and cams.layer == "layer4"
    assert cams.coarse_size == (2, 2)  # 32 pixels through the ResNet: one stride-2 step x 4
    assert float(cams.maps.min()) >= 0.0
    assert cams.classes == (0, 0, 0)  # the malignancy logit
    with torch.no_grad():
        expected = torch.sigmoid(model(images)).view(-1)
    assert torch.allclose(cams.probability, expected, atol=1e-6)
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


def test_lesion_type_explains_the_predicted_class() -> None:
    cfg = RunConfig().replace({**SMALL, "task": "lesion-type"})
    model = build_model(cfg).eval()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cams = grad_cam(model, images, cfg, CPU)
    with torch.no_grad():
        probs = torch.softmax(model(images), dim=1)
    assert cams.classes == tuple(probs.argmax(dim=1).tolist())
    assert torch.allclose(cams.probability, probs.max(dim=1).values, atol=1e-6)


def test_the_layer_is_picked_by_network_name() -> None:
    densenet = build_model(RunConfig().replace({**SMALL, "model.name": "densenet"}))
    assert target_layer("densenet", densenet) == "class_layers.relu"
    assert target_layer("resnet") == "layer4"
    with pytest.raises(ExplainError, match="model.name = 'unet': .*'resnet', 'densenet'"):
        target_layer("unet")
    with pytest.raises(ExplainError, match="has no layer 'layer4'"):
        target_layer("resnet", densenet)


# ---- the number that travels --------------------------------------------------------------


def _split(n: int = 12) -> SplitTensors:
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(n, 3, 32, 32, generator=gen)
    masks = torch.zeros(n, 1, 32, 32)
    masks[:, :, 10:22, 12:20] = 1.0  # 96 of 1024 pixels
    labels = torch.tensor([i % 2 for i in range(n)], dtype=torch.float32)
    livers = torch.zeros(n, 1, 32, 32)
    livers[:, :, 6:26, 6:26] = 1.0  # 400 pixels, the lesion's 96 among them
    livers[n // 2 :] = float("nan")  # the second half has no liver mask
    return SplitTensors(images, masks, labels, tuple(f"c{i}" for i in range(n)), livers=livers)


def test_summarize_adds_the_saliency_means_only_when_asked_and_above_min_cell() -> None:
    data = _split()
    asked = RunConfig().replace({**SMALL, "eval.saliency": True, "eval.min-cases": 10,
                                 "eval.min-per-class": 3})  # fmt: skip
    model = build_model(asked)
    first = summarize(model, data, asked, CPU, min_cell=1)
    n = first.saliency_n
    assert 1 <= n <= len(data)
    maps = grad_cam(model, data.images, asked, CPU).maps.numpy()
    share, _ = lesion_shares(maps, data.masks.numpy())
    assert first.saliency_lesion == pytest.approx(float(np.nanmean(share)))
    assert first.saliency_chance == pytest.approx(96 / 1024)  # every mask the same
    assert first.saliency_lesion is not None and 0.0 <= first.saliency_lesion <= 1.0
    record = first.to_record()
    assert record["saliency-n"] == n
    assert record["saliency-lesion"] == pytest.approx(first.saliency_lesion)
    assert record["saliency-chance"] == pytest.approx(96 / 1024)
    back = SiteSummary.from_record(record)
    assert (back.saliency_lesion, back.saliency_chance, back.saliency_n) == (
        pytest.approx(first.saliency_lesion), pytest.approx(96 / 1024), n)  # fmt: skip
    assert data.livers is not None
    liver, _ = liver_shares(maps, data.masks.numpy(), data.livers.numpy())
    m = first.saliency_liver_n
    assert 1 <= m <= min(n, len(data) // 2)  # the cases with a liver mask
    assert first.saliency_liver == pytest.approx(float(np.nanmean(liver)))
    assert first.saliency_liver_chance == pytest.approx(304 / 1024)  # 400 - 96 pixels
    assert record["saliency-liver-n"] == m
    assert record["saliency-liver"] == pytest.approx(first.saliency_liver)
    assert record["saliency-liver-chance"] == pytest.approx(304 / 1024)
    assert summary_problem(record, len(data)) is None
    back_liver = (back.saliency_liver, back.saliency_liver_chance, back.saliency_liver_n)
    assert back_liver == (pytest.approx(first.saliency_liver), pytest.approx(304 / 1024), m)
    assert summarize(model, data, asked, CPU, min_cell=n).saliency_n == n
    if m < n:  # k between the two counts: the lesion's means go, the liver's do not
        middle = summarize(model, data, asked, CPU, min_cell=m + 1)
        assert middle.saliency_n == n and middle.saliency_liver_n == 0
        assert middle.saliency_liver is None and middle.saliency_liver_chance is None
        assert not any(k.startswith("saliency-liver") for k in middle.to_record())
    below = summarize(model, data, asked, CPU, min_cell=n + 1)  # fewer usable cases than k
    assert (below.saliency_lesion, below.saliency_chance, below.saliency_n) == (None, None, 0)
    off = summarize(model, data, asked.replace({"eval.saliency": False}), CPU, min_cell=1)
    assert (off.saliency_lesion, off.saliency_chance, off.saliency_n) == (None, None, 0)
    assert not any(k.startswith("saliency") for k in off.to_record())
    segmentation = asked.replace({"task": "lesion-segmentation"})
    assert saliency_fields(model, data, segmentation, CPU, 1) == {}


# ---- the site's say -----------------------------------------------------------------------

REFUSAL = (
    "eval.saliency = true: this site sends no Grad-CAM saliency shares (policy.saliency = "
    "false); run with eval.saliency = false"
)


def test_a_site_whose_policy_says_no_refuses_eval_saliency(flower_task: object) -> None:
    policy = SitePolicy.from_node_config({"site-dir": "/srv/site", "policy.saliency": False})
    assert policy.saliency is False and SitePolicy().saliency is True
    asked = RunConfig().replace({"eval.saliency": True})
    assert policy.request_problems(asked) == [REFUSAL]
    with pytest.raises(PolicyRefusal, match=r"policy\.saliency = false"):
        policy.check_request(asked)
    assert policy.request_problems(RunConfig()) == []
    assert SitePolicy().request_problems(asked) == []
    assert "saliency = true  # send eval.saliency's Grad-CAM shares" in policy_toml(SitePolicy())
    # the ClientApp's outermost mod answers with the refusal before any work
    flat = asked.to_flat()
    msg = Message(RecordDict({"config": ConfigRecord({**flat, "server-round": 1})}),
                  dst_node_id=0, message_type=MessageType.EVALUATE)  # fmt: skip
    node: dict[str, bool | float | int | str] = {"site-dir": "/srv/site", "policy.saliency": False}
    context = Context(run_id=1, node_id=0, node_config=node, state=RecordDict(), run_config={})
    reply = policy_mod(msg, context, lambda m, c: Message(RecordDict(), reply_to=m))
    assert reply.has_error() and REFUSAL in str(reply.error.reason)


def test_the_server_rejects_a_share_outside_zero_one() -> None:
    good = {"n": 10, "saliency-lesion": 0.4, "saliency-chance": 0.2, "saliency-n": 8}
    assert summary_problem(good, 100) is None
    assert summary_problem({**good, "saliency-lesion": 1.5}, 100) == (
        "saliency-lesion = 1.5: a share, must be one number in [0, 1]"
    )
    assert "saliency-chance = -0.1: a share" in str(
        summary_problem({**good, "saliency-chance": -0.1}, 100)
    )
    assert "saliency-lesion = [0.5, 0.5]" in str(
        summary_problem({**good, "saliency-lesion": [0.5, 0.5]}, 100)
    )
    assert summary_problem({**good, "saliency-n": 11}, 100) == "saliency-n = 11 exceeds n = 10"
    assert summary_problem({**good, "saliency-n": 2.5}, 100) == (
        "saliency-n = 2.5: must be a whole number"
    )


LIVER = {"saliency-liver": 0.3, "saliency-liver-chance": 0.25, "saliency-liver-n": 8}


def test_the_server_checks_the_liver_share_against_the_lesions() -> None:
    good = {"n": 10, "saliency-lesion": 0.6, "saliency-chance": 0.125, "saliency-n": 8, **LIVER}
    assert summary_problem(good, 100) is None
    assert summary_problem({**good, "saliency-liver": 1.2}, 100) == (
        "saliency-liver = 1.2: a share, must be one number in [0, 1]"
    )
    assert "saliency-liver-chance = -0.1: a share" in str(
        summary_problem({**good, "saliency-liver-chance": -0.1}, 100)
    )
    # over the same cases the map's two shares add up to at most 1, and so do the image's
    assert summary_problem({**good, "saliency-liver": 0.5}, 100) == (
        "saliency-lesion = 0.6 over 8 case(s) and saliency-liver = 0.5 over 8 of them: more "
        "than the whole of the map (two shares of one case add up to at most 1)"
    )
    assert summary_problem({**good, "saliency-liver": 0.4 + 1e-9}, 100) is None  # rounding
    assert "more than the whole of the image" in str(
        summary_problem({**good, "saliency-liver-chance": 0.9}, 100)
    )
    # over fewer liver cases the means may add up to more than 1: one case 0.9 in the lesion
    # without a liver mask, one 0.1 in the lesion and 0.9 in the liver (0.5 + 0.9)
    honest = {**good, "saliency-lesion": 0.5, "saliency-n": 2, "saliency-liver": 0.9,
              "saliency-liver-n": 1}  # fmt: skip
    assert summary_problem(honest, 100) is None
    assert "more than the whole of the map" in str(
        summary_problem({**honest, "saliency-liver": 1.0, "saliency-lesion": 0.6}, 100)
    )
    assert summary_problem({**good, "saliency-liver-n": 9}, 100) == (
        "saliency-liver-n = 9 exceeds saliency-n = 8: the liver's cases are among the lesion's"
    )
    assert summary_problem({**good, "saliency-liver-n": 0}, 100) == (
        "saliency-liver-n = 0: means over no case"
    )
    assert summary_problem({**good, "saliency-liver-n": 1.5}, 100) == (
        "saliency-liver-n = 1.5: must be a whole number"
    )
    partial = {k: v for k, v in good.items() if k != "saliency-liver-n"}
    assert summary_problem(partial, 100) == (
        "saliency-liver, saliency-liver-chance without saliency-liver-n: the means and their "
        "count come together"
    )
    alone = {"n": 10, **LIVER}
    assert summary_problem(alone, 100) == (
        "saliency-liver without saliency-lesion: the liver's cases are among the lesion's"
    )
    lesion_only = {k: v for k, v in good.items() if k not in LIVER}
    assert summary_problem(lesion_only, 100) is None
    assert summary_problem({**lesion_only, "saliency-n": 0}, 100) == (
        "saliency-n = 0: means over no case"
    )


def test_the_liver_fields_travel_only_when_counted() -> None:
    summary = SiteSummary(10, saliency_lesion=0.6, saliency_chance=0.125, saliency_n=8,
                          saliency_liver=0.3, saliency_liver_chance=0.25,
                          saliency_liver_n=8)  # fmt: skip
    record = summary.to_record()
    assert {k: record[k] for k in LIVER} == LIVER
    back = SiteSummary.from_record(record)
    assert (back.saliency_liver, back.saliency_liver_chance, back.saliency_liver_n) == (
        0.3, 0.25, 8)  # fmt: skip
    lesion_only = SiteSummary(10, saliency_lesion=0.6, saliency_chance=0.125, saliency_n=8)
    assert not any(k.startswith("saliency-liver") for k in lesion_only.to_record())
    back = SiteSummary.from_record(lesion_only.to_record())
    assert (back.saliency_liver, back.saliency_liver_chance, back.saliency_liver_n) == (
        None, None, 0)  # fmt: skip


# ---- hepafed site explain -----------------------------------------------------------------


def _run_folder(folder: Path, cfg: RunConfig) -> str:
    """A run folder as the server leaves it (config.json, checkpoint.pt); the model's hash."""
    model = build_model(cfg)
    recorder = RunRecorder(folder)
    recorder.start(cfg, [])
    recorder.checkpoint(shared_state(model), cfg, 1)
    return state_hash(shared_state(model))


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _add_livers(site: Path, cases: tuple[int, ...]) -> None:
    """Give ``cases`` of a ``site_factory`` site a liver mask (the lesion and a ring of 6
    pixels around it) in the manifest's ``liver_mask`` column; the others an empty cell."""
    with (site / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for i, row in enumerate(rows):
        row["liver_mask"] = ""
        if i not in cases:
            continue
        mask: Any = nib.load(str(site / row["mask"]))
        lesion = np.asarray(mask.dataobj)[..., 0] > 0
        xx, yy = np.nonzero(lesion)
        cx, cy, r = xx.mean(), yy.mean(), np.sqrt(lesion.sum() / np.pi)
        gx, gy = np.mgrid[: lesion.shape[0], : lesion.shape[1]]
        liver = lesion | ((gx - cx) ** 2 + (gy - cy) ** 2 <= (r + 6) ** 2)
        spacing = tuple(float(v) for v in mask.header.get_zooms())
        path = f"livers/{row['case_id']}.nii.gz"
        write_nifti(site / path, liver.astype(np.uint8)[..., None], spacing)
        row["liver_mask"] = path
    with (site / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_site_explain_writes_overlays_into_the_site_folder_only(
    site_factory: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = site_factory("site-a", n_cases=3, size=40, splits=("test",))
    _add_livers(site, (0, 2))  # the second case has no liver mask
    digest = _run_folder(tmp_path / "run-7", RunConfig().replace(SMALL))
    before = _files(tmp_path)
    assert main(["site", "explain", str(site), "--run", str(tmp_path / "run-7")]) == 0
    folder = site / "explanations" / "run-7"
    assert {p for p in _files(tmp_path) - before if folder not in p.parents} == set()
    for path in (site / "explanations", folder):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    written = sorted(p.name for p in folder.iterdir())
    pngs = [n for n in written if n.endswith(".png")]
    assert pngs == ["0000-site-a-000.png", "0001-site-a-001.png", "0002-site-a-002.png"]
    assert set(written) == {*pngs, "index.html", "explanations.json"}
    assert all(stat.S_IMODE((folder / n).stat().st_mode) == 0o600 for n in written)
    assert (folder / pngs[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((folder / "explanations.json").read_text())
    assert doc["model_sha256"] == digest and digest in capsys.readouterr().out
    assert (doc["coarse_map_size"], doc["input_size"]) == ([2, 2], [32, 32])
    assert "bilinear" in doc["upsampling"] and doc["target_layer"] == "layer4"
    assert doc["explained_class"].startswith("malignant") and doc["channel"] == "portal"
    assert [c["case_id"] for c in doc["cases"]] == ["site-a-000", "site-a-001", "site-a-002"]
    assert [c["label"] for c in doc["cases"]] == ["benign", "malignant", "benign"]
    for case in doc["cases"]:
        assert 0.0 < case["lesion_share"] < 1.0 and 0.0 <= case["probability"] <= 1.0
        assert case["saliency_lesion"] is None or 0.0 <= case["saliency_lesion"] <= 1.0
    with_liver = [doc["cases"][0], doc["cases"][2]]
    for case in with_liver:
        assert 0.0 < case["liver_share"] < 1.0 - case["lesion_share"]
        assert 0.0 <= case["saliency_liver"] <= 1.0 - case["saliency_lesion"]
    no_liver = doc["cases"][1]
    assert (no_liver["saliency_liver"], no_liver["liver_share"]) == (None, None)
    summary = doc["summary"]
    assert summary["saliency_liver_n"] == 2 and summary["saliency_n"] == 3
    assert summary["saliency_liver"] == pytest.approx(
        np.mean([c["saliency_liver"] for c in with_liver])
    )
    assert summary["saliency_liver_chance"] == pytest.approx(
        np.mean([c["liver_share"] for c in with_liver])
    )
    assert doc["contours"] == {"lesion": "white", "liver": "magenta"}
    page = (folder / "index.html").read_text()
    assert '<img src="0000-site-a-000.png"' in page and "<script" not in page
    assert "coarse map 2 x 2 for an input of 32 x 32 pixels" in page
    assert "magenta line: the liver mask" in page
    assert "Grad-CAM in the liver outside the lesion" in page
    assert f"over {summary['saliency_liver_n']} case(s) with a liver mask" in page
    assert page.count("no liver mask</figcaption>") == 1
    assert page.count("in the liver outside it") == 2
    # again with fewer cases: the earlier case images go, the index follows
    assert main(["site", "explain", str(site), "--run", str(tmp_path / "run-7"),
                 "--max-cases", "1", "--model-sha256", digest]) == 0  # fmt: skip
    assert sorted(p.name for p in folder.glob("*.png")) == ["0000-site-a-000.png"]
    assert len(json.loads((folder / "explanations.json").read_text())["cases"]) == 1


def test_site_explain_refuses_another_model_and_3d_runs(
    site_factory: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = site_factory("site-a", n_cases=2, size=40, splits=("test",))
    _run_folder(tmp_path / "run", RunConfig().replace(SMALL))
    argv = ["site", "explain", str(site), "--run", str(tmp_path / "run")]
    assert main([*argv, "--model-sha256", "0" * 64]) == 1
    assert "not the model the run's report and audit trail vouch for" in capsys.readouterr().err
    assert not (site / "explanations").exists()
    three_d = tmp_path / "run-3d"
    three_d.mkdir()
    flat = RunConfig().replace({"data.spatial-dims": 3}).to_flat()
    (three_d / "config.json").write_text(json.dumps({"config": flat, "sites": []}))
    with pytest.raises(ExplainError, match="data.spatial-dims = 3: site explain draws 2-D"):
        run_config(three_d)
    private = RunConfig().replace({"privacy.mode": "local"}).to_flat()
    (three_d / "config.json").write_text(json.dumps({"config": private, "sites": []}))
    with pytest.raises(ExplainError, match="privacy.mode = 'local'"):
        run_config(three_d)
