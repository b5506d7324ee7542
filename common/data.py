"""From a site manifest to tensors: the MONAI pipeline every site runs.

Deterministic steps (load, channel-first, orientation, resampling to a common
spacing, CT windowing, lesion-centred crop) run once per case and can be cached
on disk (MONAI ``PersistentDataset``); random augmentation runs on whole batches
on the training device, so an epoch costs no per-case framework overhead.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.data import Dataset, PersistentDataset
from monai.transforms import (
    Compose,
    ConcatItemsd,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    Orientationd,
    ResizeWithPadOrCropd,
    ScaleIntensityRanged,
    Spacingd,
    SqueezeDimd,
)

from common.config import DataConfig
from common.images import LoadSiteImaged
from common.keys import Task
from common.manifest import Case, SiteManifest

IMAGE, MASK, LABEL = "image", "mask", "label"
CACHE_VERSION = "2"  # bump when the deterministic transforms change
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # NIfTI world axes


@dataclass(frozen=True)
class SplitTensors:
    """One split of one site, preprocessed and stacked (N cases)."""

    images: torch.Tensor  # (N, C, *spatial) float32 in [0, 1]
    masks: torch.Tensor  # (N, 1, *spatial) float32 in {0, 1}
    labels: torch.Tensor  # (N,) float32 in {0, 1}; NaN where the task has none
    case_ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.case_ids)


def crop_size(cfg: DataConfig, task: str) -> tuple[int, ...]:
    """Spatial size of the network input: the lesion ROI, larger for segmentation."""
    side = cfg.roi_size if task == Task.MALIGNANCY else 2 * cfg.roi_size
    if cfg.spatial_dims == 2:
        return (side, side)
    return (side, side, max(8, side // 4))


def deterministic_transforms(cfg: DataConfig, task: str) -> Compose:
    """Load -> channel-first -> orient -> resample -> window -> crop.

    Site-level harmonisation (``common.hooks``) runs afterwards on a site's
    stacked tensors, because it needs statistics over all of its cases."""
    channels = list(cfg.channels)
    keys = [*channels, MASK]
    spacing = (cfg.spacing_mm,) * cfg.spatial_dims
    modes = ["bilinear"] * len(channels) + ["nearest"]
    steps: list[Any] = [
        LoadSiteImaged(keys),  # NIfTI or DICOM series folder (common.images)
        EnsureChannelFirstd(keys=keys),
    ]
    if cfg.spatial_dims == 2:
        steps.append(SqueezeDimd(keys=keys, dim=-1))  # (1, X, Y, 1) -> (1, X, Y)
    steps += [
        Orientationd(
            keys=keys, axcodes="RA" if cfg.spatial_dims == 2 else "RAS", labels=RAS_LABELS
        ),
        Spacingd(keys=keys, pixdim=spacing, mode=modes),
        ScaleIntensityRanged(
            keys=channels,
            a_min=cfg.window_min,
            a_max=cfg.window_max,
            b_min=0.0,
            b_max=1.0,
            clip=True,
        ),
        ConcatItemsd(keys=channels, name=IMAGE, dim=0),
        # The reader's lesion annotation defines the region of interest.
        CropForegroundd(keys=[IMAGE, MASK], source_key=MASK, allow_smaller=True),
        ResizeWithPadOrCropd(keys=[IMAGE, MASK], spatial_size=crop_size(cfg, task)),
        EnsureTyped(keys=[IMAGE, MASK], dtype=torch.float32, track_meta=False),
    ]
    return Compose(steps)


def case_record(case: Case, channels: Sequence[str]) -> dict[str, Any]:
    """The dict a MONAI dictionary transform chain starts from.

    ``fingerprint`` (size and modification time of every file read) is ignored
    by the transforms; it is part of the record so that the on-disk cache,
    which hashes the record, never serves a case whose files have changed.
    """
    record: dict[str, Any] = {ch: str(p) for ch, p in zip(channels, case.images, strict=True)}
    record[MASK] = str(case.mask)
    record[LABEL] = float("nan") if case.label is None else float(case.label)
    record["case_id"] = case.case_id
    files = [*case.images, *([case.mask] if case.mask is not None else [])]
    record["fingerprint"] = [_file_fingerprint(Path(p)) for p in files]
    return record


def _file_fingerprint(path: Path) -> list[Any]:
    """(size, mtime) of a file, or of every file in a DICOM series folder."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    out: list[Any] = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            out.append([f.name, None])  # a missing file fails loudly in the loader itself
            continue
        out.append([f.name, st.st_size, st.st_mtime_ns])
    return out


def pipeline_key(cfg: DataConfig, task: str) -> str:
    """A short hash of everything that shapes a preprocessed case.

    The cache lives in a sub-folder named by it, so changing the window, the
    spacing, the crop, the channels or the task never reuses tensors made with
    other settings.
    """
    settings = {
        "version": CACHE_VERSION,
        "task": task,
        "channels": list(cfg.channels),
        "spatial_dims": cfg.spatial_dims,
        "roi_size": cfg.roi_size,
        "spacing_mm": cfg.spacing_mm,
        "window": [cfg.window_min, cfg.window_max],
        "preprocess": None,  # kept so that existing caches keep their key
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


# A site's process trains and scores every round: its splits are kept in memory (the
# disk cache still saves the preprocessing across processes). Callers never modify them.
_SPLITS: OrderedDict[tuple[Any, ...], SplitTensors] = OrderedDict()
SPLITS_KEPT = 8


def load_split(
    manifest: SiteManifest,
    split: str,
    cfg: DataConfig,
    task: str,
) -> SplitTensors:
    """Every case of a split through the deterministic pipeline, stacked; kept in memory
    for the next round (keyed by site folder, manifest hash, split, data settings, task
    and every file's size and modification time, so a changed file is read again)."""
    files = [p for c in manifest.split(split) for p in (*c.images, c.mask) if p is not None]
    stats = tuple((s.st_size, s.st_mtime_ns) for s in (p.stat() for p in files))
    key = (str(manifest.site_dir.resolve()), manifest.sha256, split, cfg, task, stats)
    if key in _SPLITS:
        _SPLITS.move_to_end(key)
        return _SPLITS[key]
    tensors = _load_split(manifest, split, cfg, task)
    _SPLITS[key] = tensors
    while len(_SPLITS) > SPLITS_KEPT:
        _SPLITS.popitem(last=False)
    return tensors


def _load_split(manifest: SiteManifest, split: str, cfg: DataConfig, task: str) -> SplitTensors:
    """Run the deterministic pipeline on every case of a split and stack the result."""
    cases = manifest.split(split)
    records = [case_record(c, cfg.channels) for c in cases]
    transform = deterministic_transforms(cfg, task)
    dataset: Dataset
    if cfg.cache_dir:
        cache = Path(cfg.cache_dir) / manifest.name / pipeline_key(cfg, task)
        cache.mkdir(parents=True, exist_ok=True)
        dataset = PersistentDataset(records, transform=transform, cache_dir=cache)
    else:
        dataset = Dataset(records, transform=transform)
    spatial = crop_size(cfg, task)
    if not records:
        empty = torch.zeros((0, len(cfg.channels), *spatial))
        return SplitTensors(empty, torch.zeros((0, 1, *spatial)), torch.zeros(0), ())
    items = [dataset[i] for i in range(len(records))]
    return SplitTensors(
        images=torch.stack([torch.as_tensor(it[IMAGE]) for it in items]),
        masks=torch.stack([(torch.as_tensor(it[MASK]) > 0.5).float() for it in items]),
        labels=torch.tensor([it[LABEL] for it in items], dtype=torch.float32),
        case_ids=tuple(c.case_id for c in cases),
    )


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips, 90-degree rotations and a mild intensity jitter, per sample.

    Runs on whole batches on the training device; geometry is applied to the
    mask as well so segmentation stays aligned.
    """
    n = images.shape[0]
    dev = images.device

    def draw(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator).to(dev)

    spatial = images.ndim - 2
    for axis in range(spatial):
        flip = (draw(n) < 0.5).view(n, *([1] * (images.ndim - 1)))
        images = torch.where(flip, images.flip(2 + axis), images)
        masks = torch.where(flip, masks.flip(2 + axis), masks)
    k = (draw(n) * 4).long().clamp(max=3)
    rotated_i, rotated_m = images.clone(), masks.clone()
    for quarter in (1, 2, 3):
        sel = (k == quarter).nonzero().flatten()
        if len(sel):
            rotated_i[sel] = torch.rot90(images[sel], quarter, dims=(2, 3))
            rotated_m[sel] = torch.rot90(masks[sel], quarter, dims=(2, 3))
    scale = 1.0 + 0.1 * (draw(n) - 0.5)
    shift = 0.05 * (draw(n) - 0.5)
    view = (n, *([1] * (images.ndim - 1)))
    rotated_i = rotated_i * scale.view(view) + shift.view(view)
    return rotated_i, rotated_m


def concat_splits(parts: Sequence[SplitTensors]) -> SplitTensors:
    """Several sites' splits as one (the pooled, centralised baseline)."""
    return SplitTensors(
        images=torch.cat([p.images for p in parts]),
        masks=torch.cat([p.masks for p in parts]),
        labels=torch.cat([p.labels for p in parts]),
        case_ids=tuple(cid for p in parts for cid in p.case_ids),
    )
