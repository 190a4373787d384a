"""MemoryResourceManager: cleanup callbacks, weak holding, size limits, pressure release, metrics."""

from __future__ import annotations

import gc
import logging
import threading
import weakref

import pytest

from reer_otel_memory import MemoryResourceManager, get_resource_manager, run_cleanup
from reer_otel_memory.ml.resources import CLEANUP_HOOK_NAME

MB = 1024 * 1024


class Resource:
    def __init__(self, size_bytes: int = 0) -> None:
        self.buffer = bytearray(size_bytes)
        self.closed = 0

    def cleanup(self) -> None:
        self.closed += 1
        self.buffer = bytearray()


def test_cleanup_all_runs_each_callback_once_and_returns_the_number_cleaned(telemetry):
    manager = MemoryResourceManager()
    bare, with_method, with_argument = Resource(), Resource(), Resource()
    received = []
    manager.register_resource("bare", bare)
    manager.register_resource("method", with_method, cleanup_callback=with_method.cleanup, memory_limit_mb=100.0)
    manager.register_resource("argument", with_argument, cleanup_callback=lambda resource: received.append(resource))
    assert len(manager) == 3 and "method" in manager

    assert manager.cleanup_all_resources() == 3
    assert with_method.closed == 1 and received == [with_argument]
    assert len(manager) == 0 and manager.get_resource("bare") is None
    assert manager.cleanup_all_resources() == 0
    assert telemetry.metric_value("reer.memory.resource.cleanups", trigger="manual") == 3


def test_cleanup_resource_and_unregister_resource():
    manager = MemoryResourceManager()
    resource = Resource()
    manager.register_resource("r", resource, cleanup_callback=resource.cleanup)
    assert manager.unregister_resource("r") and resource.closed == 0
    assert not manager.unregister_resource("r") and not manager.cleanup_resource("r")
    manager.register_resource("r", resource, cleanup_callback=resource.cleanup)
    assert manager.cleanup_resource("r") and resource.closed == 1
    assert not manager.cleanup_resource("r")


def test_resources_are_held_weakly_so_owners_decide_their_lifetime():
    manager = MemoryResourceManager()
    owned = Resource(1000)
    manager.register_resource("owned", owned, cleanup_callback=owned.cleanup)  # a bound method: held weakly too
    ref = weakref.ref(owned)
    del owned
    gc.collect()
    assert ref() is None
    assert manager.resource_names() == [] and manager.cleanup_all_resources() == 0

    kept = Resource()
    manager.register_resource("kept", kept, keep_alive=True)
    kept_ref = weakref.ref(kept)
    del kept
    gc.collect()
    assert kept_ref() is not None and manager.get_resource("kept") is kept_ref()

    manager.register_resource("plain", {"rows": [1, 2]})  # a dict cannot be weakly referenced
    stats = manager.get_resource_stats()
    assert stats["kept"]["held"] == "strong" and stats["plain"]["held"] == "strong"
    assert manager.cleanup_all_resources() == 2


def test_sizes_are_estimated_and_limits_enforced_on_check(telemetry):
    gc.collect()
    others = telemetry.metric_value("reer.memory.resources") or 0  # resources of other managers alive
    manager = MemoryResourceManager()
    within, over = Resource(512 * 1024), Resource(2 * MB)
    manager.register_resource("within", within, cleanup_callback=within.cleanup, memory_limit_mb=1.0)
    manager.register_resource("over", over, cleanup_callback=over.cleanup, memory_limit_mb=1.0)
    stats = manager.get_resource_stats()
    assert stats["over"]["size_bytes"] == 2 * MB and stats["over"]["over_limit"]
    assert stats["within"]["size_bytes"] == 512 * 1024 and not stats["within"]["over_limit"]
    assert stats["within"]["memory_limit_bytes"] == MB
    assert telemetry.metric_value("reer.memory.resource.size", resource="over") == 2 * MB
    assert telemetry.metric_value("reer.memory.resources") == others + 2

    assert manager.check_limits() == ["over"]
    assert over.closed == 1 and within.closed == 0 and manager.resource_names() == ["within"]
    assert telemetry.metric_value("reer.memory.resource.cleanups", trigger="limit") == 1

    within.buffer = bytearray(3 * MB)  # grows past its limit after registration
    assert manager.check_limits() == ["within"] and within.closed == 1
    assert telemetry.metric_value("reer.memory.resources") == others


def test_memory_cleanup_releases_only_resources_that_opted_in(telemetry):
    manager = MemoryResourceManager()
    cache, pool = Resource(), Resource()
    manager.register_resource("cache", cache, cleanup_callback=cache.cleanup, release_on_pressure=True)
    manager.register_resource("pool", pool, cleanup_callback=pool.cleanup)  # in use: kept by default

    result = run_cleanup("manual")
    assert CLEANUP_HOOK_NAME in result.hooks_run
    assert cache.closed == 1 and pool.closed == 0
    assert manager.resource_names() == ["pool"]
    assert telemetry.metric_value("reer.memory.resource.cleanups", trigger="pressure") == 1
    manager.cleanup_all_resources()


def test_failing_callbacks(caplog):
    manager = MemoryResourceManager()
    good = Resource()

    def broken() -> None:
        raise RuntimeError("socket already closed")

    manager.register_resource("broken", good, cleanup_callback=broken)
    with pytest.raises(RuntimeError, match="socket already closed"):
        manager.cleanup_resource("broken")
    assert "broken" not in manager

    manager.register_resource("broken", good, cleanup_callback=broken)
    manager.register_resource("good", good, cleanup_callback=good.cleanup)
    with caplog.at_level(logging.ERROR, logger="reer_otel_memory.ml.resources"):
        assert manager.cleanup_all_resources() == 1
    assert "cleanup of resource 'broken' failed" in caplog.text
    assert good.closed == 1 and len(manager) == 0


def test_concurrent_registration_and_cleanup_lose_nothing():
    manager = MemoryResourceManager()
    threads_count, per_thread = 4, 200
    resources = [[Resource() for _ in range(per_thread)] for _ in range(threads_count)]
    cleaned = [0] * threads_count
    start = threading.Barrier(threads_count)

    def work(index: int) -> None:
        start.wait()
        for number, resource in enumerate(resources[index]):
            name = f"t{index}-{number}"
            manager.register_resource(name, resource, cleanup_callback=resource.cleanup)
            if number % 2:
                cleaned[index] += manager.cleanup_resource(name)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(cleaned) == threads_count * per_thread // 2
    assert len(manager) == threads_count * per_thread // 2
    assert manager.cleanup_all_resources() == threads_count * per_thread // 2
    assert all(resource.closed == 1 for group in resources for resource in group)


def test_default_manager_is_shared():
    assert get_resource_manager() is get_resource_manager()


def test_bad_inputs_raise_clear_errors():
    manager = MemoryResourceManager()
    resource = Resource()
    with pytest.raises(TypeError, match=r"name=''"):
        manager.register_resource("", resource)
    with pytest.raises(TypeError, match=r"'r', resource=None"):
        manager.register_resource("r", None)
    with pytest.raises(TypeError, match=r"cleanup_callback='close'.*callable"):
        manager.register_resource("r", resource, cleanup_callback="close")
    with pytest.raises(TypeError, match=r"cleanup_callback=.*no argument or the resource"):
        manager.register_resource("r", resource, cleanup_callback=lambda a, b: None)
    for limit in (-1, 0, float("nan"), "100", 1e308, 10**400):
        with pytest.raises(ValueError, match=r"memory_limit_mb=.*expected a positive number of MB up to 1073741824 \(1 PiB\)"):
            manager.register_resource("r", resource, memory_limit_mb=limit)
    with pytest.raises(ValueError, match=r"max_size_objects=0"):
        MemoryResourceManager(max_size_objects=0)
    assert len(manager) == 0
