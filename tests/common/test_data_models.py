"""The MONAI pipeline's output shapes and values, and the model factory."""

from __future__ import annotations

import csv
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from common import data as data_module
from common.config import ConfigError, RunConfig
from common.data import augment_batch, concat_splits, load_split
from common.hooks.tta import binary_entropy, prediction_entropy
from common.manifest import read_manifest
from common.models import ModelError, build_model, model_name
from common.preprocess import case_record, crop_size, pipeline_key
from common.tasks import loss_function, probabilities, targets
from common.weights import WeightsError, load_arrays, shared_state, to_arrays


def _cfg(**kw: object) -> RunConfig:
    return RunConfig().replace({"data.roi-size": 32, "data.context-mm": 0.0, **kw})


def test_pipeline_shapes_window_and_lesion_centre(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=6, spacing=1.5)
    # the box alone: with context the window shifts at the small synthetic image's border
    cfg = _cfg(**{"data.context-mm": 0.0})
    m = read_manifest(site, cfg.data.channels, cfg.task)
    train = load_split(m, "train", cfg.data, cfg.task)
    assert train.images.shape == (4, 3, 32, 32) and train.images.dtype == torch.float32
    assert train.masks.shape == (4, 1, 32, 32)
    assert float(train.images.min()) >= 0.0 and float(train.images.max()) <= 1.0
    assert train.labels.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert set(torch.unique(train.masks).tolist()) == {0.0, 1.0}
    # the crop is centred on the lesion: its centre of mass sits near the middle
    ys, xs = torch.nonzero(train.masks[0, 0], as_tuple=True)
    assert abs(ys.float().mean() - 15.5) < 2 and abs(xs.float().mean() - 15.5) < 2


def test_resampling_to_common_spacing(site_factory: Callable[..., Path]) -> None:
    # The same lesion drawn at 1.0 mm and at 2.0 mm pixels covers the same area in mm;
    # after resampling to 1.5 mm both crops show it at about the same pixel count.
    fine = site_factory("fine", n_cases=3, spacing=1.0, seed=5)
    coarse = site_factory("coarse", n_cases=3, spacing=2.0, seed=5)
    cfg = _cfg()
    counts = []
    for site in (fine, coarse):
        m = read_manifest(site, cfg.data.channels, cfg.task)
        counts.append(float(load_split(m, "train", cfg.data, cfg.task).masks[0].sum()))
    # equal radius in pixels: the 2 mm lesion is 4x larger in mm^2, so 4x the
    # resampled 1.5 mm pixels (up to interpolation at the rim)
    assert counts[1] / counts[0] == pytest.approx(4.0, rel=0.1)


def test_persistent_cache_gives_identical_tensors(
    site_factory: Callable[..., Path], tmp_path: Path
) -> None:
    site = site_factory(n_cases=3)
    cfg = _cfg(**{"data.cache-dir": str(tmp_path / "cache")})
    m = read_manifest(site, cfg.data.channels, cfg.task)
    first = load_split(m, "train", cfg.data, cfg.task)
    assert any((tmp_path / "cache" / "site-a").iterdir())
    second = load_split(m, "train", cfg.data, cfg.task)
    assert torch.equal(first.images, second.images)
    both = concat_splits([first, second])
    assert len(both) == 4 and both.case_ids[:2] == first.case_ids


def test_segmentation_crop_is_larger() -> None:
    cfg = _cfg(task="lesion-segmentation")
    assert crop_size(cfg.data, cfg.task) == (64, 64)
    assert crop_size(cfg.data, "lesion-malignancy") == (32, 32)


def test_augmentation_keeps_image_and_mask_aligned() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.zeros(8, 1, 16, 16)
    img[:, :, 2:5, 10:14] = 1.0
    mask = (img > 0).float()
    out_i, out_m = augment_batch(img, mask, g)
    assert out_i.shape == img.shape and out_m.shape == mask.shape
    for i in range(8):
        bright = out_i[i, 0] > out_i[i, 0].mean()
        assert torch.equal(bright, out_m[i, 0] > 0)
    assert not all(torch.equal(out_m[i], mask[i]) for i in range(8))  # something moved


@pytest.mark.parametrize(
    ("task", "name", "out_shape"),
    [
        ("lesion-malignancy", "resnet", (2, 1)),
        ("lesion-malignancy", "densenet", (2, 1)),
        ("lesion-segmentation", "unet", (2, 1, 64, 64)),
        ("lesion-segmentation", "basicunet", (2, 1, 64, 64)),
        ("lesion-type", "resnet", (2, 3)),
        ("lesion-type", "densenet", (2, 3)),
    ],
)
def test_model_factory(task: str, name: str, out_shape: tuple[int, ...]) -> None:
    cfg = _cfg(task=task, **{"model.name": name})
    model = build_model(cfg)
    same = build_model(cfg)  # seeded by the run: every party builds identical weights
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), same.state_dict().values(), strict=True)
    )
    x = torch.zeros(2, 3, *crop_size(cfg.data, task))
    assert tuple(model(x).shape) == out_shape


def test_model_factory_errors_and_defaults() -> None:
    assert model_name(_cfg()) == "resnet"
    assert model_name(_cfg(task="lesion-segmentation")) == "unet"
    with pytest.raises(
        ModelError,
        match=r"'unet' is not a lesion-malignancy network; use one "
        r"of 'resnet', 'densenet'",
    ):
        build_model(_cfg(**{"model.name": "unet"}))


def test_weights_travel_without_integer_buffers() -> None:
    model = build_model(_cfg())
    arrays = to_arrays(model)
    assert not any("num_batches_tracked" in k for k in arrays)
    assert set(arrays) == set(shared_state(model))
    other = build_model(_cfg(seed=99))
    load_arrays(other, arrays)
    assert all(torch.equal(v, shared_state(other)[k]) for k, v in shared_state(model).items())
    wide = build_model(_cfg(**{"model.width": 8}))
    with pytest.raises(WeightsError, match="have shape"):
        load_arrays(wide, arrays)


def test_the_cache_never_serves_tensors_made_with_other_settings_or_files(
    site_factory: Callable[..., Path], tmp_path: Path
) -> None:
    """Same cache folder: another crop size or a changed image file is recomputed."""
    site = site_factory(n_cases=6)
    cache = str(tmp_path / "cache")
    small = RunConfig().replace(
        {"data.roi-size": 32, "data.context-mm": 0.0, "data.cache-dir": cache}
    )
    manifest = read_manifest(site, small.data.channels, small.task)
    large = small.replace({"data.roi-size": 48})
    first = load_split(manifest, "train", small.data, small.task)
    assert first.images.shape[-1] == 32
    assert load_split(manifest, "train", large.data, large.task).images.shape[-1] == 48
    again = load_split(manifest, "train", small.data, small.task)
    assert torch.equal(first.images, again.images)  # the cache itself still serves hits
    case = manifest.split("train")[0]
    img = nib.load(case.images[0])
    assert isinstance(img, nib.Nifti1Image)  # the site factory writes NIfTI
    data = np.asarray(img.dataobj)
    nib.save(nib.Nifti1Image((data + 100).astype(np.int16), img.affine), str(case.images[0]))
    changed = load_split(manifest, "train", small.data, small.task)
    assert not torch.equal(first.images[0], changed.images[0])
    assert torch.equal(first.images[1:], changed.images[1:])


def test_lesion_type_trains_on_class_indices_and_predicts_a_softmax() -> None:
    """Cross-entropy on one logit per class (targets are class indices), softmax rows that
    sum to 1; the malignancy and segmentation outputs keep their sigmoid."""
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0.0, 2.0])  # SplitTensors hold float labels
    y = targets("lesion-type", labels, torch.zeros(2, 1, 4, 4))
    assert y.dtype == torch.int64 and y.tolist() == [0, 2]
    loss = float(loss_function("lesion-type")(logits, y))
    # by hand: mean of -log softmax at the true class
    first = -(2.0 - math.log(math.exp(2.0) + 1.0 + math.exp(-1.0)))
    assert loss == pytest.approx((first + math.log(3.0)) / 2, rel=1e-6)
    p = probabilities(logits)
    assert p.sum(dim=1).tolist() == pytest.approx([1.0, 1.0])
    assert p[1].tolist() == pytest.approx([1 / 3] * 3)
    assert probabilities(torch.tensor([[0.0]])).item() == 0.5  # one logit: sigmoid
    masks = probabilities(torch.zeros(1, 1, 2, 2))
    assert masks.shape == (1, 1, 2, 2) and float(masks.max()) == 0.5


def test_tent_minimises_softmax_entropy_for_three_classes() -> None:
    uniform = prediction_entropy(torch.zeros(4, 3))
    assert float(uniform) == pytest.approx(math.log(3.0))
    assert float(prediction_entropy(torch.tensor([[50.0, 0.0, 0.0]]))) < 1e-6
    one = torch.tensor([[0.3], [-1.2]])
    assert float(prediction_entropy(one)) == pytest.approx(float(binary_entropy(one)))


def test_percentile_intensity_scales_each_image_by_its_own_percentiles(
    site_factory: Callable[..., Path],
) -> None:
    """MRI has no absolute unit: with data.intensity = percentile a site whose images are
    all 3x brighter (another receive gain) gives the same model input, while the CT
    window gives another one; the cache key changes with the setting."""
    plain = site_factory("plain", n_cases=3, seed=7)
    bright = site_factory("bright", n_cases=3, seed=7)
    for f in sorted((bright / "images").iterdir()):
        img: nib.Nifti1Image = nib.load(f)  # type: ignore[assignment]
        data = np.asarray(img.dataobj, dtype=np.float32) * 3.0 + 500.0
        nib.save(nib.Nifti1Image(data, img.affine), f)
    window = _cfg()
    percentile = _cfg(**{"data.intensity": "percentile"})
    loaded = {}
    for name, cfg in (("window", window), ("percentile", percentile)):
        for site in (plain, bright):
            m = read_manifest(site, cfg.data.channels, cfg.task)
            loaded[name, site.name] = load_split(m, "train", cfg.data, cfg.task).images
    assert torch.allclose(loaded["percentile", "plain"], loaded["percentile", "bright"], atol=1e-5)
    assert float(loaded["percentile", "plain"].max()) == pytest.approx(1.0)
    assert not torch.allclose(loaded["window", "plain"], loaded["window", "bright"], atol=0.05)
    assert pipeline_key(window.data, window.task) != pipeline_key(percentile.data, window.task)
    with pytest.raises(ConfigError, match="percentile-low.*need 0 <= low < high <= 100"):
        _cfg(**{"data.percentile-low": 99.0, "data.percentile-high": 1.0})
    with pytest.raises(ConfigError, match="data.intensity"):
        _cfg(**{"data.intensity": "zscore"})


@pytest.mark.parametrize("task", ["lesion-malignancy", "lesion-type"])
@pytest.mark.parametrize("name", ["resnet", "densenet"])
def test_model_norm_swaps_every_batchnorm_layer(task: str, name: str) -> None:
    """model.norm = group | instance leaves no BatchNorm anywhere (MONAI's ResNet builds
    its stages with BatchNorm whatever its norm argument says), keeps the weights'
    seeding, and the BatchNorm hooks refuse such a network by name."""
    from common.hooks import HookError, HookSet

    batch = build_model(_cfg(task=task, **{"model.name": name}))
    for norm, kind in (("group", torch.nn.GroupNorm), ("instance", torch.nn.InstanceNorm2d)):
        cfg = _cfg(task=task, **{"model.name": name, "model.norm": norm})
        model = build_model(cfg)
        norms = [m for m in model.modules() if "Norm" in type(m).__name__]
        assert norms and all(isinstance(m, kind) for m in norms)
        affine = [m.state_dict() for m in norms]
        assert all(float(a["weight"].min()) == 1.0 for a in affine)
        assert all(float(a["bias"].abs().max()) == 0.0 for a in affine)
        convs = [k for k, v in batch.state_dict().items() if v.ndim == 4]  # conv kernels
        same = [torch.equal(batch.state_dict()[k], model.state_dict()[k]) for k in convs]
        assert convs and all(same)
        assert not any("running_var" in k for k in model.state_dict())
        out = model(torch.randn(2, 3, *crop_size(cfg.data, task)))
        assert out.shape[0] == 2 and torch.isfinite(out).all()
        with pytest.raises(HookError, match="fedbn"):
            HookSet(cfg.replace({"hooks.use": "fedbn"})).check_model(model)
    group = build_model(_cfg(task=task, **{"model.name": name, "model.norm": "group"}))
    assert all(m.num_groups == 8 for m in group.modules() if isinstance(m, torch.nn.GroupNorm))
    with pytest.raises(ModelError, match="model.norm = 'group' applies to the classification"):
        build_model(_cfg(task="lesion-segmentation", **{"model.norm": "group"}))


def test_context_keeps_tissue_around_the_lesion(site_factory: Callable[..., Path]) -> None:
    """data.context-mm = 0: the lesion's bounding box alone, padded with zeros; with
    context the crop around the same lesion centre is tissue, and the cache key differs
    (a cache made without context keeps its key)."""
    site = site_factory(n_cases=4, spacing=1.5)
    loaded = {}
    for context in (0.0, 30.0):
        cfg = _cfg(**{"data.context-mm": context})
        m = read_manifest(site, cfg.data.channels, cfg.task)
        loaded[context] = load_split(m, "train", cfg.data, cfg.task)
    bare, wide = loaded[0.0], loaded[30.0]
    assert float((bare.images == 0).float().mean()) > 0.5  # mostly padding
    assert float((wide.images == 0).float().mean()) < float((bare.images == 0).float().mean())
    # the lesion stays whole (near the image border the window shifts rather than pads)
    assert torch.equal(bare.masks.sum(dim=(1, 2, 3)), wide.masks.sum(dim=(1, 2, 3)))
    plain = RunConfig().replace({"data.roi-size": 32})
    assert plain.data.context_mm == 48.0  # the default since the stability study
    keys = {c: pipeline_key(_cfg(**{"data.context-mm": c}).data, plain.task) for c in (0, 30, 48)}
    assert pipeline_key(plain.data, plain.task) == keys[48]
    assert len(set(keys.values())) == 3
    with pytest.raises(ConfigError, match="data.context-mm = -1.0"):
        _cfg(**{"data.context-mm": -1.0})


def _copy_livers(site: Path, cases: Sequence[int]) -> None:
    """A ``liver_mask`` column naming a copy of the lesion mask (a valid liver mask: the
    liver includes the lesion) for ``cases``; the other cases' cells are empty."""
    path = site / "manifest.csv"
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    (site / "livers").mkdir(exist_ok=True)
    for i, row in enumerate(rows):
        row["liver_mask"] = ""
        if i in cases:
            row["liver_mask"] = f"livers/{row['case_id']}.nii.gz"
            shutil.copyfile(site / row["mask"], site / row["liver_mask"])
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize("disk_cache", [False, True], ids=["memory", "disk"])
def test_liver_masks_are_cropped_as_the_lesion_masks_are(
    site_factory: Callable[..., Path], tmp_path: Path, disk_cache: bool
) -> None:
    """Resampled (1 mm -> 1.5 mm, nearest) and cropped with context as the lesion mask: a
    liver mask equal to the lesion mask gives livers equal to masks; NaN for a case without
    one; None for a split (or site) without any."""
    site = site_factory(n_cases=6, spacing=1.0)
    cache = {"data.cache-dir": str(tmp_path / "cache")} if disk_cache else {}
    cfg = _cfg(**{"data.context-mm": 12.0, **cache})
    plain = load_split(
        read_manifest(site, cfg.data.channels, cfg.task), "train", cfg.data, cfg.task
    )
    assert plain.livers is None
    _copy_livers(site, (0, 3, 4))  # train cases 0, 1, 3, 4: case 1 has none
    m = read_manifest(site, cfg.data.channels, cfg.task)
    train = load_split(m, "train", cfg.data, cfg.task)
    assert torch.equal(train.images, plain.images) and torch.equal(train.masks, plain.masks)
    assert train.livers is not None and train.livers.dtype == torch.float32
    assert train.livers.shape == train.masks.shape == (4, 1, 32, 32)
    assert torch.equal(train.livers[[0, 2, 3]], train.masks[[0, 2, 3]])
    assert torch.isnan(train.livers[1]).all()
    if disk_cache:  # from the disk cache the same tensors
        data_module._SPLITS.clear()
        again = load_split(m, "train", cfg.data, cfg.task)
        assert again.livers is not None and torch.equal(
            again.livers[[0, 2, 3]], train.masks[[0, 2, 3]]
        )
        assert torch.isnan(again.livers[1]).all()
    other = load_split(
        read_manifest(site_factory("site-b", n_cases=3), cfg.data.channels, cfg.task),
        "train",
        cfg.data,
        cfg.task,
    )
    pooled = concat_splits([train, other])
    assert pooled.livers is not None and pooled.livers.shape == (6, 1, 32, 32)
    assert torch.equal(pooled.livers[:4].nan_to_num(-1.0), train.livers.nan_to_num(-1.0))
    assert torch.isnan(pooled.livers[4:]).all()
    assert concat_splits([other, other]).livers is None


def test_a_changed_liver_mask_is_read_again(
    site_factory: Callable[..., Path], tmp_path: Path
) -> None:
    """The liver file is in both cache keys (its size and modification time): a changed
    liver mask is read again from neither cache, the other files' tensors are unchanged."""
    site = site_factory(n_cases=6)
    _copy_livers(site, (0, 1))
    cfg = _cfg(**{"data.cache-dir": str(tmp_path / "cache")})
    m = read_manifest(site, cfg.data.channels, cfg.task)
    records = [case_record(c, cfg.data.channels) for c in m.cases[:3]]
    assert [len(r["fingerprint"]) for r in records] == [5, 5, 4]
    assert "liver_mask" in records[0] and "liver_mask" not in records[2]
    first = load_split(m, "train", cfg.data, cfg.task)
    assert first.livers is not None and torch.equal(first.livers[:2], first.masks[:2])
    liver = m.cases[0].liver_mask
    assert liver is not None
    img = nib.load(liver)
    assert isinstance(img, nib.Nifti1Image)
    nib.save(nib.Nifti1Image(np.ones(img.shape, np.uint8), img.affine), str(liver))
    st = liver.stat()
    os.utime(liver, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    for _ in range(2):  # the in-memory key, then (cleared) the disk cache's records
        changed = load_split(m, "train", cfg.data, cfg.task)
        assert changed.livers is not None
        # the whole lesion box (context 0: the rest is padding) rather than the lesion
        assert float(changed.livers[0].sum()) > float(first.livers[0].sum())
        assert (changed.livers[0] >= first.livers[0]).all()
        assert torch.equal(changed.livers[1:2], first.livers[1:2])
        assert torch.equal(changed.images, first.images)
        assert torch.equal(changed.masks, first.masks)
        data_module._SPLITS.clear()
