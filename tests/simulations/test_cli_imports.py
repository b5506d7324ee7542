"""The CLI's start cost: building a parser or printing help imports no torch, MONAI or opacus.

Every `hepafed` command a hospital's IT staff or a script runs (and every real-process
test) pays the parser's imports first; torch alone costs seconds on a small machine.
Each case runs in a fresh interpreter, so modules imported by other tests do not count.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "monai", "opacus", "scipy", "sklearn")
PROBE = """
import json, sys
from simulations.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))))
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["site", "--help"],
        ["site", "check", "--help"],
        ["site", "init", "--help"],
        ["site", "start", "--help"],
        ["server", "start", "--help"],
        ["server", "register-site", "--help"],
        ["certs", "init", "--help"],
        ["audit", "verify", "--help"],
        ["run", "--help"],
    ],
    ids=lambda a: " ".join(a),
)
def test_help_imports_nothing_heavy(argv: list[str]) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv, heavy=HEAVY)],
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == [], f"hepafed {' '.join(argv)}"
