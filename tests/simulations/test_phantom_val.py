"""The phantom's val split: carved out of the training cases by a stream of its own, so
that every test split, label and image stays what it was before val existed."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulations import phantom
from simulations.phantom import generate_phantom, labels_and_splits
from simulations.scenario import (
    Scenario,
    ScenarioError,
    list_scenarios,
    load_scenario,
    parse_scenario,
)
from simulations.site_profile import SiteProfile


def legacy_labels_and_splits(site: SiteProfile, seed: int) -> tuple[np.ndarray, list[str]]:
    """The labels and train/test split of generator 2.0 (before val), inlined as it was."""
    rng = np.random.default_rng([seed, zlib.crc32(site.name.encode("utf-8"))])
    n_malignant = round(site.prevalence * site.n_cases)
    fraction = 1.0 if site.role == "external" else site.test_fraction
    n_test = (round(fraction * (site.n_cases - n_malignant)), round(fraction * n_malignant))
    labels = rng.permutation(np.arange(site.n_cases) < n_malignant).astype(int)
    split = ["train"] * site.n_cases
    for value in (0, 1):
        members = np.flatnonzero(labels == value)
        for i in rng.permutation(members)[: n_test[value]]:
            split[i] = "test"
    return labels, split


def assert_val_carved_from_train(site: SiteProfile, seed: int) -> None:
    """Same labels and test cases as before; val = round(val_fraction x train) per label,
    drawn from the old train cases only (none at an external site)."""
    old_labels, old_split = legacy_labels_and_splits(site, seed)
    labels, split = labels_and_splits(site, seed)
    assert labels.tolist() == old_labels.tolist()
    indices = range(site.n_cases)
    assert [i for i in indices if split[i] == "test"] == [
        i for i in indices if old_split[i] == "test"
    ]
    assert set(split) <= {"train", "val", "test"}
    for value in (0, 1):
        old_train = [i for i in indices if old_split[i] == "train" and labels[i] == value]
        val = [i for i in indices if split[i] == "val" and labels[i] == value]
        assert set(val) <= set(old_train)  # disjoint from test, taken from train
        fraction = 0.0 if site.role == "external" else site.val_fraction
        assert len(val) == round(fraction * len(old_train))
        assert site.split_sizes.val[value] == len(val)
        assert site.split_sizes.train[value] == len(old_train) - len(val)


@pytest.mark.parametrize("name", list_scenarios())
def test_every_bundled_test_split_is_unchanged_and_val_is_carved_from_train(name: str) -> None:
    spec = load_scenario(name)
    for site in spec.sites:
        assert_val_carved_from_train(site, spec.seed)
        n_val = labels_and_splits(site, spec.seed)[1].count("val")
        if site.role == "external":
            assert n_val == 0
        else:  # the bundled training sites keep the default 0.2
            assert site.val_fraction == 0.2 and n_val > 0


@settings(max_examples=150, deadline=None)
@given(
    n_cases=st.integers(2, 80),
    prevalence=st.floats(0.0, 1.0),
    test_fraction=st.floats(0.0, 0.9),
    val_fraction=st.floats(0.0, 0.9),
    external=st.booleans(),
    seed=st.integers(0, 2**40),
)
def test_val_never_moves_a_label_or_a_test_case(
    n_cases: int,
    prevalence: float,
    test_fraction: float,
    val_fraction: float,
    external: bool,
    seed: int,
) -> None:
    site = SiteProfile(
        "h",
        role="external" if external else "train",
        n_cases=n_cases,
        prevalence=prevalence,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
    )
    assert_val_carved_from_train(site, seed)


def test_val_fraction_0_gives_the_split_of_before() -> None:
    site = SiteProfile("hospital-a", n_cases=60, val_fraction=0.0)
    assert labels_and_splits(site, 5)[1] == legacy_labels_and_splits(site, 5)[1]


def test_an_external_site_has_no_val_whatever_its_val_fraction(tmp_path: Path) -> None:
    body = 'name = "s"\nseed = 3\n[[site]]\nname = "far"\nrole = "external"\nval_fraction = 0.5\n'
    (tmp_path / "s.toml").write_text(body)
    site = load_scenario(tmp_path / "s.toml").sites[0]
    assert labels_and_splits(site, 3)[1] == ["test"] * site.n_cases


def small(name: str, n_cases: int) -> SiteProfile:
    return SiteProfile(name, n_cases=n_cases, fov_mm=120.0, pixel_spacing_mm=2.0)


def manifest_splits(site_dir: Path) -> list[str]:
    with (site_dir / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        return [row["split"] for row in csv.DictReader(fh)]


def test_phantom_json_counts_val_and_an_older_phantom_without_val_is_regenerated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = Scenario("s", 4, (small("a", 20),))
    out = generate_phantom(spec, tmp_path / "p")
    splits = manifest_splits(out / "a")
    meta = json.loads((out / "phantom.json").read_text())
    assert meta["generator_version"] == phantom.GENERATOR_VERSION != "2.0"
    assert meta["sites"][0]["n_val"] == splits.count("val") == 3
    assert meta["sites"][0]["n_test"] == splits.count("test") == 5
    # make it what generator 2.0 wrote: no val rows, no val_fraction, its version
    manifest = out / "a" / "manifest.csv"
    manifest.write_text(manifest.read_text().replace(",val,", ",train,"))
    del meta["resolved_scenario"]["sites"][0]["val_fraction"]
    meta["generator_version"] = "2.0"
    (out / "phantom.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.INFO, logger="hepafed.progress"):
        generate_phantom(spec, out)
    assert "older or edited version" in caplog.text and "generator_version" in caplog.text
    assert manifest_splits(out / "a") == splits


@pytest.mark.parametrize(
    ("site", "message"),
    [
        (  # 1 benign and 1 malignant case left after test; round(0.6 x 1) = 1 takes each
            {"n_cases": 4, "prevalence": 0.5, "test_fraction": 0.5, "val_fraction": 0.6},
            "s.toml: site[0].val_fraction = 0.6: leaves site 'a' no train cases: round(0.6 x 1) "
            "= 1 of its 1 benign and round(0.6 x 1) = 1 of its 1 malignant cases left after "
            "the test split go to the val split; use val_fraction in [0, 0.5]",
        ),
        (  # 3 of each label left after test; round(0.9 x 3) = 3, round(0.83 x 3) = 2
            {"n_cases": 10, "prevalence": 0.5, "test_fraction": 0.5, "val_fraction": 0.9},
            "s.toml: site[0].val_fraction = 0.9: leaves site 'a' no train cases: round(0.9 x 3) "
            "= 3 of its 3 benign and round(0.9 x 3) = 3 of its 3 malignant cases left after "
            "the test split go to the val split; use val_fraction in [0, 0.83]",
        ),
    ],
)
def test_a_val_fraction_that_leaves_no_train_case_is_a_scenario_error(
    site: dict[str, object], message: str
) -> None:
    with pytest.raises(ScenarioError) as error:
        parse_scenario({"name": "s", "seed": 1, "site": [{"name": "a", **site}]}, "s.toml")
    assert str(error.value) == message


@settings(max_examples=200, deadline=None)
@given(
    n_cases=st.integers(2, 60),
    prevalence=st.floats(0.0, 1.0),
    test_fraction=st.floats(0.0, 0.9),
    val_fraction=st.floats(0.0, 0.9),
)
def test_an_accepted_training_site_keeps_train_and_test_cases(
    n_cases: int, prevalence: float, test_fraction: float, val_fraction: float
) -> None:
    site = {
        "name": "a",
        "n_cases": n_cases,
        "prevalence": prevalence,
        "test_fraction": test_fraction,
        "val_fraction": val_fraction,
    }
    try:
        spec = parse_scenario({"name": "s", "seed": 1, "site": [site]}, "s.toml")
    except ScenarioError as error:
        assert str(error).startswith(("s.toml: site[0].test_fraction = ", "s.toml: site[0].val"))
        assert "leaves site 'a' no t" in str(error) and "; use " in str(error)
        return
    splits = labels_and_splits(spec.sites[0], seed=1)[1]
    assert splits.count("train") >= 1 and splits.count("test") >= 1
    assert dataclasses.asdict(spec.sites[0])["val_fraction"] == val_fraction
