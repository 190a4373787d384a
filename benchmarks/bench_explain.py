"""An allocation-heavy loop inside an explanation window, vs bare, plain tracemalloc and memray.

The loop builds and drops 20,000 dicts (an int, a str, 64 bytes, a two-item list each) at a stack
depth of 30 frames, as a request handler under a web framework would; each configuration is
timed in interleaved rounds and the medians compared with the bare loop's, measured in the same
run:

* an ``explain_memory`` window (tracemalloc recording 32 frames, what attribution needs);
* plain tracemalloc recording 1 frame (the cheapest tracemalloc can be);
* memray's ``Tracker`` (the ``bench`` extra), with its defaults (allocations reaching ``malloc``
  only: pymalloc's small objects are not seen one by one), and with ``trace_python_allocators``
  (every Python allocation, as tracemalloc sees them), both in its aggregated file format (what
  is live at the end, the question a window answers). Skipped with a note where memray is not
  installed.

Also: what ending a window costs (the snapshot, grouping and attribution) with many blocks live,
and what a window costs the process over time at the default rate limit (2% of wall time).
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from benchmarks._report import Figure, scaled

ROWS = 20_000
DEPTH = 30
ROUNDS = scaled(9, 3)
LOOPS_PER_ROUND = scaled(5, 2)
LIVE_BLOCKS = scaled(1_000_000, 200_000)
DEFAULT_SHARE = 0.02


def workload() -> int:
    rows = [{"id": i, "name": str(i), "payload": bytes(64), "tags": [i, i + 1]} for i in range(ROWS)]
    return len(rows)


def at_depth(depth: int, fn: Callable[[], int]) -> int:
    if depth <= 1:
        return fn()
    return at_depth(depth - 1, fn)


def timed_loop() -> float:
    """Seconds per workload run at the stack depth, over LOOPS_PER_ROUND runs."""
    started = time.perf_counter()
    for _ in range(LOOPS_PER_ROUND):
        at_depth(DEPTH, workload)
    return (time.perf_counter() - started) / LOOPS_PER_ROUND


@contextmanager
def bare() -> Iterator[None]:
    yield


@contextmanager
def explain_window() -> Iterator[None]:
    from reer_otel_memory.profiling.explain import AutoExplainer

    explainer = AutoExplainer(enabled=True, seconds=3600, max_share=1.0)
    assert explainer.request("benchmark", [])
    deadline = time.monotonic() + 10
    while not tracemalloc.is_tracing():
        if time.monotonic() > deadline:
            raise RuntimeError("the explanation window did not start")
        time.sleep(0.001)
    try:
        yield
    finally:
        explainer.stop()
        explainer.wait_idle(60)


@contextmanager
def plain_tracemalloc(frames: int) -> Iterator[None]:
    tracemalloc.start(frames)
    try:
        yield
    finally:
        tracemalloc.stop()


def memray_tracker(trace_python_allocators: bool) -> Callable[[], AbstractContextManager[None]]:
    @contextmanager
    def tracker() -> Iterator[None]:
        import memray

        with tempfile.TemporaryDirectory() as directory:
            capture = os.path.join(directory, "capture.bin")
            with memray.Tracker(
                capture, trace_python_allocators=trace_python_allocators, file_format=memray.FileFormat.AGGREGATED_ALLOCATIONS
            ):
                yield

    return tracker


def slowdowns() -> dict[str, float]:
    """Median seconds per workload run under each configuration, rounds interleaved."""
    configurations: dict[str, Callable[[], AbstractContextManager[None]]] = {
        "bare": bare,
        "explain": explain_window,
        "tracemalloc1": lambda: plain_tracemalloc(1),
    }
    if importlib.util.find_spec("memray") is not None:
        configurations["memray"] = memray_tracker(False)
        configurations["memray_python"] = memray_tracker(True)
    samples: dict[str, list[float]] = {name: [] for name in configurations}
    at_depth(DEPTH, workload)  # warm up
    for _ in range(ROUNDS):
        for name, configuration in configurations.items():
            with configuration():
                samples[name].append(timed_loop())
    return {name: statistics.median(values) for name, values in samples.items()}


def window_end_ms() -> tuple[float, int]:
    """Milliseconds from asking a window to stop to its explanation, with LIVE_BLOCKS blocks live from one site."""
    from reer_otel_memory.profiling.explain import AutoExplainer

    explainer = AutoExplainer(enabled=True, seconds=3600, max_share=1.0)
    assert explainer.request("benchmark", [])
    while not tracemalloc.is_tracing():
        time.sleep(0.001)
    kept = [str(i) for i in range(LIVE_BLOCKS)]
    done = threading.Event()
    explainer.add_listener(lambda *args: done.set())
    started = time.perf_counter()
    explainer.stop()
    done.wait(120)
    elapsed_ms = (time.perf_counter() - started) * 1e3
    explanation = explainer.latest()
    blocks = sum(site.count for site in explanation.sites) if explanation else 0
    del kept
    return elapsed_ms, blocks


def run() -> list[Figure]:
    medians = slowdowns()
    base = medians["bare"] * 1e3
    explain_ratio = medians["explain"] / medians["bare"]
    figures = [
        Figure(f"{ROWS:,} dicts built at depth {DEPTH}, bare", base, "ms"),
        Figure("  inside an explain_memory window (tracemalloc, 32 frames)", medians["explain"] * 1e3, "ms",
               "bare", base, target="<= 6x"),
        Figure("  under plain tracemalloc, 1 frame", medians["tracemalloc1"] * 1e3, "ms", "bare", base),
    ]
    if "memray" in medians:
        figures += [
            Figure("  under memray Tracker (malloc-level, aggregated file)", medians["memray"] * 1e3, "ms", "bare", base),
            Figure("  under memray Tracker, trace_python_allocators", medians["memray_python"] * 1e3, "ms", "bare", base),
        ]
    else:
        figures.append(Figure("  memray not installed (make bench installs the bench extra): its rows skipped", 0.0, ""))
    figures.append(
        Figure(f"  added over time at the default {DEFAULT_SHARE:.0%} window share, this loop non-stop",
               (explain_ratio - 1) * DEFAULT_SHARE * 100, "%", target="<= 10 %")
    )
    end_ms, blocks = window_end_ms()
    figures.append(Figure(f"ending a window with {blocks:,} blocks live (snapshot, grouping, span)", end_ms, "ms", target="<= 2000 ms"))
    return figures


if __name__ == "__main__":
    for figure in run():
        print(figure.line())
