"""MemoryProfiler: model loads as profiled operations, size estimates, stats and recommendations."""

from __future__ import annotations

import array
import gc
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from _buffers import mapped, touched
from opentelemetry.trace import StatusCode

from reer_otel_memory import PROBE, MemoryProfiler, get_memory_profiler
from reer_otel_memory.ml.sizing import estimate_size

MB = 1024 * 1024


class Model:
    def __init__(self, **parts: object) -> None:
        self.__dict__.update(parts)

    def predict(self, x: int) -> int:
        return x + 1


def test_load_is_one_span_with_model_name_size_and_memory(telemetry):
    profiler = MemoryProfiler()
    model = profiler.profile_model_loading("ranker", lambda: Model(weights=touched(8 * MB)))

    assert model.predict(1) == 2
    span = telemetry.span("model_load")
    attributes = span.attributes
    assert attributes["reer.operation"] == "model_load"
    assert attributes["reer.model.name"] == "ranker"
    assert attributes["reer.model.size"] == 8 * MB
    assert attributes["reer.memory.rss.delta"] == attributes["reer.memory.rss.end"] - attributes["reer.memory.rss.start"]
    assert "reer.memory.heap.delta" in attributes
    if PROBE.peak_mode != "none":
        assert attributes["reer.memory.rss.peak"] >= attributes["reer.memory.rss.end"]

    stats = profiler.get_model_stats("ranker")
    assert stats["loaded"] and stats["loads"] == 1
    assert stats["size_bytes"] == 8 * MB and stats["buffers"] == 1 and not stats["size_truncated"]
    assert stats["load_rss_delta_bytes"] == attributes["reer.memory.rss.delta"]
    assert stats["load_heap_delta_bytes"] == attributes["reer.memory.heap.delta"]
    assert stats["load_duration_s"] > 0
    # The touched 8 MB are resident and in the heap after the load.
    assert stats["load_heap_delta_bytes"] >= 0.98 * 8 * MB  # other frees may land inside the load

    assert telemetry.metric_value("reer.memory.model.loads", model="ranker") == 1
    assert telemetry.metric_value("reer.memory.model.size", model="ranker") == 8 * MB
    assert telemetry.metric_points("reer.memory.operation.duration", reer_operation="model_load")


def test_loader_arguments_are_passed_and_failures_are_recorded_and_reraised(telemetry):
    profiler = MemoryProfiler()
    assert profiler.profile_model_loading("sum", lambda a, b=0: Model(total=a + b), 2, b=3).total == 5

    failure = OSError("weights file missing")

    def broken_loader():
        raise failure

    with pytest.raises(OSError) as raised:
        profiler.profile_model_loading("broken", broken_loader)
    assert raised.value is failure
    failed = [s for s in telemetry.spans("model_load") if s.attributes["reer.model.name"] == "broken"]
    assert len(failed) == 1 and failed[0].status.status_code is StatusCode.ERROR
    assert "reer.memory.rss.delta" in failed[0].attributes
    with pytest.raises(KeyError, match="broken"):
        profiler.get_model_stats("broken")


def test_size_estimate_counts_each_buffer_once_through_attributes_containers_and_slots():
    class Slotted:
        __slots__ = ("payload", "__private")

        def __init__(self, payload: object) -> None:
            self.payload = payload
            self.__private = bytes(300)

    shared = bytearray(1000)
    numbers = array.array("d", [0.0] * 100)  # 800 bytes
    graph = Model(
        a=shared,
        again=[shared, memoryview(shared)[10:20], (shared,)],
        nested={"deep": {"deeper": [Slotted(bytes(500)), numbers]}},
        ignored_text="x" * 10_000,
        ignored_function=test_size_estimate_counts_each_buffer_once_through_attributes_containers_and_slots,
    )
    graph.cycle = graph
    size = estimate_size(graph)
    assert size.bytes == 1000 + 500 + 300 + 800
    assert size.buffers == 4
    assert not size.truncated


def test_size_estimate_counts_numpy_owners_once_and_float64_separately():
    weights = np.zeros((256, 256), dtype=np.float64)  # 512 KiB
    bias = np.zeros(1000, dtype=np.float32)
    model = Model(weights=weights, transposed=weights.T, row=weights[3], bias=bias)
    size = estimate_size(model)
    assert size.bytes == weights.nbytes + bias.nbytes
    assert size.float64_bytes == weights.nbytes
    assert size.buffers == 2


def test_size_walk_is_bounded():
    many = [bytearray(10) for _ in range(1000)]
    size = estimate_size(many, max_objects=100)
    assert size.truncated and size.objects_visited == 100
    assert size.bytes == 99 * 10  # the list, then the first 99 buffers
    with pytest.raises(ValueError, match="max_objects=0"):
        estimate_size(many, max_objects=0)


def test_size_estimate_imports_neither_numpy_nor_torch():
    script = textwrap.dedent(
        """
        import sys
        from reer_otel_memory import get_memory_profiler
        class Model: pass
        def load():
            model = Model(); model.weights = bytearray(4096); return model
        get_memory_profiler().profile_model_loading("m", load)
        assert get_memory_profiler().get_model_stats("m")["size_bytes"] == 4096
        assert "numpy" not in sys.modules and "torch" not in sys.modules, sorted(sys.modules)
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.skipif(PROBE.peak_mode == "none", reason="peak RSS is not measurable on this system")
def test_load_peak_far_above_retained_memory_is_a_recommendation(telemetry):
    profiler = MemoryProfiler()

    def load_through_a_copy():
        # Mapped pages, unmapped at close: freed straight back to the OS whatever the allocator
        # holds free from earlier tests (a freed heap chunk it reused would stay resident).
        staging = mapped(40 * MB)
        model = Model(weights=bytearray(staging[: 2 * MB]))
        staging.close()
        return model

    model = profiler.profile_model_loading("copying", load_through_a_copy)
    stats = profiler.get_model_stats("copying")
    assert stats["load_peak_growth_bytes"] >= 38 * MB

    advice = [a for a in profiler.get_model_memory_recommendations() if a["kind"] == "load_peak"]
    assert len(advice) == 1
    assert advice[0]["model"] == "copying"
    assert "mmap" in advice[0]["message"] or "memory-mapped" in advice[0]["message"]
    assert advice[0]["estimated_savings_bytes"] == stats["load_peak_growth_bytes"] - stats["retained_bytes"]
    assert model.weights


def test_float64_weights_are_a_recommendation_worth_half_their_bytes():
    profiler = MemoryProfiler()
    model = profiler.profile_model_loading("f64", lambda: Model(weights=np.ones(256 * 1024), ids=np.ones(1000, dtype=np.int32)))
    advice = profiler.get_model_memory_recommendations(min_savings_mb=0.5)
    float64 = [a for a in advice if a["kind"] == "float64"]
    assert float64 == [
        {
            "model": "f64",
            "kind": "float64",
            "message": float64[0]["message"],
            "estimated_savings_bytes": model.weights.nbytes // 2,
            "estimated_savings_mb": model.weights.nbytes / 2 / MB,
        }
    ]
    assert not [a for a in profiler.get_model_memory_recommendations() if a["kind"] == "float64"]  # below 16 MB


def test_idle_recommendation_needs_tracked_use():
    profiler = MemoryProfiler()
    tracked = profiler.profile_model_loading("tracked", lambda: Model(weights=bytes(2 * MB)))
    untracked = profiler.profile_model_loading("untracked", lambda: Model(weights=bytes(2 * MB)))
    profiler.record_model_use("tracked")

    advice = profiler.get_model_memory_recommendations(idle_after_s=0, min_savings_mb=1)
    idle = [a["model"] for a in advice if a["kind"] == "idle"]
    assert idle == ["tracked"]
    assert not [a for a in profiler.get_model_memory_recommendations(idle_after_s=3600, min_savings_mb=1) if a["kind"] == "idle"]
    assert profiler.get_model_stats("tracked")["idle_s"] >= 0 and profiler.get_model_stats("untracked")["idle_s"] is None
    assert tracked and untracked


def test_models_together_above_the_budget_share_are_a_recommendation():
    profiler = MemoryProfiler()
    models = [profiler.profile_model_loading(f"m{i}", lambda: Model(weights=bytes(3 * MB))) for i in range(3)]
    advice = profiler.get_model_memory_recommendations(budget_bytes=10 * MB, budget_share=0.5, min_savings_mb=1)
    limit = [a for a in advice if a["kind"] == "models_vs_limit"]
    assert len(limit) == 1 and limit[0]["model"] is None
    retained = sum(profiler.get_model_stats(f"m{i}")["retained_bytes"] for i in range(3))
    assert limit[0]["estimated_savings_bytes"] == retained - 5 * MB
    assert "'m0'" in limit[0]["message"] and "LazyModelLoader" in limit[0]["message"]
    assert not [a for a in profiler.get_model_memory_recommendations(budget_bytes=100 * MB, min_savings_mb=1) if a["kind"] == "models_vs_limit"]
    assert len(models) == 3


def test_recommendations_are_sorted_by_savings():
    profiler = MemoryProfiler()
    models = [
        profiler.profile_model_loading("small", lambda: Model(w=np.ones(128 * 1024))),
        profiler.profile_model_loading("large", lambda: Model(w=np.ones(512 * 1024))),
    ]
    savings = [a["estimated_savings_bytes"] for a in profiler.get_model_memory_recommendations(min_savings_mb=0.1)]
    assert savings == sorted(savings, reverse=True) and len(savings) >= 2
    assert models


def test_a_dropped_model_stops_counting(telemetry):
    profiler = MemoryProfiler()
    model = profiler.profile_model_loading("dropped", lambda: Model(weights=bytes(1000)))
    assert telemetry.metric_value("reer.memory.model.size", model="dropped") == 1000
    del model
    gc.collect()
    assert profiler.get_model_stats("dropped")["loaded"] is False
    assert telemetry.metric_value("reer.memory.model.size", model="dropped") is None

    plain = profiler.profile_model_loading("plain-dict", lambda: {"weights": bytes(2000)})
    assert profiler.get_model_stats("plain-dict")["loaded"]  # a dict cannot be weakly referenced
    profiler.record_model_unload("plain-dict", freed_bytes=0)
    stats = profiler.get_model_stats("plain-dict")
    assert not stats["loaded"] and stats["unloads"] == 1 and stats["last_unload_freed_bytes"] == 0
    assert plain


def test_model_statistics_are_bounded():
    profiler = MemoryProfiler(max_models=3)
    kept = [profiler.profile_model_loading(f"m{i}", lambda: Model()) for i in range(5)]
    assert sorted(profiler.get_model_stats()) == ["m2", "m3", "m4"]
    assert profiler.forget_model("m3") and not profiler.forget_model("m3")
    assert len(kept) == 5


def test_default_profiler_is_shared():
    assert get_memory_profiler() is get_memory_profiler()


def test_bad_inputs_raise_clear_errors():
    profiler = MemoryProfiler()
    with pytest.raises(TypeError, match=r"model_name=''.*non-empty string"):
        profiler.profile_model_loading("", Model)
    with pytest.raises(TypeError, match=r"load_model_func='model\.bin'.*callable"):
        profiler.profile_model_loading("m", "model.bin")
    with pytest.raises(ValueError, match=r"peak_ratio=0\.5.*>= 1"):
        profiler.get_model_memory_recommendations(peak_ratio=0.5)
    with pytest.raises(ValueError, match=r"idle_after_s=nan"):
        profiler.get_model_memory_recommendations(idle_after_s=float("nan"))
    with pytest.raises(ValueError, match=r"budget_bytes=0"):
        profiler.get_model_memory_recommendations(budget_bytes=0)
    with pytest.raises(ValueError, match=r"max_models=0"):
        MemoryProfiler(max_models=0)
