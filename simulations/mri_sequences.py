"""Signal equations of the MRI phantom's sequences, as pure array functions.

Signals are in units of the magnetisation of pure water (proton density 1, fully
relaxed); ``mri_scanner`` turns them into a site's arbitrary units. Times are in ms, ADC
in mm^2/s, b values in s/mm^2, concentrations in mM, relaxivities in 1/(mM s).

- T2-weighted (turbo) spin echo, effective echo time TE:
  S = PD (1 - exp(-TR/T1)) exp(-TE/T2)
- diffusion-weighted spin-echo EPI: S_b = S_0 exp(-b ADC), S_0 the spin-echo signal at
  the DWI's TR and TE; the ADC map is ln(S_low / S_high) / (b_high - b_low) of the two
  measured (noisy, magnitude) images
- T1-weighted spoiled gradient echo (pre-contrast and each dynamic phase):
  S = PD sin(a) (1 - E1) / (1 - cos(a) E1) exp(-TE/T2*), E1 = exp(-TR/T1)
- contrast agent: R1 = 1/T1 + r1 C (+ r1_hepatocyte C_hepatocyte for gadoxetate)
"""

from __future__ import annotations

import math

import numpy as np

ArrayLike = np.ndarray | float


def spin_echo(
    pd: ArrayLike, t1_ms: ArrayLike, t2_ms: ArrayLike, tr_ms: float, te_ms: float
) -> np.ndarray:
    """Spin-echo (T2-weighted TSE) signal: PD (1 - exp(-TR/T1)) exp(-TE/T2)."""
    return np.asarray(pd * (1.0 - np.exp(-tr_ms / t1_ms)) * np.exp(-te_ms / t2_ms))


def diffusion(s0: ArrayLike, adc_mm2_s: ArrayLike, b_s_mm2: float) -> np.ndarray:
    """Diffusion-weighted signal S_0 exp(-b ADC)."""
    return np.asarray(s0 * np.exp(-b_s_mm2 * adc_mm2_s))


def spoiled_gre(
    pd: ArrayLike,
    t1_ms: ArrayLike,
    t2s_ms: ArrayLike,
    tr_ms: float,
    te_ms: float,
    flip_deg: float,
) -> np.ndarray:
    """Steady-state spoiled gradient echo: PD sin a (1 - E1) / (1 - cos a E1) exp(-TE/T2*)."""
    a = math.radians(flip_deg)
    e1 = np.exp(-tr_ms / t1_ms)
    signal = pd * math.sin(a) * (1.0 - e1) / (1.0 - math.cos(a) * e1) * np.exp(-te_ms / t2s_ms)
    return np.asarray(signal)


def t1_with_agent(
    t1_ms: ArrayLike,
    conc_mm: ArrayLike,
    r1_per_mm_s: float,
    hepatocyte_mm: ArrayLike = 0.0,
    r1_hepatocyte: float = 0.0,
) -> np.ndarray:
    """T1 (ms) after contrast: R1 = 1/T1 + r1 C + r1_hepatocyte C_hepatocyte (fast exchange)."""
    r1_per_s = 1000.0 / t1_ms + r1_per_mm_s * conc_mm + r1_hepatocyte * hepatocyte_mm
    return np.asarray(1000.0 / r1_per_s)


def adc_from_pair(
    s_low: np.ndarray,
    s_high: np.ndarray,
    b_low: float,
    b_high: float,
    floor: float = 0.0,
) -> np.ndarray:
    """ADC (mm^2/s) from two magnitude images: ln(S_low / S_high) / (b_high - b_low).

    Where ``s_low`` is at most ``floor`` (background, as scanners mask it) or ``s_high`` is
    not positive, the ADC is 0; elsewhere it is not clipped (noise can make it negative).
    """
    s_low = np.asarray(s_low, dtype=np.float64)
    s_high = np.asarray(s_high, dtype=np.float64)
    valid = (s_low > floor) & (s_high > 0.0)
    ratio = np.where(valid, s_low, 1.0) / np.where(valid, s_high, 1.0)
    return np.where(valid, np.log(ratio) / (b_high - b_low), 0.0)
