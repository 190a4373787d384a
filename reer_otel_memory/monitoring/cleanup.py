"""Memory cleanup: registered hooks, garbage collection, and handing freed heap back to the OS.

Other parts of the package (the resource manager, lazy models) and users plug in with
:func:`register_cleanup_hook`; the monitor runs :func:`run_cleanup` at the cleanup and critical
levels, on the emergency signal and on demand (:meth:`MemoryMonitor.cleanup`), counts each run
in ``reer.memory.cleanups{trigger}`` and the RSS it released in ``reer.memory.cleanup.freed``.

    from reer_otel_memory import register_cleanup_hook, run_cleanup

    register_cleanup_hook("feature-cache", feature_cache.clear)
    result = run_cleanup()
    print(result.freed_bytes, result.collected_objects)

One cleanup: every hook (a hook that raises is logged and skipped), then ``gc.collect()``, then
``malloc_trim(0)`` on glibc (:func:`trim_heap`) so memory freed by Python goes back to the OS
and RSS really falls. Its cost is that of a full garbage collection: milliseconds in a small
process, up to seconds with millions of container objects, which is why the monitor keeps a
cooldown between automatic cleanups and runs them on its own thread, never in a signal handler.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from .. import _names as names
from .._process import after_fork_in_child
from ..profiling.probe import MemoryProbe, process_probe

logger = logging.getLogger(__name__)

#: The values of the ``trigger`` label: what started a cleanup.
TRIGGERS = names.CLEANUP_TRIGGERS

_heap_trim: Callable[[], object] | None = getattr(psutil, "heap_trim", None)

_lock = threading.Lock()
_hooks: dict[str, Callable[[], object]] = {}


def _reinit_lock_in_child() -> None:
    # A fork taken while another thread held the lock would leave it held forever in the child.
    global _lock
    _lock = threading.Lock()


after_fork_in_child(_reinit_lock_in_child)


def register_cleanup_hook(name: str, hook: Callable[[], object]) -> None:
    """Run ``hook()`` on every cleanup, before garbage collection. Replaces a hook of that name."""
    if not callable(hook):
        raise TypeError(f"register_cleanup_hook({name!r}, hook={hook!r}): expected a callable")
    with _lock:
        _hooks[name] = hook


def unregister_cleanup_hook(name: str) -> bool:
    """Remove the hook called ``name``; False if there was none."""
    with _lock:
        return _hooks.pop(name, None) is not None


def cleanup_hook_names() -> list[str]:
    """Names of the registered hooks, in the order they run."""
    with _lock:
        return list(_hooks)


def trim_heap() -> bool:
    """Return free allocator memory to the OS (``malloc_trim(0)`` on glibc); False where unsupported."""
    if _heap_trim is None:
        return False
    try:
        _heap_trim()
    except (OSError, RuntimeError, NotImplementedError):
        return False
    return True


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

    @property
    def freed_bytes(self) -> int:
        """RSS released (never negative)."""
        return max(0, self.rss_before_bytes - self.rss_after_bytes)


def check_trigger(trigger: object) -> str:
    """``trigger`` if it is one of :data:`TRIGGERS`; otherwise a ValueError naming it."""
    if trigger not in TRIGGERS:
        raise ValueError(f"trigger={trigger!r}: expected one of {', '.join(TRIGGERS)}")
    return str(trigger)


def run_cleanup(trigger: str = names.TRIGGER_MANUAL, probe: MemoryProbe | None = None) -> CleanupResult:
    """Run every hook, ``gc.collect()``, and trim the heap; measure the RSS freed.

    A hook that raises is logged and skipped: cleanup always completes. ``trigger`` is one of
    :data:`TRIGGERS` and is only recorded in the result.
    """
    check_trigger(trigger)
    if probe is None:
        probe = process_probe()
    started = time.perf_counter()
    before = probe.rss_bytes()
    with _lock:
        hooks = list(_hooks.items())
    run, failed = [], []
    for name, hook in hooks:
        try:
            hook()
            run.append(name)
        except Exception:
            logger.exception("cleanup hook %r failed", name)
            failed.append(name)
    collected = gc.collect()
    trimmed = trim_heap()
    after = probe.rss_bytes()
    return CleanupResult(trigger, before, after, collected, run, failed, trimmed, time.perf_counter() - started)
