"""A split's stacked tensors on disk (``common.split_cache``): what a deployed site's next
task process reads instead of every case, and when it must not."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import common.data as data
from common.config import RunConfig
from common.manifest import open_manifest
from common.split_cache import SUFFIX


def _cfg(cache: Path, policy: str = "skip") -> RunConfig:
    return RunConfig().replace(
        {"data.roi-size": 32, "data.context-mm": 0.0, "data.on-bad-case": policy,
         "data.cache-dir": str(cache)}
    )  # fmt: skip


def _split_files(cache: Path) -> list[Path]:
    return sorted(cache.rglob(f"*{SUFFIX}"))


def _new_process(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What another task process of the site starts with: no split in memory. Returns
    the splits it loads from their cases."""
    data._SPLITS.clear()
    loaded: list[str] = []
    load = data._load_split

    def counted(manifest: Any, split: str, *a: Any) -> Any:
        loaded.append(split)
        return load(manifest, split, *a)

    monkeypatch.setattr(data, "_load_split", counted)
    return loaded


def _first_load(site: Path, tmp_path: Path) -> tuple[RunConfig, Any, data.SplitTensors]:
    """The config, manifest and train split of a site's first load, cached under tmp_path."""
    cfg = _cfg(tmp_path / "cache")
    manifest = open_manifest(site, cfg.data.channels, cfg.task)
    return cfg, manifest, data.load_split(manifest, "train", cfg.data, cfg.task)


def test_the_next_process_reads_the_stacked_split_not_its_cases(
    site_factory: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = site_factory(n_cases=8)
    (site / f"images/{site.name}-000_arterial.nii.gz").write_bytes(b"not a NIfTI file\n" * 40)
    cfg = _cfg(tmp_path / "cache")
    manifest = open_manifest(site, cfg.data.channels, cfg.task)
    loaded = _new_process(monkeypatch)
    first = data.load_split(manifest, "train", cfg.data, cfg.task)
    assert loaded == ["train"] and first.skipped  # the bad case was left out and listed
    files = _split_files(tmp_path / "cache")
    assert len(files) == 1 and files[0].name.startswith("train-")
    assert files[0].stat().st_mode & 0o777 == 0o600

    loaded = _new_process(monkeypatch)
    again = data.load_split(manifest, "train", cfg.data, cfg.task)
    assert loaded == []  # one file, not the cases
    assert again.case_ids == first.case_ids and again.skipped == first.skipped
    for name in ("images", "masks", "labels"):
        assert torch.equal(getattr(again, name), getattr(first, name))


def test_a_changed_file_or_setting_is_loaded_again_and_replaces_the_old_file(
    site_factory: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = site_factory(n_cases=6)
    cfg, manifest, _ = _first_load(site, tmp_path)
    before = _split_files(tmp_path / "cache")
    image = site / f"images/{site.name}-000_arterial.nii.gz"
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    loaded = _new_process(monkeypatch)
    data.load_split(manifest, "train", cfg.data, cfg.task)
    assert loaded == ["train"]
    after = _split_files(tmp_path / "cache")
    assert len(after) == 1 and after != before  # the stale split's file is gone
    loaded = _new_process(monkeypatch)  # the bad-case policy is part of the key
    data.load_split(manifest, "train", _cfg(tmp_path / "cache", "fail").data, cfg.task)
    assert loaded == ["train"]


def test_a_damaged_or_hostile_file_is_a_cache_miss_never_code(
    site_factory: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, manifest, good = _first_load(site_factory(n_cases=6), tmp_path)
    (cached,) = _split_files(tmp_path / "cache")
    cached.write_bytes(cached.read_bytes()[:100])  # a torn file
    loaded = _new_process(monkeypatch)
    assert data.load_split(manifest, "train", cfg.data, cfg.task).case_ids == good.case_ids
    assert loaded == ["train"]

    ran = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (ran,))

    with open(cached, "wb") as f:
        torch.save({"images": Payload()}, f, pickle_module=pickle)
    loaded = _new_process(monkeypatch)
    again = data.load_split(manifest, "train", cfg.data, cfg.task)
    assert loaded == ["train"] and not ran.exists()
    assert torch.equal(again.images, good.images)
    assert data._from_stacked({"images": torch.zeros(2), "masks": torch.zeros(3),
                               "labels": torch.zeros(2), "livers": None,
                               "case_ids": ["a", "b"], "skipped": []}) is None  # fmt: skip


def test_without_a_cache_folder_nothing_is_written(
    site_factory: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = site_factory(n_cases=6)
    cfg = RunConfig().replace({"data.roi-size": 32, "data.context-mm": 0.0})
    monkeypatch.chdir(tmp_path)
    data._SPLITS.clear()
    data.load_split(open_manifest(site, cfg.data.channels, cfg.task), "train", cfg.data, cfg.task)
    assert _split_files(tmp_path) == []


@pytest.mark.parametrize("split", ["../../escape", "train/..", "Train", "", "test\x00"])
def test_a_split_name_that_is_not_a_plain_name_is_never_a_path(split: str) -> None:
    from common.split_cache import split_file

    with pytest.raises(ValueError, match="not a path"):
        split_file(Path("/cache/site/pipe"), split, ("key",))
    assert split_file(Path("/c"), "val", ("key",)).parent == Path("/c")


def test_one_file_for_a_split_named_as_enum_or_text_and_per_version_of_the_code(
    site_factory: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from common import split_cache
    from common.keys import Split

    cfg, manifest, _ = _first_load(site_factory(n_cases=6), tmp_path)  # "train"
    loaded = _new_process(monkeypatch)
    data.load_split(manifest, Split.TRAIN, cfg.data, cfg.task)  # the enum: the same file
    assert loaded == [] and len(_split_files(tmp_path / "cache")) == 1
    key = ("k",)
    name = split_cache.split_file(Path("/c"), "train", key)
    monkeypatch.setattr(split_cache, "code_version", lambda: "another release")
    assert split_cache.split_file(Path("/c"), "train", key) != name  # never its tensors


def test_a_disk_that_cannot_take_the_file_costs_only_speed_and_stale_temporaries_go(
    site_factory: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from common import split_cache

    site = site_factory(n_cases=6)
    cfg = _cfg(tmp_path / "cache")
    manifest = open_manifest(site, cfg.data.channels, cfg.task)
    mkstemp = split_cache.tempfile.mkstemp

    def full_disk(*_a: Any, **_k: Any) -> Any:
        raise OSError(28, "No space left on device")

    data._SPLITS.clear()
    monkeypatch.setattr(split_cache.tempfile, "mkstemp", full_disk)
    assert len(data.load_split(manifest, "train", cfg.data, cfg.task)) > 0
    assert _split_files(tmp_path / "cache") == []
    monkeypatch.setattr(split_cache.tempfile, "mkstemp", mkstemp)

    folder = next((tmp_path / "cache").rglob("*.pt")).parent  # the pipeline's folder
    killed, writing = folder / "train-0.splitabc.tmp", folder / "train-1.splitdef.tmp"
    for f in (killed, writing):
        f.write_bytes(b"part of a split")
    os.utime(killed, (0, os.path.getmtime(killed) - 2 * split_cache.STALE_TMP_S))
    data._SPLITS.clear()
    data.load_split(manifest, "train", cfg.data, cfg.task)
    assert len(_split_files(tmp_path / "cache")) == 1
    assert not killed.exists() and writing.exists()  # another writer's may be in progress
    no_images = {"images": None, "masks": torch.zeros(1), "labels": torch.zeros(1),
                 "livers": None, "case_ids": ["a"], "skipped": []}  # fmt: skip
    assert data._from_stacked(no_images) is None  # only livers may be None
