"""Scenario files: which hospitals a phantom has, their scanners and their case mix.

A scenario is a TOML file (see ``docs/phantom.md``)::

    name = "my-study"            # required
    seed = 7                     # required, integer >= 0
    description = "..."          # optional
    dims = 2                     # 2 (one slice per case, default) or 3 (volumes)
    [defaults]                   # optional: site keys applied to every site
    kernel = "standard"
    [[site]]                     # one table per hospital; only ``name`` is required
    name = "hospital-a"

Every problem is reported with the file, the dotted key (``site[2].kernel``,
sites counted from 0), the bad value and what would be valid. Unknown keys are
errors, so a typo never silently falls back to a default.

This module holds the ``Scenario``, the rules between the keys of a site (contrast
timing, lesion sizes, matrix size, the train/val/test split) and the reading, checking
and loading of a file; the keys and the values each takes are in ``scenario_schema``,
a site's parameters in ``site_profile``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from simulations.scenario_schema import EXPECTED, MISSING, MIX_RULES, SITE_RULES, TOP_RULES, Checker
from simulations.site_profile import FLASH_MAX_MM, BenignMix, SiteProfile, matrix_size, split_sizes

SCENARIO_FOLDER = "scenarios"  # inside the ``simulations`` package (package data)
MATRIX_MAX = 1024  # pixels per in-plane side


class ScenarioError(ValueError):
    """A scenario cannot be loaded; the message lists every problem, one a line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


class SiteRoles:
    """Which of a scenario's sites train and which only evaluate (CT and MRI alike)."""

    sites: tuple[Any, ...]

    @property
    def external_sites(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sites if s.role == "external")

    @property
    def training_sites(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sites if s.role == "train")


@dataclass(frozen=True)
class Scenario(SiteRoles):
    """A set of hospitals generated together from one seed."""

    name: str
    seed: int
    sites: tuple[SiteProfile, ...]
    dims: int = 2
    description: str = ""
    source: str = field(default="", compare=False)

    def site(self, name: str) -> SiteProfile:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(f"scenario {self.name!r} has no site {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved scenario (every site parameter), JSON-ready."""
        return {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "dims": self.dims,
            "sites": [dataclasses.asdict(s) for s in self.sites],
        }


def _benign_mix(
    check: Checker, key: str, raw: dict[str, Any], base: BenignMix
) -> tuple[BenignMix, bool]:
    """A benign mix table over ``base`` (keys not given keep their value); False if bad."""
    n_before = len(check.problems)
    good = check.table(key, raw, MIX_RULES)
    mix = dataclasses.replace(base, **{k: float(v) for k, v in good.items()})
    if sum(dataclasses.astuple(mix)) <= 0:
        check.add(key, raw, "weights must not all be 0")
    return mix, len(check.problems) == n_before


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    """Integers given for float parameters become floats (TOML ``2`` vs ``2.0``)."""
    return {k: float(v) if SITE_RULES[k][0] == "float" else v for k, v in values.items()}


def _built_in() -> dict[str, Any]:
    """The built-in default of every site parameter that has one (all but ``name``)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(SiteProfile):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return values


def _split_problem(site: dict[str, Any], name: str) -> str | None:
    """Why a site's test split is empty (or leaves a training site no other case), if so."""
    n, prevalence, fraction, role = (
        site[k] for k in ("n_cases", "prevalence", "test_fraction", "role")
    )

    def fine(n_cases: int, test_fraction: float) -> bool:
        n_test = sum(split_sizes(n_cases, prevalence, test_fraction, 0.0, role).test)
        return n_test >= 1 and (role == "external" or n_test < n_cases)

    if fine(n, fraction):
        return None
    sizes = split_sizes(n, prevalence, fraction, 0.0, role)
    n_malignant, (test_benign, test_malignant) = sizes.n_malignant, sizes.test
    empty = "test" if test_benign + test_malignant == 0 else "train"
    used = 1.0 if role == "external" else fraction
    advice = []
    fractions = [f / 100 for f in range(1, 91) if fine(n, f / 100)]
    if fractions and role == "train":
        low, high = fractions[0], fractions[-1]
        advice.append(
            f"test_fraction = {low:g}" if low == high else f"test_fraction in [{low:g}, {high:g}]"
        )
    # no site size helps a training site with test_fraction 0
    larger = next((m for m in range(n + 1, 100_001) if fine(m, fraction)), None) if used else None
    if larger is not None:
        advice.append(f"n_cases = {larger} or more")
    return (
        f"leaves site {name} no {empty} cases: round({used:g} x {n - n_malignant}) = "
        f"{test_benign} of its {n - n_malignant} benign and round({used:g} x {n_malignant}) = "
        f"{test_malignant} of its {n_malignant} malignant cases go to the test split"
        + (f"; use {' or '.join(advice)}" if advice else "")
    )


def _val_problem(site: dict[str, Any], name: str) -> str | None:
    """Why a training site's val split takes every case the test split left it, if so
    (checked once the test split leaves it some)."""
    n, prevalence, test_fraction, fraction, role = (
        site[k] for k in ("n_cases", "prevalence", "test_fraction", "val_fraction", "role")
    )

    def fine(val_fraction: float) -> bool:
        sizes = split_sizes(n, prevalence, test_fraction, val_fraction, role)
        return role == "external" or sum(sizes.train) >= 1

    if fine(fraction):
        return None
    sizes = split_sizes(n, prevalence, test_fraction, fraction, role)
    left = [v + t for v, t in zip(sizes.val, sizes.train, strict=True)]
    high = max(f / 100 for f in range(0, 91) if fine(f / 100))  # 0 always works here
    return (
        f"leaves site {name} no train cases: round({fraction:g} x {left[0]}) = {sizes.val[0]} "
        f"of its {left[0]} benign and round({fraction:g} x {left[1]}) = {sizes.val[1]} of its "
        f"{left[1]} malignant cases left after the test split go to the val split; use "
        f"val_fraction in [0, {high:g}]"
    )


def _cross_checks(check: Checker, prefix: str, site: dict[str, Any], bad: set[str]) -> None:
    """Rules between keys of one site, each made when every key it involves is valid.

    ``site`` holds the resolved values (built-in defaults, ``[defaults]``, the site's own
    keys); ``bad`` the keys whose own value (given by the site or by ``[defaults]``) is
    invalid: a rule involving one of them is skipped rather than judged on a stand-in.
    """

    def usable(*keys: str) -> bool:
        return not bad.intersection(keys)

    arterial, portal, delayed = (
        site[k] for k in ("arterial_delay_s", "portal_delay_s", "delayed_delay_s")
    )
    if usable("arterial_delay_s", "portal_delay_s", "delayed_delay_s") and not (
        arterial < portal < delayed
    ):
        check.add(
            f"{prefix}.portal_delay_s",
            portal,
            f"must lie between arterial_delay_s ({arterial:g}) and delayed_delay_s ({delayed:g})",
        )
    low, high = site["lesion_size_min_mm"], site["lesion_size_max_mm"]
    if usable("lesion_size_min_mm", "lesion_size_max_mm") and not low < high:
        check.add(
            f"{prefix}.lesion_size_max_mm",
            high,
            f"must be larger than lesion_size_min_mm ({low:g})",
        )
    flash = site["benign_mix"].flash_hemangioma
    if usable("lesion_size_min_mm", "benign_mix") and flash > 0 and low > FLASH_MAX_MM:
        check.add(
            f"{prefix}.lesion_size_min_mm",
            low,
            f"must be at most {FLASH_MAX_MM:g} while benign_mix.flash_hemangioma > 0 "
            f"({flash:g}): flash hemangiomas are at most {FLASH_MAX_MM:g} mm; lower "
            "lesion_size_min_mm or set benign_mix.flash_hemangioma = 0",
        )
    fov, spacing = site["fov_mm"], site["pixel_spacing_mm"]
    if usable("fov_mm", "pixel_spacing_mm") and matrix_size(fov, spacing) > MATRIX_MAX:
        check.add(
            f"{prefix}.fov_mm",
            fov,
            f"gives more than {MATRIX_MAX} pixels at pixel_spacing_mm {spacing:g}",
        )
    if usable("n_cases", "prevalence", "test_fraction", "role"):
        name = repr(site["name"]) if "name" in site else prefix
        problem = _split_problem(site, name)
        if problem is not None:
            check.add(f"{prefix}.test_fraction", site["test_fraction"], problem)
        elif usable("val_fraction"):
            problem = _val_problem(site, name)
            if problem is not None:
                check.add(f"{prefix}.val_fraction", site["val_fraction"], problem)


def _defaults(check: Checker, raw: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """The valid ``[defaults]`` values, and the site keys whose default is invalid."""
    raw = dict(raw)
    if "name" in raw:
        check.add("defaults.name", raw.pop("name"), "a site name cannot have a default")
    good = check.table("defaults", raw, SITE_RULES)
    bad = {k for k in raw if k in SITE_RULES} - good.keys()
    if isinstance(raw.get("benign_mix"), dict):
        good["benign_mix"], ok = _benign_mix(
            check, "defaults.benign_mix", raw["benign_mix"], BenignMix()
        )
        if not ok:
            bad.add("benign_mix")
    return good, bad


def _site(
    check: Checker,
    index: int,
    raw: dict[str, Any],
    defaults: dict[str, Any],
    bad_defaults: set[str],
) -> tuple[SiteProfile | None, str | None]:
    """Check one ``[[site]]`` table: its profile (None if it has a problem) and valid name."""
    prefix = f"site[{index}]"
    n_before = len(check.problems)
    good = check.table(prefix, raw, SITE_RULES)
    # a key is bad for this site if its own value is, or if it inherits a bad default
    # (a site's benign_mix merges over the default one, so a bad default mix stays bad)
    bad = {k for k in raw if k in SITE_RULES} - good.keys()
    bad |= {k for k in bad_defaults if k not in raw or k == "benign_mix"}
    values = {**defaults, **good}
    if isinstance(raw.get("benign_mix"), dict):
        base = defaults.get("benign_mix", BenignMix())
        values["benign_mix"], ok = _benign_mix(
            check, f"{prefix}.benign_mix", raw["benign_mix"], base
        )
        if not ok:
            bad.add("benign_mix")
    if "name" not in raw:
        check.add(f"{prefix}.name", MISSING, "missing required key (the site's folder name)")
    _cross_checks(check, prefix, {**_built_in(), **_coerce(values)}, bad)
    site = SiteProfile(**_coerce(values)) if len(check.problems) == n_before else None
    return site, good.get("name")


def parse_scenario(data: dict[str, Any], file: str) -> Scenario:
    """Validate a parsed TOML document; raise ScenarioError listing every problem.

    ``file`` names the source in every message (the path as the user gave it).
    """
    check = Checker(file)
    top = check.table("", data, TOP_RULES)
    for key in ("name", "seed", "site"):
        if key not in data:
            check.add(key, MISSING, f"missing required key ({EXPECTED[TOP_RULES[key][0]]})")
    defaults, bad_defaults = _defaults(check, top["defaults"]) if "defaults" in top else ({}, set())
    sites: list[SiteProfile] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(top.get("site", [])):
        site, name = _site(check, i, raw, defaults, bad_defaults)
        if name is not None:
            if name in seen:
                check.add(
                    f"site[{i}].name",
                    name,
                    f"duplicate site name (already used by site[{seen[name]}])",
                )
            seen.setdefault(name, i)
        if site is not None:
            sites.append(site)
    if "site" in top and not top["site"]:
        check.add("site", [], "a scenario needs at least one [[site]]")
    if check.problems:
        raise ScenarioError(check.problems)
    return Scenario(
        name=top["name"],
        seed=top["seed"],
        sites=tuple(sites),
        dims=top.get("dims", 2),
        description=top.get("description", ""),
        source=file,
    )


def validate_scenario(scenario: Scenario) -> None:
    """Make the checks of a scenario file on a scenario built or changed in code.

    Raises ScenarioError naming ``scenario.source`` (or the scenario) in every message.
    """
    data = scenario.to_dict()
    data["site"] = data.pop("sites")
    parse_scenario(data, scenario.source or f"scenario {scenario.name!r}")


def list_scenarios() -> list[str]:
    """Names of the bundled scenarios (``simulations/scenarios/*.toml``)."""
    folder = resources.files("simulations").joinpath(SCENARIO_FOLDER)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A bundled scenario by name (``"liver-5"``) or a scenario file by path.

    Messages name a file by its path as given (a bundled one by its installed path).
    """
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith(".toml") or "/" in text or "\\" in text:
        path = Path(name_or_path)
        if not path.is_file():
            raise ScenarioError([f"{text}: scenario file not found"])
        raw, file = path.read_bytes(), text
    else:
        if text not in list_scenarios():
            raise ScenarioError(
                [
                    f"unknown scenario {text!r}: bundled scenarios are "
                    + ", ".join(repr(n) for n in list_scenarios())
                    + " (or give the path of a .toml file)"
                ]
            )
        bundled = resources.files("simulations").joinpath(SCENARIO_FOLDER, f"{text}.toml")
        raw, file = bundled.read_bytes(), str(bundled)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError([f"{file}: not valid TOML: {exc}"]) from exc
    return parse_scenario(data, file)
