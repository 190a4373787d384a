"""Cost of a profiled call: decorated no-op vs a bare span with the same attributes, and with no SDK."""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from benchmarks._report import Figure, scaled

CALLS = scaled(20_000, 2_000)
ROUNDS = scaled(7, 3)


class DiscardingExporter(SpanExporter):
    """Receives every batch like a network exporter would, then drops it."""

    def export(self, spans: Sequence[object]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def per_call_us(fn: Callable[[], object], calls: int = CALLS) -> float:
    gc.collect()
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int = ROUNDS) -> dict[str, float]:
    """Median per-call microseconds of each candidate, measured in alternating rounds."""
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for fn in candidates.values():
        per_call_us(fn, 2000)  # warm up
    for _ in range(rounds):
        for name, fn in candidates.items():
            samples[name].append(per_call_us(fn))
    return {name: statistics.median(values) for name, values in samples.items()}


def _with_sdk(with_metrics: bool) -> dict[str, float]:
    from reer_otel_memory import _telemetry, memory_profile

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DiscardingExporter(), max_queue_size=65536))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()]) if with_metrics else None
    previous = _telemetry.current()
    _telemetry.configure(tracer_provider, meter_provider)
    tracer = tracer_provider.get_tracer("benchmark")

    @memory_profile(operation_name="noop", heap=False)
    def decorated() -> None:
        pass

    @memory_profile(operation_name="noop_heap", heap=True)
    def decorated_heap() -> None:
        pass

    def bare_span() -> None:
        with tracer.start_as_current_span("noop") as span:
            span.set_attributes(
                {
                    "reer.operation": "noop",
                    "reer.memory.rss.start": 1,
                    "reer.memory.rss.end": 2,
                    "reer.memory.rss.delta": 1,
                    "reer.memory.rss.peak": 2,
                    "reer.memory.heap.delta": 0,
                    "reer.memory.level": "ok",
                    "reer.memory.overlap": 0,
                    "code.function.name": "benchmarks.noop",
                }
            )

    telemetry = _telemetry.current()
    operation = {"reer.operation": "noop"}

    def bare_span_and_records() -> None:
        # What any design emitting the same telemetry pays: the span, plus the two histogram
        # records a profiled call makes, by hand on the same instruments.
        bare_span()
        telemetry.operation_duration.record(1e-6, operation)
        telemetry.operation_peak.record(0, operation)

    candidates = {"bare": bare_span, "decorated": decorated, "heap": decorated_heap}
    if with_metrics:
        candidates["bare_records"] = bare_span_and_records
    try:
        medians = interleaved(candidates)
    finally:
        _telemetry.restore(previous)
        tracer_provider.shutdown()
        if meter_provider is not None:
            meter_provider.shutdown()
    return medians


def _in_fresh_interpreter(expression: str) -> dict[str, float]:
    """Evaluate ``expression`` (medians as a dict) in a new interpreter.

    A fresh heap for every figure: the heap read costs more the more fragmented the heap is,
    and earlier benchmarks in this process would leave theirs behind.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = f"import json, sys; sys.path.insert(0, {root!r}); from benchmarks import bench_profile as b; print(json.dumps({expression}))"
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _sdk_figures() -> list[Figure]:
    bare = "bare start_as_current_span + 9 attributes"
    tracing = _in_fresh_interpreter("b._with_sdk(with_metrics=False)")
    both = _in_fresh_interpreter("b._with_sdk(with_metrics=True)")
    return [
        Figure("decorated no-op, tracing SDK (adaptive heap)", tracing["decorated"], "us/call",
               bare, tracing["bare"], "<= 1.3x"),
        Figure("decorated no-op, tracing SDK, heap read on every call", tracing["heap"], "us/call",
               bare, tracing["bare"]),
        # The two histogram records per call cost what the metrics SDK charges any caller.
        Figure("decorated no-op, tracing + metrics SDK (adaptive heap)", both["decorated"], "us/call",
               bare, both["bare"]),
        Figure("decorated no-op, tracing + metrics SDK (adaptive heap)", both["decorated"], "us/call",
               bare + " + the same 2 histogram records", both["bare_records"], "<= 1.3x"),
    ]


def _no_sdk_medians() -> dict[str, float]:
    from reer_otel_memory import memory_profile

    def plain() -> None:
        pass

    @memory_profile(operation_name="noop")
    def decorated() -> None:
        pass

    return interleaved({"plain": plain, "decorated": decorated})


def _without_sdk() -> list[Figure]:
    # A fresh interpreter: once a global SDK provider is set it cannot be unset.
    medians = _in_fresh_interpreter("b._no_sdk_medians()")
    extra = medians["decorated"] - medians["plain"]
    return [
        Figure("decorated no-op, no SDK configured", medians["decorated"], "us/call",
               "undecorated call", medians["plain"]),
        Figure("added cost with no SDK configured", extra, "us/call", target="<= 3 us"),
    ]


def run() -> list[Figure]:
    return _sdk_figures() + _without_sdk()
