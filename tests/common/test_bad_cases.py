"""A site with one bad case: a named error with ``data.on-bad-case = fail``, a counted,
named omission with ``skip``; neither cache hides a file that changed or keeps a failure.

Each kind of bad case is made by damaging case ``<site>-000`` (a train case) of a
small synthetic site (``tests/conftest.py``); the expected texts are the ones
docs/bad-cases.md shows.
"""

from __future__ import annotations

import csv
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from client.app import evaluate as evaluate_handler
from client.app import train as train_handler
from client.site import open_site, site_evaluate
from common import data as data_module
from common.badcases import (
    MAX_LISTED,
    SKIPPED_CASE_IDS,
    SKIPPED_CASE_REASONS,
    SKIPPED_CASES,
    BadCaseError,
    NoUsableCasesError,
    SkippedCase,
    skipped_fields,
)
from common.config import RunConfig
from common.data import load_split
from common.manifest import ManifestError, open_manifest, read_manifest
from common.models import build_model
from common.site_files import inspect_site
from common.summary import SiteSummary
from common.weights import to_arrays
from server.designs import Evaluation
from tests.conftest import write_nifti
from tests.dicom_series import make_mixed_site

SPACING = (1.5, 1.5, 2.5)
FIX = (
    'Fix the case\'s file or manifest row, or set data.on-bad-case = "skip" to leave bad '
    "cases out; run `hepafed site check {site}` to list every problem"
)


@pytest.fixture(autouse=True)
def _fresh_split_cache() -> None:
    """Each test starts with an empty in-memory split cache (it is per process)."""
    data_module._SPLITS.clear()


def _cfg(policy: str = "fail", **kw: object) -> RunConfig:
    return RunConfig().replace(
        {
            "data.roi-size": 32,
            "data.context-mm": 0.0,
            "train.local-epochs": 1,
            "data.on-bad-case": policy,
            **kw,
        }
    )


def _image(site: Path, channel: str = "arterial", case: int = 0) -> Path:
    return site / f"images/{site.name}-{case:03d}_{channel}.nii.gz"


def _mask(site: Path, case: int = 0) -> Path:
    return site / f"masks/{site.name}-{case:03d}.nii.gz"


def _set_cell(site: Path, column: str, value: str, case: int = 0) -> None:
    path = site / "manifest.csv"
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[case][column] = value
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _voxels(path: Path) -> np.ndarray:
    image: Any = nib.load(str(path))
    return np.asarray(image.dataobj)


def _touch_later(path: Path) -> None:
    """A modification time clearly after the first load, whatever the file system's clock."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


# ---- the kinds of bad case -------------------------------------------------------------------
# kind -> (damage, the file the error names, what it says is wrong)


def _missing(site: Path) -> None:
    _image(site).unlink()


def _garbage(site: Path) -> None:
    _image(site).write_bytes(b"this is not a NIfTI file\n" * 40)


def _truncated(site: Path) -> None:
    raw = _image(site).read_bytes()
    _image(site).write_bytes(raw[:-40])  # the gzip stream loses its end


def _nan(site: Path) -> None:
    arr = _voxels(_image(site)).astype(np.float32)
    arr[1, 2, 0], arr[3, 4, 0], arr[5, 6, 0] = np.nan, np.inf, -np.inf
    write_nifti(_image(site), arr, SPACING)


def _volume(site: Path) -> None:
    write_nifti(_image(site), np.zeros((48, 48, 5), np.int16), SPACING)


def _other_grid(site: Path) -> None:
    write_nifti(_image(site, "portal"), np.zeros((40, 40, 1), np.int16), SPACING)


def _components(site: Path) -> None:
    write_nifti(_image(site), np.zeros((48, 48, 1, 2), np.int16), SPACING)


def _label_7(site: Path) -> None:
    _set_cell(site, "label", "7")


def _empty_cell(site: Path) -> None:
    _set_cell(site, "image_arterial", "")


def _missing_mask(site: Path) -> None:
    _mask(site).unlink()


def _empty_mask(site: Path) -> None:
    write_nifti(_mask(site), np.zeros((48, 48, 1), np.uint8), SPACING)


def _mask_values(site: Path) -> None:
    arr = _voxels(_mask(site)).astype(np.uint8) * 2
    write_nifti(_mask(site), arr, SPACING)


def _liver(site: Path, case: int = 0) -> Path:
    return site / f"livers/{site.name}-{case:03d}.nii.gz"


def _with_liver(site: Path, voxels: np.ndarray | None, affine: np.ndarray | None = None) -> None:
    """Give case -000 (only) a liver mask: ``voxels`` on ``affine`` (default: the site's
    grid), or a cell naming a file that is not there (None)."""
    if voxels is not None:
        _liver(site).parent.mkdir(parents=True, exist_ok=True)
        grid = np.diag([*SPACING, 1.0]) if affine is None else affine
        nib.save(nib.Nifti1Image(voxels, grid), str(_liver(site)))
    _set_cell(site, "liver_mask", str(_liver(site).relative_to(site)))


def _missing_liver(site: Path) -> None:
    _with_liver(site, None)


def _liver_other_grid(site: Path) -> None:
    shifted = np.diag([*SPACING, 1.0])
    shifted[:3, 3] = (30.0, 0.0, 0.0)  # 20 voxels to the side
    _with_liver(site, _voxels(_mask(site)), shifted)


def _liver_values(site: Path) -> None:
    _with_liver(site, _voxels(_mask(site)) * 3)


ROW = "(manifest.csv row 1)"
KINDS: dict[str, tuple[Callable[[Path], None], Callable[[Path], Path], str]] = {
    "missing-file": (_missing, _image, f"image_arterial: file not found {ROW}"),
    "garbage-bytes": (
        _garbage,
        _image,
        "image_arterial: unreadable image: ImageFileError: File {file} is not a gzip file",
    ),
    "truncated-gzip": (
        _truncated,
        _image,
        "image_arterial: unreadable image: EOFError: Compressed file ended before the "
        "end-of-stream marker was reached",
    ),
    "nan-inf-voxels": (_nan, _image, "image_arterial: 3 NaN/Inf voxel(s)"),
    "volume-in-2d": (
        _volume,
        _image,
        "image_arterial: shape (48, 48, 5) is a volume, but data.spatial-dims = 2 expects "
        "single slices (X, Y) or (X, Y, 1)",
    ),
    "other-grid": (
        _other_grid,
        lambda s: _image(s, "portal"),
        "shape: channels and mask differ in shape: image_arterial (48, 48, 1), "
        "image_portal (40, 40, 1), image_delayed (48, 48, 1), mask (48, 48, 1)",
    ),
    "components": (
        _components,
        _image,
        "image_arterial: has 2 components in shape (48, 48, 1, 2); give one file per "
        "channel (multi-phase series are separate columns)",
    ),
    "label-7": (
        _label_7,
        lambda s: s / "manifest.csv",
        f"label: '7' is out of range: use 0 (benign) or 1 (malignant) {ROW}",
    ),
    "empty-image-cell": (
        _empty_cell,
        lambda s: s / "manifest.csv",
        f"image_arterial: empty: give the image path for this channel {ROW}",
    ),
    "missing-mask": (_missing_mask, _mask, f"mask: file not found {ROW}"),
    "empty-mask": (_empty_mask, _mask, "mask: is empty: the case has no lesion voxel"),
    "non-binary-mask": (_mask_values, _mask, "mask: values [0.0, 2.0] are not binary 0/1"),
    # the optional liver mask (case -000 only has one) is judged as the lesion mask is
    "missing-liver-mask": (_missing_liver, _liver, f"liver_mask: file not found {ROW}"),
    "liver-mask-other-grid": (
        _liver_other_grid,
        _liver,
        "liver_mask: not on image_arterial's grid: origin (30, 0, 0) mm is 30 mm ((20, 0, 0) "
        "voxels) from (0, 0, 0) (tolerance 0.5 voxel); the voxels would not line up with "
        "image_arterial's, so save the file on its image's grid (same affine)",
    ),
    "non-binary-liver-mask": (
        _liver_values,
        _liver,
        "liver_mask: values [0.0, 3.0] are not binary 0/1",
    ),
}


def _damaged(site_factory: Callable[..., Path], kind: str) -> tuple[Path, str, str]:
    """A 6-case site (4 train, 2 test) with case -000 damaged; its file and reason."""
    site = site_factory(n_cases=6)
    damage, file_of, reason = KINDS[kind]
    damage(site)
    file = str(file_of(site))
    return site, file, reason.format(file=file)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fail_raises_the_named_error(site_factory: Callable[..., Path], kind: str) -> None:
    site, file, reason = _damaged(site_factory, kind)
    cfg = _cfg("fail")
    manifest = open_manifest(site, cfg.data.channels, cfg.task)
    with pytest.raises(BadCaseError) as err:
        load_split(manifest, "train", cfg.data, cfg.task)
    e = err.value
    assert (e.site, e.case_id, e.path, e.reason) == ("site-a", "site-a-000", file, reason)
    assert str(e) == f"site 'site-a', case 'site-a-000': {file}: {reason}. " + FIX.format(site=site)
    # the error survives pickling (a simulated ClientApp may run in another process)
    assert str(pickle.loads(pickle.dumps(e))) == str(e)
    # the test split holds no bad case: it loads
    assert len(load_split(manifest, "test", cfg.data, cfg.task)) == 2


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_skip_leaves_the_case_out_and_names_it(
    site_factory: Callable[..., Path], kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    site, file, reason = _damaged(site_factory, kind)
    cfg = _cfg("skip")
    manifest = open_manifest(site, cfg.data.channels, cfg.task)
    with caplog.at_level(logging.WARNING, logger="hepafed.progress"):
        split = load_split(manifest, "train", cfg.data, cfg.task)
    assert split.case_ids == ("site-a-001", "site-a-003", "site-a-004")
    assert len(split) == 3 and split.images.shape[0] == 3 and split.labels.shape == (3,)
    assert split.skipped == (SkippedCase("site-a-000", file, reason),)
    assert torch.isfinite(split.images).all()
    assert (
        f"site 'site-a': case 'site-a-000' left out (data.on-bad-case = skip): {file}: {reason}"
        in caplog.messages
    )


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_site_check_names_the_same_case(site_factory: Callable[..., Path], kind: str) -> None:
    """`hepafed site check` (inspect_site) and the loader agree on what is bad."""
    site, _, _ = _damaged(site_factory, kind)
    _, problems = inspect_site(site, ("arterial", "portal", "delayed"), "lesion-malignancy")
    assert problems and {p.case_id for p in problems} == {"site-a-000"}


def test_segmentation_needs_the_mask_too(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=6)
    _missing_mask(site)
    for policy in ("fail", "skip"):
        cfg = _cfg(policy, task="lesion-segmentation")
        manifest = open_manifest(site, cfg.data.channels, cfg.task)
        if policy == "fail":
            with pytest.raises(BadCaseError, match="mask: file not found"):
                load_split(manifest, "train", cfg.data, cfg.task)
        else:
            split = load_split(manifest, "train", cfg.data, cfg.task)
            assert len(split) == 3 and split.skipped[0].path == str(_mask(site))


def test_label_7_is_bad_for_segmentation_too(site_factory: Callable[..., Path]) -> None:
    """As `hepafed site check` says: a label cell that is given must be 0 or 1."""
    site = site_factory(n_cases=6)
    _label_7(site)
    cfg = _cfg("skip", task="lesion-segmentation")
    manifest = open_manifest(site, cfg.data.channels, cfg.task)
    assert len(load_split(manifest, "train", cfg.data, cfg.task)) == 3


def test_every_case_bad_is_an_error_not_an_empty_split(
    site_factory: Callable[..., Path],
) -> None:
    site = site_factory(n_cases=6)
    for case in (0, 1, 3, 4):  # the train cases
        _image(site, case=case).unlink()
    cfg = _cfg("skip")
    manifest = open_manifest(site, cfg.data.channels, cfg.task)
    with pytest.raises(NoUsableCasesError) as err:
        load_split(manifest, "train", cfg.data, cfg.task)
    assert [s.case_id for s in err.value.skipped] == [
        "site-a-000",
        "site-a-001",
        "site-a-003",
        "site-a-004",
    ]
    text = str(err.value)
    assert text.startswith("site 'site-a': all 4 case(s) of split 'train' are bad")
    assert "case 'site-a-000'" in text and "and 1 more" in text
    assert text.endswith(f"run `hepafed site check {site}` to list every problem")
    assert str(pickle.loads(pickle.dumps(err.value))) == text
    # again from the in-memory cache: still an error
    with pytest.raises(NoUsableCasesError):
        load_split(manifest, "train", cfg.data, cfg.task)
    assert len(load_split(manifest, "test", cfg.data, cfg.task)) == 2


def test_all_cases_of_a_site_only_fail_when_none_is_left(
    site_factory: Callable[..., Path],
) -> None:
    """``split = "all"`` (a site that never trained): a split that is all bad is fine
    while other splits still have cases."""
    site = site_factory(n_cases=8, splits=("train", "train", "test", "val"))
    for case in (3, 7):  # the val cases
        _image(site, case=case).write_bytes(b"garbage")
    cfg = _cfg("skip")
    s = open_site({"site-dir": str(site)}, cfg)
    every = s.split("all", cfg)
    assert len(every) == 6 and [x.case_id for x in every.skipped] == ["site-a-003", "site-a-007"]
    with pytest.raises(NoUsableCasesError, match="split 'val'"):
        s.split("val", cfg)


def test_table_problems_still_reject_the_whole_manifest(
    site_factory: Callable[..., Path],
) -> None:
    site = site_factory(n_cases=6)
    _set_cell(site, "case_id", "site-a-001")  # a duplicate id is not one case's problem
    with pytest.raises(ManifestError, match="duplicate"):
        open_manifest(site, ("arterial", "portal", "delayed"), "lesion-malignancy")


def test_read_manifest_stays_strict(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=6)
    _missing(site)
    with pytest.raises(ManifestError, match="file not found"):
        read_manifest(site, ("arterial", "portal", "delayed"), "lesion-malignancy")
    manifest = open_manifest(site, ("arterial", "portal", "delayed"), "lesion-malignancy")
    assert set(manifest.row_problems) == {"site-a-000"}


# ---- caches ----------------------------------------------------------------------------------


@pytest.mark.parametrize("disk_cache", [False, True], ids=["memory", "memory+disk"])
def test_a_file_that_becomes_corrupt_is_not_served_from_a_cache(
    site_factory: Callable[..., Path], tmp_path: Path, disk_cache: bool
) -> None:
    site = site_factory(n_cases=6)
    extra = {"data.cache-dir": str(tmp_path / "cache")} if disk_cache else {}
    cfg = _cfg("fail", **extra)
    manifest = open_manifest(site, cfg.data.channels, cfg.task)
    good = load_split(manifest, "train", cfg.data, cfg.task)
    cached = sorted((tmp_path / "cache").rglob("*.pt")) if disk_cache else []
    assert len(cached) == (4 if disk_cache else 0)
    stacked = sorted((tmp_path / "cache").rglob("*.split"))  # common.split_cache
    assert len(stacked) == (1 if disk_cache else 0)
    original = _image(site).read_bytes()
    _garbage(site)
    _touch_later(_image(site))
    for _ in range(2):  # the failure is not cached: the second load fails the same way
        with pytest.raises(BadCaseError, match="unreadable image"):
            load_split(manifest, "train", cfg.data, cfg.task)
    if disk_cache:  # nothing was written for the corrupt case, nor for its failed split
        assert sorted((tmp_path / "cache").rglob("*.pt")) == cached
        assert sorted((tmp_path / "cache").rglob("*.split")) == stacked
    _image(site).write_bytes(original)
    _touch_later(_image(site))
    again = load_split(manifest, "train", cfg.data, cfg.task)
    assert again.case_ids == good.case_ids and torch.equal(again.images, good.images)


def test_a_skip_is_cached_only_until_the_file_is_fixed(
    site_factory: Callable[..., Path],
) -> None:
    site = site_factory(n_cases=6)
    original = _image(site).read_bytes()
    _garbage(site)
    cfg = _cfg("skip")
    manifest = open_manifest(site, cfg.data.channels, cfg.task)
    first = load_split(manifest, "train", cfg.data, cfg.task)
    assert len(first) == 3 and load_split(manifest, "train", cfg.data, cfg.task) is first
    # the policy is part of the cache key: "fail" on the same files raises
    fail = _cfg("fail")
    with pytest.raises(BadCaseError):
        load_split(manifest, "train", fail.data, fail.task)
    _image(site).write_bytes(original)
    _touch_later(_image(site))
    fixed = load_split(manifest, "train", cfg.data, cfg.task)
    assert len(fixed) == 4 and fixed.skipped == ()


def test_a_missing_file_is_a_named_error_even_after_a_cached_load(
    site_factory: Callable[..., Path], tmp_path: Path
) -> None:
    site = site_factory(n_cases=6)
    cfg = _cfg("fail", **{"data.cache-dir": str(tmp_path / "cache")})
    s = open_site({"site-dir": str(site)}, cfg)
    assert len(s.split("train", cfg)) == 4
    _missing(site)
    s = open_site({"site-dir": str(site)}, cfg)  # a ClientApp opens its site per message
    with pytest.raises(BadCaseError, match="image_arterial: file not found"):
        s.split("train", cfg)


def test_a_dicom_slice_rewritten_in_place_is_read_again(tmp_path: Path) -> None:
    """A series folder's own modification time does not change when a slice is
    overwritten; the cache key has every slice's size and time."""
    site = make_mixed_site(tmp_path, n_pairs=1)
    cfg = _cfg("fail", **{"data.channels": "ct", "data.spatial-dims": 3, "data.roi-size": 16})
    manifest = open_manifest(site, cfg.data.channels, cfg.task)
    assert len(load_split(manifest, "train", cfg.data, cfg.task)) == 2
    folder = site / "dicom/case0"
    before = folder.stat().st_mtime_ns
    (folder / "slice002.dcm").write_bytes(b"not dicom at all")
    _touch_later(folder / "slice002.dcm")
    assert folder.stat().st_mtime_ns == before
    with pytest.raises(BadCaseError) as err:
        load_split(manifest, "train", cfg.data, cfg.task)
    assert err.value.case_id == "dcm-0" and err.value.path == str(folder)


# ---- what a site reports ---------------------------------------------------------------------


def _context(site: Path) -> Context:
    return Context(
        run_id=1, node_id=0, node_config={"site-dir": str(site)}, state=RecordDict(), run_config={}
    )


def _message(cfg: RunConfig, kind: str, extra: dict[str, object]) -> Message:
    config = ConfigRecord({**cfg.to_flat(), **extra})  # type: ignore[dict-item]
    arrays = to_arrays(build_model(cfg))
    content = RecordDict({"arrays": arrays, "config": config})
    return Message(content, dst_node_id=0, message_type=kind)


@pytest.mark.usefixtures("flower_task")
def test_train_reply_carries_the_skipped_count(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=6)
    _nan(site)
    cfg = _cfg("skip")
    reply = train_handler(
        _message(cfg, MessageType.TRAIN, {"server-round": 1, "share": "shared"}), _context(site)
    )
    metrics = reply.content["metrics"]
    assert metrics[SKIPPED_CASES] == 1
    assert metrics["num-examples"] == 3.0  # the cases trained on, not the manifest's rows
    assert isinstance(reply.content["arrays"], ArrayRecord)


@pytest.mark.usefixtures("flower_task")
def test_train_reply_without_bad_cases_says_zero(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=6)
    reply = train_handler(
        _message(_cfg("skip"), MessageType.TRAIN, {"server-round": 1, "share": "shared"}),
        _context(site),
    )
    assert reply.content["metrics"][SKIPPED_CASES] == 0
    assert reply.content["metrics"]["num-examples"] == 4.0


@pytest.mark.usefixtures("flower_task")
def test_fail_policy_training_raises_the_named_error(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=6)
    _garbage(site)
    cfg = _cfg("fail")
    msg = _message(cfg, MessageType.TRAIN, {"server-round": 1, "share": "shared"})
    with pytest.raises(BadCaseError) as err:
        train_handler(msg, _context(site))
    assert err.value.case_id == "site-a-000" and err.value.path == str(_image(site))
    assert str(err.value).startswith(f"site 'site-a', case 'site-a-000': {_image(site)}: ")


@pytest.mark.usefixtures("flower_task")
def test_evaluation_summary_counts_and_names_skipped_cases(
    site_factory: Callable[..., Path],
) -> None:
    site = site_factory(n_cases=9)  # test cases: -002, -005, -008
    _mask(site, 5).unlink()
    cfg = _cfg("skip")
    s = open_site({"site-dir": str(site)}, cfg)
    summary, _ = site_evaluate(s, to_arrays(build_model(cfg)), cfg)
    assert (summary.n, summary.skipped, summary.skipped_ids) == (2, 1, ("site-a-005",))
    # the wire: the count in the MetricRecord, the ids next to it in the site record
    record = summary.to_record()
    assert record[SKIPPED_CASES] == 1 and SKIPPED_CASE_IDS not in record
    back = SiteSummary.from_record(record, skipped_ids=["site-a-005"])
    assert (back.skipped, back.skipped_ids) == (1, ("site-a-005",))
    # the run records (JSON) keep both
    e = Evaluation("global", "site-a", "internal", "test", summary)
    assert Evaluation.from_dict(e.to_dict()).summary.skipped_ids == ("site-a-005",)
    reply = evaluate_handler(
        _message(cfg, MessageType.EVALUATE, {"server-round": 0}), _context(site)
    )
    assert reply.content["metrics"][SKIPPED_CASES] == 1
    # a summary without skips says nothing extra on the wire
    assert SKIPPED_CASES not in SiteSummary(n=3).to_record()


def test_listed_ids_are_capped_but_the_count_is_not() -> None:
    skipped = [SkippedCase(f"c{i:02d}", f"/x/{i}.nii.gz", "image_arterial: ...") for i in range(25)]
    fields = skipped_fields(skipped)
    assert fields[SKIPPED_CASE_IDS] == [f"c{i:02d}" for i in range(MAX_LISTED)]
    # no absolute path leaves a site: without the site folder, a file goes by its name
    assert fields[SKIPPED_CASE_REASONS][0] == "0.nii.gz: image_arterial: ..."
    summary = SiteSummary.from_record(
        {"n": 10, SKIPPED_CASES: 25}, skipped_ids=[s.case_id for s in skipped]
    )
    assert summary.skipped == 25 and len(summary.skipped_ids) == MAX_LISTED
