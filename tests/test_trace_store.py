"""REERTraceStore: concurrent and killed writers, torn tails, streaming in bounded memory, telemetry."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest
from conftest import wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reer_otel_memory import TraceStoreError
from reer_otel_memory.monitoring.cleanup import cleanup_hook_names, run_cleanup
from reer_otel_memory.trace_store import REERTraceStore

MiB = 1 << 20


def run(coro):
    return asyncio.run(coro)


def run_child(script: str, *args: str, timeout_s: float = 120.0) -> str:
    """Run a Python script in a fresh interpreter; its stdout (fails with its stderr)."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True, timeout=timeout_s
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def all_traces(store: REERTraceStore) -> list[dict]:
    return [trace async for trace in store.lazy_query_traces()]


# --- writers -------------------------------------------------------------------------------------

APPENDER = """
    import asyncio, sys
    from reer_otel_memory.trace_store import REERTraceStore

    path, writer, count = sys.argv[1], sys.argv[2], int(sys.argv[3])

    async def main():
        store = REERTraceStore(path)
        print("ready", flush=True)
        sys.stdin.readline()  # start together
        for i in range(count):
            await store.add_trace({"trace_id": f"{writer}-{i}", "score": i / count, "writer": writer, "pad": "x" * (i % 300)})

    asyncio.run(main())
"""


@pytest.mark.slow
def test_four_processes_appending_at_once_leave_every_record_whole(tmp_path):
    path = tmp_path / "traces.jsonl"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(APPENDER), str(path), f"w{n}", "5000"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    try:
        for writer in writers:
            assert writer.stdout.readline().strip() == "ready"
        for writer in writers:
            writer.stdin.write("go\n")
            writer.stdin.flush()
        for writer in writers:
            assert writer.wait(timeout=120) == 0
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()

    store = REERTraceStore(path)
    stats = run(store.get_memory_efficient_stats())
    assert stats["total_traces"] == 20_000
    assert stats["malformed_lines"] == 0 and stats["torn_tail"] is None
    traces = run(all_traces(store))
    ids = [t["trace_id"] for t in traces]
    assert len(set(ids)) == 20_000
    assert set(ids) == {f"w{n}-{i}" for n in range(4) for i in range(5000)}
    for trace in traces:
        i = int(trace["trace_id"].split("-")[1])
        assert trace == {"trace_id": trace["trace_id"], "score": i / 5000, "writer": trace["trace_id"].split("-")[0], "pad": "x" * (i % 300)}


KILLED_WRITER = """
    import asyncio, sys
    from reer_otel_memory.trace_store import REERTraceStore

    async def main():
        store = REERTraceStore(sys.argv[1])
        i = 0
        while True:
            trace_id = await store.add_trace({"trace_id": f"k-{i}", "score": 0.5, "payload": "y" * (i * 997 % 200_000)})
            print(trace_id, flush=True)  # reported only once add_trace has returned
            i += 1

    asyncio.run(main())
"""


def test_writer_killed_mid_stream_loses_no_returned_trace_and_later_appends_work(tmp_path):
    path = tmp_path / "traces.jsonl"
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED_WRITER), str(path)], stdout=subprocess.PIPE, text=True)
    returned: list[str] = []
    try:
        while len(returned) < 300:
            line = writer.stdout.readline()
            assert line, "the writer exited early"
            returned.append(line.strip())
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        writer.stdout.close()

    def expected(trace_id: str) -> dict:
        i = int(trace_id.split("-")[1])
        return {"trace_id": trace_id, "score": 0.5, "payload": "y" * (i * 997 % 200_000)}

    store = REERTraceStore(path)
    traces = run(all_traces(store))
    assert all(trace == expected(trace["trace_id"]) for trace in traces)  # no torn record comes back
    assert set(returned) <= {trace["trace_id"] for trace in traces}
    for trace_id in returned[::10] + returned[-5:]:
        assert run(store.get_trace(trace_id)) == expected(trace_id)

    before = run(store.get_memory_efficient_stats())
    assert before["malformed_lines"] == 0
    run(store.add_trace({"trace_id": "after-kill", "score": 1.0}))
    assert run(store.get_trace("after-kill")) == {"trace_id": "after-kill", "score": 1.0}
    after = run(store.get_memory_efficient_stats())
    assert after["total_traces"] == before["total_traces"] + 1
    assert after["torn_tail"] is None
    # A torn tail left by the kill became one malformed line; nothing else was lost.
    assert after["malformed_lines"] == (1 if before["torn_tail"] else 0)


def test_torn_tail_is_not_returned_is_reported_and_the_next_append_starts_a_fresh_line(tmp_path):
    path = tmp_path / "traces.jsonl"
    store = REERTraceStore(path)
    run(store.add_traces([{"trace_id": f"t{i}", "score": i} for i in range(3)]))
    complete_size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b'{"trace_id": "torn", "score": 0.')  # what a writer killed mid-record leaves

    stats = run(store.get_memory_efficient_stats())
    assert stats["total_traces"] == 3
    assert stats["torn_tail"] == {"offset": complete_size, "bytes": 32}
    assert stats["malformed_lines"] == 0
    assert [t["trace_id"] for t in run(all_traces(store))] == ["t0", "t1", "t2"]
    assert run(store.get_trace("torn")) is None

    run(store.add_trace({"trace_id": "next", "score": 9}))
    assert run(store.get_trace("next")) == {"trace_id": "next", "score": 9}
    assert [t["trace_id"] for t in run(all_traces(store))] == ["t0", "t1", "t2", "next"]
    stats = run(store.get_memory_efficient_stats())
    assert stats["torn_tail"] is None
    assert (stats["malformed_lines"], stats["malformed_line_numbers"]) == (1, [4])


def test_forked_children_append_through_their_own_descriptor(tmp_path):
    path = tmp_path / "traces.jsonl"
    store = REERTraceStore(path)
    run(store.add_trace({"trace_id": "parent-0", "score": 0}))  # the parent's descriptor is open
    children = []
    for n in range(2):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                run(store.add_traces([{"trace_id": f"c{n}-{i}", "score": i} for i in range(200)]))
                for i in range(200):
                    run(store.add_trace({"trace_id": f"c{n}-single-{i}", "score": i}))
            except BaseException:
                code = 1
            os._exit(code)
        children.append(pid)
    for i in range(200):
        run(store.add_trace({"trace_id": f"parent-{i + 1}", "score": i}))
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0
    stats = run(store.get_memory_efficient_stats())
    assert stats["total_traces"] == 1 + 200 + 2 * 400
    assert stats["malformed_lines"] == 0
    assert run(store.get_trace("c1-single-199")) == {"trace_id": "c1-single-199", "score": 199}


# --- round trips and lookups ---------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
scores = st.integers(-(10**6), 10**6) | st.floats(allow_nan=False, allow_infinity=False)
traces_strategy = st.lists(
    st.builds(
        lambda trace_id, score, fields: {**({"trace_id": trace_id} if trace_id else {}), "score": score, **fields},
        st.none() | st.text(min_size=1, max_size=12),
        scores,
        st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("trace_id", "score")), json_values, max_size=4),
    ),
    max_size=25,
    unique_by=lambda t: t.get("trace_id") or object(),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces=traces_strategy, one_by_one=st.booleans())
def test_traces_round_trip_exactly_and_get_trace_finds_each(traces, one_by_one):
    with tempfile.TemporaryDirectory() as directory:
        store = REERTraceStore(Path(directory) / "traces.jsonl", chunk_bytes=4096)

        async def scenario():
            if one_by_one:
                ids = [await store.add_trace(trace) for trace in traces]
            else:
                ids = await store.add_traces(traces)
            stored = await all_traces(store)
            found = [await store.get_trace(trace_id) for trace_id in ids]
            return ids, stored, found

        ids, stored, found = run(scenario())
        expected = [{**trace, "trace_id": trace_id} for trace, trace_id in zip(traces, ids)]
        assert [trace.get("trace_id", trace_id) for trace, trace_id in zip(traces, ids)] == ids
        assert stored == expected
        assert found == expected
        # Key order is kept too: a given id stays where it was, a generated one comes first.
        for trace, back in zip(traces, stored):
            assert list(back) == (list(trace) if "trace_id" in trace else ["trace_id", *trace])
        store.close()


def test_get_trace_sees_appends_of_another_writer_and_the_latest_record_wins(tmp_path):
    path = tmp_path / "traces.jsonl"
    reader, other = REERTraceStore(path), REERTraceStore(path)
    run(reader.add_traces([{"trace_id": f"r{i}", "score": i} for i in range(100)]))
    assert run(reader.get_trace("r5")) == {"trace_id": "r5", "score": 5}  # builds the index
    run(reader.add_trace({"trace_id": "mine", "score": 1}))  # indexed on the way
    run(other.add_trace({"trace_id": "theirs", "score": 2}))  # noticed by the file size
    run(other.add_trace({"trace_id": "r5", "score": 50, "version": 2}))
    assert run(reader.get_trace("mine")) == {"trace_id": "mine", "score": 1}
    assert run(reader.get_trace("theirs")) == {"trace_id": "theirs", "score": 2}
    assert run(reader.get_trace("r5")) == {"trace_id": "r5", "score": 50, "version": 2}
    assert run(reader.get_trace("absent")) is None


def test_get_trace_after_the_file_is_replaced(tmp_path):
    path = tmp_path / "traces.jsonl"
    store = REERTraceStore(path)
    run(store.add_traces([{"trace_id": f"a{i}", "score": i} for i in range(50)]))
    assert run(store.get_trace("a10")) == {"trace_id": "a10", "score": 10}
    replacement = tmp_path / "new.jsonl"
    replacement.write_text('{"trace_id": "b1", "score": 1}\n')
    os.replace(replacement, path)
    assert run(store.get_trace("a10")) is None
    assert run(store.get_trace("b1")) == {"trace_id": "b1", "score": 1}
    run(store.add_trace({"trace_id": "b2", "score": 2}))  # appends go to the new file
    assert [t["trace_id"] for t in run(all_traces(store))] == ["b1", "b2"]


# --- reads ---------------------------------------------------------------------------------------


def test_malformed_lines_are_skipped_and_counted_with_line_numbers(tmp_path):
    path = tmp_path / "traces.jsonl"
    path.write_bytes(
        b'{"trace_id": "a", "score": 0.1}\n'
        b"garbage\n"
        b'[1, 2, 3]\n'  # valid JSON, not a trace object
        b"\n"
        b'{"trace_id": "b", "score": 0.9, "tag": "x"}\n'
        b'{"trace_id": "c", "score": "high"}\n'  # a trace, without a numeric score
        b"{\xff}\n"
    )
    store = REERTraceStore(path)
    stats = run(store.get_memory_efficient_stats())
    assert stats["total_traces"] == 3
    assert stats["malformed_lines"] == 3
    assert stats["malformed_line_numbers"] == [2, 3, 7]
    assert stats["blank_lines"] == 1
    assert (stats["scored_traces"], stats["score_min"], stats["score_max"]) == (2, 0.1, 0.9)
    assert math.isclose(stats["score_mean"], 0.5)
    assert [t["trace_id"] for t in run(all_traces(store))] == ["a", "b", "c"]

    async def query(**kwargs):
        return [t["trace_id"] async for t in store.lazy_query_traces(**kwargs)]

    assert run(query(min_score=0.5)) == ["b"]
    assert run(query(max_score=0.5)) == ["a"]
    assert run(query(tag="x")) == ["b"]
    assert run(query(limit=2)) == ["a", "b"]
    assert run(query(limit=0)) == []
    assert run(store.get_trace("c")) == {"trace_id": "c", "score": "high"}


def test_stream_traces_filtered_yields_full_chunks_and_runs_the_filter_off_the_loop(tmp_path):
    path = tmp_path / "traces.jsonl"
    store = REERTraceStore(path)
    run(store.add_traces([{"trace_id": f"t{i}", "score": i / 100} for i in range(100)]))
    filter_threads: set[int] = set()

    def high(trace: dict) -> bool:
        filter_threads.add(threading.get_ident())
        return trace.get("score", 0) > 0.7

    async def scenario():
        chunks = [chunk async for chunk in store.stream_traces_filtered(filter_func=high, chunk_size=10)]
        return chunks, threading.get_ident()

    chunks, loop_thread = run(scenario())
    assert [len(chunk) for chunk in chunks] == [10, 10, 9]
    assert [t["trace_id"] for chunk in chunks for t in chunk] == [f"t{i}" for i in range(71, 100)]
    assert filter_threads and loop_thread not in filter_threads


def test_stream_traces_filtered_chunks_span_reads_and_hops_in_file_order(tmp_path):
    # About 5 MiB in reads of 4 KiB: many reads per hop, several hops, chunks cut across both.
    store = REERTraceStore(tmp_path / "traces.jsonl", chunk_bytes=4096)
    run(store.add_traces([{"trace_id": f"t{i}", "score": i % 10 / 10, "pad": "z" * 230} for i in range(20_000)]))
    with open(store.path, "ab") as f:
        f.write(b'[1]\n\n{"trace_id": "last", "score": 0.9}\n{"torn')

    async def chunks(filter_func):
        return [chunk async for chunk in store.stream_traces_filtered(filter_func, chunk_size=333)]

    kept = run(chunks(lambda t: t["score"] >= 0.5))
    expected = [f"t{i}" for i in range(20_000) if i % 10 >= 5] + ["last"]
    assert [len(chunk) for chunk in kept] == [333] * (len(expected) // 333) + [len(expected) % 333]
    assert [t["trace_id"] for chunk in kept for t in chunk] == expected
    everything = run(chunks(None))
    assert sum(map(len, everything)) == 20_001 and everything[-1][-1]["trace_id"] == "last"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_leaving_a_query_early_or_cancelling_it_closes_the_file(tmp_path, telemetry):
    path = tmp_path / "traces.jsonl"
    store = REERTraceStore(path, chunk_bytes=64 * 1024)
    run(store.add_traces([{"trace_id": f"t{i}", "score": i % 100 / 100, "pad": "z" * 200} for i in range(60_000)]))
    before = open_fds()

    async def leave_early():
        async with contextlib.aclosing(store.lazy_query_traces()) as traces:
            async for trace in traces:
                assert trace["trace_id"] == "t0"
                break

    run(leave_early())
    assert open_fds() == before
    span = telemetry.span("trace_store_lazy_query")
    assert span.attributes["reer.trace_store.records_returned"] == 1
    assert span.attributes["reer.trace_store.bytes_read"] < path.stat().st_size

    # Cancelled while the worker thread is inside the pass, after the consumer has had its first
    # chunks: the filter (run in that thread) holds the next hop until the task is cancelled.
    received: list[list[dict]] = []
    consumer_has_chunks = threading.Event()
    worker_held = threading.Event()
    release_the_worker = threading.Event()

    async def cancel_a_stream():
        loop = asyncio.get_running_loop()
        worker_in_the_pass = asyncio.Event()

        def keep(trace):
            if consumer_has_chunks.is_set() and not worker_held.is_set():
                worker_held.set()
                loop.call_soon_threadsafe(worker_in_the_pass.set)
                release_the_worker.wait(60)
            return True

        async def consume():
            async for chunk in store.stream_traces_filtered(keep):
                received.append(chunk)
                consumer_has_chunks.set()

        task = asyncio.create_task(consume())
        try:
            in_the_pass = asyncio.create_task(worker_in_the_pass.wait())
            await asyncio.wait([task, in_the_pass], return_when=asyncio.FIRST_COMPLETED)
            in_the_pass.cancel()
            assert not task.done(), "the stream ended in one hop: the file should span several"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            release_the_worker.set()

    run(cancel_a_stream())  # returns once the worker thread let go of the pass
    gc.collect()
    assert open_fds() == before
    assert received and sum(map(len, received)) < 60_000
    (stream,) = telemetry.spans("trace_store_stream_filtered")
    assert stream.attributes["reer.trace_store.records_returned"] == sum(map(len, received))
    assert stream.attributes["reer.trace_store.bytes_read"] < path.stat().st_size


def test_a_missing_file_is_an_empty_store_created_on_first_write(tmp_path):
    path = tmp_path / "nested" / "dir" / "traces.jsonl"
    store = REERTraceStore(path, durable=True)
    stats = run(store.get_memory_efficient_stats())
    assert (stats["total_traces"], stats["file_size_bytes"], stats["score_mean"]) == (0, 0, None)
    assert run(all_traces(store)) == []
    assert run(store.get_trace("x")) is None
    trace_id = run(store.add_trace({"score": 0.5, "query": "q"}))
    assert len(trace_id) == 32 and path.exists()
    assert run(store.get_trace(trace_id)) == {"trace_id": trace_id, "score": 0.5, "query": "q"}


@pytest.mark.parametrize(
    ("trace", "message"),
    [
        ([1, 2], r"trace=\[1, 2\]: expected a JSON object \(a dict\), got list"),
        ({"trace_id": "a"}, r"has no 'score'; expected a finite number"),
        ({"score": "0.5"}, r"trace\['score'\]='0.5': expected a finite number"),
        ({"score": True}, r"trace\['score'\]=True: expected a finite number"),
        ({"score": float("nan")}, r"trace\['score'\]=nan: expected a finite number"),
        ({"score": 1, "trace_id": 7}, r"trace\['trace_id'\]=7: expected a non-empty string"),
        ({"score": 1, "trace_id": ""}, r"trace\['trace_id'\]='': expected a non-empty string"),
        ({"score": 1, 3: "x"}, r"has key 3 \(int\): JSON object keys must be strings"),
        ({"score": 1, "trace_id": "t", "when": object()}, r"trace \(trace_id 't'\) is not serialisable as strict JSON"),
        ({"score": 1, "trace_id": "t", "x": [float("inf")]}, r"trace \(trace_id 't'\) is not serialisable as strict JSON"),
    ],
)
def test_unacceptable_traces_are_refused_naming_the_value(tmp_path, trace, message):
    store = REERTraceStore(tmp_path / "traces.jsonl")
    with pytest.raises(TraceStoreError, match=message):
        run(store.add_trace(trace))
    assert not (tmp_path / "traces.jsonl").exists()


def test_add_traces_writes_nothing_when_one_trace_is_refused(tmp_path):
    path = tmp_path / "traces.jsonl"
    store = REERTraceStore(path)
    run(store.add_trace({"trace_id": "first", "score": 1}))
    size = path.stat().st_size
    with pytest.raises(TraceStoreError, match=r"traces\[2\]\['score'\]=None"):
        run(store.add_traces([{"score": 1}, {"score": 2}, {"score": None}]))
    assert path.stat().st_size == size
    with pytest.raises(TraceStoreError, match=r"add_traces\(traces=\{'score': 1\}\): expected an iterable of trace objects"):
        run(store.add_traces({"score": 1}))


def test_bad_query_arguments_are_refused_naming_them(tmp_path):
    store = REERTraceStore(tmp_path / "traces.jsonl")
    with pytest.raises(TraceStoreError, match=r"lazy_query_traces\(limit=-1\)"):
        store.lazy_query_traces(limit=-1)
    with pytest.raises(TraceStoreError, match=r"lazy_query_traces\(min_score='a'\)"):
        store.lazy_query_traces(min_score="a")
    with pytest.raises(TraceStoreError, match=r"stream_traces_filtered\(chunk_size=0\)"):
        store.stream_traces_filtered(None, chunk_size=0)
    with pytest.raises(TraceStoreError, match=r"stream_traces_filtered\(filter_func=3\)"):
        store.stream_traces_filtered(3)
    with pytest.raises(TraceStoreError, match=r"get_trace\(trace_id=None\)"):
        run(store.get_trace(None))  # type: ignore[arg-type]
    with pytest.raises(TraceStoreError, match=r"REERTraceStore\(path=None\)"):
        REERTraceStore(None)  # type: ignore[arg-type]


# --- memory --------------------------------------------------------------------------------------


def test_optimize_memory_usage_and_cleanups_drop_the_index(tmp_path):
    path = tmp_path / "traces.jsonl"
    store = REERTraceStore(path)
    run(store.add_traces([{"trace_id": f"t{i}", "score": i} for i in range(5000)]))
    run(store.get_trace("t1"))
    assert run(store.get_memory_efficient_stats())["index_entries"] == 5000
    result = store.optimize_memory_usage()
    assert result["index_entries_released"] == 5000
    assert result["index_memory_released_mb"] > 0
    assert result["memory_freed_mb"] >= 0 and "gc_collected_objects" in result and "heap_trimmed" in result
    assert run(store.get_memory_efficient_stats())["index_entries"] == 0

    assert run(store.get_trace("t4999")) == {"trace_id": "t4999", "score": 4999}  # rebuilt on use
    cleanup = run_cleanup("manual")
    assert any(name.startswith("trace_store:") for name in cleanup.hooks_run)
    assert run(store.get_memory_efficient_stats())["index_entries"] == 0

    hooks = [name for name in cleanup_hook_names() if str(path) in name]
    assert len(hooks) == 1
    del store
    gc.collect()
    assert not [name for name in cleanup_hook_names() if str(path) in name]  # the hook did not keep it alive


MILLION = """
    import asyncio, json, os, sys
    from reer_otel_memory import PROBE
    from reer_otel_memory.testing import capture_telemetry
    from reer_otel_memory.trace_store import REERTraceStore

    path, count = sys.argv[1], int(sys.argv[2])
    with open(path, "w") as f:
        for start in range(0, count, 20_000):
            f.write("".join(
                f'{{"trace_id":"t{i:08d}","score":{i * 7919 % 10007 / 10007:.6f},"query":"question {i} about topic {i % 97}",'
                f'"model":"m-{i % 5}","steps":[{{"thought":"step 0","ppl":{i % 13}.5}}]}}\\n'
                for i in range(start, min(count, start + 20_000))
            ))

    async def main():
        out = {"file_size": os.path.getsize(path)}
        store = REERTraceStore(path)
        with capture_telemetry() as telemetry:
            warm_up = REERTraceStore(path + ".small")  # imports, worker threads, first spans
            await warm_up.add_traces([{"score": 1}] * 100)
            await warm_up.get_memory_efficient_stats()
            [c async for c in warm_up.stream_traces_filtered(None)]
            window, start = PROBE.begin_peak()
            stats = await store.get_memory_efficient_stats()
            out["stats_peak_growth"] = PROBE.end_peak(window, PROBE.rss_bytes()) - start
            out["stats"] = {k: stats[k] for k in ("total_traces", "malformed_lines", "score_min", "score_max", "score_mean")}

            window, start = PROBE.begin_peak()
            streamed = 0
            async for chunk in store.stream_traces_filtered(lambda t: t["score"] > 0.5, chunk_size=1000):
                streamed += len(chunk)
            out["stream_peak_growth"] = PROBE.end_peak(window, PROBE.rss_bytes()) - start
            out["streamed"] = streamed


            telemetry.clear()
            first = [t["trace_id"] async for t in store.lazy_query_traces(limit=10)]
            span = telemetry.span("trace_store_lazy_query")
            out["limited"] = first
            out["limited_attributes"] = dict(span.attributes)
        print(json.dumps(out))

    asyncio.run(main())
"""


@pytest.mark.slow
def test_a_million_traces_stream_in_bounded_memory_and_limit_reads_only_the_start(tmp_path):
    count = 1_000_000
    out = json.loads(run_child(MILLION, str(tmp_path / "million.jsonl"), str(count), timeout_s=240))
    assert out["stats"]["total_traces"] == count and out["stats"]["malformed_lines"] == 0
    assert 0 <= out["stats"]["score_min"] < 0.001 and 0.999 < out["stats"]["score_max"] <= 1
    expected_streamed = sum(1 for i in range(count) if round(i * 7919 % 10007 / 10007, 6) > 0.5)
    assert out["streamed"] == expected_streamed
    for key in ("stats_peak_growth", "stream_peak_growth"):
        assert out[key] <= 32 * MiB, (key, out[key] / MiB)

    assert out["limited"] == [f"t{i:08d}" for i in range(10)]
    attributes = out["limited_attributes"]
    assert attributes["reer.trace_store.records_returned"] == 10
    assert attributes["reer.trace_store.records_scanned"] == 10
    assert attributes["reer.trace_store.bytes_read"] <= 1 * MiB  # one chunk of a ~140 MB file
    assert out["file_size"] > 100 * attributes["reer.trace_store.bytes_read"]


# --- telemetry -----------------------------------------------------------------------------------


def test_every_operation_is_a_profiled_span_with_scan_attributes_and_gauges(tmp_path, telemetry):
    path = tmp_path / "traces.jsonl"
    store = REERTraceStore(path)

    async def scenario():
        await store.add_trace({"trace_id": "a", "score": 0.2})
        await store.add_traces([{"trace_id": "b", "score": 0.8}, {"trace_id": "c", "score": 0.9}])
        [t async for t in store.lazy_query_traces(min_score=0.5)]
        [c async for c in store.stream_traces_filtered(None, chunk_size=2)]
        await store.get_trace("b")
        await store.get_memory_efficient_stats()

    run(scenario())
    store.optimize_memory_usage()
    size = path.stat().st_size

    def attrs(name: str) -> dict:
        span = telemetry.span(name)
        assert span.attributes["reer.operation"] == name
        assert "reer.memory.rss.delta" in span.attributes
        assert span.attributes["reer.trace_store.path"] == str(path)
        return dict(span.attributes)

    assert attrs("trace_store_add_trace")["reer.trace_store.records_written"] == 1
    added = attrs("trace_store_add_traces")
    assert added["reer.trace_store.records_written"] == 2
    assert added["reer.trace_store.bytes_written"] == size - len(b'{"trace_id":"a","score":0.2}\n')
    query = attrs("trace_store_lazy_query")
    assert (query["reer.trace_store.records_scanned"], query["reer.trace_store.records_returned"]) == (3, 2)
    assert query["reer.trace_store.bytes_read"] == size
    stream = attrs("trace_store_stream_filtered")
    assert (stream["reer.trace_store.records_scanned"], stream["reer.trace_store.records_returned"]) == (3, 3)
    lookup = attrs("trace_store_get_trace")
    assert (lookup["reer.trace_store.records_scanned"], lookup["reer.trace_store.bytes_read"]) == (4, size + 29)
    stats = attrs("trace_store_stats")
    assert (stats["reer.trace_store.records_scanned"], stats["reer.trace_store.bytes_read"]) == (3, size)
    attrs("trace_store_optimize")
    assert telemetry.metric_points("reer.memory.operation.duration", reer_operation="trace_store_get_trace")

    def gauge(name: str) -> float | None:
        values = [p.value for p in telemetry.metric_points(name) if p.attributes.get("reer.trace_store.path") == str(path)]
        return values[0] if len(values) == 1 else None

    assert gauge("reer.trace_store.size") == size
    assert gauge("reer.trace_store.traces") == 3
    run(store.add_trace({"trace_id": "d", "score": 0.5}))
    wait_for(lambda: gauge("reer.trace_store.traces") == 4 and gauge("reer.trace_store.size") > size)


def test_reads_go_on_past_damage_and_log_what_they_skipped(tmp_path, caplog):
    import logging

    path = tmp_path / "traces.jsonl"
    store = REERTraceStore(path)
    run(store.add_traces([{"trace_id": "a", "score": 1}]))
    with open(path, "ab") as file:
        file.write(b"{damaged\n[1, 2]\n")
    run(store.add_traces([{"trace_id": "b", "score": 2}]))
    with caplog.at_level(logging.WARNING, logger="reer_otel_memory.trace_store.scan"):
        stats = run(store.get_memory_efficient_stats())
    assert stats["total_traces"] == 2 and stats["malformed_line_numbers"] == [2, 3]
    assert [r.getMessage() for r in caplog.records] == [f"{path}: skipped 2 malformed lines (lines 2, 3)"]
    store.close()


@pytest.fixture
def small_filesystem(tmp_path):
    """A 64 KiB tmpfs mounted for the test: a disk that really fills up."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_a_batch_that_fills_the_disk_leaves_nothing_behind_and_says_so(small_filesystem):
    path = small_filesystem / "traces.jsonl"
    store = REERTraceStore(path)
    run(store.add_traces([{"trace_id": f"kept-{i}", "score": i} for i in range(3)]))
    size_before = path.stat().st_size
    batch = [{"trace_id": f"lost-{i}", "score": i, "payload": "x" * 4000} for i in range(20)]  # 80 KB > 64 KiB
    with pytest.raises(OSError) as raised:
        run(store.add_traces(batch))
    assert raised.value.errno == 28
    assert str(raised.value) == (
        f"[Errno 28] REERTraceStore({str(path)!r}): add_traces of 20 traces failed: No space left on device; "
        f"none of them was kept (the file is back to its {size_before} bytes)"
    )
    assert path.stat().st_size == size_before
    stats = run(store.get_memory_efficient_stats())
    assert stats["total_traces"] == 3 and stats["malformed_lines"] == 0 and stats["torn_tail"] is None
    assert run(store.get_trace("lost-0")) is None
    # The store goes on working once there is room.
    assert run(store.add_trace({"trace_id": "after", "score": 1.0})) == "after"
    assert run(store.get_trace("after")) == {"trace_id": "after", "score": 1.0}
    store.close()


def test_stats_and_index_decode_one_field_yet_count_what_a_full_read_returns(tmp_path):
    # Stats decode only the scores, the index only the ids: a line whose other fields are not
    # valid JSON (bad UTF-8, a bad literal) is malformed for them as for a full read.
    path = tmp_path / "traces.jsonl"
    path.write_bytes(
        b'{"trace_id": "a", "score": 0.5, "text": "caf\xc3\xa9"}\n'
        b'{"trace_id": "b", "score": 0.9, "text": "\xff"}\n'
        b'{"trace_id": "c", "score": 0.1, "text": nope}\n'
        b'{"trace_id": "d", "score": NaN, "n": 123456789012345678901234567890}\n'
        b'["not", "an", "object"]\n'
        b'{"trace_id": "e", "steps": [{"score": 7}]}\n'
    )
    store = REERTraceStore(path)
    stats = run(store.get_memory_efficient_stats())
    full = run(_collect(store))
    assert stats["total_traces"] == len(full) == 3
    assert stats["malformed_line_numbers"] == [2, 3, 5]
    assert (stats["scored_traces"], stats["score_min"], stats["score_max"]) == (1, 0.5, 0.5)
    assert run(store.get_trace("b")) is None
    assert run(store.get_trace("d"))["n"] == 123456789012345678901234567890
    assert run(store.get_trace("e")) == {"trace_id": "e", "steps": [{"score": 7}]}


async def _collect(store):
    return [trace async for chunk in store.stream_traces_filtered() for trace in chunk]


def test_one_field_passes_refuse_bad_utf8_deep_in_a_large_non_ascii_file(tmp_path):
    # The stats and the index check UTF-8 over many lines at once: a bad line far into a file
    # of non-ASCII traces is still malformed for them, and only that line.
    path = tmp_path / "traces.jsonl"
    good = [f'{{"trace_id": "t{i}", "score": 0.5, "text": "réponse {i}"}}\n'.encode() for i in range(3000)]
    good[2500] = b'{"trace_id": "bad", "score": 0.5, "text": "caf\xe9"}\n'
    path.write_bytes(b"".join(good))
    store = REERTraceStore(path)
    stats = run(store.get_memory_efficient_stats())
    assert (stats["total_traces"], stats["malformed_line_numbers"], stats["scored_traces"]) == (2999, [2501], 2999)
    assert run(store.get_trace("bad")) is None
    assert run(store.get_trace("t2999"))["text"] == "réponse 2999"
    store.close()
