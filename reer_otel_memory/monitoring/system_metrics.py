"""OpenTelemetry's system-metrics instrumentation in forked workers: each reports its own process.

``opentelemetry-instrumentation-system-metrics`` (installed by ``opentelemetry-bootstrap``) reads
every ``process.*`` figure (``process.memory.usage``, CPU, threads, ...) from one
``psutil.Process`` it makes for the pid that instrumented it. A worker forked from gunicorn's
arbiter inherits that object, which still names the arbiter, so each worker would report the
arbiter's memory as its own. While the instrumentor is instrumented, a forked child points that
instrumentation at itself (its ``_proc``) if it is instrumented there; if its object is not
shaped as expected, one debug line says so and nothing else changes. Spawned workers (uvicorn
``--workers``) instrument afresh and need none of this.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import psutil

from .._runtime import RUNTIME

logger = logging.getLogger(__name__)

_MODULE = "opentelemetry.instrumentation.system_metrics"


def _instrumented() -> Any | None:
    """The system-metrics instrumentor of this process if it is imported and instrumented, else None."""
    module = sys.modules.get(_MODULE)
    if module is None:
        return None  # never imported: nothing to follow, and nothing is imported for it
    instrumentor_class = getattr(module, "SystemMetricsInstrumentor", None)
    # The instance BaseInstrumentor keeps: calling the class would run its __init__ again.
    instance = getattr(instrumentor_class, "_instance", None)
    if instance is None or not getattr(instance, "is_instrumented_by_opentelemetry", False):
        return None
    return instance


class _FollowForks:
    """Registered with the runtime's fork hook: repoints the instrumentation in each forked child."""

    active = False

    def _after_fork_in_child(self) -> None:
        if not self.active:
            return
        instance = _instrumented()
        if instance is None:
            return
        try:
            current = instance._proc
        except AttributeError:
            logger.debug("%s: SystemMetricsInstrumentor has no _proc; its process.* figures may name the parent process", _MODULE)
            return
        pid = os.getpid()
        if getattr(current, "pid", pid) == pid:
            return
        try:
            instance._proc = psutil.Process(pid)
        except Exception as exc:  # psutil failing in a fresh child: leave their object as it was
            logger.debug("%s: could not point its process.* figures at pid %d: %r", _MODULE, pid, exc)


_FOLLOWER = _FollowForks()


def follow_forks() -> None:
    """From now on, every forked child reports its own ``process.*`` figures (once registered, per process)."""
    _FOLLOWER.active = True
    RUNTIME.after_fork_call(_FOLLOWER)


def stop_following_forks() -> None:
    """Forked children leave the system-metrics instrumentation as they inherit it."""
    _FOLLOWER.active = False
