"""Contrast physiology: how every tissue, and the lesion, takes up contrast over time.

Every tissue has a time-enhancement curve (HU above its unenhanced value against
seconds after injection) driven by two input curves, the aorta (hepatic artery) and
the portal vein; ``enhancement`` samples them at a site's acquisition times for one
patient. ``lesion_hu`` turns them into the lesion's HU at points inside it in one
phase: washout, hemangioma fill-in, necrosis and capsule.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import lfilter

from simulations.anatomy import BASE_HU, Case, Lesion

NODULE_KAPPA = 16.0  # angular concentration of a hemangioma's peripheral nodules
TIME_S = np.arange(0.0, 800.0)  # curves are computed on a 1 s grid after injection


def _gamma(t: np.ndarray, t0: float, tpeak: float, peak: float, alpha: float) -> np.ndarray:
    """Gamma-variate first pass of a bolus: zero before t0, maximum ``peak`` at ``tpeak``."""
    x = np.clip((t - t0) / (tpeak - t0), 0.0, None)
    return peak * x**alpha * np.exp(alpha * (1.0 - x))


def _equilibrium(t: np.ndarray, onset: float, level: float, width: float) -> np.ndarray:
    """Recirculated contrast: rises around ``onset``, then slow renal clearance."""
    clearance = np.exp(-np.clip(t - onset, 0.0, None) / 450.0)
    return level / (1.0 + np.exp(-(t - onset) / width)) * clearance


def _uptake(curve: np.ndarray, tau_s: float) -> np.ndarray:
    """One-compartment tissue response: the input convolved with exp(-t / tau)."""
    a = 1.0 - math.exp(-1.0 / tau_s)
    return np.asarray(lfilter([a], [1.0, a - 1.0], curve))


def enhancement(case: Case, times_s: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """HU above unenhanced for every tissue at the three acquisition times, shape (3,)."""
    t = TIME_S
    arterial_fp = _gamma(t, 13.0, 27.0, 230.0, 2.5)
    blood_eq = _equilibrium(t, 28.0, 130.0, 6.0)
    aorta = arterial_fp + blood_eq
    portal = _gamma(t, 18.0, 55.0, 80.0, 3.0) + _equilibrium(t, 42.0, 125.0, 8.0)
    hepatic = np.interp(t - 8.0, t, portal, left=0.0)
    c = case.cirrhosis  # cirrhosis: less portal perfusion, some arterial compensation
    a_fp, a_eq, a_pv = case.lesion.hcc_coeffs
    curves = {
        "aorta": aorta,
        "portal": portal,
        "hepatic": hepatic,
        "blood_pool": np.interp(t - 3.0, t, aorta, left=0.0),
        "liver": _uptake((0.09 + 0.04 * c) * aorta + (0.34 - 0.10 * c) * portal, 14.0),
        "fibrosis": _uptake(0.15 * portal, 8.0) + 0.8 * _uptake(blood_eq, 150.0),
        "muscle": _uptake(0.06 * aorta + 0.04 * portal, 30.0),
        "soft": _uptake(0.10 * aorta + 0.15 * portal, 20.0),
        "marrow": _uptake(0.05 * aorta, 30.0),
        "hcc": _uptake(a_fp * arterial_fp + a_eq * blood_eq + a_pv * portal, 7.0),
        "capsule": _uptake(0.10 * aorta + 0.12 * portal, 10.0) + 0.7 * _uptake(blood_eq, 60.0),
    }
    sample_at = np.asarray(times_s, dtype=np.float64) - case.arrival_s
    return {k: case.gain * np.interp(sample_at, t, v) for k, v in curves.items()}


def lesion_hu(
    lesion: Lesion,
    r: np.ndarray,
    angle: tuple[np.ndarray, np.ndarray],
    enh: dict[str, float],
    t_s: float,
    texture: np.ndarray,
) -> np.ndarray:
    """Lesion HU in one phase at points of normalised radius ``r`` and polar angle (cos, sin).

    ``enh`` holds each tissue's enhancement in this phase, ``t_s`` the time since the
    bolus reached the patient (the hemangioma fill-in front depends on it).
    """
    if lesion.kind == "cyst":
        return np.full(r.shape, lesion.base_hu, np.float32)
    if lesion.kind in ("hemangioma", "flash-hemangioma"):
        nodule = np.zeros_like(r)
        for phi in lesion.nodule_angles:
            closeness = angle[0] * math.cos(phi) + angle[1] * math.sin(phi)  # cos(t - phi)
            nodule = np.maximum(nodule, np.exp(NODULE_KAPPA * (closeness - 1.0)))
        nodule *= np.exp(-(((r - 0.85) / 0.2) ** 2))  # nodules sit at the periphery
        depth = np.clip(1.0 - r, 0.0, 1.0) ** 0.8
        t_fill = 20.0 + (1.0 - nodule) * (lesion.fill_edge_s + lesion.fill_centre_s * depth)
        filled = 1.0 / (1.0 + np.exp(-(t_s - t_fill) / 5.0))
        return lesion.base_hu + lesion.blood_fraction * enh["blood_pool"] * filled
    tumour = lesion.base_hu + enh["hcc"] * (1.0 + 0.15 * texture)
    if lesion.necrosis_rel:
        viable = 1.0 / (1.0 + np.exp(-(r - lesion.necrosis_rel) / 0.05))
        tumour = viable * tumour + (1.0 - viable) * BASE_HU["necrosis"]
    if lesion.capsule_rel:
        rim = np.clip((r - (1.0 - lesion.capsule_rel)) / 0.05, 0.0, 1.0)
        tumour = tumour + rim * (BASE_HU["capsule"] + enh["capsule"] - tumour)
    return tumour
