"""A small service using the package, for a real Prometheus to scrape.

Run as a script (``python tests/metrics_process.py``) it starts the Prometheus endpoint on a
free port and the default memory monitor (thresholds and interval from ``REER_MEMORY_*``),
prints one JSON line ``{"port": ..., "pid": ..., "rss_bytes": ...}``, then keeps running
profiled operations:

- ``load_batch``: builds and drops a list each call (duration and peak-growth histograms);
- ``cache_fill``: keeps 64 KiB more per call for its first calls, so leak detection has
  something to suspect, then is no longer called (what it kept stays at a few MB).

It also serves a Flask request every period (werkzeug's test client, under the Flask
OpenTelemetry instrumentation, with ``REER_MEMORY_SERVER_SPANS`` measuring requests), so the
per-route series exist.

At start it also loads a small model through the memory profiler, registers two managed
resources and cleans one up, and writes a few traces to a trace store at the path given as
its first argument, so the model, resource and trace-store series exist.

Commands on stdin, one per line, each answered with one JSON line:

- ``grow <bytes>``: allocate and hold that many bytes, every page touched so RSS includes it;
- ``cleanup``: run one manual cleanup through the monitor;
- ``exit``: stop.

Tests start it with :class:`MetricsProcess`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LEAK_CALLS = 40
LEAK_BYTES_PER_CALL = 64 * 1024
OPERATION_PERIOD_S = 0.05
#: Fast sampling, so the monitor's counters move during a test.
MONITORING_INTERVAL_S = "0.5"


# --- the service (child side) --------------------------------------------------------------


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _use_models_resources_and_trace_store(trace_store_path: str) -> list[object]:
    """Exercise the optional parts once; returns what must stay alive."""
    import asyncio

    from reer_otel_memory import get_memory_profiler, get_resource_manager
    from reer_otel_memory.trace_store import REERTraceStore

    model = get_memory_profiler().profile_model_loading("tiny_model", lambda: bytearray(256 * 1024))
    manager = get_resource_manager()
    embeddings = bytearray(128 * 1024)
    manager.register_resource("embeddings", embeddings, keep_alive=True, release_on_pressure=False)
    manager.register_resource("scratch", bytearray(64 * 1024), keep_alive=True, release_on_pressure=True)
    manager.cleanup_resource("scratch")
    store = REERTraceStore(trace_store_path)
    asyncio.run(store.add_traces([{"query": f"q{index}", "score": index / 4} for index in range(4)]))
    return [model, embeddings, store]


def main() -> None:
    from reer_otel_memory import PROBE, memory_context, memory_profile, start_memory_monitoring, start_prometheus_exporter

    held: list[bytearray] = []
    cache: list[bytes] = []

    @memory_profile(operation_name="load_batch")
    def load_batch() -> int:
        batch = [index * 2 for index in range(20_000)]
        return len(batch)

    def cache_fill() -> None:
        with memory_context("cache_fill"):
            cache.append(b"\x01" * LEAK_BYTES_PER_CALL)

    endpoint = start_prometheus_exporter(port=0)
    request = _flask_route()
    monitor = start_memory_monitoring()
    kept = _use_models_resources_and_trace_store(sys.argv[1])
    stop = threading.Event()

    def commands() -> None:
        for line in sys.stdin:
            command, _, argument = line.strip().partition(" ")
            if command == "grow":
                # bytearray(n) alone may map untouched zero pages; filling touches every page.
                block = bytearray(int(argument))
                block[:] = b"\x01" * len(block)
                held.append(block)
                _reply({"rss_bytes": PROBE.rss_bytes()})
            elif command == "cleanup":
                result = monitor.cleanup()
                _reply({"freed_bytes": result.freed_bytes})
            elif command == "exit":
                break
        stop.set()

    threading.Thread(target=commands, daemon=True).start()
    _reply({"port": endpoint.port, "pid": os.getpid(), "rss_bytes": PROBE.rss_bytes()})
    calls = 0
    # Paces the workload; the test side polls Prometheus and never waits on this.
    while not stop.wait(OPERATION_PERIOD_S):
        load_batch()
        request()
        if calls < LEAK_CALLS:
            cache_fill()
        calls += 1
    monitor.stop_monitoring()
    endpoint.shutdown()
    del kept


def _flask_route() -> Any:
    """A function serving one request of a Flask route through the test client (REER_MEMORY_SERVER_SPANS)."""
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.sdk.trace import TracerProvider

    from reer_otel_memory.frameworks import server_spans

    server_spans.install()
    FlaskInstrumentor().instrument(tracer_provider=TracerProvider())
    from flask import Flask

    app = Flask("metrics_process")

    @app.route("/items/<int:size>")
    def items(size: int) -> str:
        return str(len(bytearray(size)))

    client = app.test_client()
    return lambda: client.get("/items/4096")


# --- the launcher (test side) --------------------------------------------------------------


class MetricsProcess:
    """This script as a child process; ``target`` is its ``host:port`` for Prometheus."""

    def __init__(self, workdir: Path, env: Mapping[str, str] | None = None) -> None:
        child_env = {**os.environ, "REER_MEMORY_MONITORING_INTERVAL": MONITORING_INTERVAL_S, **(env or {})}
        self.trace_store_path = Path(workdir) / "traces.jsonl"
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(self.trace_store_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env,
        )
        first = self._read()
        self.port: int = first["port"]
        self.pid: int = first["pid"]
        self.start_rss_bytes: int = first["rss_bytes"]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"metrics process exited with status {self.process.wait(timeout=10)} before answering")
        return json.loads(line)

    def command(self, text: str) -> dict[str, Any]:
        """Send one command and return its answer."""
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()
        return self._read()

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            try:
                self.process.stdin.write("exit\n")
                self.process.stdin.close()
                self.process.wait(timeout=10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> MetricsProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


if __name__ == "__main__":
    main()
