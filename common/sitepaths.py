"""Where a manifest's paths may lead: inside the site folder, or a data root the site allows.

A manifest cell is a path relative to the site folder, or absolute. Either way the file
must lie inside the site folder (or inside ``data_root``, when the site's node config
allows one): a ``..`` that climbs out, an absolute path elsewhere (``path-escape``), or a
symbolic link whose target resolves elsewhere (``symlink-escape``, also for the files of
a DICOM series folder) is refused before anything is opened. The manifest check and the
loader call ``Roots.escape`` alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common.badcases import BadInput


@dataclass(frozen=True)
class Escape:
    """A path that leaves the allowed folders: its kind and what to say about it."""

    kind: BadInput
    path: Path  # the file or link that leads out
    message: str


def allowed_roots(site_dir: Path, data_root: Path | None) -> tuple[Path, ...]:
    """The folders a site's files may lie in."""
    return (site_dir,) if data_root is None else (site_dir, data_root)


@dataclass(frozen=True)
class Roots:
    """The allowed folders of one site, each as written (normalised) and as resolved
    (links followed): worked out once per manifest, not once per file. A manifest of
    thousands of files is checked on every message a site answers."""

    site_dir: Path
    data_root: Path | None
    lexical: tuple[str, ...]
    real: tuple[str, ...]

    @classmethod
    def of(cls, site_dir: Path, data_root: Path | None = None) -> Roots:
        roots = allowed_roots(site_dir, data_root)
        return cls(
            site_dir,
            data_root,
            tuple(os.path.normpath(os.path.abspath(r)) for r in roots),
            tuple(os.path.realpath(r) for r in roots),
        )

    def escape(self, path: Path) -> Escape | None:
        """Why ``path`` (a manifest cell resolved against the site folder) leaves the
        allowed folders, or None. Only names and link targets are looked at; no file is
        opened. A link loop is no escape: it names no file, and opening it fails."""
        where = _where(self.site_dir, self.data_root)
        lexical = os.path.normpath(os.path.abspath(path))
        if not any(_inside(lexical, r) for r in self.lexical):
            return Escape(
                BadInput.PATH_ESCAPE,
                path,
                f"{path} is outside {where}: give a path inside the site folder (no '..' out "
                "of it, no absolute path elsewhere)" + _allow_hint(self.data_root),
            )
        candidates = [path]
        if path.is_dir():  # a DICOM series folder: each of its files may be a link too
            candidates += sorted(path.iterdir())
        for p in candidates:
            real = os.path.realpath(p)
            if not any(_inside(real, r) for r in self.real):
                return Escape(
                    BadInput.SYMLINK_ESCAPE,
                    p,
                    f"{p} is a symbolic link (or lies under one) that resolves to {real}, "
                    f"outside {where}: copy the file into the site folder instead of linking "
                    "to it" + _allow_hint(self.data_root),
                )
        return None


def _inside(path: str, root: str) -> bool:
    """``path`` is ``root`` or lies under it; both absolute and normalised (no ``..``,
    no doubled or trailing separator but the root folder's own)."""
    return path == root or path.startswith(root if root.endswith(os.sep) else root + os.sep)


def _where(site_dir: Path, data_root: Path | None) -> str:
    if data_root is None:
        return f"the site folder {site_dir}"
    return f"the site folder {site_dir} and the data root {data_root}"


def _allow_hint(data_root: Path | None) -> str:
    if data_root is not None:
        return ""
    return ", or allow a data root for the site's files in its node config"
