"""The SuperLink launcher (``server.superlink``): message objects in memory, the state (runs,
registered sites) in the SQLite file; a Flower release that moves the factory fails loudly.
The deployment tests (tests/deploy) run federations through it end to end."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from flwr.server.superlink.linkstate.sql_linkstate import SqlLinkState
from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore
from flwr.superlink import config_loader
from flwr.superlink.federation import NoOpFederationManager

from server import superlink


def test_objects_are_held_in_memory_and_the_state_in_the_file(tmp_path: Path) -> None:
    database = tmp_path / "superlink.db"
    objects, states = superlink.objects_in_memory(str(database), NoOpFederationManager())
    state = states.state()
    assert isinstance(state, SqlLinkState) and database.is_file()
    assert isinstance(objects.store(), InMemoryObjectStore)
    assert state.object_store is objects.store()  # the one store the SuperLink serves
    # Flower's own choice for the same file: the objects in SQLite too (what this avoids)
    flower_objects, _ = config_loader.get_objectstore_linkstate_factories(
        str(tmp_path / "flower.db"), NoOpFederationManager()
    )
    assert not isinstance(flower_objects.store(), InMemoryObjectStore)


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
