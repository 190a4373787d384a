"""Accelerator memory and the container's view, end to end: profiled operations, the monitor, its gauges.

Real MLX (its CPU build reports real numbers), real OTel SDK providers, a cgroup tree the test
builds where the levels compare the working set, and a real dead predecessor of a flight recorder.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from _procfs import ProcDir
from conftest import IN_CI, wait_for

from reer_otel_memory import MemoryLevel, MemoryMonitor, MemoryTracker, memory_context, memory_profile
from reer_otel_memory import _names as names
from reer_otel_memory._cgroup import MemoryCgroup
from reer_otel_memory.config import MemoryLimit, load_config
from reer_otel_memory.ml.profiler import MemoryProfiler
from reer_otel_memory.profiling.devices import device_memory
from reer_otel_memory.profiling.flight_recorder import FlightRecorder, read_flight_record, report_predecessor
from reer_otel_memory.testing import capture_telemetry

MB = 1024 * 1024
SIZE = 64 * MB
#: MLX allocates a few bytes of its own now and then (scalars).
SLACK_BYTES = 64 * 1024
LIMIT = MemoryLimit(64 * 1024 * MB, "test")


def _mlx():
    try:
        import mlx.core as mx
    except ImportError:
        if IN_CI:
            pytest.fail("mlx is not installed; the test extra installs mlx[cpu]")
        pytest.skip("mlx is not installed (pip install 'mlx[cpu]')")
    return mx


def _allocate(mx, size_bytes: int = SIZE):
    array = mx.zeros((size_bytes // 4,), dtype=mx.float32)
    mx.eval(array)
    return array


def _monitor(proc: ProcDir, environ: dict[str, str], **kwargs) -> MemoryMonitor:
    config = load_config({"REER_MEMORY_ALERT_MB": "100", "REER_MEMORY_CLEANUP_MB": "200", "REER_MEMORY_CRITICAL_MB": "300", **environ}, limit=LIMIT)
    kwargs.setdefault("cgroup", None)
    return MemoryMonitor(config=config, probe=proc.probe, tracker=MemoryTracker(max_snapshots=50, probe=proc.probe), cleanup_cooldown_s=3600.0, **kwargs)


# --- profiled operations -----------------------------------------------------------------------


def test_an_operation_that_frees_its_arrays_shows_the_peak_and_no_delta():
    mx = _mlx()

    @memory_profile(operation_name="transient_64_mib")
    def transient() -> None:
        array = _allocate(mx)
        del array

    with capture_telemetry() as telemetry:
        transient()
        attributes = telemetry.span("transient_64_mib").attributes
    start = attributes[names.ATTR_DEVICE_START]
    assert attributes[names.ATTR_DEVICE_PEAK] - start >= SIZE
    assert abs(attributes[names.ATTR_DEVICE_DELTA]) <= SLACK_BYTES
    assert attributes[names.ATTR_DEVICE_END] - start == attributes[names.ATTR_DEVICE_DELTA]


def test_an_operation_that_keeps_its_arrays_shows_them_in_its_delta_and_in_the_gauges(proc):
    mx = _mlx()
    kept = []
    with capture_telemetry() as telemetry:
        _monitor(proc, {})  # installs the gauges
        with memory_context("keep_64_mib") as operation:
            kept.append(_allocate(mx))
        attributes = telemetry.span("keep_64_mib").attributes
        assert abs(attributes[names.ATTR_DEVICE_DELTA] / SIZE - 1) <= 0.02
        assert operation.result is not None and operation.result.device_delta == attributes[names.ATTR_DEVICE_DELTA]
        assert attributes[names.ATTR_DEVICE_PEAK] >= attributes[names.ATTR_DEVICE_END]
        (framework, device), = {(r.framework, r.device) for r in device_memory().readings()}
        used = telemetry.metric_value(names.METRIC_DEVICE_USED[0], framework=framework, device=device)
        assert used is not None and used >= SIZE
        assert telemetry.metric_value(names.METRIC_DEVICE_PEAK[0], framework=framework, device=device) >= used
    kept.clear()


def test_the_model_profiler_records_each_models_device_footprint():
    mx = _mlx()
    profiler = MemoryProfiler()
    with capture_telemetry() as telemetry:
        model = profiler.profile_model_loading("mlx-model", lambda: {"weights": _allocate(mx)})
        span = telemetry.span(names.OPERATION_MODEL_LOAD)
    stats = profiler.get_model_stats("mlx-model")
    assert abs(stats["load_device_delta_bytes"] / SIZE - 1) <= 0.02
    assert stats["load_device_peak_bytes"] >= SIZE
    assert span.attributes[names.ATTR_DEVICE_DELTA] == stats["load_device_delta_bytes"]
    del model


# --- the monitor's device levels ----------------------------------------------------------------


def test_a_device_threshold_crossing_raises_the_device_level_counts_an_alert_and_cleanup_empties_the_cache(proc):
    mx = _mlx()
    mx.clear_cache()
    (reading,) = [r for r in device_memory().readings() if r.framework == "mlx"]
    key = (reading.framework, reading.device)
    base_mb = reading.used_bytes / MB
    environ = {
        "REER_MEMORY_DEVICE_ALERT_MB": f"{base_mb + 32:.3f}",
        "REER_MEMORY_DEVICE_CLEANUP_MB": f"{base_mb + 96:.3f}",
        "REER_MEMORY_DEVICE_CRITICAL_MB": f"{base_mb + 4096:.3f}",
    }
    with capture_telemetry() as telemetry:
        monitor = _monitor(proc, environ)
        monitor.sample_once()
        assert monitor.device_levels[key] is MemoryLevel.OK
        alerts_before = telemetry.metric_value(names.METRIC_ALERTS[0], level="alert") or 0
        monitor.start_monitoring()  # the gauges describe the running monitor
        try:
            threshold = telemetry.metric_value(names.METRIC_DEVICE_THRESHOLD[0], framework=key[0], device=key[1], level="alert")
        finally:
            monitor.stop_monitoring()
        assert threshold == int((base_mb + 32) * MB)

        kept = _allocate(mx)
        monitor.sample_once()
        assert monitor.device_levels[key] is MemoryLevel.ALERT
        assert monitor.level is MemoryLevel.OK  # the host level is the RSS's own
        assert monitor.device_alert_counts[(*key, MemoryLevel.ALERT)] == 1
        assert telemetry.metric_value(names.METRIC_ALERTS[0], level="alert") == alerts_before + 1
        assert monitor.cleanup_count == 0

        # Freed arrays stay in MLX's cache; reaching the device cleanup level hands them back.
        freed = _allocate(mx, 16 * MB)
        del freed
        assert mx.get_cache_memory() >= 16 * MB
        more = _allocate(mx)
        monitor.sample_once()
        assert monitor.device_levels[key] is MemoryLevel.CLEANUP
        assert monitor.cleanup_counts[names.TRIGGER_THRESHOLD] == 1
        assert mx.get_cache_memory() == 0

        del kept, more
        monitor.sample_once()
        assert monitor.device_levels[key] is MemoryLevel.OK


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("REER_MEMORY_DEVICE_ALERT_MB", "0", "REER_MEMORY_DEVICE_ALERT_MB='0': expected a positive number of MB"),
        (
            "REER_MEMORY_DEVICE_CLEANUP_MB",
            "120%",
            "REER_MEMORY_DEVICE_CLEANUP_MB='120%': expected a percentage above 0% and at most 100% of the device's memory limit",
        ),
        ("REER_MEMORY_THRESHOLD_SOURCE", "pss", "REER_MEMORY_THRESHOLD_SOURCE='pss': expected one of rss, working_set"),
    ],
)
def test_bad_device_thresholds_and_sources_are_refused_naming_them(variable, value, message):
    from reer_otel_memory import ConfigurationError

    with pytest.raises(ConfigurationError) as caught:
        load_config({variable: value}, limit=LIMIT)
    assert message in str(caught.value)


def test_device_thresholds_out_of_order_are_refused_and_percentages_resolve_per_device():
    from reer_otel_memory import ConfigurationError

    with pytest.raises(ConfigurationError, match="REER_MEMORY_DEVICE_ALERT_MB='50%' is above REER_MEMORY_DEVICE_CRITICAL_MB='40%'"):
        load_config({"REER_MEMORY_DEVICE_ALERT_MB": "50%", "REER_MEMORY_DEVICE_CRITICAL_MB": "40%"}, limit=LIMIT)
    config = load_config({"REER_MEMORY_DEVICE_ALERT_MB": "50%", "REER_MEMORY_DEVICE_CRITICAL_MB": "900"}, limit=LIMIT)
    assert config.device_threshold_bytes(MemoryLevel.ALERT, 1000 * MB) == 500 * MB
    assert config.device_threshold_bytes(MemoryLevel.ALERT, None) is None  # no limit known: no percentage
    assert config.device_threshold_bytes(MemoryLevel.CLEANUP, 1000 * MB) is None
    assert config.device_level_for(950 * MB, 1000 * MB) is MemoryLevel.CRITICAL


# --- what the host levels compare ----------------------------------------------------------------


def _cgroup_v2(directory, usage_bytes: int, inactive_file_bytes: int) -> MemoryCgroup:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "memory.current").write_text(f"{usage_bytes}\n")
    (directory / "memory.stat").write_text(f"anon {usage_bytes - inactive_file_bytes}\ninactive_file {inactive_file_bytes}\n")
    (directory / "memory.max").write_text("max\n")
    return MemoryCgroup(directory, 2)


def test_threshold_source_working_set_compares_the_cgroups_working_set(proc, tmp_path):
    proc.set_rss(50 * MB)
    cgroup = _cgroup_v2(tmp_path / "cg", usage_bytes=400 * MB, inactive_file_bytes=250 * MB)  # working set 150 MB
    by_rss = _monitor(proc, {}, cgroup=cgroup)
    assert by_rss.sample_once().level is MemoryLevel.OK
    monitor = _monitor(proc, {"REER_MEMORY_THRESHOLD_SOURCE": "working_set"}, cgroup=cgroup)
    assert monitor.config.threshold_source == "working_set"
    assert monitor.sample_once().level is MemoryLevel.ALERT
    (tmp_path / "cg" / "memory.current").write_text(f"{260 * MB + 250 * MB}\n")  # working set 260 MB
    assert monitor.sample_once().level is MemoryLevel.CLEANUP
    assert monitor.current_level() is MemoryLevel.CLEANUP


def test_threshold_source_working_set_without_a_cgroup_compares_rss_and_says_so_once(proc, caplog):
    proc.set_rss(150 * MB)
    monitor = _monitor(proc, {"REER_MEMORY_THRESHOLD_SOURCE": "working_set"}, cgroup=None)
    with caplog.at_level(logging.WARNING, logger="reer_otel_memory.monitoring.monitor"):
        assert monitor.sample_once().level is MemoryLevel.ALERT
        monitor.sample_once()
    said = [record.getMessage() for record in caplog.records if "REER_MEMORY_THRESHOLD_SOURCE" in record.getMessage()]
    assert said == ["REER_MEMORY_THRESHOLD_SOURCE=working_set: the process has no memory cgroup with a working set here, so the levels compare RSS"]


# --- the flight recorder -------------------------------------------------------------------------


def test_the_monitor_records_samples_and_level_changes_and_operations_hold_a_slot(proc, tmp_path, monkeypatch):
    from reer_otel_memory._runtime import RUNTIME
    from reer_otel_memory.profiling.flight_recorder import RecorderHolder

    recorder = FlightRecorder.open(tmp_path / "service.flight")
    previous = RUNTIME.flight_recorder
    RUNTIME.replace("flight_recorder", RecorderHolder(recorder))
    try:
        cgroup = _cgroup_v2(tmp_path / "cg", usage_bytes=300 * MB, inactive_file_bytes=100 * MB)
        monitor = _monitor(proc, {}, cgroup=cgroup)
        monitor.sample_once()
        proc.set_rss(150 * MB)
        with memory_context("running-now"):
            monitor.sample_once()
            during = read_flight_record(recorder.path)
        # An operation's end reaches the file with the next record or within END_DELAY_S.
        after = wait_for(lambda: (found := read_flight_record(recorder.path)).running == [] and found, message="the operation's end in the file")
    finally:
        RUNTIME.replace("flight_recorder", previous)
        recorder.close()
    assert [operation.name for operation in during.running] == ["running-now"]
    assert during.running[0].growth_bytes is not None
    assert after.running == []
    assert [(s.rss_bytes, s.working_set_bytes, s.level) for s in after.samples] == [(50 * MB, 200 * MB, "ok"), (150 * MB, 200 * MB, "alert")]
    assert [(c.source, c.old, c.new, c.value_bytes) for c in after.level_changes] == [("rss", "ok", "alert", 150 * MB)]


DIE_HOLDING_AN_OPERATION = """
import os, signal, sys
from reer_otel_memory import memory_context
from reer_otel_memory.profiling.flight_recorder import process_flight_recorder
process_flight_recorder().record_sample(123 << 20)
with memory_context("doomed"):
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_predecessor_killed_mid_operation_is_reported_once_as_a_span_event(tmp_path, caplog):
    path = tmp_path / "service.flight"
    child = subprocess.run(
        [sys.executable, "-c", DIE_HOLDING_AN_OPERATION], env={"REER_MEMORY_FLIGHT_RECORDER": str(path), "PATH": ""}, capture_output=True, timeout=60
    )
    assert child.returncode == -9, child.stderr
    with capture_telemetry() as telemetry, caplog.at_level(logging.WARNING):
        recorder = FlightRecorder.open(path)
        report_predecessor(recorder)
        spans = telemetry.spans(names.SPAN_PREDECESSOR)
        recorder.close()
    assert len(spans) == 1
    (event,) = spans[0].events
    assert event.name == names.EVENT_PREDECESSOR_DIED
    assert event.attributes[names.ATTR_PREDECESSOR_OPERATIONS] == ("doomed",)
    assert event.attributes[names.ATTR_PREDECESSOR_LAST_RSS] == 123 << 20
    assert spans[0].attributes[names.ATTR_FLIGHT_RECORDER_PATH] == str(path)
    assert sum("the previous process died" in record.getMessage() for record in caplog.records) == 1
