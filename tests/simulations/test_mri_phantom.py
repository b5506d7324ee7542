"""The MRI phantom: signal equations, noise, class appearance, determinism, splits, manifest."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from common.keys import Task
from common.manifest import ManifestError, read_manifest
from common.manifest_row import parse_label
from common.site_files import check_images
from simulations import mri_render, mri_scanner
from simulations.mri_lesions import anatomy_profile, sample_mri_case
from simulations.mri_phantom import (
    channels,
    classes_and_splits,
    generate_mri_phantom,
    simulate_mri_case,
)
from simulations.mri_render import Props, signals
from simulations.mri_scenario import (
    MriScenario,
    list_mri_scenarios,
    load_mri_scenario,
    parse_mri_scenario,
)
from simulations.mri_sequences import adc_from_pair, diffusion, spin_echo
from simulations.mri_site import BenignMix, ClassMix, MriSiteProfile, PrimaryMix
from simulations.mri_tissue import AGENTS, LESION_TISSUES, TISSUES, t2_star_ms
from simulations.phantom import case_rng
from simulations.scanner import FOV_CENTRE_MM, acquisition_grid
from simulations.scenario import ScenarioError
from tests.simulations import array_digest


def tiny(name: str, n_cases: int = 6, **changes: object) -> MriSiteProfile:
    """A small, fast site (60 x 60 pixels); test_fraction 0.5 leaves every class a case."""
    base: dict[str, object] = {"test_fraction": 0.5, "fov_mm": 120.0, "pixel_spacing_mm": 2.0}
    return MriSiteProfile(name, n_cases=n_cases, **{**base, **changes})  # type: ignore[arg-type]


def quiet(**changes: object) -> MriSiteProfile:
    """A site without motion, bolus jitter or cirrhosis, large lesions: the physics itself."""
    base: dict[str, object] = {
        "fov_mm": 160.0,
        "pixel_spacing_mm": 1.6,
        "motion_mm": 0.0,
        "bolus_jitter_s": 0.0,
        "cirrhosis_fraction": 0.0,
        "cirrhosis_fraction_hcc": 0.0,
        "steatosis_fraction": 0.0,
        "lesion_size_median_mm": 26.0,
        "lesion_size_min_mm": 22.0,
    }
    return MriSiteProfile("q", **{**base, **changes})  # type: ignore[arg-type]


def lesion_to_liver(site: MriSiteProfile, subtype: str, n: int) -> list[dict[str, float]]:
    """Noise-free lesion mean / median of a 3-8 mm ring around it, per series, for the first
    ``n`` cases of a subtype (each case its own stream)."""
    label = {"cyst": 0, "hemangioma": 0, "fnh": 0, "hcc": 1, "icc": 1, "metastasis": 2}[subtype]
    site = dataclasses.replace(
        site,
        benign_mix=BenignMix(*(float(s == subtype) for s in ("cyst", "hemangioma", "fnh"))),
        primary_mix=PrimaryMix(*(float(s == subtype) for s in ("hcc", "icc"))),
    )
    out = []
    for index in range(n):
        case = sample_mri_case(site, label, case_rng(3, "q", index, 0), FOV_CENTRE_MM)
        grid = acquisition_grid(anatomy_profile(site, 0.0), case.lesion.centre[2], 2)
        truth, frac, _ = mri_render.render(case, site, grid, case_rng(3, "q", index, 1))
        lesion = frac[..., 0] > 0.9
        dist = ndimage.distance_transform_edt(frac[..., 0] < 0.5) * grid.spacing_mm
        ring = (dist > 3.0) & (dist <= 8.0)
        out.append(
            {k: v[..., 0][lesion].mean() / np.median(v[..., 0][ring]) for k, v in truth.items()}
        )
    return out


def table_props(tissue: str, field: float) -> Props:
    t = TISSUES[tissue]
    return Props(t.pd, t.t1(field), t.t2(field), t.adc_um2_ms)


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- signal equations --------------------------------------------------------


def test_t2w_spin_echo_of_liver_at_15t_is_the_hand_computed_value() -> None:
    # PD 0.71, T1 586 ms, T2 46 ms (de Bazelaire 2004), TR 4000 ms, TE 85 ms
    expected = 0.71 * (1.0 - math.exp(-4000.0 / 586.0)) * math.exp(-85.0 / 46.0)
    assert float(spin_echo(0.71, 586.0, 46.0, 4000.0, 85.0)) == pytest.approx(expected, abs=1e-9)
    site = MriSiteProfile("a", t2_tr_ms=4000.0, t2_te_ms=85.0)
    got = signals(site, table_props("liver", 1.5), ["t2"])["t2"]
    assert float(got) == pytest.approx(expected, abs=1e-9)
    # at 3 T the liver's T1 is 809 ms and its T2 34 ms
    expected_3t = 0.71 * (1.0 - math.exp(-4000.0 / 809.0)) * math.exp(-85.0 / 34.0)
    got_3t = signals(
        dataclasses.replace(site, field_strength_t=3.0), table_props("liver", 3.0), ["t2"]
    )
    assert float(got_3t["t2"]) == pytest.approx(expected_3t, abs=1e-9)


def test_spoiled_gradient_echo_with_gadolinium_is_the_hand_computed_value() -> None:
    site = MriSiteProfile("a", t1_tr_ms=4.0, t1_te_ms=1.8, t1_flip_deg=12.0)
    conc = 0.5  # mM gadoterate in the portal phase; r1 3.6 /(mM s) at 1.5 T (Rohrer 2005)
    t1 = 1000.0 / (1000.0 / 586.0 + 3.6 * conc)
    t2s = 1.0 / (1.0 / 46.0 + 20.0 / 1000.0)  # 1/T2* = 1/T2 + R2', R2' = 20 /s at 1.5 T
    a, e1 = math.radians(12.0), math.exp(-4.0 / t1)
    expected = 0.71 * math.sin(a) * (1 - e1) / (1 - math.cos(a) * e1) * math.exp(-1.8 / t2s)
    props = dataclasses.replace(table_props("liver", 1.5), conc=(0.0, 0.0, conc, 0.0))
    got = signals(site, props, ["t1_pre", "t1_portal"])
    assert float(got["t1_portal"]) == pytest.approx(expected, abs=1e-9)
    assert t2_star_ms(46.0, 1.5) == pytest.approx(t2s, abs=1e-12)
    assert got["t1_portal"] > got["t1_pre"]  # gadolinium shortens T1: brighter
    assert AGENTS["gadoterate"].r1(1.5) == 3.6


def test_adc_map_recovers_the_tissue_adc_without_noise() -> None:
    for tissue in ("liver", "cyst", "metastasis"):
        d = TISSUES[tissue].adc_um2_ms * 1e-3  # mm^2/s
        s0 = np.full((4, 4, 1), 0.3)
        low, high = diffusion(s0, d, 50.0), diffusion(s0, d, 800.0)
        assert np.abs(adc_from_pair(low, high, 50.0, 800.0) - d).max() < 1e-12
        stored = mri_scanner.adc_image(low, high, MriSiteProfile("a"), sigma=0.0)
        assert np.abs(stored * 1e-6 - d).max() <= 0.5e-6  # stored in 10^-6 mm^2/s
    # a rendered cyst: its interior gives back this patient's cyst ADC
    site = quiet()
    site = dataclasses.replace(site, benign_mix=BenignMix(cyst=1.0, hemangioma=0.0, fnh=0.0))
    case = sample_mri_case(site, 0, case_rng(1, "q", 0, 0), FOV_CENTRE_MM)
    assert case.lesion.subtype == "cyst"
    grid = acquisition_grid(anatomy_profile(site, 0.0), case.lesion.centre[2], 2)
    truth, frac, _ = mri_render.render(case, site, grid, case_rng(1, "q", 0, 1))
    adc = adc_from_pair(truth["dwi_low"], truth["dwi_high"], site.dwi_b_low, site.dwi_b_high)
    inside = frac > 0.999
    assert inside.sum() > 20
    expected = TISSUES["cyst"].adc_um2_ms * case.lesion.body.adc_scale * 1e-3
    assert np.abs(adc[inside] - expected).max() < 1e-6


def test_adc_with_rician_noise_is_unbiased_on_a_large_roi() -> None:
    site = MriSiteProfile("a")
    rng = np.random.default_rng(0)
    d = TISSUES["liver"].adc_um2_ms * 1e-3
    s0 = float(signals(site, table_props("liver", 1.5), ["dwi_low"])["dwi_low"]) * math.exp(50 * d)
    clean = np.full((100, 100, 1), s0)
    sigma = mri_scanner.noise_sigma(site, "dwi")
    low = mri_scanner.rician(rng, diffusion(clean, d, 50.0), sigma)
    high = mri_scanner.rician(rng, diffusion(clean, d, 800.0), sigma)
    assert float(high.mean()) / sigma > 10  # the liver's b 800 SNR at the reference protocol
    adc = adc_from_pair(low, high, 50.0, 800.0)
    assert adc.mean() == pytest.approx(d, rel=0.02)  # tolerance: 2 % on 10^4 voxels
    assert adc.std() > 0.05 * d  # ... while each voxel is noisy


def test_snr_follows_field_strength_voxel_volume_and_averages() -> None:
    base = MriSiteProfile("a")
    sigma = mri_scanner.noise_sigma(base, "t2")
    for changes in (
        {"field_strength_t": 3.0},
        {"slice_thickness_mm": 10.0},
        {"t2_averages": 4},
        {"snr_factor": 2.0},
    ):
        other = dataclasses.replace(base, **changes)
        assert mri_scanner.noise_sigma(other, "t2") == pytest.approx(sigma / 2, rel=1e-12)
    # measured: the noise sd of a uniform bright region halves from 1.5 T to 3 T
    grid = acquisition_grid(anatomy_profile(base, 0.0), 0.0, 2)
    truth = np.full(grid.shape, 0.2)
    coil = np.ones(grid.shape)
    sds = []
    for field in (1.5, 3.0):
        site = dataclasses.replace(base, field_strength_t=field, acquired_resolution_mm=1.5)
        image = mri_scanner.acquire(truth, site, "t2", grid, coil, np.random.default_rng(1))
        sds.append(float(image.std()))
        assert sds[-1] == pytest.approx(mri_scanner.noise_sigma(site, "t2"), rel=0.03)
    assert sds[1] / sds[0] == pytest.approx(0.5, rel=0.05)


def test_receiver_gain_scales_the_arbitrary_units_but_not_the_adc(tmp_path: Path) -> None:
    site = tiny("a", gain_jitter=0.0)
    _, _, one, _, _ = simulate_mri_case(site, 5, 0, 1, 2)
    _, _, two, _, _ = simulate_mri_case(dataclasses.replace(site, receiver_gain=2.0), 5, 0, 1, 2)
    for channel in ("t2", "dwi", "t1_pre", "t1_portal"):
        assert np.abs(two[channel].astype(int) - 2 * one[channel].astype(int)).max() <= 1
    assert np.array_equal(one["adc"], two["adc"])  # the ADC map is in 10^-6 mm^2/s
    assert all(image.dtype == np.int16 and image.min() >= 0 for image in one.values())


# --- appearance of the classes -------------------------------------------------


@pytest.mark.parametrize("field", [1.5, 3.0])
def test_cyst_is_brightest_on_t2_and_has_the_highest_adc(field: float) -> None:
    site = MriSiteProfile("a", field_strength_t=field)
    t2 = {t: float(signals(site, table_props(t, field), ["t2"])["t2"]) for t in LESION_TISSUES}
    assert max(t2, key=t2.get) == "cyst"  # type: ignore[arg-type]
    assert min(t2.values()) > float(signals(site, table_props("liver", field), ["t2"])["t2"])
    assert max(LESION_TISSUES, key=lambda t: TISSUES[t].adc_um2_ms) == "cyst"
    # the malignant classes restrict diffusion below the liver, the benign ones do not
    liver = TISSUES["liver"].adc_um2_ms
    assert all(TISSUES[t].adc_um2_ms < liver for t in ("hcc", "icc", "metastasis"))
    assert all(TISSUES[t].adc_um2_ms > liver for t in ("cyst", "hemangioma", "fnh"))


def test_hcc_enhances_arterially_and_washes_out_in_the_portal_phase() -> None:
    ratios = lesion_to_liver(quiet(), "hcc", 6)
    arterial = [r["t1_arterial"] for r in ratios]
    portal = [r["t1_portal"] for r in ratios]
    assert np.median(arterial) > 1.2 and sum(a > 1.0 for a in arterial) >= 5
    assert np.median(portal) < 0.95 and all(p < 1.0 for p in portal)


def test_fnh_is_iso_or_hyperintense_in_the_hepatobiliary_phase_unlike_hcc() -> None:
    site = quiet(contrast_agent="gadoxetate", late_delay_s=1200.0)
    fnh = [r["t1_late"] for r in lesion_to_liver(site, "fnh", 5)]
    hcc = [r["t1_late"] for r in lesion_to_liver(site, "hcc", 5)]
    assert all(v > 0.95 for v in fnh), fnh
    assert np.median(hcc) < 0.8
    assert all(r["t1_arterial"] > 1.1 for r in lesion_to_liver(site, "fnh", 3))


# --- determinism, splits, the bundled scenarios ------------------------------------


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path: Path) -> None:
    spec = MriScenario("m", 4, (tiny("a"), tiny("b", role="external", field_strength_t=3.0)))
    first = digests(generate_mri_phantom(spec, tmp_path / "one"))
    assert digests(generate_mri_phantom(spec, tmp_path / "two")) == first
    other = digests(generate_mri_phantom(spec, tmp_path / "other", seed=5))
    t2 = [k for k in first if k.endswith("_t2.nii.gz")]
    assert len(t2) == 12 and all(first[k] != other[k] for k in t2)
    # a site does not depend on the others
    alone = digests(generate_mri_phantom(MriScenario("m", 4, spec.sites[1:]), tmp_path / "b"))
    assert {k: v for k, v in alone.items() if k.startswith("b/")} == {
        k: v for k, v in first.items() if k.startswith("b/")
    }


def test_splits_have_val_and_test_and_val_fraction_never_moves_a_label_or_test_case() -> None:
    for n, seed in ((40, 1), (97, 2), (150, 3)):
        site = MriSiteProfile("h", n_cases=n, class_mix=ClassMix(0.5, 0.3, 0.2))
        labels, split = classes_and_splits(site, seed)
        counts = tuple(int((labels == k).sum()) for k in range(3))
        assert counts == site.splits.counts and sum(counts) == n
        assert {"train", "val", "test"} == set(split)
        for k in range(3):
            got = [s for s, lab in zip(split, labels, strict=True) if lab == k]
            assert got.count("test") == site.splits.test[k]
            assert got.count("val") == site.splits.val[k]
        test = [i for i, s in enumerate(split) if s == "test"]
        for val_fraction in (0.0, 0.4):
            other_labels, other = classes_and_splits(
                dataclasses.replace(site, val_fraction=val_fraction), seed
            )
            assert np.array_equal(other_labels, labels)
            assert [i for i, s in enumerate(other) if s == "test"] == test
    external = MriSiteProfile("x", role="external", n_cases=30, val_fraction=0.5)
    assert classes_and_splits(external, 1)[1] == ["test"] * 30


def test_bundled_scenarios_share_the_external_centers() -> None:
    assert {"liver-mri-3", "liver-mri-fed"} <= set(list_mri_scenarios())
    three, fed = load_mri_scenario("liver-mri-3"), load_mri_scenario("liver-mri-fed")
    assert [s.role for s in three.sites] == ["train", "external", "external"]
    assert [s.role for s in fed.sites].count("train") == 4
    for name in ("center-a", "center-b", "center-c"):
        assert three.site(name) == fed.site(name)
    assert {s.field_strength_t for s in three.sites} == {1.5, 3.0}
    assert three.channels == (
        "t2",
        "dwi",
        "adc",
        "t1_pre",
        "t1_arterial",
        "t1_portal",
        "t1_delayed",
    )


def test_scenario_problems_name_the_key_and_the_remedy() -> None:
    def problems(site: dict[str, object]) -> str:
        data = {"name": "s", "modality": "mri", "seed": 1, "site": [{"name": "a", **site}]}
        with pytest.raises(ScenarioError) as error:
            parse_mri_scenario(data, "s.toml")
        return str(error.value)

    assert (
        "site[0].late_delay_s = 180.0: with gadoxetate the late phase is hepatobiliary"
        in problems({"contrast_agent": "gadoxetate"})
    )
    assert "site[0].field_strength_t = 7.0: must be one of 1.5, 3.0" in problems(
        {"field_strength_t": 7.0}
    )
    assert "site[0].t1_tr_ms = 4.0: must be larger than t1_te_ms (5)" in problems({"t1_te_ms": 5.0})
    assert "site[0].kernel = 'soft': unknown key" in problems({"kernel": "soft"})
    with pytest.raises(ScenarioError, match="modality: missing required key"):
        parse_mri_scenario({"name": "s", "seed": 1, "site": [{"name": "a"}]}, "s.toml")
    mixed = {
        "name": "s",
        "modality": "mri",
        "seed": 1,
        "site": [
            {"name": "a"},
            {"name": "b", "contrast_agent": "gadoxetate", "late_delay_s": 1200},
        ],
    }
    with pytest.raises(ScenarioError, match="the same late phase"):
        parse_mri_scenario(mixed, "s.toml")


def test_the_manifest_validates_for_the_lesion_type_task(tmp_path: Path) -> None:
    site = tiny("a", n_cases=6, class_mix=ClassMix(1.0, 1.0, 1.0))
    spec = MriScenario("m", 2, (site,))
    out = generate_mri_phantom(spec, tmp_path / "m")
    manifest = read_manifest(out / "a", spec.channels, Task.LESION_TYPE)
    assert sorted(int(c.label or 0) for c in manifest.cases) == [0, 0, 1, 1, 2, 2]
    assert all(c.label is not None for c in manifest.cases)
    assert {c.metadata["field_strength_t"] for c in manifest.cases} == {"1.5"}
    assert channels(site) == spec.channels
    # every case has a liver mask, checked as its lesion mask is
    assert [c.liver_mask for c in manifest.cases] == [
        out / "a" / "livers" / f"{c.case_id}.nii.gz" for c in manifest.cases
    ]
    assert check_images(manifest) == []
    # 3 is no label of lesion-type, 2 none of lesion-malignancy
    reported: list[str] = []
    assert (
        parse_label("3", Task.LESION_TYPE, lambda _field, message: reported.append(message)) is None
    )
    assert reported == [
        "'3' is out of range: use 0 (benign), 1 (primary malignant) or 2 (metastasis)"
    ]
    with pytest.raises(ManifestError, match="'2' is out of range: use 0 \\(benign\\) or 1"):
        read_manifest(out / "a", spec.channels, Task.MALIGNANCY)
    # a reused phantom is not rewritten
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    generate_mri_phantom(spec, out)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_the_phantom_command_writes_an_mri_scenario_and_a_simulation_configures_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hepafed phantom` dispatches an MRI scenario file (modality = "mri") to the MRI
    generator: the same files as generate_mri_phantom; --dicom is refused for it; and a
    simulation of it trains lesion-type on every channel, percentile-scaled, unless told
    otherwise, and refuses a binary task on three-way labels before anything runs."""
    from common.cli import main
    from common.config import ConfigError, RunConfig
    from simulations.mri_scenario import is_mri_scenario
    from simulations.simulate import modality_settings, scenario_config

    scenario = tmp_path / "tiny-mri.toml"
    scenario.write_text(
        'name = "tiny-mri"\nmodality = "mri"\nseed = 2\n[[site]]\nname = "a"\nn_cases = 6\n'
        "test_fraction = 0.5\nfov_mm = 120.0\npixel_spacing_mm = 2.0\n"
    )
    assert is_mri_scenario(scenario) and is_mri_scenario("liver-mri-3")
    assert not is_mri_scenario("liver-5") and not is_mri_scenario(tmp_path / "missing.toml")
    assert main(["phantom", "--scenario", str(scenario), "--out", str(tmp_path / "cli")]) == 0
    assert "MRI phantom 'tiny-mri' (1 sites)" in capsys.readouterr().out
    direct = generate_mri_phantom(load_mri_scenario(scenario), tmp_path / "direct")
    for f in sorted((direct / "a").rglob("*.nii.gz")):
        assert (tmp_path / "cli" / "a" / f.relative_to(direct / "a")).read_bytes() == f.read_bytes()
    assert main(["phantom", "--scenario", str(scenario), "--out", str(tmp_path / "x"),
                 "--dicom", str(tmp_path / "d")]) == 2  # fmt: skip
    assert "--dicom writes the CT phantom only" in capsys.readouterr().err
    spec = load_mri_scenario("liver-mri-3")
    cfg = scenario_config(spec, tmp_path / "cli", tmp_path, tmp_path / "run", {})
    assert cfg.task == "lesion-type" and cfg.data.intensity == "percentile"
    assert cfg.data.channels == spec.channels and len(spec.channels) == 7
    assert cfg.federation.min_sites == 1  # one training center, as in the study
    assert cfg.federation.external_sites == ("center-b", "center-c")
    own = scenario_config(spec, tmp_path / "cli", tmp_path, tmp_path / "run",
                          {"data.channels": "t2,dwi", "federation.min-sites": 1})  # fmt: skip
    assert own.data.channels == ("t2", "dwi")
    with pytest.raises(ValueError, match="MRI phantom whose labels are lesion types"):
        modality_settings(spec, {"task": "lesion-malignancy"})
    with pytest.raises(ConfigError, match="lesion-type.*eval.design = 'loso'"):
        RunConfig().replace({"task": "lesion-type", "eval.design": "loso"})


# simulate_mri_case's images (channels sorted by name) and lesion mask as generator mri-1.0
# made them: mri-1.1 only adds the liver mask, drawing nothing more from any random stream
MRI_1_0_DIGESTS = {
    (0, 1): "b4208403cb88297ae362e3b4d164605ad4c955f50c0f8a56ed1857ee07706639",
    (1, 2): "cf2447fd3c145fe9112c7fcfd46d147fbc1bbea260d2209695e205d736dcb0e7",
}


def test_liver_masks_leave_the_images_and_lesion_masks_of_before() -> None:
    site = tiny("hash")
    for (index, label), digest in MRI_1_0_DIGESTS.items():
        _, _, images, mask, liver = simulate_mri_case(site, 7, index, label, 2)
        assert array_digest(*[images[k] for k in sorted(images)], mask) == digest, index
        assert liver.dtype == np.uint8 and liver.shape == mask.shape
        assert liver[mask > 0].all()  # the liver includes its lesion
        assert 0.05 <= liver.mean() <= 0.8 and liver.sum() > 3 * mask.sum()
