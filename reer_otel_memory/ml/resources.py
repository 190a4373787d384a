"""MemoryResourceManager: named resources with cleanup callbacks, size estimates and memory limits.

The manager holds a resource weakly where its type allows, so it never keeps one alive beyond
its owner (``keep_alive=True`` holds it strongly). Sizes are estimated by a bounded walk
(:mod:`reer_otel_memory.ml.sizing`); :meth:`MemoryResourceManager.check_limits` cleans up a
resource over its ``memory_limit_mb``. Under memory pressure only resources registered with
``release_on_pressure=True`` are cleaned up: a model or connection pool still in use must not
vanish because memory ran high. Thread-safe; the metrics are listed in docs/telemetry.md.
"""

from __future__ import annotations

import collections
import inspect
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from .. import _names as names
from .. import _telemetry
from .._runtime import RUNTIME
from ..config import MB, checked_number, size_mb_to_bytes
from ..errors import InvalidArgumentError
from ..monitoring.cleanup import register_cleanup_hook
from .sizing import estimate_size

logger = logging.getLogger(__name__)

#: The name of the cleanup hook that releases managed resources.
CLEANUP_HOOK_NAME = "reer.resources"
DEFAULT_MAX_SIZE_OBJECTS = 20_000

TRIGGER_MANUAL = "manual"
TRIGGER_LIMIT = "limit"
TRIGGER_PRESSURE = "pressure"


def _callback_wants_resource(callback: Callable[..., Any]) -> bool:
    """True if ``callback`` must be called with the resource, False if with nothing."""
    try:
        signature = inspect.signature(callback)
    except (TypeError, ValueError):  # a builtin without a signature: call it as documented, bare
        return False
    try:
        signature.bind()
        return False
    except TypeError:
        pass
    try:
        signature.bind(None)
        return True
    except TypeError:
        raise InvalidArgumentError(
            f"register_resource(cleanup_callback={callback!r}): expected a callable taking no argument "
            f"or the resource, got signature {signature}"
        ) from None


class _Entry:
    __slots__ = (
        "callback",
        "callback_ref",
        "limit_bytes",
        "name",
        "ref",
        "registered_at",
        "release_on_pressure",
        "size_bytes",
        "size_measured_at",
        "size_truncated",
        "strong",
        "type_name",
        "wants_resource",
    )

    callback: Callable[..., Any] | None
    callback_ref: weakref.WeakMethod[Callable[..., Any]] | None
    limit_bytes: int | None
    name: str
    ref: weakref.ReferenceType[Any] | None
    registered_at: float
    release_on_pressure: bool
    size_bytes: int
    size_measured_at: float
    size_truncated: bool
    strong: Any
    type_name: str
    wants_resource: bool

    def get(self) -> Any:
        return self.strong if self.ref is None else self.ref()

    def get_callback(self) -> Callable[..., Any] | None:
        return self.callback_ref() if self.callback_ref is not None else self.callback


class MemoryResourceManager:
    """Named resources, cleaned up on demand, over their limit, or under memory pressure."""

    def __init__(self, max_size_objects: int = DEFAULT_MAX_SIZE_OBJECTS) -> None:
        checked_number(max_size_objects, 1, whole=True, where="MemoryResourceManager", name="max_size_objects", expected="expected a positive integer")
        self.max_size_objects = max_size_objects
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        # Weakref callbacks only queue the dead entry: they may run inside gc, on any thread.
        self._dead: collections.deque[_Entry] = collections.deque()
        _managers.add(self)
        RUNTIME.after_fork_call(self)
        _telemetry.register_on_every_telemetry("ml.resources", _register_gauges)
        register_cleanup_hook(CLEANUP_HOOK_NAME, release_resources_under_pressure)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.RLock()  # another thread may have held it when the process forked

    # --- registration --------------------------------------------------------------------------

    def register_resource(
        self,
        name: str,
        resource: Any,
        cleanup_callback: Callable[..., Any] | None = None,
        memory_limit_mb: float | None = None,
        *,
        keep_alive: bool = False,
        release_on_pressure: bool = False,
    ) -> None:
        """Manage ``resource`` under ``name`` (replacing, without cleaning it, any resource of that name)."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"register_resource(name={name!r}): expected a non-empty string")
        if resource is None:
            raise InvalidArgumentError(f"register_resource({name!r}, resource=None): expected the resource object")
        if cleanup_callback is not None and not callable(cleanup_callback):
            raise InvalidArgumentError(f"register_resource({name!r}, cleanup_callback={cleanup_callback!r}): expected a callable or None")
        limit_bytes = None
        if memory_limit_mb is not None:
            limit_bytes = size_mb_to_bytes(memory_limit_mb, f"register_resource({name!r}, memory_limit_mb={memory_limit_mb!r})", or_none=True)

        entry = _Entry()
        entry.name = name
        entry.wants_resource = cleanup_callback is not None and _callback_wants_resource(cleanup_callback)
        entry.limit_bytes = limit_bytes
        entry.release_on_pressure = bool(release_on_pressure)
        entry.registered_at = time.time()
        entry.type_name = type(resource).__qualname__
        entry.callback = cleanup_callback
        entry.callback_ref = None
        entry.strong = None
        entry.ref = None
        if not keep_alive:
            dead = self._dead

            def forget(_ref: weakref.ReferenceType[Any], entry: _Entry = entry) -> None:
                dead.append(entry)

            try:
                entry.ref = weakref.ref(resource, forget)
            except TypeError:
                entry.ref = None
        if entry.ref is None:
            entry.strong = resource
        elif inspect.ismethod(cleanup_callback) and cleanup_callback.__self__ is resource:
            entry.callback_ref = weakref.WeakMethod(cleanup_callback)
            entry.callback = None
        size = estimate_size(resource, self.max_size_objects)
        entry.size_bytes, entry.size_truncated, entry.size_measured_at = size.bytes, size.truncated, time.time()
        with self._lock:
            self._purge()
            self._entries[name] = entry

    def unregister_resource(self, name: str) -> bool:
        """Forget ``name`` without cleaning it up; False if it was not registered."""
        with self._lock:
            self._purge()
            return self._entries.pop(name, None) is not None

    def _purge(self) -> None:
        """Drop entries whose resource was collected (caller holds the lock)."""
        while self._dead:
            entry = self._dead.popleft()
            if self._entries.get(entry.name) is entry:
                del self._entries[entry.name]

    # --- reading -------------------------------------------------------------------------------

    def get_resource(self, name: str) -> Any | None:
        """The resource registered as ``name``, or None (not registered, or collected)."""
        with self._lock:
            self._purge()
            entry = self._entries.get(name)
        return None if entry is None else entry.get()

    def resource_names(self) -> list[str]:
        with self._lock:
            self._purge()
            return [name for name, entry in self._entries.items() if entry.get() is not None]

    def __len__(self) -> int:
        return len(self.resource_names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get_resource(name) is not None

    def get_resource_stats(self) -> dict[str, dict[str, Any]]:
        """Per resource: how it is held, its last size estimate and its limit."""
        with self._lock:
            self._purge()
            entries = list(self._entries.values())
        stats = {}
        for entry in entries:
            if entry.get() is None:
                continue
            stats[entry.name] = {
                "type": entry.type_name,
                "held": "weak" if entry.ref is not None else "strong",
                "size_bytes": entry.size_bytes,
                "size_mb": entry.size_bytes / MB,
                "size_truncated": entry.size_truncated,
                "size_measured_at": entry.size_measured_at,
                "memory_limit_bytes": entry.limit_bytes,
                "memory_limit_mb": None if entry.limit_bytes is None else entry.limit_bytes / MB,
                "over_limit": entry.limit_bytes is not None and entry.size_bytes > entry.limit_bytes,
                "release_on_pressure": entry.release_on_pressure,
                "registered_at": entry.registered_at,
            }
        return stats

    # --- cleaning up ---------------------------------------------------------------------------

    def cleanup_resource(self, name: str, *, trigger: str = TRIGGER_MANUAL) -> bool:
        """Remove ``name`` and run its callback; False if it was not registered or already collected."""
        with self._lock:
            self._purge()
            entry = self._entries.pop(name, None)
        if entry is None:
            return False
        resource = entry.get()
        if resource is None:
            return False
        callback = entry.get_callback()
        if callback is not None:
            if entry.wants_resource:
                callback(resource)
            else:
                callback()
        del resource
        try:
            _telemetry.current().counter(names.METRIC_RESOURCE_CLEANUPS).add(1, {names.LABEL_TRIGGER: trigger})
        except Exception as exc:  # a metrics failure must not fail the cleanup
            logger.debug("could not count the cleanup of %r: %r", name, exc)
        return True

    def _cleanup_logged(self, name: str, trigger: str) -> bool:
        try:
            return self.cleanup_resource(name, trigger=trigger)
        except Exception:
            logger.exception("cleanup of resource %r failed", name)
            return False

    def cleanup_all_resources(self) -> int:
        """Clean up every resource; the number cleaned (a failing callback is logged, not counted)."""
        return sum(self._cleanup_logged(name, TRIGGER_MANUAL) for name in self.resource_names())

    def check_limits(self) -> list[str]:
        """Re-estimate every resource's size; clean up those over their limit. Returns their names."""
        with self._lock:
            self._purge()
            entries = list(self._entries.values())
        over = []
        for entry in entries:
            resource = entry.get()
            if resource is None:
                continue
            size = estimate_size(resource, self.max_size_objects)
            del resource
            entry.size_bytes, entry.size_truncated, entry.size_measured_at = size.bytes, size.truncated, time.time()
            if entry.limit_bytes is not None and size.bytes > entry.limit_bytes:
                over.append(entry.name)
        return [name for name in over if self._cleanup_logged(name, TRIGGER_LIMIT)]

    def release_under_pressure(self) -> int:
        """What the cleanup hook does: :meth:`check_limits`, then clean up every ``release_on_pressure`` resource."""
        cleaned = len(self.check_limits())
        with self._lock:
            self._purge()
            releasable = [name for name, entry in self._entries.items() if entry.release_on_pressure]
        return cleaned + sum(self._cleanup_logged(name, TRIGGER_PRESSURE) for name in releasable)

    def _alive_entries(self) -> list[_Entry]:
        with self._lock:
            self._purge()
            return [entry for entry in self._entries.values() if entry.get() is not None]


# The live instances the gauges describe, held weakly: not process state a reset could forget,
# but objects the user's code made and still holds.
_managers: weakref.WeakSet[MemoryResourceManager] = weakref.WeakSet()


def release_resources_under_pressure() -> int:
    """The cleanup hook: :meth:`MemoryResourceManager.release_under_pressure` on every manager."""
    return sum(manager.release_under_pressure() for manager in list(_managers))


# --- metrics -----------------------------------------------------------------------------------


def _observe_count(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(sum(len(manager._alive_entries()) for manager in list(_managers)))]


def _observe_sizes(options: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(entry.size_bytes, {names.LABEL_RESOURCE: entry.name})
        for manager in list(_managers)
        for entry in manager._alive_entries()
    ]


def _register_gauges(telemetry: _telemetry.Telemetry) -> None:
    telemetry.observable_gauge(names.METRIC_RESOURCES, _observe_count)
    telemetry.observable_gauge(names.METRIC_RESOURCE_SIZE, _observe_sizes)


def get_resource_manager() -> MemoryResourceManager:
    """The process-wide resource manager."""
    return RUNTIME.get("ml_resources", MemoryResourceManager)
