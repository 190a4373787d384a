"""Memory cleanup: registered hooks, garbage collection, and handing freed heap back to the OS.

Other parts of the package (the resource manager, lazy models) and users plug in with
:func:`register_cleanup_hook`; the monitor runs :func:`run_cleanup` at the cleanup and critical
levels, on SIGUSR1 and on demand.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import psutil

from .probe import PROBE, MemoryProbe

logger = logging.getLogger("reer_otel_memory.cleanup")

_heap_trim: Callable[[], object] | None = getattr(psutil, "heap_trim", None)

_lock = threading.Lock()
_hooks: dict[str, Callable[[], object]] = {}


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


def run_cleanup(trigger: str = "manual", probe: MemoryProbe = PROBE) -> CleanupResult:
    """Run every hook, ``gc.collect()``, and trim the heap; measure the RSS freed.

    A hook that raises is logged and skipped: cleanup always completes.
    """
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
