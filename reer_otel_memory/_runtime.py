"""The process runtime: the owner of the package's process-wide state (what stays at module
level elsewhere says beside it why).

Each thing that exists once per process is a typed field of :class:`Runtime`, None until the
module that owns it builds it on first use (``RUNTIME.get(field, factory)``), so importing the
package opens no file, starts no thread and writes nothing to ``/proc``. One fork rule keeps a
forked child sound: its locks are new, the fields in :data:`FRESH_IN_CHILD` are dropped and
rebuilt, and every other component gets ``_after_fork_in_child()``. :meth:`Runtime.reset` puts
the process back as a fresh import left it (``reer_otel_memory.testing.reset_state``).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:  # annotations only: the owners import this module, never the reverse
    from ._cgroup import MemoryCgroup
    from ._telemetry import Registrations, Telemetry, _OperationAttributes, _OperationNets
    from .config import ConfigListeners, MemoryConfig
    from .export.endpoint import _Pipeline
    from .frameworks.server_spans import _Requests
    from .ml.profiler import MemoryProfiler
    from .ml.resources import MemoryResourceManager
    from .monitoring.cleanup import CleanupRegistry
    from .monitoring.metrics import _LatestCgroupReading, _MonitorGauges, _Totals
    from .monitoring.monitor import _Monitors
    from .profiling.devices import DeviceMemory
    from .profiling.explain import AutoExplainer, _WindowState
    from .profiling.explain_listener import ExplainListener
    from .profiling.flight_recorder import RecorderHolder
    from .profiling.operations import _OperationTimings
    from .profiling.probe import MemoryProbe
    from .profiling.tracker import MemoryTracker

T = TypeVar("T")

logger = logging.getLogger(__name__)

_AFTER_FORK = "_after_fork_in_child"
_ON_RESET = "_on_reset"

#: Fields a forked child drops and rebuilds: sums a child must start from zero (to Prometheus a
#: forked worker is a new process).
FRESH_IN_CHILD = frozenset({"operation_nets", "monitor_totals"})
#: Fields a reset keeps: the probe is the process's one reader of the kernel's RSS high-water
#: mark, which each probe resets for its peak windows; a second one, beside references to the
#: first kept from before the reset, would clear the other's peaks.
KEPT_ON_RESET = frozenset({"probe"})
#: Distinct messages :meth:`Runtime.first_time` keeps track of.
MAX_LOGGED_ONCE = 100


class Runtime:
    """The package's state in this process: one typed field per component, locks by name, one fork hook."""

    # Read on every profiled call.
    probe: MemoryProbe | None = None
    config: MemoryConfig | None = None
    tracker: MemoryTracker | None = None  # the leak detector is the tracker's
    telemetry: Telemetry | None = None
    device_memory: DeviceMemory | None = None
    flight_recorder: RecorderHolder | None = None
    # Built by the module that owns each, on first use.
    operation_attributes: _OperationAttributes | None = None
    operation_nets: _OperationNets | None = None
    operation_timings: _OperationTimings | None = None
    logged_once: set[str] | None = None
    registrations: Registrations | None = None
    config_listeners: ConfigListeners | None = None
    monitors: _Monitors | None = None
    monitor_gauges: _MonitorGauges | None = None
    monitor_totals: _Totals | None = None
    cgroup: list[MemoryCgroup | None] | None = None  # a list: "no cgroup" is an answer kept too
    cgroup_reading: _LatestCgroupReading | None = None
    in_container: bool | None = None
    cleanup_registry: CleanupRegistry | None = None
    endpoint: _Pipeline | None = None
    explain_window: _WindowState | None = None
    auto_explainer: AutoExplainer | None = None
    explain_listener: ExplainListener | None = None
    server_requests: _Requests | None = None
    ml_profiler: MemoryProfiler | None = None
    ml_resources: MemoryResourceManager | None = None

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guards: set[str] = set()
        # Reentrant: a factory may ask for another component (the tracker needs the probe).
        self._build_lock = threading.RLock()
        self._instances: weakref.WeakSet[Any] = weakref.WeakSet()
        self._hooked = False

    # --- components ------------------------------------------------------------------------

    def get(self, field: str, factory: Callable[[], T]) -> T:
        """The component in ``field``, built by ``factory()`` on first use (thread-safe)."""
        component = getattr(self, field)
        if component is None:
            with self._build_lock:
                component = getattr(self, field)
                if component is None:
                    self._hook_fork()
                    component = factory()
                    setattr(self, field, component)
        return cast(T, component)

    def replace(self, field: str, component: object) -> None:
        """Put ``component`` in ``field``, in place of the one there (built or not)."""
        if field not in COMPONENTS:
            raise AttributeError(f"Runtime has no component field {field!r}")
        with self._build_lock:
            self._hook_fork()
            setattr(self, field, component)

    def reset(self) -> None:
        """Forget every component but :data:`KEPT_ON_RESET`, each told first (``_on_reset()``,
        to stop what it runs); the next use builds them afresh from the environment, as after a
        fresh import."""
        forgotten = [field for field in COMPONENTS if field not in KEPT_ON_RESET]
        with self._build_lock:
            built = [getattr(self, field) for field in forgotten]
            for field in forgotten:
                setattr(self, field, None)
        for component in built:
            on_reset = getattr(component, _ON_RESET, None)
            if on_reset is not None:
                try:
                    on_reset()
                except Exception:  # one component's failure must not leave the others running
                    logger.exception("resetting %r failed", component)

    def first_time(self, what: str) -> bool:
        """True the first time ``what`` is asked about in this process, for a message logged once
        (after :data:`MAX_LOGGED_ONCE` distinct ones, never: the set stays bounded)."""
        logged = self.logged_once or self.get("logged_once", set)
        if what in logged or len(logged) >= MAX_LOGGED_ONCE:
            return False
        logged.add(what)  # two threads at once may both log it: harmless
        return True

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
        self._build_lock = threading.RLock()
        self._locks = {}
        for field in FRESH_IN_CHILD:
            setattr(self, field, None)
        seen: set[int] = set()
        for component in [*(getattr(self, field) for field in COMPONENTS), *self._instances]:
            reset = getattr(component, _AFTER_FORK, None)
            if reset is not None and id(component) not in seen:
                seen.add(id(component))
                try:
                    reset()
                except Exception:  # one component's failure must not leave the others unreset
                    logger.exception("resetting %r in a forked child failed", component)


#: The names of :class:`Runtime`'s component fields.
COMPONENTS = tuple(Runtime.__annotations__)

#: The runtime of this process.
RUNTIME = Runtime()
