"""The process runtime: components built once on first use, one fork hook that resets them."""

from __future__ import annotations

import gc
import os
import threading
import weakref

import pytest
from _forks import in_forked_child, while_held

from reer_otel_memory._runtime import Runtime

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
        seen.append(runtime.get("thing", factory))

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
    assert runtime.probe is probe  # a hot component is also an attribute
    assert runtime.tracker is tracker


def test_nothing_is_built_until_asked_for():
    runtime = Runtime()
    assert runtime.peek("probe") is None
    assert runtime.probe is None


def test_a_lock_held_by_another_thread_at_fork_is_free_in_the_child():
    runtime = Runtime()
    with while_held(runtime.lock("config")):
        assert in_forked_child(lambda: runtime.lock("config").acquire(timeout=DEADLINE_S)) is True


def test_the_child_rebuilds_fresh_components_and_resets_the_others():
    runtime = Runtime()
    counters = runtime.get("counters", Counters, fresh_in_child=True)
    counters.count = 5
    kept = runtime.get("kept", Resettable)
    kept.lock.acquire()  # held at the fork, as by a thread that no longer exists in the child
    instance = Resettable()
    runtime.after_fork_call(instance)

    def report() -> dict[str, object]:
        return {
            "fresh_count": runtime.get("counters", Counters, fresh_in_child=True).count,
            "kept_is_same": runtime.get("kept", Resettable) is kept,
            "kept_resets": kept.resets,
            "kept_lock_free": kept.lock.acquire(timeout=DEADLINE_S),
            "instance_resets": instance.resets,
            "forks": runtime.forks,
        }

    child = in_forked_child(report)
    kept.lock.release()
    assert child == {"fresh_count": 0, "kept_is_same": True, "kept_resets": 1, "kept_lock_free": True, "instance_resets": 1, "forks": 1}
    assert counters.count == 5 and kept.resets == 0 and runtime.forks == 0  # the parent is untouched


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
