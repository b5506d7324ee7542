"""The patient of one MRI case: the CT phantom's anatomy with one MRI lesion class.

``sample_mri_case`` draws the subtype from the site's mix, then the patient with the CT
phantom's own sampler (``anatomy.sample_case``: body, liver lobes, cirrhosis, vessels,
lesion size and position, bolus timing), then the lesion's MR appearance from the same
random stream: its compartments (tissue from ``mri_tissue``, enhancement from
``mri_kinetics``) and their patient-to-patient variation. The appearance of each class
(docs/phantom.md, "Lesion classes"):

- cyst: water; no enhancement; hyperintense on T2, highest ADC;
- hemangioma: T2-bright; peripheral nodules that fill in centripetally with the blood
  pool (the CT phantom's fill-in model), no washout; dark in the hepatobiliary phase;
- FNH: near-isointense on T1 and T2, intense homogeneous arterial enhancement, isointense
  later, a T2-bright central scar that enhances late; iso- or hyperintense in the
  hepatobiliary phase (functioning hepatocytes);
- HCC: arterial supply only: arterial hyperenhancement, washout; often a capsule that
  enhances late; necrosis when large; hypointense in the hepatobiliary phase (10 % retain
  uptake);
- ICC: arterial rim, a fibrous core that enhances progressively (delayed);
- metastasis: rim enhancement, hypovascular or necrotic core (target), low ADC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from simulations import anatomy
from simulations.mri_kinetics import BACKGROUND, Uptake
from simulations.mri_site import CLASSES, SUBTYPES, MriSiteProfile
from simulations.mri_tissue import TISSUES
from simulations.site_profile import BenignMix, SiteProfile

SERIES = ("t2", "dwi", "t1_pre", "t1_arterial", "t1_portal", "t1_late")  # breath-holds
MAX_SD = 2.5  # patient draws are truncated at this many standard deviations


@dataclass(frozen=True)
class Compartment:
    """A part of a lesion: its tissue (``mri_tissue.TISSUES``) with this patient's scaling of
    T1, T2 and ADC, its enhancement (None: none) and its hepatocyte uptake relative to the
    liver's (gadoxetate)."""

    tissue: str
    t1_scale: float = 1.0
    t2_scale: float = 1.0
    adc_scale: float = 1.0
    uptake: Uptake | None = None
    hepatocyte: float = 0.0


@dataclass(frozen=True)
class MriLesion:
    """One lesion: geometry, and compartments by normalised radius r (0 centre, 1 edge):
    ``core`` for r < ``core_rel``, ``rim`` for r > 1 - ``rim_rel``, ``body`` between.
    A hemangioma's blood spaces fill in as ``fill`` (a CT-phantom hemangioma) describes."""

    subtype: str
    label: int
    size_mm: float
    centre: tuple[float, float, float]
    outline: anatomy.Shape
    half_depth_mm: float
    edge_mm: float
    body: Compartment
    core: Compartment | None = None
    core_rel: float = 0.0
    rim: Compartment | None = None
    rim_rel: float = 0.0
    fill: anatomy.Lesion | None = None
    blood_fraction: float = 0.0


@dataclass(frozen=True)
class MriCase:
    """One MRI patient: the CT phantom's anatomy, the lesion, and what MRI adds."""

    label: int  # 0 benign, 1 primary malignant, 2 metastasis
    lesion: MriLesion
    anatomy: anatomy.Case  # body, liver, vessels, cirrhosis, bolus arrival (its lesion unused)
    liver: Compartment  # this patient's parenchyma
    fat_fraction: float  # hepatic steatosis (0: none)
    motion: tuple[tuple[float, float, float], ...]  # lesion shift per SERIES (mm)


def _scale(rng: np.random.Generator, cv: float) -> float:
    """A log-normal factor with coefficient of variation ``cv``, truncated at MAX_SD."""
    return math.exp(cv * float(np.clip(rng.normal(), -MAX_SD, MAX_SD)))


def _tissue(
    rng: np.random.Generator, name: str, uptake: Uptake | None = None, hepatocyte: float = 0.0
) -> Compartment:
    """A compartment of a table tissue, with this patient's T1, T2 and ADC draws."""
    t = TISSUES[name]
    t1, t2, adc = _scale(rng, t.t1_cv), _scale(rng, t.t2_cv), _scale(rng, t.adc_cv)
    return Compartment(name, t1, t2, adc, uptake, hepatocyte)


def anatomy_profile(site: MriSiteProfile, cirrhosis_fraction: float) -> SiteProfile:
    """The CT site profile the anatomy sampler and the grid read: geometry, lesion sizes,
    timing jitter and motion of the MRI site; every lesion drawn as a cyst, whose size
    bounds are the site's (the MRI lesion replaces it)."""
    return SiteProfile(
        site.name,
        fov_mm=site.fov_mm,
        pixel_spacing_mm=site.pixel_spacing_mm,
        slice_thickness_mm=site.slice_thickness_mm,
        z_extent_mm=site.z_extent_mm,
        bolus_jitter_s=site.bolus_jitter_s,
        motion_mm=site.motion_mm,
        lesion_size_median_mm=site.lesion_size_median_mm,
        lesion_size_spread=site.lesion_size_spread,
        lesion_size_min_mm=site.lesion_size_min_mm,
        lesion_size_max_mm=site.lesion_size_max_mm,
        cirrhosis_fraction=cirrhosis_fraction,
        steatosis_fraction=0.0,  # MRI draws its own fat fraction
        benign_mix=BenignMix(cyst=1.0, hemangioma=0.0, flash_hemangioma=0.0),
    )


def _outline(rng: np.random.Generator, size: float, wobble: float) -> anatomy.Shape:
    return anatomy.lesion_outline(rng, size, wobble)


def _lesion(
    subtype: str,
    label: int,
    size: float,
    centre: tuple[float, float, float],
    site: MriSiteProfile,
    rng: np.random.Generator,
) -> MriLesion:
    wobble, edge = {
        "cyst": (0.02, 0.2),
        "hemangioma": (0.08, 0.6),
        "fnh": (0.06, 0.8),
        "hcc": (0.07, 1.2),
        "icc": (0.12, 1.5),
        "metastasis": (0.08, 1.0),
    }[subtype]
    outline = _outline(rng, size, wobble)
    base = MriLesion(
        subtype,
        label,
        size,
        centre,
        outline,
        size / 2.0 * rng.uniform(0.7, 1.0),
        edge,
        Compartment(subtype),
    )
    a = size / 2.0
    if subtype == "cyst":
        return replace(base, body=_tissue(rng, "cyst"))
    if subtype == "hemangioma":  # blood spaces fill from peripheral nodules (CT model)
        fill = anatomy.Lesion(
            kind="hemangioma",
            size_mm=size,
            centre=centre,
            outline=outline,
            half_depth_mm=base.half_depth_mm,
            edge_mm=edge,
            base_hu=0.0,
            nodule_angles=tuple(rng.uniform(-math.pi, math.pi, int(rng.integers(3, 7)))),
            fill_edge_s=rng.uniform(20.0, 40.0),
            fill_centre_s=size * rng.uniform(2.0, 8.0),
            blood_fraction=1.0,
        )
        body = _tissue(rng, "hemangioma")
        return replace(base, body=body, fill=fill, blood_fraction=rng.uniform(0.65, 0.9))
    if subtype == "fnh":  # arterial, isointense later, hepatocytes; central scar
        body = _tissue(
            rng,
            "fnh",
            uptake=Uptake(0.34 * rng.uniform(0.9, 1.1), 5.0, 1.3 * _scale(rng, 0.3)),
            hepatocyte=rng.uniform(1.0, 1.5),
        )
        scar = size >= 15.0 and rng.random() < 0.6
        core = _tissue(rng, "fibrosis", uptake=Uptake(0.45, 200.0, 0.3, 0.3, 0.7)) if scar else None
        return replace(
            base, body=body, core=core, core_rel=rng.uniform(0.12, 0.25) if scar else 0.0
        )
    if subtype == "hcc":  # arterial only: hyperenhancement and washout; capsule; necrosis
        body = _tissue(
            rng,
            "hcc",
            uptake=Uptake(
                0.17 * rng.uniform(0.8, 1.2), 7.0, _scale(rng, 0.45), rng.uniform(0.7, 1.3)
            ),
            hepatocyte=rng.uniform(0.6, 1.2) if rng.random() < 0.1 else 0.05,
        )
        capsule = rng.random() < site.capsule_fraction
        necrosis = size > 35.0 and rng.random() < 0.5
        return replace(
            base,
            edge_mm=0.5 if capsule else edge,
            body=body,
            rim=_tissue(rng, "capsule", uptake=BACKGROUND["capsule"]) if capsule else None,
            rim_rel=min(0.3, rng.uniform(1.0, 2.0) / a) if capsule else 0.0,
            core=_tissue(rng, "necrosis") if necrosis else None,
            core_rel=rng.uniform(0.3, 0.55) if necrosis else 0.0,
        )
    if subtype == "icc":  # arterial rim, fibrous core with progressive enhancement
        body = _tissue(rng, "icc", uptake=Uptake(0.22, 8.0, _scale(rng, 0.3)))
        core = Compartment(
            "icc",
            body.t1_scale,
            0.85 * body.t2_scale,
            0.95 * body.adc_scale,
            Uptake(0.65 * rng.uniform(0.85, 1.15), rng.uniform(100.0, 160.0), 0.3, 0.3, 0.7),
        )
        return replace(base, body=body, core=core, core_rel=rng.uniform(0.55, 0.8))
    # metastasis: enhancing rim, hypovascular or necrotic centre (target appearance)
    body = _tissue(rng, "metastasis", uptake=Uptake(0.18, 8.0, _scale(rng, 0.4)))
    if size > 20.0 and rng.random() < 0.5:
        core = _tissue(rng, "necrosis")
    else:
        core = Compartment(
            "metastasis",
            body.t1_scale,
            body.t2_scale,
            body.adc_scale,
            Uptake(0.10, 90.0),
        )
    return replace(base, body=body, core=core, core_rel=rng.uniform(0.6, 0.8))


def sample_mri_case(
    site: MriSiteProfile, label: int, rng: np.random.Generator, fov_centre: tuple[float, float]
) -> MriCase:
    """Draw one patient with a lesion of the given class (0, 1, 2) from the site's mix."""
    cls = CLASSES[label]
    mix = {"benign": site.benign_mix, "primary": site.primary_mix}.get(cls)
    if mix is None:
        subtype = SUBTYPES[cls][0]
    else:
        weights = np.array(mix.weights())
        subtype = mix.names()[int(rng.choice(len(weights), p=weights / weights.sum()))]
    cirrhosis = site.cirrhosis_fraction_hcc if subtype == "hcc" else site.cirrhosis_fraction
    patient = anatomy.sample_case(anatomy_profile(site, cirrhosis), 0, rng, fov_centre)
    lesion = _lesion(subtype, label, patient.lesion.size_mm, patient.lesion.centre, site, rng)
    liver = _tissue(rng, "liver")
    fat = rng.uniform(0.05, 0.25) if rng.random() < site.steatosis_fraction else 0.0
    motion = tuple(
        anatomy.breath_hold_shift(rng, site.motion_mm) if s != "t1_portal" else (0.0, 0.0, 0.0)
        for s in SERIES
    )
    return MriCase(label, lesion, patient, liver, fat, motion)
