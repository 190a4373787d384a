"""StreamingJSONLReader over a file of realistic traces (1 GiB) vs json.loads per line and vs the
plain per-line msgspec loop (json.loads where msgspec refuses); orjson and msgspec alone beside.

Throughput is the best of ``ROUNDS`` passes, the contenders taking turns in each round (the page
cache is warm for every contender); peak RSS growth of a pass is measured in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable

from benchmarks._report import Figure, scaled
from benchmarks._traces import best_of_interleaved, realistic_traces_file

ROUNDS = scaled(3, 2)
_MB = 1 << 20


def _loop(path: str, loads: Callable[[bytes], object]) -> int:
    count = 0
    with open(path, "rb") as f:
        for line in f:
            loads(line)
            count += 1
    return count


def _plain_loop(path: str) -> int:
    """The plain per-line loop the reader is held to: msgspec per line, json.loads where it refuses."""
    import msgspec

    decode = msgspec.json.Decoder().decode
    count = 0
    with open(path, "rb") as f:
        for line in f:
            try:
                decode(line)
            except msgspec.DecodeError:
                json.loads(line)
            count += 1
    return count


def _reader(path: str, chunk_size: int | None) -> int:
    from reer_otel_memory import StreamingJSONLReader  # imported by run(): no pass pays for the import

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

    import reer_otel_memory  # noqa: F401

    path, traces = realistic_traces_file()
    size_mb = os.path.getsize(path) / _MB
    contenders: dict[str, Callable[[], object]] = {
        "loop": lambda: _loop(path, json.loads),
        "default": lambda: _reader(path, None),
        "small": lambda: _reader(path, 8192),
        "msgspec": lambda: _loop(path, msgspec.json.Decoder().decode),
        "plain": lambda: _plain_loop(path),
    }
    try:
        import orjson
    except ImportError:
        orjson = None
    else:
        contenders["orjson"] = lambda: _loop(path, orjson.loads)
    best = best_of_interleaved(contenders, ROUNDS)
    for name, (_, count) in best.items():
        assert count == traces, (name, count, traces)
    loop_s, default_s, small_s, msgspec_s = (best[name][0] for name in ("loop", "default", "small", "msgspec"))
    peak_mb = _peak_growth_mb(path)
    us = lambda seconds: seconds / traces * 1e6  # noqa: E731
    label = f"{traces:,} traces, {size_mb:.0f} MiB"
    figures = [
        Figure(f"StreamingJSONLReader, 1 MiB chunks: per record ({label})", us(default_s), "us",
               "json.loads per line", us(loop_s), "<= 0.333x (3x the throughput)"),
        Figure("StreamingJSONLReader(chunk_size=8192): per record", us(small_s), "us",
               "json.loads per line", us(loop_s), "<= 0.333x (3x the throughput)"),
        Figure("StreamingJSONLReader, 1 MiB chunks: per record", us(default_s), "us",
               "plain per-line msgspec loop", us(best["plain"][0]), "<= 1.053x (0.95x its throughput)"),
        Figure("StreamingJSONLReader: peak RSS growth", peak_mb, "MiB", "file size", size_mb, "<= 10 MiB"),
        Figure("  msgspec.json.Decoder().decode per line", us(msgspec_s), "us", "json.loads per line", us(loop_s)),
    ]
    if orjson is not None:
        figures.append(Figure("  orjson.loads per line", us(best["orjson"][0]), "us", "json.loads per line", us(loop_s)))
    return figures
