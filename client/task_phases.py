"""Where one ClientApp task's time goes, timed around Flower's task runner's steps."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("hepafed.site-executor")
T = TypeVar("T")


class TaskPhases:
    """Where one task's time goes, logged when its reply is pushed: ``start`` (from the
    token acquired to the task process running this code), ``input`` (context, run and
    bundle from the SuperNode: one request), ``message`` (the message's objects from the
    SuperNode, which hands a task its message while it still pulls the objects from the
    SuperLink: mostly that wait), ``install`` (the approval check and the bundle's
    extraction), ``load`` (importing the bundle's ClientApp), ``app`` (the ClientApp's
    work) and ``push`` (the reply to the SuperNode)."""

    ORDER = ("start", "input", "message", "install", "load", "app", "push")

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def timed(self, phase: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def wrap(fn: Callable[..., T]) -> Callable[..., T]:
            @functools.wraps(fn)
            def run(*a: Any, **k: Any) -> T:
                t = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t

            return run

        return wrap

    def pull(self, pull_task_input: Callable[[Any], T], client: Any) -> T:
        """Flower's ``pull_task_input(client)``, timed as ``input`` (its ``PullTaskInput``
        request) and ``message`` (the rest: the message and its objects)."""
        request = getattr(client, "PullTaskInput", None)
        if request is None:  # not Flower's runtime client: the whole pull is the message
            return self.timed("message")(pull_task_input)(client)
        client.PullTaskInput = self.timed("input")(request)
        t = time.perf_counter()
        try:
            return pull_task_input(client)
        finally:
            client.PullTaskInput = request
            rest = time.perf_counter() - t - self.seconds.get("input", 0.0)
            self.seconds["message"] = self.seconds.get("message", 0.0) + max(0.0, rest)

    def wrap_load_and_push(self, runner: Any) -> None:
        """Time Flower's ClientApp loading, the ClientApp's call and the reply's push in
        ``runner`` (Flower's task runner module); the push logs the phases."""
        get_loader, push_message = runner.get_load_client_app_fn, runner.push_message

        def get_timed_loader(*a: Any, **k: Any) -> Callable[..., Any]:
            load = self.timed("load")(get_loader(*a, **k))

            def load_timed_app(*la: Any) -> Callable[..., Any]:
                return self.timed("app")(load(*la))

            return load_timed_app

        def push_and_log(*a: Any, **k: Any) -> None:
            try:
                self.timed("push")(push_message)(*a, **k)
            finally:
                log.info("task phases: %s", self.line())

        runner.get_load_client_app_fn = get_timed_loader
        runner.push_message = push_and_log

    def line(self) -> str:
        return ", ".join(f"{p} {self.seconds[p]:.3f} s" for p in self.ORDER if p in self.seconds)
