"""The explanation window's state, shared by the profiled calls' hot path and the window itself.

A profiled call reads :data:`EXPLANATION_WINDOW` on every call (one attribute), so it lives apart
from ``explain``, which imports far more; ``explain`` sets it.
"""

from __future__ import annotations

import threading

from .._runtime import RUNTIME


class _Window:
    """Whether an explanation window (``profiling.explain``) is tracing allocations now, and the
    hand-over at its end: the window waits for a moment when none of the operations it watches
    has a call in flight, so that no call's working memory passes for memory kept. In a busy
    service such a moment lasts microseconds, so the call that makes it (the last watched one to
    end) tells the window and waits, at most :data:`_HOLD_S`, until the window has its capture."""

    def __init__(self) -> None:
        self.open = False
        self.settling = False
        self.watch: frozenset[str] | None = None  # None: every operation
        self.quiet = threading.Event()
        self.captured = threading.Event()

    def reset(self) -> None:
        """No window (a forked child: the window's thread is not there)."""
        self.__init__()  # type: ignore[misc]

    def call_ended(self, operation: str) -> None:
        """A profiled call of ``operation`` has ended while the window settles."""
        watch = self.watch
        if watch is not None and operation not in watch:
            return
        probe = RUNTIME.probe
        if probe is None:
            return
        in_flight = probe.in_flight_operations()
        if in_flight if watch is None else in_flight & watch:
            return
        self.quiet.set()
        self.captured.wait(_HOLD_S)


#: How long the call that ends last may be held while the window captures.
_HOLD_S = 1.0
#: Set by the explanation window while it traces; calls ending meanwhile are counted per operation.
EXPLANATION_WINDOW = _Window()
