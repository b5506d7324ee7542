"""The CLI by role: building a parser or printing help imports no torch, MONAI or opacus,
and a hospital's ``hepafed site`` commands import nothing of ``server``.

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
from common.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
tops = {{m.split('.')[0] for m in sys.modules}}
server = sorted(m for m in sys.modules if m.split('.')[0] == 'server')
print(json.dumps([sorted(tops & set({heavy!r})), server]))
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["site", "--help"],
        ["site", "check", "--help"],
        ["site", "init", "--help"],
        ["site", "start", "--help"],
        ["site", "approve-app", "--help"],
        ["site", "explain", "--help"],
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
    heavy, server = json.loads(out.stdout.splitlines()[-1])
    assert heavy == [], f"hepafed {' '.join(argv)}"
    if argv[0] in ("--help", "site"):  # the root lists groups without loading them
        assert server == [], f"hepafed {' '.join(argv)} imports {server}"
    else:
        assert server  # (the probe sees server modules where they are loaded)
