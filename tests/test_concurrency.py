"""Overlapping operations in threads and asyncio tasks: right parents, exact peaks."""

from __future__ import annotations

import asyncio
import contextvars
import threading

from _buffers import MiB, mapped, release_free_memory, touched
from opentelemetry import trace

from reer_otel_memory import PROBE, memory_context, memory_profile

BARRIER_TIMEOUT_S = 60
# Kernel RSS counters are per-CPU and may trail each other by a few pages.
COUNTER_SLACK_BYTES = MiB
# What the operations themselves allocate besides their buffers may reuse freed memory.
SUM_SLACK_BYTES = 4 * MiB


def current_span_id() -> int:
    return trace.get_current_span().get_span_context().span_id


def spans_by_id(telemetry) -> dict[int, object]:
    return {span.context.span_id: span for span in telemetry.spans()}


def assert_peak_covers(span, own_bytes: int, seen_rss: int) -> None:
    attributes = span.attributes
    assert "reer.memory.rss.peak" in attributes, f"{span.name} has no peak"
    peak, start = attributes["reer.memory.rss.peak"], attributes["reer.memory.rss.start"]
    # The peak is the process's: other threads and tasks free memory meanwhile (executor threads'
    # stacks, their objects), so the growth above the start may fall short of the own buffer by that.
    assert peak - start >= own_bytes - COUNTER_SLACK_BYTES, (
        f"{span.name}: peak growth {(peak - start) / MiB:.1f} MiB < own {own_bytes / MiB:.0f} MiB"
    )
    assert peak >= seen_rss - COUNTER_SLACK_BYTES, f"{span.name}: peak below an RSS seen inside it"


def test_two_threads_with_overlapping_operations(telemetry):
    sizes = {"thread_a": 24 * MiB, "thread_b": 40 * MiB}
    all_started = threading.Barrier(2, timeout=BARRIER_TIMEOUT_S)
    all_holding = threading.Barrier(2, timeout=BARRIER_TIMEOUT_S)
    all_freed = threading.Barrier(2, timeout=BARRIER_TIMEOUT_S)
    seen: dict[str, dict[str, int]] = {}
    failures: list[BaseException] = []

    @memory_profile(operation_name="thread_step")
    def step() -> tuple[int, int]:
        touched(256 * 1024)
        return current_span_id(), trace.get_current_span().parent.span_id  # type: ignore[attr-defined]

    def work(name: str) -> None:
        try:
            record = seen[name] = {"parent": current_span_id()}
            with memory_context(name):
                record["own"] = current_span_id()
                all_started.wait()  # nobody allocates before every operation has begun
                buffer = touched(sizes[name])
                all_holding.wait()
                record["holding_rss"] = PROBE.rss_bytes()
                del buffer
                all_freed.wait()
                # The nested operation resets the kernel's high-water mark while both outer
                # operations are open: their peaks must survive it.
                record["step"], record["step_parent"] = step()
        except BaseException as exc:  # surfaced in the main thread
            failures.append(exc)
            for barrier in (all_started, all_holding, all_freed):
                barrier.abort()

    release_free_memory()
    with memory_context("batch"):
        root_id = current_span_id()
        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(work, name), name=name) for name in sizes
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(BARRIER_TIMEOUT_S)
    assert not failures, failures
    assert all(not thread.is_alive() for thread in threads)

    spans = spans_by_id(telemetry)
    for name, record in seen.items():
        assert record["parent"] == root_id
        outer = spans[record["own"]]
        assert outer.name == name and outer.parent.span_id == root_id
        inner = spans[record["step"]]
        assert inner.name == "thread_step" and inner.parent.span_id == record["own"] == record["step_parent"]
        assert_peak_covers(outer, sizes[name], record["holding_rss"])
        # Both buffers were held at once, inside both operations.
        assert outer.attributes["reer.memory.rss.peak"] - outer.attributes["reer.memory.rss.start"] >= sum(sizes.values()) - SUM_SLACK_BYTES
        assert inner.attributes["reer.memory.rss.peak"] - inner.attributes["reer.memory.rss.start"] < 16 * MiB
    batch = telemetry.span("batch")
    assert batch.attributes["reer.memory.rss.peak"] - batch.attributes["reer.memory.rss.start"] >= sum(sizes.values()) - SUM_SLACK_BYTES
    assert len(telemetry.spans("thread_step")) == 2


class Rendezvous:
    """An asyncio barrier for one use (asyncio.Barrier needs Python 3.11)."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.event = asyncio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived == self.parties:
            self.event.set()
        await asyncio.wait_for(self.event.wait(), BARRIER_TIMEOUT_S)


def test_five_concurrent_tasks_with_overlapping_operations(telemetry):
    sizes = [8 * MiB, 12 * MiB, 16 * MiB, 20 * MiB, 28 * MiB]
    seen: dict[int, dict[str, int]] = {}

    @memory_profile(operation_name="task_step")
    async def step() -> tuple[int, int]:
        await asyncio.sleep(0)
        touched(128 * 1024)
        await asyncio.sleep(0)
        return current_span_id(), trace.get_current_span().parent.span_id  # type: ignore[attr-defined]

    @memory_profile(operation_name="task_work")
    async def work(index: int, started: Rendezvous, holding: Rendezvous, freed: Rendezvous) -> None:
        record = seen[index]
        record["own"] = current_span_id()
        await started.wait()
        buffer = touched(sizes[index])
        await asyncio.sleep(0)
        record["own_after_await"] = current_span_id()
        await holding.wait()
        record["holding_rss"] = PROBE.rss_bytes()
        del buffer
        await freed.wait()
        record["step"], record["step_parent"] = await step()
        record["own_at_end"] = current_span_id()

    async def task(index: int, started: Rendezvous, holding: Rendezvous, freed: Rendezvous) -> None:
        seen[index] = {"parent": current_span_id()}
        await work(index, started, holding, freed)

    async def main() -> int:
        started, holding, freed = Rendezvous(5), Rendezvous(5), Rendezvous(5)
        async with memory_context("gather"):
            root_id = current_span_id()
            await asyncio.gather(*(task(i, started, holding, freed) for i in range(5)))
        return root_id

    release_free_memory()
    root_id = asyncio.run(main())
    spans = spans_by_id(telemetry)
    assert len(telemetry.spans("task_work")) == 5 and len(telemetry.spans("task_step")) == 5
    own_ids = {record["own"] for record in seen.values()}
    assert len(own_ids) == 5, "each task must get its own span"
    for index, record in seen.items():
        assert record["parent"] == root_id
        assert record["own"] == record["own_after_await"] == record["own_at_end"], "another task's span leaked in"
        outer = spans[record["own"]]
        assert outer.name == "task_work" and outer.parent.span_id == root_id
        inner = spans[record["step"]]
        assert inner.parent.span_id == record["own"] == record["step_parent"]
        assert_peak_covers(outer, sizes[index], record["holding_rss"])
        assert outer.attributes["reer.memory.rss.peak"] - outer.attributes["reer.memory.rss.start"] >= sum(sizes) - SUM_SLACK_BYTES
    gather = telemetry.span("gather")
    assert gather.attributes["reer.memory.rss.peak"] - gather.attributes["reer.memory.rss.start"] >= sum(sizes) - SUM_SLACK_BYTES


def test_threads_each_running_tasks(telemetry):
    """Two threads, each with its own event loop and three tasks, all overlapping."""
    sizes = {(t, i): (4 + 2 * (3 * t + i)) * MiB for t in range(2) for i in range(3)}
    seen: dict[tuple[int, int], dict[str, int]] = {}
    all_holding = threading.Barrier(6, timeout=BARRIER_TIMEOUT_S)
    failures: list[BaseException] = []

    @memory_profile(operation_name="mixed_work")
    async def work(key: tuple[int, int]) -> None:
        record = seen[key]
        record["own"] = current_span_id()
        buffer = mapped(sizes[key])  # fresh pages: resident growth whatever earlier tests left free
        await asyncio.sleep(0)
        # A blocking barrier inside a coroutine would stall its loop; wait in a worker thread.
        await asyncio.get_running_loop().run_in_executor(None, all_holding.wait)
        record["holding_rss"] = PROBE.rss_bytes()
        buffer.close()
        await asyncio.sleep(0)
        record["own_at_end"] = current_span_id()

    async def task(key: tuple[int, int]) -> None:
        seen[key] = {"parent": current_span_id()}
        await work(key)

    def thread_main(t: int) -> None:
        async def loop_main() -> None:
            async with memory_context(f"loop_{t}"):
                seen[(t, -1)] = {"own": current_span_id()}
                await asyncio.gather(*(task((t, i)) for i in range(3)))

        try:
            asyncio.run(loop_main())
        except BaseException as exc:
            failures.append(exc)
            all_holding.abort()

    release_free_memory()
    threads = [threading.Thread(target=thread_main, args=(t,)) for t in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BARRIER_TIMEOUT_S)
    assert not failures, failures

    spans = spans_by_id(telemetry)
    for (t, i), record in seen.items():
        if i == -1:
            continue
        loop_id = seen[(t, -1)]["own"]
        assert record["parent"] == loop_id
        assert record["own"] == record["own_at_end"]
        span = spans[record["own"]]
        assert span.parent.span_id == loop_id and spans[loop_id].parent is None
        assert_peak_covers(span, sizes[(t, i)], record["holding_rss"])


def test_the_overlap_counts_other_work_in_flight_never_the_operations_own_parent_or_children(telemetry):
    @memory_profile(operation_name="overlap_child")
    def child() -> None:
        pass

    @memory_profile(operation_name="overlap_parent")
    def parent() -> None:
        child()
        child()

    parent()  # alone: its children are its own work, and it is theirs
    overlaps = {span.name: span.attributes["reer.memory.overlap"] for span in telemetry.spans()}
    assert overlaps == {"overlap_parent": 0, "overlap_child": 0}
    telemetry.clear()

    both_started = threading.Barrier(2, timeout=BARRIER_TIMEOUT_S)
    both_ending = threading.Barrier(2, timeout=BARRIER_TIMEOUT_S)

    @memory_profile(operation_name="overlap_thread")
    def in_thread() -> None:
        both_started.wait()  # each started while the other was in flight
        both_ending.wait()

    threads = [threading.Thread(target=in_thread) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BARRIER_TIMEOUT_S)
    assert [span.attributes["reer.memory.overlap"] for span in telemetry.spans("overlap_thread")] == [1, 1]
    telemetry.clear()

    async def three_tasks() -> None:
        gate = asyncio.Event()

        @memory_profile(operation_name="overlap_task")
        async def task() -> None:
            await gate.wait()

        running = [asyncio.create_task(task()) for _ in range(3)]
        await asyncio.sleep(0)  # every task has started and waits on the gate
        gate.set()
        await asyncio.gather(*running)

    asyncio.run(three_tasks())
    assert [span.attributes["reer.memory.overlap"] for span in telemetry.spans("overlap_task")] == [2, 2, 2]
