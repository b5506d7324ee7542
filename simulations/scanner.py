"""The scanner: how a site samples the patient, and what its images do to the truth.

``acquisition_grid`` places the site's pixels (field of view / pixel spacing)
and slices (slice thickness) around the lesion; ``render`` samples the patient
on that grid at the three acquisition times (noise-free HU, with in-plane and
through-plane partial volume); ``acquire`` turns that into what the site's
scanner writes: point-spread blur of the reconstruction kernel, dose- and
kernel-dependent correlated noise, an optional smooth multiplicative bias
field, the HU calibration, and int16 quantisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from simulations import anatomy, physiology
from simulations.anatomy import BASE_HU, Case
from simulations.site_profile import SiteProfile

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
REFERENCE_THICKNESS_MM = 2.5  # noise_sigma_hu is defined at this slice thickness
SUBSLICE_STEP_MM = 0.5  # through-plane sampling of the lesion inside one slice
FOV_CENTRE_MM = (-30.0, -5.0)  # targeted reconstruction centred on the liver side
HU_MIN, HU_MAX = -1024, 3071
TEXTURES_MM = {"fine": 1.2, "coarse": 5.0, "nodular": 2.5, "mix": 6.0, "tumour": 2.0}


@dataclass(frozen=True)
class Kernel:
    """A reconstruction kernel: in-plane resolution and noise behaviour."""

    psf_fwhm_mm: float  # in-plane point-spread function (Gaussian) full width
    noise_gain: float  # noise sigma relative to the standard kernel
    grain_mm: float  # noise correlation length (sigma of the noise texture)


KERNEL_TABLE: dict[str, Kernel] = {
    "soft": Kernel(psf_fwhm_mm=1.8, noise_gain=0.7, grain_mm=1.0),
    "standard": Kernel(psf_fwhm_mm=1.2, noise_gain=1.0, grain_mm=0.7),
    "sharp": Kernel(psf_fwhm_mm=0.7, noise_gain=1.6, grain_mm=0.35),
}


@dataclass(frozen=True)
class Grid:
    """Voxel centres in the patient's millimetres (``anatomy``'s frame).

    x grows towards the patient's left, y from posterior to anterior, z from inferior
    to superior (an L, A, S frame); the origin is the centre of the body outline, with
    z = 0 at the liver's largest section.
    """

    x: np.ndarray  # (nx,) pixel centres
    y: np.ndarray  # (ny,)
    z: np.ndarray  # (nz,) slice centres
    spacing_mm: float
    thickness_mm: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.x.size, self.y.size, self.z.size)

    def subslice_offsets(self, step_mm: float = SUBSLICE_STEP_MM) -> np.ndarray:
        """Offsets from a slice centre that sample its thickness evenly (midpoint rule)."""
        k = max(1, math.ceil(self.thickness_mm / step_mm - 1e-9))
        return ((np.arange(k) + 0.5) / k - 0.5) * self.thickness_mm

    def affine(self) -> np.ndarray:
        """NIfTI voxel-to-world affine: voxel (i, j, k) to RAS+ millimetres.

        World x is the patient's right, so it is the grid's x negated: the first voxel
        axis runs from the patient's right to left (nibabel's axis codes L, A, S). World
        coordinates are the patient's: (-x, y, z) of the voxel centre.
        """
        affine = np.diag([-self.spacing_mm, self.spacing_mm, self.thickness_mm, 1.0])
        affine[:3, 3] = (-float(self.x[0]), float(self.y[0]), float(self.z[0]))
        return affine


def acquisition_grid(site: SiteProfile, lesion_z_mm: float, dims: int) -> Grid:
    """The site's sampling grid: one slice through the lesion (2D) or a slab of slices (3D)."""
    n = site.matrix_size
    px = site.pixel_spacing_mm
    offsets = (np.arange(n) - (n - 1) / 2.0) * px
    if dims == 2:
        z = np.array([lesion_z_mm])
    else:
        nz = max(1, round(site.z_extent_mm / site.slice_thickness_mm))
        z = lesion_z_mm + (np.arange(nz) - (nz - 1) / 2.0) * site.slice_thickness_mm
    return Grid(
        x=FOV_CENTRE_MM[0] + offsets,
        y=FOV_CENTRE_MM[1] + offsets,
        z=z,
        spacing_mm=px,
        thickness_mm=site.slice_thickness_mm,
    )


def _soft(sdf: np.ndarray, px: float) -> np.ndarray:
    """Area fraction of a pixel inside a boundary at signed distance ``sdf`` (mm)."""
    return np.clip(0.5 - sdf / px, 0.0, 1.0)


def _textures(rng: np.random.Generator, grid: Grid, case: Case) -> dict[str, np.ndarray]:
    """Smooth unit-variance random fields on the grid (parenchyma, fat mix, tumour)."""
    out = {}
    for name, mm in TEXTURES_MM.items():
        if (name == "nodular" and not case.cirrhosis) or (
            name == "tumour" and case.lesion.kind not in anatomy.MALIGNANT_TYPES
        ):
            out[name] = np.zeros(grid.shape, np.float32)
            continue
        white = rng.standard_normal(grid.shape, dtype=np.float32)
        sig = (mm / grid.spacing_mm, mm / grid.spacing_mm, mm / grid.thickness_mm)
        sig = sig if grid.shape[2] > 1 else (sig[0], sig[1], 0.0)
        field = ndimage.gaussian_filter(white, sig, truncate=3.0)
        if name == "nodular":  # band-pass: nodules a few mm across, separated by septa
            field -= ndimage.gaussian_filter(field, (2 * sig[0], 2 * sig[1], 0), truncate=3.0)
        out[name] = field / max(float(field.std()), 1e-6)
    return out


def _tubes(
    tubes: list[tuple[float, ...]],
    x: np.ndarray,
    y: np.ndarray,
    z: float,
    px: float,
    out: np.ndarray,
) -> None:
    """Max-combine the area fractions of tapering 3D tubes cut by the plane ``z``."""
    for x0, y0, z0, x1, y1, z1, r0, r1, _ in tubes:
        p0, u = np.array([x0, y0, z0]), np.array([x1 - x0, y1 - y0, z1 - z0])
        if abs(u[2]) > 1e-6:  # the part of the segment within reach of the plane
            ta, tb = sorted(((z - r0 - z0) / u[2], (z + r0 - z0) / u[2]))
            ta, tb = max(ta, 0.0), min(tb, 1.0)
        else:
            ta, tb = (0.0, 1.0) if abs(z - z0) <= r0 else (1.0, 0.0)
        if ta > tb:
            continue
        ends = p0[:2] + np.outer([ta, tb], u[:2])
        i0, i1 = np.searchsorted(x, [ends[:, 0].min() - r0 - px, ends[:, 0].max() + r0 + px])
        j0, j1 = np.searchsorted(y, [ends[:, 1].min() - r0 - px, ends[:, 1].max() + r0 + px])
        if i0 >= i1 or j0 >= j1:
            continue
        dx, dy = x[i0:i1, None] - x0, y[None, j0:j1] - y0
        t = np.clip((dx * u[0] + dy * u[1] + (z - z0) * u[2]) / float(u @ u), 0.0, 1.0)
        dist = np.sqrt((dx - t * u[0]) ** 2 + (dy - t * u[1]) ** 2 + (z - z0 - t * u[2]) ** 2)
        frac = _soft(dist - (r0 + (r1 - r0) * t), px)
        np.maximum(out[i0:i1, j0:j1], frac, out=out[i0:i1, j0:j1])


def _lesion_slab(
    case: Case,
    grid: Grid,
    zc: float,
    enh: dict[str, np.ndarray],
    times: np.ndarray,
    texture: np.ndarray,
) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
    """Lesion fraction (3 phases) and fraction-weighted HU, averaged through one slice.

    Between phases the lesion moves by ``case.motion`` (breath-hold differences).
    """
    les = case.lesion
    reach = max(les.outline.ax, les.outline.ay) * (1 + sum(les.outline.amps)) + les.edge_mm
    reach += 3.0 * max(abs(v) for shift in case.motion for v in shift[:2])
    xl, yl, zl = les.centre
    if all(
        abs(zc - zl - m[2]) > les.half_depth_mm + grid.thickness_mm / 2 + les.edge_mm
        for m in case.motion
    ):
        return None
    px = grid.spacing_mm
    i0, i1 = np.searchsorted(grid.x, [xl - reach - 2 * px, xl + reach + 2 * px])
    j0, j1 = np.searchsorted(grid.y, [yl - reach - 2 * px, yl + reach + 2 * px])
    radius = (les.outline.ax + les.outline.ay + les.half_depth_mm) / 3.0
    width = math.hypot(px, les.edge_mm)
    offsets = grid.subslice_offsets()
    shape = (3, i1 - i0, j1 - j0)
    frac_sum, hu_sum = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for p, (mx, my, mz) in enumerate(case.motion):
        dx, dy = np.meshgrid(grid.x[i0:i1] - xl - mx, grid.y[j0:j1] - yl - my, indexing="ij")
        rho, cos_t, sin_t = les.outline.normalised(dx, dy)
        phase_enh = {k: float(v[p]) for k, v in enh.items()}
        for off in offsets:
            r = np.sqrt(rho**2 + ((zc + off - zl - mz) / les.half_depth_mm) ** 2)
            frac = np.clip((1.0 - r) * radius / width + 0.5, 0.0, 1.0)
            if frac.max() > 0:
                frac_sum[p] += frac
                hu_sum[p] += frac * physiology.lesion_hu(
                    les, r, (cos_t, sin_t), phase_enh, float(times[p]), texture[i0:i1, j0:j1]
                )
    if not frac_sum.any():
        return None
    return slice(i0, i1), slice(j0, j1), frac_sum / len(offsets), hu_sum / len(offsets)


def render(
    case: Case, grid: Grid, times_s: tuple[float, float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise-free HU of the three phases ``(3, nx, ny, nz)``, the lesion fraction, and the
    liver's fraction of each voxel ``(nx, ny, nz)``: the partial
    volume of the liver outline (its nodular surface in cirrhosis, the vessels inside it
    included) that the image shows as liver, i.e. less the IVC drawn over it. It comes from
    the same geometry and texture the image is drawn from, and draws nothing more."""
    enh = physiology.enhancement(case, times_s)
    times = np.asarray(times_s) - case.arrival_s
    tex = _textures(rng, grid, case)
    px, (nx, ny, nz) = grid.spacing_mm, grid.shape
    x, y = np.meshgrid(grid.x.astype(np.float32), grid.y.astype(np.float32), indexing="ij")
    col = lambda key: enh[key][:, None, None]  # noqa: E731  (3,) -> (3, 1, 1)
    body, fat, wall = case.body, case.fat_mm, case.fat_mm + case.muscle_mm
    body_sdf = body.sdf(x, y)
    ring = (_soft(body_sdf, px), _soft(body_sdf + fat, px), _soft(body_sdf + wall, px))
    paraspinal = np.maximum(
        *(_soft(anatomy.Shape(sx, -72.0, 22.0, 17.0).sdf(x, y), px) for sx in (-40.0, 40.0))
    )
    dist = [np.sqrt((x - cx) ** 2 + (y - cy) ** 2) - r for cx, cy, r in case.discs]
    (spine, aorta, ivc) = (_soft(d, px) for d in dist)
    marrow = _soft(dist[0] + 3.0, px)
    bg_offsets = grid.subslice_offsets(max(grid.thickness_mm / 3.0, SUBSLICE_STEP_MM))
    portal = [v for v in case.vessels if v[8] == 0]
    hepatic = [v for v in case.vessels if v[8] == 1]
    truth = np.empty((3, nx, ny, nz), np.float32)
    fraction = np.zeros((nx, ny, nz), np.float32)
    liver_fraction = np.zeros((nx, ny, nz), np.float32)
    lobes = anatomy.liver_polar(case.liver, x, y)
    for k, zc in enumerate(grid.z):
        nodular = tex["nodular"][..., k]
        liver = np.zeros((nx, ny), np.float32)
        veins = np.zeros((2, nx, ny), np.float32)
        for off in bg_offsets:
            # cirrhosis: a nodular surface, the outline displaced by the nodular texture
            surface = anatomy.liver_sdf(lobes, zc + off) + 2.5 * case.cirrhosis * nodular
            liver += _soft(surface, px)
            for i, tubes in enumerate((portal, hepatic)):
                cut = np.zeros((nx, ny), np.float32)
                _tubes(tubes, grid.x, grid.y, zc + off, px, cut)
                veins[i] += cut
        liver *= ring[2] / len(bg_offsets)
        veins *= liver / len(bg_offsets)
        liver_fraction[..., k] = liver * (1.0 - ivc)  # the IVC is drawn over the liver
        fine, nod, mix = tex["fine"][..., k], nodular, tex["mix"][..., k]
        soft_tissue = np.where(mix > 0.3, BASE_HU["soft"] + col("soft"), BASE_HU["fat"] + 10)
        hetero = 1.0 + 0.05 * tex["coarse"][..., k] + 0.03 * fine
        hetero = hetero + 0.12 * case.cirrhosis * np.tanh(2.0 * nod)
        parenchyma = case.liver_hu + 3.0 * fine + col("liver") * hetero
        septa = 0.7 * case.cirrhosis * np.exp(-((nod / 0.3) ** 2))
        parenchyma += septa * (BASE_HU["fibrosis"] + col("fibrosis") - parenchyma)
        img = np.full((3, nx, ny), BASE_HU["air"], np.float32)
        for frac, value in (
            (ring[0], BASE_HU["fat"]),
            (ring[1], BASE_HU["muscle"] + col("muscle")),
            (ring[2], soft_tissue),
            (paraspinal * ring[2], BASE_HU["muscle"] + col("muscle")),
            (spine, BASE_HU["cortex"]),
            (marrow, BASE_HU["marrow"] + col("marrow")),
            (aorta, BASE_HU["blood"] + col("aorta")),
            (liver, parenchyma),
            (ivc, BASE_HU["blood"] + col("hepatic")),
            (veins[0], BASE_HU["blood"] + col("portal")),
            (veins[1], BASE_HU["blood"] + col("hepatic")),
        ):
            img += frac * (value - img)
        slab = _lesion_slab(case, grid, float(zc), enh, times, tex["tumour"][..., k])
        if slab is not None:
            si, sj, frac, hu = slab
            img[:, si, sj] = img[:, si, sj] * (1.0 - frac) + hu
            fraction[si, sj, k] = frac[1]  # the reader annotates the portal venous phase
        truth[..., k] = img
    return truth, fraction, liver_fraction


def noise_sigma_hu(site: SiteProfile) -> float:
    """Per-pixel noise: sigma_ref x kernel gain / sqrt(dose x thickness / 2.5 mm)."""
    kernel = KERNEL_TABLE[site.kernel]
    photons = site.dose_factor * site.slice_thickness_mm / REFERENCE_THICKNESS_MM
    return site.noise_sigma_hu * kernel.noise_gain / math.sqrt(photons)


def _gaussian_weights_sq_sum(sigma_px: float) -> float:
    """Sum of squared weights of scipy's 1D Gaussian filter (truncate = 4)."""
    if sigma_px <= 0:
        return 1.0
    radius = int(4.0 * sigma_px + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma_px) ** 2)
    w /= w.sum()
    return float(np.sum(w**2))


def correlated_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_hu: float, grain_px: float
) -> np.ndarray:
    """White noise smoothed in-plane to the kernel's texture, rescaled to ``sigma_hu``."""
    white = rng.standard_normal(shape, dtype=np.float32)
    if grain_px <= 0.05:
        return white * np.float32(sigma_hu)
    sigmas = (grain_px, grain_px) + (0.0,) * (len(shape) - 2)
    smooth = ndimage.gaussian_filter(white, sigmas, mode="reflect")
    # a separable 2D filter scales the variance by (sum of squared 1D weights) ** 2
    return smooth * np.float32(sigma_hu / _gaussian_weights_sq_sum(grain_px))


def bias_field(rng: np.random.Generator, grid: Grid, amplitude: float) -> np.ndarray:
    """Smooth multiplicative field 1 + amplitude x (low-frequency pattern in [-1, 1])."""
    xs, ys, zs = np.meshgrid(grid.x, grid.y, grid.z, indexing="ij")
    span = max(float(np.ptp(grid.x)), 1.0)
    pattern = np.zeros(grid.shape, dtype=np.float64)
    for _ in range(4):
        kx, ky, kz = rng.uniform(-1.0, 1.0, 3) * math.pi / span
        pattern += rng.normal() * np.cos(kx * xs + ky * ys + kz * zs + rng.uniform(0, 2 * math.pi))
    peak = float(np.max(np.abs(pattern))) or 1.0
    return (1.0 + amplitude * pattern / peak).astype(np.float32)


def acquire(
    truth_hu: np.ndarray, site: SiteProfile, grid: Grid, rng: np.random.Generator
) -> np.ndarray:
    """What the site's scanner writes for a noise-free HU volume ``(nx, ny, nz)``: int16 HU."""
    kernel = KERNEL_TABLE[site.kernel]
    px = grid.spacing_mm
    psf_px = kernel.psf_fwhm_mm / FWHM_PER_SIGMA / px
    image = ndimage.gaussian_filter(truth_hu.astype(np.float32), (psf_px, psf_px, 0.0))
    sigma = noise_sigma_hu(site)
    if sigma > 0:
        image += correlated_noise(rng, image.shape, sigma, kernel.grain_mm / px)
    if site.bias_field > 0:
        # multiplicative on attenuation (HU + 1000), as a coil or beam-hardening shading
        image = (image + 1000.0) * bias_field(rng, grid, site.bias_field) - 1000.0
    image = image * np.float32(site.hu_scale) + np.float32(site.hu_offset)
    return np.clip(np.rint(image), HU_MIN, HU_MAX).astype(np.int16)
