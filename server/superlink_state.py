"""The SuperLink's state in memory, its registered sites in a file (``SiteRegistryState``).

Flower's SuperLink keeps its state (registered sites and their keys, runs, messages'
metadata, tasks and their tokens) either in memory or in a SQLite file, where every
request of every SuperNode, the ServerApp and its executor is several SQL statements
through SQLAlchemy: whether the run was stopped (each request), the node's key, the
message claims, the traffic counters. On two cores shared with three sites, that cost
a loopback round 3.4 to 4.1 s against 2.6 to 2.9 s with the state in memory (three
rounds each, the same sites and work), and the SuperLink spent about 46 % of a core on
it; with many sites polling, it is the SuperLink's limit.

What must outlive a restart of the SuperLink is which sites are registered, with which
keys and SuperNode ids: a restarted SuperLink that forgot them would refuse every
hospital until the center registered each again. A run in flight does not survive a
restart either way (its ServerApp is the SuperLink's child; ``hepafed run --resume``
continues it from its last checkpoint), and its records are in its run folder.

So ``SiteRegistryState`` is Flower's in-memory state (``InMemoryLinkState``) whose node
registrations and removals are written through to a JSON file (atomically: a
temporary file, fsync, rename), and read back when the SuperLink starts: each site
comes back with its key and its SuperNode id, status registered, and is online again at
its SuperNode's next heartbeat. A removed site stays removed (its key cannot be
registered again without the file's entry going, as in Flower's own state). Where the
file is missing and a SQLite state file from an earlier version is there, its sites are
imported first. Flower is pinned to one minor release; the class checks that the
in-memory state still has the fields it restores and fails loudly if not.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.server.superlink.linkstate.linkstate_factory import LinkStateFactory
from flwr.supercore.constant import NodeStatus
from google.protobuf import json_format

REGISTRY_VERSION = 1
DURABLE = ("node_id", "owner_aid", "owner_name", "registered_at", "unregistered_at",
           "heartbeat_interval", "public_key", "name", "location", "status")  # fmt: skip


class RegistryError(RuntimeError):
    """The site registry file cannot be read: the SuperLink does not start without it."""


def registry_path(database: str | Path) -> Path:
    """Where the registered sites of the SuperLink whose ``--database`` is ``database``
    are kept: beside it, ``NAME.sites.json``."""
    path = Path(database)
    return path.with_name(path.name + ".sites.json")


class SiteRegistryState(InMemoryLinkState):
    """Flower's in-memory LinkState with its registered sites kept in ``path`` (see the
    module docstring); ``legacy``: a SQLite state file to import sites from once."""

    def __init__(
        self, path: Path, federation_manager: Any, object_store: Any, legacy: Path | None = None
    ) -> None:
        super().__init__(federation_manager, object_store)
        for attr in ("nodes", "node_public_key_to_node_id", "owner_to_node_ids", "lock"):
            if not hasattr(self, attr):
                raise RuntimeError(
                    f"Flower's InMemoryLinkState has no {attr}: this Flower release is not "
                    "the one hepafed pins; reinstall hepafed's pinned flwr"
                )
        self.path = path
        if path.exists():
            self._restore(_read(path))
        elif legacy is not None and legacy.exists():
            self._restore(_legacy_nodes(legacy, federation_manager, object_store))
            federation_manager.linkstate = self  # the SQL state only lent its sites
            self._save()

    # ---- the two writes a registry has --------------------------------------------------

    def create_node(self, *args: Any, **kwargs: Any) -> int:
        with self.lock:
            node_id = int(super().create_node(*args, **kwargs))
            if node_id:
                self._save()
            return node_id

    def delete_node(self, owner_aid: str, node_id: int) -> None:
        with self.lock:
            super().delete_node(owner_aid, node_id)
            self._save()

    # ---- the file -----------------------------------------------------------------------

    def _restore(self, records: Sequence[dict[str, Any]]) -> None:
        from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=no-name-in-module

        with self.lock:
            for record in records:
                node = json_format.ParseDict(
                    {k: v for k, v in record.items() if k in DURABLE}, NodeInfo()
                )
                if node.status != NodeStatus.UNREGISTERED:
                    node.status = NodeStatus.REGISTERED  # online again at its next heartbeat
                self.nodes[node.node_id] = node
                self.node_public_key_to_node_id[node.public_key] = node.node_id
                self.owner_to_node_ids.setdefault(node.owner_aid, set()).add(node.node_id)

    def _save(self) -> None:
        records = [
            {k: v for k, v in _as_dict(node).items() if k in DURABLE}
            for node in self.nodes.values()
        ]
        text = json.dumps({"version": REGISTRY_VERSION, "sites": records}, indent=1)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class RegistryStateFactory(LinkStateFactory):
    """Flower's LinkStateFactory whose one state is a ``SiteRegistryState`` for the
    SuperLink's ``--database`` file (the registry beside it, the file the legacy)."""

    def state(self) -> Any:
        with self._state_lock:
            if self.state_instance is None:
                self.state_instance = SiteRegistryState(
                    registry_path(self.database), self.federation_manager,
                    self.objectstore_factory.store(), legacy=Path(self.database),
                )  # fmt: skip
            return self.state_instance


def _as_dict(node: Any) -> dict[str, Any]:
    return dict(json_format.MessageToDict(node, preserving_proto_field_name=True))


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        sites = data["sites"]
        if data.get("version") != REGISTRY_VERSION or not isinstance(sites, list):
            raise ValueError(f"version {data.get('version')!r}, expected {REGISTRY_VERSION}")
        if not all(isinstance(s, dict) and "node_id" in s and "public_key" in s for s in sites):
            raise ValueError("a site without node_id or public_key")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RegistryError(
            f"{path}: the SuperLink's registered sites cannot be read ({e}); restore it from "
            "a backup, or move it away and register the sites again "
            "(`hepafed server register-site`)"
        ) from e
    return sites


def _legacy_nodes(database: Path, federation_manager: Any, object_store: Any) -> list[Any]:
    """The sites registered in an earlier version's SQLite state file."""
    from flwr.server.superlink.linkstate.sql_linkstate import SqlLinkState

    state = SqlLinkState(str(database), federation_manager, object_store)
    state.initialize()
    return [_as_dict(node) for node in state.get_node_info()]
