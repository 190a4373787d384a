"""Memory cleanup: one registry of cleanup hooks, garbage collection, and handing freed heap back to the OS.

Every part of the package that can release memory, and users, register hooks in the one
:class:`CleanupRegistry` per process (:func:`register_cleanup_hook`). One cleanup runs every hook
(one that raises is logged and skipped), empties the caches of the accelerator frameworks the
process imported, collects garbage and calls ``malloc_trim(0)`` so freed memory really leaves
RSS. It costs a full garbage collection, which grows with the number of container objects, so
the monitor keeps a cooldown between automatic cleanups and runs them on its own thread, never in
a signal handler. Everything that releases memory and reports what it freed measures it the same
way, through :func:`release_memory`.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar, overload

import psutil

from .. import _names as names
from .._runtime import RUNTIME
from ..errors import ConfigurationError, InvalidArgumentError
from ..profiling.devices import device_memory
from ..profiling.probe import MemoryProbe, process_probe

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The values of the ``trigger`` label: what started a cleanup.
TRIGGERS = names.CLEANUP_TRIGGERS

#: The kind of a hook registered through :func:`register_cleanup_hook`.
KIND_HOOK = "hook"
#: The kind of a hook that clears a cache (:meth:`MemoryOptimizer.register_cache`).
KIND_CACHE = "cache"

_heap_trim: Callable[[], object] | None = getattr(psutil, "heap_trim", None)


class HooksRun(NamedTuple):
    """Which hooks one :meth:`CleanupRegistry.run` ran, and which of them raised."""

    run: list[str]
    failed: list[str]


class CleanupRegistry:
    """Named cleanup hooks, each with a kind, run in the order they were first registered.

    Thread-safe, and usable in a forked child even if the parent forked while another thread
    held the lock. Registering a name again replaces its hook (and kind) in place.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hooks: dict[str, tuple[Callable[[], object], str]] = {}
        RUNTIME.after_fork_call(self)

    def _after_fork_in_child(self) -> None:
        # A fork taken while another thread held the lock would leave it held forever in the child.
        self._lock = threading.Lock()

    def register(self, name: str, hook: Callable[[], object], kind: str = KIND_HOOK) -> None:
        """Run ``hook()`` on every :meth:`run` that includes ``kind``. Replaces a hook of that name."""
        if not callable(hook):
            raise InvalidArgumentError(f"register({name!r}, hook={hook!r}): expected a callable")
        with self._lock:
            self._hooks[name] = (hook, kind)

    def unregister(self, name: str, kind: str | None = None) -> bool:
        """Remove the hook called ``name`` (only if it is of ``kind``, when given); False if there was none."""
        with self._lock:
            entry = self._hooks.get(name)
            if entry is None or (kind is not None and entry[1] != kind):
                return False
            del self._hooks[name]
            return True

    def names(self, kind: str | None = None) -> list[str]:
        """Names of the hooks (of ``kind``, when given), in the order they run."""
        with self._lock:
            return [name for name, (_, hook_kind) in self._hooks.items() if kind is None or hook_kind == kind]

    def run(self, kind: str | None = None) -> HooksRun:
        """Run every hook (of ``kind``, when given) in order; one that raises is logged and skipped."""
        with self._lock:
            # Called outside the lock: a hook may register or unregister hooks, or take its time.
            hooks = [(name, hook) for name, (hook, hook_kind) in self._hooks.items() if kind is None or hook_kind == kind]
        done = HooksRun([], [])
        for name, hook in hooks:
            try:
                hook()
            except Exception:
                logger.exception("cleanup hook %r failed", name)
                done.failed.append(name)
            else:
                done.run.append(name)
        return done


def _run_hooks_and_empty_device_caches() -> tuple[HooksRun, dict[str, int]]:
    hooks = cleanup_registry().run()
    try:
        emptied = device_memory().empty_caches()
    except Exception as exc:  # a framework's failure must not stop the cleanup
        logger.warning("emptying the accelerator caches failed: %r", exc)
        emptied = {}
    if emptied:
        logger.info("accelerator caches emptied: %s", ", ".join(f"{framework} {size / (1 << 20):.1f} MB" for framework, size in sorted(emptied.items())))
    return hooks, emptied


def cleanup_registry() -> CleanupRegistry:
    """The process's cleanup registry: the hooks :func:`run_cleanup` runs."""
    return RUNTIME.get("cleanup_registry", CleanupRegistry)


def register_cleanup_hook(name: str, hook: Callable[[], object]) -> None:
    """Run ``hook()`` on every cleanup, before garbage collection. Replaces a hook of that name."""
    if not callable(hook):
        raise InvalidArgumentError(f"register_cleanup_hook({name!r}, hook={hook!r}): expected a callable")
    cleanup_registry().register(name, hook)


def unregister_cleanup_hook(name: str) -> bool:
    """Remove the hook called ``name``; False if there was none."""
    return cleanup_registry().unregister(name)


def cleanup_hook_names() -> list[str]:
    """Names of the registered hooks, in the order they run."""
    return cleanup_registry().names()


def trim_heap() -> bool:
    """Return free allocator memory to the OS (``malloc_trim(0)`` on glibc); False where unsupported."""
    if _heap_trim is None:
        return False
    try:
        _heap_trim()
    except (OSError, RuntimeError, NotImplementedError):
        return False
    return True


@dataclass(frozen=True)
class Released(Generic[T]):
    """What one :func:`release_memory` did: its callback's result and the memory measured around it."""

    value: T
    rss_before_bytes: int
    rss_after_bytes: int
    collected_objects: int
    trimmed: bool
    duration_s: float
    heap_before_bytes: int | None = None
    heap_after_bytes: int | None = None

    @property
    def freed_bytes(self) -> int:
        """RSS released (never negative)."""
        return max(0, self.rss_before_bytes - self.rss_after_bytes)

    @property
    def heap_freed_bytes(self) -> int | None:
        """Allocator heap released (never negative); None unless measured and known both times."""
        if self.heap_before_bytes is None or self.heap_after_bytes is None:
            return None
        return max(0, self.heap_before_bytes - self.heap_after_bytes)


@overload
def release_memory(
    release: None = None, *, collect: bool | int = True, trim: bool = True, heap: bool = False, probe: MemoryProbe | None = None
) -> Released[None]: ...


@overload
def release_memory(
    release: Callable[[], T], *, collect: bool | int = True, trim: bool = True, heap: bool = False, probe: MemoryProbe | None = None
) -> Released[T]: ...


def release_memory(
    release: Callable[[], T] | None = None,
    *,
    collect: bool | int = True,
    trim: bool = True,
    heap: bool = False,
    probe: MemoryProbe | None = None,
) -> Released[Any]:
    """Measure RSS, call ``release()``, collect garbage, trim the heap, measure RSS again.

    ``collect``: True for a full ``gc.collect()``, a generation number for ``gc.collect(n)``,
    False for none. ``trim``: hand free heap back to the OS (:func:`trim_heap`). ``heap``: also
    measure the allocator's heap before and after (can cost milliseconds on a fragmented heap).
    An exception from ``release()`` propagates; nothing is collected or measured after it.
    """
    if probe is None:
        probe = process_probe()
    started = time.perf_counter()
    rss_before = probe.rss_bytes()
    heap_before = probe.heap_bytes() if heap else None
    value = release() if release is not None else None
    if collect is False:
        collected = 0
    elif collect is True:
        collected = gc.collect()
    else:
        collected = gc.collect(collect)
    trimmed = trim_heap() if trim else False
    rss_after = probe.rss_bytes()
    heap_after = probe.heap_bytes() if heap_before is not None else None
    return Released(value, rss_before, rss_after, collected, trimmed, time.perf_counter() - started, heap_before, heap_after)


@dataclass
class CleanupResult:
    """What one cleanup did: RSS before and after, objects collected, hooks run and failed."""

    trigger: str
    rss_before_bytes: int
    rss_after_bytes: int
    collected_objects: int
    hooks_run: list[str] = field(default_factory=list)
    hooks_failed: list[str] = field(default_factory=list)
    trimmed: bool = False
    duration_s: float = 0.0
    #: Bytes each accelerator framework's cache held when the cleanup emptied it.
    device_caches_emptied: dict[str, int] = field(default_factory=dict)

    @property
    def freed_bytes(self) -> int:
        """RSS released (never negative)."""
        return max(0, self.rss_before_bytes - self.rss_after_bytes)


def check_trigger(trigger: object) -> str:
    """``trigger`` if it is one of :data:`TRIGGERS`; otherwise a ValueError naming it."""
    if trigger not in TRIGGERS:
        raise ConfigurationError(f"trigger={trigger!r}: expected one of {', '.join(TRIGGERS)}")
    return str(trigger)


def run_cleanup(trigger: str = names.TRIGGER_MANUAL, probe: MemoryProbe | None = None) -> CleanupResult:
    """Run every hook, empty the accelerator caches, ``gc.collect()``, and trim the heap; measure the RSS freed.

    A hook that raises is logged and skipped: cleanup always completes. ``trigger`` is one of
    :data:`TRIGGERS` and is only recorded in the result.
    """
    check_trigger(trigger)
    released = release_memory(_run_hooks_and_empty_device_caches, probe=probe)
    hooks, emptied = released.value
    return CleanupResult(
        trigger,
        released.rss_before_bytes,
        released.rss_after_bytes,
        released.collected_objects,
        hooks.run,
        hooks.failed,
        released.trimmed,
        released.duration_s,
        emptied,
    )
