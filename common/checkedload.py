"""Loading one case's files with ``hepafed site check``'s own checks, for the loader.

``LoadCheckedd`` is the first transform of every site's pipeline (``common.data``): each
image and mask it loads is judged by ``common.badcases.array_problems`` (shape, NaN/Inf,
binary mask) and ``common.geometry`` (voxel spacing, one grid per case), the functions
``common.site_files.check_images`` calls, so the loader and the check reject the same files
in the same words. A case's liver mask (``LIVER``, optional: a record without the key is a
case without one) is checked as the lesion mask is: on the case's grid, 0/1, not empty.
A failure raises ``CaseFileProblem``, which the loader turns into a ``BadCaseError``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from common.badcases import array_problems, load_problem, shape_problem
from common.geometry import Grid, alignment_problems, grid_problems
from common.images import LoadSiteImaged
from common.manifest import LIVER_MASK

MASK = "mask"  # the mask's key in a case record and its manifest column
LIVER = LIVER_MASK  # the liver mask's key in a case record (optional) and its column
OPTIONAL_KEYS = (LIVER,)  # keys a case record may lack


class CaseFileProblem(Exception):
    """A file of one case failed a check while loading (becomes a ``BadCaseError``)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


class LoadCheckedd(LoadSiteImaged):
    """``LoadSiteImaged`` that checks every image and mask it loads, as ``hepafed site
    check`` does, raising ``CaseFileProblem`` for the first file that fails."""

    def __init__(self, keys: Sequence[str], spatial_dims: int) -> None:
        super().__init__(keys)
        self.spatial_dims = spatial_dims

    def __call__(self, data: Any) -> Any:
        d = dict(data)
        shapes: dict[str, tuple[int, ...]] = {}
        grids: dict[str, Grid] = {}
        paths: dict[str, str] = {}
        for key in self.keys:
            if key not in d and key in OPTIONAL_KEYS:
                continue  # e.g. a case without a liver mask
            path = str(d[key])
            column = key if key in (MASK, LIVER) else f"image_{key}"
            try:
                d[key] = self._loader(path, reader=self._reader)
            except Exception as e:  # any reader failure is the same problem for a user
                problem = load_problem(path, e, in_file=False)
                raise CaseFileProblem(path, f"{column}: {problem}") from e
            shape, problems = array_problems(column, path, d[key], self.spatial_dims, False)
            grid, spacing = grid_problems(path, d[key])
            if shape is None or problems or spacing:
                raise CaseFileProblem(path, f"{column}: {'; '.join(problems + spacing)}")
            shapes[column], paths[column] = shape, path
            if grid is not None:
                grids[column] = grid
        mismatch = shape_problem(shapes)
        if mismatch is not None:  # name the file off the grid most of the case's files share
            grid_shape = Counter(shapes.values()).most_common(1)[0][0]
            odd = next(c for c, sh in shapes.items() if sh != grid_shape)
            raise CaseFileProblem(paths[odd], f"shape: {mismatch}")
        if grids and len(grids) == len(shapes):
            shape = next(iter(shapes.values()))
            for column, message in alignment_problems(grids, shape)[:1]:
                raise CaseFileProblem(paths[column], f"{column}: {message}")
        return d
