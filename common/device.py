"""Where tensors live: CUDA with mixed precision when a GPU is present, else CPU."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import numpy as np
import torch

from common.cpu_quota import process_cpus


@dataclass(frozen=True)
class Compute:
    """The device and numeric precision a site trains and evaluates with."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None: full fp32

    @property
    def uses_amp(self) -> bool:
        return self.amp_dtype is not None

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """Autocast on CUDA when AMP is on; a no-op otherwise."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler for fp16 (bf16 needs none); disabled on CPU."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)


def select_compute(amp: bool = True, prefer: str | None = None) -> Compute:
    """CUDA (bf16 autocast where supported, else fp16) if available, else CPU fp32.

    ``prefer="cpu"`` forces the CPU, e.g. for a site whose GPU is busy. torch's CPU
    threads are kept within the CPUs this process may use (``fit_threads``).
    """
    fit_threads()
    if prefer != "cpu" and torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return Compute(torch.device("cuda"), dtype if amp else None)
    return Compute(torch.device("cpu"), None)


_EXPLICIT_THREADS: list[int] = []  # the count a site set with --threads (``set_threads``)


def set_threads(n: int) -> None:
    """torch's CPU threads set to ``n`` by the site's own choice (``hepafed site start
    --threads``): ``fit_threads`` leaves it as it is, even above the CPU limit."""
    torch.set_num_threads(n)
    _EXPLICIT_THREADS[:] = [n]


def fit_threads() -> int:
    """torch's CPU threads, at most the CPUs this process may use
    (``common.cpu_quota.process_cpus``: in a container with a CPU limit, its quota,
    where torch's default is every core of the host); never raised, and a count the
    site chose (``set_threads``) is kept. The count now."""
    usable = process_cpus()
    if not _EXPLICIT_THREADS and torch.get_num_threads() > usable:
        torch.set_num_threads(usable)
    return torch.get_num_threads()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a site's round is reproducible."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from a run seed and names/numbers (site, round, ...)."""
    state = np.random.SeedSequence([_as_int(p) for p in parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _as_int(part: int | str) -> int:
    if isinstance(part, int):
        return part
    return int.from_bytes(part.encode("utf-8"), "little") % (2**63)
