"""Cost of the model tools: a LazyModelLoader method call vs the model's own, and the size walk per object."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

from benchmarks._report import Figure, scaled

CALLS = scaled(50_000, 5_000)
ROUNDS = scaled(7, 3)


class Model:
    def __init__(self) -> None:
        self.layers = [{"weights": bytearray(64), "bias": bytearray(8)} for _ in range(2000)]

    def predict(self, x: int) -> int:
        return x


def _per_call_us(fn: Callable[[], object], calls: int) -> float:
    gc.collect()
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def _median_us(fn: Callable[[], object], calls: int = CALLS) -> float:
    _per_call_us(fn, calls // 10)
    return statistics.median(_per_call_us(fn, calls) for _ in range(ROUNDS))


def run() -> list[Figure]:
    from reer_otel_memory import LazyModelLoader, MemoryProfiler
    from reer_otel_memory.ml.sizing import estimate_size

    model = Model()
    lazy_model = LazyModelLoader(lambda: model, profiler=MemoryProfiler())
    lazy_model.load()
    direct_us = _median_us(lambda: model.predict(1))
    proxied_us = _median_us(lambda: lazy_model.predict(1))

    size = estimate_size(model)
    walk_s = statistics.median(_per_call_us(lambda: estimate_size(model), 5) for _ in range(ROUNDS)) / 1e6
    return [
        Figure(
            "LazyModelLoader: lazy_model.predict(x), loaded",
            proxied_us,
            "us",
            "model.predict(x)",
            direct_us,
            "about 1 us, half of it Python's __getattr__ fallback",
        ),
        Figure(f"size estimate per object visited ({size.objects_visited} objects)", walk_s / size.objects_visited * 1e6, "us", target="about 1 us"),
    ]
