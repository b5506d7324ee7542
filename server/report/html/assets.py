"""The page's templates and CSS as the renderer loads them: ``assets.json``.

The templates (``templates/*.html.j2``) and the styles (``report.css``) are edited as
files. A Flower app bundle, which is how a deployed ServerApp receives this code,
carries only ``.py``, ``.toml``, ``.md``, ``.yaml``, ``.json`` and ``.jsonl`` files
(Flower's built-in, non-overridable rule), so the renderer reads them from
``assets.json``, generated from the files by ``python -m server.report.html.assets``.
``tests/server/test_report_html.py`` keeps the committed ``assets.json`` equal to the
files, and renders a report from a real app bundle.
"""

from __future__ import annotations

import functools
import json
import sys
from importlib.resources import files
from pathlib import Path

ASSETS_FILE = "assets.json"
HERE = Path(__file__).resolve().parent


def from_sources(folder: Path = HERE) -> dict[str, object]:
    """The assets read from the editable files: every template by name, and the CSS."""
    templates = {
        path.name: path.read_text(encoding="utf-8")
        for path in sorted((folder / "templates").glob("*.j2"))
    }
    return {"templates": templates, "css": (folder / "report.css").read_text(encoding="utf-8")}


def assets_text(folder: Path = HERE) -> str:
    """``assets.json`` as it is written (sorted keys, one trailing newline)."""
    return json.dumps(from_sources(folder), indent=1, sort_keys=True, ensure_ascii=False) + "\n"


@functools.cache
def load() -> tuple[dict[str, str], str]:
    """The templates by name and the CSS, from the package's ``assets.json``."""
    text = files("server.report.html").joinpath(ASSETS_FILE).read_text(encoding="utf-8")
    data = json.loads(text)
    return dict(data["templates"]), str(data["css"])


def main() -> int:
    target = HERE / ASSETS_FILE
    target.write_text(assets_text(), encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
