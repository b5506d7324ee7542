"""Shared fixtures: tiny synthetic sites written in the site data contract."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

import nibabel as nib
import numpy as np
import pytest
from hypothesis import settings

# Property tests explore the same examples on every run, so CI is reproducible; run with
# HYPOTHESIS_PROFILE=explore to search afresh. No per-example deadline: these tests check
# values, not speed, and a loaded machine must not fail them.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

PHASES = ("arterial", "portal", "delayed")


def write_nifti(path: Path, array: np.ndarray, spacing: tuple[float, ...]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(array, affine), str(path))


def make_site(
    root: Path,
    name: str,
    n_cases: int = 24,
    seed: int = 0,
    size: int = 48,
    spacing: float = 1.5,
    contrast: float = 80.0,
    splits: tuple[str, ...] = ("train", "train", "test"),
) -> Path:
    """A site whose malignant lesions are bright in the arterial phase, dark later."""
    rng = np.random.default_rng(seed)
    site = root / name
    rows = []
    yy, xx = np.mgrid[:size, :size]
    for i in range(n_cases):
        cid = f"{name}-{i:03d}"
        label = i % 2
        cy, cx = rng.integers(size // 3, 2 * size // 3, size=2)
        r = rng.uniform(3, 7)
        lesion = ((yy - cy) ** 2 + (xx - cx) ** 2) <= r**2
        row = {"case_id": cid}
        for p, phase in enumerate(PHASES):
            img = 60.0 + rng.normal(0, 10, (size, size))
            sign = 1.0 if p == 0 else -0.6
            img[lesion] += (contrast * sign) if label else -20.0
            path = f"images/{cid}_{phase}.nii.gz"
            write_nifti(site / path, img.astype(np.int16)[..., None], (spacing, spacing, 2.5))
            row[f"image_{phase}"] = path
        write_nifti(
            site / f"masks/{cid}.nii.gz",
            lesion.astype(np.uint8)[..., None],
            (spacing, spacing, 2.5),
        )
        row.update(
            mask=f"masks/{cid}.nii.gz",
            label=str(label),
            split=splits[i % len(splits)],
            vendor="test-vendor",
        )
        rows.append(row)
    with (site / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return site


@pytest.fixture
def site_factory(tmp_path: Path) -> Callable[..., Path]:
    """Build synthetic sites under a temporary root (``factory(name, **kw)``)."""

    def factory(name: str = "site-a", **kw: object) -> Path:
        return make_site(tmp_path / "sites", name, **kw)  # type: ignore[arg-type]

    return factory


@pytest.fixture
def flower_task() -> object:
    """Flower needs a task identity before a Message can be built outside a run."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    return TaskIdentity
