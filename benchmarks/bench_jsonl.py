"""StreamingJSONLReader over 300,000 traces vs json.loads per line, at the default and the spec's chunk size."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable

from benchmarks._report import Figure, scaled
from benchmarks.bench_trace_store import write_traces

TRACES = scaled(300_000, 20_000)
ROUNDS = scaled(3, 1)


def _best_s(fn: Callable[[], int]) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        assert fn() == TRACES
        best = min(best, time.perf_counter() - started)
    return best


def _loop(path: str) -> int:
    count = 0
    with open(path, "rb") as f:
        for line in f:
            json.loads(line)
            count += 1
    return count


def _reader(path: str, chunk_size: int | None) -> int:
    from reer_otel_memory import StreamingJSONLReader

    reader = StreamingJSONLReader(path) if chunk_size is None else StreamingJSONLReader(path, chunk_size=chunk_size)
    count = 0
    for _ in reader:
        count += 1
    return count


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "traces.jsonl")
        write_traces(path, TRACES)
        loop_s = _best_s(lambda: _loop(path))
        default_s = _best_s(lambda: _reader(path, None))
        small_s = _best_s(lambda: _reader(path, 8192))
    us = lambda seconds: seconds / TRACES * 1e6  # noqa: E731
    return [
        Figure("StreamingJSONLReader, 1 MiB chunks: per record", us(default_s), "us",
               "json.loads per line", us(loop_s), "below the loop (ratio < 1)"),
        Figure("StreamingJSONLReader(chunk_size=8192): per record", us(small_s), "us",
               "json.loads per line", us(loop_s), "below the loop (ratio < 1)"),
    ]
