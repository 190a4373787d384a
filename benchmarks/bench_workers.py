"""Pre-fork worker pages: a worker's CPU for writing its live page at 100 requests/s, and idle.

Runs in a child process (its meter provider and threads stay out of this one): the
OpenTelemetry Prometheus reader, the monitor's instruments and one profiled operation (64 KiB
allocated per call, as the pre-fork tests' app does), driven at ``RATE`` calls per second for
``WINDOW_S`` seconds (20 s; ``BENCH_WORKERS_SECONDS`` changes it) twice: first without the page
writer (baseline: what the calls themselves cost), then with it. Reported: the writer thread's
CPU as % of one core (target < 1%) against the calls' own CPU share, the CPU of one write
against one collection by the exporter (what every scrape costs anyway), writes per second,
and the writer's CPU in an idle worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks._report import QUICK, Figure

WINDOW_S = float(os.environ.get("BENCH_WORKERS_SECONDS", "20" if not QUICK else "4"))
RATE = 100


def _paced(calls_per_s: float, seconds: float, call) -> tuple[float, float]:
    """Call ``call()`` ``calls_per_s`` times a second for ``seconds``; (wall s, process CPU s)."""
    tick = 1.0 / calls_per_s if calls_per_s else seconds
    pause = threading.Event()
    started, cpu = time.monotonic(), time.process_time()
    next_at = started
    while True:
        now = time.monotonic()
        if now - started >= seconds:
            break
        if calls_per_s:
            call()
        next_at += tick
        pause.wait(max(0.0, next_at - time.monotonic()))
    return time.monotonic() - started, time.process_time() - cpu


def worker_child() -> None:
    """Runs in a child; prints the figures as JSON."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider

    from reer_otel_memory import _telemetry, memory_profile
    from reer_otel_memory.export import workers
    from reer_otel_memory.monitoring.monitor import get_memory_monitor

    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    _telemetry.configure(_telemetry.current().tracer_provider, provider)
    get_memory_monitor()  # its gauges and counters on the page, as under the instrumentor
    collector = workers._prometheus_reader_collector(provider)

    @memory_profile(operation_name="handle_work")
    def handle_work(size: int) -> int:
        return len(bytearray(size))

    def request() -> None:
        handle_work(1 << 16)

    for _ in range(50):
        request()
    collect_s = []
    for _ in range(50):
        before = time.process_time()
        list(collector.collect())
        collect_s.append(time.process_time() - before)
    collect_s.sort()

    calls_wall, calls_cpu = _paced(RATE, WINDOW_S, request)
    directory = tempfile.mkdtemp(prefix="bench-workers-")
    pages = workers.WorkerPages(Path(directory), os.getppid(), collector.collect, interval_s=30.0, owns_directory=False)
    pages.start_writing()
    writer_cpu_before, writes_before = pages.writer_cpu_s, pages.writes
    busy_wall, busy_cpu = _paced(RATE, WINDOW_S, request)
    writer_cpu, writes = pages.writer_cpu_s - writer_cpu_before, pages.writes - writes_before
    threading.Event().wait(2 * workers.WRITE_INTERVAL_S)  # the write that shows the last calls
    idle_before, idle_writes_before = pages.writer_cpu_s, pages.writes
    idle_wall, _ = _paced(0, min(WINDOW_S, 10.0), request)
    print(
        json.dumps(
            {
                "calls_wall_s": calls_wall,
                "calls_cpu_s": calls_cpu,
                "busy_wall_s": busy_wall,
                "busy_cpu_s": busy_cpu,
                "writer_cpu_s": writer_cpu,
                "writes": writes,
                "idle_wall_s": idle_wall,
                "idle_writer_cpu_s": pages.writer_cpu_s - idle_before,
                "idle_writes": pages.writes - idle_writes_before,
                "collect_s": collect_s[len(collect_s) // 2],
                "page_bytes": os.path.getsize(pages.own_page),
            }
        ),
        flush=True,
    )


def run() -> list[Figure]:
    output = subprocess.run(
        [sys.executable, "-c", "from benchmarks.bench_workers import worker_child; worker_child()"],
        capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    ).stdout
    m = json.loads(output.splitlines()[-1])
    writes = max(1, int(m["writes"]))
    writer_share = m["writer_cpu_s"] / m["busy_wall_s"] * 100
    calls_share = m["calls_cpu_s"] / m["calls_wall_s"] * 100
    return [
        Figure(
            f"worker page writer at {RATE} requests/s, {m['busy_wall_s']:.0f} s, % of one core",
            writer_share, "%", f"the {RATE} profiled calls/s themselves", calls_share, target="< 1 %",
        ),
        Figure(
            f"CPU per page write ({m['page_bytes'] / 1024:.1f} KiB page)",
            m["writer_cpu_s"] / writes * 1e3, "ms", "one collection by the exporter (any scrape)", m["collect_s"] * 1e3,
        ),
        Figure("  writes per second while busy", writes / m["busy_wall_s"], "/s", target="<= 2 /s"),
        Figure(
            f"  process CPU at {RATE} requests/s with the writer, % of one core",
            m["busy_cpu_s"] / m["busy_wall_s"] * 100, "%", "without the writer", calls_share,
        ),
        Figure(
            f"worker page writer in an idle worker ({m['idle_writes']} writes in {m['idle_wall_s']:.0f} s), % of one core",
            m["idle_writer_cpu_s"] / m["idle_wall_s"] * 100, "%",
        ),
    ]


if __name__ == "__main__":
    for figure in run():
        print(figure.line())
