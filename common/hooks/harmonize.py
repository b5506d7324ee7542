"""Intensity harmonisation at site preprocessing: map each site's images to a common scale.

Statistics come from a site's own images (every case, never labels), per
channel, over foreground pixels: values strictly inside the CT window (0, 1),
so padding, air and clipped bone do not count.

- ``zscore``: subtract the site's mean, divide by its standard deviation.
- ``percentile``: map the site's 1st and 99th percentiles to 0 and 1.
- ``nyul``: federated histogram standardisation (Nyul, Udupa and Zhang, IEEE
  TMI 2000). Each training site sends only its landmark percentiles
  (``hooks.landmarks``); the server averages them, weighted by case count,
  into the shared standard scale; every site, including one that never
  trained, maps its own landmarks onto it piecewise-linearly (linear
  extrapolation beyond the outer landmarks).

For CT, HU are calibrated and fixed windowing is the baseline harmonisation;
these hooks matter where calibration, contrast dose or kVp move intensities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch

from common.hooks.base import Hook, HookError, HookPoint, Statistics

MIN_FOREGROUND = 100  # pixels per channel below which a site's statistics are meaningless
# |landmark| above which a site's statistics are not an intensity scale (windowed images lie
# in [0, 1]; a z-scoring hook before Nyul gives values of a few units)
MAX_LANDMARK = 1e6


def foreground(images: torch.Tensor, channel: int) -> np.ndarray:
    """One channel's pixels strictly inside the window, as float64."""
    values = images[:, channel].reshape(-1).double().numpy()
    inside = values[(values > 0.0) & (values < 1.0)]
    if inside.size < MIN_FOREGROUND:
        raise HookError(
            f"channel {channel} has {inside.size} pixel(s) inside the intensity window; "
            f"harmonisation needs at least {MIN_FOREGROUND}: check data.window-min/max"
        )
    return inside


def _per_channel(images: torch.Tensor, values: Sequence[float], name: str) -> torch.Tensor:
    if len(values) != images.shape[1]:
        raise HookError(
            f"{name}: statistics for {len(values)} channel(s), images have {images.shape[1]}"
        )
    shape = (1, images.shape[1]) + (1,) * (images.ndim - 2)
    return torch.tensor(values, dtype=images.dtype).view(shape)


class ZScore(Hook):
    """Per-site z-score standardisation of each channel."""

    name: ClassVar[str] = "zscore"
    points: ClassVar[tuple[HookPoint, ...]] = (HookPoint.PREPROCESS,)

    def fit(self, images: torch.Tensor) -> Statistics:
        fg = [foreground(images, c) for c in range(images.shape[1])]
        return {"mean": [float(v.mean()) for v in fg], "std": [float(v.std()) for v in fg]}

    def preprocess(
        self, images: torch.Tensor, fitted: Statistics, shared: Statistics
    ) -> torch.Tensor:
        mean = _per_channel(images, fitted["mean"], self.name)
        std = _per_channel(images, fitted["std"], self.name)
        if bool((std <= 0).any()):
            raise HookError(f"{self.name}: a channel has zero intensity spread")
        return (images - mean) / std


class Percentile(Hook):
    """Per-site percentile standardisation: 1st percentile -> 0, 99th -> 1."""

    name: ClassVar[str] = "percentile"
    points: ClassVar[tuple[HookPoint, ...]] = (HookPoint.PREPROCESS,)
    LOW, HIGH = 1.0, 99.0

    def fit(self, images: torch.Tensor) -> Statistics:
        fg = [foreground(images, c) for c in range(images.shape[1])]
        return {
            "low": [float(np.percentile(v, self.LOW)) for v in fg],
            "high": [float(np.percentile(v, self.HIGH)) for v in fg],
        }

    def preprocess(
        self, images: torch.Tensor, fitted: Statistics, shared: Statistics
    ) -> torch.Tensor:
        low = _per_channel(images, fitted["low"], self.name)
        high = _per_channel(images, fitted["high"], self.name)
        if bool((high <= low).any()):
            raise HookError(f"{self.name}: a channel's 99th percentile is not above its 1st")
        return (images - low) / (high - low)


def piecewise_linear(x: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Map ``source`` landmarks onto ``target`` linearly between landmarks and beyond them."""
    out = np.interp(x, source, target)
    lo_slope = (target[1] - target[0]) / (source[1] - source[0])
    hi_slope = (target[-1] - target[-2]) / (source[-1] - source[-2])
    below, above = x < source[0], x > source[-1]
    out[below] = target[0] + (x[below] - source[0]) * lo_slope
    out[above] = target[-1] + (x[above] - source[-1]) * hi_slope
    return out


class Nyul(Hook):
    """Federated histogram standardisation: only landmark percentiles leave a site."""

    name: ClassVar[str] = "nyul"
    points: ClassVar[tuple[HookPoint, ...]] = (HookPoint.PREPROCESS,)
    shares_statistics: ClassVar[bool] = True

    def fit(self, images: torch.Tensor) -> Statistics:
        pcts = list(self.cfg.hooks.landmarks)
        out: Statistics = {}
        for c in range(images.shape[1]):
            marks = np.percentile(foreground(images, c), pcts)
            out[f"landmarks-{c}"] = [float(v) for v in marks]
        return out

    def combine(self, stats: Sequence[tuple[float, Statistics]]) -> Statistics:
        """The shared scale: the sites' landmarks averaged, weighted by case count. Every
        site's weight must be finite and > 0 and its landmarks one strictly increasing
        vector of ``hooks.landmarks`` finite values per channel (keys ``landmarks-<c>``
        for channels of ``data.channels``), within +-``MAX_LANDMARK``."""
        if not stats:
            raise HookError(f"{self.name}: no training site sent landmarks")
        keys = set(stats[0][1])
        channels = {f"landmarks-{c}" for c in range(len(self.cfg.data.channels))}
        if keys != channels:
            raise HookError(
                f"{self.name}: landmark keys {sorted(map(str, keys))[:4]} are not "
                f"{sorted(channels)} (one per channel of data.channels)"
            )
        n_marks = len(self.cfg.hooks.landmarks)
        for weight, s in stats:
            if set(s) != keys:
                raise HookError(f"{self.name}: sites sent different landmark sets")
            if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
                raise HookError(f"{self.name}: a site's weight (n_cases) is {weight!r}")
            for key, marks in s.items():
                values = np.asarray(marks, dtype=float)
                if values.shape != (n_marks,) or not np.isfinite(values).all():
                    raise HookError(
                        f"{self.name}: {key} must be {n_marks} finite values, got {marks!r}"
                    )
                if np.abs(values).max() > MAX_LANDMARK:
                    raise HookError(
                        f"{self.name}: {key} has a value beyond +-{MAX_LANDMARK:g}: {marks!r}"
                    )
                if np.any(np.diff(values) <= 0):
                    raise HookError(f"{self.name}: {key} is not strictly increasing: {marks!r}")
        weights = np.array([w for w, _ in stats], dtype=float)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below
            out = {
                k: [float(v) for v in np.average([s[k] for _, s in stats], axis=0, weights=weights)]
                for k in sorted(keys)
            }
        if not all(math.isfinite(v) for marks in out.values() for v in marks):
            raise HookError(f"{self.name}: the combined scale is not finite (weights {weights})")
        return out

    def preprocess(
        self, images: torch.Tensor, fitted: Statistics, shared: Statistics
    ) -> torch.Tensor:
        out = images.clone()
        for c in range(images.shape[1]):
            key = f"landmarks-{c}"
            if key not in shared:
                raise HookError(
                    f"{self.name}: the server sent no standard scale for channel {c}; "
                    "the federation must gather landmarks before training"
                )
            source, target = np.asarray(fitted[key]), np.asarray(shared[key])
            if len(target) != len(source) or np.any(np.diff(target) <= 0):
                raise HookError(
                    f"{self.name}: the shared scale for channel {c} is not "
                    f"{len(source)} strictly increasing values: {np.round(target, 4).tolist()}"
                )
            if np.any(np.diff(source) <= 0):
                raise HookError(
                    f"{self.name}: channel {c} landmarks are not strictly increasing "
                    f"({np.round(source, 4).tolist()}); the site's images are nearly constant"
                )
            values = images[:, c].double().numpy()
            mapped = piecewise_linear(values.reshape(-1), source, target).reshape(values.shape)
            out[:, c] = torch.from_numpy(mapped).to(images.dtype)
        return out

    def describe(self) -> str:
        marks = ",".join(f"{p:g}" for p in self.cfg.hooks.landmarks)
        return f"nyul (landmarks {marks})"
