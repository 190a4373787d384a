"""OTLP end to end: a service under opentelemetry-instrument pushes to a real OTLP/HTTP receiver.

The test runs the receiver itself, on loopback: an HTTP server that decodes each POST to
``/v1/traces``, ``/v1/metrics`` and ``/v1/logs`` with the ``opentelemetry-proto`` messages, as a
collector does, and answers 200 with the empty response message. The service is started with
the distro's OTLP exporters switched to HTTP/protobuf and pointed at it, a profiled target, and
thresholds low enough that the level is not ok. What arrives is checked against the documented
names, types and units (docs/telemetry.md, from ``_names``).

The other zero-code path, every ``OTEL_*`` at its default (gRPC to localhost:4317) with no collector
listening, is run by tests/test_readme.py: the README's OTLP block names only the default endpoint
and the test asserts the service exits 0 with no "Failed to auto initialize" and no traceback.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from _children import clean_environment
from conftest import wait_for
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

from reer_otel_memory import _names as names
from reer_otel_memory.config import MB

pytestmark = pytest.mark.e2e

SERVICE_NAME = "reer-otlp-e2e"
TARGET = "toy_service.allocate_and_free"
CALLS = 10  # past the leak detector's 8-call warm-up, so its per-operation gauge is exported too
BLOCK_MB = 16

TOY_MODULE = '''
def allocate_and_free(size):
    block = bytearray(size)  # zero-filled: every page is touched, so the RSS peak sees it
    total = len(block)
    del block
    return total
'''

TOY_MAIN = f'''
import sys

import toy_service  # imported after instrumentation: the target is wrapped on import

for _ in range({CALLS}):
    toy_service.allocate_and_free({BLOCK_MB} * 1024 * 1024)
print("called", flush=True)
sys.stdin.read()  # serve until the test closes stdin; the SDK flushes at exit
'''

# Each OTLP/HTTP path, the request message it carries and the (empty) response it gets.
ROUTES: dict[str, tuple[Any, Any]] = {
    "/v1/traces": (trace_service_pb2.ExportTraceServiceRequest, trace_service_pb2.ExportTraceServiceResponse),
    "/v1/metrics": (metrics_service_pb2.ExportMetricsServiceRequest, metrics_service_pb2.ExportMetricsServiceResponse),
    "/v1/logs": (logs_service_pb2.ExportLogsServiceRequest, logs_service_pb2.ExportLogsServiceResponse),
}

# What the monitor and the profiled operations export, by kind (gauges are observable gauges, the
# monitor's counters observable counters, reer.memory.operation.net an up-down counter).
GAUGES = (
    names.METRIC_RSS, names.METRIC_PEAK_RSS, names.METRIC_HEAP, names.METRIC_LIMIT, names.METRIC_UTILIZATION,
    names.METRIC_THRESHOLD, names.METRIC_LEVEL, names.METRIC_LEAK_SUSPECTED,
)
COUNTERS = (names.METRIC_ALERTS, names.METRIC_CLEANUPS, names.METRIC_CLEANUP_FREED, names.METRIC_MONITOR_CPU)
UP_DOWN_COUNTERS = (names.METRIC_OPERATION_NET,)
HISTOGRAMS = (names.METRIC_OPERATION_PEAK, names.METRIC_OPERATION_DURATION)
PER_OPERATION = (names.METRIC_OPERATION_PEAK, names.METRIC_OPERATION_NET, names.METRIC_OPERATION_DURATION, names.METRIC_LEAK_SUSPECTED)

INT_SPAN_ATTRIBUTES = (names.ATTR_RSS_START, names.ATTR_RSS_END, names.ATTR_RSS_DELTA, names.ATTR_RSS_PEAK, names.ATTR_OVERLAP)
STR_SPAN_ATTRIBUTES = (names.ATTR_OPERATION, names.ATTR_LEVEL, names.ATTR_FUNCTION)


class Receiver:
    """An OTLP/HTTP receiver on a loopback port: the decoded requests, by path, in arrival order."""

    def __init__(self) -> None:
        self.requests: dict[str, list[Any]] = {path: [] for path in ROUTES}
        self.errors: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                route = ROUTES.get(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if route is None:
                    receiver._error(f"POST to an unknown path {self.path}")
                    self.send_error(404)
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request_type, response_type = route
                request = request_type()
                request.ParseFromString(body)
                with receiver._lock:
                    receiver.requests[self.path].append(request)
                response = response_type().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(response)))
                self.end_headers()
                self.wfile.write(response)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _error(self, message: str) -> None:
        with self._lock:
            self.errors.append(message)

    def received(self, path: str) -> list[Any]:
        with self._lock:
            return list(self.requests[path])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver()
    try:
        yield started
    finally:
        started.close()


def attributes(pairs: Any) -> dict[str, AnyValue]:
    return {pair.key: pair.value for pair in pairs}


def plain(value: AnyValue) -> object:
    """The Python value of an OTLP AnyValue (scalars only)."""
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def target_spans(receiver: Receiver) -> list[Any]:
    return [
        span
        for request in receiver.received("/v1/traces")
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
        if span.name == TARGET
    ]


def latest_metrics(receiver: Receiver) -> dict[str, tuple[Metric, dict[str, object]]]:
    """Each reer.* metric as last exported (cumulative), with its resource's attributes."""
    latest: dict[str, tuple[Metric, dict[str, object]]] = {}
    for request in receiver.received("/v1/metrics"):
        for resource_metrics in request.resource_metrics:
            resource = {key: plain(value) for key, value in attributes(resource_metrics.resource.attributes).items()}
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name.startswith("reer."):
                        latest[metric.name] = (metric, resource)
    return latest


def points(metric: Metric) -> list[Any]:
    kind = metric.WhichOneof("data")
    assert kind is not None, metric.name
    return list(getattr(metric, kind).data_points)


def by_attributes(metric: Metric, key: str) -> dict[object, Any]:
    return {plain(attributes(point.attributes)[key]): point for point in points(metric)}


def number(point: Any) -> float:
    return float(point.as_int if point.WhichOneof("value") == "as_int" else point.as_double)


def missing(receiver: Receiver) -> list[str]:
    """What the test still waits for at the receiver (nothing once everything has arrived)."""
    waiting = []
    spans = len(target_spans(receiver))
    if spans < CALLS:
        waiting.append(f"{CALLS - spans} of {CALLS} spans of {TARGET}")
    latest = latest_metrics(receiver)
    expected = {name for name, _, _ in (*GAUGES, *COUNTERS, *UP_DOWN_COUNTERS, *HISTOGRAMS)}
    waiting.extend(f"metric {name}" for name in sorted(expected - set(latest)))
    if names.METRIC_OPERATION_DURATION[0] in latest:
        duration = by_attributes(latest[names.METRIC_OPERATION_DURATION[0]][0], names.ATTR_OPERATION).get(TARGET)
        if duration is None or duration.count < CALLS:
            waiting.append(f"{CALLS} calls in {names.METRIC_OPERATION_DURATION[0]}")
    if names.METRIC_ALERTS[0] in latest:
        alerts = by_attributes(latest[names.METRIC_ALERTS[0]][0], names.LABEL_LEVEL).get("alert")
        if alerts is None or number(alerts) < 1:
            waiting.append(f"an alert in {names.METRIC_ALERTS[0]}")
    return waiting


def test_spans_and_metrics_arrive_over_otlp_http_protobuf(tmp_path: Path, receiver: Receiver) -> None:
    (tmp_path / "toy_service.py").write_text(textwrap.dedent(TOY_MODULE))
    (tmp_path / "main.py").write_text(textwrap.dedent(TOY_MAIN))
    launcher = Path(sys.executable).with_name("opentelemetry-instrument")
    env = clean_environment({
        "OTEL_SERVICE_NAME": SERVICE_NAME,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        # Metrics compressed, traces not, as collectors get either: the receiver decodes both.
        "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION": "gzip",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        names.ENV_PROFILE_TARGETS: "toy_service:allocate_and_free",
        # Any Python process is past 1 MB: the level is alert from the first sample on.
        names.ENV_ALERT_MB: "1",
        names.ENV_CLEANUP_MB: "90%",
        names.ENV_CRITICAL_MB: "95%",
        names.ENV_MONITORING_INTERVAL: "0.1",
    })
    process = subprocess.Popen(
        [str(launcher), sys.executable, "main.py"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        try:
            wait_for(lambda: process.poll() is not None or not missing(receiver), timeout_s=20, interval_s=0.05)
        except AssertionError:
            process.kill()
            _, stderr = process.communicate(timeout=10)
            raise AssertionError(f"still missing at the receiver: {missing(receiver)}; the service's stderr:\n{stderr}") from None
        assert process.poll() is None, f"the service exited early: {process.communicate(timeout=10)}"
        stdout, stderr = process.communicate(input="", timeout=30)  # closing stdin ends it cleanly
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert "called" in stdout
    assert "Traceback" not in stderr and "Failed to auto initialize" not in stderr, stderr
    assert receiver.errors == []

    # --- spans: one per call, each with every attribute of a profiled call, typed as documented.
    spans = target_spans(receiver)
    assert len(spans) == CALLS
    heap_deltas = []
    growths = []
    for span in spans:
        values = attributes(span.attributes)
        ours = {key for key in values if key.startswith("reer.")}
        assert ours <= {*INT_SPAN_ATTRIBUTES, *STR_SPAN_ATTRIBUTES, names.ATTR_HEAP_DELTA}, ours
        for key in INT_SPAN_ATTRIBUTES:
            assert values[key].WhichOneof("value") == "int_value", (key, values[key])
        for key in STR_SPAN_ATTRIBUTES:
            assert values[key].WhichOneof("value") == "string_value", (key, values[key])
        assert values[names.ATTR_OPERATION].string_value == TARGET
        assert values[names.ATTR_FUNCTION].string_value == TARGET
        assert values[names.ATTR_LEVEL].string_value == "alert"
        start, end, delta, peak, _overlap = (values[key].int_value for key in INT_SPAN_ATTRIBUTES)
        assert delta == end - start
        assert peak >= max(start, end)
        growths.append(peak - start)
        if names.ATTR_HEAP_DELTA in values:
            assert values[names.ATTR_HEAP_DELTA].WhichOneof("value") == "int_value"
            heap_deltas.append(values[names.ATTR_HEAP_DELTA].int_value)

    # The first call's block is new memory, given back before the call ends: only the peak sees it.
    # (Later calls may reuse what the allocator kept of it, so their RSS need not grow at all.)
    assert max(growths) >= BLOCK_MB // 2 * MB

    # --- metrics: every one with its documented unit and kind, from this service.
    latest = latest_metrics(receiver)
    heap_readable = names.METRIC_HEAP[0] in latest
    if heap_readable:
        assert heap_deltas, "the heap is readable here, yet no call measured it"
    kinds = {
        **{metric: "gauge" for metric in GAUGES},
        **{metric: "sum" for metric in (*COUNTERS, *UP_DOWN_COUNTERS)},
        **{metric: "histogram" for metric in HISTOGRAMS},
    }
    for (name, unit, description), kind in kinds.items():
        metric, resource = latest[name]
        assert (metric.unit, metric.description, metric.WhichOneof("data")) == (unit, description, kind), name
        assert resource["service.name"] == SERVICE_NAME
        assert points(metric), name
        if kind == "sum":
            assert metric.sum.is_monotonic == ((name, unit, description) in COUNTERS), name
    for name, _, _ in PER_OPERATION:
        assert set(by_attributes(latest[name][0], names.ATTR_OPERATION)) == {TARGET}, name

    def exported(entry: tuple[str, str, str]) -> Metric:
        return latest[entry[0]][0]

    (rss,) = points(exported(names.METRIC_RSS))
    assert number(rss) > 1 * MB
    thresholds = {level: number(point) for level, point in by_attributes(exported(names.METRIC_THRESHOLD), names.LABEL_LEVEL).items()}
    assert set(thresholds) == {"alert", "cleanup", "critical"}
    assert thresholds["alert"] == 1 * MB < thresholds["cleanup"] < thresholds["critical"]
    (level,) = points(exported(names.METRIC_LEVEL))
    assert number(level) == 1  # alert
    alerts = {level: number(point) for level, point in by_attributes(exported(names.METRIC_ALERTS), names.LABEL_LEVEL).items()}
    assert alerts == {"alert": 1, "cleanup": 0, "critical": 0}
    duration = by_attributes(exported(names.METRIC_OPERATION_DURATION), names.ATTR_OPERATION)[TARGET]
    operation_peak = by_attributes(exported(names.METRIC_OPERATION_PEAK), names.ATTR_OPERATION)[TARGET]
    assert duration.count == operation_peak.count == CALLS
    assert operation_peak.max == max(growths)
    assert 0 < duration.sum < 60
