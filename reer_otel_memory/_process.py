"""Process-wide state that stays right across threads and ``fork()``.

A pre-fork server forks while other threads may hold a lock; the child inherits the lock held
forever. Every module that keeps a lock or a process-wide instance registers a reset here.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def after_fork_in_child(callback: Callable[[], None]) -> None:
    """Run ``callback()`` in every child this process forks (where the platform can)."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=callback)


def after_fork_in_child_call(instance: object, method_name: str) -> None:
    """Call ``instance.<method_name>()`` in every forked child while ``instance`` is alive.

    Held weakly: registering never keeps the instance alive.
    """
    ref = weakref.ref(instance)

    def call_if_alive() -> None:
        alive = ref()
        if alive is not None:
            getattr(alive, method_name)()

    after_fork_in_child(call_if_alive)


class ProcessDefault(Generic[T]):
    """The one instance of something per process, built on first use, thread-safe and fork-safe."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._instance: T | None = None
        after_fork_in_child(self._new_lock)

    def _new_lock(self) -> None:
        self._lock = threading.Lock()

    def get(self) -> T:
        """The instance, built by ``factory()`` the first time."""
        instance = self._instance
        if instance is None:
            with self._lock:
                if self._instance is None:
                    self._instance = self._factory()
                instance = self._instance
        return instance

    def peek(self) -> T | None:
        """The instance if it was built, else None (builds nothing)."""
        return self._instance
