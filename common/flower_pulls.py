"""Flower's object pulls with a short retry backoff, in the processes hepafed runs.

A Flower message travels as a tree of objects (the message, each array, its chunks). A
receiver learns of a message before its objects have all arrived and pulls them one by
one; an object not there yet raises ``ObjectUnavailableError`` and is tried again after
a backoff that starts at 1 s and doubles up to 10 s (``flwr.supercore.constant``:
``PULL_INITIAL_BACKOFF``, ``PULL_BACKOFF_CAP``). The SuperNode hands a message to its
task while it is still pulling the objects from the SuperLink (128 for the default model,
about 5 s on this machine's loopback with three sites), so a ClientApp task slept in that
backoff for up to several seconds after the last object had arrived.

``quicken_pulls`` rebinds a module's pull functions to the same functions with a backoff
from ``INITIAL_BACKOFF_S`` doubling up to ``BACKOFF_CAP_S``: the same retries, at most
2 requests a second per object while one is missing. Applied where the pulls happen:
the ClientApp task (``client.executor``; its SuperNode is on the same host, so it asks
up to 10 times a second, ``LOCAL_BACKOFF_CAP_S``, and starts its work that much
sooner after the SuperNode has the last object), the SuperNode (``client.supernode``) and the
deployed ServerApp (``server.app``: its grid, and ``server.pull``, which pulls the
replies). Flower is pinned to one minor release; a release that renames the functions or
their backoff arguments fails here, loudly.
"""

from __future__ import annotations

import functools
import inspect
from types import ModuleType

INITIAL_BACKOFF_S = 0.05
BACKOFF_CAP_S = 0.5
LOCAL_BACKOFF_CAP_S = 0.1  # a task's pulls from its own SuperNode, on loopback
PULL_FUNCTIONS = ("pull_objects", "pull_and_inflate_object_from_tree")
_QUICK = "_hepafed_quick_pull"


def quicken_pulls(module: ModuleType, backoff_cap: float = BACKOFF_CAP_S) -> list[str]:
    """Rebind ``module``'s Flower pull functions (those of ``PULL_FUNCTIONS`` it imported)
    with the short backoff, doubling up to ``backoff_cap`` seconds (``LOCAL_BACKOFF_CAP_S``
    where the objects come from this host's own SuperNode); the names rebound. Idempotent:
    a function rebound once keeps its first backoff."""
    rebound = []
    for name in PULL_FUNCTIONS:
        fn = getattr(module, name, None)
        if fn is None:
            continue
        if not getattr(fn, _QUICK, False):
            params = inspect.signature(fn).parameters
            if not {"initial_backoff", "backoff_cap"} <= set(params):
                raise RuntimeError(
                    f"{module.__name__}.{name} takes no initial_backoff/backoff_cap: this "
                    "Flower release is not the one hepafed pins; reinstall its pinned flwr"
                )
            quick = functools.partial(
                fn, initial_backoff=INITIAL_BACKOFF_S, backoff_cap=backoff_cap
            )
            setattr(quick, _QUICK, True)
            setattr(module, name, quick)
        rebound.append(name)
    if not rebound:
        raise RuntimeError(
            f"{module.__name__} pulls no objects with {' or '.join(PULL_FUNCTIONS)}: this "
            "Flower release is not the one hepafed pins; reinstall its pinned flwr"
        )
    return rebound
