"""Cleanup: hooks, garbage collection that really frees RSS, the monitor's cooldown and counters."""

from __future__ import annotations

import functools
import gc
import logging
import os
import threading
import time
import weakref

import numpy as np
import pytest
from _children import MB
from _forks import in_forked_child, while_held
from _procfs import ProcDir
from conftest import wait_for

from reer_otel_memory import MemoryMonitor, MemoryOptimizer, MemoryTracker, register_cleanup_hook, run_cleanup, unregister_cleanup_hook
from reer_otel_memory.monitoring import monitor as monitor_module
from reer_otel_memory.monitoring.cleanup import KIND_CACHE, CleanupRegistry, cleanup_hook_names, cleanup_registry, release_memory


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


class MonitorClock:
    """The monitor module's ``time``, with a monotonic clock that only the test moves."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def monotonic(self) -> float:
        return self.now_s

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch) -> MonitorClock:
    """The cooldown is measured on this clock, so how long a cleanup takes here does not matter."""
    fake = MonitorClock()
    monkeypatch.setattr(monitor_module, "time", fake)
    return fake


def test_cleanup_runs_at_the_cleanup_level_then_waits_out_its_cooldown(proc, clock):
    monitor = make_monitor(proc, cooldown_s=60)
    proc.set_rss(250 * MB)
    monitor.sample_once()
    assert monitor.cleanup_counts["threshold"] == 1
    clock.now_s += 59
    monitor.sample_once()
    monitor.sample_once()
    assert monitor.cleanup_count == 1  # within the cooldown: no storm
    # Reaching a higher level cleans up at once, cooldown or not.
    proc.set_rss(350 * MB)
    monitor.sample_once()
    assert monitor.cleanup_counts["critical"] == 1
    clock.now_s += 59
    monitor.sample_once()
    assert monitor.cleanup_count == 2
    # Once the cooldown has passed, a process still critical is cleaned up again.
    clock.now_s += 2
    monitor.sample_once()
    assert monitor.cleanup_counts["critical"] == 2


def test_no_automatic_cleanup_below_the_cleanup_level(proc):
    monitor = make_monitor(proc, cooldown_s=0)
    for rss_mb in (50, 150, 199):
        proc.set_rss(rss_mb * MB)
        monitor.sample_once()
    assert monitor.cleanup_count == 0


def test_manual_cleanup_ignores_the_cooldown_and_is_counted(proc, telemetry):
    monitor = make_monitor(proc, cooldown_s=3600)  # its instruments exist from here on
    manual_before = telemetry.metric_value("reer.memory.cleanups", trigger="manual")
    freed_before = telemetry.metric_value("reer.memory.cleanup.freed")
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


# --- one registry: hooks and registered caches ---------------------------------------------------


@pytest.fixture
def caches():
    """Caches registered with MemoryOptimizer in the test are unregistered afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        MemoryOptimizer.unregister_cache(name)


def test_a_registry_runs_hooks_in_registration_order_and_replaces_by_name_in_place(caplog):
    registry = CleanupRegistry()
    ran: list[str] = []
    registry.register("a", lambda: ran.append("a"))
    registry.register("b", lambda: 1 / 0)
    registry.register("c", lambda: ran.append("c"), kind=KIND_CACHE)
    registry.register("a", lambda: ran.append("a2"))  # replaced, keeps its place
    assert registry.names() == ["a", "b", "c"]
    assert registry.names(KIND_CACHE) == ["c"]
    with caplog.at_level(logging.ERROR, logger="reer_otel_memory.monitoring.cleanup"):
        done = registry.run()
    assert ran == ["a2", "c"]
    assert (done.run, done.failed) == (["a", "c"], ["b"])
    assert "cleanup hook 'b' failed" in caplog.text
    assert registry.run(KIND_CACHE).run == ["c"]
    assert registry.unregister("c", kind="hook") is False  # the kind must match when given
    assert registry.unregister("c", kind=KIND_CACHE) is True
    assert registry.unregister("c") is False
    with pytest.raises(TypeError, match=r"register\('x', hook=3\): expected a callable"):
        registry.register("x", 3)


def test_the_process_registry_is_the_one_the_module_functions_use(hooks):
    assert cleanup_registry() is cleanup_registry()
    hooks.append("through-the-function")
    register_cleanup_hook("through-the-function", lambda: None)
    assert cleanup_registry().names()[-1] == "through-the-function" == cleanup_hook_names()[-1]


def test_a_registered_cache_is_cleared_by_run_cleanup(caches):
    @functools.lru_cache(maxsize=4)
    def features(key: int) -> np.ndarray:
        return np.ones(32 * MB // 8)  # np.ones writes every page: all of it resident

    embeddings = {"user": np.ones(4 * MB // 8)}
    features(1)
    caches.append(MemoryOptimizer.register_cache(features, name="features"))
    caches.append(MemoryOptimizer.register_cache(embeddings))
    assert [f"cache:{name}" for name in caches] == cleanup_hook_names()[-2:]

    result = run_cleanup()
    assert features.cache_info().currsize == 0 and embeddings == {}
    assert {"cache:features", f"cache:{caches[1]}"} <= set(result.hooks_run)
    assert result.freed_bytes >= 24 * MB  # the 32 MB array went back to the OS


def test_a_registered_cache_is_cleared_by_a_monitor_cleanup(proc, caches):
    monitor = make_monitor(proc, cooldown_s=3600)
    held = {"batch": np.ones(MB // 8)}
    caches.append(MemoryOptimizer.register_cache(held, name="batches"))
    result = monitor.cleanup()
    assert held == {}
    assert "cache:batches" in result.hooks_run and monitor.cleanup_counts["manual"] == 1


def test_a_cache_and_a_hook_of_the_same_name_do_not_replace_each_other(hooks, caches):
    ran: list[str] = []
    hooks.append("model")
    register_cleanup_hook("model", lambda: ran.append("hook"))
    caches.append(MemoryOptimizer.register_cache(lambda: ran.append("cache"), name="model"))
    assert {"model", "cache:model"} <= set(cleanup_hook_names())
    run_cleanup()
    assert sorted(ran) == ["cache", "hook"]
    assert MemoryOptimizer.unregister_cache("cache:model") is False  # a cache's own name, not its hook's
    assert MemoryOptimizer.unregister_cache("model") is True
    assert "cache:model" not in cleanup_hook_names() and "model" in cleanup_hook_names()


def test_unregister_cache_removes_it_from_the_registry():
    name = MemoryOptimizer.register_cache({}, name="short-lived")
    assert "cache:short-lived" in cleanup_hook_names()
    assert MemoryOptimizer.unregister_cache(name) is True
    assert "cache:short-lived" not in cleanup_hook_names()
    assert MemoryOptimizer.unregister_cache(name) is False


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_the_registry_lock_is_held_can_register_and_run_hooks():
    def register_and_run() -> bool:
        ran: list[str] = []
        cache = {"rows": np.ones(MB // 8)}
        register_cleanup_hook("in-child", lambda: ran.append("hook"))
        MemoryOptimizer.register_cache(cache, name="in-child")
        result = run_cleanup()
        ok = ran == ["hook"] and cache == {} and {"in-child", "cache:in-child"} <= set(result.hooks_run)
        return bool(ok and unregister_cleanup_hook("in-child") and MemoryOptimizer.unregister_cache("in-child"))

    with while_held(cleanup_registry()._lock):
        assert in_forked_child(register_and_run) is True
    assert "in-child" not in cleanup_hook_names()  # the child's registrations stayed in the child


# --- release_memory ------------------------------------------------------------------------------


def test_release_memory_measures_around_the_release_and_returns_its_value():
    held = [np.ones(32 * MB // 8)]
    released = release_memory(lambda: held.pop().nbytes, heap=True)
    assert released.value == 32 * MB
    assert released.freed_bytes == released.rss_before_bytes - released.rss_after_bytes >= 24 * MB
    assert released.duration_s > 0
    assert released.heap_before_bytes is None or released.heap_freed_bytes is not None


def test_release_memory_collects_only_when_asked():
    was_enabled = gc.isenabled()
    gc.disable()  # the cycle must still be there when release_memory runs
    try:
        node = _Cycle()
        node.self = node
        alive = weakref.ref(node)
        del node
        kept = release_memory(collect=False, trim=False)
        assert alive() is not None and kept.collected_objects == 0
        assert kept.trimmed is False and kept.value is None and kept.heap_freed_bytes is None
        collected = release_memory()
        assert alive() is None and collected.collected_objects >= 1
    finally:
        if was_enabled:
            gc.enable()
