"""reer_otel_memory.testing: what users assert memory telemetry with, used as they would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from reer_otel_memory import memory_context, memory_profile
from reer_otel_memory.testing import TelemetryCapture, capture_telemetry


@memory_profile(operation_name="load_model")
def load_model() -> bytearray:
    return bytearray(4 * 1024 * 1024)


def test_the_documented_example():
    with capture_telemetry() as telemetry:
        load_model()
    assert telemetry.span_numbers("load_model")["reer.memory.rss.delta"] < 512 * 2**20
    assert telemetry.metric_points("reer.memory.operation.duration")


def test_span_numbers_are_the_spans_numeric_attributes_as_floats():
    with capture_telemetry() as telemetry:
        load_model()
    attributes = telemetry.span("load_model").attributes or {}
    numbers = telemetry.span_numbers("load_model")
    assert numbers["reer.memory.rss.peak"] == float(attributes["reer.memory.rss.peak"])
    assert all(type(value) is float for value in numbers.values())
    # Strings (the operation's name) and booleans are left out.
    assert "reer.operation" in attributes and "reer.operation" not in numbers
    assert not any(isinstance(attributes[key], bool) for key in numbers)


def test_spans_are_filtered_and_ordered():
    with capture_telemetry() as telemetry:
        for name in ("first", "second", "first"):
            with memory_context(name):
                pass
    assert [span.name for span in telemetry.spans()] == ["first", "second", "first"]
    assert len(telemetry.spans("first")) == 2
    assert telemetry.spans("absent") == []


def test_span_insists_on_exactly_one():
    with capture_telemetry() as telemetry:
        for name in ("twice", "twice", "once"):
            with memory_context(name):
                pass
    assert telemetry.span("once").name == "once"
    with pytest.raises(AssertionError, match=r"expected one span named 'twice', found 2 .*'once', 'twice'"):
        telemetry.span("twice")
    with pytest.raises(AssertionError, match=r"found 0"):
        telemetry.span("never")


def test_metric_lookups():
    with capture_telemetry() as telemetry:
        for _ in range(3):
            with memory_context("ingest"):
                pass
        with memory_context("export"):
            pass
        duration = telemetry.metric("reer.memory.operation.duration")
        assert duration is not None and duration.unit == "s"
        assert telemetry.metric("reer.not.a.metric") is None
        assert telemetry.metric_points("reer.not.a.metric") == []

        (ingest,) = telemetry.metric_points("reer.memory.operation.duration", reer_operation="ingest")
        assert ingest.count == 3
        assert telemetry.metric_value("reer.memory.operation.duration", reer_operation="ingest") == ingest.sum
        assert telemetry.metric_points("reer.memory.operation.duration", reer_operation="nothing") == []
        assert telemetry.metric_value("reer.memory.operation.duration", reer_operation="nothing") is None
        with pytest.raises(AssertionError, match="2 points"):
            telemetry.metric_value("reer.memory.operation.duration")

        net = telemetry.metric_value("reer.memory.operation.net", reer_operation="export")
        assert net == telemetry.span("export").attributes["reer.memory.rss.delta"]
        names = {metric.name for metric in telemetry.collect()}
        assert {"reer.memory.operation.duration", "reer.memory.operation.net"} <= names


def test_clear_forgets_spans_only():
    with capture_telemetry() as telemetry:
        with memory_context("before_clear"):
            pass
        telemetry.clear()
        with memory_context("after_clear"):
            pass
        assert [span.name for span in telemetry.spans()] == ["after_clear"]
        assert telemetry.metric_points("reer.memory.operation.duration", reer_operation="before_clear")


def test_nested_captures_restore_the_outer_one():
    with capture_telemetry() as outer:
        with memory_context("to_outer_before"):
            pass
        with capture_telemetry() as inner:
            assert isinstance(inner, TelemetryCapture) and inner is not outer
            with memory_context("to_inner"):
                pass
        with memory_context("to_outer_after"):
            pass
    assert [span.name for span in inner.spans()] == ["to_inner"]
    assert [span.name for span in outer.spans()] == ["to_outer_before", "to_outer_after"]
    assert outer.metric_points("reer.memory.operation.duration", reer_operation="to_inner") == []


def test_the_binding_is_restored_after_an_error():
    with pytest.raises(RuntimeError):
        with capture_telemetry() as failed:
            raise RuntimeError("test body failed")
    with capture_telemetry() as telemetry:
        with memory_context("after_failure"):
            pass
    assert telemetry.span("after_failure")
    assert failed.spans() == []


GLOBAL_SDK_SCRIPT = textwrap.dedent(
    """
    import json
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from reer_otel_memory import memory_context
    from reer_otel_memory.testing import capture_telemetry

    global_exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(global_exporter))
    trace.set_tracer_provider(provider)

    with memory_context("global_before"):
        pass
    with capture_telemetry() as telemetry:
        with memory_context("captured"):
            pass
    with memory_context("global_after"):
        pass
    print(json.dumps({
        "global": [s.name for s in global_exporter.get_finished_spans()],
        "captured": [s.name for s in telemetry.spans()],
        "same_provider": trace.get_tracer_provider() is provider,
    }))
    """
)


def test_works_alongside_a_global_sdk_and_leaves_it_alone():
    env = {key: value for key, value in os.environ.items() if not key.startswith(("REER_MEMORY_", "OTEL_"))}
    completed = subprocess.run([sys.executable, "-c", GLOBAL_SDK_SCRIPT], capture_output=True, text=True, timeout=60, env=env)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result == {"global": ["global_before", "global_after"], "captured": ["captured"], "same_provider": True}
