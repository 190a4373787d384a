"""The monitor's OpenTelemetry instruments: gauges read at collection time, and its counters.

Gauges are read when a reader collects, so they report whether or not a monitor thread runs;
the process gauges describe the monitor started most recently that is still running, else the
default one. Counters are observed at collection time too, so every series exists from the first
scrape at 0; every monitor in the process adds to them and a forked child starts again from 0.
Each read is guarded: a source that cannot be read leaves that one metric out of the collection
(logged once) and never fails it. docs/telemetry.md lists every instrument.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from opentelemetry.metrics import CallbackOptions, Observation

from .. import _names as names
from .. import _telemetry
from .._cgroup import CgroupMemory, MemoryCgroup, in_container, memory_cgroup
from .._runtime import RUNTIME
from ..config import MemoryConfig
from ..levels import THRESHOLD_LEVELS, MemoryLevel
from ..profiling.devices import FRAMEWORK_NVML, DeviceReading, device_memory
from ..profiling.probe import MemoryProbe
from ..profiling.tracker import get_memory_tracker

logger = logging.getLogger(__name__)


class _Totals:
    """Process-wide counts behind the counters; updated by every monitor."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.alerts: dict[MemoryLevel, int] = {level: 0 for level in THRESHOLD_LEVELS}
        self.cleanups: dict[str, int] = {trigger: 0 for trigger in names.CLEANUP_TRIGGERS}
        self.freed_bytes = 0
        self.monitor_cpu_s = 0.0


def totals() -> _Totals:
    """The process's counts; a forked child is a new process to Prometheus and starts from zero."""
    return RUNTIME.get("monitor_totals", _Totals)


def count_alert(level: MemoryLevel) -> None:
    counts = totals()
    with counts.lock:
        counts.alerts[level] += 1


def count_cleanup(trigger: str, freed_bytes: int) -> None:
    counts = totals()
    with counts.lock:
        counts.cleanups[trigger] += 1
        counts.freed_bytes += max(0, freed_bytes)


def add_monitor_cpu(seconds: float) -> None:
    counts = totals()
    with counts.lock:
        counts.monitor_cpu_s += max(0.0, seconds)


# --- collection-time reads ---------------------------------------------------------------------


class ReportedMonitor(Protocol):
    """What the gauges read of the monitor they describe."""

    @property
    def probe(self) -> MemoryProbe: ...
    @property
    def config(self) -> MemoryConfig: ...
    def current_level(self) -> MemoryLevel: ...


def _no_monitor() -> ReportedMonitor:
    raise LookupError("no memory monitor to report: install() was not given one")


class _MonitorGauges:
    """Which monitor the gauges describe (set by :func:`install`)."""

    def __init__(self) -> None:
        self.reported: Callable[[], ReportedMonitor] = _no_monitor


def _gauges() -> _MonitorGauges:
    return RUNTIME.get("monitor_gauges", _MonitorGauges)


def _monitor() -> ReportedMonitor:
    return _gauges().reported()


def _rss() -> Iterator[Observation]:
    yield Observation(_monitor().probe.rss_bytes())


def _peak_rss() -> Iterator[Observation]:
    yield Observation(_monitor().probe.lifetime_peak_bytes())


def _heap() -> Iterator[Observation]:
    heap_bytes = _monitor().probe.heap_bytes()
    if heap_bytes is not None:
        yield Observation(heap_bytes)


def _limit() -> Iterator[Observation]:
    yield Observation(_monitor().config.limit.bytes)


def _utilization() -> Iterator[Observation]:
    monitor = _monitor()
    limit_bytes = monitor.config.limit.bytes
    if limit_bytes > 0:
        yield Observation(monitor.probe.rss_bytes() / limit_bytes)


def _thresholds() -> Iterator[Observation]:
    config = _monitor().config
    for level in THRESHOLD_LEVELS:
        yield Observation(config.threshold_bytes(level), {names.LABEL_LEVEL: level.value})


def _level() -> Iterator[Observation]:
    yield Observation(_monitor().current_level().rank)


def _device_readings() -> list[DeviceReading]:
    return device_memory().readings()


def _device_used() -> Iterator[Observation]:
    for reading in _device_readings():
        yield Observation(reading.used_bytes, {names.LABEL_FRAMEWORK: reading.framework, names.LABEL_DEVICE: reading.device})


def _device_peak() -> Iterator[Observation]:
    for reading in _device_readings():
        if reading.peak_bytes is not None:
            yield Observation(reading.peak_bytes, {names.LABEL_FRAMEWORK: reading.framework, names.LABEL_DEVICE: reading.device})


def _device_limit() -> Iterator[Observation]:
    for reading in _device_readings():
        if reading.limit_bytes is not None:
            yield Observation(reading.limit_bytes, {names.LABEL_FRAMEWORK: reading.framework, names.LABEL_DEVICE: reading.device})


def _device_thresholds() -> Iterator[Observation]:
    config = _monitor().config
    if not config.device_thresholds:
        return
    for reading in _device_readings():
        for level in THRESHOLD_LEVELS:
            threshold_bytes = config.device_threshold_bytes(level, reading.limit_bytes)
            if threshold_bytes is not None:
                yield Observation(
                    threshold_bytes,
                    {names.LABEL_FRAMEWORK: reading.framework, names.LABEL_DEVICE: reading.device, names.LABEL_LEVEL: level.value},
                )


def process_cgroup() -> MemoryCgroup | None:
    """The process's memory cgroup, found once per process (None: it has none)."""
    return RUNTIME.get("cgroup", lambda: [memory_cgroup()])[0]


#: One cgroup reading serves every cgroup instrument of a collection (five of them, about eight
#: file reads each): a reading younger than this is reused.
CGROUP_READING_TTL_S = 0.5


class _LatestCgroupReading:
    def __init__(self) -> None:
        self.read_at = -CGROUP_READING_TTL_S
        self.reading: CgroupMemory | None = None


def _cgroup_reading() -> CgroupMemory | None:
    cgroup = process_cgroup()
    if cgroup is None:
        return None
    latest = RUNTIME.get("cgroup_reading", _LatestCgroupReading)
    now = time.monotonic()
    if now - latest.read_at >= CGROUP_READING_TTL_S:  # two threads at once only read twice: harmless
        latest.reading, latest.read_at = cgroup.read(), now
    return latest.reading


def _cgroup_value(field: str) -> Callable[[], Iterator[Observation]]:
    def read() -> Iterator[Observation]:
        reading = _cgroup_reading()
        value = None if reading is None else getattr(reading, field)
        if value is not None:
            yield Observation(value)

    return read


def _in_container() -> bool:
    """Whether the process runs in a container (:func:`reer_otel_memory._cgroup.in_container`), found once."""
    return RUNTIME.get("in_container", in_container)


def _container_value(field: str) -> Callable[[], Iterator[Observation]]:
    """A cgroup value under the conventions' ``container.*`` name: only in a container, where
    the process's memory cgroup is the container's (a service's cgroup on a host is not)."""
    read = _cgroup_value(field)

    def in_a_container() -> Iterator[Observation]:
        if _in_container():
            yield from read()

    return in_a_container


def hw_gpu_observations(readings: Iterable[DeviceReading], field: str) -> Iterator[Observation]:
    """``hw.gpu.memory.*`` from the readings of whole GPUs (NVML's; a framework's allocator
    figures are the process's share, not the device's), one per GPU, by ``hw.id``."""
    for reading in readings:
        value = getattr(reading, field)
        if reading.framework == FRAMEWORK_NVML and value is not None:
            yield Observation(value, {names.LABEL_HW_ID: reading.device})


def _hw_gpu(field: str) -> Callable[[], Iterator[Observation]]:
    return lambda: hw_gpu_observations(_device_readings(), field)


def _leak_suspected() -> Iterator[Observation]:
    for operation, suspected in get_memory_tracker().leak_detector.states():
        yield Observation(1 if suspected else 0, {names.LABEL_OPERATION: operation})


def _process_leak_suspected() -> Iterator[Observation]:
    yield Observation(1 if get_memory_tracker().leak_detector.process_suspected() else 0)


def _alerts() -> Iterator[Observation]:
    counts = totals()
    for level in THRESHOLD_LEVELS:
        yield Observation(counts.alerts[level], {names.LABEL_LEVEL: level.value})


def _cleanups() -> Iterator[Observation]:
    counts = totals()
    for trigger in names.CLEANUP_TRIGGERS:
        yield Observation(counts.cleanups[trigger], {names.LABEL_TRIGGER: trigger})


def _cleanup_freed() -> Iterator[Observation]:
    yield Observation(totals().freed_bytes)


def _monitor_cpu() -> Iterator[Observation]:
    yield Observation(totals().monitor_cpu_s)


def _guarded(metric_name: str, read: Callable[[], Iterable[Observation]]) -> Callable[[CallbackOptions], list[Observation]]:
    """A callback that returns ``read()``'s observations, or none at all when the read fails."""

    def callback(options: CallbackOptions) -> list[Observation]:
        try:
            return list(read())
        except Exception as exc:  # an unreadable source drops this metric, never the scrape
            if RUNTIME.first_time(f"unreadable metric source: {metric_name}"):
                logger.warning("%s left out of this collection: its source could not be read: %r", metric_name, exc)
            return []

    return callback


_GAUGES = (
    (names.METRIC_RSS, _rss),
    (names.METRIC_PEAK_RSS, _peak_rss),
    (names.METRIC_HEAP, _heap),
    (names.METRIC_LIMIT, _limit),
    (names.METRIC_UTILIZATION, _utilization),
    (names.METRIC_THRESHOLD, _thresholds),
    (names.METRIC_LEVEL, _level),
    (names.METRIC_LEAK_SUSPECTED, _leak_suspected),
    (names.METRIC_PROCESS_LEAK_SUSPECTED, _process_leak_suspected),
    (names.METRIC_DEVICE_USED, _device_used),
    (names.METRIC_DEVICE_PEAK, _device_peak),
    (names.METRIC_DEVICE_LIMIT, _device_limit),
    (names.METRIC_DEVICE_THRESHOLD, _device_thresholds),
    (names.METRIC_CGROUP_USAGE, _cgroup_value("usage_bytes")),
    (names.METRIC_CGROUP_WORKING_SET, _cgroup_value("working_set_bytes")),
    (names.METRIC_CGROUP_LIMIT, _cgroup_value("limit_bytes")),
)
_COUNTERS = (
    (names.METRIC_ALERTS, _alerts),
    (names.METRIC_CLEANUPS, _cleanups),
    (names.METRIC_CLEANUP_FREED, _cleanup_freed),
    (names.METRIC_MONITOR_CPU, _monitor_cpu),
    (names.METRIC_CGROUP_OOM_KILLS, _cgroup_value("oom_kills")),
    (names.METRIC_CGROUP_PRESSURE, _cgroup_value("pressure_stall_s")),
)

# Semantic-convention instruments: up-down counters, observed like the gauges above.
_UP_DOWN_COUNTERS = (
    (names.METRIC_CONTAINER_MEMORY_USAGE, _container_value("usage_bytes")),
    (names.METRIC_CONTAINER_MEMORY_WORKING_SET, _container_value("working_set_bytes")),
    (names.METRIC_HW_GPU_MEMORY_USAGE, _hw_gpu("used_bytes")),
    (names.METRIC_HW_GPU_MEMORY_LIMIT, _hw_gpu("limit_bytes")),
)

def register(telemetry: _telemetry.Telemetry | None = None) -> None:
    """Create the monitor's instruments on ``telemetry``'s meter (default: the one in force), once."""
    (telemetry or _telemetry.current()).instruments(_INSTRUMENTS_KEY, _create_instruments)


_INSTRUMENTS_KEY = "monitor"


def _create_instruments(telemetry: _telemetry.Telemetry) -> None:
    meter = telemetry.meter
    for (name, unit, description), read in _GAUGES:
        meter.create_observable_gauge(name, callbacks=[_guarded(name, read)], unit=unit, description=description)
    for (name, unit, description), read in _COUNTERS:
        meter.create_observable_counter(name, callbacks=[_guarded(name, read)], unit=unit, description=description)
    for (name, unit, description), read in _UP_DOWN_COUNTERS:
        meter.create_observable_up_down_counter(name, callbacks=[_guarded(name, read)], unit=unit, description=description)


def install(reported: Callable[[], ReportedMonitor]) -> None:
    """Register on the Telemetry in force and on every one bound later; the gauges describe ``reported()``.

    Called by the monitor module when a monitor is created and by the endpoint when it starts
    (never by an import).
    """
    _gauges().reported = reported
    _telemetry.register_on_every_telemetry(_INSTRUMENTS_KEY, _create_instruments)
