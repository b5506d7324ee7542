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
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

KERNELS = ("soft", "standard", "sharp")
ROLES = ("train", "external")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
SCENARIO_FOLDER = "scenarios"  # inside the ``simulations`` package (package data)


class ScenarioError(ValueError):
    """A scenario cannot be loaded; the message lists every problem, one a line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class BenignMix:
    """Relative weights of the benign lesion types (normalised when sampling)."""

    cyst: float = 0.25
    hemangioma: float = 0.45
    flash_hemangioma: float = 0.30

    def probabilities(self) -> tuple[float, float, float]:
        total = self.cyst + self.hemangioma + self.flash_hemangioma
        return (self.cyst / total, self.hemangioma / total, self.flash_hemangioma / total)


def _range(default: Any, low: float, high: float) -> Any:
    """A numeric parameter with its validated range."""
    return field(default=default, metadata={"range": (low, high)})


def _choice(default: str, choices: tuple[str, ...]) -> Any:
    """A parameter with a closed set of valid values."""
    return field(default=default, metadata={"choices": choices})


@dataclass(frozen=True)
class SiteProfile:
    """One hospital: scanner, protocol and case mix (units in the names; docs/phantom.md)."""

    name: str
    role: str = _choice("train", ROLES)
    n_cases: int = _range(150, 2, 100_000)
    test_fraction: float = _range(0.25, 0.0, 0.9)
    # metadata written to the manifest (kvp also scales the iodine contrast)
    vendor: str = "generic"
    scanner_model: str = "ct-64"
    kvp: int = _range(120, 70, 150)
    field_strength_t: float | None = _range(None, 0.2, 7.0)  # MRI only; empty for CT
    # scanner
    kernel: str = _choice("standard", KERNELS)
    hu_scale: float = _range(1.0, 0.8, 1.2)
    hu_offset: float = _range(0.0, -50.0, 50.0)
    noise_sigma_hu: float = _range(16.0, 0.0, 60.0)
    dose_factor: float = _range(1.0, 0.1, 4.0)
    slice_thickness_mm: float = _range(2.5, 0.5, 10.0)
    pixel_spacing_mm: float = _range(1.5, 0.5, 3.0)
    fov_mm: float = _range(240.0, 100.0, 500.0)
    z_extent_mm: float = _range(48.0, 10.0, 300.0)
    bias_field: float = _range(0.0, 0.0, 0.5)
    # contrast timing (seconds after the start of injection) and patient motion
    arterial_delay_s: float = _range(35.0, 10.0, 60.0)
    portal_delay_s: float = _range(70.0, 40.0, 120.0)
    delayed_delay_s: float = _range(180.0, 120.0, 600.0)
    bolus_jitter_s: float = _range(4.0, 0.0, 15.0)
    motion_mm: float = _range(3.0, 0.0, 10.0)
    # case mix
    prevalence: float = _range(0.45, 0.0, 1.0)
    lesion_size_median_mm: float = _range(16.0, 5.0, 80.0)
    lesion_size_spread: float = _range(0.5, 0.0, 1.5)
    lesion_size_min_mm: float = _range(6.0, 4.0, 100.0)
    lesion_size_max_mm: float = _range(60.0, 5.0, 120.0)
    cirrhosis_fraction: float = _range(0.4, 0.0, 1.0)
    steatosis_fraction: float = _range(0.3, 0.0, 1.0)
    atypical_hcc_fraction: float = _range(0.4, 0.0, 1.0)
    capsule_fraction: float = _range(0.4, 0.0, 1.0)
    slow_hemangioma_fraction: float = _range(0.3, 0.0, 1.0)
    benign_mix: BenignMix = field(default_factory=BenignMix)

    @property
    def matrix_size(self) -> int:
        """Pixels per in-plane side: field of view over pixel spacing."""
        return max(8, round(self.fov_mm / self.pixel_spacing_mm))


@dataclass(frozen=True)
class Scenario:
    """A set of hospitals generated together from one seed."""

    name: str
    seed: int
    sites: tuple[SiteProfile, ...]
    dims: int = 2
    description: str = ""
    source: str = field(default="", compare=False)

    @property
    def external_sites(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sites if s.role == "external")

    @property
    def training_sites(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sites if s.role == "train")

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


# Validation rules: key -> (kind, low, high); kind is "int", "float", "str", "name"
# (a safe folder name), "table", "sites", or a tuple of the valid choices.
Rule = tuple[Any, float | None, float | None]
KINDS = {
    "int": "int",
    "float": "float",
    "float | None": "float",
    "str": "str",
    "BenignMix": "table",
}


def _rule(f: dataclasses.Field[Any]) -> Rule:
    if "choices" in f.metadata:
        return (f.metadata["choices"], None, None)
    low, high = f.metadata.get("range", (None, None))
    return ("name" if f.name == "name" else KINDS[str(f.type)], low, high)


SITE_RULES: dict[str, Rule] = {f.name: _rule(f) for f in dataclasses.fields(SiteProfile)}
MIX_RULES: dict[str, Rule] = {
    k: ("float", 0.0, 1000.0) for k in ("cyst", "hemangioma", "flash_hemangioma")
}
TOP_RULES: dict[str, Rule] = {
    "name": ("name", None, None),
    "seed": ("int", 0, 2**63 - 1),
    "description": ("str", None, None),
    "dims": ((2, 3), None, None),
    "defaults": ("table", None, None),
    "site": ("sites", None, None),
}
EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "table": "a table",
    "name": "a string",
    "sites": "an array of [[site]] tables",
}


_MISSING = object()  # marks a problem about a key that has no value


class _Checker:
    """Collects problems for one file, so the user sees all of them at once."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[str] = []

    def add(self, key: str, value: Any, message: str) -> None:
        shown = f" = {value!r}" if value is not _MISSING else ""
        self.problems.append(f"{self.file}: {key}{shown}: {message}")

    def value(self, key: str, value: Any, rule: Rule) -> bool:
        """Check one value against its rule; record a problem and return False if bad."""
        kind, low, high = rule
        if isinstance(kind, tuple):
            if value in kind and type(value) is type(kind[0]):
                return True
            self.add(key, value, "must be one of " + ", ".join(repr(k) for k in kind))
            return False
        ok_type = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, int | float) and not isinstance(value, bool),
            "str": isinstance(value, str),
            "name": isinstance(value, str),
            "table": isinstance(value, dict),
            "sites": isinstance(value, list) and all(isinstance(v, dict) for v in value),
        }[kind]
        span = f" in [{low:g}, {high:g}]" if low is not None and high is not None else ""
        if not ok_type:
            self.add(key, value, f"must be {EXPECTED[kind]}{span}, not {type(value).__name__}")
            return False
        if kind == "name" and not SAFE_NAME.match(value):
            self.add(
                key,
                value,
                "must be a safe name: letters, digits, '-' or '_', "
                "starting with a letter or digit, at most 64 characters",
            )
            return False
        if span and not low <= value <= high:
            self.add(key, value, f"must be in [{low:g}, {high:g}]")
            return False
        return True

    def table(self, prefix: str, raw: dict[str, Any], rules: dict[str, Rule]) -> dict[str, Any]:
        """The valid entries of a table; unknown keys and bad values become problems."""
        good: dict[str, Any] = {}
        for key, value in raw.items():
            dotted = f"{prefix}.{key}" if prefix else key
            if key not in rules:
                self.add(dotted, value, "unknown key; valid keys are " + ", ".join(rules))
            elif self.value(dotted, value, rules[key]):
                good[key] = value
        return good


def _benign_mix(check: _Checker, key: str, raw: dict[str, Any], base: BenignMix) -> BenignMix:
    """A benign mix table over ``base`` (keys not given keep their value)."""
    good = check.table(key, raw, MIX_RULES)
    mix = dataclasses.replace(base, **{k: float(v) for k, v in good.items()})
    if sum(dataclasses.astuple(mix)) <= 0:
        check.add(key, raw, "weights must not all be 0")
    return mix


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    """Integers given for float parameters become floats (TOML ``2`` vs ``2.0``)."""
    return {k: float(v) if SITE_RULES[k][0] == "float" else v for k, v in values.items()}


def _site(
    check: _Checker, index: int, raw: dict[str, Any], defaults: dict[str, Any]
) -> SiteProfile | None:
    prefix = f"site[{index}]"
    n_before = len(check.problems)
    values = {**defaults, **check.table(prefix, raw, SITE_RULES)}
    if isinstance(raw.get("benign_mix"), dict):
        base = defaults.get("benign_mix", BenignMix())
        values["benign_mix"] = _benign_mix(check, f"{prefix}.benign_mix", raw["benign_mix"], base)
    if "name" not in raw:
        check.add(f"{prefix}.name", _MISSING, "missing required key (the site's folder name)")
    if len(check.problems) > n_before:
        return None
    site = SiteProfile(**_coerce(values))
    if not site.arterial_delay_s < site.portal_delay_s < site.delayed_delay_s:
        check.add(
            f"{prefix}.portal_delay_s",
            site.portal_delay_s,
            f"must lie between arterial_delay_s ({site.arterial_delay_s:g}) and "
            f"delayed_delay_s ({site.delayed_delay_s:g})",
        )
    if not site.lesion_size_min_mm < site.lesion_size_max_mm:
        check.add(
            f"{prefix}.lesion_size_max_mm",
            site.lesion_size_max_mm,
            f"must be larger than lesion_size_min_mm ({site.lesion_size_min_mm:g})",
        )
    if site.fov_mm / site.pixel_spacing_mm > 1024:
        check.add(
            f"{prefix}.fov_mm",
            site.fov_mm,
            f"gives more than 1024 pixels at pixel_spacing_mm {site.pixel_spacing_mm:g}",
        )
    return site if len(check.problems) == n_before else None


def parse_scenario(data: dict[str, Any], file: str) -> Scenario:
    """Validate a parsed TOML document; raise ScenarioError listing every problem."""
    check = _Checker(file)
    top = check.table("", data, TOP_RULES)
    for key in ("name", "seed", "site"):
        if key not in data:
            check.add(key, _MISSING, f"missing required key ({EXPECTED[TOP_RULES[key][0]]})")
    defaults: dict[str, Any] = {}
    if "defaults" in top:
        raw_defaults = dict(top["defaults"])
        if "name" in raw_defaults:
            check.add(
                "defaults.name", raw_defaults.pop("name"), "a site name cannot have a default"
            )
        defaults = check.table("defaults", raw_defaults, SITE_RULES)
        if isinstance(raw_defaults.get("benign_mix"), dict):
            defaults["benign_mix"] = _benign_mix(
                check, "defaults.benign_mix", raw_defaults["benign_mix"], BenignMix()
            )
    sites: list[SiteProfile] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(top.get("site", [])):
        site = _site(check, i, raw, defaults)
        if site is None:
            continue
        if site.name in seen:
            check.add(
                f"site[{i}].name",
                site.name,
                f"duplicate site name (already used by site[{seen[site.name]}])",
            )
        seen.setdefault(site.name, i)
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


def list_scenarios() -> list[str]:
    """Names of the bundled scenarios (``simulations/scenarios/*.toml``)."""
    folder = resources.files("simulations").joinpath(SCENARIO_FOLDER)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A bundled scenario by name (``"liver-5"``) or a scenario file by path."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith(".toml") or "/" in text or "\\" in text:
        path = Path(name_or_path)
        if not path.is_file():
            raise ScenarioError([f"{path}: scenario file not found"])
        raw, file = path.read_bytes(), path.name
    else:
        if text not in list_scenarios():
            raise ScenarioError(
                [
                    f"unknown scenario {text!r}: bundled scenarios are "
                    + ", ".join(repr(n) for n in list_scenarios())
                    + " (or give the path of a .toml file)"
                ]
            )
        raw = resources.files("simulations").joinpath(SCENARIO_FOLDER, f"{text}.toml").read_bytes()
        file = f"{text}.toml"
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError([f"{file}: not valid TOML: {exc}"]) from exc
    return parse_scenario(data, file)
