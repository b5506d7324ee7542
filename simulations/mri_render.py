"""Noise-free MRI series of one case on a site's grid, from the tissue table.

Every voxel is a mixture of tissues (area fractions in-plane, averaged through the slice,
as the CT phantom renders); each tissue's signal in each series comes from its T1, T2,
ADC and proton density (``mri_tissue``), its contrast-agent concentration at the series'
time (``mri_kinetics``) and the site's sequence parameters (``mri_sequences``), and the
voxel's signal is the fraction-weighted sum. The lesion moves between breath-holds
(``MriCase.motion``); the rest of the anatomy stays in place. ``render`` returns the
series (``SIGNALS``) and the lesion's fraction in the portal venous series (for the mask).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from simulations import anatomy, mri_kinetics, physiology
from simulations.anatomy import Shape
from simulations.mri_kinetics import BACKGROUND, Inputs
from simulations.mri_lesions import SERIES, Compartment, MriCase
from simulations.mri_sequences import diffusion, spin_echo, spoiled_gre, t1_with_agent
from simulations.mri_site import MriSiteProfile
from simulations.mri_tissue import AGENTS, FLOW_VOID, MARROW_FAT_FRACTION, TISSUES, t2_star_ms
from simulations.scanner import SUBSLICE_STEP_MM, Grid, _soft, _tubes
from simulations.scanner import _textures as _ct_textures

# noise-free series: the two DWI images give the stored DWI (high b) and the ADC map
SIGNALS = ("t2", "dwi_low", "dwi_high", "t1_pre", "t1_arterial", "t1_portal", "t1_late")
SERIES_SIGNALS = {
    "t2": ("t2",),
    "dwi": ("dwi_low", "dwi_high"),
    "t1_pre": ("t1_pre",),
    "t1_arterial": ("t1_arterial",),
    "t1_portal": ("t1_portal",),
    "t1_late": ("t1_late",),
}
PHASE = {"t1_arterial": 1, "t1_portal": 2, "t1_late": 3}  # others: before contrast (0)
MALIGNANT = ("hcc", "icc", "metastasis")
SEPTA_WEIGHT = 0.25  # fibrous septa share of a cirrhotic liver (0.7 on CT, subtler on MRI)


Value = float | np.ndarray  # a parameter: one value, or one per point


@dataclass(frozen=True)
class Props:
    """Tissue parameters at points (scalars or arrays): PD, T1 and T2 (ms), ADC (um^2/ms),
    the concentration (mM) and hepatocyte concentration at the 4 phases (pre, arterial,
    portal, late) and the spin-echo flow factor."""

    pd: Value
    t1: Value
    t2: Value
    adc: Value
    conc: Sequence[Value] = (0.0, 0.0, 0.0, 0.0)
    hep: Sequence[Value] = (0.0, 0.0, 0.0, 0.0)
    flow: float = 1.0


def signals(site: MriSiteProfile, p: Props, keys: Sequence[str] = SIGNALS) -> dict[str, np.ndarray]:
    """The signals (water units) of tissue ``p`` in the series ``keys`` at ``site``."""
    field = site.field_strength_t
    agent = AGENTS[site.contrast_agent]
    pd, t1, t2 = np.asarray(p.pd), np.asarray(p.t1), np.asarray(p.t2)
    out: dict[str, np.ndarray] = {}
    for key in keys:
        if key == "t2":
            out[key] = spin_echo(pd, t1, t2, site.t2_tr_ms, site.t2_te_ms) * p.flow
        elif key.startswith("dwi"):
            s0 = spin_echo(pd, t1, t2, site.dwi_tr_ms, site.dwi_te_ms) * p.flow
            b = site.dwi_b_low if key == "dwi_low" else site.dwi_b_high
            out[key] = diffusion(s0, np.asarray(p.adc) * 1e-3, b)
        else:
            k = PHASE.get(key, 0)
            t1k = (
                t1_with_agent(t1, p.conc[k], agent.r1(field), p.hep[k], agent.r1_hepatocyte(field))
                if k
                else t1
            )
            out[key] = spoiled_gre(
                pd, t1k, t2_star_ms(t2, field), site.t1_tr_ms, site.t1_te_ms, site.t1_flip_deg
            )
    return out


def acquisition_times(site: MriSiteProfile, case: MriCase) -> np.ndarray:
    """Seconds after injection (in this patient's bolus timing) of the 4 phases; pre < 0."""
    nominal = np.array([-60.0, site.arterial_delay_s, site.portal_delay_s, site.late_delay_s])
    return nominal - case.anatomy.arrival_s


def _phases(curve: np.ndarray, times: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in mri_kinetics.sample(curve, times))


@dataclass(frozen=True)
class Kinetics:
    """One patient's concentrations (mM) at the 4 phases, by tissue, and the inputs."""

    inputs: Inputs
    times: np.ndarray
    conc: dict[str, tuple[float, ...]]

    def of(self, key: str) -> tuple[float, ...]:
        """A tissue's concentrations, or none (a tissue that does not enhance)."""
        return self.conc.get(key, (0.0, 0.0, 0.0, 0.0))


def kinetics(site: MriSiteProfile, case: MriCase) -> Kinetics:
    """The patient's concentrations at the site's phases: every background tissue, and the
    lesion's compartments (``lesion_body``, ``lesion_core``, ``lesion_rim``) that enhance."""
    agent = AGENTS[site.contrast_agent]
    dose = agent.standard_dose_mmol_kg * site.dose_factor / 0.1
    inp = mri_kinetics.inputs(dose)
    times = acquisition_times(site, case)
    c = case.anatomy.cirrhosis
    liver = mri_kinetics.liver_uptake(c)
    hepatic = np.interp(
        mri_kinetics.TIME_S - mri_kinetics.HEPATIC_DELAY_S,
        mri_kinetics.TIME_S,
        inp.portal,
        left=0.0,
    )
    pool = np.interp(
        mri_kinetics.TIME_S - mri_kinetics.BLOOD_POOL_DELAY_S,
        mri_kinetics.TIME_S,
        inp.aorta,
        left=0.0,
    )
    rate = mri_kinetics.HEPATOCYTE_UPTAKE_PER_S * (1.0 - 0.4 * c) if agent.hepatobiliary else 0.0
    lesion = case.lesion
    parts = {"body": lesion.body, "core": lesion.core, "rim": lesion.rim}
    conc = {
        **{
            f"lesion_{k}": _phases(inp.tissue(c.uptake), times)
            for k, c in parts.items()
            if c and c.uptake
        },
        "aorta": _phases(inp.aorta, times),
        "portal": _phases(inp.portal, times),
        "hepatic": _phases(hepatic, times),
        "blood_pool": _phases(pool, times),
        "liver": _phases(inp.tissue(liver), times),
        "hepatocyte": _phases(mri_kinetics.hepatocytes(inp, liver, rate), times),
        **{k: _phases(inp.tissue(u), times) for k, u in BACKGROUND.items()},
    }
    return Kinetics(inp, times, conc)


def _relax(
    name: str, field: float, comp: Compartment | None = None
) -> tuple[float, float, float, float]:
    """(PD, T1, T2, ADC) of a table tissue, scaled by a compartment's patient draws."""
    t = TISSUES[name]
    s = comp or Compartment(name)
    return (t.pd, t.t1(field) * s.t1_scale, t.t2(field) * s.t2_scale, t.adc_um2_ms * s.adc_scale)


def _textures(rng: np.random.Generator, grid: Grid, case: MriCase) -> dict[str, np.ndarray]:
    """The CT phantom's smooth random fields (parenchyma, cirrhosis, fat mix, tumour), drawn
    as it draws them: a tumour texture for the malignant subtypes, nodules if cirrhotic."""
    kind = "hcc" if case.lesion.subtype in MALIGNANT else "cyst"  # CT kinds with(out) texture
    ct_case = replace(case.anatomy, lesion=replace(case.anatomy.lesion, kind=kind))
    return _ct_textures(rng, grid, ct_case)


def _paint(weights: dict[str, np.ndarray], frac: np.ndarray, parts: Mapping[str, Value]) -> None:
    """Cover a fraction ``frac`` of every pixel with tissues ``parts`` (shares summing to 1)."""
    keep = 1.0 - frac
    for key in weights:
        weights[key] *= keep
    for key, share in parts.items():
        weights[key] = weights.get(key, np.zeros_like(frac)) + frac * share


def _background(
    case: MriCase, grid: Grid, zc: float, tex: dict[str, np.ndarray], k: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Tissue fractions of slice ``k`` (averaged through the slice): body, organs, vessels;
    and the liver's fraction of each pixel (its vessels included, less the IVC drawn over
    it), as the CT phantom's ``scanner.render``."""
    px, (nx, ny, _) = grid.spacing_mm, grid.shape
    pat = case.anatomy
    x, y = np.meshgrid(grid.x.astype(np.float32), grid.y.astype(np.float32), indexing="ij")
    body_sdf = pat.body.sdf(x, y)
    wall = pat.fat_mm + pat.muscle_mm
    ring = (_soft(body_sdf, px), _soft(body_sdf + pat.fat_mm, px), _soft(body_sdf + wall, px))
    paraspinal = np.maximum(
        *(_soft(Shape(sx, -72.0, 22.0, 17.0).sdf(x, y), px) for sx in (-40.0, 40.0))
    )
    dist = [np.sqrt((x - cx) ** 2 + (y - cy) ** 2) - r for cx, cy, r in pat.discs]
    spine, aorta, ivc = (_soft(d, px) for d in dist)
    marrow = _soft(dist[0] + 3.0, px)
    nodular = tex["nodular"][..., k]
    lobes = anatomy.liver_polar(pat.liver, x, y)
    offsets = grid.subslice_offsets(max(grid.thickness_mm / 3.0, SUBSLICE_STEP_MM))
    liver = np.zeros((nx, ny), np.float32)
    veins = np.zeros((2, nx, ny), np.float32)
    for off in offsets:
        surface = anatomy.liver_sdf(lobes, zc + off) + 2.5 * pat.cirrhosis * nodular
        liver += _soft(surface, px)
        for i, kind in enumerate((0.0, 1.0)):
            cut = np.zeros((nx, ny), np.float32)
            _tubes([v for v in pat.vessels if v[8] == kind], grid.x, grid.y, zc + off, px, cut)
            veins[i] += cut
    liver *= ring[2] / len(offsets)
    veins *= liver / len(offsets)
    septa = SEPTA_WEIGHT * pat.cirrhosis * np.exp(-((nodular / 0.3) ** 2))
    ff = case.fat_fraction
    soft = (tex["mix"][..., k] > 0.3).astype(np.float32)
    weights: dict[str, np.ndarray] = {"air": np.ones((nx, ny), np.float32)}
    layers: list[tuple[np.ndarray, Mapping[str, Value]]] = [
        (ring[0], {"fat": 1.0}),
        (ring[1], {"muscle": 1.0}),
        (ring[2], {"soft": soft, "fat": 1.0 - soft}),
        (paraspinal * ring[2], {"muscle": 1.0}),
        (spine, {"bone": 1.0}),
        (marrow, {"marrow": 1.0}),
        (aorta, {"aorta": 1.0}),
        (liver, {"liver": (1.0 - ff) * (1.0 - septa), "fibrosis": (1.0 - ff) * septa, "fat": ff}),
        (ivc, {"hepatic": 1.0}),
        (veins[0], {"portal": 1.0}),
        (veins[1], {"hepatic": 1.0}),
    ]
    for frac, parts in layers:
        _paint(weights, frac, parts)
    return weights, liver * (1.0 - ivc)


def _background_props(
    site: MriSiteProfile, case: MriCase, kin: Kinetics, tex: dict[str, np.ndarray], k: int
) -> dict[str, Props]:
    """Every background tissue's parameters in slice ``k`` (the liver's as maps)."""
    field = site.field_strength_t
    c = case.anatomy.cirrhosis
    fine, coarse, nod = tex["fine"][..., k], tex["coarse"][..., k], tex["nodular"][..., k]
    hetero = 1.0 + 0.05 * coarse + 0.03 * fine + 0.12 * c * np.tanh(2.0 * nod)
    pd, t1, t2, adc = _relax("liver", field, case.liver)
    liver = Props(
        pd,
        t1 * (1.0 + 0.1 * c) * (1.0 + 0.02 * coarse),  # cirrhosis lengthens T1 (assumption)
        t2 * (1.0 + 0.02 * coarse),
        adc * (1.0 - 0.1 * c) * (1.0 + 0.02 * fine),  # ... and restricts diffusion
        tuple(v * hetero for v in kin.conc["liver"]),
        tuple(v * hetero for v in kin.conc["hepatocyte"]),
    )
    fat_pd, fat_t1, fat_t2, fat_adc = _relax("fat", field)
    marrow_pd, marrow_t1, marrow_t2, marrow_adc = _relax("marrow", field)
    suppressed = 1.0 - MARROW_FAT_FRACTION * (1.0 - site.fat_residual)
    blood = _relax("blood", field)
    muscle = _relax("muscle", field)
    return {
        "air": Props(0.0, 1000.0, 1.0, 0.0),
        "fat": Props(fat_pd * site.fat_residual, fat_t1, fat_t2, fat_adc),
        "muscle": Props(*muscle, kin.conc["muscle"]),
        "soft": Props(*muscle, kin.conc["soft"]),
        "bone": Props(*_relax("bone", field)),
        "marrow": Props(
            marrow_pd * suppressed, marrow_t1, marrow_t2, marrow_adc, kin.conc["marrow"]
        ),
        "aorta": Props(*blood, kin.conc["aorta"], flow=FLOW_VOID),
        "portal": Props(*blood, kin.conc["portal"], flow=FLOW_VOID),
        "hepatic": Props(*blood, kin.conc["hepatic"], flow=FLOW_VOID),
        "liver": liver,
        "fibrosis": Props(*_relax("fibrosis", field), kin.conc["fibrosis"]),
    }


def _compartments(
    case: MriCase,
    site: MriSiteProfile,
    kin: Kinetics,
    r: np.ndarray,
    angle: tuple[np.ndarray, np.ndarray],
    texture: np.ndarray,
) -> list[tuple[np.ndarray, Props]]:
    """The lesion at points of normalised radius ``r``: (weight, parameters) per compartment."""
    les = case.lesion
    field = site.field_strength_t
    hep = kin.conc["hepatocyte"]
    core = 1.0 / (1.0 + np.exp((r - les.core_rel) / 0.05)) if les.core is not None else 0.0 * r
    rim = np.clip((r - (1.0 - les.rim_rel)) / 0.05, 0.0, 1.0) if les.rim is not None else 0.0 * r
    body_w = np.clip(1.0 - core - rim, 0.0, 1.0)
    out = []
    for part, weight, comp in (
        ("body", body_w, les.body),
        ("core", core, les.core),
        ("rim", rim, les.rim),
    ):
        if comp is None:
            continue
        conc: Sequence[Value] = kin.of(f"lesion_{part}")
        if comp is les.body and les.subtype in MALIGNANT:
            conc = [v * (1.0 + 0.15 * texture) for v in conc]  # tumour heterogeneity
        if les.fill is not None:  # hemangioma: blood spaces fill in (the CT phantom's model)
            conc = [
                les.blood_fraction
                * kin.conc["blood_pool"][p]
                * physiology.lesion_hu(
                    les.fill, r, angle, {"blood_pool": 1.0}, float(kin.times[p]), texture
                )
                if p
                else 0.0
                for p in range(4)
            ]
        out.append(
            (
                weight,
                Props(
                    *_relax(comp.tissue, field, comp),
                    conc,
                    tuple(comp.hepatocyte * v for v in hep),
                ),
            )
        )
    return out


def _lesion(
    case: MriCase,
    site: MriSiteProfile,
    kin: Kinetics,
    grid: Grid,
    zc: float,
    texture: np.ndarray,
    series: int,
) -> tuple[slice, slice, np.ndarray, dict[str, np.ndarray]] | None:
    """Lesion fraction and fraction-weighted signals in one slice of one series."""
    les = case.lesion
    mx, my, mz = case.motion[series]
    reach = max(les.outline.ax, les.outline.ay) * (1 + sum(les.outline.amps)) + les.edge_mm
    reach += 3.0 * max(abs(mx), abs(my))
    xl, yl, zl = les.centre
    if abs(zc - zl - mz) > les.half_depth_mm + grid.thickness_mm / 2 + les.edge_mm:
        return None
    px = grid.spacing_mm
    i0, i1 = np.searchsorted(grid.x, [xl - reach - 2 * px, xl + reach + 2 * px])
    j0, j1 = np.searchsorted(grid.y, [yl - reach - 2 * px, yl + reach + 2 * px])
    if i0 >= i1 or j0 >= j1:
        return None
    radius = (les.outline.ax + les.outline.ay + les.half_depth_mm) / 3.0
    width = math.hypot(px, les.edge_mm)
    dx, dy = np.meshgrid(grid.x[i0:i1] - xl - mx, grid.y[j0:j1] - yl - my, indexing="ij")
    rho, cos_t, sin_t = les.outline.normalised(dx, dy)
    keys = SERIES_SIGNALS[SERIES[series]]
    offsets = grid.subslice_offsets()
    frac_sum = np.zeros((i1 - i0, j1 - j0))
    sums = {key: np.zeros((i1 - i0, j1 - j0)) for key in keys}
    for off in offsets:
        r = np.sqrt(rho**2 + ((zc + off - zl - mz) / les.half_depth_mm) ** 2)
        frac = np.clip((1.0 - r) * radius / width + 0.5, 0.0, 1.0)
        if not frac.any():
            continue
        frac_sum += frac
        for weight, props in _compartments(
            case, site, kin, r, (cos_t, sin_t), texture[i0:i1, j0:j1]
        ):
            for key, value in signals(site, props, keys).items():
                sums[key] += frac * weight * value
    if not frac_sum.any():
        return None
    n = len(offsets)
    return slice(i0, i1), slice(j0, j1), frac_sum / n, {k: v / n for k, v in sums.items()}


def render(
    case: MriCase, site: MriSiteProfile, grid: Grid, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Noise-free series ``SIGNALS`` (each ``grid.shape``, water units), the lesion's
    fraction in the portal venous series, and the liver's fraction of each voxel: from the
    same geometry and texture the series are drawn from, drawing nothing more."""
    kin = kinetics(site, case)
    tex = _textures(rng, grid, case)
    out = {key: np.zeros(grid.shape) for key in SIGNALS}
    fraction = np.zeros(grid.shape)
    liver = np.zeros(grid.shape)
    portal = SERIES.index("t1_portal")
    for k, zc in enumerate(grid.z):
        weights, liver[..., k] = _background(case, grid, float(zc), tex, k)
        props = _background_props(site, case, kin, tex, k)
        for tissue, weight in weights.items():
            for key, value in signals(site, props[tissue]).items():
                out[key][..., k] += weight * value
        for series in range(len(SERIES)):
            slab = _lesion(case, site, kin, grid, float(zc), tex["tumour"][..., k], series)
            if slab is None:
                continue
            si, sj, frac, sums = slab
            for key, value in sums.items():
                out[key][si, sj, k] = out[key][si, sj, k] * (1.0 - frac) + value
            if series == portal:
                fraction[si, sj, k] = frac
    return out, fraction, liver
