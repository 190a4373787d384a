"""Profiled operations as spans: accuracy, peaks, exceptions, generators, async, annotation, no SDK."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import os
import subprocess
import sys
import textwrap
import time
import weakref

import pytest
from _buffers import MiB, mapped, release_free_memory, touched
from opentelemetry import trace
from opentelemetry.trace import StatusCode

from reer_otel_memory import get_memory_tracker, memory_context, memory_profile, setup_memory_limits

MEMORY_ATTRIBUTES = ("reer.memory.rss.start", "reer.memory.rss.end", "reer.memory.rss.delta", "reer.memory.level")


def current_span_id() -> int:
    return trace.get_current_span().get_span_context().span_id


def assert_memory_attributes(span) -> None:
    attributes = span.attributes
    for key in MEMORY_ATTRIBUTES:
        assert key in attributes, f"{key} missing on {span.name}"
    assert attributes["reer.memory.rss.delta"] == attributes["reer.memory.rss.end"] - attributes["reer.memory.rss.start"]
    if "reer.memory.rss.peak" in attributes:
        assert attributes["reer.memory.rss.peak"] >= max(attributes["reer.memory.rss.start"], attributes["reer.memory.rss.end"])


def assert_error_recorded(span, error: BaseException) -> None:
    assert span.status.status_code is StatusCode.ERROR
    events = [event for event in span.events if event.name == "exception"]
    assert len(events) == 1
    assert events[0].attributes["exception.type"].endswith(type(error).__qualname__)
    assert events[0].attributes["exception.message"] == str(error)
    assert_memory_attributes(span)


# --- accuracy --------------------------------------------------------------------------------


def test_kept_buffer_heap_and_rss_deltas(telemetry):
    kept: list[bytearray] = []

    @memory_profile(operation_name="keep_64_mib", heap=True)
    def keep_64_mib() -> None:
        kept.append(touched(64 * MiB))

    release_free_memory()
    keep_64_mib()
    span = telemetry.span("keep_64_mib")
    attributes = span.attributes
    heap_error = attributes["reer.memory.heap.delta"] / (64 * MiB) - 1
    rss_error = attributes["reer.memory.rss.delta"] / (64 * MiB) - 1
    print(f"64 MiB kept: heap delta error {heap_error:+.3%}, RSS delta error {rss_error:+.3%}")
    kept.clear()
    assert abs(heap_error) <= 0.02
    assert abs(rss_error) <= 0.10
    assert_memory_attributes(span)
    assert attributes["reer.operation"] == "keep_64_mib"
    assert attributes["code.function.name"] == f"{__name__}.test_kept_buffer_heap_and_rss_deltas.<locals>.keep_64_mib"
    assert attributes["reer.memory.rss.peak"] - attributes["reer.memory.rss.start"] >= 64 * MiB * 0.95
    assert attributes["reer.memory.level"] in ("ok", "alert", "cleanup", "critical")

    (peak_point,) = telemetry.metric_points("reer.memory.operation.peak", reer_operation="keep_64_mib")
    assert peak_point.count == 1 and peak_point.sum >= 64 * MiB * 0.95
    (duration_point,) = telemetry.metric_points("reer.memory.operation.duration", reer_operation="keep_64_mib")
    assert duration_point.count == 1 and 0 < duration_point.sum < 60
    assert telemetry.metric_value("reer.memory.operation.net", reer_operation="keep_64_mib") == attributes["reer.memory.rss.delta"]


def test_transient_peak_with_a_nested_call_after_the_free(telemetry):
    @memory_profile(operation_name="small_step")
    def small_step() -> int:
        return len(touched(256 * 1024))

    @memory_profile(operation_name="transient_256_mib")
    def transient_256_mib() -> int:
        # Mapped pages, given back at close: a heap chunk an earlier test freed could be reused
        # for the spike and stay resident after it.
        spike = mapped(256 * MiB)
        spike.close()
        return small_step()

    release_free_memory()
    assert transient_256_mib() == 256 * 1024
    outer = telemetry.span("transient_256_mib").attributes
    inner = telemetry.span("small_step").attributes
    outer_peak_growth = outer["reer.memory.rss.peak"] - outer["reer.memory.rss.start"]
    inner_peak_growth = inner["reer.memory.rss.peak"] - inner["reer.memory.rss.start"]
    print(
        f"256 MiB transient: outer peak growth {outer_peak_growth / MiB:.1f} MiB, delta {outer['reer.memory.rss.delta'] / MiB:.1f} MiB, "
        f"inner peak growth {inner_peak_growth / MiB:.2f} MiB"
    )
    assert outer_peak_growth >= 240 * MiB
    assert outer["reer.memory.rss.delta"] < 32 * MiB
    assert inner_peak_growth < 8 * MiB


LONG_OPERATIONS_SCRIPT = textwrap.dedent(
    """
    import json, time
    from reer_otel_memory import PROBE, memory_profile
    from reer_otel_memory.testing import capture_telemetry

    @memory_profile(operation_name="long_native_allocation")
    def long_native_allocation() -> int:
        block = bytes(32 * 2**20)  # calloc'd: heap grows, RSS barely
        # Far longer than a heap reading, whatever one costs here.
        deadline = time.perf_counter() + max(0.005, 200 * PROBE.heap_cost_s)
        while time.perf_counter() < deadline:
            pass
        return len(block)

    with capture_telemetry() as telemetry:
        for _ in range(3):
            long_native_allocation()
        spans = telemetry.spans("long_native_allocation")
    print(json.dumps({"heap_measured": ["reer.memory.heap.delta" in span.attributes for span in spans], "heap_cost_s": PROBE.heap_cost_s}))
    """
)


def test_heap_is_measured_by_default_for_long_operations():
    # A fresh process: a heap reading's cost grows with what earlier tests left on this
    # process's heap (milliseconds after the heavy ones), and the decision follows that cost.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("REER_MEMORY_", "OTEL_"))}
    completed = subprocess.run([sys.executable, "-c", LONG_OPERATIONS_SCRIPT], capture_output=True, text=True, timeout=120, env=env)
    assert completed.returncode == 0, completed.stderr
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    # The first call may skip the heap if a reading is expensive here; later ones know the
    # operation lasts far longer than a reading.
    heap_measured = results["heap_measured"]
    assert len(heap_measured) == 3
    assert all(heap_measured[1:]), f"heap reading costs {results['heap_cost_s'] * 1e6:.0f} us here"


def test_heap_false_never_measures(telemetry):
    @memory_profile(operation_name="no_heap", heap=False)
    def no_heap() -> bytes:
        return bytes(8 * MiB)

    no_heap()
    assert "reer.memory.heap.delta" not in telemetry.span("no_heap").attributes


def test_level_follows_the_configured_thresholds(telemetry):
    setup_memory_limits(alert_mb=1, cleanup_mb=2, critical_mb=3)

    @memory_profile(operation_name="over_critical")
    def over_critical() -> None:
        pass

    over_critical()
    assert telemetry.span("over_critical").attributes["reer.memory.level"] == "critical"


# --- decorator forms -------------------------------------------------------------------------


def test_decorator_without_parentheses_and_default_name(telemetry):
    @memory_profile
    def bare(x: int) -> int:
        """Doubles."""
        return 2 * x

    assert bare(21) == 42
    assert bare.__name__ == "bare" and bare.__doc__ == "Doubles."
    assert inspect.signature(bare) == inspect.signature(bare.__wrapped__)
    expected = f"{__name__}.test_decorator_without_parentheses_and_default_name.<locals>.bare"
    span = telemetry.span(expected)
    assert span.attributes["reer.operation"] == expected


def test_extra_attributes_and_returned_values(telemetry):
    marker = object()

    @memory_profile(operation_name="with_attributes", attributes={"model.name": "tiny"})
    def returns_marker() -> object:
        return marker

    assert returns_marker() is marker
    assert telemetry.span("with_attributes").attributes["model.name"] == "tiny"


def test_wrappers_keep_the_function_kind():
    async def coroutine():
        return 1

    def generator():
        yield 1

    async def async_generator():
        yield 1

    assert inspect.iscoroutinefunction(memory_profile(coroutine))
    assert inspect.isgeneratorfunction(memory_profile(generator))
    assert inspect.isasyncgenfunction(memory_profile(async_generator))


@pytest.mark.parametrize("bad", ["", 42, b"name"])
def test_bad_operation_names_are_refused(bad):
    with pytest.raises(TypeError, match="operation_name"):
        memory_profile(operation_name=bad)
    with pytest.raises(TypeError, match="name"):
        memory_context(bad)


# --- exceptions ------------------------------------------------------------------------------


class WorkFailedError(Exception):
    pass


def test_exception_is_recorded_and_reraised_unchanged(telemetry):
    error = WorkFailedError("disk full")

    @memory_profile(operation_name="failing")
    def failing() -> None:
        _ = touched(MiB)
        raise error

    with pytest.raises(WorkFailedError) as caught:
        failing()
    assert caught.value is error
    assert caught.traceback[-1].name == "failing"
    assert_error_recorded(telemetry.span("failing"), error)


def test_coroutine_exception_is_recorded_and_reraised_unchanged(telemetry):
    error = WorkFailedError("remote refused")

    @memory_profile(operation_name="failing_async")
    async def failing_async() -> None:
        await asyncio.sleep(0)
        raise error

    with pytest.raises(WorkFailedError) as caught:
        asyncio.run(failing_async())
    assert caught.value is error
    assert_error_recorded(telemetry.span("failing_async"), error)


def test_context_exception_is_recorded_and_reraised_unchanged(telemetry):
    error = WorkFailedError("bad batch")
    with pytest.raises(WorkFailedError) as caught:
        with memory_context("failing_block") as operation:
            raise error
    assert caught.value is error
    assert_error_recorded(telemetry.span("failing_block"), error)
    assert operation.result is not None and operation.result.operation == "failing_block"


def test_async_context_exception_is_recorded_and_reraised_unchanged(telemetry):
    error = WorkFailedError("bad async batch")

    async def main() -> None:
        async with memory_context("failing_async_block"):
            await asyncio.sleep(0)
            raise error

    with pytest.raises(WorkFailedError) as caught:
        asyncio.run(main())
    assert caught.value is error
    assert_error_recorded(telemetry.span("failing_async_block"), error)


def test_success_leaves_the_status_unset(telemetry):
    @memory_profile(operation_name="fine")
    def fine() -> None:
        pass

    fine()
    span = telemetry.span("fine")
    assert span.status.status_code is StatusCode.UNSET
    assert not span.events


# --- memory_context --------------------------------------------------------------------------


def test_context_span_result_and_attributes(telemetry):
    release_free_memory()
    with memory_context("block", attributes={"batch.size": 32}) as operation:
        inside_id = current_span_id()
        operation.set_attribute("rows", 1000)
        kept = touched(16 * MiB)
    span = telemetry.span("block")
    assert span.context.span_id == inside_id
    assert span.attributes["rows"] == 1000 and span.attributes["batch.size"] == 32
    assert operation.result.rss_delta == span.attributes["reer.memory.rss.delta"]
    assert operation.result.rss_delta >= 15 * MiB
    assert operation.result.peak_growth >= 15 * MiB
    assert "OperationResult(operation='block'" in repr(operation.result)
    assert current_span_id() != inside_id
    del kept


def test_async_with_covers_the_awaits_and_parents_children(telemetry):
    @memory_profile(operation_name="child_step")
    async def child_step() -> int:
        await asyncio.sleep(0.001)
        return current_span_id()

    async def main() -> tuple[int, int]:
        async with memory_context("async_block"):
            block_id = current_span_id()
            await asyncio.sleep(0.001)
            child_id = await child_step()
        return block_id, child_id

    block_id, child_id = asyncio.run(main())
    block = telemetry.span("async_block")
    child = telemetry.span("child_step")
    assert block.context.span_id == block_id and child.context.span_id == child_id
    assert child.parent.span_id == block_id
    assert block.start_time <= child.start_time and child.end_time <= block.end_time
    assert_memory_attributes(block)


# --- annotate_current ------------------------------------------------------------------------


def test_annotate_current_puts_attributes_on_the_parent(telemetry):
    tracer = telemetry.tracer_provider.get_tracer("framework")

    @memory_profile(operation_name="handler", annotate_current=True)
    def handler() -> str:
        return "response"

    with tracer.start_as_current_span("GET /predict") as server_span:
        assert handler() == "response"
        assert server_span.is_recording(), "annotating must not end the framework's span"
        with memory_context("block_in_handler", annotate_current=True):
            touched(MiB)
    assert telemetry.spans("handler") == [] and telemetry.spans("block_in_handler") == []
    server = telemetry.span("GET /predict")
    assert_memory_attributes(server)
    assert server.attributes["reer.operation"] == "handler"  # the first record is the span's
    assert server.attributes["code.function.name"].endswith("handler")
    assert len(telemetry.spans()) == 1
    assert telemetry.metric_points("reer.memory.operation.duration", reer_operation="handler")
    # ... and the second is a whole record of its own, not mixed into the first
    (event,) = [event for event in server.events if event.name == "reer.memory.operation"]
    assert event.attributes["reer.operation"] == "block_in_handler"
    assert_memory_attributes(event)
    assert "code.function.name" not in event.attributes
    assert event.attributes["reer.memory.rss.start"] >= server.attributes["reer.memory.rss.start"]


def test_an_annotation_inside_another_of_the_same_span_is_an_event(telemetry):
    """The enclosing record ends last but owns the span's attributes; the enclosed one, though
    it ends first and reads the heap where the other does not, never lends them a figure."""
    tracer = telemetry.tracer_provider.get_tracer("framework")
    with tracer.start_as_current_span("GET /predict"):
        with memory_context("request", annotate_current=True, heap=False):
            with memory_context("load", annotate_current=True, heap=True):
                touched(MiB)
    server = telemetry.span("GET /predict")
    assert server.attributes["reer.operation"] == "request"
    assert "reer.memory.heap.delta" not in server.attributes
    (event,) = [event for event in server.events if event.name == "reer.memory.operation"]
    assert event.attributes["reer.operation"] == "load"
    assert "reer.memory.heap.delta" in event.attributes


def test_an_annotation_of_a_profiled_call_span_is_an_event_on_it(telemetry):
    @memory_profile(operation_name="outer", heap=False)
    def outer() -> None:
        with memory_context("inner", annotate_current=True, heap=True):
            touched(MiB)

    outer()
    span = telemetry.span("outer")
    assert span.attributes["reer.operation"] == "outer"
    assert "reer.memory.heap.delta" not in span.attributes
    (event,) = [event for event in span.events if event.name == "reer.memory.operation"]
    assert event.attributes["reer.operation"] == "inner"


def test_annotate_current_without_a_current_span_is_harmless(telemetry):
    @memory_profile(operation_name="orphan", annotate_current=True)
    def orphan() -> int:
        return 7

    assert orphan() == 7
    assert telemetry.spans() == []
    assert get_memory_tracker().snapshots[-1].operation == "orphan"


# --- generators ------------------------------------------------------------------------------


def test_generator_span_covers_the_iteration(telemetry):
    seen: dict[str, object] = {}

    @memory_profile(operation_name="rows")
    def rows(n: int):
        seen["first_ns"] = time.time_ns()
        seen["inside_id"] = current_span_id()
        yield from range(n)
        seen["last_ns"] = time.time_ns()
        return "done"

    def consume():
        generator = rows(3)
        items = [next(generator), next(generator)]
        assert telemetry.spans("rows") == [], "the span must stay open while the iteration goes on"
        seen["consumer_id"] = current_span_id()
        with memory_context("between_items"):
            pass
        items.append(next(generator))
        with pytest.raises(StopIteration) as stop:
            next(generator)
        return items, stop.value.value

    items, returned = consume()
    assert items == [0, 1, 2] and returned == "done"
    span = telemetry.span("rows")
    assert span.context.span_id == seen["inside_id"]
    assert span.start_time <= seen["first_ns"] and seen["last_ns"] <= span.end_time
    assert span.status.status_code is StatusCode.UNSET
    # Code between items runs in the consumer's context, not the generator's.
    assert seen["consumer_id"] != seen["inside_id"]
    assert telemetry.span("between_items").parent is None
    assert_memory_attributes(span)


def test_generator_yield_from_returns_the_value(telemetry):
    @memory_profile(operation_name="inner_rows")
    def inner_rows():
        yield 1
        return "inner result"

    def outer():
        result = yield from inner_rows()
        yield result

    assert list(outer()) == [1, "inner result"]


def test_generator_closed_early(telemetry):
    finalised = []

    @memory_profile(operation_name="endless")
    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            finalised.append(True)

    generator = endless()
    assert [next(generator) for _ in range(3)] == [0, 1, 2]
    generator.close()
    assert finalised == [True]
    span = telemetry.span("endless")
    assert span.status.status_code is StatusCode.UNSET
    assert_memory_attributes(span)


def test_abandoned_generator_ends_its_span(telemetry):
    @memory_profile(operation_name="abandoned")
    def abandoned():
        yield 1
        yield 2

    generator = abandoned()
    next(generator)
    del generator
    gc.collect()
    assert_memory_attributes(telemetry.span("abandoned"))


def test_generator_send_and_throw(telemetry):
    received = []

    @memory_profile(operation_name="accumulator")
    def accumulator():
        total = 0
        while True:
            try:
                value = yield total
            except KeyError:
                value = 100  # recovered from a thrown-in error
            if value is None:
                return total
            received.append(value)
            total += value

    generator = accumulator()
    assert next(generator) == 0
    assert generator.send(5) == 5
    assert generator.throw(KeyError("skip")) == 105
    assert generator.send(1) == 106
    with pytest.raises(StopIteration) as stop:
        generator.send(None)
    assert stop.value.value == 106
    assert received == [5, 100, 1]
    assert telemetry.span("accumulator").status.status_code is StatusCode.UNSET


def test_generator_uncaught_thrown_exception_is_recorded(telemetry):
    error = WorkFailedError("cancelled by consumer")

    @memory_profile(operation_name="fragile")
    def fragile():
        yield 1
        yield 2

    generator = fragile()
    next(generator)
    with pytest.raises(WorkFailedError) as caught:
        generator.throw(error)
    assert caught.value is error
    assert_error_recorded(telemetry.span("fragile"), error)


def test_generator_raising_inside_is_recorded(telemetry):
    error = WorkFailedError("corrupt row")

    @memory_profile(operation_name="corrupt")
    def corrupt():
        yield 1
        raise error

    with pytest.raises(WorkFailedError) as caught:
        list(corrupt())
    assert caught.value is error
    assert_error_recorded(telemetry.span("corrupt"), error)


def test_generator_memory_covers_the_iteration(telemetry):
    held: list[bytearray] = []

    @memory_profile(operation_name="growing")
    def growing():
        for _ in range(4):
            held.append(touched(8 * MiB))
            yield len(held)

    release_free_memory()
    assert list(growing()) == [1, 2, 3, 4]
    attributes = telemetry.span("growing").attributes
    held.clear()
    assert attributes["reer.memory.rss.delta"] >= 30 * MiB


# --- async generators ------------------------------------------------------------------------


def test_async_generator_span_covers_the_iteration(telemetry):
    seen: dict[str, object] = {}

    @memory_profile(operation_name="stream")
    async def stream(n: int):
        seen["inside_id"] = current_span_id()
        seen["first_ns"] = time.time_ns()
        for i in range(n):
            await asyncio.sleep(0)
            yield i
        seen["last_ns"] = time.time_ns()

    async def main() -> list[int]:
        items = []
        async for item in stream(3):
            if item == 1:
                assert telemetry.spans("stream") == []
                seen["consumer_id"] = current_span_id()
            items.append(item)
        return items

    assert asyncio.run(main()) == [0, 1, 2]
    span = telemetry.span("stream")
    assert span.context.span_id == seen["inside_id"] != seen["consumer_id"]
    assert span.start_time <= seen["first_ns"] and seen["last_ns"] <= span.end_time
    assert_memory_attributes(span)


def test_async_generator_asend_athrow_aclose(telemetry):
    received = []
    finalised = []

    @memory_profile(operation_name="async_accumulator")
    async def async_accumulator():
        total = 0
        try:
            while True:
                try:
                    value = yield total
                except KeyError:
                    value = 100
                await asyncio.sleep(0)
                received.append(value)
                total += value or 0
        finally:
            finalised.append(True)

    async def main() -> list[int]:
        generator = async_accumulator()
        results = [await generator.asend(None), await generator.asend(5), await generator.athrow(KeyError("x"))]
        await generator.aclose()
        return results

    assert asyncio.run(main()) == [0, 5, 105]
    assert received == [5, 100]
    assert finalised == [True]
    span = telemetry.span("async_accumulator")
    assert span.status.status_code is StatusCode.UNSET
    assert_memory_attributes(span)


class _Chunk:
    """An item a stream yields (weakly referenceable, so a test can see when it is freed)."""


def test_the_wrappers_hold_no_yielded_item_while_the_consumer_has_it(telemetry):
    @memory_profile(operation_name="chunks")
    def chunks():
        while True:
            yield _Chunk()

    @memory_profile(operation_name="async_chunks")
    async def async_chunks():
        while True:
            yield _Chunk()

    stream = chunks()
    dropped = weakref.ref(next(stream))  # the consumer lets the chunk go while the stream waits
    assert dropped() is None, "the generator wrapper kept a chunk its consumer had dropped"
    stream.close()

    async def consume() -> bool:
        stream = async_chunks()
        dropped = weakref.ref(await stream.__anext__())
        freed = dropped() is None
        await stream.aclose()
        return freed

    assert asyncio.run(consume()), "the async generator wrapper kept a chunk its consumer had dropped"


def test_async_generator_exception_is_recorded(telemetry):
    error = WorkFailedError("stream broke")

    @memory_profile(operation_name="broken_stream")
    async def broken_stream():
        yield 1
        await asyncio.sleep(0)
        raise error

    async def main() -> None:
        async for _ in broken_stream():
            pass

    with pytest.raises(WorkFailedError) as caught:
        asyncio.run(main())
    assert caught.value is error
    assert_error_recorded(telemetry.span("broken_stream"), error)


def test_async_generator_uncaught_athrow_is_recorded(telemetry):
    error = WorkFailedError("consumer gave up")

    @memory_profile(operation_name="async_fragile")
    async def async_fragile():
        yield 1
        yield 2

    async def main() -> None:
        generator = async_fragile()
        await generator.asend(None)
        await generator.athrow(error)

    with pytest.raises(WorkFailedError) as caught:
        asyncio.run(main())
    assert caught.value is error
    assert_error_recorded(telemetry.span("async_fragile"), error)


# --- the tracker is fed ----------------------------------------------------------------------


def test_each_call_adds_a_snapshot(telemetry):
    @memory_profile(operation_name="tracked")
    def tracked() -> None:
        pass

    for _ in range(3):
        tracked()
    with memory_context("tracked_block"):
        pass
    operations = [snapshot.operation for snapshot in get_memory_tracker().snapshots]
    assert operations.count("tracked") == 3 and operations.count("tracked_block") == 1


# --- no SDK configured -----------------------------------------------------------------------


NO_SDK_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, time
    from opentelemetry import trace
    from reer_otel_memory import get_memory_tracker, memory_context, memory_profile
    from reer_otel_memory.profiling import operations

    marker = object()

    @memory_profile(operation_name="plain")
    def plain(x):
        return (x, marker)

    @memory_profile(operation_name="coroutine")
    async def coroutine(x):
        await asyncio.sleep(0)
        return x * 2

    @memory_profile(operation_name="generator")
    def generator(n):
        yield from range(n)
        return "gen done"

    @memory_profile(operation_name="async_generator")
    async def async_generator(n):
        for i in range(n):
            yield i

    @memory_profile(operation_name="failing")
    def failing(error):
        raise error

    @memory_profile(operation_name="async_accumulator")
    async def async_accumulator():
        total = 0
        while True:
            try:
                value = yield total
            except KeyError:
                value = 100
            total += value

    async def consume():
        return [i async for i in async_generator(3)]

    async def talk():
        accumulator = async_accumulator()
        replies = [await accumulator.asend(None), await accumulator.asend(5), await accumulator.athrow(KeyError())]
        await accumulator.aclose()
        return replies

    def accumulator():
        total = 0
        while True:
            try:
                value = yield total
            except KeyError:
                value = 100
            total += value

    def talk_sync():
        generator = memory_profile(operation_name="accumulator")(accumulator)()
        return [next(generator), generator.send(5), generator.throw(KeyError())]

    error = ValueError("unchanged")
    try:
        failing(error)
        same_error = False
    except ValueError as caught:
        same_error = caught is error

    def return_of_generator():
        return (yield from generator(2))

    results = {
        "plain": plain(5) == (5, marker),
        "coroutine": asyncio.run(coroutine(21)),
        "generator": list(generator(3)),
        "generator_return": list(return_of_generator()),
        "async_generator": asyncio.run(consume()),
        "async_send_throw": asyncio.run(talk()),
        "send_throw": talk_sync(),
        "same_error": same_error,
    }
    with memory_context("block") as block:
        kept = bytearray(8 * 2**20)
    results["span_recording"] = block.span.is_recording()
    results["block_result"] = [block.result.operation, block.result.rss_delta, block.result.level.value, block.result.duration_s > 0, block.result.rss_peak]
    results["proxy_provider"] = isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    for _ in range(200):
        plain(1)

    @memory_profile(operation_name="slow")
    def slow():
        time.sleep(0.0002)  # the workload: a call long enough to be measured every time

    for _ in range(10):
        slow()
    results["snapshots"] = sorted({s.operation for s in get_memory_tracker().snapshots})
    results["plain_snapshots"] = sum(1 for s in get_memory_tracker().snapshots if s.operation == "plain")
    results["slow_snapshots"] = sum(1 for s in get_memory_tracker().snapshots if s.operation == "slow")
    results["sample_every"] = operations.LIGHT_SAMPLE_EVERY
    results["leak_states"] = sorted(name for name, _ in get_memory_tracker().leak_detector.states())
    print(json.dumps(results))
    """
)


def test_without_an_sdk_results_are_unchanged_and_the_tracker_is_fed():
    # A fresh process with none of the test run's REER_MEMORY_* or OTEL_* settings.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("REER_MEMORY_", "OTEL_"))}
    completed = subprocess.run([sys.executable, "-c", NO_SDK_SCRIPT], capture_output=True, text=True, timeout=60, env=env)
    assert completed.returncode == 0, completed.stderr
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    assert results["plain"] is True
    assert results["coroutine"] == 42
    assert results["generator"] == [0, 1, 2]
    assert results["generator_return"] == [0, 1]
    assert results["async_generator"] == [0, 1, 2]
    assert results["async_send_throw"] == [0, 5, 105]
    assert results["send_throw"] == [0, 5, 105]
    assert results["same_error"] is True
    assert results["span_recording"] is False
    operation, rss_delta, level, timed, peak = results["block_result"]
    assert (operation, level, timed, peak) == ("block", "ok", True, None)
    assert rss_delta >= 7 * MiB
    assert results["proxy_provider"] is True
    assert results["snapshots"] == ["accumulator", "async_accumulator", "async_generator", "block", "coroutine", "failing", "generator", "plain", "slow"]
    # A fast operation is measured on its first call and then one call in LIGHT_SAMPLE_EVERY
    # (201 calls); one that lasts long enough on every call.
    assert results["plain_snapshots"] == -(-201 // results["sample_every"])
    assert results["slow_snapshots"] == 10
    assert "plain" in results["leak_states"]
