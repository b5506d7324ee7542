"""One MRI hospital's parameters: ``MriSiteProfile``, its case-mix tables, and what follows.

Like ``site_profile.SiteProfile`` for the CT phantom: every parameter carries its default
and its valid values (a range or a closed set of choices) in the field metadata, which the
MRI scenario check (``mri_scenario``) reads. ``class_counts`` and ``split_counts`` give the
exact number of cases of each class and split (labels: 0 benign, 1 primary malignant,
2 metastasis).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from simulations.mri_tissue import AGENTS
from simulations.site_profile import ROLES, matrix_size

CLASSES = ("benign", "primary", "metastasis")  # label 0, 1, 2
SUBTYPES = {  # the subtypes of each class, in label order
    "benign": ("cyst", "hemangioma", "fnh"),
    "primary": ("hcc", "icc"),
    "metastasis": ("metastasis",),
}
FIELD_STRENGTHS = (1.5, 3.0)
HBP_MIN_DELAY_S = 600.0  # a late phase at least this late is hepatobiliary (gadoxetate)


def _range(default: Any, low: float, high: float) -> Any:
    """A numeric parameter with its validated range."""
    return field(default=default, metadata={"range": (low, high)})


def _choice(default: Any, choices: tuple[Any, ...]) -> Any:
    """A parameter with a closed set of valid values."""
    return field(default=default, metadata={"choices": choices})


class _Mix:
    """Relative weights (normalised when drawing); the fields name the choices."""

    def weights(self) -> tuple[float, ...]:
        return tuple(float(getattr(self, f.name)) for f in fields(self))  # type: ignore[arg-type]

    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self))  # type: ignore[arg-type]


@dataclass(frozen=True)
class ClassMix(_Mix):
    """Relative prevalence of the three classes at a site."""

    benign: float = 0.45
    primary: float = 0.35
    metastasis: float = 0.20


@dataclass(frozen=True)
class BenignMix(_Mix):
    """Relative weights of the benign subtypes."""

    cyst: float = 0.35
    hemangioma: float = 0.40
    fnh: float = 0.25


@dataclass(frozen=True)
class PrimaryMix(_Mix):
    """Relative weights of the primary malignant subtypes."""

    hcc: float = 0.75
    icc: float = 0.25


MIXES = {"class_mix": ClassMix, "benign_mix": BenignMix, "primary_mix": PrimaryMix}


@dataclass(frozen=True)
class MriSiteProfile:
    """One MRI hospital: scanner, protocol and case mix (units in the names; docs/phantom.md)."""

    name: str
    role: str = _choice("train", ROLES)
    n_cases: int = _range(150, 3, 100_000)
    test_fraction: float = _range(0.25, 0.0, 0.9)
    val_fraction: float = _range(0.2, 0.0, 0.9)  # of the training cases left after test
    # scanner (metadata written to the manifest)
    vendor: str = "generic"
    scanner_model: str = "mr-1.5t"
    field_strength_t: float = _choice(1.5, FIELD_STRENGTHS)
    # geometry: one grid for every series of a case
    fov_mm: float = _range(240.0, 100.0, 500.0)
    pixel_spacing_mm: float = _range(1.5, 0.5, 3.0)
    slice_thickness_mm: float = _range(5.0, 0.5, 10.0)
    z_extent_mm: float = _range(60.0, 10.0, 300.0)
    acquired_resolution_mm: float = _range(2.0, 0.5, 5.0)  # T2w and T1w in-plane resolution
    dwi_resolution_mm: float = _range(3.0, 0.5, 6.0)
    # receive chain: arbitrary units
    receiver_gain: float = _range(1.0, 0.05, 20.0)  # the vendor's scaling of every series
    gain_jitter: float = _range(0.1, 0.0, 0.5)  # sd of log gain between series (auto-prescan)
    snr_factor: float = _range(1.0, 0.1, 5.0)  # coil and hardware, relative to the reference
    bias_field: float = _range(0.15, 0.0, 0.6)  # coil shading: peak relative deviation
    fat_residual: float = _range(0.1, 0.0, 1.0)  # fat signal left by fat suppression
    # sequences
    t2_tr_ms: float = _range(4000.0, 500.0, 12000.0)
    t2_te_ms: float = _range(85.0, 20.0, 250.0)
    t2_averages: int = _range(1, 1, 16)
    dwi_tr_ms: float = _range(4000.0, 1000.0, 12000.0)
    dwi_te_ms: float = _range(60.0, 30.0, 150.0)
    dwi_b_low: float = _range(50.0, 0.0, 200.0)
    dwi_b_high: float = _range(800.0, 400.0, 1500.0)
    dwi_averages: int = _range(3, 1, 16)  # three diffusion directions, traced
    t1_tr_ms: float = _range(4.0, 2.0, 20.0)
    t1_te_ms: float = _range(1.8, 0.8, 10.0)
    t1_flip_deg: float = _range(12.0, 3.0, 40.0)
    t1_averages: int = _range(1, 1, 8)
    # contrast: agent, dose relative to its standard dose, phase timing (s after injection)
    contrast_agent: str = _choice("gadoterate", tuple(AGENTS))
    dose_factor: float = _range(1.0, 0.25, 2.0)
    arterial_delay_s: float = _range(35.0, 10.0, 60.0)
    portal_delay_s: float = _range(70.0, 40.0, 120.0)
    late_delay_s: float = _range(180.0, 120.0, 1800.0)  # delayed, or hepatobiliary (>= 600)
    bolus_jitter_s: float = _range(4.0, 0.0, 15.0)
    motion_mm: float = _range(3.0, 0.0, 10.0)
    # case mix
    class_mix: ClassMix = field(default_factory=ClassMix)
    benign_mix: BenignMix = field(default_factory=BenignMix)
    primary_mix: PrimaryMix = field(default_factory=PrimaryMix)
    lesion_size_median_mm: float = _range(18.0, 5.0, 80.0)
    lesion_size_spread: float = _range(0.5, 0.0, 1.5)
    lesion_size_min_mm: float = _range(6.0, 4.0, 100.0)
    lesion_size_max_mm: float = _range(60.0, 5.0, 120.0)
    cirrhosis_fraction_hcc: float = _range(0.8, 0.0, 1.0)  # of HCC patients
    cirrhosis_fraction: float = _range(0.1, 0.0, 1.0)  # of every other patient
    steatosis_fraction: float = _range(0.2, 0.0, 1.0)
    capsule_fraction: float = _range(0.5, 0.0, 1.0)  # of HCCs

    @property
    def matrix_size(self) -> int:
        return matrix_size(self.fov_mm, self.pixel_spacing_mm)

    @property
    def hepatobiliary(self) -> bool:
        """Whether the late phase is a hepatobiliary phase (gadoxetate) or a delayed one."""
        return AGENTS[self.contrast_agent].hepatobiliary

    @property
    def late_phase(self) -> str:
        """The late phase's channel suffix: ``hbp`` with gadoxetate, ``delayed`` otherwise."""
        return "hbp" if self.hepatobiliary else "delayed"

    @property
    def splits(self) -> SplitCounts:
        return split_counts(
            class_counts(self.n_cases, self.class_mix),
            self.test_fraction,
            self.val_fraction,
            self.role,
        )


def class_counts(n_cases: int, mix: ClassMix) -> tuple[int, ...]:
    """Exact cases per class: the largest-remainder rounding of ``n_cases`` x the mix."""
    weights = mix.weights()
    total = sum(weights)
    quotas = [n_cases * w / total for w in weights]
    counts = [int(q) for q in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda k: (counts[k] - quotas[k], k))
    for k in by_remainder[: n_cases - sum(counts)]:
        counts[k] += 1
    return tuple(counts)


class SplitCounts(NamedTuple):
    """Cases per class, and per class how many are test and val (the rest train)."""

    counts: tuple[int, ...]
    test: tuple[int, ...]
    val: tuple[int, ...]

    @property
    def train(self) -> tuple[int, ...]:
        return tuple(c - t - v for c, t, v in zip(self.counts, self.test, self.val, strict=True))


def split_counts(
    counts: tuple[int, ...], test_fraction: float, val_fraction: float, role: str
) -> SplitCounts:
    """round(fraction x count) of each class to test (all at an external site), then
    round(``val_fraction`` x the rest) to val (none at an external site)."""
    external = role == "external"
    fraction = 1.0 if external else test_fraction
    test = tuple(round(fraction * c) for c in counts)
    val = tuple(
        0 if external else round(val_fraction * (c - t)) for c, t in zip(counts, test, strict=True)
    )
    return SplitCounts(counts, test, val)
