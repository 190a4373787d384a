"""Helpers to assert memory telemetry in tests, with real in-memory OpenTelemetry SDK readers.

Inside ``with capture_telemetry() as telemetry:`` every profiled operation and package
instrument reports to a fresh ``TracerProvider`` with an ``InMemorySpanExporter`` and a
``MeterProvider`` with an ``InMemoryMetricReader``; the previous binding is restored afterwards.
The global providers are never touched, so it works whether or not the process configured an
SDK. The README ("Testing your own code") shows it in use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from . import _telemetry
from ._runtime import RUNTIME
from .export.naming import label_name

_MISSING = object()


class TelemetryCapture:
    """Spans and metric points recorded inside :func:`capture_telemetry`."""

    def __init__(self) -> None:
        self.span_exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.span_exporter))
        self.metric_reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.metric_reader])

    # --- spans ---------------------------------------------------------------------------------

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        """Finished spans, oldest first; only those called ``name`` if given."""
        spans = list(self.span_exporter.get_finished_spans())
        return [s for s in spans if name is None or s.name == name]

    def span(self, name: str) -> ReadableSpan:
        """The one finished span called ``name``; AssertionError if there are none or several."""
        found = self.spans(name)
        if len(found) != 1:
            seen = sorted({s.name for s in self.spans()})
            raise AssertionError(f"expected one span named {name!r}, found {len(found)} (spans seen: {seen})")
        return found[0]

    def span_numbers(self, name: str) -> dict[str, float]:
        """The numeric attributes of the one span called ``name``, as floats (typed for checkers).

        ``span(name).attributes`` holds any OpenTelemetry attribute value; this keeps the numbers
        (``reer.memory.rss.peak``, ``reer.memory.rss.delta``, ...) so arithmetic on them type-checks.
        """
        attributes = self.span(name).attributes or {}
        return {key: float(value) for key, value in attributes.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}

    # --- metrics -------------------------------------------------------------------------------

    def collect(self) -> list[Any]:
        """Collect now; every metric (name, unit, data) from every scope."""
        data = self.metric_reader.get_metrics_data()
        found: list[Any] = []
        if data is None:
            return found
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                found.extend(scope_metrics.metrics)
        return found

    def metric(self, name: str) -> Any | None:
        """The collected metric called ``name`` (with ``.unit`` and ``.data``), or None."""
        for metric in self.collect():
            if metric.name == name:
                return metric
        return None

    def metric_points(self, name: str, **attributes: Any) -> Sequence[Any]:
        """Data points of metric ``name`` whose attributes include ``attributes``.

        Attribute keys are passed as their Prometheus label names (``export.naming.label_name``):
        ``reer_operation="x"`` matches ``reer.operation``, and ``reer_trace_store_path`` matches
        ``reer.trace_store.path``.
        """
        metric = self.metric(name)
        if metric is None:
            return []
        wanted = {label_name(key): value for key, value in attributes.items()}
        points = []
        for point in metric.data.data_points:
            point_attributes = {label_name(key): value for key, value in (point.attributes or {}).items()}
            if all(point_attributes.get(k, _MISSING) == v for k, v in wanted.items()):
                points.append(point)
        return points

    def metric_value(self, name: str, **attributes: Any) -> float | None:
        """The value (sum or gauge) of the one point matching, or None; histograms give their sum."""
        points = self.metric_points(name, **attributes)
        if not points:
            return None
        if len(points) > 1:
            raise AssertionError(f"{len(points)} points of {name!r} match {attributes!r}; narrow the attributes")
        point = points[0]
        return getattr(point, "value", getattr(point, "sum", None))

    def clear(self) -> None:
        """Forget the spans recorded so far."""
        self.span_exporter.clear()

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def reset_state() -> None:
    """Put the package's process-wide state back as a fresh import left it.

    Stops what the package started on its own (the default monitor, explanation windows, the
    explain listener, the flight recorder), binds profiled operations to the global providers
    again, and forgets the configuration, the tracker and every other component but the probe
    (the one reader of the kernel's high-water mark): the next use builds them afresh from the
    ``REER_MEMORY_*`` variables. Objects a test made itself (a
    :class:`~reer_otel_memory.MemoryMonitor`, an endpoint) stay its own to stop.
    """
    RUNTIME.reset()


@contextlib.contextmanager
def capture_telemetry() -> Iterator[TelemetryCapture]:
    """Bind the package to in-memory SDK providers for the block; yields a :class:`TelemetryCapture`."""
    capture = TelemetryCapture()
    previous = _telemetry.current()
    _telemetry.configure(capture.tracer_provider, capture.meter_provider)
    try:
        yield capture
    finally:
        _telemetry.restore(previous)
        capture.shutdown()
