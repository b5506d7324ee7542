"""The deterministic half of a site's MONAI pipeline: load, channel-first, orientation,
resampling to a common spacing, intensity scaling (the CT window, or each MRI image's
percentiles) and the lesion-centred crop, plus what keys its on-disk cache (the settings
that shape a case, and each file's size and modification time). ``common.data`` runs
it over a split, caches the results and augments batches."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.transforms import (
    Compose,
    ConcatItemsd,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    Orientationd,
    ResizeWithPadOrCropd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
    SqueezeDimd,
)

from common.checkedload import LIVER, MASK, LoadCheckedd
from common.config_sections import DataConfig
from common.keys import Intensity, classifies
from common.manifest import Case

IMAGE, LABEL = "image", "label"
CACHE_VERSION = "3"  # bump when the deterministic transforms change (3: cases are checked)
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # NIfTI world axes


def crop_size(cfg: DataConfig, task: str) -> tuple[int, ...]:
    """Spatial size of the network input: the lesion ROI, larger for segmentation."""
    side = cfg.roi_size if classifies(task) else 2 * cfg.roi_size
    if cfg.spatial_dims == 2:
        return (side, side)
    return (side, side, max(8, side // 4))


def deterministic_transforms(cfg: DataConfig, task: str) -> Compose:
    """Load -> channel-first -> orient -> resample -> window -> crop.

    A case's liver mask (``LIVER``, where its record has one) goes the lesion mask's way:
    nearest-neighbour resampling, the same crop; a record without one skips it (only that
    key may be missing: ``LoadCheckedd`` requires every other).

    Site-level harmonisation (``common.hooks``) runs afterwards on a site's
    stacked tensors, because it needs statistics over all of its cases."""
    channels = list(cfg.channels)
    keys = [*channels, MASK, LIVER]
    spacing = (cfg.spacing_mm,) * cfg.spatial_dims
    modes = ["bilinear"] * len(channels) + ["nearest", "nearest"]
    steps: list[Any] = [
        # NIfTI or DICOM series folder (common.images), checked as `hepafed site check` does
        LoadCheckedd(keys, cfg.spatial_dims),
        # allow_missing_keys: only the liver mask may be missing (see LoadCheckedd)
        EnsureChannelFirstd(keys=keys, allow_missing_keys=True),
    ]
    if cfg.spatial_dims == 2:
        # (1, X, Y, 1) -> (1, X, Y)
        steps.append(SqueezeDimd(keys=keys, dim=-1, allow_missing_keys=True))
    steps += [
        Orientationd(
            keys=keys,
            axcodes="RA" if cfg.spatial_dims == 2 else "RAS",
            labels=RAS_LABELS,
            allow_missing_keys=True,
        ),
        Spacingd(keys=keys, pixdim=spacing, mode=modes, allow_missing_keys=True),
        intensity_step(cfg),
        ConcatItemsd(keys=channels, name=IMAGE, dim=0),
        # The reader's lesion annotation defines the region of interest.
        # data.context-mm of tissue around the box, then centred and padded to roi-size
        CropForegroundd(
            keys=[IMAGE, MASK, LIVER],
            source_key=MASK,
            margin=round(cfg.context_mm / cfg.spacing_mm),
            allow_smaller=True,
            allow_missing_keys=True,
        ),
        ResizeWithPadOrCropd(
            keys=[IMAGE, MASK, LIVER], spatial_size=crop_size(cfg, task), allow_missing_keys=True
        ),
        EnsureTyped(
            keys=[IMAGE, MASK, LIVER],
            dtype=torch.float32,
            track_meta=False,
            allow_missing_keys=True,
        ),
    ]
    return Compose(steps)


def intensity_step(cfg: DataConfig) -> Any:
    """Stored values -> [0, 1], per channel: the fixed HU window on CT (the same Hounsfield
    units at every site), or on MRI, whose intensities have no absolute unit (they scale
    with receive gain, coil and sequence), each image's own ``percentile-low`` and
    ``percentile-high`` percentiles (robust min-max scaling, computed on the whole
    resampled image before the lesion crop, so the lesion is scaled relative to its liver
    and body). Harmonisation across sites (``common.hooks``: z-score, histogram matching)
    runs afterwards on a site's stacked tensors."""
    channels = list(cfg.channels)
    if cfg.intensity == Intensity.PERCENTILE:
        return ScaleIntensityRangePercentilesd(
            keys=channels,
            lower=cfg.percentile_low,
            upper=cfg.percentile_high,
            b_min=0.0,
            b_max=1.0,
            clip=True,
        )
    return ScaleIntensityRanged(
        keys=channels, a_min=cfg.window_min, a_max=cfg.window_max, b_min=0.0, b_max=1.0, clip=True
    )


def case_record(case: Case, channels: Sequence[str]) -> dict[str, Any]:
    """The dict a MONAI dictionary transform chain starts from.

    ``fingerprint`` (size and modification time of every file read) is ignored
    by the transforms; it is part of the record so that the on-disk cache,
    which hashes the record, never serves a case whose files have changed. A case
    without a liver mask has no ``LIVER`` key (so its record, and its cache entry, are
    those of before liver masks existed).
    """
    record: dict[str, Any] = {ch: str(p) for ch, p in zip(channels, case.images, strict=True)}
    record[MASK] = str(case.mask)
    if case.liver_mask is not None:
        record[LIVER] = str(case.liver_mask)
    record[LABEL] = float("nan") if case.label is None else float(case.label)
    record["case_id"] = case.case_id
    files = [*case.images, *([case.mask] if case.mask is not None else [])]
    files += [case.liver_mask] if case.liver_mask is not None else []
    record["fingerprint"] = [file_fingerprint(Path(p)) for p in files]
    return record


def file_fingerprint(path: Path) -> list[Any]:
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
        **({"context_mm": cfg.context_mm} if cfg.context_mm else {}),  # 0: the keys of before
        # None (the CT window above) keeps the key of caches made before data.intensity
        "preprocess": (
            None
            if cfg.intensity == Intensity.WINDOW
            else [str(cfg.intensity), cfg.percentile_low, cfg.percentile_high]
        ),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
