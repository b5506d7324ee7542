"""The SuperLink's state in memory, its registered sites in a file (``SiteRegistryState``).

Flower's SuperLink keeps its state (registered sites and their keys, runs, messages'
metadata, tasks and their tokens) either in memory or in a SQLite file, where every
request of every SuperNode, the ServerApp and its executor is several SQL statements
through SQLAlchemy: whether the run was stopped (each request), the node's key, the
message claims, the traffic counters. On two cores shared with three loopback sites, the
SuperLink spent about 46 % of a core, mostly there; with the state in memory a round
took 0.857 x as long and the SuperLink used 0.51 x the CPU (3 paired, interleaved sets of
two 3-round runs). With many sites polling, it would be the SuperLink's limit.

What must outlive a restart of the SuperLink is which sites are registered, with which
keys and SuperNode ids: a restarted SuperLink that forgot them would refuse every
hospital until the center registered each again. A run in flight does not survive a
restart either way (its ServerApp is the SuperLink's child; ``hepafed run --resume``
continues it from its last checkpoint), and its records are in its run folder.

So ``SiteRegistryState`` is Flower's in-memory state (``InMemoryLinkState``) whose node
registrations and removals are written through to a JSON file (``common.files``'
atomic writer, 0600), and read back when the SuperLink starts: each site
comes back with its key and its SuperNode id, status registered, and is online again at
its SuperNode's next heartbeat. A removed site stays removed (its key cannot be
registered again without the file's entry going, as in Flower's own state). A
registration or removal whose write fails is undone in memory too and fails as a whole:
the file and the SuperLink never disagree on who is registered. Where the file is
missing and a SQLite state file from an earlier version is there, its sites are imported
from a copy of it, and the file is renamed ``FILE.imported``: a site removed later cannot
come back from it. Flower is pinned to one minor release; the class checks that the
in-memory state still has the fields it restores and fails loudly if not.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.server.superlink.linkstate.linkstate_factory import LinkStateFactory
from flwr.supercore.constant import NodeStatus
from google.protobuf import json_format

from common.files import NotDurable, write_atomic

log = logging.getLogger("hepafed.superlink")
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
        if legacy is not None and legacy.exists():  # imported now, or a start cut short
            _set_aside(legacy)

    # ---- the two writes a registry has: each undone in memory if it cannot be written ---

    def create_node(self, *args: Any, **kwargs: Any) -> int:
        key = kwargs.get("public_key", args[2] if len(args) > 2 else b"")
        if not key:  # Flower's --insecure registration passes any key through
            raise ValueError("a site's public key is empty")
        with self.lock:
            node_id = int(super().create_node(*args, **kwargs))
            if node_id:
                try:
                    self._save()
                except BaseException:
                    node = self.nodes.pop(node_id)
                    self.node_public_key_to_node_id.pop(node.public_key, None)
                    self.owner_to_node_ids.get(node.owner_aid, set()).discard(node_id)
                    raise
            return node_id

    def delete_node(self, owner_aid: str, node_id: int) -> None:
        from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=no-name-in-module

        with self.lock:
            before = NodeInfo()
            if node_id in self.nodes:
                before.CopyFrom(self.nodes[node_id])
            super().delete_node(owner_aid, node_id)
            try:
                self._save()
            except BaseException:
                self.nodes[node_id].CopyFrom(before)  # still registered, as the file says
                raise

    # ---- the file -----------------------------------------------------------------------

    def _restore(self, nodes: Sequence[Any]) -> None:
        with self.lock:
            for node in nodes:
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
        try:
            write_atomic(self.path, text + "\n", 0o600)
        except NotDurable as e:  # the new file is in place: the change is made
            log.warning("%s", e)


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


def _read(path: Path) -> list[Any]:
    """The sites of the registry file ``path`` as Flower's ``NodeInfo``; RegistryError
    naming the file if it cannot be read, is of another version, or is inconsistent."""
    from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=no-name-in-module

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("version") != REGISTRY_VERSION:
            version = data.get("version") if isinstance(data, dict) else None
            raise ValueError(f"version {version!r}, expected {REGISTRY_VERSION}")
        sites = data["sites"]
        if not isinstance(sites, list) or not all(
            isinstance(s, dict) and "node_id" in s and "public_key" in s for s in sites
        ):
            raise ValueError("a site without node_id or public_key")
        nodes = [json_format.ParseDict({k: v for k, v in s.items() if k in DURABLE},
                                       NodeInfo()) for s in sites]  # fmt: skip
        statuses = {NodeStatus.REGISTERED, NodeStatus.ONLINE, NodeStatus.OFFLINE,
                    NodeStatus.UNREGISTERED}  # fmt: skip
        if not all(n.status in statuses for n in nodes):
            raise ValueError(f"a status other than {', '.join(sorted(statuses))}")
        for field in ("node_id", "public_key"):
            values = [getattr(n, field) for n in nodes]
            if len(set(values)) != len(values) or not all(values):
                raise ValueError(f"a {field} missing or given to two sites")
    except (OSError, ValueError, KeyError, TypeError, json_format.Error) as e:
        raise RegistryError(
            f"{path}: the SuperLink's registered sites cannot be read ({e}); restore it from "
            "a backup, or move it away and register the sites again "
            "(`hepafed server register-site`)"
        ) from e
    return nodes


def _set_aside(legacy: Path) -> None:
    """Rename an imported SQLite state file (and its write-ahead log and shared memory,
    under the names SQLite pairs with the new name) to ``NAME.imported``."""
    try:
        for suffix in ("-wal", "-shm", ""):
            part = legacy.with_name(legacy.name + suffix)
            if part.exists():
                part.rename(legacy.with_name(legacy.name + ".imported" + suffix))
    except OSError as e:
        raise RegistryError(
            f"{legacy}: its sites are in the registry, but it cannot be renamed to "
            f"{legacy.name}.imported ({e}); rename it by hand"
        ) from e


def _legacy_nodes(database: Path, federation_manager: Any, object_store: Any) -> list[Any]:
    """The sites registered in an earlier version's SQLite state file, read from a copy
    (Flower's SQL state migrates and writes the file it opens)."""
    from flwr.server.superlink.linkstate.sql_linkstate import SqlLinkState

    try:
        with tempfile.TemporaryDirectory(dir=database.parent, prefix=".import-") as tmp:
            for suffix in ("", "-wal", "-shm"):
                part = database.with_name(database.name + suffix)
                if part.exists():
                    shutil.copy2(part, Path(tmp) / (database.name + suffix))
            state = SqlLinkState(str(Path(tmp) / database.name), federation_manager,
                                 object_store)  # fmt: skip
            state.initialize()
            nodes = list(state.get_node_info())
    except Exception as e:
        raise RegistryError(
            f"{database}: the sites an earlier version registered there cannot be read "
            f"({e}); restore it from a backup, or move it away and register the sites "
            "again (`hepafed server register-site`)"
        ) from e
    return nodes
