"""The process runtime: the one owner of the package's process-wide state.

Everything that exists once per process is built here on first use (``RUNTIME.get(key,
factory)``), so importing the package opens no file, starts no thread and writes nothing to
``/proc``. A pre-fork server forks while other threads may hold a lock, which the child would
inherit held forever, so one fork hook keeps the child sound: locks from :meth:`Runtime.lock` are
replaced, ``fresh_in_child`` components are dropped and rebuilt, and every other component gets
``_after_fork_in_child()``. The components every profiled call reads are also plain attributes
once built, because a profiled call with no SDK costs only a few microseconds in all.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")

logger = logging.getLogger(__name__)

_AFTER_FORK = "_after_fork_in_child"


class Runtime:
    """The package's state in this process: components by key, locks by name, one fork hook."""

    #: The hot components, None until built (see the module docs).
    probe: Any = None
    tracker: Any = None
    config: Any = None
    telemetry: Any = None
    device_memory: Any = None
    flight_recorder: Any = None
    _HOT = frozenset(("probe", "tracker", "config", "telemetry", "device_memory", "flight_recorder"))

    def __init__(self) -> None:
        self._components: dict[str, Any] = {}
        self._fresh_in_child: set[str] = set()
        self._locks: dict[str, threading.Lock] = {}
        self._guards: set[str] = set()
        # Reentrant: a factory may ask for another component (the tracker needs the probe).
        self._build_lock = threading.RLock()
        self._instances: weakref.WeakSet[Any] = weakref.WeakSet()
        self._hooked = False
        #: How many forked children this process's runtime has been reset in (0 in the original).
        self.forks = 0

    # --- components ------------------------------------------------------------------------

    def get(self, key: str, factory: Callable[[], T], *, fresh_in_child: bool = False) -> T:
        """The component called ``key``, built by ``factory()`` on first use (thread-safe)."""
        component = self._components.get(key)
        if component is None:
            with self._build_lock:
                component = self._components.get(key)
                if component is None:
                    self._hook_fork()
                    component = factory()
                    if fresh_in_child:
                        self._fresh_in_child.add(key)
                    self._store(key, component)
        return cast(T, component)

    def _store(self, key: str, component: object | None) -> None:
        if component is None:
            self._components.pop(key, None)
        else:
            self._components[key] = component
        if key in self._HOT:
            setattr(self, key, component)

    def once(self, key: str, action: Callable[[], object]) -> None:
        """Run ``action()`` the first time it is asked for under ``key`` in this process."""
        self.get(key, lambda: action() or True)

    def peek(self, key: str) -> Any | None:
        """The component called ``key`` if it was built, else None (builds nothing)."""
        return self._components.get(key)

    def replace(self, key: str, component: object) -> None:
        """Put ``component`` in place of the one called ``key`` (built or not)."""
        with self._build_lock:
            self._hook_fork()
            self._store(key, component)

    # --- locks -----------------------------------------------------------------------------

    def lock(self, name: str) -> threading.Lock:
        """The process-wide lock called ``name``; a forked child gets a fresh one.

        Take it afresh each time (``with RUNTIME.lock("config"):``) instead of keeping it: a
        kept lock would outlive the fork.
        """
        found = self._locks.get(name)
        if found is None:
            self._hook_fork()
            found = self._locks.setdefault(name, threading.Lock())  # atomic: one lock per name
        return found

    def fork_guard(self, name: str) -> threading.Lock:
        """The lock called ``name``, which a ``fork()`` also takes and holds while it forks.

        For work that must not be forked in the middle of (it holds a library's locks the child
        would inherit held); take it afresh each time, as :meth:`lock`.
        """
        self._guards.add(name)
        return self.lock(name)

    # --- fork ------------------------------------------------------------------------------

    def after_fork_call(self, instance: object) -> None:
        """Call ``instance._after_fork_in_child()`` in every forked child while it is alive.

        Held weakly: registering never keeps the instance alive.
        """
        self._hook_fork()
        self._instances.add(instance)

    def _hook_fork(self) -> None:
        if not self._hooked:
            with self._build_lock:  # reentrant: get() and replace() already hold it
                if not self._hooked:
                    if hasattr(os, "register_at_fork"):
                        os.register_at_fork(
                            before=self._before_fork, after_in_parent=self._after_fork_in_parent, after_in_child=self._after_fork_in_child
                        )
                    self._hooked = True

    def _held_guards(self) -> list[threading.Lock]:
        return [self.lock(name) for name in sorted(self._guards)]  # one order: no deadlock between guards

    def _before_fork(self) -> None:
        for guard in self._held_guards():
            guard.acquire()

    def _after_fork_in_parent(self) -> None:
        for guard in reversed(self._held_guards()):
            guard.release()

    def _after_fork_in_child(self) -> None:
        # Only the forking thread exists now: no lock is needed, and none may be waited on.
        self.forks += 1
        self._build_lock = threading.RLock()
        self._locks = {}
        for key in self._fresh_in_child:
            self._store(key, None)
        self._fresh_in_child = set()
        seen: set[int] = set()
        for component in [*self._components.values(), *self._instances]:
            reset = getattr(component, _AFTER_FORK, None)
            if reset is not None and id(component) not in seen:
                seen.add(id(component))
                try:
                    reset()
                except Exception:  # one component's failure must not leave the others unreset
                    logger.exception("resetting %r in a forked child failed", component)


#: The runtime of this process.
RUNTIME = Runtime()
