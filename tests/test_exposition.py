"""The fast text exposition writes exactly what prometheus_client writes, on real registries."""

from __future__ import annotations

import urllib.error
import urllib.request

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, Summary
from prometheus_client.exposition import generate_latest

from reer_otel_memory import memory_context, start_prometheus_exporter
from reer_otel_memory._exposition import generate_text


class Frozen:
    """The families of one collection, so both encoders format the very same data."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.families = list(registry.collect())

    def collect(self):
        return self.families


def test_same_bytes_as_prometheus_client_for_every_metric_type():
    registry = CollectorRegistry()
    Counter("requests", "Requests served.", ["path"], registry=registry).labels('/a"b\\c\nd').inc(3)
    Gauge("temperature_celsius", "Multi\nline \\ help.", registry=registry).set(-1.5e-7)
    histogram = Histogram("latency_seconds", "Latency.", ["route"], buckets=(0.1, 1.0, 1e7), registry=registry)
    histogram.labels("x").observe(0.5)
    histogram.labels("y").observe(123456789.0)
    Summary("size_bytes", "Sizes.", registry=registry).observe(1024)
    Info("build", "Build info.", registry=registry).info({"version": "1.2.3", "commit": "abc"})
    frozen = Frozen(registry)
    assert generate_text(frozen) == generate_latest(frozen)


@settings(max_examples=60, deadline=None)
@given(
    label_value=st.text(max_size=20),
    value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-(2**60), max_value=2**60)),
)
def test_same_bytes_for_any_label_value_and_number(label_value, value):
    registry = CollectorRegistry()
    Gauge("any_value", "Any value.", ["label"], registry=registry).labels(label_value).set(value)
    frozen = Frozen(registry)
    assert generate_text(frozen) == generate_latest(frozen)


def test_same_bytes_for_the_opentelemetry_reader_with_profiled_operations(telemetry):
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    provider = MeterProvider(metric_readers=[reader])
    try:
        meter = provider.get_meter("scope")
        meter.create_histogram("reer.memory.operation.peak", unit="By").record(5000, {"reer.operation": "load"})
        meter.create_counter("reer.memory.alerts").add(2, {"level": "alert"})
        meter.create_up_down_counter("reer.memory.operation.net", unit="By").add(-4096, {"reer.operation": "load"})
        frozen = Frozen(registry)
        text = generate_text(frozen)
        assert text == generate_latest(frozen)
        assert b"reer_memory_operation_peak_bytes_count{" in text and b"reer_operation=\"load\"} 1.0" in text
        assert b"reer_memory_alerts_total" in text
    finally:
        provider.shutdown()


def test_the_endpoint_serves_the_fast_exposition():
    endpoint = start_prometheus_exporter(port=0)
    try:
        for index in range(5):
            with memory_context(f"exposition_op_{index}"):
                pass
        with urllib.request.urlopen(endpoint.url, timeout=10) as response:
            assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            page = response.read().decode()
        assert "# TYPE reer_memory_rss_bytes gauge" in page
        missing = urllib.request.Request(endpoint.url.replace("/metrics", "/nothing"))
        try:
            urllib.request.urlopen(missing, timeout=10)
            raise AssertionError("a path other than /metrics must be 404")
        except urllib.error.HTTPError as error:
            assert error.code == 404
    finally:
        endpoint.shutdown()
