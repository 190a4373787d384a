"""MemoryMonitor: levels with hysteresis, one alert per crossing, faster sampling, callbacks, the
thread's start and stop, the default monitor, and real processes growing and forking."""

from __future__ import annotations

import logging
import threading

import psutil
import pytest
from _children import MB
from _procfs import ProcDir
from conftest import wait_for

from reer_otel_memory import ConfigurationError, MemoryLevel, MemoryMonitor, MemoryTracker
from reer_otel_memory import config as config_module
from reer_otel_memory.monitoring import monitor as monitor_module

OK, ALERT, CLEANUP, CRITICAL = MemoryLevel.OK, MemoryLevel.ALERT, MemoryLevel.CLEANUP, MemoryLevel.CRITICAL


def make_monitor(proc: ProcDir, **kwargs) -> MemoryMonitor:
    """100 / 200 / 300 MB, a private tracker, no cooldown unless given."""
    kwargs.setdefault("cleanup_cooldown_s", 3600.0)
    return MemoryMonitor(100, 300, 200, 30, probe=proc.probe, tracker=MemoryTracker(max_snapshots=50, probe=proc.probe), **kwargs)


# --- levels and hysteresis -------------------------------------------------------------------


def test_level_rises_at_each_threshold_and_counts_each_crossing_once(proc):
    monitor = make_monitor(proc)
    seen = []
    for rss_mb in (50, 99.9, 100, 150, 200, 250, 300, 400):
        proc.set_rss(rss_mb * MB)
        snapshot = monitor.sample_once()
        seen.append((snapshot.level, snapshot.previous_level, snapshot.crossed))
    assert [level for level, _, _ in seen] == [OK, OK, ALERT, ALERT, CLEANUP, CLEANUP, CRITICAL, CRITICAL]
    assert [crossed for _, _, crossed in seen] == [False, False, True, False, True, False, True, False]
    assert seen[2][1] is OK and seen[4][1] is ALERT and seen[6][1] is CLEANUP
    assert monitor.alert_counts == {ALERT: 1, CLEANUP: 1, CRITICAL: 1}
    assert monitor.level is CRITICAL


def test_hovering_within_one_percent_of_a_threshold_does_not_flap(proc, caplog):
    monitor = make_monitor(proc)
    proc.set_rss(50 * MB)
    monitor.sample_once()
    caplog.set_level(logging.INFO, logger="reer_otel_memory.monitoring.monitor")
    levels = []
    for step in range(40):
        proc.set_rss((100 * MB) * (1.01 if step % 2 == 0 else 0.99))
        levels.append(monitor.sample_once().level)
    assert levels == [ALERT] * 40
    assert monitor.alert_counts[ALERT] == 1
    crossing_lines = [r for r in caplog.records if "memory level" in r.getMessage()]
    assert len(crossing_lines) == 1, [r.getMessage() for r in crossing_lines]
    assert "reached the alert threshold of 100.0 MB" in crossing_lines[0].getMessage()


def test_a_level_is_left_only_below_its_margin_and_crossing_again_counts_again(proc):
    monitor = make_monitor(proc)
    proc.set_rss(210 * MB)
    assert monitor.sample_once().level is CLEANUP
    proc.set_rss(191 * MB)  # under 200 MB, above 200 - 5%
    assert monitor.sample_once().level is CLEANUP
    proc.set_rss(189 * MB)  # below the margin: down to the level the RSS is in
    snapshot = monitor.sample_once()
    assert (snapshot.level, snapshot.previous_level, snapshot.crossed) == (ALERT, CLEANUP, True)
    proc.set_rss(40 * MB)  # from alert straight to ok
    assert monitor.sample_once().level is OK
    proc.set_rss(205 * MB)
    assert monitor.sample_once().level is CLEANUP
    assert monitor.alert_counts == {ALERT: 2, CLEANUP: 2, CRITICAL: 0}


def test_a_jump_counts_every_threshold_it_passes(proc, telemetry):
    monitor = make_monitor(proc)  # its instruments exist from here on
    before = {level: telemetry.metric_value("reer.memory.alerts", level=level.value) for level in (ALERT, CLEANUP, CRITICAL)}
    proc.set_rss(500 * MB)
    snapshot = monitor.sample_once()
    assert (snapshot.level, snapshot.previous_level, snapshot.crossed) == (CRITICAL, OK, True)
    assert monitor.alert_counts == {ALERT: 1, CLEANUP: 1, CRITICAL: 1}
    for level in (ALERT, CLEANUP, CRITICAL):
        assert telemetry.metric_value("reer.memory.alerts", level=level.value) == before[level] + 1


def test_hysteresis_share_is_a_parameter(proc):
    monitor = make_monitor(proc, hysteresis_share=0.0)
    proc.set_rss(100 * MB)
    assert monitor.sample_once().level is ALERT
    proc.set_rss(100 * MB - 4096)
    assert monitor.sample_once().level is OK
    with pytest.raises(ValueError, match=r"hysteresis_share=1\.5"):
        make_monitor(proc, hysteresis_share=1.5)


def test_samples_are_recorded_in_the_tracker(proc):
    monitor = make_monitor(proc)
    proc.set_rss(120 * MB)
    snapshot = monitor.sample_once()
    assert monitor.tracker.snapshots[-1] == snapshot
    assert snapshot.operation is None and snapshot.rss_bytes == 120 * MB
    assert snapshot.process_memory_mb == pytest.approx(120.0)


# --- configuration ----------------------------------------------------------------------------


def test_arguments_override_and_omitted_ones_come_from_the_process_configuration(proc):
    config_module.setup_memory_limits(alert_mb=400, cleanup_mb=600, critical_mb=800, monitoring_interval=12)
    monitor = MemoryMonitor(critical_threshold_mb=900, probe=proc.probe)
    assert (monitor.alert_threshold_mb, monitor.cleanup_threshold_mb, monitor.critical_threshold_mb) == (400, 600, 900)
    assert monitor.monitoring_interval == 12
    assert monitor.config.sources["critical"].startswith("code critical_threshold_mb=900")
    # It follows later changes to the process configuration, keeping its own argument.
    config_module.setup_memory_limits(alert_mb=450, monitoring_interval=3)
    assert (monitor.alert_threshold_mb, monitor.critical_threshold_mb, monitor.monitoring_interval) == (450, 900, 3)


def test_a_monitor_given_a_config_does_not_follow_the_process_configuration(proc):
    config = config_module.load_config({"REER_MEMORY_ALERT_MB": "10", "REER_MEMORY_CLEANUP_MB": "20", "REER_MEMORY_CRITICAL_MB": "30"})
    monitor = MemoryMonitor(config=config, probe=proc.probe)
    config_module.setup_memory_limits(alert_mb=5)
    assert monitor.alert_threshold_mb == 10


def test_percent_thresholds_are_shares_of_the_effective_limit(proc):
    monitor = MemoryMonitor("10%", "30%", "20%", probe=proc.probe)
    limit_bytes = monitor.config.limit.bytes
    assert monitor.config.alert_bytes == int(limit_bytes * 0.10)
    assert monitor.config.critical_bytes == int(limit_bytes * 0.30)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alert_threshold_mb": -1}, r"alert_threshold_mb=-1: expected a positive number of MB"),
        ({"critical_threshold_mb": "lots"}, r"critical_threshold_mb='lots'"),
        ({"monitoring_interval": 0}, r"monitoring_interval=0: expected a positive number of seconds"),
        (
            {"alert_threshold_mb": 500, "cleanup_threshold_mb": 400, "critical_threshold_mb": 900},
            r"alert_threshold_mb=500 MB is above cleanup_threshold_mb=400 MB",
        ),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(proc, kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        MemoryMonitor(probe=proc.probe, **kwargs)


def test_setting_a_threshold_attribute_validates_and_applies(proc):
    monitor = make_monitor(proc)
    monitor.alert_threshold_mb = 150
    assert monitor.config.alert_bytes == 150 * MB
    with pytest.raises(ConfigurationError, match=r"critical_threshold_mb=100 MB"):
        monitor.critical_threshold_mb = 100
    assert monitor.critical_threshold_mb == 300


def test_sampling_is_faster_above_the_alert_level(proc):
    monitor = make_monitor(proc)
    assert monitor.next_wait_s() == 30
    proc.set_rss(150 * MB)
    monitor.sample_once()
    assert monitor.next_wait_s() == 3.0
    monitor.monitoring_interval = 2
    assert monitor.next_wait_s() == 0.5  # a tenth would be 0.2 s: never below 0.5 s
    monitor.monitoring_interval = 0.2
    assert monitor.next_wait_s() == 0.2  # never slower than the interval itself


# --- callbacks and the thread ----------------------------------------------------------------


def test_a_raising_callback_is_logged_and_the_monitor_keeps_sampling(proc, caplog):
    monitor = make_monitor(proc)
    monitor.monitoring_interval = 0.1
    good_calls = []

    def broken(snapshot):
        raise RuntimeError("callback bug")

    monitor.add_callback(broken)
    monitor.add_callback(good_calls.append)
    caplog.set_level(logging.ERROR, logger="reer_otel_memory.monitoring.monitor")
    monitor.start_monitoring()
    try:
        wait_for(lambda: len(good_calls) >= 5, message="five samples after a raising callback")
        assert monitor.is_running
    finally:
        monitor.stop_monitoring()
    failures = [r for r in caplog.records if "callback" in r.getMessage() and "raised" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None and "callback bug" in str(failures[0].exc_info[1])


def test_add_callback_refuses_a_non_callable_and_remove_callback_reports(proc):
    monitor = make_monitor(proc)
    with pytest.raises(TypeError, match=r"add_callback\(callback=42\)"):
        monitor.add_callback(42)
    calls = []
    monitor.add_callback(calls.append)
    assert monitor.remove_callback(calls.append) is True
    assert monitor.remove_callback(calls.append) is False
    monitor.sample_once()
    assert calls == []


def test_stop_while_a_sample_is_running_waits_for_it_and_ends_the_thread(proc):
    monitor = make_monitor(proc)
    entered, release = threading.Event(), threading.Event()
    calls = []

    def slow_callback(snapshot):
        calls.append(snapshot)
        entered.set()
        release.wait(10)

    monitor.add_callback(slow_callback)
    monitor.start_monitoring()
    thread = monitor._run.thread
    assert entered.wait(10)
    stopper = threading.Thread(target=monitor.stop_monitoring)
    stopper.start()
    wait_for(lambda: not monitor.is_running or monitor._run is None, message="stop requested")
    release.set()
    stopper.join(10)
    assert not stopper.is_alive()
    assert not thread.is_alive()
    assert not monitor.is_running
    assert len(calls) == 1  # the sample in progress finished; none began after stop


def test_stop_does_not_wait_for_the_interval(proc):
    monitor = make_monitor(proc)
    monitor.monitoring_interval = 3600
    monitor.start_monitoring()
    wait_for(lambda: monitor.sample_count >= 1, message="first sample")
    thread = monitor._run.thread
    monitor.stop_monitoring(timeout_s=5)
    # A thread sleeping out its hour would still be alive after a 5 s join.
    assert not thread.is_alive()
    monitor.start_monitoring()  # and it can start again
    wait_for(lambda: monitor.sample_count >= 2, message="sample after restart")
    monitor.stop_monitoring()


def test_a_callback_may_stop_its_own_monitor(proc):
    monitor = make_monitor(proc)
    monitor.add_callback(lambda snapshot: monitor.stop_monitoring())
    monitor.start_monitoring()
    wait_for(lambda: not monitor.is_running, message="monitor stopped by its callback")


def test_threshold_changes_wake_a_waiting_thread(proc):
    monitor = make_monitor(proc)
    monitor.monitoring_interval = 3600
    monitor.start_monitoring()
    try:
        wait_for(lambda: monitor.sample_count >= 1, message="first sample")
        proc.set_rss(150 * MB)
        monitor.alert_threshold_mb = 120
        wait_for(lambda: monitor.level is ALERT, message="a sample against the new threshold")
    finally:
        monitor.stop_monitoring()


# --- the default monitor ----------------------------------------------------------------------


def test_the_default_monitor_is_one_per_process_and_importable_under_its_spec_name():
    from reer_otel_memory import _memory_monitor, get_memory_monitor

    assert _memory_monitor is get_memory_monitor() is monitor_module._memory_monitor
    assert _memory_monitor.alert_threshold_mb == config_module.get_config().alert_mb
    assert callable(_memory_monitor._trigger_emergency_cleanup)


def test_a_bad_environment_logs_one_error_line_and_uses_the_defaults(children):
    child = children.start(
        """
        import json, logging
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
        from reer_otel_memory import _memory_monitor as monitor
        print(json.dumps({"alert_mb": monitor.alert_threshold_mb, "critical_mb": monitor.critical_threshold_mb}))
        """,
        env={"REER_MEMORY_ALERT_MB": "lots", "REER_MEMORY_CRITICAL_MB": "900"},
    )
    report = child.message()
    assert report == {"alert_mb": 1000.0, "critical_mb": 2000.0}
    child.wait()
    errors = [line for line in child.stderr_lines if line.startswith("ERROR")]
    assert len(errors) == 1, child.stderr
    assert "REER_MEMORY_ALERT_MB='lots'" in errors[0] and "default" in errors[0]


GROWING_CHILD = """
import gc, json, logging, mmap, sys, threading
gc.disable()  # the garbage cycles below must wait for the monitor's cleanup
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
from reer_otel_memory import PROBE, get_memory_monitor
from reer_otel_memory.testing import capture_telemetry

MB = 1 << 20
PAGE = mmap.PAGESIZE


class Node:
    pass


def garbage_cycles(count, payload_bytes):
    for _ in range(count):
        node = Node()
        node.self = node
        node.payload = b"g" * payload_bytes


held = []


def hold(size):
    # Anonymous mappings: every page is touched on allocation and returned on close, so RSS
    # moves by exactly what is held.
    block = mmap.mmap(-1, size)
    for offset in range(0, size, PAGE):
        block[offset] = 1
    held.append(block)


def settle_at(target):
    for _ in range(100_000):
        rss = PROBE.rss_bytes()
        if rss < target - 64 * 1024:
            hold(128 * 1024)
        elif rss > target + 64 * 1024 and held:
            held.pop().close()
        else:
            return
    raise SystemExit(f"RSS did not settle at {target}")


with capture_telemetry() as telemetry:
    monitor = get_memory_monitor()
    samples = []
    new_sample = threading.Condition()

    def on_sample(snapshot):
        with new_sample:
            samples.append(snapshot)
            new_sample.notify_all()

    def after_two_samples():
        # The first sample may have read RSS before the last change; the second cannot.
        with new_sample:
            wanted = len(samples) + 2
            if not new_sample.wait_for(lambda: len(samples) >= wanted, timeout=20):
                raise SystemExit("monitor stopped sampling")
        return samples[-1]

    def gauge(name, **attributes):
        return telemetry.metric_value(name, **attributes)

    def report(phase, snapshot):
        print(json.dumps({"phase": phase, "rss": snapshot.rss_bytes, "level": snapshot.level.value,
                          "level_gauge": gauge("reer.memory.level")}))

    garbage_cycles(3, MB)
    monitor.add_callback(on_sample)
    monitor.start_monitoring()
    report("start", after_two_samples())
    thresholds = [monitor.config.alert_bytes, monitor.config.cleanup_bytes, monitor.config.critical_bytes]
    settle_at(thresholds[0] - 4 * MB)
    while monitor.level.value != "critical":
        if PROBE.rss_bytes() > thresholds[2] + 32 * MB:
            raise SystemExit("RSS passed the critical threshold without the monitor seeing it")
        hold(4 * MB)  # 5 steps or so between two thresholds, 20 MiB apart
        report("grow", after_two_samples())
    critical = thresholds[2]
    for _ in range(6):
        settle_at(critical * 1.009)
        report("hover", after_two_samples())
        settle_at(critical * 0.991)
        report("hover", after_two_samples())
    monitor.stop_monitoring()
    print(json.dumps({
        "phase": "done",
        "alert_counts": {level.value: count for level, count in monitor.alert_counts.items()},
        "cleanup_counts": monitor.cleanup_counts,
        "freed_bytes_total": monitor.freed_bytes_total,
        "alerts_metric": {level: gauge("reer.memory.alerts", level=level) for level in ("alert", "cleanup", "critical")},
        "cleanups_metric": {t: gauge("reer.memory.cleanups", trigger=t) for t in ("threshold", "critical", "emergency", "manual")},
        "freed_metric": gauge("reer.memory.cleanup.freed"),
        "thresholds": thresholds,
    }))
"""


@pytest.mark.slow
def test_a_growing_process_climbs_through_every_level_counting_each_crossing_once(children):
    baseline = children.start(
        "import json; from reer_otel_memory import PROBE; from reer_otel_memory.monitoring import monitor; print(json.dumps({'rss': PROBE.rss_bytes()}))"
    )
    base_mb = baseline.message()["rss"] // MB
    env = {
        "REER_MEMORY_ALERT_MB": str(base_mb + 40),
        "REER_MEMORY_CLEANUP_MB": str(base_mb + 60),
        "REER_MEMORY_CRITICAL_MB": str(base_mb + 80),
        "REER_MEMORY_MONITORING_INTERVAL": "0.1",
    }
    child = children.start(GROWING_CHILD, env=env)
    steps = []
    while True:
        message = child.message(timeout_s=60)
        if message["phase"] == "done":
            done = message
            break
        steps.append(message)
    assert child.wait() == 0, child.stderr
    assert done["thresholds"] == [(base_mb + 40) * MB, (base_mb + 60) * MB, (base_mb + 80) * MB]

    levels = [step["level"] for step in steps]
    assert levels[0] == "ok"
    order = ["ok", "alert", "cleanup", "critical"]
    assert [order.index(level) for level in levels] == sorted(order.index(level) for level in levels), levels
    assert {"alert", "cleanup", "critical"} <= set(levels)
    # The gauge, read at collection time, follows the level.
    assert all(step["level_gauge"] == order.index(step["level"]) for step in steps), steps
    # Hovering within 1% of the critical threshold keeps the level.
    hover = [step for step in steps if step["phase"] == "hover"]
    assert len(hover) == 12 and all(step["level"] == "critical" for step in hover)
    critical_bytes = done["thresholds"][2]
    assert any(step["rss"] < critical_bytes for step in hover) and any(step["rss"] >= critical_bytes for step in hover)

    assert done["alert_counts"] == {"alert": 1, "cleanup": 1, "critical": 1}
    assert done["alerts_metric"] == {"alert": 1, "cleanup": 1, "critical": 1}
    crossing_logs = [line for line in child.stderr_lines if "reached the" in line]
    assert len(crossing_logs) == 3, child.stderr
    # Reaching cleanup cleaned up (the garbage cycles held 3 MB), reaching critical again.
    assert done["cleanup_counts"]["threshold"] == 1 and done["cleanup_counts"]["critical"] == 1
    assert done["cleanups_metric"] == {"threshold": 1, "critical": 1, "emergency": 0, "manual": 0}
    assert done["freed_bytes_total"] > 0
    assert done["freed_metric"] == done["freed_bytes_total"]


FORKING_CHILD = """
import json, mmap, os, sys, threading
import psutil
from reer_otel_memory import PROBE, start_memory_monitoring

MB = 1 << 20
monitor = start_memory_monitoring()


def wait_samples(count):
    # Polled: the child's own pace, not the test's synchronisation (the test reads its output).
    target = monitor.sample_count + count
    pause = threading.Event()
    for _ in range(2000):
        if monitor.sample_count >= target:
            return
        pause.wait(0.01)
    raise SystemExit("the monitor did not sample")


wait_samples(2)
monitor.cleanup()
parent_rss = PROBE.rss_bytes()
pid = os.fork()
if pid == 0:
    block = mmap.mmap(-1, 64 * MB)
    for offset in range(0, 64 * MB, mmap.PAGESIZE):
        block[offset] = 1
    wait_samples(3)
    snapshot = monitor.last_snapshot
    print(json.dumps({
        "role": "child", "running": monitor.is_running, "cleanup_count": monitor.cleanup_count,
        "sample_rss": snapshot.rss_bytes, "own_rss": psutil.Process().memory_info().rss, "parent_rss": parent_rss,
    }), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
print(json.dumps({"role": "parent", "running": monitor.is_running, "cleanup_count": monitor.cleanup_count}), flush=True)
"""


def test_a_running_monitor_keeps_running_in_a_forked_child_and_reports_its_memory(children):
    child = children.start(FORKING_CHILD, env={"REER_MEMORY_MONITORING_INTERVAL": "0.1"})
    forked = child.message(lambda m: m["role"] == "child")
    parent = child.message(lambda m: m["role"] == "parent")
    assert child.wait() == 0, child.stderr
    assert parent == {"role": "parent", "running": True, "cleanup_count": 1}
    assert forked["running"] is True
    assert forked["cleanup_count"] == 0  # a new process: its counters start again
    assert forked["sample_rss"] >= forked["parent_rss"] + 60 * MB
    assert forked["sample_rss"] == pytest.approx(forked["own_rss"], rel=0.10)


def test_the_default_monitor_reports_this_process(children):
    child = children.start(
        "import json, os; from reer_otel_memory import start_memory_monitoring as s\n"
        "m = s()\n"
        "import threading; e = threading.Event()\n"
        "while m.last_snapshot is None: e.wait(0.01)\n"
        "print(json.dumps({'rss': m.last_snapshot.rss_bytes, 'pid': os.getpid()}))\n"
        "import sys; sys.stdin.readline()\n"
    )
    report = child.message()
    outside_rss = psutil.Process(report["pid"]).memory_info().rss
    child.send("")
    assert report["rss"] == pytest.approx(outside_rss, rel=0.10)


# --- the thread cannot die -------------------------------------------------------------------


class _FailingTracker(MemoryTracker):
    """A tracker whose every record raises, as a full disk or a bug in a hook would."""

    def record(self, snapshot):
        raise RuntimeError("tracker is broken")


class _WaitFailingMonitor(MemoryMonitor):
    """A monitor whose wait time cannot be computed."""

    def next_wait_s(self) -> float:
        raise RuntimeError("no wait time")


def test_a_failing_sample_is_logged_once_and_the_thread_keeps_running(proc, caplog):
    monitor = MemoryMonitor(100, 300, 200, 0.1, probe=proc.probe, tracker=_FailingTracker(probe=proc.probe))
    with caplog.at_level(logging.ERROR, logger=monitor_module.__name__):
        monitor.start_monitoring()
        try:
            wait_for(lambda: monitor.sample_count >= 3, message="the monitor stopped sampling")
            assert monitor.is_running
            proc.break_statm()  # now the probe fails too
            failures = monitor._loop_failures
            wait_for(lambda: monitor._loop_failures >= failures + 2, message="the monitor stopped trying")
            assert monitor.is_running
        finally:
            monitor.stop_monitoring()
    lines = [r.getMessage() for r in caplog.records if "memory monitor" in r.getMessage()]
    assert lines == ["memory monitor sample failed; the monitor carries on: RuntimeError('tracker is broken')"]
    assert not monitor.is_running


def test_a_failing_wait_is_logged_once_and_the_thread_keeps_running(proc, caplog, monkeypatch):
    # The fallback wait is the default interval: make it short so the test sees several rounds.
    monkeypatch.setattr(config_module, "DEFAULT_MONITORING_INTERVAL_S", 0.1)
    monitor = _WaitFailingMonitor(100, 300, 200, 0.1, probe=proc.probe, tracker=MemoryTracker(probe=proc.probe))
    with caplog.at_level(logging.ERROR, logger=monitor_module.__name__):
        monitor.start_monitoring()
        try:
            wait_for(lambda: monitor.sample_count >= 3, message="the monitor stopped after a failed wait")
            assert monitor.is_running
        finally:
            monitor.stop_monitoring()
    lines = [r.getMessage() for r in caplog.records if "memory monitor" in r.getMessage()]
    assert lines == ["memory monitor wait failed; the monitor carries on: RuntimeError('no wait time')"]


@pytest.mark.parametrize("interval_s", [1e10, float("inf"), float("nan")])
def test_a_config_built_with_an_unusable_interval_does_not_kill_the_thread(proc, interval_s):
    base = config_module.load_config({}, limit=config_module.MemoryLimit(8 << 30, "test"))
    config = config_module.MemoryConfig(base.alert_bytes, base.cleanup_bytes, base.critical_bytes, interval_s, base.limit)
    monitor = MemoryMonitor(config=config, probe=proc.probe, tracker=MemoryTracker(probe=proc.probe))
    assert 0.1 <= monitor.next_wait_s() <= 86400
    monitor.start_monitoring()
    try:
        wait_for(lambda: monitor.sample_count >= 1)
        monitor._trigger_emergency_cleanup()  # wakes the thread: it must still be there to answer
        wait_for(lambda: monitor.cleanup_counts["emergency"] == 1, message="the monitor thread died")
        assert monitor.is_running
    finally:
        monitor.stop_monitoring()


def test_an_out_of_range_interval_in_code_leaves_a_running_monitor_running(proc):
    monitor = MemoryMonitor(100, 300, 200, probe=proc.probe, tracker=MemoryTracker(probe=proc.probe))
    monitor.start_monitoring()
    try:
        wait_for(lambda: monitor.sample_count >= 1)
        with pytest.raises(ConfigurationError, match=r"monitoring_interval=10000000000.0: expected a positive number of seconds from 0.1 to 86400"):
            config_module.setup_memory_limits(monitoring_interval=1e10)
        with pytest.raises(ConfigurationError, match=r"monitoring_interval=1e-09"):
            monitor.configure(monitoring_interval=1e-9)
        monitor._trigger_emergency_cleanup()
        wait_for(lambda: monitor.cleanup_counts["emergency"] == 1, message="the monitor thread died")
        assert monitor.is_running and monitor.monitoring_interval == 30
    finally:
        monitor.stop_monitoring()
