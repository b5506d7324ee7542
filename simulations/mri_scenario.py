"""MRI scenario files: which MRI hospitals a phantom has, their scanners, protocols, case mix.

An MRI scenario is a TOML file like a CT one (``scenario.py``), marked ``modality = "mri"``::

    name = "liver-mri-3"         # required
    modality = "mri"             # required
    seed = 11                    # required, integer >= 0
    description = "..."          # optional
    dims = 2                     # 2 (one slice per case, default) or 3
    [defaults]                   # optional: site keys applied to every site
    [[site]]                     # one table per hospital; only ``name`` is required
    name = "center-a"

The site keys are the fields of ``mri_site.MriSiteProfile``. Every problem is reported
with the file, the dotted key, the bad value and what would be valid; unknown keys are
errors. The bundled MRI scenarios live in ``simulations/scenarios/mri/`` (apart from the
CT ones, which ``scenario.load_scenario`` reads).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulations.mri_site import (
    HBP_MIN_DELAY_S,
    MIXES,
    MriSiteProfile,
    class_counts,
    split_counts,
)
from simulations.scenario import MATRIX_MAX, ScenarioError, SiteRoles
from simulations.scenario_schema import (
    EXPECTED,
    MISSING,
    TOP_RULES,
    Checker,
    Rule,
    bundled_names,
    is_scenario_path,
    read_scenario_toml,
)
from simulations.site_profile import matrix_size

MRI_FOLDER = ("scenarios", "mri")  # inside the ``simulations`` package
MODALITY = "mri"
_KINDS = {
    "int": "int",
    "float": "float",
    "str": "str",
    **{c.__name__: "table" for c in MIXES.values()},
}


def _rule(f: dataclasses.Field[Any]) -> Rule:
    if "choices" in f.metadata:
        return (f.metadata["choices"], None, None)
    low, high = f.metadata.get("range", (None, None))
    return ("name" if f.name == "name" else _KINDS[str(f.type)], low, high)


SITE_RULES: dict[str, Rule] = {f.name: _rule(f) for f in dataclasses.fields(MriSiteProfile)}
MIX_RULES: dict[str, dict[str, Rule]] = {
    key: {f.name: ("float", 0.0, 1000.0) for f in dataclasses.fields(cls)}
    for key, cls in MIXES.items()
}
MRI_TOP_RULES: dict[str, Rule] = {**TOP_RULES, "modality": ((MODALITY,), None, None)}


@dataclass(frozen=True)
class MriScenario(SiteRoles):
    """A set of MRI hospitals generated together from one seed."""

    name: str
    seed: int
    sites: tuple[MriSiteProfile, ...]
    dims: int = 2
    description: str = ""
    source: str = field(default="", compare=False)

    @property
    def channels(self) -> tuple[str, ...]:
        """The image channels every case has (the late phase follows the agent)."""
        late = self.sites[0].late_phase if self.sites else "delayed"
        return ("t2", "dwi", "adc", "t1_pre", "t1_arterial", "t1_portal", f"t1_{late}")

    def site(self, name: str) -> MriSiteProfile:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(f"scenario {self.name!r} has no site {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved scenario (every site parameter), JSON-ready."""
        return {
            "name": self.name,
            "modality": MODALITY,
            "description": self.description,
            "seed": self.seed,
            "dims": self.dims,
            "sites": [dataclasses.asdict(s) for s in self.sites],
        }


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    """Integers given for float parameters become floats (TOML ``2`` vs ``2.0``)."""
    return {k: float(v) if SITE_RULES[k][0] == "float" else v for k, v in values.items()}


def _table(check: Checker, key: str, raw: dict[str, Any], base: Any) -> Any:
    """A mix table over ``base`` (keys not given keep their value)."""
    good = check.table(key, raw, MIX_RULES[key.rsplit(".", 1)[-1]])
    mix = dataclasses.replace(base, **{k: float(v) for k, v in good.items()})
    if sum(mix.weights()) <= 0:
        check.add(key, raw, "weights must not all be 0")
    return mix


def _resolve(
    check: Checker, prefix: str, raw: dict[str, Any], base: dict[str, Any]
) -> tuple[dict[str, Any], set[str]]:
    """The values of a site (or defaults) table over ``base``, and its keys that are bad."""
    n_before = len(check.problems)
    good = check.table(prefix, raw, SITE_RULES)
    values = {**base, **_coerce(good)}
    bad = {k for k in raw if k in SITE_RULES} - good.keys()
    for key, cls in MIXES.items():
        if isinstance(raw.get(key), dict):
            problems = len(check.problems)
            values[key] = _table(check, f"{prefix}.{key}", raw[key], base.get(key, cls()))
            if len(check.problems) > problems:
                bad.add(key)
    if len(check.problems) > n_before:
        bad.add("")  # the table has a problem
    return values, bad


def _cross_checks(check: Checker, prefix: str, site: MriSiteProfile) -> None:
    """Rules between the keys of one (otherwise valid) site."""
    times = (site.arterial_delay_s, site.portal_delay_s, site.late_delay_s)
    if not times[0] < times[1] < times[2]:
        check.add(
            f"{prefix}.portal_delay_s",
            site.portal_delay_s,
            f"must lie between arterial_delay_s ({times[0]:g}) and late_delay_s ({times[2]:g})",
        )
    if site.hepatobiliary and site.late_delay_s < HBP_MIN_DELAY_S:
        check.add(
            f"{prefix}.late_delay_s",
            site.late_delay_s,
            f"with {site.contrast_agent} the late phase is hepatobiliary: use at least "
            f"{HBP_MIN_DELAY_S:g} s (usually 1200 s, 20 minutes)",
        )
    if not site.hepatobiliary and site.late_delay_s >= HBP_MIN_DELAY_S:
        check.add(
            f"{prefix}.late_delay_s",
            site.late_delay_s,
            f"a delayed (equilibrium) phase of an extracellular agent ({site.contrast_agent}) "
            f"is earlier than {HBP_MIN_DELAY_S:g} s; a hepatobiliary phase needs gadoxetate",
        )
    # (the ranges already keep b_low < b_high and TE < TR of the T2w and DWI series)
    pairs = (("lesion_size_max_mm", "lesion_size_min_mm"), ("t1_tr_ms", "t1_te_ms"))
    for high, low in pairs:
        if not getattr(site, low) < getattr(site, high):
            check.add(
                f"{prefix}.{high}",
                getattr(site, high),
                f"must be larger than {low} ({getattr(site, low):g})",
            )
    if matrix_size(site.fov_mm, site.pixel_spacing_mm) > MATRIX_MAX:
        check.add(
            f"{prefix}.fov_mm",
            site.fov_mm,
            f"gives more than {MATRIX_MAX} pixels at pixel_spacing_mm {site.pixel_spacing_mm:g}",
        )
    sizes = split_counts(
        class_counts(site.n_cases, site.class_mix),
        site.test_fraction,
        site.val_fraction,
        site.role,
    )
    if sum(sizes.test) == 0:
        check.add(
            f"{prefix}.test_fraction",
            site.test_fraction,
            f"leaves site {site.name!r} no test cases (classes {sizes.counts}): raise "
            "test_fraction or n_cases",
        )
    elif site.role == "train" and sum(sizes.train) == 0:
        check.add(
            f"{prefix}.val_fraction" if sum(sizes.val) else f"{prefix}.test_fraction",
            site.val_fraction if sum(sizes.val) else site.test_fraction,
            f"leaves site {site.name!r} no train cases (test {sizes.test}, val {sizes.val} of "
            f"classes {sizes.counts}): lower test_fraction or val_fraction",
        )


def parse_mri_scenario(data: dict[str, Any], file: str) -> MriScenario:
    """Validate a parsed TOML document; raise ScenarioError listing every problem."""
    check = Checker(file)
    top = check.table("", data, MRI_TOP_RULES)
    for key in ("name", "modality", "seed", "site"):
        if key not in data:
            what = repr(MODALITY) if key == "modality" else EXPECTED[MRI_TOP_RULES[key][0]]
            check.add(key, MISSING, f"missing required key ({what})")
    defaults: dict[str, Any] = {}
    bad_defaults: set[str] = set()
    if "defaults" in top:
        raw = dict(top["defaults"])
        if "name" in raw:
            check.add("defaults.name", raw.pop("name"), "a site name cannot have a default")
        defaults, bad_defaults = _resolve(check, "defaults", raw, {})
    sites: list[MriSiteProfile] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(top.get("site", [])):
        prefix = f"site[{i}]"
        values, bad = _resolve(check, prefix, raw, defaults)
        if "name" not in raw:
            check.add(f"{prefix}.name", MISSING, "missing required key (the site's folder name)")
        elif "name" not in bad:
            if raw["name"] in seen:
                check.add(
                    f"{prefix}.name",
                    raw["name"],
                    f"duplicate site name (already used by site[{seen[raw['name']]}])",
                )
            seen.setdefault(raw["name"], i)
        if bad or bad_defaults or "name" not in raw:
            continue  # its own problems are reported; rules between keys need valid keys
        site = MriSiteProfile(**values)
        n_before = len(check.problems)
        _cross_checks(check, prefix, site)
        if len(check.problems) == n_before:
            sites.append(site)
    if "site" in top and not top["site"]:
        check.add("site", [], "a scenario needs at least one [[site]]")
    phases = {s.late_phase for s in sites}
    if len(phases) > 1:
        names = ", ".join(f"{s.name} ({s.contrast_agent})" for s in sites)
        check.add(
            "site",
            MISSING,
            "every site of a scenario needs the same late phase, so that the cases have the "
            f"same channels: gadoxetate (hepatobiliary) or extracellular agents, not both: {names}",
        )
    if check.problems:
        raise ScenarioError(check.problems)
    return MriScenario(
        name=top["name"],
        seed=top["seed"],
        sites=tuple(sites),
        dims=top.get("dims", 2),
        description=top.get("description", ""),
        source=file,
    )


def validate_mri_scenario(scenario: MriScenario) -> None:
    """Make the checks of a scenario file on a scenario built or changed in code."""
    data = scenario.to_dict()
    data["site"] = data.pop("sites")
    parse_mri_scenario(data, scenario.source or f"scenario {scenario.name!r}")


def list_mri_scenarios() -> list[str]:
    """Names of the bundled MRI scenarios (``simulations/scenarios/mri/*.toml``)."""
    return bundled_names(MRI_FOLDER)


def is_mri_scenario(name_or_path: str | Path) -> bool:
    """Whether a scenario name or file is an MRI one: a bundled MRI name, or a file that
    says ``modality = "mri"`` (anything else goes to the CT phantom and its messages)."""
    if not is_scenario_path(name_or_path):
        return str(name_or_path) in list_mri_scenarios()
    try:
        text = Path(name_or_path).read_text(encoding="utf-8")
        return tomllib.loads(text).get("modality") == "mri"
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


def load_mri_scenario(name_or_path: str | Path) -> MriScenario:
    """A bundled MRI scenario by name (``"liver-mri-3"``) or an MRI scenario file by path."""
    data, file = read_scenario_toml(name_or_path, MRI_FOLDER, "MRI")
    return parse_mri_scenario(data, file)
