"""An approved app bundle, installed once per host: what the site executor's tasks load.

Flower's install (``flwr.cli.install.install_from_fab``) unzips and verifies the bundle
in a temporary folder for every task, and returns an existing folder as it is; its
folder is named by only the first eight digits of the bundle's hash. The first task of
an approved bundle installs it, compiles it and marks the folder with the full SHA-256
(``INSTALLED_MARK``); a later task loads a folder whose mark names its hash without
extracting it again. Check, install and mark hold one lock per Flower home
(``install_lock``), so no task marks a folder another task is still filling.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("hepafed.site-executor")

INSTALLED_MARK = ".hepafed-installed"  # in a bundle's folder: the sha256 it was installed from
INSTALL_LOCK = ".hepafed-install.lock"  # in Flower's apps folder: one install at a time


def installed_before(folder: Path, digest: str) -> bool:
    """Whether an earlier task installed the bundle of sha256 ``digest`` into ``folder``
    and compiled it (``mark_installed``): then this task loads it as it is, as Flower's
    own install does for a folder that exists, without extracting the bundle again."""
    try:
        return (folder / INSTALLED_MARK).read_text() == digest
    except (OSError, UnicodeDecodeError):
        return False


def mark_installed(folder: Path, digest: str) -> None:
    """Compile the bundle just installed into ``folder`` (where Python writes no bytecode,
    as in the Docker image, ``PYTHONDONTWRITEBYTECODE``, every task would compile every
    module again) and then mark it installed from the approved bytes of sha256
    ``digest``. A folder that was there before this task installed (an older install, or
    another bundle whose hash has the same first eight digits) is never marked, so it is
    never taken as these bytes. A mark that cannot be written costs only speed: the next
    task installs as Flower does."""
    import compileall

    from common.files import write_atomic

    try:
        compileall.compile_dir(str(folder), quiet=2)
        write_atomic(folder / INSTALLED_MARK, digest)
    except OSError as err:
        log.warning("bundle %s installed but not marked (%s): the next task installs it "
                    "again", folder.name, err)  # fmt: skip


@contextlib.contextmanager
def install_lock(apps: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``apps/INSTALL_LOCK`` (every task of this host that uses
    the same Flower home): a bundle's check, install and mark are one step, so no task
    marks a folder another task is still filling."""
    import fcntl

    apps.mkdir(parents=True, exist_ok=True)
    with open(apps / INSTALL_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
