"""How ``hepafed bench`` measures: repeated timings, peak memory, the machine, fresh processes.

Timings are repeated and reported as median, min and max (``spread``). Peak memory is
the kernel's resident-set high-water mark (``VmHWM``), reset to the current RSS first
(``reset_peak_rss``). Cases that must not see each other's memory run in a fresh
Python (``in_fresh_process``). ``machine`` names what the figures were measured on.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

GB = 1e9


def spread(values: Iterable[float]) -> dict[str, float]:
    """Median, min and max (and the runs) of repeated measurements."""
    vals = sorted(float(v) for v in values)
    return {
        "median": statistics.median(vals),
        "min": vals[0],
        "max": vals[-1],
        "runs": len(vals),
    }


def fmt_spread(s: dict[str, float], digits: int = 2) -> str:
    """A ``spread`` as bench.md writes it: median (min-max)."""
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


# ---- peak memory of this process ------------------------------------------------------------


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_bytes(field_name: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field_name} not in /proc/self/status")


# ---- a case in a fresh process -----------------------------------------------------------


def in_fresh_process(module: str, function: str, *args: Any) -> Any:
    """Run ``module.function(*args)`` in a fresh Python; its JSON result."""
    code = (
        f"import json, sys; import {module} as m; "
        f"print(json.dumps(m.{function}(*json.loads(sys.argv[1]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)],
        check=False,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    if done.returncode:
        raise RuntimeError(f"{module}.{function}{args} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the machine ---------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
