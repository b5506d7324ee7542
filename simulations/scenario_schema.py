"""The keys a scenario file may hold and the values each takes, and the checker for them.

A rule per key gives its kind (integer, number, string, safe name, table, array of
site tables, or a closed set of choices) and, for a number, its range: ``TOP_RULES``
for the top level, ``SITE_RULES`` for a ``[[site]]`` or ``[defaults]`` table (read from
``SiteProfile``'s field metadata) and ``MIX_RULES`` for a ``benign_mix`` table.
``Checker`` checks tables against them and collects every problem of one file.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from simulations.site_profile import SiteProfile

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

# Validation rules: key -> (kind, low, high); kind is "int", "float", "str", "name"
# (a safe folder name), "table", "sites", or a tuple of the valid choices.
Rule = tuple[Any, float | None, float | None]
KINDS = {
    "int": "int",
    "float": "float",
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


MISSING = object()  # marks a problem about a key that has no value


class Checker:
    """Collects problems for one file, so the user sees all of them at once."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[str] = []

    def add(self, key: str, value: Any, message: str) -> None:
        shown = f" = {value!r}" if value is not MISSING else ""
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


# ---- bundled scenario files (MRI and timeline scenarios live in their own folders) -------


def is_scenario_path(name_or_path: object) -> bool:
    """Whether ``name_or_path`` names a file (a Path, a ``.toml`` name or one with a
    folder) rather than a bundled scenario."""
    from pathlib import Path

    text = str(name_or_path)
    return isinstance(name_or_path, Path) or text.endswith(".toml") or "/" in text or "\\" in text


def bundled_names(folder: tuple[str, ...]) -> list[str]:
    """Names of the bundled scenarios in ``simulations/<folder>/*.toml``."""
    from importlib import resources

    found = resources.files("simulations").joinpath(*folder)
    return sorted(p.name[:-5] for p in found.iterdir() if p.name.endswith(".toml"))


def read_scenario_toml(
    name_or_path: object, folder: tuple[str, ...], kind: str
) -> tuple[dict[str, Any], str]:
    """The parsed TOML of a bundled ``kind`` scenario (by name, from ``folder``) or of a
    scenario file (by path), and the file it came from; ScenarioError naming what is
    wrong (no such file or name, not TOML)."""
    import tomllib
    from importlib import resources
    from pathlib import Path

    from simulations.scenario import ScenarioError

    text = str(name_or_path)
    if is_scenario_path(name_or_path):
        path = Path(text)
        if not path.is_file():
            raise ScenarioError([f"{text}: scenario file not found"])
        raw, file = path.read_bytes(), text
    else:
        names = bundled_names(folder)
        if text not in names:
            raise ScenarioError(
                [
                    f"unknown {kind} scenario {text!r}: bundled {kind} scenarios are "
                    + ", ".join(repr(n) for n in names)
                    + " (or give the path of a .toml file)"
                ]
            )
        bundled = resources.files("simulations").joinpath(*folder, f"{text}.toml")
        raw, file = bundled.read_bytes(), str(bundled)
    try:
        return tomllib.loads(raw.decode("utf-8")), file
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError([f"{file}: not valid TOML: {exc}"]) from exc
