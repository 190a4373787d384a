"""The emergency signal: ``kill -USR1 <pid>`` asks the memory monitor for a cleanup now.

A signal handler interrupts arbitrary code, so it must not collect garbage or take locks: the
handler only wakes the monitor thread, which runs and counts the cleanup; installing the handler
therefore starts the monitor if it is not running. Signals that arrive while a cleanup is pending
are coalesced into it, and a Python handler already installed keeps working (ours calls it).
Python runs handlers only in the main thread, between bytecodes, so both functions must be
called from it and a long C call there delays the cleanup. Under a pre-fork server pick a signal
the server leaves alone (:mod:`reer_otel_memory.monitoring.servers`); the README ("Monitoring,
cleanup and the emergency signal") is the manual.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from ..errors import ConfigurationError
from .monitor import MemoryMonitor, get_memory_monitor

_Handler = Callable[[int, FrameType | None], Any]


@dataclass
class _Installed:
    handler: _Handler
    previous: Any
    monitor: MemoryMonitor
    started_monitor: bool
    active: bool = True


# The handlers installed, by signal: a mirror of the process's signal dispositions, which only
# remove_emergency_memory_handler() undoes (a reset of the package's state cannot).
_installed: dict[int, _Installed] = {}


#: Signals no process can catch: a handler for them cannot be installed.
_UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})


def _check_signal(signum: object) -> signal.Signals:
    try:
        sig = signal.Signals(signum)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise ConfigurationError(f"signum={signum!r}: expected a signal number such as signal.SIGUSR1") from None
    if sig in _UNCATCHABLE:
        raise ConfigurationError(
            f"signum={sig.name} ({int(sig)}): this signal cannot be caught, so it cannot ask for a cleanup; "
            "expected a catchable signal such as signal.SIGUSR1 or signal.SIGUSR2"
        )
    return sig


def _require_main_thread(function: str, signum: signal.Signals) -> None:
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            f"{function}(signum={signum.name}) was called from thread {threading.current_thread().name!r}: "
            "signal handlers can only be installed or removed from the main thread"
        )


def setup_emergency_memory_handler(signum: int = signal.SIGUSR1, monitor: MemoryMonitor | None = None) -> None:
    """Make ``signum`` wake ``monitor`` (default: the process's monitor) for an emergency cleanup.

    Starts the monitor if it is not running. Installing it again for the same signal only
    changes the monitor it wakes.
    """
    sig = _check_signal(signum)
    _require_main_thread("setup_emergency_memory_handler", sig)
    if monitor is None:
        monitor = get_memory_monitor()
    current = _installed.get(int(sig))
    if current is not None and current.active and signal.getsignal(sig) is current.handler:
        current.monitor = monitor
        if not monitor.is_running:
            monitor.start_monitoring()
            current.started_monitor = True
        return
    previous = signal.getsignal(sig)
    record: _Installed

    def handler(received: int, frame: FrameType | None) -> None:
        if record.active:
            record.monitor._trigger_emergency_cleanup(from_signal=True)
        chained = record.previous
        # SIG_DFL would end the process on SIGUSR1, SIG_IGN and None do nothing: only Python
        # handlers are chained.
        if callable(chained):
            chained(received, frame)

    record = _Installed(handler, previous, monitor, started_monitor=False)
    try:
        signal.signal(sig, handler)
    except (OSError, ValueError) as exc:  # a signal this platform will not let Python handle
        raise ConfigurationError(f"signum={sig.name} ({int(sig)}): cannot install a handler: {exc}") from None
    _installed[int(sig)] = record
    if not monitor.is_running:
        monitor.start_monitoring()
        record.started_monitor = True


def remove_emergency_memory_handler(signum: int = signal.SIGUSR1) -> bool:
    """Put back the handler ``signum`` had before; False if ours was not installed.

    If another handler was installed on top of ours since, it stays; ours then only passes the
    signal on to the handler it had chained.
    """
    sig = _check_signal(signum)
    _require_main_thread("remove_emergency_memory_handler", sig)
    record = _installed.pop(int(sig), None)
    if record is None:
        return False
    record.active = False
    if signal.getsignal(sig) is record.handler:
        signal.signal(sig, record.previous if record.previous is not None else signal.SIG_DFL)
    if record.started_monitor:
        record.monitor.stop_monitoring()
    return True
