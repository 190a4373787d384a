"""Monitor overhead: CPU at a 1 s interval vs a bare psutil sample; /metrics scrape vs bare prometheus_client.

Two figures the issue sets targets for:

* **Monitor CPU.** A monitor samples this otherwise idle process every second for
  ``MONITOR_WINDOW_S`` (60 s; ``BENCH_MONITOR_SECONDS`` shortens it). Reported: the process CPU
  over the window as % of one core (everything the monitor thread costs, wake-ups included;
  target <= 0.05%), and the thread's own CPU per sample as the ``reer.memory.monitor.cpu``
  counter measures it (target <= 0.5 ms). Baseline: CPU of one bare
  ``psutil.Process().memory_info()`` call, the least a sampling monitor can do.
* **Scrape.** In a child process (so this one's global meter provider stays untouched):
  ``start_prometheus_exporter`` with the default monitor, 100 profiled operations recorded,
  then ``/metrics`` fetched over HTTP, median wall time per scrape (target <= 10 ms). Baseline:
  a bare ``prometheus_client`` registry holding the same series (two histograms with the same
  buckets and a gauge, 100 operations each) served and fetched the same way.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

from benchmarks._report import QUICK, Figure, scaled

MONITOR_WINDOW_S = float(os.environ.get("BENCH_MONITOR_SECONDS", "60" if not QUICK else "3"))
MONITOR_INTERVAL_S = 1.0
BARE_SAMPLES = 5_000
OPERATIONS = 100
SCRAPES = scaled(60, 10)
WARMUP_SCRAPES = 5


def _exporter_pipeline():
    """The running exporter's pipeline."""
    from reer_otel_memory._runtime import RUNTIME

    return RUNTIME.endpoint


def bare_psutil_sample_cpu_s() -> float:
    import psutil

    process = psutil.Process()
    process.memory_info()
    started = time.process_time()
    for _ in range(BARE_SAMPLES):
        process.memory_info()
    return (time.process_time() - started) / BARE_SAMPLES


def monitor_cpu() -> dict[str, float]:
    from reer_otel_memory import MemoryMonitor, MemoryTracker
    from reer_otel_memory.monitoring import metrics as _monitor_metrics

    monitor = MemoryMonitor(monitoring_interval=MONITOR_INTERVAL_S, tracker=MemoryTracker())
    idle = threading.Event()
    thread_cpu_before = _monitor_metrics.totals().monitor_cpu_s
    process_cpu_before = time.process_time()
    wall_before = time.monotonic()
    monitor.start_monitoring()
    idle.wait(MONITOR_WINDOW_S)  # the measured window: this thread does nothing meanwhile
    monitor.stop_monitoring()
    wall_s = time.monotonic() - wall_before
    process_cpu_s = time.process_time() - process_cpu_before
    thread_cpu_s = _monitor_metrics.totals().monitor_cpu_s - thread_cpu_before
    return {
        "wall_s": wall_s,
        "samples": monitor.sample_count,
        "process_cpu_s": process_cpu_s,
        "thread_cpu_s": thread_cpu_s,
    }


def _fetch_ms(url: str, gzip: bool = False) -> float:
    """Median wall time of a scrape; ``gzip``: ask for it, as Prometheus always does."""
    headers = {"Accept-Encoding": "gzip"} if gzip else {}
    for _ in range(WARMUP_SCRAPES):
        urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10).read()
    times = []
    for _ in range(SCRAPES):
        started = time.perf_counter()
        urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10).read()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def _cpu_ms(action) -> float:
    action()
    times = []
    for _ in range(SCRAPES):
        started = time.process_time()
        action()
        times.append(time.process_time() - started)
    return statistics.median(times) * 1e3


def _record_operations() -> None:
    from reer_otel_memory import memory_context

    for index in range(OPERATIONS):
        with memory_context(f"operation_{index:03d}"):
            pass


def formatting_child() -> None:
    """Runs in a child of its own (its calls would add series to the scraped one's page), prints
    JSON: text formatting of a cumulative collection of the same operations, as any OpenTelemetry
    reader takes one (ours with nothing cached, and the OpenTelemetry exporter's translation
    followed by ``generate_latest``); then the endpoint's render when every operation was called
    again since the last (a busy service between two scrapes)."""
    from opentelemetry.exporter.prometheus import _CustomCollector
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from prometheus_client.exposition import generate_latest

    from reer_otel_memory import _telemetry
    from reer_otel_memory.export.exposition import OpenTelemetryText

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    previous = _telemetry.current()
    _telemetry.configure(previous.tracer_provider, provider)
    try:
        for _ in range(3):
            _record_operations()
        collected = reader.get_metrics_data()
    finally:
        _telemetry.restore(previous)
        provider.shutdown()

    class Translated:
        def collect(self):
            collector = _CustomCollector(disable_target_info=False, prefix="", scope_info_enabled=False, resource_attribute_filter=None)
            collector.add_metrics_data(collected)
            return list(collector.collect())

    figures = {
        "format_cold_ms": _cpu_ms(lambda: OpenTelemetryText().format(collected)),  # every series as new
        "format_bare_ms": _cpu_ms(lambda: generate_latest(Translated())),
    }
    from reer_otel_memory import start_memory_monitoring, start_prometheus_exporter

    start_prometheus_exporter(port=0)
    start_memory_monitoring()
    for _ in range(3):
        _record_operations()
    figures["render_changed_ms"] = _render_after_changes_ms(_exporter_pipeline().render)
    print(json.dumps(figures), flush=True)


def _render_after_changes_ms(render) -> float:
    """CPU of a page rendered after every operation was called once more since the last one."""
    render()
    times = []
    for _ in range(SCRAPES):
        _record_operations()
        started = time.process_time()
        render()
        times.append(time.process_time() - started)
    return statistics.median(times) * 1e3


def scrape_child() -> None:
    """Runs in a child: serves both endpoints, prints their URLs and CPU figures as JSON, and
    keeps serving until stdin closes, so the scrapes come from another process, as
    Prometheus's do (a client in the same process would share its interpreter lock)."""
    import gzip

    from prometheus_client import CollectorRegistry, Gauge, Histogram, disable_created_metrics, start_http_server

    from reer_otel_memory import start_memory_monitoring, start_prometheus_exporter
    from reer_otel_memory._telemetry import BYTES_BUCKETS, DURATION_BUCKETS

    figures: dict[str, object] = {}
    endpoint = start_prometheus_exporter(port=0)
    start_memory_monitoring()
    for _ in range(3):
        _record_operations()
    # Where a scrape's CPU goes: the SDK's collection (histograms as deltas, summed by the page),
    # then the text formatting.
    pipeline = _exporter_pipeline()
    reader, render = pipeline.reader, pipeline.render
    figures["collect_ms"] = _cpu_ms(reader.collect)
    figures["format_ms"] = _cpu_ms(reader._page.render)
    figures["render_ms"] = _cpu_ms(render)
    page = render()
    figures["gzip_levels"] = {
        level: (_cpu_ms(lambda level=level: gzip.compress(page, compresslevel=level)), len(gzip.compress(page, compresslevel=level)))
        for level in (1, 6)
    }
    if os.environ.get("BENCH_PROFILE"):
        # Where a scrape's CPU goes, function by function (stderr): BENCH_PROFILE=1 python -m benchmarks monitor
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.runcall(lambda: [render() for _ in range(SCRAPES)])
        pstats.Stats(profile, stream=sys.stderr).sort_stats("cumulative").print_stats(30)

    # Same lines as ours: without the *_created series prometheus_client adds by default.
    disable_created_metrics()
    registry = CollectorRegistry()
    peak = Histogram("bare_operation_peak_bytes", "Peak growth.", ["operation"], buckets=BYTES_BUCKETS, registry=registry)
    duration = Histogram("bare_operation_duration_seconds", "Duration.", ["operation"], buckets=DURATION_BUCKETS, registry=registry)
    net = Gauge("bare_operation_net_bytes", "Net bytes.", ["operation"], registry=registry)
    for index in range(OPERATIONS):
        name = f"operation_{index:03d}"
        peak.labels(name).observe(4096)
        duration.labels(name).observe(0.001)
        net.labels(name).set(0)
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    figures.update(ours_url=endpoint.url, bare_url=f"http://127.0.0.1:{server.server_port}/metrics")
    print(json.dumps(figures), flush=True)
    sys.stdin.read()


def _child_figures(function: str) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, "-c", f"from benchmarks.bench_monitor import {function}; {function}()"],
        capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    ).stdout
    return json.loads(output.splitlines()[-1])


def scrape_times() -> dict[str, float]:
    formatting = _child_figures("formatting_child")
    child = subprocess.Popen(
        [sys.executable, "-c", "from benchmarks.bench_monitor import scrape_child; scrape_child()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        figures = json.loads(child.stdout.readline())
        figures.update(formatting)
        figures["ours_ms"] = _fetch_ms(figures["ours_url"])
        figures["bare_ms"] = _fetch_ms(figures["bare_url"])
        figures["ours_gzip_ms"] = _fetch_ms(figures["ours_url"], gzip=True)
        figures["bare_gzip_ms"] = _fetch_ms(figures["bare_url"], gzip=True)
        gzip_request = urllib.request.Request(figures["ours_url"], headers={"Accept-Encoding": "gzip"})
        figures["gzip_size_bytes"] = len(urllib.request.urlopen(gzip_request, timeout=10).read())
        figures["size_bytes"] = len(urllib.request.urlopen(figures["ours_url"], timeout=10).read())
    finally:
        child.stdin.close()
        child.wait(timeout=60)
    return figures


def run() -> list[Figure]:
    bare_s = bare_psutil_sample_cpu_s()
    measured = monitor_cpu()
    samples = max(1, int(measured["samples"]))
    core_share_pct = measured["process_cpu_s"] / measured["wall_s"] * 100
    bare_core_share_pct = bare_s / MONITOR_INTERVAL_S * 100
    scrape = scrape_times()
    return [
        Figure(
            f"monitor CPU at a {MONITOR_INTERVAL_S:g} s interval, {measured['wall_s']:.0f} s, % of one core",
            core_share_pct, "%", "bare psutil sample every second", bare_core_share_pct, target="<= 0.05 %",
        ),
        Figure(
            f"monitor thread CPU per sample ({samples} samples)",
            measured["thread_cpu_s"] / samples * 1e3, "ms", "bare psutil memory_info()", bare_s * 1e3, target="<= 0.5 ms",
        ),
        Figure(
            f"/metrics scrape, {OPERATIONS} profiled operations ({scrape['size_bytes'] / 1024:.0f} KiB), median",
            scrape["ours_ms"], "ms", "bare prometheus_client registry, same series", scrape["bare_ms"], target="<= 10 ms",
        ),
        Figure(
            f"/metrics scrape with gzip, as Prometheus asks ({scrape['gzip_size_bytes'] / 1024:.0f} KiB), median",
            scrape["ours_gzip_ms"], "ms", "bare prometheus_client registry, gzip", scrape["bare_gzip_ms"], target="<= 10 ms",
        ),
        Figure("  page render (collection + text), CPU", scrape["render_ms"], "ms"),
        Figure("  of which SDK collection, CPU", scrape["collect_ms"], "ms"),
        Figure("  of which text formatting, CPU", scrape["format_ms"], "ms"),
        Figure(f"  page render after all {OPERATIONS} operations were called again, CPU", scrape["render_changed_ms"], "ms"),
        Figure("  text formatting of a cumulative collection, nothing cached, CPU", scrape["format_cold_ms"], "ms",
               "exporter translation + generate_latest, same data", scrape["format_bare_ms"]),
        *(
            Figure(f"  gzip level {level} of the page ({size / 1024:.1f} KiB), CPU", ms, "ms")
            for level, (ms, size) in sorted(scrape["gzip_levels"].items(), key=lambda item: int(item[0]))
        ),
    ]


if __name__ == "__main__":
    for figure in run():
        print(figure.line())
