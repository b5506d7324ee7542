"""Tests of the simulations package; ``array_digest`` is shared by the phantom tests."""

from __future__ import annotations

import hashlib

import numpy as np


def array_digest(*arrays: np.ndarray) -> str:
    """SHA-256 over the arrays' dtypes, shapes and bytes: holds a generator's output fixed."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()
