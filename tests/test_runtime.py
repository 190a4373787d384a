"""The process runtime: typed components built once on first use, one fork rule, one reset."""

from __future__ import annotations

import gc
import os
import threading
import weakref

import pytest
from _forks import in_forked_child, while_held

from reer_otel_memory._runtime import COMPONENTS, FRESH_IN_CHILD, KEPT_ON_RESET, RUNTIME, Runtime
from reer_otel_memory.testing import reset_state

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

DEADLINE_S = 10.0


class Counters:
    """A component that a forked child must see restart from zero."""

    def __init__(self) -> None:
        self.count = 0


class Resettable:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.resets = 0

    def _after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        self.resets += 1


def test_a_component_is_built_once_and_shared_by_threads():
    runtime = Runtime()
    built = []
    barrier = threading.Barrier(8)

    def factory() -> object:
        built.append(1)
        return object()

    seen = []

    def use() -> None:
        barrier.wait(DEADLINE_S)
        seen.append(runtime.get("cleanup_registry", factory))

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    assert len(built) == 1
    assert len({id(thing) for thing in seen}) == 1


def test_a_factory_may_ask_for_another_component():
    runtime = Runtime()
    probe = runtime.get("probe", object)
    tracker = runtime.get("tracker", lambda: ("tracker of", runtime.get("probe", object)))
    assert tracker == ("tracker of", probe)
    assert runtime.probe is probe  # the component is the field
    assert runtime.tracker is tracker


def test_nothing_is_built_until_asked_for():
    runtime = Runtime()
    assert all(getattr(runtime, field) is None for field in COMPONENTS)


def test_a_component_outside_the_declared_fields_is_refused():
    with pytest.raises(AttributeError, match="no_such_component"):
        Runtime().get("no_such_component", object)


def test_every_field_a_fork_rebuilds_or_a_reset_keeps_is_a_component():
    assert FRESH_IN_CHILD <= set(COMPONENTS) and KEPT_ON_RESET <= set(COMPONENTS)


def test_reset_tells_each_component_then_forgets_it():
    runtime = Runtime()
    told: list[str] = []

    class Running:
        def _on_reset(self) -> None:
            told.append("stopped")

    running = runtime.get("auto_explainer", Running)
    probe = runtime.get("probe", object)
    runtime.reset()
    assert told == ["stopped"]
    assert all(getattr(runtime, field) is None for field in COMPONENTS if field not in KEPT_ON_RESET)
    assert runtime.probe is probe  # the one reader of the high-water mark stays
    assert runtime.get("auto_explainer", Running) is not running  # built afresh on next use


def test_reset_state_puts_the_process_back_as_a_fresh_import_left_it(monkeypatch):
    from reer_otel_memory import _telemetry, get_config, get_memory_tracker, memory_context, setup_memory_limits
    from reer_otel_memory.testing import TelemetryCapture

    monkeypatch.delenv("REER_MEMORY_ALERT_THRESHOLD_MB", raising=False)
    setup_memory_limits(alert_mb=123)
    capture = TelemetryCapture()
    _telemetry.configure(capture.tracer_provider, capture.meter_provider)
    with memory_context("before-reset"):
        pass
    tracker = get_memory_tracker()
    reset_state()
    try:
        assert get_config().alert_bytes != 123 * 1024 * 1024  # read again from the environment
        assert _telemetry.current().tracer_provider is None  # bound to the global providers again
        assert get_memory_tracker() is not tracker
        assert RUNTIME.auto_explainer is None
    finally:
        capture.shutdown()


def test_a_lock_held_by_another_thread_at_fork_is_free_in_the_child():
    runtime = Runtime()
    with while_held(runtime.lock("config")):
        assert in_forked_child(lambda: runtime.lock("config").acquire(timeout=DEADLINE_S)) is True


def test_the_child_rebuilds_fresh_components_and_resets_the_others():
    runtime = Runtime()
    counters = runtime.get("monitor_totals", Counters)  # a field rebuilt in a child
    counters.count = 5
    kept = runtime.get("cleanup_registry", Resettable)
    kept.lock.acquire()  # held at the fork, as by a thread that no longer exists in the child
    instance = Resettable()
    runtime.after_fork_call(instance)

    def report() -> dict[str, object]:
        return {
            "fresh_count": runtime.get("monitor_totals", Counters).count,
            "kept_is_same": runtime.get("cleanup_registry", Resettable) is kept,
            "kept_resets": kept.resets,
            "kept_lock_free": kept.lock.acquire(timeout=DEADLINE_S),
            "instance_resets": instance.resets,
        }

    child = in_forked_child(report)
    kept.lock.release()
    assert child == {"fresh_count": 0, "kept_is_same": True, "kept_resets": 1, "kept_lock_free": True, "instance_resets": 1}
    assert counters.count == 5 and kept.resets == 0  # the parent is untouched


def test_an_instance_registered_for_fork_is_not_kept_alive():
    runtime = Runtime()
    instance = Resettable()
    runtime.after_fork_call(instance)
    ref = weakref.ref(instance)
    del instance
    gc.collect()
    assert ref() is None


def test_a_fork_waits_for_a_fork_guard_held_by_another_thread():
    runtime = Runtime()
    guard = runtime.fork_guard("collecting")
    events: list[str] = []
    holding, forking = threading.Event(), threading.Event()

    def collect() -> None:
        with runtime.fork_guard("collecting"):
            holding.set()
            forking.wait(DEADLINE_S)  # the other thread is about to fork
            events.append("collected")

    collector = threading.Thread(target=collect)
    collector.start()
    assert holding.wait(DEADLINE_S)
    seen_in_child: list[object] = []

    def fork() -> None:
        forking.set()
        seen_in_child.append(in_forked_child(lambda: {"events": events, "guard_free": runtime.fork_guard("collecting").acquire(timeout=DEADLINE_S)}))

    forker = threading.Thread(target=fork)
    forker.start()
    forker.join(DEADLINE_S * 2)
    collector.join(DEADLINE_S)
    # The fork happened only once the collection was over, and the child's guard is its own.
    assert seen_in_child == [{"events": ["collected"], "guard_free": True}]
    assert guard.acquire(timeout=DEADLINE_S)  # released in the parent after the fork
    guard.release()  # every later fork in this process takes it
