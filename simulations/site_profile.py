"""One hospital's parameters: ``SiteProfile`` and its ``BenignMix``, and what follows from them.

Every parameter carries its default and its valid values (a range or a closed set of
choices) in the field metadata, which the scenario check (``scenario_schema.SITE_RULES``)
reads; ``matrix_size`` and ``split_sizes`` derive the image matrix and the
train/val/test split counts from a site's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

KERNELS = ("soft", "standard", "sharp")
ROLES = ("train", "external")
FLASH_MAX_MM = 20.0  # flash-filling hemangiomas are small: never larger than this


@dataclass(frozen=True)
class BenignMix:
    """Relative weights of the benign lesion types (normalised when sampling)."""

    cyst: float = 0.25
    hemangioma: float = 0.45
    flash_hemangioma: float = 0.30

    def probabilities(self) -> tuple[float, float, float]:
        total = self.cyst + self.hemangioma + self.flash_hemangioma
        return (self.cyst / total, self.hemangioma / total, self.flash_hemangioma / total)


def _range(default: Any, low: float, high: float) -> Any:
    """A numeric parameter with its validated range."""
    return field(default=default, metadata={"range": (low, high)})


def _choice(default: str, choices: tuple[str, ...]) -> Any:
    """A parameter with a closed set of valid values."""
    return field(default=default, metadata={"choices": choices})


@dataclass(frozen=True)
class SiteProfile:
    """One hospital: scanner, protocol and case mix (units in the names; docs/phantom.md)."""

    name: str
    role: str = _choice("train", ROLES)
    n_cases: int = _range(150, 2, 100_000)
    test_fraction: float = _range(0.25, 0.0, 0.9)
    val_fraction: float = _range(0.2, 0.0, 0.9)  # of the training cases left after test
    # metadata written to the manifest (kvp also scales the iodine contrast)
    vendor: str = "generic"
    scanner_model: str = "ct-64"
    kvp: int = _range(120, 70, 150)
    # scanner
    kernel: str = _choice("standard", KERNELS)
    hu_scale: float = _range(1.0, 0.8, 1.2)
    hu_offset: float = _range(0.0, -50.0, 50.0)
    noise_sigma_hu: float = _range(16.0, 0.0, 60.0)
    dose_factor: float = _range(1.0, 0.1, 4.0)
    slice_thickness_mm: float = _range(2.5, 0.5, 10.0)
    pixel_spacing_mm: float = _range(1.5, 0.5, 3.0)
    fov_mm: float = _range(240.0, 100.0, 500.0)
    z_extent_mm: float = _range(48.0, 10.0, 300.0)
    bias_field: float = _range(0.0, 0.0, 0.5)
    # contrast timing (seconds after the start of injection) and patient motion
    arterial_delay_s: float = _range(35.0, 10.0, 60.0)
    portal_delay_s: float = _range(70.0, 40.0, 120.0)
    delayed_delay_s: float = _range(180.0, 120.0, 600.0)
    bolus_jitter_s: float = _range(4.0, 0.0, 15.0)
    motion_mm: float = _range(3.0, 0.0, 10.0)
    # case mix
    prevalence: float = _range(0.45, 0.0, 1.0)
    lesion_size_median_mm: float = _range(16.0, 5.0, 80.0)
    lesion_size_spread: float = _range(0.5, 0.0, 1.5)
    lesion_size_min_mm: float = _range(6.0, 4.0, 100.0)
    lesion_size_max_mm: float = _range(60.0, 5.0, 120.0)
    cirrhosis_fraction: float = _range(0.4, 0.0, 1.0)
    steatosis_fraction: float = _range(0.3, 0.0, 1.0)
    atypical_hcc_fraction: float = _range(0.4, 0.0, 1.0)
    capsule_fraction: float = _range(0.4, 0.0, 1.0)
    slow_hemangioma_fraction: float = _range(0.3, 0.0, 1.0)
    benign_mix: BenignMix = field(default_factory=BenignMix)

    @property
    def matrix_size(self) -> int:
        """Pixels per in-plane side: field of view over pixel spacing."""
        return matrix_size(self.fov_mm, self.pixel_spacing_mm)

    @property
    def split_sizes(self) -> SplitSizes:
        """Malignant cases, and test and val cases per label; see ``split_sizes``."""
        return split_sizes(
            self.n_cases, self.prevalence, self.test_fraction, self.val_fraction, self.role
        )


def matrix_size(fov_mm: float, pixel_spacing_mm: float) -> int:
    """Pixels per in-plane side: field of view over pixel spacing, at least 8."""
    return max(8, round(fov_mm / pixel_spacing_mm))


class SplitSizes(NamedTuple):
    """How many of a site's cases are malignant, and how many of each label (benign,
    malignant) are test and val; the rest are train."""

    n_cases: int
    n_malignant: int
    test: tuple[int, int]
    val: tuple[int, int]

    @property
    def train(self) -> tuple[int, int]:
        """Training cases per label (benign, malignant)."""
        benign, malignant = self.n_cases - self.n_malignant, self.n_malignant
        return (benign - self.test[0] - self.val[0], malignant - self.test[1] - self.val[1])


def split_sizes(
    n_cases: int, prevalence: float, test_fraction: float, val_fraction: float, role: str
) -> SplitSizes:
    """Malignant cases of a site, and how many of each label are test and val.

    Exactly round(prevalence x n_cases) cases are malignant. Of each label's count,
    round(fraction x count) cases go to the test split, fraction = ``test_fraction`` (1 at an
    external site); then round(``val_fraction`` x the label's cases left) go to the val
    split (none at an external site), and the rest to train. ``phantom.labels_and_splits``
    draws which cases, the scenario check uses the counts.
    """
    n_malignant = round(prevalence * n_cases)
    counts = (n_cases - n_malignant, n_malignant)
    external = role == "external"
    fraction = 1.0 if external else test_fraction
    test = (round(fraction * counts[0]), round(fraction * counts[1]))
    left = (counts[0] - test[0], counts[1] - test[1])
    val = (0, 0) if external else (round(val_fraction * left[0]), round(val_fraction * left[1]))
    return SplitSizes(n_cases, n_malignant, test, val)
