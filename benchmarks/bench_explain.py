"""An allocation-heavy loop inside an explanation window, vs bare, plain tracemalloc and memray.

Two loops at a stack depth of 30 frames, as a request handler under a web framework would run:
one builds and drops 20,000 dicts (5,000 in the short mode), each an int, a str, 64 bytes and a
two-item list; the other makes 50,000 small Python calls (5,000), each allocating an int, which
is where memray, whose profile hook runs on every call, pays most. Each configuration is
timed in interleaved rounds with the bare loop, in the same child process, and the medians
compared:

* an ``explain_memory`` window (tracemalloc recording 32 frames, what attribution needs), and
  plain tracemalloc at 32 frames beside it: the window's own machinery should add nothing;
* plain tracemalloc recording 1 frame (the cheapest tracemalloc can be);
* memray's ``Tracker`` (the ``bench`` extra), with its defaults (allocations reaching ``malloc``
  only: pymalloc's small objects are not seen one by one), and with ``trace_python_allocators``
  (every Python allocation, as tracemalloc sees them), both in its aggregated file format (what
  is live at the end, the question a window answers). Skipped with a note where memray is not
  installed.

memray runs in child processes of its own: on Python 3.11, code run under its profile hook keeps
a line-number table afterwards, which makes tracemalloc's per-frame line lookup three times
faster in that process, so the tracemalloc figures would depend on what ran before them.

Also: what ending a window costs (the snapshot, grouping and attribution) with many blocks live,
and the same for a ``native=True`` window, which reads memray's file back.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from benchmarks._report import Figure, scaled

ROWS = scaled(20_000, 5_000)
CALLS = scaled(50_000, 5_000)
DEPTH = 30
ROUNDS = scaled(7, 3)
LOOPS_PER_ROUND = scaled(3, 2)
LIVE_BLOCKS = scaled(1_000_000, 200_000)
EXPLAIN_LOGGER = "reer_otel_memory.profiling.explain"


def workload() -> int:
    rows = [{"id": i, "name": str(i), "payload": bytes(64), "tags": [i, i + 1]} for i in range(ROWS)]
    return len(rows)


def small(i: int) -> int:
    return i + 1


def calls() -> int:
    total = 0
    for i in range(CALLS):
        total += small(i)
    return total


WORKLOADS: dict[str, Callable[[], int]] = {"dicts": workload, "calls": calls}


def at_depth(depth: int, fn: Callable[[], int]) -> int:
    if depth <= 1:
        return fn()
    return at_depth(depth - 1, fn)


def timed_loop(fn: Callable[[], int] = workload) -> float:
    """Seconds per run of ``fn`` at the stack depth, over LOOPS_PER_ROUND runs."""
    started = time.perf_counter()
    for _ in range(LOOPS_PER_ROUND):
        at_depth(DEPTH, fn)
    return (time.perf_counter() - started) / LOOPS_PER_ROUND


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Poll ``condition`` until it holds; a clear error after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.001)


@contextmanager
def bare() -> Iterator[None]:
    yield


@contextmanager
def explain_window() -> Iterator[None]:
    from reer_otel_memory.profiling.explain import AutoExplainer, window_open

    explainer = AutoExplainer(enabled=True, seconds=3600, max_share=1.0, native=False)  # compared with plain tracemalloc
    assert explainer.request("benchmark", [])
    _wait_until(window_open, "the explanation window to start")
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


CONFIGURATIONS: dict[str, Callable[[], AbstractContextManager[None]]] = {
    "bare": bare,
    "explain": explain_window,
    "tracemalloc32": lambda: plain_tracemalloc(32),
    "tracemalloc1": lambda: plain_tracemalloc(1),
    "memray": memray_tracker(False),
    "memray_python": memray_tracker(True),
}
#: The configurations measured together in one child process, each group with the bare loop.
GROUPS = (("explain", "tracemalloc32", "tracemalloc1"), ("memray",), ("memray_python",))


def measure_here(names: list[str]) -> dict[str, float]:
    """Median seconds per loop, ``"workload:configuration"``, of ``bare`` and each named configuration,
    rounds interleaved, in this process."""
    logging.getLogger(EXPLAIN_LOGGER).setLevel(logging.ERROR)
    chosen = ["bare", *names]
    samples: dict[str, list[float]] = {f"{load}:{name}": [] for load in WORKLOADS for name in chosen}
    for fn in WORKLOADS.values():
        at_depth(DEPTH, fn)  # warm up
    for _ in range(ROUNDS):
        for load, fn in WORKLOADS.items():
            for name in chosen:
                with CONFIGURATIONS[name]():
                    samples[f"{load}:{name}"].append(timed_loop(fn))
    return {key: statistics.median(values) for key, values in samples.items()}


def measure_in_child(names: tuple[str, ...]) -> dict[str, float]:
    code = f"import json, benchmarks.bench_explain as b; print(json.dumps(b.measure_here({list(names)!r})))"
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, check=False, timeout=900
    )
    if completed.returncode != 0:
        raise RuntimeError(f"measuring {names} failed: {completed.stderr[-2000:]}")
    measured: dict[str, float] = json.loads(completed.stdout.strip().splitlines()[-1])
    return measured


def window_end_ms() -> tuple[float, int]:
    """Milliseconds from asking a window to stop to its explanation, with LIVE_BLOCKS blocks live from one site."""
    from reer_otel_memory.profiling.explain import AutoExplainer, window_open

    explainer = AutoExplainer(enabled=True, seconds=3600, max_share=1.0, native=False)
    assert explainer.request("benchmark", [])
    _wait_until(window_open, "the explanation window to start")
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


def native_window_end_ms() -> tuple[float, int]:
    """The same for a memray window (``native=True``): the Tracker's exit and reading its file back included."""
    from reer_otel_memory.profiling import explain

    stop = threading.Event()
    result: list[explain.MemoryExplanation] = []
    thread = threading.Thread(target=lambda: result.append(explain._explain(3600, 10, stop, native=True)), daemon=True)
    thread.start()
    _wait_until(explain.memray_tracking, "the memray window to start")
    kept = [str(i) for i in range(LIVE_BLOCKS)]
    started = time.perf_counter()
    stop.set()
    thread.join(300)
    elapsed_ms = (time.perf_counter() - started) * 1e3
    blocks = sum(site.count for site in result[0].sites) if result else 0
    del kept
    return elapsed_ms, blocks


def run() -> list[Figure]:
    logging.getLogger(EXPLAIN_LOGGER).setLevel(logging.ERROR)
    measured = measure_in_child(GROUPS[0])
    memray_rows = (
        ("memray", "memray Tracker (malloc-level, aggregated file)"),
        ("memray_python", "memray Tracker, trace_python_allocators (an explain window where memray is installed)"),
    )
    if importlib.util.find_spec("memray") is not None:
        for name, _label in memray_rows:
            measured.update({f"{key}@{name}": value for key, value in measure_in_child((name,)).items()})
    figures: list[Figure] = []
    for load, title in (("dicts", f"{ROWS:,} dicts built"), ("calls", f"{CALLS:,} small Python calls (an int allocated each)")):
        base = measured[f"{load}:bare"] * 1e3
        figures += [
            Figure(f"{title} at stack depth {DEPTH}, bare", base, "ms"),
            Figure("  inside an explain_memory window (tracemalloc, 32 frames)", measured[f"{load}:explain"] * 1e3, "ms", "bare", base),
            Figure("  under plain tracemalloc, 32 frames", measured[f"{load}:tracemalloc32"] * 1e3, "ms", "bare", base),
            Figure("  under plain tracemalloc, 1 frame", measured[f"{load}:tracemalloc1"] * 1e3, "ms", "bare", base),
            Figure("  explain_memory window vs plain tracemalloc at 32 frames", measured[f"{load}:explain"] * 1e3, "ms",
                   "plain tracemalloc, 32 frames", measured[f"{load}:tracemalloc32"] * 1e3, target="<= 1.1x"),
        ]
        for name, label in memray_rows:
            if f"{load}:{name}@{name}" in measured:
                figures.append(Figure(f"  under {label}", measured[f"{load}:{name}@{name}"] * 1e3, "ms",
                                      "bare, its own child", measured[f"{load}:bare@{name}"] * 1e3))
    if not any("@" in key for key in measured):
        figures.append(Figure("  memray not installed (make bench installs the bench extra): its rows skipped", 0.0, ""))
    end_ms, blocks = window_end_ms()
    figures.append(Figure(f"ending a window with {blocks:,} blocks live (snapshot, grouping, span)", end_ms, "ms", target="<= 2000 ms"))
    if importlib.util.find_spec("memray") is not None:  # last: memray leaves this process's line tables changed
        end_ms, blocks = native_window_end_ms()
        figures.append(Figure(f"ending a native=True (memray) window with {blocks:,} blocks live (file read back)", end_ms, "ms"))
    return figures


if __name__ == "__main__":
    for figure in run():
        print(figure.line())
