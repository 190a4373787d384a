"""MemoryMonitor: watches the process RSS, reports its level, alerts once per crossing, cleans up.

A daemon thread samples the RSS every ``monitoring_interval`` seconds, faster above the alert
level so growth toward critical is seen in time. Levels have hysteresis so a process hovering at
a threshold does not flap; every upward crossing is counted and logged once; at the cleanup and
critical levels the monitor runs :func:`~reer_otel_memory.monitoring.cleanup.run_cleanup`,
at most once per cooldown at a level. Nothing but :meth:`MemoryMonitor.stop_monitoring` ends the
thread, so ``is_running`` is true exactly while it samples. There is one default monitor per
process (:func:`get_memory_monitor`); it keeps running in a forked child, with fresh counters.
The README ("Monitoring, cleanup and the emergency signal") is the manual.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Mapping

from .. import _names as names
from .. import config as config_module
from .._cgroup import CgroupMemory, MemoryCgroup
from .._runtime import RUNTIME
from ..config import MB, MemoryConfig
from ..errors import InvalidArgumentError
from ..levels import THRESHOLD_LEVELS, MemoryLevel
from ..profiling.devices import DeviceMemory, DeviceReading, device_memory
from ..profiling.flight_recorder import FlightRecorder, process_flight_recorder
from ..profiling.probe import MemoryProbe, process_probe
from ..profiling.tracker import MemorySnapshot, MemoryTracker, get_memory_tracker
from . import metrics as _monitor_metrics
from .cleanup import CleanupResult, check_trigger, run_cleanup

logger = logging.getLogger(__name__)

#: A level is left once RSS falls this share of its threshold below it.
DEFAULT_HYSTERESIS_SHARE = 0.05
#: Least time between two automatic cleanups at the same level.
DEFAULT_CLEANUP_COOLDOWN_S = 60.0
#: Above the alert level the monitor samples this share of the interval apart ...
FAST_INTERVAL_SHARE = 0.1
#: ... but never closer than this.
MIN_FAST_INTERVAL_S = 0.5
#: How long :meth:`MemoryMonitor.stop_monitoring` waits for a sample or cleanup in progress.
STOP_TIMEOUT_S = 5.0
#: A sample reads the allocator heap while one reading costs at most this (it slows down as the
#: heap fragments); otherwise only every :data:`HEAP_RECHECK_SAMPLES` th sample, to re-measure.
HEAP_AFFORDABLE_S = 50e-6
HEAP_RECHECK_SAMPLES = 20

Callback = Callable[[MemorySnapshot], object]
#: ``cgroup=`` default: the process's own memory cgroup, found once.
_PROCESS_CGROUP = object()

_LEVEL_BELOW = {
    MemoryLevel.ALERT: MemoryLevel.OK,
    MemoryLevel.CLEANUP: MemoryLevel.ALERT,
    MemoryLevel.CRITICAL: MemoryLevel.CLEANUP,
}
#: The monitor's arguments, by what they set (see :func:`reer_otel_memory.config.with_overrides`).
_MONITOR_ARGUMENTS = {
    "alert": "alert_threshold_mb",
    "cleanup": "cleanup_threshold_mb",
    "critical": "critical_threshold_mb",
    "interval": "monitoring_interval",
}


class _Run:
    """One start of the monitor thread: its wake-up event and stop request."""

    __slots__ = ("stopping", "thread", "wake", "waking")

    def __init__(self) -> None:
        self.wake = threading.Event()
        self.stopping = False
        self.waking = False
        self.thread: threading.Thread | None = None


class MemoryMonitor:
    """Samples the process RSS on a daemon thread; levels, alerts, callbacks and cleanups.

    ``probe`` reads the memory (a :class:`~reer_otel_memory.profiling.probe.MemoryProbe` pointed at another
    ``/proc`` entry reads that one); ``tracker`` records the samples (default: the process's).
    """

    def __init__(
        self,
        alert_threshold_mb: float | str | None = None,
        critical_threshold_mb: float | str | None = None,
        cleanup_threshold_mb: float | str | None = None,
        monitoring_interval: float | None = None,
        *,
        config: MemoryConfig | None = None,
        probe: MemoryProbe | None = None,
        tracker: MemoryTracker | None = None,
        hysteresis_share: float = DEFAULT_HYSTERESIS_SHARE,
        cleanup_cooldown_s: float = DEFAULT_CLEANUP_COOLDOWN_S,
        cgroup: MemoryCgroup | object | None = _PROCESS_CGROUP,
        devices: DeviceMemory | None = None,
    ) -> None:
        share = config_module.checked_number(
            hysteresis_share, 0.0, 1.0, high_inclusive=False,
            name="hysteresis_share", expected="expected a share of the threshold from 0 up to (not including) 1",
        )
        cooldown_s = config_module.checked_number(
            cleanup_cooldown_s, 0.0, math.inf, high_inclusive=False, name="cleanup_cooldown_s", expected="expected a finite number of seconds >= 0"
        )
        self._probe = probe if probe is not None else process_probe()
        self._tracker = tracker
        if cgroup is not _PROCESS_CGROUP and cgroup is not None and not isinstance(cgroup, MemoryCgroup):
            raise InvalidArgumentError(f"cgroup={cgroup!r}: expected a MemoryCgroup, None (no cgroup) or nothing (the process's own)")
        self._cgroup_given = cgroup
        self._devices = devices
        self._working_set_missing_logged = False
        self.hysteresis_share = share
        self.cleanup_cooldown_s = cooldown_s
        self._overrides: dict[str, object] = {}
        self._set_overrides(alert_threshold_mb, critical_threshold_mb, cleanup_threshold_mb, monitoring_interval)
        self._follows_process_config = config is None
        self._base_config = config if config is not None else config_module.get_config()
        self._config = self._effective(self._base_config, self._overrides)

        #: The level of the latest sample.
        self.level = MemoryLevel.OK
        #: The level of each accelerator device, by (framework, device), as of the latest sample.
        self.device_levels: dict[tuple[str, str], MemoryLevel] = {}
        self._callbacks: list[Callback] = []
        self._callback_failures: dict[int, int] = {}
        self._init_process_state()
        if self._follows_process_config:
            config_module.add_config_listener(_follow(self))
        RUNTIME.after_fork_call(self)
        install_instruments()

    def _init_process_state(self) -> None:
        """Counters, locks and thread state: fresh in a new monitor and in a forked child."""
        #: Upward crossings into each level since this monitor (or this forked child) began.
        self.alert_counts: dict[MemoryLevel, int] = {level: 0 for level in THRESHOLD_LEVELS}
        #: Upward crossings into each level of each device, by (framework, device, level); also in alert_counts.
        self.device_alert_counts: dict[tuple[str, str, MemoryLevel], int] = {}
        self.device_levels = {}
        #: Cleanups run, in all and by trigger.
        self.cleanup_count = 0
        self.cleanup_counts: dict[str, int] = {trigger: 0 for trigger in names.CLEANUP_TRIGGERS}
        #: RSS released by all cleanups, bytes.
        self.freed_bytes_total = 0
        self.sample_count = 0
        self.last_snapshot: MemorySnapshot | None = None
        self.last_cleanup: CleanupResult | None = None
        self._last_auto_cleanup_at: float | None = None
        self._last_auto_cleanup_level = MemoryLevel.OK
        self._emergency_pending = False
        self._loop_failures = 0
        self._sample_lock = threading.Lock()
        self._cleanup_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._run: _Run | None = None

    # --- configuration ---------------------------------------------------------------------------

    def _set_overrides(self, alert: object, critical: object, cleanup: object, interval: object) -> None:
        for key, value in (("alert", alert), ("critical", critical), ("cleanup", cleanup), ("interval", interval)):
            if value is not None:
                self._overrides[key] = value

    @staticmethod
    def _effective(base: MemoryConfig, overrides: Mapping[str, object]) -> MemoryConfig:
        return config_module.with_overrides(base, overrides, _MONITOR_ARGUMENTS)

    def configure(
        self,
        alert_threshold_mb: float | str | None = None,
        critical_threshold_mb: float | str | None = None,
        cleanup_threshold_mb: float | str | None = None,
        monitoring_interval: float | None = None,
    ) -> MemoryConfig:
        """Change thresholds (MB or ``"NN%"``) or the interval; omitted ones stay. Applies at once.

        Raises :class:`ConfigurationError` naming the argument; the monitor then keeps its settings.
        """
        overrides = dict(self._overrides)
        for key, value in (
            ("alert", alert_threshold_mb),
            ("critical", critical_threshold_mb),
            ("cleanup", cleanup_threshold_mb),
            ("interval", monitoring_interval),
        ):
            if value is not None:
                overrides[key] = value
        config = self._effective(self._base_config, overrides)
        self._overrides = overrides
        self._config = config
        self._wake_thread()
        return config

    def _on_process_config(self, base: MemoryConfig) -> None:
        try:
            config = self._effective(base, self._overrides)
        except Exception as exc:
            logger.error("memory monitor keeps its thresholds: the new configuration conflicts with its own: %s", exc)
            return
        self._base_config = base
        self._config = config
        self._wake_thread()

    @property
    def config(self) -> MemoryConfig:
        """The thresholds, interval and limit in force, with where each came from."""
        return self._config

    @property
    def probe(self) -> MemoryProbe:
        return self._probe

    @property
    def tracker(self) -> MemoryTracker:
        return self._tracker if self._tracker is not None else get_memory_tracker()

    @property
    def alert_threshold_mb(self) -> float:
        return self._config.alert_bytes / MB

    @alert_threshold_mb.setter
    def alert_threshold_mb(self, value: float | str) -> None:
        self.configure(alert_threshold_mb=value)

    @property
    def cleanup_threshold_mb(self) -> float:
        return self._config.cleanup_bytes / MB

    @cleanup_threshold_mb.setter
    def cleanup_threshold_mb(self, value: float | str) -> None:
        self.configure(cleanup_threshold_mb=value)

    @property
    def critical_threshold_mb(self) -> float:
        return self._config.critical_bytes / MB

    @critical_threshold_mb.setter
    def critical_threshold_mb(self, value: float | str) -> None:
        self.configure(critical_threshold_mb=value)

    @property
    def monitoring_interval(self) -> float:
        """Seconds between samples at the ok level."""
        return self._config.monitoring_interval_s

    @monitoring_interval.setter
    def monitoring_interval(self, value: float) -> None:
        self.configure(monitoring_interval=value)

    def threshold_bytes(self, level: MemoryLevel) -> int:
        """The RSS at which ``level`` begins."""
        return self._config.threshold_bytes(level)

    # --- levels ----------------------------------------------------------------------------------

    def _settle(self, current: MemoryLevel, rss_bytes: int) -> MemoryLevel:
        """The level after ``current`` for this RSS: up at a threshold, down only below its margin."""
        config = self._config
        reached = config.level_for(rss_bytes)
        if reached >= current:
            return reached
        level = current
        while level > reached and rss_bytes < config.threshold_bytes(level) * (1.0 - self.hysteresis_share):
            level = _LEVEL_BELOW[level]
        return level

    def _settle_device(self, current: MemoryLevel, used_bytes: int, limit_bytes: int | None) -> MemoryLevel:
        """As :meth:`_settle`, for one device against the device thresholds."""
        config = self._config
        reached = config.device_level_for(used_bytes, limit_bytes)
        if reached >= current:
            return reached
        level = current
        while level > reached:
            threshold_bytes = config.device_threshold_bytes(level, limit_bytes)
            if threshold_bytes is not None and used_bytes >= threshold_bytes * (1.0 - self.hysteresis_share):
                break
            level = _LEVEL_BELOW[level]
        return level

    @property
    def cgroup(self) -> MemoryCgroup | None:
        """The memory cgroup whose working set ``threshold_source=working_set`` compares (None: none)."""
        given = self._cgroup_given
        if given is _PROCESS_CGROUP:
            return _monitor_metrics.process_cgroup()
        return given if isinstance(given, MemoryCgroup) else None

    def _compared(self, rss_bytes: int, reading: CgroupMemory | None) -> tuple[int, str]:
        """What the host levels compare, and its name: the RSS, or the cgroup's working set."""
        if self._config.threshold_source != names.SOURCE_WORKING_SET:
            return rss_bytes, names.SOURCE_RSS
        if reading is not None and reading.working_set_bytes is not None:
            return reading.working_set_bytes, names.SOURCE_WORKING_SET
        if not self._working_set_missing_logged:
            self._working_set_missing_logged = True
            logger.warning(
                "%s=%s: the process has no memory cgroup with a working set here, so the levels compare RSS",
                names.ENV_THRESHOLD_SOURCE, names.SOURCE_WORKING_SET,
            )
        return rss_bytes, names.SOURCE_RSS

    def _read_cgroup(self) -> CgroupMemory | None:
        cgroup = self.cgroup
        return None if cgroup is None else cgroup.read()

    def current_level(self) -> MemoryLevel:
        """The level now: the latest sample's while the thread runs, else settled from memory read now."""
        if self.is_running:
            return self.level
        rss = self._probe.rss_bytes()
        reading = self._read_cgroup() if self._config.threshold_source == names.SOURCE_WORKING_SET else None
        return self._settle(self.level, self._compared(rss, reading)[0])

    def next_wait_s(self) -> float:
        """Seconds until the next sample: the interval, or the faster pace above the alert level."""
        # Clamped: a MemoryConfig built directly is not range-checked, and Event.wait overflows
        # on huge timeouts while tiny ones spin.
        interval = self._config.monitoring_interval_s
        if not interval >= config_module.MIN_INTERVAL_S:  # NaN too
            interval = config_module.MIN_INTERVAL_S
        elif interval > config_module.MAX_INTERVAL_S:
            interval = config_module.MAX_INTERVAL_S
        if self.level is MemoryLevel.OK:
            return interval
        return min(interval, max(MIN_FAST_INTERVAL_S, interval * FAST_INTERVAL_SHARE))

    # --- sampling --------------------------------------------------------------------------------

    def _read_heap(self) -> int | None:
        probe = self._probe
        if probe.heap_cost_s <= HEAP_AFFORDABLE_S or self.sample_count % HEAP_RECHECK_SAMPLES == 0:
            return probe.heap_bytes()
        return None

    def sample_once(self) -> MemorySnapshot:
        """Take one sample now: level, alerts, a cleanup when due, callbacks. What each tick does."""
        config = self._config
        recorder = process_flight_recorder()
        with self._sample_lock:
            rss = self._probe.rss_bytes()
            heap = self._read_heap()
            # The cgroup and the devices are read only where something uses them.
            reading = self._read_cgroup() if recorder is not None or config.threshold_source == names.SOURCE_WORKING_SET else None
            devices = self._device_readings() if recorder is not None or config.device_thresholds else []
            compared, source = self._compared(rss, reading)
            previous = self.level
            level = self._settle(previous, compared)
            self.level = level
            self.sample_count += 1
            risen = [threshold_level for threshold_level in THRESHOLD_LEVELS if previous < threshold_level <= level]
            for threshold_level in risen:
                self.alert_counts[threshold_level] += 1
                _monitor_metrics.count_alert(threshold_level)
            device_changes = self._settle_devices(devices) if config.device_thresholds else []
            snapshot = MemorySnapshot(time.time(), rss, heap, None, level, previous, level is not previous)
            self.last_snapshot = snapshot
        if recorder is not None:
            self._record_flight(recorder, snapshot, reading, devices, compared, source, device_changes)
        self.tracker.record(snapshot)
        if snapshot.crossed:
            self._log_crossing(snapshot, compared, source)
        for reading_changed, old in device_changes:
            self._log_device_crossing(reading_changed, old)
        highest = max([level, *self.device_levels.values()])
        if highest >= MemoryLevel.CLEANUP:
            self._auto_cleanup(highest)
        self._run_callbacks(snapshot)
        return snapshot

    def _device_readings(self) -> list[DeviceReading]:
        return (self._devices if self._devices is not None else device_memory()).readings()

    def _settle_devices(self, readings: list[DeviceReading]) -> list[tuple[DeviceReading, MemoryLevel]]:
        """Move each device's level (caller holds the sample lock); the devices that changed, with their old level."""
        changed = []
        seen = set()
        for reading in readings:
            key = (reading.framework, reading.device)
            seen.add(key)
            previous = self.device_levels.get(key, MemoryLevel.OK)
            level = self._settle_device(previous, reading.used_bytes, reading.limit_bytes)
            self.device_levels[key] = level
            for threshold_level in THRESHOLD_LEVELS:
                if previous < threshold_level <= level:
                    counted = (reading.framework, reading.device, threshold_level)
                    self.device_alert_counts[counted] = self.device_alert_counts.get(counted, 0) + 1
                    self.alert_counts[threshold_level] += 1
                    _monitor_metrics.count_alert(threshold_level)
            if level is not previous:
                changed.append((reading, previous))
        for key in [key for key in self.device_levels if key not in seen]:
            del self.device_levels[key]  # a device no longer read (its framework failed) holds no level
        return changed

    def _record_flight(
        self,
        recorder: FlightRecorder,
        snapshot: MemorySnapshot,
        reading: CgroupMemory | None,
        devices: list[DeviceReading],
        compared: int,
        source: str,
        device_changes: list[tuple[DeviceReading, MemoryLevel]],
    ) -> None:
        # NVML counts every process on the GPU: the framework readings say what this process holds.
        own = [device.used_bytes for device in devices if device.process_used_bytes is None and device.framework != "nvml"]
        recorder.record_sample(
            snapshot.rss_bytes, None if reading is None else reading.working_set_bytes, sum(own) if own else None, snapshot.level
        )
        if snapshot.crossed and snapshot.previous_level is not None:
            recorder.level_changed(snapshot.previous_level, snapshot.level, compared, source)
        for device, old in device_changes:
            recorder.level_changed(old, self.device_levels.get((device.framework, device.device), MemoryLevel.OK), device.used_bytes, names.SOURCE_DEVICE)

    def _log_device_crossing(self, reading: DeviceReading, previous: MemoryLevel) -> None:
        level = self.device_levels.get((reading.framework, reading.device), MemoryLevel.OK)
        where = f"{reading.framework} {reading.device}"
        used_mb = reading.used_bytes / MB
        if level < previous:
            threshold = self._config.device_threshold_bytes(previous, reading.limit_bytes) or 0
            logger.info("device memory level %s on %s: %.1f MB fell below the %s threshold of %.1f MB (was %s)",
                        level, where, used_mb, previous, threshold / MB, previous)
            return
        threshold = self._config.device_threshold_bytes(level, reading.limit_bytes) or 0
        logger.log(
            logging.ERROR if level is MemoryLevel.CRITICAL else logging.WARNING,
            "device memory level %s on %s: %.1f MB reached the %s threshold of %.1f MB (was %s)",
            level, where, used_mb, level, threshold / MB, previous,
        )

    def _log_crossing(self, snapshot: MemorySnapshot, compared: int, source: str) -> None:
        level, previous = snapshot.level, snapshot.previous_level
        what = "RSS" if source == names.SOURCE_RSS else "working set"
        value_mb = compared / MB
        if previous is not None and level < previous:
            logger.info(
                "memory level %s: %s %.1f MB fell below the %s threshold of %.1f MB (was %s)",
                level, what, value_mb, previous, self.threshold_bytes(previous) / MB, previous,
            )
            return
        logger.log(
            logging.ERROR if level is MemoryLevel.CRITICAL else logging.WARNING,
            "memory level %s: %s %.1f MB reached the %s threshold of %.1f MB (was %s)",
            level, what, value_mb, level, self.threshold_bytes(level) / MB, previous,
        )

    def _run_callbacks(self, snapshot: MemorySnapshot) -> None:
        for callback in list(self._callbacks):
            try:
                callback(snapshot)
            except Exception:
                failures = self._callback_failures.get(id(callback), 0) + 1
                self._callback_failures[id(callback)] = failures
                if failures == 1:
                    logger.exception("memory monitor callback %r raised; the monitor carries on", callback)
                elif failures % 100 == 0:
                    logger.error("memory monitor callback %r has raised %d times", callback, failures)

    def add_callback(self, callback: Callback) -> None:
        """Call ``callback(snapshot)`` with every sample, on the monitor thread."""
        if not callable(callback):
            raise InvalidArgumentError(f"add_callback(callback={callback!r}): expected a callable taking a MemorySnapshot")
        self._callbacks.append(callback)

    def remove_callback(self, callback: Callback) -> bool:
        """Stop calling ``callback``; False if it was not added."""
        try:
            self._callbacks.remove(callback)
        except ValueError:
            return False
        self._callback_failures.pop(id(callback), None)
        return True

    # --- cleanup ---------------------------------------------------------------------------------

    def _auto_cleanup(self, level: MemoryLevel) -> CleanupResult | None:
        trigger = names.TRIGGER_CRITICAL if level is MemoryLevel.CRITICAL else names.TRIGGER_THRESHOLD
        with self._cleanup_lock:
            now = time.monotonic()
            last = self._last_auto_cleanup_at
            if last is not None and now - last < self.cleanup_cooldown_s and level <= self._last_auto_cleanup_level:
                return None
            self._last_auto_cleanup_at = now
            self._last_auto_cleanup_level = level
            return self._cleanup_locked(trigger)

    def _cleanup_locked(self, trigger: str) -> CleanupResult:
        result = run_cleanup(trigger, self._probe)
        self.cleanup_count += 1
        self.cleanup_counts[trigger] += 1
        self.freed_bytes_total += result.freed_bytes
        self.last_cleanup = result
        _monitor_metrics.count_cleanup(trigger, result.freed_bytes)
        logger.info(
            "memory cleanup (%s): RSS %.1f MB -> %.1f MB, freed %.1f MB, %d objects collected in %.3f s",
            trigger, result.rss_before_bytes / MB, result.rss_after_bytes / MB, result.freed_bytes / MB,
            result.collected_objects, result.duration_s,
        )
        return result

    def cleanup(self, trigger: str = names.TRIGGER_MANUAL) -> CleanupResult:
        """Run a cleanup now, in this thread, and count it under ``trigger`` (no cooldown)."""
        check_trigger(trigger)
        with self._cleanup_lock:
            return self._cleanup_locked(trigger)

    def _trigger_emergency_cleanup(self, *, from_signal: bool = False) -> CleanupResult | None:
        """Ask for an emergency cleanup; safe to call from a signal handler.

        With the thread running, wake it to clean up and return None at once. Otherwise clean up
        here and return the result, unless called from a signal handler: then the cleanup waits
        for the thread to start (cleanup never runs inside a signal handler).
        """
        self._emergency_pending = True
        if self._run is not None:
            self._wake_thread()
            return None
        if from_signal:
            return None
        return self._run_pending_emergency()

    def _run_pending_emergency(self) -> CleanupResult | None:
        if not self._emergency_pending:
            return None
        with self._cleanup_lock:
            if not self._emergency_pending:
                return None
            self._emergency_pending = False
            return self._cleanup_locked(names.TRIGGER_EMERGENCY)

    # --- the thread ------------------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        """True while the monitor thread runs."""
        run = self._run
        return run is not None and run.thread is not None and run.thread.is_alive()

    def start_monitoring(self) -> None:
        """Start the daemon thread (a no-op while it runs); it samples at once, then every interval."""
        with self._state_lock:
            if self._run is not None and not self._run.stopping:
                return
            run = _Run()
            run.thread = threading.Thread(target=self._loop, args=(run,), name="reer-memory-monitor", daemon=True)
            self._run = run
            run.thread.start()
        _reporting_started(self)

    def stop_monitoring(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the thread and wait (up to ``timeout_s``) for a sample or cleanup in progress."""
        with self._state_lock:
            run, self._run = self._run, None
        _reporting_stopped(self)
        if run is None:
            return
        run.stopping = True
        run.wake.set()
        thread = run.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                logger.warning("memory monitor thread still busy %.1f s after stop; it ends after its current step", timeout_s)

    def _wake_thread(self) -> None:
        run = self._run
        if run is None or run.waking:
            # waking: a signal arrived while this thread was inside wake.set(), which wakes the
            # monitor anyway; setting the event again here could deadlock on its lock.
            return
        run.waking = True
        try:
            run.wake.set()
        finally:
            run.waking = False

    def _loop(self, run: _Run) -> None:
        # Nothing ends this loop but a stop: a failing sample, wait or bookkeeping step is
        # logged (once, then every 100th time) and the loop goes on, so is_running stays true
        # and the emergency signal keeps working.
        while not run.stopping:
            cpu_started_s = time.thread_time()
            try:
                self._run_pending_emergency()
                self.sample_once()
            except Exception as exc:
                self._note_loop_failure("sample", exc)
            try:
                _monitor_metrics.add_monitor_cpu(time.thread_time() - cpu_started_s)
            except Exception as exc:
                self._note_loop_failure("CPU accounting", exc)
            if run.stopping:
                break
            try:
                run.wake.wait(self.next_wait_s())
            except Exception as exc:
                self._note_loop_failure("wait", exc)
                run.wake.wait(config_module.DEFAULT_MONITORING_INTERVAL_S)
            run.wake.clear()

    def _note_loop_failure(self, step: str, exc: Exception) -> None:
        self._loop_failures += 1
        if self._loop_failures == 1:
            logger.error("memory monitor %s failed; the monitor carries on: %r", step, exc, exc_info=exc)
        elif self._loop_failures % 100 == 0:
            logger.error("memory monitor %s has failed %d times: %r", step, self._loop_failures, exc)

    def _after_fork_in_child(self) -> None:
        was_running = self._run is not None
        self._init_process_state()
        self._callback_failures = {}
        if was_running:
            self.start_monitoring()

    def __repr__(self) -> str:
        return (
            f"MemoryMonitor(alert_threshold_mb={self.alert_threshold_mb:g}, cleanup_threshold_mb={self.cleanup_threshold_mb:g}, "
            f"critical_threshold_mb={self.critical_threshold_mb:g}, monitoring_interval={self.monitoring_interval:g}, "
            f"level={self.level!s}, running={self.is_running})"
        )


def _follow(monitor: MemoryMonitor) -> Callable[[MemoryConfig], None]:
    """A config listener that holds the monitor weakly and removes itself once it is gone."""
    ref = weakref.ref(monitor)

    def listener(config: MemoryConfig) -> None:
        target = ref()
        if target is None:
            config_module.remove_config_listener(listener)
            return
        target._on_process_config(config)

    return listener


# --- monitors in this process ------------------------------------------------------------------


class _Monitors:
    """The process's default monitor and the running monitors the gauges may describe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reporting: list[weakref.ref[MemoryMonitor]] = []
        self.default: MemoryMonitor | None = None

    def _after_fork_in_child(self) -> None:
        self.lock = threading.Lock()  # another thread may have held it when the process forked

    def _on_reset(self) -> None:
        if self.default is not None:
            self.default.stop_monitoring()


def _process_monitors() -> _Monitors:
    return RUNTIME.get("monitors", _Monitors)


def _reporting_started(monitor: MemoryMonitor) -> None:
    monitors = _process_monitors()
    with monitors.lock:
        monitors.reporting[:] = [ref for ref in monitors.reporting if ref() not in (None, monitor)]
        monitors.reporting.append(weakref.ref(monitor))


def _reporting_stopped(monitor: MemoryMonitor) -> None:
    monitors = _process_monitors()
    with monitors.lock:
        monitors.reporting[:] = [ref for ref in monitors.reporting if ref() not in (None, monitor)]


def reporting_monitor() -> MemoryMonitor:
    """The monitor the gauges describe: the latest started one still running, else the default."""
    monitors = _process_monitors()
    with monitors.lock:
        refs = list(monitors.reporting)
    for ref in reversed(refs):
        monitor = ref()
        if monitor is not None and monitor.is_running:
            return monitor
    return get_memory_monitor()


def install_instruments() -> None:
    """Register the monitor's gauges and counters on the Telemetry in force and every later one."""
    _monitor_metrics.install(reporting_monitor)


# --- the default monitor -----------------------------------------------------------------------


def get_memory_monitor() -> MemoryMonitor:
    """The process's default monitor, configured from ``REER_MEMORY_*`` (created on first use)."""
    monitors = _process_monitors()
    monitor = monitors.default
    if monitor is not None:
        return monitor
    config_module.get_config()  # a bad REER_MEMORY_* logs one line and falls back to defaults
    with monitors.lock:
        if monitors.default is None:
            monitors.default = MemoryMonitor()
        return monitors.default


def start_memory_monitoring() -> MemoryMonitor:
    """Start the default monitor's thread, and the explain listener unless ``REER_MEMORY_EXPLAIN=off``; returns the monitor."""
    from ..profiling.explain_listener import start_explain_listener

    monitor = get_memory_monitor()
    monitor.start_monitoring()
    start_explain_listener()  # never raises: a listener that cannot start is logged
    return monitor


def stop_memory_monitoring() -> None:
    """Stop the default monitor's thread, if there is a default monitor."""
    monitor = _process_monitors().default
    if monitor is not None:
        monitor.stop_monitoring()


def __getattr__(name: str) -> object:
    if name == "_memory_monitor":
        return get_memory_monitor()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


