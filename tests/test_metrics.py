"""The monitor's metrics as docs/telemetry.md names them: gauges read at collection time, and counters."""

from __future__ import annotations

import psutil
import pytest
from _children import MB
from _procfs import ProcDir
from conftest import wait_for

from reer_otel_memory import MemoryMonitor, MemoryTracker, get_memory_monitor, get_memory_tracker
from reer_otel_memory import _names as names
from reer_otel_memory.monitoring import metrics as _monitor_metrics
from reer_otel_memory.monitoring.monitor import install_instruments
from reer_otel_memory.testing import capture_telemetry

GAUGES = {
    "reer.memory.rss": "By",
    "reer.memory.peak_rss": "By",
    "reer.memory.heap": "By",
    "reer.memory.limit": "By",
    "reer.memory.utilization": "1",
    "reer.memory.threshold": "By",
    "reer.memory.level": "1",
}
COUNTERS = {
    "reer.memory.alerts": "1",
    "reer.memory.cleanups": "1",
    "reer.memory.cleanup.freed": "By",
    "reer.memory.monitor.cpu": "s",
}


def running_monitor(proc: ProcDir, *thresholds_mb: float) -> MemoryMonitor:
    """A started monitor over ``proc`` (so it is the one the gauges describe), sampling hourly."""
    monitor = MemoryMonitor(*thresholds_mb, 3600, probe=proc.probe, tracker=MemoryTracker(10, probe=proc.probe), cleanup_cooldown_s=3600)
    monitor.start_monitoring()
    wait_for(lambda: monitor.sample_count >= 1, message="first sample")
    return monitor


def test_every_instrument_has_its_design_name_kind_and_unit(telemetry):
    get_memory_monitor()  # the monitor's instruments exist once a monitor does
    metrics = {metric.name: metric for metric in telemetry.collect()}
    for name, unit in {**GAUGES, **COUNTERS}.items():
        assert name in metrics, f"{name} missing; collected: {sorted(metrics)}"
        assert metrics[name].unit == unit
    for name in GAUGES:
        assert type(metrics[name].data).__name__ == "Gauge", name
    for name in COUNTERS:
        data = metrics[name].data
        assert type(data).__name__ == "Sum" and data.is_monotonic, name


@pytest.fixture
def default_monitor_stopped():
    monitor = get_memory_monitor()
    was_running = monitor.is_running
    monitor.stop_monitoring()
    yield monitor
    if was_running:
        monitor.start_monitoring()


def test_gauges_read_the_process_at_collection_time_without_a_running_thread(telemetry, default_monitor_stopped):
    monitor = default_monitor_stopped
    rss = telemetry.metric_value("reer.memory.rss")
    assert rss == pytest.approx(psutil.Process().memory_info().rss, rel=0.10)
    assert telemetry.metric_value("reer.memory.peak_rss") >= rss * 0.99
    assert telemetry.metric_value("reer.memory.heap") > 0
    limit = telemetry.metric_value("reer.memory.limit")
    assert limit == monitor.config.limit.bytes
    assert telemetry.metric_value("reer.memory.utilization") == pytest.approx(rss / limit, rel=0.10)
    for level in ("alert", "cleanup", "critical"):
        assert telemetry.metric_value("reer.memory.threshold", level=level) == getattr(monitor.config, f"{level}_bytes")
    assert telemetry.metric_value("reer.memory.level") == monitor.current_level().rank


def test_the_gauges_describe_the_latest_started_monitor(telemetry, proc):
    proc.set_rss(250 * MB)
    monitor = running_monitor(proc, 100, 300, 200)
    try:
        assert telemetry.metric_value("reer.memory.rss") == 250 * MB
        assert telemetry.metric_value("reer.memory.level") == 2
        assert telemetry.metric_value("reer.memory.threshold", level="cleanup") == 200 * MB
        proc.set_rss(400 * MB)
        monitor.sample_once()
        assert telemetry.metric_value("reer.memory.level") == 3
    finally:
        monitor.stop_monitoring()
    # Stopped, it no longer reports: the default monitor does.
    assert telemetry.metric_value("reer.memory.threshold", level="cleanup") == get_memory_monitor().config.cleanup_bytes


def test_an_unreadable_source_leaves_its_metric_out_and_the_rest_in(telemetry, proc):
    monitor = running_monitor(proc, 100, 300, 200)
    try:
        proc.break_statm()
        metrics = {metric.name for metric in telemetry.collect()}  # collection itself does not fail
    finally:
        monitor.stop_monitoring()
    assert "reer.memory.rss" not in metrics and "reer.memory.utilization" not in metrics
    assert {"reer.memory.threshold", "reer.memory.limit", "reer.memory.alerts"} <= metrics


def test_counters_start_at_zero_for_every_label_and_count_what_monitors_do(telemetry, proc):
    install_instruments()  # as the first monitor or the endpoint does
    for level in ("alert", "cleanup", "critical"):
        assert telemetry.metric_value("reer.memory.alerts", level=level) is not None
    for trigger in ("threshold", "critical", "emergency", "manual"):
        assert telemetry.metric_value("reer.memory.cleanups", trigger=trigger) is not None
    before_alerts = telemetry.metric_value("reer.memory.alerts", level="alert")
    before_threshold = telemetry.metric_value("reer.memory.cleanups", trigger="threshold")
    before_cpu = telemetry.metric_value("reer.memory.monitor.cpu")
    proc.set_rss(250 * MB)
    monitor = running_monitor(proc, 100, 300, 200)
    monitor.stop_monitoring()
    assert telemetry.metric_value("reer.memory.alerts", level="alert") == before_alerts + 1
    assert telemetry.metric_value("reer.memory.cleanups", trigger="threshold") == before_threshold + 1
    assert telemetry.metric_value("reer.memory.monitor.cpu") > before_cpu


def test_leak_gauge_is_one_while_an_operation_is_suspected(telemetry):
    install_instruments()
    detector = get_memory_tracker().leak_detector
    for _ in range(64):
        detector.observe("grows_cache", 256 * 1024)
        detector.observe("steady", 0)
    assert telemetry.metric_value("reer.memory.leak.suspected", reer_operation="grows_cache") == 1
    assert telemetry.metric_value("reer.memory.leak.suspected", reer_operation="steady") == 0


def test_instruments_register_once_per_telemetry_and_again_after_rebinding(telemetry):
    install_instruments()
    _monitor_metrics.register()  # again on the same Telemetry: no second instrument
    assert len(telemetry.metric_points("reer.memory.rss")) == 1
    with capture_telemetry() as other:
        assert other.metric_value("reer.memory.rss") > 0
    assert len(telemetry.metric_points("reer.memory.rss")) == 1


def test_a_second_telemetry_on_the_same_provider_reports_the_operation_sums():
    """Rebinding to the same meter provider (as the instrumentor does after the first profiled
    call) gets the SDK's existing instrument back, with the first Telemetry's callback: the sums
    must still arrive."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from reer_otel_memory import _telemetry

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    previous = _telemetry.current()
    try:
        _telemetry.configure(None, provider)
        second = _telemetry.configure(None, provider)
        second.add_operation_net("rebound-operation", 4096)
        points = [
            point
            for resource in reader.get_metrics_data().resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == names.METRIC_OPERATION_NET[0]
            for point in metric.data.data_points
        ]
    finally:
        _telemetry.restore(previous)
        provider.shutdown()
    assert [(dict(point.attributes), point.value) for point in points] == [({names.LABEL_OPERATION: "rebound-operation"}, 4096)]


# --- the semantic conventions' names --------------------------------------------------------


@pytest.fixture
def container_answer():
    """Which answer the container check gives is set per test, and forgotten afterwards."""
    from reer_otel_memory._runtime import RUNTIME

    yield lambda answer: RUNTIME.replace("in_container", answer)
    RUNTIME.replace("in_container", None)  # found again on next use


def test_in_a_container_the_cgroup_figures_go_out_under_the_conventions_names_too(telemetry, container_answer):
    cgroup = _monitor_metrics.process_cgroup()
    if cgroup is None or cgroup.read().usage_bytes is None:
        pytest.skip("this process is in no readable memory cgroup here")
    get_memory_monitor()
    container_answer(True)
    metrics = {metric.name: metric for metric in telemetry.collect()}
    for name, own in (("container.memory.usage", "reer.memory.cgroup.usage"), ("container.memory.working_set", "reer.memory.cgroup.working_set")):
        data = metrics[name].data
        assert type(data).__name__ == "Sum" and not data.is_monotonic, name  # an up-down counter, as the conventions define it
        assert metrics[name].unit == "By"
        (point,) = data.data_points
        (own_point,) = metrics[own].data.data_points
        assert point.value == own_point.value  # one cgroup reading serves both names
        assert dict(point.attributes) == {}


def test_outside_a_container_there_is_no_container_series(telemetry, container_answer):
    get_memory_monitor()
    container_answer(False)
    names_collected = {metric.name for metric in telemetry.collect()}
    assert "container.memory.usage" not in names_collected and "container.memory.working_set" not in names_collected


def test_gpu_memory_under_the_conventions_names_comes_from_whole_devices_only():
    from reer_otel_memory.profiling.devices import DeviceReading

    readings = [
        DeviceReading("nvml", "gpu:0", 3 << 30, None, 80 << 30, None, 1 << 30),
        DeviceReading("nvml", "gpu:1", 1 << 30, None, None),
        DeviceReading("torch", "cuda:0", 2 << 30, 2 << 30, 80 << 30),  # the process's allocator, not the device
    ]
    used = [(o.value, dict(o.attributes or {})) for o in _monitor_metrics.hw_gpu_observations(readings, "used_bytes")]
    assert used == [(3 << 30, {"hw.id": "gpu:0"}), (1 << 30, {"hw.id": "gpu:1"})]
    limits = [(o.value, dict(o.attributes or {})) for o in _monitor_metrics.hw_gpu_observations(readings, "limit_bytes")]
    assert limits == [(80 << 30, {"hw.id": "gpu:0"})]


def test_the_scope_names_the_conventions_it_follows(telemetry):
    from reer_otel_memory import memory_context

    get_memory_monitor()
    with memory_context("scoped"):
        pass
    (span,) = telemetry.spans("scoped")
    assert span.instrumentation_scope.schema_url == names.SCHEMA_URL
    data = telemetry.metric_reader.get_metrics_data()
    scopes = {scope.scope.name: scope.scope.schema_url for resource in data.resource_metrics for scope in resource.scope_metrics}
    assert scopes[names.INSTRUMENTATION_SCOPE] == names.SCHEMA_URL
