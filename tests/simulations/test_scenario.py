"""Scenario files: bundled scenarios, defaults, and precise errors for every mistake."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import simulations
from simulations.phantom import labels_and_splits
from simulations.scenario import (
    Scenario,
    ScenarioError,
    list_scenarios,
    load_scenario,
    parse_scenario,
)
from simulations.scenario_schema import SITE_RULES
from simulations.site_profile import BenignMix, SiteProfile

HEADER = 'name = "liver-x"\nseed = 3\n'


def write(tmp_path: Path, text: str, name: str = "liver-x.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, text))
    return str(info.value)


def test_bundled_scenarios_are_listed_and_shipped_next_to_the_package() -> None:
    assert {"liver-2", "liver-5"} <= set(list_scenarios())
    folder = Path(simulations.__file__).parent / "scenarios"
    assert (folder / "liver-5.toml").is_file()
    assert (folder / "liver-2.toml").is_file()


def test_liver5_has_four_moderately_different_trainers_and_one_shifted_external() -> None:
    spec = load_scenario("liver-5")
    assert spec.name == "liver-5" and spec.dims == 2
    assert spec.training_sites == ("hospital-a", "hospital-b", "hospital-c", "hospital-d")
    assert spec.external_sites == ("hospital-e",)
    trainers = [spec.site(n) for n in spec.training_sites]
    assert {s.kernel for s in trainers} <= {"standard", "soft"}
    assert len({s.vendor for s in trainers}) == 4
    for s in trainers:
        assert 1.25 <= s.slice_thickness_mm <= 3.0
        assert 30.0 <= s.arterial_delay_s <= 40.0
        assert 0.8 <= s.dose_factor <= 1.2
        assert 0.35 <= s.prevalence <= 0.55
        assert 150 <= s.n_cases <= 200
    ext = spec.site("hospital-e")
    assert ext.arterial_delay_s <= 22.0 and ext.kernel == "sharp"
    assert ext.slice_thickness_mm == 5.0 and ext.dose_factor <= 0.6
    assert ext.lesion_size_median_mm < min(s.lesion_size_median_mm for s in trainers)
    assert ext.prevalence > max(s.prevalence for s in trainers)
    assert 180 <= ext.n_cases <= 220


def test_liver2_is_tiny_with_two_training_sites() -> None:
    spec = load_scenario("liver-2")
    assert len(spec.training_sites) == 2 and spec.external_sites == ()
    assert all(30 <= s.n_cases <= 50 for s in spec.sites)


def test_loading_by_path_equals_loading_by_name() -> None:
    path = Path(simulations.__file__).parent / "scenarios" / "liver-5.toml"
    assert load_scenario(path) == load_scenario("liver-5")
    assert load_scenario(str(path)) == load_scenario("liver-5")


def test_defaults_apply_to_every_site_and_sites_override_them(tmp_path: Path) -> None:
    spec = load_scenario(
        write(
            tmp_path,
            HEADER
            + """
dims = 3
[defaults]
kernel = "sharp"
noise_sigma_hu = 20
benign_mix = { cyst = 2.0 }
[[site]]
name = "a"
[[site]]
name = "b"
kernel = "soft"
role = "external"
benign_mix = { hemangioma = 0.0 }
""",
        )
    )
    a, b = spec.sites
    assert (a.kernel, b.kernel) == ("sharp", "soft")
    assert a.noise_sigma_hu == b.noise_sigma_hu == 20.0
    assert isinstance(a.noise_sigma_hu, float)  # TOML integer for a float parameter
    assert a.benign_mix == BenignMix(cyst=2.0)
    assert b.benign_mix == BenignMix(cyst=2.0, hemangioma=0.0)
    assert a.n_cases == SiteProfile("x").n_cases  # untouched keys keep built-in defaults
    assert spec.dims == 3 and spec.external_sites == ("b",) and spec.training_sites == ("a",)


def test_to_dict_resolves_every_site_parameter() -> None:
    spec = load_scenario("liver-2")
    data = spec.to_dict()
    assert data["name"] == "liver-2" and data["seed"] == spec.seed
    fields = {f.name for f in dataclasses.fields(SiteProfile)}
    assert all(set(site) == fields for site in data["sites"])
    assert fields == set(SITE_RULES)  # every parameter is validated


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            '[[site]]\nname = "a"\n[[site]]\nname = "b"\n[[site]]\nname = "c"\nkernel = "ultra"\n',
            "liver-x.toml: site[2].kernel = 'ultra': must be one of 'soft', 'standard', 'sharp'",
        ),
        (
            '[[site]]\nname = "a"\nkernal = "soft"\n',
            "liver-x.toml: site[0].kernal = 'soft': unknown key; valid keys are name, role,",
        ),
        (
            '[[site]]\nname = "a"\nn_cases = "many"\n',
            "liver-x.toml: site[0].n_cases = 'many': must be an integer in [2, 100000], not str",
        ),
        (
            '[[site]]\nname = "a"\nprevalence = 1.5\n',
            "liver-x.toml: site[0].prevalence = 1.5: must be in [0, 1]",
        ),
        (
            '[[site]]\nname = "a"\ndose_factor = true\n',
            "liver-x.toml: site[0].dose_factor = True: must be a number in [0.1, 4], not bool",
        ),
        (
            '[[site]]\nname = "a"\n[[site]]\nname = "a"\n',
            "liver-x.toml: site[1].name = 'a': duplicate site name (already used by site[0])",
        ),
        (
            '[[site]]\nrole = "train"\n',
            "liver-x.toml: site[0].name: missing required key",
        ),
        (
            '[[site]]\nname = "../etc"\n',
            "liver-x.toml: site[0].name = '../etc': must be a safe name",
        ),
        (
            '[[site]]\nname = "a"\nrole = "test"\n',
            "liver-x.toml: site[0].role = 'test': must be one of 'train', 'external'",
        ),
        (
            '[[site]]\nname = "a"\narterial_delay_s = 45.0\nportal_delay_s = 42.0\n',
            "liver-x.toml: site[0].portal_delay_s = 42.0: must lie between arterial_delay_s (45)",
        ),
        (
            '[[site]]\nname = "a"\nbenign_mix = { lipoma = 1.0 }\n',
            "liver-x.toml: site[0].benign_mix.lipoma = 1.0: unknown key; valid keys are cyst, "
            "hemangioma, flash_hemangioma",
        ),
        (
            'dims = 4\n[[site]]\nname = "a"\n',
            "liver-x.toml: dims = 4: must be one of 2, 3",
        ),
        (
            'colour = "red"\n[[site]]\nname = "a"\n',
            "liver-x.toml: colour = 'red': unknown key; valid keys are name, seed, description, "
            "dims, defaults, site",
        ),
        (
            '[defaults]\nname = "a"\n[[site]]\nname = "a"\n',
            "liver-x.toml: defaults.name = 'a': a site name cannot have a default",
        ),
        (
            '[defaults]\nkernel = "ultra"\n[[site]]\nname = "a"\n',
            "liver-x.toml: defaults.kernel = 'ultra': must be one of 'soft', 'standard', 'sharp'",
        ),
        (
            '[site]\nname = "a"\n',
            "liver-x.toml: site = {'name': 'a'}: must be an array of [[site]] tables, not dict",
        ),
        (  # the phantom is CT only: no MRI field strength
            '[[site]]\nname = "a"\nfield_strength_t = 1.5\n',
            "liver-x.toml: site[0].field_strength_t = 1.5: unknown key; valid keys are name,",
        ),
        (
            '[[site]]\nname = "a"\nlesion_size_min_mm = 30.0\nlesion_size_max_mm = 30.5\n',
            "liver-x.toml: site[0].lesion_size_min_mm = 30.0: must be at most 20 while "
            "benign_mix.flash_hemangioma > 0 (0.3): flash hemangiomas are at most 20 mm; lower "
            "lesion_size_min_mm or set benign_mix.flash_hemangioma = 0",
        ),
        (
            '[[site]]\nname = "a"\nlesion_size_min_mm = 12.0\nlesion_size_max_mm = 12.0\n',
            "liver-x.toml: site[0].lesion_size_max_mm = 12.0: must be larger than "
            "lesion_size_min_mm (12)",
        ),
        (  # 2 benign and 2 malignant cases: round(0.25 x 2) = 0 test cases of each
            '[[site]]\nname = "small"\nn_cases = 4\n',
            "liver-x.toml: site[0].test_fraction = 0.25: leaves site 'small' no test cases: "
            "round(0.25 x 2) = 0 of its 2 benign and round(0.25 x 2) = 0 of its 2 malignant "
            "cases go to the test split; use test_fraction in [0.26, 0.74] or n_cases = 5 or more",
        ),
        (
            '[[site]]\nname = "a"\nn_cases = 2\ntest_fraction = 0.9\n',
            "liver-x.toml: site[0].test_fraction = 0.9: leaves site 'a' no train cases: "
            "round(0.9 x 1) = 1 of its 1 benign and round(0.9 x 1) = 1 of its 1 malignant cases "
            "go to the test split; use n_cases = 9 or more",
        ),
        (
            '[[site]]\nname = "a"\ntest_fraction = 0.0\n',
            "liver-x.toml: site[0].test_fraction = 0.0: leaves site 'a' no test cases: round(0 x "
            "82) = 0 of its 82 benign and round(0 x 68) = 0 of its 68 malignant cases go to the "
            "test split; use test_fraction in [0.01, 0.9]",
        ),
    ],
)
def test_each_mistake_names_file_key_value_and_valid_values(
    tmp_path: Path, body: str, expected: str
) -> None:
    assert expected in error_of(tmp_path, HEADER + body)


def test_flash_hemangiomas_need_not_cap_sizes_when_none_are_drawn(tmp_path: Path) -> None:
    body = (
        '[[site]]\nname = "a"\nlesion_size_min_mm = 30.0\nbenign_mix = { flash_hemangioma = 0 }\n'
    )
    assert load_scenario(write(tmp_path, HEADER + body)).sites[0].lesion_size_min_mm == 30.0


@pytest.mark.parametrize("n_cases", [2, 3, 4, 7])
def test_an_external_site_has_every_case_in_its_test_split(tmp_path: Path, n_cases: int) -> None:
    body = f'[[site]]\nname = "a"\nrole = "external"\nn_cases = {n_cases}\ntest_fraction = 0.0\n'
    site = load_scenario(write(tmp_path, HEADER + body)).sites[0]
    assert labels_and_splits(site, seed=3)[1] == ["test"] * n_cases


@settings(max_examples=200, deadline=None)
@given(
    n_cases=st.integers(2, 60),
    prevalence=st.floats(0.0, 1.0),
    test_fraction=st.floats(0.0, 0.9),
)
def test_an_accepted_training_site_has_train_and_test_cases(
    n_cases: int, prevalence: float, test_fraction: float
) -> None:
    site = {"name": "a", "n_cases": n_cases, "prevalence": prevalence}
    site["test_fraction"] = test_fraction
    try:
        spec = parse_scenario({"name": "s", "seed": 1, "site": [site]}, "s.toml")
    except ScenarioError as error:
        assert str(error).startswith("s.toml: site[0].test_fraction = ")
        assert "leaves site 'a' no t" in str(error) and "; use " in str(error)
        return
    labels, splits = labels_and_splits(spec.sites[0], seed=1)
    assert 1 <= splits.count("test") <= n_cases - 1
    assert labels.sum() == round(prevalence * n_cases)


def test_cross_key_rules_are_checked_next_to_single_key_errors(tmp_path: Path) -> None:
    message = error_of(
        tmp_path,
        HEADER
        + """
[[site]]
name = "a"
kernel = "ultra"
arterial_delay_s = 45.0
portal_delay_s = 42.0
lesion_size_min_mm = 30.0
lesion_size_max_mm = 20.0
[[site]]
name = "a"
n_cases = "many"
""",
    )
    problems = [line.split(": ")[1] for line in message.splitlines()]
    assert problems == [
        "site[0].kernel = 'ultra'",
        "site[0].portal_delay_s = 42.0",
        "site[0].lesion_size_max_mm = 20.0",
        "site[0].lesion_size_min_mm = 30.0",  # flash hemangiomas (weight 0.3) are <= 20 mm
        "site[1].n_cases = 'many'",
        "site[1].name = 'a'",  # a duplicate, reported although site[1] has another error
    ]


def test_a_rule_involving_an_invalid_value_is_not_judged_on_a_stand_in(tmp_path: Path) -> None:
    # the site's arterial_delay_s is out of range: the delay order is not checked against
    # the value from [defaults] (45 s, after portal_delay_s), which the site replaces
    body = """
[defaults]
arterial_delay_s = 45.0
[[site]]
name = "a"
arterial_delay_s = 100.0
portal_delay_s = 42.0
"""
    message = error_of(tmp_path, HEADER + body)
    assert message.splitlines() == [
        f"{tmp_path / 'liver-x.toml'}: site[0].arterial_delay_s = 100.0: must be in [10, 60]"
    ]
    # the same for a bad value in [defaults] that a site inherits
    body = '[defaults]\nportal_delay_s = 500.0\n[[site]]\nname = "a"\n'
    assert error_of(tmp_path, HEADER + body).splitlines() == [
        f"{tmp_path / 'liver-x.toml'}: defaults.portal_delay_s = 500.0: must be in [40, 120]"
    ]


def test_messages_name_the_file_by_the_path_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "studies").mkdir()
    path = write(tmp_path / "studies", HEADER + '[[site]]\nname = "a"\nkvp = 300\n', "bad.toml")
    write(tmp_path / "studies", "name = [unclosed\n", "broken.toml")
    monkeypatch.chdir(tmp_path)
    for as_given, shown in (
        ("studies/bad.toml", "studies/bad.toml"),
        ("./studies/bad.toml", "./studies/bad.toml"),
        (path, str(path)),
        (str(path), str(path)),
    ):
        with pytest.raises(ScenarioError) as info:
            load_scenario(as_given)
        assert str(info.value) == f"{shown}: site[0].kvp = 300: must be in [70, 150]"
    with pytest.raises(ScenarioError, match=r"^studies/broken\.toml: not valid TOML"):
        load_scenario("studies/broken.toml")
    with pytest.raises(ScenarioError, match=r"^studies/nope\.toml: scenario file not found"):
        load_scenario("studies/nope.toml")


def test_missing_top_level_keys_are_errors(tmp_path: Path) -> None:
    message = error_of(tmp_path, 'description = "no name, no seed, no sites"\n')
    assert "liver-x.toml: name: missing required key" in message
    assert "liver-x.toml: seed: missing required key" in message
    assert "liver-x.toml: site: missing required key" in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(
            write(
                tmp_path,
                HEADER
                + """
[[site]]
name = "a"
kernel = "ultra"
[[site]]
name = "b"
kvp = 300
bogus = 1
""",
            )
        )
    keys = [p.split(": ")[1].split(" = ")[0] for p in info.value.problems]
    assert keys == ["site[0].kernel", "site[1].kvp", "site[1].bogus"]
    assert isinstance(info.value, ValueError)


def test_unknown_bundled_name_lists_the_bundled_names() -> None:
    with pytest.raises(
        ScenarioError,
        match=r"unknown scenario 'liver-9': bundled scenarios "
        r"are .*'liver-2'.*'liver-5'",
    ):
        load_scenario("liver-9")


def test_missing_file_and_invalid_toml_are_scenario_errors(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="scenario file not found"):
        load_scenario(tmp_path / "nope.toml")
    with pytest.raises(ScenarioError, match=r"broken.toml: not valid TOML"):
        load_scenario(write(tmp_path, "name = [unclosed\n", "broken.toml"))


@settings(max_examples=40, deadline=None)
@given(
    prevalence=st.floats(0.0, 1.0),
    n_cases=st.integers(2, 500),
    thickness=st.floats(0.5, 10.0),
)
def test_values_in_range_are_accepted_unchanged(
    prevalence: float, n_cases: int, thickness: float
) -> None:
    site: dict[str, Any] = {
        "name": "a",
        "role": "external",  # every case is test: any n_cases and prevalence give a split
        "prevalence": prevalence,
        "n_cases": n_cases,
        "slice_thickness_mm": thickness,
    }
    spec = parse_scenario({"name": "s", "seed": 1, "site": [site]}, "s.toml")
    assert isinstance(spec, Scenario)
    got = spec.sites[0]
    assert (got.prevalence, got.n_cases, got.slice_thickness_mm) == (prevalence, n_cases, thickness)


@settings(max_examples=40, deadline=None)
@given(value=st.one_of(st.floats(-1e6, -1e-9), st.floats(1.0 + 1e-9, 1e6)))
def test_values_out_of_range_are_rejected_with_the_range(value: float) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(
            {"name": "s", "seed": 1, "site": [{"name": "a", "prevalence": value}]}, "s.toml"
        )
    assert str(info.value) == f"s.toml: site[0].prevalence = {value!r}: must be in [0, 1]"
