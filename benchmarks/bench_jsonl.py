"""StreamingJSONLReader over a file of realistic traces (1 GiB) vs json.loads per line; orjson and msgspec per line beside.

Throughput is the best of ``ROUNDS`` passes (the page cache is warm for every contender); peak
RSS growth of a pass is measured in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

from benchmarks._report import Figure, scaled
from benchmarks._traces import realistic_traces_file

ROUNDS = scaled(3, 1)
_MB = 1 << 20


def _best_s(fn: Callable[[], int], expected: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        assert fn() == expected
        best = min(best, time.perf_counter() - started)
    return best


def _loop(path: str, loads: Callable[[bytes], object]) -> int:
    count = 0
    with open(path, "rb") as f:
        for line in f:
            loads(line)
            count += 1
    return count


def _reader(path: str, chunk_size: int | None) -> int:
    from reer_otel_memory import StreamingJSONLReader

    reader = StreamingJSONLReader(path) if chunk_size is None else StreamingJSONLReader(path, chunk_size=chunk_size)
    count = 0
    for _ in reader:
        count += 1
    return count


_PEAK_CHILD = """
    import sys
    from reer_otel_memory import PROBE, StreamingJSONLReader

    window, start = PROBE.begin_peak()
    for record in StreamingJSONLReader(sys.argv[1]):
        pass
    print(PROBE.end_peak(window, PROBE.rss_bytes()) - start)
"""


def _peak_growth_mb(path: str) -> float:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_PEAK_CHILD), path], capture_output=True, text=True, check=True)
    return int(done.stdout.strip()) / _MB


def run() -> list[Figure]:
    import msgspec

    path, traces = realistic_traces_file()
    size_mb = os.path.getsize(path) / _MB
    loop_s = _best_s(lambda: _loop(path, json.loads), traces)
    default_s = _best_s(lambda: _reader(path, None), traces)
    small_s = _best_s(lambda: _reader(path, 8192), traces)
    msgspec_s = _best_s(lambda: _loop(path, msgspec.json.Decoder().decode), traces)
    peak_mb = _peak_growth_mb(path)
    us = lambda seconds: seconds / traces * 1e6  # noqa: E731
    label = f"{traces:,} traces, {size_mb:.0f} MiB"
    figures = [
        Figure(f"StreamingJSONLReader, 1 MiB chunks: per record ({label})", us(default_s), "us",
               "json.loads per line", us(loop_s), "<= 0.333x (3x the throughput)"),
        Figure("StreamingJSONLReader(chunk_size=8192): per record", us(small_s), "us",
               "json.loads per line", us(loop_s), "<= 0.333x (3x the throughput)"),
        Figure("StreamingJSONLReader: peak RSS growth", peak_mb, "MiB", "file size", size_mb, "<= 10 MiB"),
        Figure("  msgspec.json.Decoder().decode per line", us(msgspec_s), "us", "json.loads per line", us(loop_s)),
    ]
    try:
        import orjson
    except ImportError:
        return figures
    orjson_s = _best_s(lambda: _loop(path, orjson.loads), traces)
    figures.append(Figure("  orjson.loads per line", us(orjson_s), "us", "json.loads per line", us(loop_s)))
    return figures
