"""LazyModelLoader: load on first use, once under concurrency, profiled, unloadable under pressure."""

from __future__ import annotations

import copy
import gc
import math
import os
import threading
import weakref

import pytest
from _buffers import release_free_memory, touched
from _forks import in_forked_child, while_held
from conftest import wait_for

from reer_otel_memory import LazyModelLoader, MemoryProfiler, run_cleanup
from reer_otel_memory.ml.lazy import CLEANUP_HOOK_NAME, unload_idle_models

MB = 1024 * 1024


class Model:
    def __init__(self, path: str, weights: bytearray, scale: int = 1) -> None:
        self.path = path
        self.weights = weights
        self.scale = scale

    def predict(self, x: int) -> int:
        return x * self.scale

    def __call__(self, x: int) -> int:
        return -x


class Loader:
    """Counts its calls; the model it builds holds ``size_bytes`` of touched memory."""

    def __init__(self, size_bytes: int = 4096) -> None:
        self.size_bytes = size_bytes
        self.calls = 0

    def __call__(self, path: str, scale: int = 1) -> Model:
        self.calls += 1
        return Model(path, touched(self.size_bytes), scale)


def test_loads_on_first_access_with_path_and_arguments_and_proxies_the_model(telemetry):
    loader = Loader()
    profiler = MemoryProfiler()
    lazy_model = LazyModelLoader(loader, "models/ranker.bin", scale=3, profiler=profiler)
    assert not lazy_model.is_loaded and loader.calls == 0
    assert "not loaded" in repr(lazy_model) and lazy_model.model_name == "models/ranker.bin"

    assert lazy_model.predict(2) == 6
    assert lazy_model.is_loaded and loader.calls == 1
    assert lazy_model.path == "models/ranker.bin" and lazy_model(5) == -5
    assert lazy_model.load() is lazy_model.load() and loader.calls == 1
    assert "predict" in dir(lazy_model)

    span = telemetry.span("model_load")
    assert span.attributes["reer.model.name"] == "models/ranker.bin"
    assert span.attributes["reer.model.size"] == 4096
    stats = profiler.get_model_stats("models/ranker.bin")
    assert stats["loads"] == 1 and stats["usage_tracked"]


def test_probes_for_special_methods_do_not_load():
    loader = Loader()
    lazy_model = LazyModelLoader(loader, "m")
    assert not hasattr(lazy_model, "__array__")
    copy.copy(lazy_model)
    repr(lazy_model)
    assert loader.calls == 0 and not lazy_model.is_loaded


def test_concurrent_first_access_loads_exactly_once():
    threads_count = 8
    arrived: list[int] = []
    inner = Loader(MB)

    def slow_loader(path: str) -> Model:
        # Hold the load open until every thread has asked for the model.
        wait_for(lambda: len(arrived) == threads_count, message="all threads reaching the lazy model")
        return inner(path)

    lazy_model = LazyModelLoader(slow_loader, "shared", profiler=MemoryProfiler())
    results: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(threads_count)

    def use(index: int) -> None:
        try:
            start.wait()
            arrived.append(index)
            results.append(lazy_model.predict(index))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=use, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert inner.calls == 1
    assert sorted(results) == list(range(threads_count))


def test_unload_frees_the_model_and_the_next_access_loads_it_again(telemetry):
    loader = Loader(32 * MB)
    profiler = MemoryProfiler()
    lazy_model = LazyModelLoader(loader, "big", profiler=profiler)
    model_ref = weakref.ref(lazy_model.load())

    freed = lazy_model.unload()
    assert model_ref() is None and not lazy_model.is_loaded
    assert freed >= 24 * MB  # 32 MB of touched pages, less what the allocator keeps
    assert lazy_model.last_unload_freed_bytes == freed
    unload_span = telemetry.span("model_unload")
    assert unload_span.attributes["reer.model.name"] == "big"
    assert unload_span.attributes["reer.memory.rss.delta"] <= -24 * MB
    stats = profiler.get_model_stats("big")
    assert not stats["loaded"] and stats["unloads"] == 1 and stats["last_unload_freed_bytes"] == freed

    assert lazy_model.unload() == 0  # nothing loaded
    assert lazy_model.predict(1) == 1 and loader.calls == 2
    assert profiler.get_model_stats("big")["loads"] == 2


def test_unload_of_a_model_still_held_elsewhere_reports_what_was_really_freed():
    lazy_model = LazyModelLoader(Loader(16 * MB), "held", profiler=MemoryProfiler())
    still_held = lazy_model.load()
    # The unload trims the heap: what earlier tests left free and resident would count as freed.
    release_free_memory()
    assert lazy_model.unload() < 8 * MB
    assert not lazy_model.is_loaded and len(still_held.weights) == 16 * MB


def test_a_failed_load_is_raised_and_retried_on_next_access():
    attempts = []

    def flaky(path: str) -> Model:
        attempts.append(path)
        if len(attempts) == 1:
            raise FileNotFoundError(path)
        return Model(path, bytearray(10))

    lazy_model = LazyModelLoader(flaky, "flaky.bin", profiler=MemoryProfiler())
    with pytest.raises(FileNotFoundError):
        lazy_model.predict(1)
    assert not lazy_model.is_loaded
    assert lazy_model.predict(4) == 4 and len(attempts) == 2


def test_memory_cleanup_unloads_models_due_for_it():
    profiler = MemoryProfiler()
    any_time = LazyModelLoader(Loader(), "any-time", profiler=profiler)
    recently_used = LazyModelLoader(Loader(), "recent", idle_timeout_s=3600, profiler=profiler)
    pinned = LazyModelLoader(Loader(), "pinned", idle_timeout_s=math.inf, profiler=profiler)
    idle = LazyModelLoader(Loader(), "idle", idle_timeout_s=0, profiler=profiler)
    for lazy_model in (any_time, recently_used, pinned, idle):
        lazy_model.load()

    result = run_cleanup("manual")
    assert CLEANUP_HOOK_NAME in result.hooks_run
    assert not any_time.is_loaded and not idle.is_loaded
    assert recently_used.is_loaded and pinned.is_loaded
    assert profiler.get_model_stats("idle")["unloads"] == 1
    assert unload_idle_models() == []


def test_the_cleanup_hook_does_not_keep_loaders_alive():
    lazy_model = LazyModelLoader(Loader(), "short-lived", profiler=MemoryProfiler())
    lazy_model.load()
    ref = weakref.ref(lazy_model)
    del lazy_model
    gc.collect()
    assert ref() is None
    assert "short-lived" not in unload_idle_models()


def test_default_name_and_profiler():
    def load_ranker() -> Model:
        return Model("", bytearray(1))

    lazy_model = LazyModelLoader(load_ranker)
    assert lazy_model.model_name.endswith("load_ranker")
    lazy_model.load()
    from reer_otel_memory import get_memory_profiler

    assert get_memory_profiler().get_model_stats(lazy_model.model_name)["loaded"]
    lazy_model.unload(collect=False)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match=r"load_model_func='model\.bin'.*callable"):
        LazyModelLoader("model.bin")
    with pytest.raises(ValueError, match=r"idle_timeout_s=-1.*seconds >= 0"):
        LazyModelLoader(Loader(), "m", idle_timeout_s=-1)
    with pytest.raises(TypeError, match=r"model_name=''"):
        LazyModelLoader(Loader(), "m", model_name="")
    with pytest.raises(TypeError, match=r"profiler=.*MemoryProfiler"):
        LazyModelLoader(Loader(), "m", profiler=object())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_a_load_holds_the_lock_can_still_use_the_model():
    lazy_model = LazyModelLoader(Loader(), "forked", profiler=MemoryProfiler())
    lazy_model.load()
    def unload_and_use() -> bool:
        lazy_model.unload()
        return bool(lazy_model.predict(3) == 3 and lazy_model.is_loaded)

    with while_held(lazy_model._lock):
        assert in_forked_child(unload_and_use) is True
