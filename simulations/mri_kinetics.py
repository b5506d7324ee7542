"""Gadolinium kinetics of the MRI phantom: concentration (mM) in every tissue over time.

The arterial input is the population-averaged blood curve of Parker et al. 2006 (MRM
56:993; 0.1 mmol/kg), scaled linearly with the dose and shifted so that its first pass
peaks ``AORTA_PEAK_S`` after the start of injection. The portal input is that curve
delayed and dispersed by the gut; hepatic veins follow the portal curve 8 s later (as in
the CT phantom). A tissue is one compartment: its concentration is its extracellular
volume fraction ``v`` times its plasma input convolved with exp(-t/tau), the input being a
weighted sum of the arterial first pass, the recirculating blood and the portal blood.
With gadoxetate, hepatocytes also take up the agent (rate ``HEPATOCYTE_UPTAKE_PER_S``)
and excrete it slowly into bile. ``mri_sequences.t1_with_agent`` turns concentrations into
R1 = 1/T1 + r1 C, with the relaxivities of ``mri_tissue.AGENTS``.

The timing and compartment constants below are assumptions, chosen to give the textbook
appearance of each class (docs/phantom.md lists them and the resulting curves).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulations.mri_tissue import HEMATOCRIT
from simulations.physiology import _uptake as uptake  # one-compartment response, gain 1

TIME_S = np.arange(0.0, 1800.0)  # curves on a 1 s grid, 30 minutes after injection
AORTA_PEAK_S = 25.0  # first-pass peak after the start of injection (bolus of ~7 s)
PORTAL_DELAY_S = 10.0  # gut transit: arterial blood reaches the portal vein this much later
PORTAL_DISPERSION_S = 18.0  # ... dispersed by exp(-t / this)
HEPATIC_DELAY_S = 8.0  # hepatic veins: the portal curve this much later
BLOOD_POOL_DELAY_S = 3.0  # hemangioma blood spaces: the aortic curve this much later
LIVER_ARTERIAL_FRACTION = 0.25  # hepatic-artery share of liver inflow (Winterdahl 2011, pigs)
LIVER_ECV = 0.28  # extracellular volume fraction of normal liver: assumption
LIVER_TAU_S = 14.0  # liver mean transit (as the CT phantom)
HEPATOCYTE_UPTAKE_PER_S = 1.3e-3  # gadoxetate uptake rate (tissue mM per plasma mM per s)
BILIARY_TAU_S = 3000.0  # hepatocyte -> bile (k = 0.02 / min)

# Parker et al. 2006, population AIF (minutes and mM): two Gaussians and a sigmoid-modulated
# exponential, for 0.1 mmol/kg gadodiamide.
_PARKER = {
    "a1": 0.809,
    "a2": 0.330,
    "t1": 0.17046,
    "t2": 0.365,
    "s1": 0.0563,
    "s2": 0.132,
    "alpha": 1.050,
    "beta": 0.1685,
    "s": 38.078,
    "tau": 0.483,
}
_SHIFT_S = AORTA_PEAK_S - 60.0 * _PARKER["t1"]


def parker_aif(t_s: np.ndarray, dose_factor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Whole-blood concentration (mM): (first pass, recirculation), seconds after injection.

    ``dose_factor`` is the dose relative to 0.1 mmol/kg. Zero before the bolus arrives.
    """
    p = _PARKER
    t = np.clip(np.asarray(t_s, dtype=np.float64) - _SHIFT_S, 0.0, None) / 60.0
    first = sum(
        p[f"a{n}"]
        / (p[f"s{n}"] * math.sqrt(2.0 * math.pi))
        * np.exp(-((t - p[f"t{n}"]) ** 2) / (2.0 * p[f"s{n}"] ** 2))
        for n in (1, 2)
    )
    recirculation = p["alpha"] * np.exp(-p["beta"] * t) / (1.0 + np.exp(-p["s"] * (t - p["tau"])))
    started = np.asarray(t_s) >= _SHIFT_S
    return (
        np.where(started, first, 0.0) * dose_factor,
        np.where(started, recirculation, 0.0) * dose_factor,
    )


def _delay(curve: np.ndarray, seconds: float) -> np.ndarray:
    return np.interp(TIME_S - seconds, TIME_S, curve, left=0.0)


@dataclass(frozen=True)
class Uptake:
    """One compartment: extracellular fraction ``v``, transit ``tau_s``, and the weights of
    its blood input: arterial first pass, recirculating blood, portal blood."""

    v: float
    tau_s: float
    first_pass: float = 1.0
    recirculation: float = 1.0
    portal: float = 0.0


@dataclass(frozen=True)
class Inputs:
    """The blood curves of one patient (mM on ``TIME_S``) that tissues take up from."""

    first_pass: np.ndarray
    recirculation: np.ndarray
    portal: np.ndarray

    @property
    def aorta(self) -> np.ndarray:
        return self.first_pass + self.recirculation

    def tissue(self, u: Uptake) -> np.ndarray:
        """Tissue concentration (mM) of a compartment on ``TIME_S``."""
        if u.v == 0.0:
            return np.zeros_like(TIME_S)
        blood = u.first_pass * self.first_pass + u.recirculation * self.recirculation
        blood = blood + u.portal * self.portal
        return u.v * uptake(blood / (1.0 - HEMATOCRIT), u.tau_s)


def inputs(dose_factor: float) -> Inputs:
    """Arterial and portal input of a patient given the dose relative to 0.1 mmol/kg."""
    first, recirculation = parker_aif(TIME_S, dose_factor)
    portal = uptake(_delay(first + recirculation, PORTAL_DELAY_S), PORTAL_DISPERSION_S)
    return Inputs(first, recirculation, portal)


def liver_uptake(cirrhosis: float) -> Uptake:
    """The parenchyma: dual input; cirrhosis shifts it to the artery and widens the ECV."""
    fa = LIVER_ARTERIAL_FRACTION + 0.15 * cirrhosis
    return Uptake(LIVER_ECV + 0.08 * cirrhosis, LIVER_TAU_S, fa, fa, 1.0 - fa)


BACKGROUND: dict[str, Uptake] = {
    "muscle": Uptake(0.12, 30.0),
    "soft": Uptake(0.20, 20.0, 0.5, 0.5, 0.5),
    "marrow": Uptake(0.10, 30.0),
    "fibrosis": Uptake(0.45, 150.0, 0.3, 0.3, 0.7),  # slow: bright late
    "capsule": Uptake(0.35, 60.0, 0.3, 0.3, 0.7),
}


def hepatocytes(inp: Inputs, liver: Uptake, rate_per_s: float) -> np.ndarray:
    """Gadoxetate inside hepatocytes (tissue mM): uptake from the liver's plasma input at
    ``rate_per_s``, biliary excretion with time constant ``BILIARY_TAU_S``."""
    blood = liver.first_pass * inp.first_pass + liver.recirculation * inp.recirculation
    plasma = (blood + liver.portal * inp.portal) / (1.0 - HEMATOCRIT)
    return rate_per_s * BILIARY_TAU_S * uptake(plasma, BILIARY_TAU_S)


def sample(curve: np.ndarray, times_s: np.ndarray) -> np.ndarray:
    """A curve at acquisition times (seconds after injection; before injection: 0)."""
    return np.interp(times_s, TIME_S, curve, left=0.0)
