"""``reer-otel-memory demo``: an ML-style workload that climbs through the memory levels.

It sets its thresholds just above its own starting RSS (so the levels are crossed within seconds
on any machine), builds a profiled "model", and processes batches whose activations end up in
reference cycles with automatic garbage collection off, as in training loops that avoid
collector pauses, while it keeps predictions until the end of each epoch. The monitor's cleanups
collect the cycles; at critical a hook ends the epoch and releases the predictions, so memory
stays bounded and the cycle starts over. It serves ``/metrics`` and shows a live status line;
Ctrl-C or SIGTERM ends it cleanly. ``make demo`` runs it (README, first lines).
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from . import _names as names
from .config import MB, setup_memory_limits
from .levels import MemoryLevel
from .profiling.probe import process_probe

if TYPE_CHECKING:
    from .export.endpoint import PrometheusEndpoint
    from .monitoring.monitor import MemoryMonitor

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9464
DEFAULT_INTERVAL_S = 1.0

#: Thresholds above the demo's starting RSS, MB.
ALERT_ABOVE_START_MB = 48
CLEANUP_ABOVE_START_MB = 80
CRITICAL_ABOVE_START_MB = 112
#: If RSS ever gets this far above critical, the workload collects by itself.
SAFETY_MARGIN_MB = 48

MODEL_LAYERS = 8
LAYER_MB = 4
BATCH_PERIOD_S = 0.1
#: Activations per batch left in reference cycles, each ACTIVATION_MB.
ACTIVATIONS_PER_BATCH = 2
ACTIVATION_MB = 1
#: Predictions kept per batch until the epoch ends, bytes.
PREDICTION_BYTES = MB // 2

#: Least time between two automatic cleanups at one level (the library default is a minute).
CLEANUP_COOLDOWN_S = 2.0
STATUS_PERIOD_S = 0.25
_HOOK_NAME = "demo.epoch_predictions"


class _Activation:
    """One layer's output; ``peer`` links it into a cycle with the next one."""

    __slots__ = ("__weakref__", "peer", "values")

    def __init__(self, values: bytes) -> None:
        self.values = values
        self.peer: _Activation | None = None


class Trainer:
    """The workload: a model, batches, garbage cycles and per-epoch predictions."""

    def __init__(self) -> None:
        from .profiling.operations import memory_profile

        self.model: list[bytes] = []
        self.epoch = 1
        self.batches = 0
        self.epochs_ended = 0
        self._predictions: list[bytes] = []
        self._predictions_lock = threading.Lock()
        self.load_model = memory_profile(operation_name="demo.load_model")(self._load_model)
        self.evaluate_epoch = memory_profile(operation_name="demo.evaluate_epoch")(self._evaluate_epoch)

    def _load_model(self) -> None:
        # bytes filled by repetition touch every page, so the model is resident, as real weights are.
        self.model = [bytes([layer + 1]) * (LAYER_MB * MB) for layer in range(MODEL_LAYERS)]

    def process_batch(self) -> None:
        from .profiling.operations import memory_context

        with memory_context("demo.process_batch"):
            layer = self.model[self.batches % len(self.model)]
            first = previous = None
            for index in range(ACTIVATIONS_PER_BATCH):
                # Slicing copies: a forward pass producing a fresh activation tensor.
                start = (index * ACTIVATION_MB * MB) % (len(layer) - ACTIVATION_MB * MB + 1)
                activation = _Activation(layer[start : start + ACTIVATION_MB * MB])
                if previous is None:
                    first = activation
                else:
                    previous.peer = activation
                previous = activation
            if previous is not None:
                previous.peer = first  # the cycle: unreachable after this batch, freed only by gc
            prediction = (layer[:16] * (PREDICTION_BYTES // 16))[:PREDICTION_BYTES]
            with self._predictions_lock:
                self._predictions.append(prediction)
        self.batches += 1

    def _evaluate_epoch(self) -> int:
        with self._predictions_lock:
            predictions, self._predictions = self._predictions, []
        checksum = sum(p[0] for p in predictions)
        del predictions
        self.epoch += 1
        self.epochs_ended += 1
        return checksum


def _alert_total(monitor: Any) -> int:
    counts = monitor.alert_counts
    return int(sum(counts.values())) if hasattr(counts, "values") else int(counts)


def _status_line(monitor: Any, trainer: Trainer, elapsed_s: float) -> str:
    level = monitor.level
    return (
        f"[{elapsed_s:6.1f} s] RSS {process_probe().rss_bytes() / MB:7.1f} MB  level {level!s:<8}  "
        f"alerts {_alert_total(monitor):3d}  cleanups {monitor.cleanup_count:3d}  "
        f"freed {monitor.freed_bytes_total / MB:8.1f} MB  epoch {trainer.epoch:3d}  batch {trainer.batches:5d}"
    )


class _Stop:
    """SIGINT and SIGTERM end the demo cleanly instead of raising inside the workload.

    The handler only sets a flag (taking a lock in a handler can deadlock with the code it
    interrupted); the workload checks it at least every tenth of a second.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name
        self.requested = True

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class _Console:
    """The demo's output: event lines (the package's log records) above one live status line.

    On a terminal the status line is redrawn in place; otherwise (a pipe, a log file) it is
    printed as a plain line every second.
    """

    def __init__(self, out: TextIO, status: bool) -> None:
        self.out = out
        self.status_enabled = status
        self.interactive = status and out.isatty()
        self.status_period_s = STATUS_PERIOD_S if self.interactive else 1.0
        self._lock = threading.Lock()
        self._status_shown = ""
        self.started = time.monotonic()

    def line(self, text: str) -> None:
        with self._lock:
            if self._status_shown:
                self.out.write("\r\033[K")
            self.out.write(text + "\n")
            if self._status_shown:
                self.out.write(self._status_shown)
            self.out.flush()

    def event(self, text: str) -> None:
        self.line(f"[{time.monotonic() - self.started:6.1f} s] {text}")

    def status(self, text: str) -> None:
        if not self.status_enabled:
            return
        if not self.interactive:
            self.line(text)
            return
        with self._lock:
            self._status_shown = text
            self.out.write("\r\033[K" + text)
            self.out.flush()

    def close(self) -> None:
        with self._lock:
            if self._status_shown:
                self.out.write("\n")
                self.out.flush()
                self._status_shown = ""


class _ConsoleHandler(logging.Handler):
    """Shows the package's log records (level crossings, cleanups, leak suspicions) as events."""

    def __init__(self, console: _Console) -> None:
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.event(record.getMessage())
        except Exception:
            self.handleError(record)


def _start_endpoint(port: int | None, host: str | None) -> PrometheusEndpoint | None:
    """Serve ``/metrics``; None (the reason printed to stderr) when it cannot be served."""
    from .export.endpoint import start_prometheus_exporter

    try:
        return start_prometheus_exporter(port=port, host=host)
    except OSError as exc:
        print(
            f"reer-otel-memory demo: {exc.strerror or exc}\n"
            f"  another port: --port N (0 for any free port), {names.ENV_PROMETHEUS_PORT}=N, "
            "or through make: make demo DEMO_ARGS='--port N'",
            file=sys.stderr,
        )
    except Exception as exc:
        print(f"reer-otel-memory demo: {exc}", file=sys.stderr)
    return None


def _show_package_logs(console: _Console) -> Callable[[], None]:
    """Send the package's log records to the console only; returns what undoes it."""
    package_logger = logging.getLogger("reer_otel_memory")
    handler = _ConsoleHandler(console)
    previous_level, previous_propagate = package_logger.level, package_logger.propagate
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    package_logger.propagate = False

    def restore() -> None:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)
        package_logger.propagate = previous_propagate

    return restore


def _print_banner(console: _Console, url: str, start_mb: float, interval_s: float, duration_s: float | None) -> None:
    console.line(f"reer-otel-memory demo: /metrics at {url}")
    console.line(
        f"  starting RSS {start_mb:.1f} MB; thresholds alert {start_mb + ALERT_ABOVE_START_MB:.1f} MB, "
        f"cleanup {start_mb + CLEANUP_ABOVE_START_MB:.1f} MB, critical {start_mb + CRITICAL_ABOVE_START_MB:.1f} MB "
        f"(start + {ALERT_ABOVE_START_MB}/{CLEANUP_ABOVE_START_MB}/{CRITICAL_ABOVE_START_MB} MB); "
        f"sampling every {interval_s:g} s, faster above alert"
    )
    console.line(
        f"  workload: a {MODEL_LAYERS * LAYER_MB} MB model; every {BATCH_PERIOD_S:g} s a batch leaves "
        f"{ACTIVATIONS_PER_BATCH * ACTIVATION_MB} MB in garbage cycles and keeps {PREDICTION_BYTES / MB:g} MB "
        "of predictions until the epoch ends at critical"
    )
    console.line("  " + ("Ctrl-C to stop" if duration_s is None else f"running for {duration_s:g} s (Ctrl-C to stop early)"))


def _run_batches(
    stop: _Stop,
    trainer: Trainer,
    monitor: MemoryMonitor,
    console: _Console,
    started: float,
    deadline: float | None,
    safety_bytes: int,
) -> int:
    """Process batches and redraw the status line until stopped; returns the safety collections."""
    from .monitoring.cleanup import trim_heap

    next_batch = next_status = started
    safety_collections = 0
    while not stop.requested:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        if now >= next_batch:
            trainer.process_batch()
            if process_probe().rss_bytes() > safety_bytes:
                # Only if the monitor fell far behind: keep the demo's memory bounded anyway.
                safety_collections += 1
                trainer.evaluate_epoch()
                gc.collect()
                trim_heap()
            next_batch = max(next_batch + BATCH_PERIOD_S, now)
        if now >= next_status:
            console.status(_status_line(monitor, trainer, now - started))
            next_status = now + console.status_period_s
        wake = min(next_batch, next_status)
        if deadline is not None:
            wake = min(wake, deadline)
        # A signal interrupts the sleep; the flag is checked at the top of the loop.
        time.sleep(min(BATCH_PERIOD_S, max(0.0, wake - time.monotonic())))
    return safety_collections


def run_demo(
    host: str | None = None,
    port: int | None = None,
    duration_s: float | None = None,
    interval_s: float = DEFAULT_INTERVAL_S,
    status: bool = True,
    out: TextIO | None = None,
) -> int:
    """Run the demo until Ctrl-C, SIGTERM or ``duration_s``; returns the exit status.

    ``host`` / ``port`` default to ``OTEL_EXPORTER_PROMETHEUS_HOST`` / ``_PORT``, else 127.0.0.1:9464.
    """
    from .monitoring.cleanup import register_cleanup_hook, unregister_cleanup_hook
    from .monitoring.monitor import MemoryMonitor

    console = _Console(sys.stdout if out is None else out, status)
    stop = _Stop()
    stop.install()
    endpoint = _start_endpoint(port, host)
    if endpoint is None:
        stop.restore()
        return 1

    start_bytes = process_probe().rss_bytes()
    start_mb = start_bytes / MB
    setup_memory_limits(
        alert_mb=start_mb + ALERT_ABOVE_START_MB,
        cleanup_mb=start_mb + CLEANUP_ABOVE_START_MB,
        critical_mb=start_mb + CRITICAL_ABOVE_START_MB,
        monitoring_interval=interval_s,
    )
    safety_bytes = start_bytes + (CRITICAL_ABOVE_START_MB + SAFETY_MARGIN_MB) * MB
    trainer = Trainer()
    # Its own monitor (the gauges describe the latest one started) with a short cooldown, so
    # the cycle repeats within seconds; thresholds follow the process configuration set above.
    monitor = MemoryMonitor(monitoring_interval=interval_s, cleanup_cooldown_s=CLEANUP_COOLDOWN_S)

    def end_epoch_at_critical() -> None:
        # Cleanup hooks run on the monitor thread after it has settled the level of the sample.
        if monitor.level is MemoryLevel.CRITICAL:
            checksum = trainer.evaluate_epoch()
            console.event(f"epoch {trainer.epoch - 1} ended at critical: predictions evaluated (checksum {checksum}) and released")

    register_cleanup_hook(_HOOK_NAME, end_epoch_at_critical)
    restore_logging = _show_package_logs(console)
    _print_banner(console, endpoint.url, start_mb, interval_s, duration_s)

    gc_was_enabled = gc.isenabled()
    gc.disable()  # the cycles are for the monitor's cleanup to collect
    started = console.started = time.monotonic()
    deadline = None if duration_s is None else started + duration_s
    safety_collections = 0
    ended_at = started
    try:
        monitor.start_monitoring()
        trainer.load_model()
        safety_collections = _run_batches(stop, trainer, monitor, console, started, deadline, safety_bytes)
    finally:
        ended_at = time.monotonic()
        monitor.stop_monitoring()
        unregister_cleanup_hook(_HOOK_NAME)
        if gc_was_enabled:
            gc.enable()
        endpoint.shutdown()
        stop.restore()
        console.close()
        restore_logging()
    elapsed = ended_at - started
    ended_by = stop.signal_name or ("--duration" if deadline is not None else "end")
    console.line(
        f"reer-otel-memory demo: stopped by {ended_by} after {elapsed:.1f} s: {trainer.batches} batches, "
        f"{trainer.epochs_ended} epoch(s) ended at critical, {_alert_total(monitor)} alerts, "
        f"{monitor.cleanup_count} cleanups freeing {monitor.freed_bytes_total / MB:.1f} MB"
        + (f", {safety_collections} safety collections" if safety_collections else "")
    )
    return 0
