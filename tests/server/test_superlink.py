"""The SuperLink launcher (``server.superlink``): message objects in memory, the state in
memory with the registered sites in a file beside ``--database`` (``server.superlink_state``);
a Flower release that moves the factory fails loudly. The deployment tests (tests/deploy)
run federations through it end to end, one of them across a restart of the SuperLink."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path
from typing import Any

import pytest
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.server.superlink.linkstate.sql_linkstate import SqlLinkState
from flwr.supercore.constant import NodeStatus
from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore
from flwr.superlink import config_loader
from flwr.superlink.federation import NoOpFederationManager

from server import superlink
from server.superlink_state import RegistryError, SiteRegistryState, registry_path

KEY_A, KEY_B = b"ssh-ed25519 AAAA-site-a", b"ssh-ed25519 AAAA-site-b"


def _state(database: Path) -> SiteRegistryState:
    """The state a SuperLink started with ``--database database`` builds."""
    objects, states = superlink.objects_in_memory(str(database), NoOpFederationManager())
    state = states.state()
    assert isinstance(state, SiteRegistryState) and state.object_store is objects.store()
    return state


def test_objects_and_state_are_held_in_memory_the_sites_in_the_registry(
    tmp_path: Path,
) -> None:
    database = tmp_path / "superlink.db"
    objects, states = superlink.objects_in_memory(str(database), NoOpFederationManager())
    state = states.state()
    assert isinstance(state, InMemoryLinkState) and states.state() is state
    assert isinstance(objects.store(), InMemoryObjectStore)
    assert state.object_store is objects.store()  # the one store the SuperLink serves
    assert not database.exists() and not registry_path(database).exists()  # nothing yet
    # Flower's own choice for the same file: objects and state in SQLite (what this avoids)
    flower_objects, flower_states = config_loader.get_objectstore_linkstate_factories(
        str(tmp_path / "flower.db"), NoOpFederationManager()
    )
    assert not isinstance(flower_objects.store(), InMemoryObjectStore)
    assert isinstance(flower_states.state(), SqlLinkState)
    _, plain = superlink.objects_in_memory(":flwr-in-memory:", NoOpFederationManager())
    assert type(plain.state()) is InMemoryLinkState  # an in-memory name: no file at all


def test_registered_sites_survive_a_restart_with_their_ids_and_removals(tmp_path: Path) -> None:
    database = tmp_path / "superlink.db"
    first = _state(database)
    a = first.create_node("center", "center", KEY_A, 10.0, name="hospital-a")
    b = first.create_node("center", "center", KEY_B, 10.0, name="hospital-b")
    assert first.acknowledge_node_heartbeat(a, 10.0)  # online: restored as registered
    first.delete_node("center", b)
    registry = registry_path(database)
    assert registry.stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob("*.tmp"))  # written whole, then renamed
    saved = json.loads(registry.read_text())["sites"]
    assert sorted(s["name"] for s in saved) == ["hospital-a", "hospital-b"]

    restarted = _state(database)  # the SuperLink started again on the same folder
    assert restarted.get_node_id_by_public_key(KEY_A) == a  # same key, same SuperNode id
    assert restarted.nodes[a].status == NodeStatus.REGISTERED  # until its next heartbeat
    assert restarted.nodes[a].name == "hospital-a"
    assert restarted.acknowledge_node_heartbeat(a, 10.0)
    assert restarted.nodes[a].status == NodeStatus.ONLINE
    # the removed site stays removed, and its key cannot come back unnoticed
    assert restarted.get_node_id_by_public_key(KEY_B) is None
    assert not restarted.acknowledge_node_heartbeat(b, 10.0)
    with pytest.raises(ValueError, match="already in use"):
        restarted.create_node("center", "center", KEY_B, 10.0)
    c = restarted.create_node("center", "center", b"ssh-ed25519 AAAA-site-c", 10.0)
    assert _state(database).get_node_id_by_public_key(b"ssh-ed25519 AAAA-site-c") == c


def test_sites_of_an_earlier_versions_sqlite_state_are_imported_once(tmp_path: Path) -> None:
    database = tmp_path / "superlink.db"
    federation = NoOpFederationManager()
    old = SqlLinkState(str(database), federation, InMemoryObjectStore())
    old.initialize()
    a = old.create_node("center", "center", KEY_A, 10.0, name="hospital-a")
    b = old.create_node("center", "center", KEY_B, 10.0, name="hospital-b")
    before = database.read_bytes()
    state = _state(database)
    assert state.get_node_id_by_public_key(KEY_A) == a
    assert state.federation_manager.linkstate is state  # the SQL state only lent its sites
    imported = tmp_path / "superlink.db.imported"
    assert registry_path(database).is_file() and not database.exists()
    assert imported.read_bytes() == before  # read from a copy: not migrated, not written
    assert not list(tmp_path.glob(".import-*"))
    state.delete_node("center", b)
    # the registry moved away: the removed site cannot come back from the imported file
    registry_path(database).unlink()
    assert _state(database).nodes == {}


def test_a_legacy_file_left_by_a_start_cut_short_is_set_aside_not_read(tmp_path: Path) -> None:
    database = tmp_path / "superlink.db"
    federation = NoOpFederationManager()
    old = SqlLinkState(str(database), federation, InMemoryObjectStore())
    old.initialize()
    old.create_node("center", "center", KEY_A, 10.0, name="hospital-a")
    assert (tmp_path / "superlink.db-wal").exists()  # rows only in the write-ahead log
    state = _state(database)
    a = state.get_node_id_by_public_key(KEY_A)
    assert a is not None
    for suffix in ("", "-wal"):  # renamed with it, under the names SQLite pairs with it
        assert (tmp_path / f"superlink.db.imported{suffix}").exists()
        assert not (tmp_path / f"superlink.db{suffix}").exists()
    state.delete_node("center", a)
    # killed after the registry was written, before the rename: the next start renames it
    (tmp_path / "superlink.db.imported").rename(database)
    assert _state(database).get_node_id_by_public_key(KEY_A) is None and not database.exists()
    registry_path(database).unlink()  # "move it away": the removed site stays removed
    assert _state(database).nodes == {}


def test_an_empty_key_and_a_folder_that_cannot_be_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "superlink.db"
    state = _state(database)
    with pytest.raises(ValueError, match="public key is empty"):
        state.create_node("center", "center", b"", 10.0)  # Flower's --insecure passes it on
    assert state.nodes == {} and not registry_path(database).exists()
    real_open = os.open

    def no_folder_sync(path: Any, flags: int, *args: Any) -> int:
        if Path(path) == tmp_path:
            raise OSError(5, "Input/output error")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_folder_sync)
    a = state.create_node("center", "center", KEY_A, 10.0)  # the file is in place: kept
    monkeypatch.undo()
    assert state.get_node_id_by_public_key(KEY_A) == a
    assert _state(database).get_node_id_by_public_key(KEY_A) == a


def test_a_legacy_state_that_cannot_be_read_stops_the_superlink(tmp_path: Path) -> None:
    database = tmp_path / "superlink.db"
    database.write_bytes(b"not a database, but not empty either" * 100)
    with pytest.raises(RegistryError, match=r"superlink\.db: the sites an earlier version"):
        _state(database)
    assert database.exists() and not registry_path(database).exists()


def test_a_registration_or_removal_that_cannot_be_written_is_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "superlink.db"
    state = _state(database)
    a = state.create_node("center", "center", KEY_A, 10.0, name="hospital-a")
    saved = registry_path(database).read_bytes()

    def full_disk(self: SiteRegistryState) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SiteRegistryState, "_save", full_disk)
    with pytest.raises(OSError, match="No space"):
        state.create_node("center", "center", KEY_B, 10.0, name="hospital-b")
    assert state.get_node_id_by_public_key(KEY_B) is None and len(state.nodes) == 1
    with pytest.raises(OSError, match="No space"):
        state.delete_node("center", a)  # a revocation the file does not hold did not happen
    assert state.nodes[a].status == NodeStatus.REGISTERED
    assert state.get_node_id_by_public_key(KEY_A) == a
    monkeypatch.undo()
    assert registry_path(database).read_bytes() == saved
    b = state.create_node("center", "center", KEY_B, 10.0)  # the same key: not "in use"
    state.delete_node("center", a)
    restarted = _state(database)
    assert restarted.get_node_id_by_public_key(KEY_B) == b
    assert restarted.get_node_id_by_public_key(KEY_A) is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("superlink.db.sites.json.")]


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '{"version": 9, "sites": []}',
        '{"version": 1, "sites": [{"name": "x"}]}',
        '{"version": 1, "sites": [{"node_id": "1", "public_key": "AQ==", '
        '"heartbeat_interval": "x"}]}',
        '{"version": 1, "sites": [{"node_id": "1", "public_key": "AQ=="}, '
        '{"node_id": "2", "public_key": "AQ=="}]}',
        "[]",
        '{"version": 1, "sites": [{"node_id": "1", "public_key": "AQ==", '
        '"status": "unregisterd"}]}',
        '{"version": 1, "sites": [{"node_id": "1", "public_key": "AQ=="}]}',
    ],
    ids=[
        "garbled",
        "other-version",
        "no-key",
        "bad-field",
        "one-key-two-sites",
        "not-a-dict",
        "misspelled-status",
        "no-status",
    ],
)
def test_a_registry_that_cannot_be_read_stops_the_superlink_and_is_left_alone(
    tmp_path: Path, text: str
) -> None:
    database = tmp_path / "superlink.db"
    registry_path(database).write_text(text)
    with pytest.raises(RegistryError, match=r"superlink\.db\.sites\.json.*register the sites"):
        _state(database)
    assert registry_path(database).read_text() == text


def test_the_launcher_replaces_the_factory_the_superlink_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import flwr.superlink.main as superlink_main

    monkeypatch.setattr(
        superlink_main, superlink.FACTORIES, getattr(superlink_main, superlink.FACTORIES)
    )  # restored after
    superlink.keep_objects_in_memory()
    assert getattr(superlink_main, superlink.FACTORIES) is superlink.objects_in_memory
    with pytest.raises(RuntimeError, match="not the one hepafed pins"):
        superlink.keep_objects_in_memory()  # already replaced: not Flower's any more


def test_a_flower_release_that_moves_the_factory_fails_loudly() -> None:
    moved = types.ModuleType("flwr.superlink.main")
    with pytest.raises(RuntimeError, match="no longer builds its stores"):
        superlink.check_factory_site(moved)


def test_a_second_superlink_on_the_same_state_is_refused_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    database = str(tmp_path / "superlink.db")
    args = ["--insecure", "--database", database, "--port", "9093"]
    assert superlink.database_arg(args) == database
    assert superlink.database_arg([f"--database={database}"]) == database
    assert superlink.database_arg(["--insecure"]) is None
    assert superlink.hold_state(":flwr-in-memory:") is None and superlink.hold_state(None) is None
    first = superlink.hold_state(database)  # the SuperLink running
    assert first is not None
    try:
        with pytest.raises(superlink.StateBusy, match="another SuperLink is running"):
            superlink.hold_state(database)

        def started() -> None:
            raise AssertionError("the second SuperLink was started")

        monkeypatch.setattr(superlink, "keep_objects_in_memory", started)
        assert superlink.main(args) == 1
        assert "superlink.db.sites.json.lock: another SuperLink" in capsys.readouterr().err
    finally:
        first.close()
    second = superlink.hold_state(database)  # free once the first one is gone
    assert second is not None
    second.close()
