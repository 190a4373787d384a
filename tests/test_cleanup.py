"""Cleanup: hooks, garbage collection that really frees RSS, the monitor's cooldown and counters."""

from __future__ import annotations

import gc
import logging
import threading

import pytest
from _children import MB
from _procfs import ProcDir
from conftest import wait_for

from reer_otel_memory import MemoryMonitor, MemoryTracker, register_cleanup_hook, run_cleanup, unregister_cleanup_hook
from reer_otel_memory.monitoring.cleanup import cleanup_hook_names


@pytest.fixture
def proc(tmp_path):
    proc_dir = ProcDir(tmp_path)
    yield proc_dir
    proc_dir.close()


@pytest.fixture
def hooks():
    """Names registered in the test are removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        unregister_cleanup_hook(name)


def make_monitor(proc: ProcDir, cooldown_s: float) -> MemoryMonitor:
    tracker = MemoryTracker(max_snapshots=20, probe=proc.probe)
    return MemoryMonitor(100, 300, 200, 30, probe=proc.probe, tracker=tracker, cleanup_cooldown_s=cooldown_s)


class _Cycle:
    pass


def test_cleanup_frees_memory_held_by_garbage_cycles():
    was_enabled = gc.isenabled()
    gc.disable()  # the cycles must still be there when the cleanup runs
    try:
        for _ in range(8):
            node = _Cycle()
            node.self = node
            node.payload = b"c" * MB
        del node
        result = run_cleanup()
    finally:
        if was_enabled:
            gc.enable()
    assert result.collected_objects >= 8
    assert result.freed_bytes >= 4 * MB
    assert result.rss_after_bytes < result.rss_before_bytes
    assert result.trigger == "manual" and result.duration_s > 0


def test_hooks_run_in_order_before_collection_and_a_failing_one_is_skipped(hooks, caplog):
    ran = []
    hooks.extend(["first", "broken", "last"])
    register_cleanup_hook("first", lambda: ran.append("first"))
    register_cleanup_hook("broken", lambda: 1 / 0)
    register_cleanup_hook("last", lambda: ran.append("last"))
    assert cleanup_hook_names()[-3:] == ["first", "broken", "last"]
    with caplog.at_level(logging.ERROR, logger="reer_otel_memory.monitoring.cleanup"):
        result = run_cleanup()
    assert ran == ["first", "last"]
    assert result.hooks_run[-2:] == ["first", "last"] and result.hooks_failed == ["broken"]
    assert "cleanup hook 'broken' failed" in caplog.text
    assert unregister_cleanup_hook("broken") is True
    assert unregister_cleanup_hook("broken") is False


def test_bad_hook_and_bad_trigger_are_refused():
    with pytest.raises(TypeError, match=r"register_cleanup_hook\('x', hook=3\): expected a callable"):
        register_cleanup_hook("x", 3)
    with pytest.raises(ValueError, match=r"trigger='sometimes': expected one of threshold, critical, emergency, manual"):
        run_cleanup("sometimes")


def test_cleanup_runs_at_the_cleanup_level_then_waits_out_its_cooldown(proc):
    monitor = make_monitor(proc, cooldown_s=0.5)
    proc.set_rss(250 * MB)
    monitor.sample_once()
    assert monitor.cleanup_counts["threshold"] == 1
    monitor.sample_once()
    monitor.sample_once()
    assert monitor.cleanup_count == 1  # within the cooldown: no storm
    # Reaching a higher level cleans up at once, cooldown or not.
    proc.set_rss(350 * MB)
    monitor.sample_once()
    assert monitor.cleanup_counts["critical"] == 1
    monitor.sample_once()
    assert monitor.cleanup_count == 2
    # Once the cooldown has passed, a process still critical is cleaned up again.
    wait_for(lambda: monitor.sample_once() and monitor.cleanup_counts["critical"] == 2, message="cleanup after the cooldown")


def test_no_automatic_cleanup_below_the_cleanup_level(proc):
    monitor = make_monitor(proc, cooldown_s=0)
    for rss_mb in (50, 150, 199):
        proc.set_rss(rss_mb * MB)
        monitor.sample_once()
    assert monitor.cleanup_count == 0


def test_manual_cleanup_ignores_the_cooldown_and_is_counted(proc, telemetry):
    manual_before = telemetry.metric_value("reer.memory.cleanups", trigger="manual")
    freed_before = telemetry.metric_value("reer.memory.cleanup.freed")
    monitor = make_monitor(proc, cooldown_s=3600)
    first = monitor.cleanup()
    second = monitor.cleanup()
    assert (first.trigger, second.trigger) == ("manual", "manual")
    assert monitor.cleanup_counts["manual"] == 2 and monitor.last_cleanup is second
    assert telemetry.metric_value("reer.memory.cleanups", trigger="manual") == manual_before + 2
    assert telemetry.metric_value("reer.memory.cleanup.freed") == freed_before + first.freed_bytes + second.freed_bytes
    with pytest.raises(ValueError, match=r"trigger='soon'"):
        monitor.cleanup("soon")


def test_freed_bytes_are_what_the_probe_saw_fall(proc, hooks):
    monitor = make_monitor(proc, cooldown_s=0)
    proc.set_rss(250 * MB)
    hooks.append("drop-cache")
    register_cleanup_hook("drop-cache", lambda: proc.set_rss(230 * MB))
    result = monitor.cleanup()
    assert result.freed_bytes == 20 * MB
    assert monitor.freed_bytes_total == 20 * MB


def test_an_emergency_request_without_a_thread_cleans_up_in_the_caller(proc):
    monitor = make_monitor(proc, cooldown_s=3600)
    result = monitor._trigger_emergency_cleanup()
    assert result is not None and result.trigger == "emergency"
    assert monitor.cleanup_counts["emergency"] == 1
    # From a signal handler it never cleans up in place: the request waits for the thread.
    assert monitor._trigger_emergency_cleanup(from_signal=True) is None
    assert monitor.cleanup_counts["emergency"] == 1
    monitor.monitoring_interval = 3600
    monitor.start_monitoring()
    try:
        wait_for(lambda: monitor.cleanup_counts["emergency"] == 2, message="pending emergency cleanup on the thread")
    finally:
        monitor.stop_monitoring()


def test_an_emergency_request_wakes_the_thread_which_runs_the_cleanup(proc, hooks):
    monitor = make_monitor(proc, cooldown_s=3600)
    monitor.monitoring_interval = 3600
    threads = []
    hooks.append("which-thread")
    register_cleanup_hook("which-thread", lambda: threads.append(threading.current_thread().name))
    monitor.start_monitoring()
    try:
        wait_for(lambda: monitor.sample_count >= 1, message="first sample")
        assert monitor._trigger_emergency_cleanup() is None  # returns at once
        wait_for(lambda: monitor.cleanup_counts["emergency"] == 1, message="emergency cleanup")
    finally:
        monitor.stop_monitoring()
    assert threads == ["reer-memory-monitor"]
