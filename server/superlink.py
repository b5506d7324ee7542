"""Flower's SuperLink with its state in memory and its registered sites in a file:
``hepafed-superlink FLOWER-SUPERLINK-ARGS`` (what ``hepafed server start`` runs).

Given ``--database FILE``, Flower's SuperLink keeps two stores in that SQLite file: its
state (runs, registered sites and their public keys, messages' metadata, tasks) and the
object store, which holds every byte of every message in flight (the model sent to each
site, each site's update), written once and deleted when the receiver confirms it.
Every message then goes through SQLite's single writer: with a 110M-parameter model
(442 MB a message) the writes outlast SQLite's 5 s lock wait (``busy_timeout``, fixed by
Flower), and the SuperLink answered "database is locked" and lost its executor in both
runs of ``hepafed bench --sections large-model`` on one machine. And every request is
several SQL statements on the state (``server.superlink_state`` has the figures).

This launcher runs Flower's own ``flower-superlink`` entry point unchanged, except for
the stores it builds: the object store is Flower's in-memory one (``InMemoryObjectStore``,
the store Flower itself uses when no database file is given, and every SuperNode uses),
and the state is Flower's in-memory one with the registered sites written through to
``FILE.sites.json`` (``server.superlink_state.SiteRegistryState``; sites registered in
``FILE`` by an earlier version are imported once, and ``FILE`` is renamed
``FILE.imported``). What persists across a restart is what matters: the registered sites, their
keys and SuperNode ids. A message still in flight when the SuperLink stops loses its
bytes, and its receiver gets Flower's "object unavailable" error (the ServerApp files
that reply as the site's error, ``server.pull``); a run in flight stops with its
ServerApp, and ``hepafed run --resume`` continues it; Flower's list of past runs starts
empty. The cost is memory: the SuperLink holds the messages in flight (a model sent to
every site is stored once: objects are addressed by their content's hash). A second
SuperLink on the same ``--database`` stops before it starts (``hold_state``): both would
write the registry.

Flower is pinned to one minor release (pyproject.toml); ``check_factory_site`` fails
loudly if a release moves the function this replaces, so it can never silently stop
applying.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from types import ModuleType
from typing import IO, Any

from common.files import try_lock

FACTORIES = "get_objectstore_linkstate_factories"  # what flwr.superlink.main calls
IN_MEMORY = (":flwr-in-memory:", ":memory:")  # --database names Flower keeps in memory


def check_factory_site(module: ModuleType) -> None:
    """That ``module`` (``flwr.superlink.main``) builds its stores with Flower's
    ``FACTORIES`` from ``flwr.superlink.config_loader``, as the pinned release does."""
    from flwr.superlink import config_loader

    if getattr(module, FACTORIES, None) is not getattr(config_loader, FACTORIES, object()):
        raise RuntimeError(
            f"{module.__name__} no longer builds its stores with {FACTORIES}: this Flower "
            "release is not the one hepafed pins; reinstall hepafed's pinned flwr"
        )


def objects_in_memory(database: str, federation_manager: Any) -> tuple[Any, Any]:
    """Flower's stores for ``database``: the objects in memory whatever the database, the
    state in memory with its registered sites in ``database``'s registry file
    (``server.superlink_state``; Flower's plain in-memory state for an in-memory name)."""
    from flwr.server.superlink.linkstate.linkstate_factory import LinkStateFactory
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
    from flwr.supercore.object_store import ObjectStoreFactory

    from server.superlink_state import RegistryStateFactory

    objects = ObjectStoreFactory(FLWR_IN_MEMORY_DB_NAME)
    if database in IN_MEMORY:
        return objects, LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, federation_manager, objects)
    return objects, RegistryStateFactory(database, federation_manager, objects)


def keep_objects_in_memory() -> None:
    """Make the SuperLink about to start in this process keep message objects in memory."""
    import flwr.superlink.main as superlink_main

    check_factory_site(superlink_main)
    setattr(superlink_main, FACTORIES, objects_in_memory)


def database_arg(args: Sequence[str]) -> str | None:
    """The ``--database`` value in Flower's SuperLink arguments, None if not given."""
    for i, arg in enumerate(args):
        if arg == "--database" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--database="):
            return arg.split("=", 1)[1]
    return None


def hold_state(database: str | None) -> IO[str] | None:
    """Lock ``database``'s registry (``FILE.sites.json.lock``) for this process's life, or
    raise StateBusy: two SuperLinks on one state folder would each write the registry,
    the last one's sites winning. None (no lock) for a state in memory."""
    from server.superlink_state import registry_path

    if database is None or database in IN_MEMORY:
        return None
    lock = registry_path(database).with_name(registry_path(database).name + ".lock")
    held = try_lock(lock)
    if held is None:
        raise StateBusy(
            f"{lock}: another SuperLink is running on this state; stop it, or give this "
            "one a state folder of its own"
        )
    return held


class StateBusy(RuntimeError):
    """Another SuperLink holds the state folder's registry."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``flower-superlink`` with ``argv`` (default: this process's arguments)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        held = hold_state(database_arg(args))  # noqa: F841  (held until the process ends)
    except StateBusy as e:
        print(f"hepafed-superlink: {e}", file=sys.stderr)
        return 1
    keep_objects_in_memory()
    from flwr.superlink.cli import flower_superlink

    sys.argv = ["flower-superlink", *args]
    flower_superlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
