"""The patient of one case: body, liver, vessels and one lesion.

``sample_case`` draws everything random about a patient from a site's case mix
(from the case's own random stream), before any image is made. Geometry is
analytic (outlines with signed distances, tubes, an ellipsoid lesion), so the
scanner can sample it at any resolution. How the tissues and the lesion take up
contrast is in ``physiology``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from simulations.site_profile import FLASH_MAX_MM, SiteProfile

LESION_TYPES = ("hcc", "atypical-hcc", "cyst", "hemangioma", "flash-hemangioma")
MALIGNANT_TYPES = ("hcc", "atypical-hcc")
BASE_HU = {  # unenhanced attenuation of each tissue
    "air": -1000.0,
    "fat": -100.0,
    "muscle": 50.0,
    "soft": 38.0,
    "cortex": 700.0,
    "marrow": 220.0,
    "blood": 40.0,
    "liver": 58.0,
    "fibrosis": 48.0,
    "capsule": 45.0,
    "necrosis": 28.0,
}


@dataclass(frozen=True)
class Shape:
    """A 2D outline: an ellipse with radial harmonics ``r(t) = 1 + sum a_k cos(k t + p_k)``."""

    cx: float
    cy: float
    ax: float
    ay: float
    rot: float = 0.0
    ks: tuple[int, ...] = ()
    amps: tuple[float, ...] = ()
    phases: tuple[float, ...] = ()

    def normalised(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Radius relative to the outline (< 1 inside), and cos, sin of the polar angle."""
        dx, dy = x - self.cx, y - self.cy
        c, s = math.cos(self.rot), math.sin(self.rot)
        u = (c * dx + s * dy) / self.ax
        v = (-s * dx + c * dy) / self.ay
        rho = np.sqrt(u * u + v * v) + 1e-6
        cos1, sin1 = u / rho, v / rho
        radius = np.ones_like(rho)
        cos_k, sin_k = cos1, sin1
        for k in range(1, max(self.ks, default=0) + 1):  # cos(k t), sin(k t) by recurrence
            if k > 1:
                cos_k, sin_k = cos_k * cos1 - sin_k * sin1, sin_k * cos1 + cos_k * sin1
            for kk, a, p in zip(self.ks, self.amps, self.phases, strict=True):
                if kk == k:  # a cos(k t + p)
                    radius += a * (cos_k * math.cos(p) - sin_k * math.sin(p))
        return rho / radius, cos1, sin1

    def sdf(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Approximate signed distance in mm (negative inside), measured along rays."""
        rho = self.normalised(x, y)[0]
        return (rho - 1.0) * np.sqrt((x - self.cx) ** 2 + (y - self.cy) ** 2) / rho


@dataclass(frozen=True)
class Lesion:
    """The lesion: type, ellipsoid geometry and the parameters of its enhancement."""

    kind: str  # one of LESION_TYPES
    size_mm: float  # longest in-plane diameter
    centre: tuple[float, float, float]  # mm
    outline: Shape  # in-plane outline, semi-axes in mm
    half_depth_mm: float  # semi-axis along z
    edge_mm: float  # margin transition width (sharp cyst .. ill-defined HCC)
    base_hu: float
    hcc_coeffs: tuple[float, float, float] = (0.0, 0.0, 0.0)  # arterial, blood, portal uptake
    capsule_rel: float = 0.0  # capsule thickness relative to the radius (0 = none)
    necrosis_rel: float = 0.0  # radius of a non-enhancing core, relative (0 = none)
    nodule_angles: tuple[float, ...] = ()  # hemangioma: peripheral nodules
    fill_edge_s: float = 0.0  # hemangioma: periphery fills this long after arrival
    fill_centre_s: float = 0.0  # ... and the centre this much later
    blood_fraction: float = 0.0  # hemangioma: blood volume of the cavernous spaces


@dataclass(frozen=True)
class Case:
    """One patient: everything random about a case except image textures and noise."""

    label: int  # 1 malignant, 0 benign
    lesion: Lesion
    cirrhosis: float  # severity: 0 normal liver, 0.5-1 cirrhotic
    liver_hu: float  # unenhanced parenchyma: about 58 HU, 25-45 HU in a fatty liver
    body: Shape
    fat_mm: float  # subcutaneous fat thickness
    muscle_mm: float  # abdominal wall thickness
    liver: tuple[Shape, Shape]  # right and left lobe (union)
    vessels: tuple[tuple[float, ...], ...]  # x0 y0 z0 x1 y1 z1 r0 r1 kind (0 portal, 1 hepatic)
    discs: tuple[tuple[float, float, float], ...]  # spine, aorta, IVC: x, y, radius
    motion: tuple[tuple[float, float, float], ...]  # lesion shift per phase (mm), portal = 0
    arrival_s: float  # patient's bolus arrival offset (cardiac output)
    gain: float  # iodine contrast gain: patient size and the site's kVp


def liver_polar(
    liver: tuple[Shape, Shape], x: np.ndarray, y: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per lobe: relative radius and distance from the lobe centre (computed once per case)."""
    return [
        (lobe.normalised(x, y)[0], np.sqrt((x - lobe.cx) ** 2 + (y - lobe.cy) ** 2))
        for lobe in liver
    ]


def liver_sdf(polar: list[tuple[np.ndarray, np.ndarray]], z: float) -> np.ndarray:
    """Signed distance (mm) to the liver, two lobes whose sections shrink away from z = 0."""
    taper = math.sqrt(min(1.0, max(0.05, 1.0 - (z / 95.0) ** 2)))
    # scaling an outline by ``taper`` divides the relative radius by it
    return np.minimum.reduce([dist - dist * taper / rho for rho, dist in polar])


# --- sampling a case -------------------------------------------------------


def lesion_size_bounds(site: SiteProfile, kind: str) -> tuple[float, float]:
    """The diameters (mm) a lesion of this kind may have at this site.

    [``lesion_size_min_mm``, ``lesion_size_max_mm``], the upper bound lowered to
    ``FLASH_MAX_MM`` for a flash hemangioma. The scenario check rejects bounds that leave
    a type the site can draw no size; for a site built in code that does, ValueError.
    """
    low, high = site.lesion_size_min_mm, site.lesion_size_max_mm
    if kind == "flash-hemangioma":
        high = min(high, FLASH_MAX_MM)
    if not low <= high:
        cap = f", and at most {FLASH_MAX_MM:g} mm" if kind == "flash-hemangioma" else ""
        raise ValueError(
            f"site {site.name!r}: no {kind} diameter lies between lesion_size_min_mm "
            f"({low:g}) and lesion_size_max_mm ({site.lesion_size_max_mm:g}){cap}"
        )
    return low, high


def _lesion_size(site: SiteProfile, rng: np.random.Generator, kind: str) -> float:
    """Log-normal diameter, truncated to the kind's bounds at the site by redrawing."""
    low, high = lesion_size_bounds(site, kind)
    for _ in range(200):
        size = site.lesion_size_median_mm * math.exp(site.lesion_size_spread * rng.normal())
        if low <= size <= high:
            return size
    return float(np.clip(site.lesion_size_median_mm, low, high))


def lesion_outline(rng: np.random.Generator, size: float, wobble: float) -> Shape:
    """A lesion's outline: an ellipse of ``size`` mm (the short axis 75-100 % of it) at a
    random angle, its edge wobbling by up to ``wobble`` in three harmonics."""
    a = size / 2.0
    return Shape(
        0.0,
        0.0,
        a,
        a * rng.uniform(0.75, 1.0),
        rng.uniform(0, math.pi),
        (2, 3, 4),
        tuple(rng.uniform(0, wobble, 3)),
        tuple(rng.uniform(0, 2 * math.pi, 3)),
    )


def _lesion(
    kind: str,
    size: float,
    centre: tuple[float, float, float],
    site: SiteProfile,
    rng: np.random.Generator,
) -> Lesion:
    a = size / 2.0
    wobble = {"cyst": 0.02, "hemangioma": 0.08, "flash-hemangioma": 0.05}.get(kind, 0.07)
    outline = lesion_outline(rng, size, wobble)
    geometry = Lesion(
        kind=kind,
        size_mm=size,
        centre=centre,
        outline=outline,
        half_depth_mm=a * rng.uniform(0.7, 1.0),
        edge_mm=0.0,
        base_hu=0.0,
    )
    if kind == "cyst":
        return replace(geometry, edge_mm=0.2, base_hu=rng.uniform(0.0, 18.0))
    if kind == "flash-hemangioma":  # fills at once: homogeneous arterial enhancement
        return replace(
            geometry,
            edge_mm=0.6,
            base_hu=rng.normal(40.0, 4.0),
            fill_edge_s=rng.uniform(0.0, 4.0),
            fill_centre_s=rng.uniform(0.0, 6.0),
            blood_fraction=rng.uniform(0.7, 0.95),
        )
    if kind == "hemangioma":  # peripheral nodules, centripetal fill-in
        # sclerosing hemangiomas fill slowly, with few nodules: a hypovascular mimic
        slow = rng.random() < site.slow_hemangioma_fraction
        n_nodules = rng.integers(0, 3) if slow else rng.integers(3, 7)
        return replace(
            geometry,
            edge_mm=0.6,
            base_hu=rng.normal(40.0, 4.0),
            nodule_angles=tuple(rng.uniform(-math.pi, math.pi, n_nodules)),
            fill_edge_s=rng.uniform(40.0, 90.0) if slow else rng.uniform(20.0, 40.0),
            fill_centre_s=size * rng.uniform(2.0, 8.0),
            blood_fraction=rng.uniform(0.25, 0.5) if slow else rng.uniform(0.65, 0.9),
        )
    spread = math.exp(0.45 * rng.normal())  # tumour grade: arterial supply varies a lot
    if kind == "hcc":  # arterial hyperenhancement, washout
        coeffs = (0.45 * spread, 0.36 * rng.uniform(0.7, 1.3), 0.0)
    elif rng.random() < 0.5:  # atypical: arterial hyperenhancement without washout
        coeffs = (0.40 * spread, 0.36, rng.uniform(0.15, 0.30))
    else:  # atypical: hypovascular, no arterial hyperenhancement
        coeffs = (rng.uniform(0.03, 0.15), rng.uniform(0.2, 0.3), rng.uniform(0.05, 0.15))
    capsule = kind == "hcc" and rng.random() < site.capsule_fraction
    return replace(
        geometry,
        edge_mm=0.5 if capsule else 1.2,
        base_hu=rng.normal(44.0, 5.0),
        hcc_coeffs=coeffs,
        capsule_rel=min(0.3, rng.uniform(1.0, 2.0) / a) if capsule else 0.0,
        necrosis_rel=rng.uniform(0.3, 0.55) if size > 35 and rng.random() < 0.5 else 0.0,
    )


def _vessels(rng: np.random.Generator, scale: float) -> tuple[tuple[float, ...], ...]:
    """Portal branches from the hilum and hepatic veins from the IVC, as tapering tubes."""
    rows: list[tuple[float, ...]] = []
    hilum = np.array([-35.0, 8.0, -12.0]) + rng.normal(0, 4, 3)
    confluence = np.array([-22.0, -22.0, 50.0]) + rng.normal(0, 4, 3)
    for kind, start, radius, targets in (
        (0, hilum, 5.5, [(-105, -20), (-95, 40), (-60, 70), (-20, 55), (25, 45), (-75, -45)]),
        (1, confluence, 5.0, [(-112, 5), (-50, 65), (15, 50)]),
    ):
        for tx, ty in targets:
            end = np.array([tx * scale, ty * scale, 0.0]) + rng.normal(0, 8, 3)
            end[2] = start[2] + rng.uniform(-35, 45) if kind == 0 else rng.uniform(-40, 10)
            rows.append((*start, *end, radius * rng.uniform(0.8, 1.1), 1.8, kind))
            mid = start + rng.uniform(0.4, 0.7) * (end - start)
            rows.append((*mid, *(mid + rng.normal(0, 25, 3)), 2.8, 1.2, kind))
    return tuple(tuple(float(v) for v in row) for row in rows)


def _place(
    liver: tuple[Shape, Shape],
    radius: float,
    fov: tuple[float, float, float],
    rng: np.random.Generator,
) -> tuple[float, float, float]:
    """A lesion centre inside the liver, clear of its edge, and inside the field of view."""
    z = rng.uniform(-20.0, 20.0)
    x, y = rng.uniform(-125.0, 60.0, 400), rng.uniform(-75.0, 75.0, 400)
    outside_fov = np.maximum(abs(x - fov[0]), abs(y - fov[1])) - (fov[2] / 2 - radius - 6.0)
    depth = -liver_sdf(liver_polar(liver, x, y), z)
    for margin in (radius + 6.0, 0.6 * radius, 0.0):
        ok = (depth > margin) & (outside_fov < 0)
        if ok.any():
            i = int(np.argmax(ok))
            return (float(x[i]), float(y[i]), z)
    i = int(np.argmax(depth - 10.0 * np.maximum(outside_fov, 0.0)))
    return (float(x[i]), float(y[i]), z)


def breath_hold_shift(rng: np.random.Generator, sd_mm: float) -> tuple[float, float, float]:
    """Breath-hold difference between phases or series: mostly craniocaudal (z), half
    in-plane."""
    dx, dy = rng.normal(0.0, sd_mm / 2, 2)
    return (float(dx), float(dy), float(rng.normal(0.0, sd_mm)))


def sample_case(
    site: SiteProfile, label: int, rng: np.random.Generator, fov_centre: tuple[float, float]
) -> Case:
    """Draw one patient with a lesion of the given label (1 malignant) from the case mix."""
    if label == 1:
        kind = "atypical-hcc" if rng.random() < site.atypical_hcc_fraction else "hcc"
    else:
        types = ["cyst", "hemangioma", "flash-hemangioma"]
        kind = types[int(rng.choice(3, p=site.benign_mix.probabilities()))]
    size = _lesion_size(site, rng, kind)
    cirrhosis = rng.uniform(0.5, 1.0) if rng.random() < site.cirrhosis_fraction else 0.0
    s = rng.uniform(0.92, 1.06)  # patient size

    def lobe(cx: float, cy: float, ax: float, ay: float, rot: float, grow: float) -> Shape:
        return Shape(
            cx * s + rng.normal(0, 3),
            cy * s + rng.normal(0, 3),
            ax * s * grow,
            ay * s * grow,
            rot + rng.normal(0, 0.05),
            (2, 3, 4, 5),
            tuple(rng.uniform(0, 0.05, 4)),
            tuple(rng.uniform(0, 2 * math.pi, 4)),
        )

    # cirrhosis: atrophic right lobe, hypertrophic left lobe
    liver = (
        lobe(-60.0, 5.0, 58.0, 72.0, 0.0, 0.88 if cirrhosis else 1.0),
        lobe(8.0, 42.0, 50.0, 25.0, -0.35, 1.12 if cirrhosis else 1.0),
    )
    centre = _place(liver, size / 2.0, (*fov_centre, site.fov_mm), rng)
    jitter = float(np.clip(rng.normal(0.0, site.bolus_jitter_s), -15.0, 15.0))
    gain = float(np.clip(rng.normal(1.0, 0.2), 0.6, 1.4)) * (120.0 / site.kvp) ** 1.2
    return Case(
        label=label,
        lesion=_lesion(kind, size, centre, site, rng),
        cirrhosis=cirrhosis,
        liver_hu=(
            rng.uniform(25.0, 45.0)
            if rng.random() < site.steatosis_fraction
            else rng.normal(BASE_HU["liver"], 4.0)
        ),
        body=Shape(0.0, 0.0, 150.0 * rng.uniform(0.94, 1.06), 112.0 * rng.uniform(0.94, 1.06)),
        fat_mm=rng.uniform(10.0, 26.0),
        muscle_mm=rng.uniform(6.0, 11.0),
        liver=liver,
        vessels=_vessels(rng, s),
        discs=(
            (0.0, -66.0, 18.0 * s),
            (16.0, -40.0, rng.uniform(9.0, 12.0)),
            (-24.0, -30.0, rng.uniform(9.0, 12.0)),
        ),
        motion=tuple(
            breath_hold_shift(rng, site.motion_mm) if phase != 1 else (0.0, 0.0, 0.0)
            for phase in range(3)
        ),
        arrival_s=jitter,
        gain=gain,
    )
