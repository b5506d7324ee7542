"""Every module of the apps reaches the Flower App bundle a SuperLink installs.

``flwr run`` builds a FAB from this folder with Flower's exclude patterns,
which drop ``test_*.py`` and ``*_test.py`` anywhere: a package module with such
a name would be missing at the coordinating center and at every site.
"""

from __future__ import annotations

from pathlib import Path

from flwr.common.constant import FAB_EXCLUDE_PATTERNS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("client", "common", "server", "simulations")


def test_no_package_module_matches_flowers_fab_exclude_patterns() -> None:
    assert "**/test_*.py" in FAB_EXCLUDE_PATTERNS and "**/*_test.py" in FAB_EXCLUDE_PATTERNS
    modules = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    assert len(modules) > 40
    dropped = [
        str(p.relative_to(ROOT))
        for p in modules
        if p.name.startswith("test_") or p.name.endswith("_test.py")
    ]
    assert dropped == [], f"Flower's FAB would leave out {dropped}: rename them"
