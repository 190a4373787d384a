"""MemoryOptimizer: garbage collection, cache release, large-object census, numpy downcasts."""

from __future__ import annotations

import functools
import gc
import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from _buffers import touched

from reer_otel_memory import MemoryOptimizer, register_cleanup_hook, run_cleanup, unregister_cleanup_hook
from reer_otel_memory.monitoring.cleanup import cleanup_hook_names

MB = 1024 * 1024


class Node:
    def __init__(self, payload: bytearray) -> None:
        self.payload = payload
        self.partner: Node | None = None


# --- garbage collection --------------------------------------------------------------------------


def test_force_garbage_collection_collects_cycles_and_measures_rss_freed():
    gc.collect()
    gc.disable()  # so the cycles are still there for the call under test
    try:
        for _ in range(20):
            first, second = Node(touched(MB)), Node(bytearray())
            first.partner, second.partner = second, first
        del first, second
        result: dict = {}
        collected = MemoryOptimizer.force_garbage_collection(report=result)
    finally:
        gc.enable()
    assert type(collected) is int and collected == result["collected"]
    assert set(result["collected_by_generation"]) == {0, 1, 2}
    assert result["collected"] == sum(result["collected_by_generation"].values())
    assert result["collected"] >= 40  # two Nodes and their dicts per cycle
    assert result["rss_freed_bytes"] == max(0, result["rss_before_bytes"] - result["rss_after_bytes"])
    assert result["rss_freed_bytes"] >= 10 * MB  # 20 MB of touched payload went back to the OS
    assert result["uncollectable"] == len(gc.garbage)
    assert result["duration_s"] > 0


# --- caches and large objects --------------------------------------------------------------------


class PayloadCache:
    def __init__(self) -> None:
        self.entries: dict[str, bytearray] = {}

    def clear(self) -> None:
        self.entries.clear()


def test_cleanup_large_objects_releases_caches_and_reports_what_is_still_held():
    kept = touched(12 * MB + 1)
    kept_array = np.ones(11 * MB // 8 + 1)
    cache = PayloadCache()
    cache.entries["weights"] = touched(12 * MB + 2)
    cache_name = MemoryOptimizer.register_cache(cache)

    @functools.lru_cache(maxsize=4)
    def expensive(key: int) -> bytearray:
        return touched(12 * MB + 3)

    expensive(1)
    try:
        report: dict = {}
        cleaned = MemoryOptimizer.cleanup_large_objects(size_threshold_mb=10.0, report=report)
    finally:
        assert MemoryOptimizer.unregister_cache(cache_name)
    assert type(cleaned) is int and cleaned == report["released"]
    assert cleaned == report["caches_cleared"] + report["lru_caches_cleared"] + report["collected_objects"]

    assert cache.entries == {} and expensive.cache_info().currsize == 0
    assert report["caches_cleared"] >= 1 and report["lru_caches_cleared"] >= 1
    assert report["rss_freed_bytes"] >= 20 * MB  # the two released 12 MB buffers
    sizes = [entry["size_bytes"] for entry in report["largest"]]
    assert sys.getsizeof(kept) in sizes
    assert {"type": "numpy.ndarray", "size_bytes": kept_array.nbytes} in report["largest"]
    assert sys.getsizeof(bytearray(12 * MB + 2)) not in sizes and sys.getsizeof(bytearray(12 * MB + 3)) not in sizes
    assert report["large_objects_found"] >= 2
    assert report["large_objects_bytes"] >= sys.getsizeof(kept) + kept_array.nbytes
    assert all(size >= 10 * MB for size in sizes) and sizes == sorted(sizes, reverse=True)


def test_lru_caches_are_kept_when_asked():
    @functools.lru_cache(maxsize=4)
    def square(x: int) -> int:
        return x * x

    square(3)
    report: dict = {}
    MemoryOptimizer.cleanup_large_objects(size_threshold_mb=1000.0, clear_lru_caches=False, report=report)
    assert square.cache_info().currsize == 1 and report["lru_caches_cleared"] == 0


def test_a_registered_dict_or_callable_is_cleared():
    plain: dict[str, bytes] = {"a": b"x"}
    calls = []
    names = [MemoryOptimizer.register_cache(plain, name="plain"), MemoryOptimizer.register_cache(lambda: calls.append(1), name="fn")]
    try:
        assert MemoryOptimizer.clear_caches(clear_lru_caches=False) == (2, 0)
    finally:
        for name in names:
            MemoryOptimizer.unregister_cache(name)
    assert plain == {} and calls == [1]
    assert not MemoryOptimizer.unregister_cache("plain")


def test_clear_caches_runs_only_caches_and_counts_those_cleared(caplog):
    ran: list[str] = []
    register_cleanup_hook("not-a-cache", lambda: ran.append("hook"))
    names = [
        MemoryOptimizer.register_cache(lambda: ran.append("first"), name="first"),
        MemoryOptimizer.register_cache(lambda: 1 / 0, name="broken"),
        MemoryOptimizer.register_cache(lambda: ran.append("replaced"), name="last"),
        MemoryOptimizer.register_cache(lambda: ran.append("last"), name="last"),  # same name: replaces
    ]
    try:
        with caplog.at_level(logging.ERROR, logger="reer_otel_memory.monitoring.cleanup"):
            assert MemoryOptimizer.clear_caches(clear_lru_caches=False) == (2, 0)
    finally:
        unregister_cleanup_hook("not-a-cache")
        for name in set(names):
            MemoryOptimizer.unregister_cache(name)
    assert ran == ["first", "last"]
    assert "cleanup hook 'cache:broken' failed" in caplog.text


def test_a_registered_lru_cache_is_cleared_by_run_cleanup_and_unregistered_from_the_registry():
    @functools.lru_cache(maxsize=2)
    def tokens(key: int) -> np.ndarray:
        return np.ones(MB // 8)

    tokens(1)
    name = MemoryOptimizer.register_cache(tokens)
    assert f"cache:{name}" in cleanup_hook_names()
    try:
        result = run_cleanup()
    finally:
        assert MemoryOptimizer.unregister_cache(name)
    assert tokens.cache_info().currsize == 0 and f"cache:{name}" in result.hooks_run
    assert f"cache:{name}" not in cleanup_hook_names()


def test_cache_and_threshold_inputs_are_checked():
    with pytest.raises(TypeError, match=r"register_cache\(cache=5\).*cache_clear\(\) or clear\(\)"):
        MemoryOptimizer.register_cache(5)
    with pytest.raises(TypeError, match=r"name=''"):
        MemoryOptimizer.register_cache({}, name="")
    with pytest.raises(ValueError, match=r"size_threshold_mb=-1\): expected a number of MB from 0 up to 1073741824 \(1 PiB\)"):
        MemoryOptimizer.cleanup_large_objects(size_threshold_mb=-1)
    with pytest.raises(ValueError, match=r"size_threshold_mb='10'"):
        MemoryOptimizer.find_large_objects("10")


# --- numpy arrays --------------------------------------------------------------------------------


def test_float64_becomes_float32_only_when_every_value_survives():
    exact = np.array([0.5, -2.0, 1024.0, np.nan, np.inf, -np.inf, 0.0])
    smaller = MemoryOptimizer.optimize_numpy_arrays(exact)
    assert smaller.dtype == np.float32
    np.testing.assert_array_equal(smaller.astype(np.float64), exact)

    precise = np.array([0.1, 1 / 3])
    assert MemoryOptimizer.optimize_numpy_arrays(precise) is precise
    huge = np.array([1e300])
    assert MemoryOptimizer.optimize_numpy_arrays(huge) is huge
    assert MemoryOptimizer.optimize_numpy_arrays(huge, float_rtol=1e-3) is huge  # would overflow to inf

    close = MemoryOptimizer.optimize_numpy_arrays(precise, float_rtol=1e-6)
    assert close.dtype == np.float32 and np.allclose(close, precise, rtol=1e-6, atol=0)


def test_float_check_spans_every_chunk():
    values = np.zeros((3000, 1000))  # 3 M values: checked in several chunks
    values[-1, -1] = 0.1  # only the last chunk holds a value float32 cannot keep
    assert MemoryOptimizer.optimize_numpy_arrays(values) is values
    values[-1, -1] = 0.5
    assert MemoryOptimizer.optimize_numpy_arrays(values).dtype == np.float32


def test_integers_shrink_to_the_smallest_type_holding_their_range():
    cases = [
        (np.array([-128, 127], dtype=np.int64), np.int8),
        (np.array([-129, 5], dtype=np.int64), np.int16),
        (np.array([70_000], dtype=np.int32), np.int32),
        (np.array([255, 0], dtype=np.uint64), np.uint8),
        (np.array([70_000], dtype=np.uint64), np.uint32),
        (np.array([], dtype=np.int64), np.int8),
    ]
    for values, expected in cases:
        result = MemoryOptimizer.optimize_numpy_arrays(values)
        assert result.dtype == expected, (values, result.dtype)
        np.testing.assert_array_equal(result, values)
    flags = np.array([True, False])
    assert MemoryOptimizer.optimize_numpy_arrays(flags) is flags


def test_small_view_pinning_a_large_base_is_compacted_and_nothing_else_is():
    base = np.random.default_rng(1).random(1_000_000)  # float64 that float32 cannot hold
    report: list[dict] = []
    view = base[::100]
    compact = MemoryOptimizer.optimize_numpy_arrays(view, report=report)
    assert compact.base is None and compact.flags.c_contiguous
    np.testing.assert_array_equal(compact, view)
    assert report == [
        {
            "key": None,
            "action": "compacted",
            "dtype_before": "float64",
            "bytes_before": view.nbytes,
            "pinned_base_bytes": base.nbytes,
            "dtype_after": "float64",
            "bytes_after": view.nbytes,
        }
    ]
    half = base[: 600_000]
    assert MemoryOptimizer.optimize_numpy_arrays(half) is half  # copying would not save
    fortran = np.asfortranarray(base.reshape(1000, 1000))
    assert MemoryOptimizer.optimize_numpy_arrays(fortran) is fortran  # owns its data
    assert MemoryOptimizer.optimize_numpy_arrays(view, compact_views=False) is view


def test_containers_are_updated_in_place_and_other_values_pass_through():
    weights = {"w": np.ones(10), "ids": np.arange(5, dtype=np.int64), "name": "ranker", "nested": [np.zeros(3)]}
    report: list[dict] = []
    result = MemoryOptimizer.optimize_numpy_arrays(weights, report=report)
    assert result is weights
    assert weights["w"].dtype == np.float32 and weights["ids"].dtype == np.int8
    assert weights["name"] == "ranker" and weights["nested"][0].dtype == np.float32
    assert sorted(str(entry["key"]) for entry in report) == ["0", "ids", "w"]
    assert all(entry["bytes_after"] < entry["bytes_before"] for entry in report)

    arrays = [np.ones(4), 7]
    assert MemoryOptimizer.optimize_numpy_arrays(arrays) is arrays and arrays[0].dtype == np.float32 and arrays[1] == 7
    pair = (np.ones(2), np.ones(2))
    converted = MemoryOptimizer.optimize_numpy_arrays(pair)
    assert isinstance(converted, tuple) and converted[0].dtype == np.float32 and pair[0].dtype == np.float64


class Column:
    """An array-like that is not an ndarray: has dtype, __array__ and astype."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    @property
    def dtype(self):
        return self.values.dtype

    def __array__(self, dtype=None, copy=None):
        return self.values

    def astype(self, dtype):
        return Column(self.values.astype(dtype))


def test_array_likes_with_dtype_keep_their_type():
    column = Column(np.array([1.0, 2.0]))
    result = MemoryOptimizer.optimize_numpy_arrays(column)
    assert isinstance(result, Column) and result.dtype == np.float32


def test_proxies_in_containers_are_not_touched():
    from reer_otel_memory import LazyModelLoader, MemoryProfiler

    loads = []
    lazy_model = LazyModelLoader(lambda: loads.append(1) or np.ones(3), profiler=MemoryProfiler())
    arrays = {"lazy": lazy_model, "w": np.ones(3)}
    MemoryOptimizer.optimize_numpy_arrays(arrays)
    assert arrays["lazy"] is lazy_model and not lazy_model.is_loaded and loads == []


def test_bad_array_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match=r"optimize_numpy_arrays\(int 5\).*object with a dtype.*list, tuple or dict"):
        MemoryOptimizer.optimize_numpy_arrays(5)
    with pytest.raises(ValueError, match=r"float_rtol=-0\.1"):
        MemoryOptimizer.optimize_numpy_arrays(np.ones(2), float_rtol=-0.1)
    with pytest.raises(ValueError, match=r"float_rtol=2.*below 1"):
        MemoryOptimizer.optimize_numpy_arrays(np.ones(2), float_rtol=2)
    with pytest.raises(TypeError, match=r"report=\(\)"):
        MemoryOptimizer.optimize_numpy_arrays(np.ones(2), report=())


def test_without_numpy_only_arrays_need_it():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["numpy"] = None  # numpy cannot be imported in this process
        from reer_otel_memory import MemoryOptimizer

        class Tensor:
            dtype = "float64"

        plain = [1, "a", {"b": 2.5}]
        assert MemoryOptimizer.optimize_numpy_arrays(plain) is plain
        assert MemoryOptimizer.optimize_numpy_arrays({}) == {}
        assert MemoryOptimizer.force_garbage_collection() >= 0
        details = {}
        assert MemoryOptimizer.cleanup_large_objects(size_threshold_mb=1.0, report=details) >= 0
        assert details["threshold_bytes"] == 1048576
        try:
            MemoryOptimizer.optimize_numpy_arrays([Tensor()])
        except ImportError as exc:
            print(exc)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Tensor with dtype float64 needs numpy" in done.stdout and "pip install numpy" in done.stdout


def test_the_spec_examples_work_as_written():
    """``collected = force_garbage_collection()`` and ``cleaned = cleanup_large_objects(...)`` are counts."""
    first, second = Node(bytearray()), Node(bytearray())
    first.partner, second.partner = second, first
    del first, second
    gc.disable()
    try:
        collected = MemoryOptimizer.force_garbage_collection()
    finally:
        gc.enable()
    cleaned = MemoryOptimizer.cleanup_large_objects(size_threshold_mb=10.0)
    assert type(collected) is int and type(cleaned) is int
    total = 0
    total += cleaned + collected
    assert total >= 0 and f"{collected} objects" == f"{int(collected)} objects"


@pytest.mark.parametrize("top", [-1, 1.5, True, "3"])
def test_top_must_be_a_non_negative_integer(top):
    for method in (MemoryOptimizer.find_large_objects, MemoryOptimizer.cleanup_large_objects):
        with pytest.raises(ValueError) as caught:
            method(size_threshold_mb=1000.0, top=top)
        assert str(caught.value) == f"{method.__name__}(top={top!r}): expected a non-negative integer (how many objects to list)"


def test_report_must_be_a_dict():
    with pytest.raises(TypeError, match=r"force_garbage_collection\(report=True\): expected a dict to fill with the details, or None"):
        MemoryOptimizer.force_garbage_collection(report=True)
