"""The packages' boundaries, read from the source (every import statement, at any depth):
``client`` (the hospital) and ``server`` (the coordinating center) never import each other,
and ``common`` imports neither, so a site installs and runs without the server's code and
the other way round. The root command line (``common.cli``) loads a group by name only when
that group's command is chosen."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"client": {"server", "simulations"}, "server": {"client", "simulations"},
             "common": {"client", "server", "simulations"}}  # fmt: skip


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_only_what_its_role_may(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert len(files) > 5
    crossing = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in files
        for name in _imports(path)
        if name.split(".")[0] in FORBIDDEN[package]
    }
    assert not crossing, sorted(crossing)
