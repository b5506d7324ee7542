"""An update written to disk as the fold reads it, and read back memory-mapped
(``server.folding`` writes it block by block; ``server.aggregation`` parks replies that
arrive before their turn, and keeps copies until the norm-outlier rule has spoken)."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

from server.folding import Update

ALIGN = 64  # bytes: where each tensor starts in a spill file


class Spill:
    """An update written to one file as it is read, and read back memory-mapped: a reply
    parked until its turn, or a copy kept until the norm-outlier rule has spoken. Each
    tensor has its place (``plan``), written in any order of tensors, block by block."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO = path.open("wb")
        self._entries: list[tuple[str, str, np.dtype, tuple[int, ...], int]] = []
        self._end = 0  # bytes the file holds when complete
        self.site, self.weight = "", 0.0

    def plan(self, entries: list[tuple[str, str, np.dtype, tuple[int, ...]]]) -> None:
        """Each tensor's place: (part "arrays" or "scales", key, dtype, shape)."""
        offset = 0
        for part, key, dtype, shape in entries:
            offset = -(-offset // ALIGN) * ALIGN
            self._entries.append((part, key, dtype, tuple(shape), offset))
            offset += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self._end = offset

    def begin(self, index: int) -> None:
        """The next bytes written are those of entry ``index``, from its start."""
        self._file.seek(self._entries[index][4])

    def write(self, block: np.ndarray) -> None:
        """Append ``block``'s bytes (a contiguous block: no copy on the way)."""
        self._file.write(block.data)

    def discard(self) -> None:
        """Close and delete the file (its update was rejected)."""
        self._file.close()
        self.path.unlink(missing_ok=True)

    def finish(self, site: str, weight: float) -> Spill:
        """Close the file: it holds ``site``'s update of ``weight`` (a part left unwritten by
        a rejection reads as zeros)."""
        self._file.truncate(self._end)
        self._file.close()
        self.site, self.weight = site, weight
        return self

    def read(self) -> Update:
        """The update, memory-mapped (mapped only while the returned arrays live)."""
        parts: dict[str, dict[str, np.ndarray]] = {"arrays": {}, "scales": {}}
        for part, key, dtype, shape, offset in self._entries:
            if int(np.prod(shape, dtype=np.int64)) == 0:
                parts[part][key] = np.empty(shape, dtype)
            else:
                parts[part][key] = np.memmap(self.path, dtype, "r", offset, shape)
        return Update(self.site, self.weight, parts["arrays"], parts["scales"])
