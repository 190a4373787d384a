"""Trace store over 1 GiB of realistic traces: stats and filtered streaming vs a json.loads loop; get_trace on 1,000,000 traces.

Throughput is the best of ``ROUNDS`` passes over the same file, the contenders taking turns in
each round (the page cache is warm for every contender). Peak memory is the growth of peak RSS above the start of the operation,
each measured in a fresh interpreter. ``get_trace`` is timed per call, after the index is
built, on a store of a million short traces, each call in the same event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from typing import Any

from benchmarks._report import Figure, scaled
from benchmarks._traces import best_of_interleaved, realistic_traces_file

TRACES = scaled(1_000_000, 50_000)
LOOKUPS = scaled(5_000, 1_000)
ROUNDS = scaled(3, 2)
CHUNK = 1000
_MB = 1 << 20


def write_traces(path: str, count: int) -> None:
    """``count`` reasoning-trace lines of about 230 bytes (a query, scores, two steps, metadata)."""
    with open(path, "w") as f:
        for start in range(0, count, 20_000):
            f.write(
                "".join(
                    f'{{"trace_id":"{i:032x}","score":{i * 7919 % 10007 / 10007:.6f},'
                    f'"query":"question {i} about topic {i % 97}","candidates":["answer {i % 11}","answer {i % 13}"],'
                    f'"steps":[{{"thought":"step 0","ppl":{i % 17}.25}},{{"thought":"step 1","ppl":{i % 19}.5}}],'
                    f'"metadata":{{"model":"m-{i % 5}","iteration":{i % 7}}}}}\n'
                    for i in range(start, min(count, start + 20_000))
                )
            )


def _loop_stats(path: str) -> dict:
    """The baseline: json.loads per line, then the same score statistics."""
    count, total, low, high = 0, 0.0, float("inf"), float("-inf")
    traces = 0
    with open(path, "rb") as f:
        for line in f:
            trace = json.loads(line)
            traces += 1
            score = trace.get("score")
            if isinstance(score, (int, float)):
                count += 1
                total += score
                low = min(low, score)
                high = max(high, score)
    return {"total_traces": traces, "score_mean": total / count}


def _loop_filtered(path: str, loads: Callable[[bytes], Any] = json.loads) -> int:
    """The baseline: json.loads per line, the same filter, the same chunks of 1000."""
    chunk, kept = [], 0
    with open(path, "rb") as f:
        for line in f:
            trace = loads(line)
            if trace.get("score", 0) > 0.7:
                chunk.append(trace)
                if len(chunk) == CHUNK:
                    kept += len(chunk)
                    chunk = []
    return kept + len(chunk)


async def _store_filtered(store) -> int:
    kept = 0
    async for chunk in store.stream_traces_filtered(lambda t: t.get("score", 0) > 0.7, chunk_size=CHUNK):
        kept += len(chunk)
        del chunk  # let each chunk go once counted, as the baselines do
    return kept


_PEAK_CHILD = """
    import asyncio, sys
    from reer_otel_memory import PROBE
    from reer_otel_memory.trace_store import REERTraceStore

    path, what = sys.argv[1], sys.argv[2]
    store = REERTraceStore(path)

    async def store_stats():
        await store.get_memory_efficient_stats()

    async def store_filtered():
        async for chunk in store.stream_traces_filtered(lambda t: t.get("score", 0) > 0.7, chunk_size=1000):
            pass

    asyncio.run(asyncio.sleep(0))  # the event loop machinery is imported before the window
    window, start = PROBE.begin_peak()
    asyncio.run(store_stats() if what == "stats" else store_filtered())
    print(PROBE.end_peak(window, PROBE.rss_bytes()) - start)
"""


def _peak_growth_mb(path: str, what: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_PEAK_CHILD), path, what], capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip()) / _MB


async def _lookups_us(store, ids: list[str]) -> list[float]:
    times = []
    for trace_id in ids:
        started = time.perf_counter()
        found = await store.get_trace(trace_id)
        times.append((time.perf_counter() - started) * 1e6)
        assert found is not None and found["trace_id"] == trace_id
    return sorted(times)


def run() -> list[Figure]:
    import random

    import msgspec

    from reer_otel_memory.trace_store import REERTraceStore

    path, traces = realistic_traces_file()
    size_mb = os.path.getsize(path) / _MB
    store = REERTraceStore(path)
    best = best_of_interleaved(
        {
            "loop stats": lambda: _loop_stats(path),
            "store stats": lambda: asyncio.run(store.get_memory_efficient_stats()),
            "loop filtered": lambda: _loop_filtered(path),
            "store filtered": lambda: asyncio.run(_store_filtered(store)),
            # What parsing alone allows: the same loop with the store's parser, in one thread.
            "msgspec filtered": lambda: _loop_filtered(path, msgspec.json.Decoder().decode),
        },
        ROUNDS,
    )
    (loop_stats_s, expected), (store_stats_s, stats) = best["loop stats"], best["store stats"]
    (loop_filtered_s, expected_kept), (store_filtered_s, kept) = best["loop filtered"], best["store filtered"]
    assert isinstance(stats, dict) and isinstance(expected, dict)
    assert stats["total_traces"] == expected["total_traces"] == traces
    assert abs(stats["score_mean"] - expected["score_mean"]) < 1e-9
    assert kept == expected_kept == best["msgspec filtered"][1]
    stats_peak = _peak_growth_mb(path, "stats")
    filtered_peak = _peak_growth_mb(path, "filtered")

    with tempfile.TemporaryDirectory() as directory:
        small = os.path.join(directory, "traces.jsonl")
        write_traces(small, TRACES)
        lookup_store = REERTraceStore(small)
        started = time.perf_counter()
        asyncio.run(lookup_store.get_trace(f"{0:032x}"))  # builds the index
        index_s = time.perf_counter() - started
        ids = [f"{i:032x}" for i in random.Random(7).sample(range(TRACES), LOOKUPS)]
        times = asyncio.run(_lookups_us(lookup_store, ids))

    per_s = lambda seconds: traces / seconds / 1e6  # noqa: E731
    label = f"{traces:,} traces, {size_mb:.0f} MiB"
    return [
        Figure(f"get_memory_efficient_stats, Mtraces/s ({label})", per_s(store_stats_s), "M/s",
               "json.loads per line + same stats", per_s(loop_stats_s), ">= 3x"),
        Figure("stream_traces_filtered(score > 0.7), Mtraces/s", per_s(store_filtered_s), "M/s",
               "json.loads per line + same filter", per_s(loop_filtered_s), ">= 3x"),
        Figure("  msgspec per line + same filter, one thread, Mtraces/s", per_s(best["msgspec filtered"][0]), "M/s",
               "json.loads per line + same filter", per_s(loop_filtered_s)),
        Figure("stream_traces_filtered(score > 0.7), Mtraces/s", per_s(store_filtered_s), "M/s",
               "msgspec per line + same filter", per_s(best["msgspec filtered"][0]), ">= 0.95x"),
        Figure("get_memory_efficient_stats: peak RSS growth", stats_peak, "MiB", "file size", size_mb, "<= 32 MiB"),
        Figure("stream_traces_filtered: peak RSS growth", filtered_peak, "MiB", "file size", size_mb, "<= 32 MiB"),
        Figure(f"get_trace by id, {TRACES:,} traces, index built: median", times[len(times) // 2], "us", target="< 1000 us"),
        Figure(f"  get_trace by id: 99th percentile of {LOOKUPS:,}", times[int(len(times) * 0.99)], "us"),
        Figure("  building the index (first get_trace)", index_s, "s"),
    ]
