"""From a site manifest to tensors: the MONAI pipeline every site runs.

Deterministic steps (``common.preprocess``: load, channel-first, orientation,
resampling to a common spacing, intensity scaling, lesion-centred crop) run once per
case and can be cached on disk (MONAI ``PersistentDataset``); random augmentation runs on
whole batches on the training device, so an epoch costs no per-case framework overhead.

Every case is checked as it loads, with ``hepafed site check``'s own checks
(``common.badcases``): a bad case raises ``BadCaseError`` naming the site, the
case, the file and what is wrong, or with ``data.on-bad-case = "skip"`` is left
out, logged and listed in ``SplitTensors.skipped``. Both caches are keyed by the
size and modification time of every file a case reads, so a file that changes
(is fixed, or becomes corrupt) is read and checked again; a failure is never cached.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.data import Dataset, PersistentDataset

from common.badcases import (
    DICOMWEB_KINDS,
    BadCaseError,
    BadInput,
    NoUsableCasesError,
    SkippedCase,
)
from common.checkedload import LIVER, MASK, CaseFileProblem
from common.config_sections import DataConfig
from common.keys import BadCasePolicy
from common.manifest import MANIFEST_NAME, Case, Problem, SiteManifest
from common.preprocess import (
    IMAGE,
    LABEL,
    case_record,
    crop_size,
    deterministic_transforms,
    file_fingerprint,
    pipeline_key,
)
from common.split_cache import read_stacked, split_file, write_stacked

log = logging.getLogger("hepafed.progress")


@dataclass(frozen=True)
class SplitTensors:
    """One split of one site, preprocessed and stacked (N cases)."""

    images: torch.Tensor  # (N, C, *spatial) float32 in [0, 1]
    masks: torch.Tensor  # (N, 1, *spatial) float32 in {0, 1}
    labels: torch.Tensor  # (N,) float32 in {0, 1} ({0, 1, 2}: lesion-type); NaN where none
    case_ids: tuple[str, ...]
    # cases left out under data.on-bad-case = "skip", in manifest order (not in the tensors)
    skipped: tuple[SkippedCase, ...] = ()
    # (N, 1, *spatial) float32: the liver (lesion included) cropped as the masks are, 1.0
    # inside, 0.0 outside, NaN everywhere for a case without a liver mask; None when no case
    # has one (the manifest's optional ``liver_mask`` column). Used only to say where a
    # saliency map lies, never for training.
    livers: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.case_ids)


# A site's process trains and scores every round: its splits are kept in memory (the
# disk cache still saves the preprocessing across processes). Callers never modify them.
_SPLITS: OrderedDict[tuple[Any, ...], SplitTensors] = OrderedDict()
SPLITS_KEPT = 8


def load_split(
    manifest: SiteManifest,
    split: str,
    cfg: DataConfig,
    task: str,
    site: str = "",
) -> SplitTensors:
    """Every usable case of a split through the deterministic pipeline, stacked.

    A bad case raises ``BadCaseError`` (``data.on-bad-case = "fail"``) or is left out
    and listed in ``skipped`` (``"skip"``); a split whose every case is bad raises
    ``NoUsableCasesError``. ``site`` names the site in errors (default: its folder).
    """
    return load_splits(manifest, (split,), cfg, task, site)


def load_splits(
    manifest: SiteManifest,
    splits: Sequence[str],
    cfg: DataConfig,
    task: str,
    site: str = "",
) -> SplitTensors:
    """Several splits as one (e.g. every case of a site that never trained); only when
    every case of them all is bad is that an error."""
    parts = [_cached_split(manifest, s, cfg, task, site or manifest.name) for s in splits]
    data = concat_splits(parts) if len(parts) > 1 else parts[0]
    if not len(data) and data.skipped:
        raise NoUsableCasesError(
            site or manifest.name, "+".join(splits), data.skipped, manifest.site_dir
        )
    return data


def _cached_split(
    manifest: SiteManifest, split: str, cfg: DataConfig, task: str, site: str
) -> SplitTensors:
    """``_load_split``, kept in memory for the next round: keyed by site folder, manifest
    hash, split, data settings (the bad-case policy included), task and the size and
    modification time of every file of every case, so a changed file is read again. Only
    a loaded split is kept: a failure raises before it can be cached."""
    split = str(split)  # Split.TEST and "test": one key, in memory and on disk
    cases = [c for c in manifest.split(split) if c.case_id not in manifest.row_problems]
    files = [p for c in cases for p in (*c.images, c.mask, c.liver_mask) if p is not None]
    stats = json.dumps([file_fingerprint(p) for p in files])
    # a rejected row is known by its problems (no file of it is touched): a fixed row,
    # a fixed link or another data root gives another key
    rejected = tuple((k, tuple(map(str, v))) for k, v in sorted(manifest.row_problems.items()))
    root = str(manifest.data_root)
    key = (
        str(manifest.site_dir.resolve()),
        manifest.sha256,
        split,
        cfg,
        task,
        stats,
        rejected,
        root,
    )
    if key in _SPLITS:
        _SPLITS.move_to_end(key)
        return _SPLITS[key]
    stacked = None
    if cfg.cache_dir:  # another process of this site may have stacked it (common.split_cache)
        folder = Path(cfg.cache_dir) / manifest.name / pipeline_key(cfg, task)
        stacked = split_file(folder, split, key)
    tensors = _from_stacked(read_stacked(stacked)) if stacked is not None else None
    if tensors is None:
        tensors = _load_split(manifest, split, cfg, task, site)
        if stacked is not None:
            write_stacked(stacked, _to_stacked(tensors))
    _SPLITS[key] = tensors
    while len(_SPLITS) > SPLITS_KEPT:
        _SPLITS.popitem(last=False)
    return tensors


def _to_stacked(t: SplitTensors) -> dict[str, Any]:
    skipped = [[c.case_id, c.path, c.reason] for c in t.skipped]
    return {"images": t.images, "masks": t.masks, "labels": t.labels, "livers": t.livers,
            "case_ids": list(t.case_ids), "skipped": skipped}  # fmt: skip


def _from_stacked(content: dict[str, Any] | None) -> SplitTensors | None:
    """A split from ``_to_stacked``'s content; ``None`` if it is not that (a cache miss)."""
    if content is None:
        return None
    try:
        tensors = SplitTensors(
            images=content["images"], masks=content["masks"], labels=content["labels"],
            case_ids=tuple(str(c) for c in content["case_ids"]),
            skipped=tuple(SkippedCase(str(a), str(b), str(c)) for a, b, c in content["skipped"]),
            livers=content["livers"],
        )  # fmt: skip
    except (KeyError, TypeError, ValueError):
        return None
    n = len(tensors.case_ids)
    parts = [tensors.images, tensors.masks, tensors.labels]
    parts += [tensors.livers] if tensors.livers is not None else []  # only livers may be None
    if all(isinstance(x, torch.Tensor) and len(x) == n for x in parts):
        return tensors
    return None


def _load_split(
    manifest: SiteManifest, split: str, cfg: DataConfig, task: str, site: str
) -> SplitTensors:
    """Run the deterministic pipeline on every case of a split, apply the bad-case policy
    to the cases that fail, and stack the rest."""
    cases = manifest.split(split)
    usable = [c for c in cases if c.case_id not in manifest.row_problems]
    records = [case_record(c, cfg.channels) for c in usable]
    transform = deterministic_transforms(cfg, task)
    dataset: Dataset
    if cfg.cache_dir:
        cache = Path(cfg.cache_dir) / manifest.name / pipeline_key(cfg, task)
        cache.mkdir(parents=True, exist_ok=True)
        dataset = PersistentDataset(records, transform=transform, cache_dir=cache)
    else:
        dataset = Dataset(records, transform=transform)
    index = {c.case_id: i for i, c in enumerate(usable)}
    items: list[dict[str, Any]] = []
    kept: list[str] = []
    skipped: list[SkippedCase] = []
    for case in cases:
        try:
            items.append(_load_case(manifest, case, dataset, index.get(case.case_id), site))
            kept.append(case.case_id)
        except BadCaseError as err:
            if cfg.on_bad_case != BadCasePolicy.SKIP:
                raise
            log.warning(
                "site %r: case %r left out (data.on-bad-case = skip): %s: %s",
                site,
                case.case_id,
                err.path,
                err.reason,
            )
            skipped.append(err.skipped)
    spatial = crop_size(cfg, task)
    if not items:
        empty = torch.zeros((0, len(cfg.channels), *spatial))
        return SplitTensors(
            empty, torch.zeros((0, 1, *spatial)), torch.zeros(0), (), tuple(skipped)
        )
    masks = torch.stack([(torch.as_tensor(it[MASK]) > 0.5).float() for it in items])
    return SplitTensors(
        images=torch.stack([torch.as_tensor(it[IMAGE]) for it in items]),
        masks=masks,
        labels=torch.tensor([it[LABEL] for it in items], dtype=torch.float32),
        case_ids=tuple(kept),
        skipped=tuple(skipped),
        livers=_livers(items, masks),
    )


def _livers(items: Sequence[dict[str, Any]], masks: torch.Tensor) -> torch.Tensor | None:
    """The cases' liver masks, thresholded as the lesion masks are; NaN for a case without
    one; None when no case has one."""
    if not any(LIVER in it for it in items):
        return None
    return torch.stack(
        [
            (torch.as_tensor(it[LIVER]) > 0.5).float()
            if LIVER in it
            else torch.full_like(mask, float("nan"))
            for it, mask in zip(items, masks, strict=True)
        ]
    )


def _load_case(
    manifest: SiteManifest, case: Case, dataset: Dataset, index: int | None, site: str
) -> dict[str, Any]:
    """One case through the pipeline, or the ``BadCaseError`` that says why it cannot be."""

    def bad(path: Path | str, reason: str) -> BadCaseError:
        return BadCaseError(site, case.case_id, str(path), reason, manifest.site_dir)

    if index is None:  # the manifest check rejected its row
        raise _row_error(manifest, case, manifest.row_problems[case.case_id], bad)
    columns = [f"image_{ch}" for ch in manifest.channels]
    paths = [*case.images, case.mask, case.liver_mask]
    for column, path in zip([*columns, MASK, LIVER], paths, strict=True):
        escape = manifest.escape(path) if path else None
        if escape is not None:  # a link changed since the manifest was checked
            raise bad(escape.path, f"{column}: {escape.message}")
    try:
        return dict(dataset[index])
    except Exception as e:  # MONAI wraps a transform's error: find the check that failed
        chain: list[BaseException] = [e]
        while chain[-1].__cause__ is not None:
            chain.append(chain[-1].__cause__)
        named = [c for c in chain if isinstance(c, CaseFileProblem)]
        if named:
            raise bad(named[0].path, named[0].reason) from e
        root = chain[-1]
        raise bad(case.images[0], f"preprocessing failed: {type(root).__name__}: {root}") from e


def _row_error(
    manifest: SiteManifest,
    case: Case,
    problems: Sequence[Problem],
    bad: Callable[[Path | str, str], BadCaseError],
) -> BadCaseError:
    """The error for a row the manifest check rejected: a missing file names that file;
    an empty cell, a bad label or a DICOMweb series that could not be retrieved names the
    manifest."""
    first = problems[0]
    where = f"{MANIFEST_NAME} row {case.row}"
    more = f"; and {len(problems) - 1} more problem(s) in the row" if len(problems) > 1 else ""
    path = _row_file(manifest, case, first.field)
    names_no_file = first.kind in (BadInput.PATH_ESCAPE, BadInput.SYMLINK_ESCAPE, *DICOMWEB_KINDS)
    if path is not None and not names_no_file and not path.exists():
        return bad(path, f"{first.field}: file not found ({where}){more}")
    return bad(manifest.path, f"{first.field}: {first.message} ({where}){more}")


def _row_file(manifest: SiteManifest, case: Case, field: str) -> Path | None:
    """The file a manifest column of a case names, if it names one."""
    if field == MASK:
        return case.mask
    if field == LIVER:
        return case.liver_mask
    channel = field.removeprefix("image_")
    if field.startswith("image_") and channel in manifest.channels:
        image = case.images[manifest.channels.index(channel)]
        return None if image == manifest.site_dir else image  # an empty cell names no file
    return None


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
    """Several sites' splits as one (the pooled, centralised baseline); a part without
    liver masks gives NaN livers where another part has them (None when none has)."""
    livers = None
    if any(p.livers is not None for p in parts):
        livers = torch.cat(
            [
                p.livers if p.livers is not None else torch.full_like(p.masks, float("nan"))
                for p in parts
            ]
        )
    return SplitTensors(
        images=torch.cat([p.images for p in parts]),
        masks=torch.cat([p.masks for p in parts]),
        labels=torch.cat([p.labels for p in parts]),
        case_ids=tuple(cid for p in parts for cid in p.case_ids),
        skipped=tuple(s for p in parts for s in p.skipped),
        livers=livers,
    )
