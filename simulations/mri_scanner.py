"""The MRI scanner: what a site's acquisition does to the noise-free signal of a series.

``acquire`` takes a noise-free series (``mri_render``; units of the magnetisation of pure
water) and applies, in order: the in-plane point-spread of the acquired resolution, the
coil's smooth receive sensitivity (bias field, the same for every series of a case),
complex Gaussian noise whose magnitude is Rician, and the receive gain of the vendor and
of the series (auto-prescan), then int16 quantisation: arbitrary units that differ from
site to site and from series to series. No calibration to physical units exists, except
for the ADC map (``adc_image``), which scanners write in 10^-6 mm^2/s.

Noise: sigma = SIGMA_REF[sequence] x (1.5 T / B0) x (V_REF / V) / sqrt(averages) /
``snr_factor``, with V the acquired voxel volume: SNR proportional to field strength,
voxel volume and the square root of the number of averages.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from simulations.mri_sequences import adc_from_pair
from simulations.mri_site import MriSiteProfile
from simulations.scanner import FWHM_PER_SIGMA, Grid, bias_field

V_REF_MM3 = 1.5 * 1.5 * 5.0  # reference acquired voxel
# noise sigma at 1.5 T, V_REF, one average, snr_factor 1 (units of water magnetisation),
# chosen (assumption) so that the default protocol (``MriSiteProfile()``: 2 mm T2w and T1w,
# 3 mm DWI with three averages, 5 mm slices) gives a normal liver an SNR of about 25 on T2w,
# 15 at b 800 and 30 on the pre-contrast T1w
SIGMA_REF = {"t2": 0.008, "dwi": 0.033, "t1": 0.0019}
STORED_SCALE = 10000.0  # stored value of water magnetisation 1 at receiver gain 1
INT16_MAX = 32767
ADC_UNIT_MM2_S = 1e-6  # the ADC map's stored unit
ADC_MAX_STORED = 4000  # 4.0 x 10^-3 mm^2/s, above free water at body temperature
ADC_MASK_SIGMAS = 3.0  # no ADC where the low-b image is below this many noise sigmas


def voxel_mm3(site: MriSiteProfile, sequence: str) -> float:
    """The acquired voxel of a sequence: in-plane resolution squared x slice thickness."""
    res = site.dwi_resolution_mm if sequence == "dwi" else site.acquired_resolution_mm
    return res * res * site.slice_thickness_mm


def averages(site: MriSiteProfile, sequence: str) -> int:
    return {"t2": site.t2_averages, "dwi": site.dwi_averages, "t1": site.t1_averages}[sequence]


def noise_sigma(site: MriSiteProfile, sequence: str) -> float:
    """Per-channel noise sigma of a sequence (``t2``, ``dwi``, ``t1``), water units."""
    if sequence not in SIGMA_REF:
        raise ValueError(f"unknown sequence {sequence!r}: use one of {', '.join(SIGMA_REF)}")
    snr_gain = (
        (site.field_strength_t / 1.5)
        * (voxel_mm3(site, sequence) / V_REF_MM3)
        * math.sqrt(averages(site, sequence))
        * site.snr_factor
    )
    return SIGMA_REF[sequence] / snr_gain


def point_spread(image: np.ndarray, resolution_mm: float, grid: Grid) -> np.ndarray:
    """In-plane blur of the acquired resolution: a Gaussian of FWHM ``resolution_mm``,
    less the pixel's own width (a resolution at or below the pixel spacing does nothing)."""
    extra = resolution_mm**2 - grid.spacing_mm**2
    if extra <= 0:
        return image
    sigma_px = math.sqrt(extra) / FWHM_PER_SIGMA / grid.spacing_mm
    return ndimage.gaussian_filter(image, (sigma_px, sigma_px, 0.0))


def coil_sensitivity(rng: np.random.Generator, grid: Grid, amplitude: float) -> np.ndarray:
    """The receive coil's smooth multiplicative shading (the CT phantom's bias field)."""
    if amplitude <= 0:
        return np.ones(grid.shape, np.float32)
    return bias_field(rng, grid, amplitude)


def rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of sigma ``sigma`` per channel."""
    if sigma <= 0:
        return np.abs(signal)
    real = signal + rng.normal(0.0, sigma, signal.shape)
    imag = rng.normal(0.0, sigma, signal.shape)
    return np.hypot(real, imag)


def series_gain(rng: np.random.Generator, site: MriSiteProfile) -> float:
    """The receive gain of one series: the vendor's scaling x the series' own prescan."""
    return site.receiver_gain * math.exp(site.gain_jitter * rng.normal())


def stored(image: np.ndarray, gain: float) -> np.ndarray:
    """Arbitrary units as written: gain x STORED_SCALE x signal, int16."""
    return np.clip(np.rint(image * gain * STORED_SCALE), 0, INT16_MAX).astype(np.int16)


def acquire(
    truth: np.ndarray,
    site: MriSiteProfile,
    sequence: str,
    grid: Grid,
    coil: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """A noisy magnitude series (float, water units, before gain): blur, coil, Rician noise."""
    res = site.dwi_resolution_mm if sequence == "dwi" else site.acquired_resolution_mm
    image = point_spread(truth.astype(np.float64), res, grid) * coil
    return rician(rng, image, noise_sigma(site, sequence))


def adc_image(
    low: np.ndarray, high: np.ndarray, site: MriSiteProfile, sigma: float | None = None
) -> np.ndarray:
    """The scanner's ADC map from the two noisy DWI magnitudes, int16 in 10^-6 mm^2/s.

    Background (low-b signal under ``ADC_MASK_SIGMAS`` noise sigmas) is 0; values are
    clipped to [0, ``ADC_MAX_STORED``].
    """
    sigma = noise_sigma(site, "dwi") if sigma is None else sigma
    adc = adc_from_pair(low, high, site.dwi_b_low, site.dwi_b_high, ADC_MASK_SIGMAS * sigma)
    return np.clip(np.rint(adc / ADC_UNIT_MM2_S), 0, ADC_MAX_STORED).astype(np.int16)
