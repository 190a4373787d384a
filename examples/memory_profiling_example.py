"""Every public feature of reer-otel-memory, in one script that runs in a few seconds.

    python examples/memory_profiling_example.py

It allocates a few MB at a time and cleans up after itself. Sections, in order:

1. configuration: ``setup_memory_limits``, ``set_memory_limit``, ``get_config`` and the source of each value
2. the Prometheus endpoint: ``start_prometheus_exporter`` on a free port
3. profiled operations: ``@memory_profile`` (functions, coroutines, generators), ``memory_context``
4. the tracker: ``get_memory_tracker``, statistics, snapshots, leak suspects
5. the model profiler: ``get_memory_profiler``, ``profile_model_loading``, recommendations
6. the monitor: ``MemoryMonitor`` with a callback, ``start_memory_monitoring`` / ``stop_memory_monitoring``
7. cleanup hooks: ``register_cleanup_hook``, ``run_cleanup``
8. the optimizer: ``MemoryOptimizer``
9. lazy models: ``LazyModelLoader``
10. streaming JSONL: ``StreamingJSONLReader``
11. the resource manager: ``get_resource_manager``
12. the trace store: ``REERTraceStore``
13. the emergency handler: ``setup_emergency_memory_handler``, SIGUSR1, ``_memory_monitor._trigger_emergency_cleanup``
14. auto-instrumentation in code: ``MemoryInstrumentor``
15. testing your own code: ``reer_otel_memory.testing.capture_telemetry``
16. what Prometheus sees: one scrape of the endpoint
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from reer_otel_memory import (
    LazyModelLoader,
    MemoryInstrumentor,
    MemoryMonitor,
    MemoryOptimizer,
    StreamingJSONLReader,
    get_config,
    get_memory_monitor,
    get_memory_profiler,
    get_memory_tracker,
    get_resource_manager,
    memory_context,
    memory_profile,
    register_cleanup_hook,
    remove_emergency_memory_handler,
    run_cleanup,
    set_memory_limit,
    setup_emergency_memory_handler,
    setup_memory_limits,
    start_memory_monitoring,
    start_prometheus_exporter,
    stop_memory_monitoring,
    unregister_cleanup_hook,
)
from reer_otel_memory.testing import capture_telemetry
from reer_otel_memory.trace_store import REERTraceStore

MB = 1024 * 1024
SECTIONS_SHOWN: list[str] = []


def section(title: str) -> None:
    SECTIONS_SHOWN.append(title)
    print(f"\n== {len(SECTIONS_SHOWN)}. {title}")


def wait_until(condition, timeout_s: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or the time is up (the monitor works on its own thread)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def rss_mb() -> float:
    return get_memory_tracker().get_memory_stats()["current_memory_mb"]


# --- the functions the sections profile ------------------------------------------------------


@memory_profile(operation_name="data_processing")
def process_data(data):
    return [x * 2 for x in data]


@memory_profile  # default name: module and qualified name
async def fetch_features(count):
    await asyncio.sleep(0)
    return list(range(count))


@memory_profile(operation_name="batches")
def batches(rows, size):
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


class TinyModel:
    """A stand-in for an ML model: 2 MB of weights and a predict method."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.weights = bytearray(b"\x01") * (2 * MB)

    def predict(self, inputs):
        return [value + self.weights[0] for value in inputs]


def load_model_func(model_path: str = "models/tiny") -> TinyModel:
    return TinyModel(model_path)


def score(items):
    return sum(items)


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="reer-example-"))

    # 1. Configuration ---------------------------------------------------------------------------
    section("configuration")
    start_mb = rss_mb()
    # Thresholds a little above this process, so the monitor below really crosses them.
    config = setup_memory_limits(alert_mb=start_mb + 24, critical_mb="95%", cleanup_mb=start_mb + 48)
    set_memory_limit(start_mb + 400)  # the critical threshold alone
    config = get_config()
    for level in ("alert", "cleanup", "critical"):
        print(f"  {level:<8} {getattr(config, level + '_mb'):8.1f} MB   from {config.sources[level]}")
    print(f"  interval {config.monitoring_interval_s:g} s, limit {config.limit.bytes / MB:.0f} MB ({config.limit.source})")

    # 2. The Prometheus endpoint -----------------------------------------------------------------
    section("Prometheus endpoint")
    endpoint = start_prometheus_exporter(port=0)  # 0: any free port; the default is 9464
    print(f"  serving {endpoint.url}")

    # 3. Profiled operations ---------------------------------------------------------------------
    section("decorators and context managers")
    doubled = process_data(range(100_000))
    features = asyncio.run(fetch_features(1000))
    chunks = sum(1 for _ in batches(list(range(1000)), 100))
    with memory_context("critical_operation") as operation:
        block = bytearray(b"\x02") * (4 * MB)
        del block
    print(f"  process_data gave {len(doubled)} values, fetch_features {len(features)}, batches {chunks} chunks")
    print(f"  critical_operation: {operation.result}")

    # 4. The tracker -----------------------------------------------------------------------------
    section("memory tracker")
    tracker = get_memory_tracker()
    stats = tracker.get_memory_stats()
    print(f"  current {stats['current_memory_mb']:.1f} MB, peak {stats['peak_memory_mb']:.1f} MB, level {stats['level']}")
    for snapshot in tracker.snapshots[-3:]:
        if snapshot.operation:
            print(f"  operation {snapshot.operation}: {snapshot.process_memory_mb:.1f} MB")
    retained = []
    leaky = memory_profile(operation_name="leaky_append")(lambda: retained.append(bytearray(b"\x03") * (256 * 1024)))
    for _ in range(40):  # leak detection judges after a warm-up and a window of calls
        leaky()
    for suspect in tracker.leak_suspects():
        print(f"  leak suspected: {suspect.operation} keeps about {suspect.bytes_per_call / 1024:.0f} KiB per call")
    retained.clear()

    # 5. The model profiler ----------------------------------------------------------------------
    section("model profiler")
    profiler = get_memory_profiler()
    model = profiler.profile_model_loading("my_model", load_model_func, "models/tiny")
    print(f"  my_model: {profiler.get_model_stats('my_model')}")
    for advice in profiler.get_model_memory_recommendations():
        print(f"  recommendation for {advice['model']}: {advice['message']}")
    del model

    # 6. The monitor -----------------------------------------------------------------------------
    section("memory monitor")
    seen_levels: list[str] = []
    monitor = MemoryMonitor(monitoring_interval=0.5)  # thresholds from the configuration above

    def memory_callback(snapshot):
        if snapshot.crossed:
            seen_levels.append(str(snapshot.level))
        if snapshot.process_memory_mb > monitor.alert_threshold_mb:
            print(f"  callback: high memory usage {snapshot.process_memory_mb:.1f} MB, level {snapshot.level}")

    monitor.add_callback(memory_callback)
    monitor.start_monitoring()
    ballast = bytearray(b"\x04") * (int(monitor.alert_threshold_mb - rss_mb() + 8) * MB)
    crossed = wait_until(lambda: "alert" in seen_levels)
    print(f"  alert seen: {crossed}; alerts by level: { {str(k): v for k, v in monitor.alert_counts.items()} }")
    del ballast
    result = monitor.cleanup()  # on demand, counted as trigger="manual"
    print(f"  manual cleanup freed {result.freed_bytes / MB:.1f} MB")
    monitor.stop_monitoring()
    default_monitor = start_memory_monitoring()  # the process's default monitor
    print(f"  default monitor running: {default_monitor.is_running}")
    stop_memory_monitoring()

    # 7. Cleanup hooks ---------------------------------------------------------------------------
    section("cleanup hooks")
    cache = {"embeddings": bytearray(b"\x05") * MB}
    register_cleanup_hook("example.cache", cache.clear)
    result = run_cleanup()
    print(f"  hooks run {result.hooks_run}, {result.collected_objects} objects collected, cache entries left {len(cache)}")
    unregister_cleanup_hook("example.cache")

    # 8. The optimizer ---------------------------------------------------------------------------
    section("memory optimizer")
    details: dict = {}
    cleaned = MemoryOptimizer.cleanup_large_objects(size_threshold_mb=1.0, report=details)
    print(f"  cleanup_large_objects: released {cleaned} objects and caches, freed {details['rss_freed_bytes'] / MB:.1f} MB")
    collected = MemoryOptimizer.force_garbage_collection()
    print(f"  force_garbage_collection: {collected} objects collected")
    try:
        import numpy as np
    except ImportError:
        arrays = {"weights": [0.5, 1.5]}  # without numpy, anything else passes through unchanged
    else:
        arrays = {"weights": np.linspace(0.0, 1.0, 1000), "ids": np.arange(100, dtype=np.int64)}
    MemoryOptimizer.optimize_numpy_arrays(arrays)
    print(f"  optimize_numpy_arrays: {[(name, str(getattr(a, 'dtype', type(a).__name__))) for name, a in arrays.items()]}")

    # 9. Lazy models -----------------------------------------------------------------------------
    section("lazy model loader")
    lazy_model = LazyModelLoader(load_model_func, model_path="models/lazy")
    print(f"  loaded before use: {lazy_model.is_loaded}")
    predictions = lazy_model.predict([1, 2, 3])  # loads on first access
    print(f"  predictions {predictions}, loaded: {lazy_model.is_loaded}")
    lazy_model.unload()
    print(f"  after unload: loaded {lazy_model.is_loaded}, freed {lazy_model.last_unload_freed_bytes} bytes")

    # 10. Streaming JSONL ------------------------------------------------------------------------
    section("streaming JSONL reader")
    data_path = workdir / "records.jsonl"
    with data_path.open("w") as file:
        for index in range(1000):
            file.write(json.dumps({"id": index, "score": index / 1000}) + "\n")
        file.write("not json\n")
    reader = StreamingJSONLReader(data_path, chunk_size=8192, skip_malformed=True)  # else the bad line raises
    total = sum(record["score"] for record in reader)
    print(f"  {reader.stats.records} records, score sum {total:.1f}, malformed lines {reader.stats.malformed_line_numbers}")

    # 11. The resource manager -------------------------------------------------------------------
    section("resource manager")
    manager = get_resource_manager()
    closed: list[str] = []
    buffer_pool = [bytearray(MB) for _ in range(2)]
    manager.register_resource("buffer_pool", buffer_pool, cleanup_callback=lambda: closed.append("buffer_pool"), memory_limit_mb=100.0)
    print(f"  resources: {manager.resource_names()}")
    cleaned = manager.cleanup_all_resources()
    print(f"  cleaned up {cleaned}, callbacks run: {closed}")

    # 12. The trace store ------------------------------------------------------------------------
    section("trace store")

    async def use_trace_store() -> None:
        store = REERTraceStore(workdir / "traces.jsonl")
        ids = [await store.add_trace({"query": f"q{index}", "score": index / 10}) for index in range(10)]
        high = [trace async for trace in store.lazy_query_traces(min_score=0.5, limit=1000)]
        chunks = [len(chunk) async for chunk in store.stream_traces_filtered(filter_func=lambda t: t.get("score", 0) > 0.7, chunk_size=2)]
        found = await store.get_trace(ids[3])
        stats = await store.get_memory_efficient_stats()
        print(f"  {len(high)} traces with score >= 0.5, chunks {chunks}, trace {ids[3][:8]}... has query {found['query']!r}")
        print(f"  stats: total_traces {stats['total_traces']}, memory_usage_mb {stats['memory_usage_mb']:.1f}")
        print(f"  optimize_memory_usage: freed {store.optimize_memory_usage()['memory_freed_mb']:.1f} MB")
        store.close()

    asyncio.run(use_trace_store())

    # 13. The emergency handler ------------------------------------------------------------------
    section("emergency handler")
    emergency_monitor = get_memory_monitor()
    before = emergency_monitor.cleanup_counts["emergency"]
    setup_emergency_memory_handler()  # SIGUSR1; starts the default monitor's thread
    os.kill(os.getpid(), signal.SIGUSR1)  # what `kill -USR1 <pid>` does from a shell
    woke = wait_until(lambda: emergency_monitor.cleanup_counts["emergency"] > before)
    print(f"  SIGUSR1 -> emergency cleanup on the monitor thread: {woke}")
    from reer_otel_memory import _memory_monitor

    _memory_monitor._trigger_emergency_cleanup()  # the same, from code
    wait_until(lambda: emergency_monitor.cleanup_counts["emergency"] > before + 1)
    print(f"  emergency cleanups: {emergency_monitor.cleanup_counts['emergency'] - before}")
    remove_emergency_memory_handler()

    # 14. Auto-instrumentation in code ------------------------------------------------------------
    section("MemoryInstrumentor")
    # What `opentelemetry-instrument` does with REER_MEMORY_PROFILE_TARGETS, here in code.
    instrumentor = MemoryInstrumentor()
    instrumentor.instrument(profile_targets=f"{__name__}:score", start_monitor=False)
    print(f"  wrapped: {instrumentor.wrapped_targets}; score([1, 2]) = {sys.modules[__name__].score([1, 2])}")
    instrumentor.uninstrument()
    print(f"  after uninstrument: {instrumentor.wrapped_targets}")

    # 15. Testing your own code -------------------------------------------------------------------
    section("testing helpers")
    with capture_telemetry() as telemetry:
        process_data(range(10_000))
    span = telemetry.span("data_processing")
    print(f"  span {span.name}: rss.delta {span.attributes['reer.memory.rss.delta']} bytes, level {span.attributes['reer.memory.level']}")

    # 16. What Prometheus sees --------------------------------------------------------------------
    section("one scrape of /metrics")
    with urllib.request.urlopen(endpoint.url, timeout=5) as response:
        lines = response.read().decode().splitlines()
    shown = ("reer_memory_rss_bytes", "reer_memory_threshold_bytes", "reer_memory_level", "reer_memory_alerts_total", "reer_memory_cleanups_total")
    for line in lines:
        if line.startswith(shown):
            name_and_labels, value = line.rsplit(" ", 1)
            labels = [label for label in name_and_labels.partition("{")[2].rstrip("}").split(",") if label and not label.startswith("otel_scope")]
            name = name_and_labels.partition("{")[0]
            print(f"  {name}{{{','.join(labels)}}} {value}" if labels else f"  {name} {value}")
    print(f"  ... {len([line for line in lines if line.startswith('reer_')])} reer_* samples in all")
    endpoint.shutdown()

    print(f"\nall {len(SECTIONS_SHOWN)} sections shown")
    return 0


if __name__ == "__main__":
    sys.exit(main())
