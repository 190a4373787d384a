"""A file of realistic reasoning traces (nested steps with tool calls, long text, some non-ASCII),
written once per benchmark run into a temporary directory and shared by the benchmarks that read it.

1 GiB in the full run, 32 MiB in the short mode (``REER_BENCH_QUICK=1``); about 1.6 KB a trace.
:func:`best_of_interleaved` times the passes over it that a benchmark compares.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable

from benchmarks._report import scaled

TARGET_BYTES = scaled(1 << 30, 32 << 20)
_WORDS = [
    "the", "model", "considers", "whether", "the", "answer", "follows", "from", "the", "premises", "and",
    "checks", "each", "value", "against", "the", "constraint", "before", "the", "next", "si", "la", "réponse",
]
_made: dict[str, tuple[str, int]] = {}


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(_WORDS, k=words))


def trace(i: int, rng: random.Random) -> dict:
    steps = [
        {
            "index": s,
            "thought": _text(rng, rng.randint(15, 40)),
            "ppl": round(rng.uniform(1, 30), 4),
            "tool": {"name": f"tool_{s % 3}", "args": {"k": s, "q": _text(rng, 4)}, "ok": s % 4 != 0},
            "tokens": [rng.randint(0, 50_000) for _ in range(4)],
        }
        for s in range(rng.randint(2, 5))
    ]
    return {
        "trace_id": f"{i:032x}",
        "score": round(rng.random(), 6),
        "query": _text(rng, rng.randint(10, 30)),
        "candidates": [_text(rng, 6) for _ in range(3)],
        "steps": steps,
        "metadata": {"model": f"m-{i % 5}", "iteration": i % 7, "temperature": 0.7, "tags": ["a", "b"]},
    }


def realistic_traces_file() -> tuple[str, int]:
    """(path, traces) of the run's file of realistic traces; written on the first call."""
    if "file" not in _made:
        directory = tempfile.mkdtemp(prefix="reer-bench-")
        atexit.register(shutil.rmtree, directory, True)
        path = os.path.join(directory, "realistic.jsonl")
        rng = random.Random(20)
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        written = count = 0
        with open(path, "w", encoding="utf-8") as f:
            while written < TARGET_BYTES:
                batch = "".join(dumps(trace(count + i, rng)) + "\n" for i in range(2_000))
                f.write(batch)
                written += len(batch.encode())
                count += 2_000
        _made["file"] = (path, count)
    return _made["file"]


def best_of_interleaved(contenders: dict[str, Callable[[], object]], rounds: int) -> dict[str, tuple[float, object]]:
    """Each contender's best time in seconds over ``rounds`` (and what it returned), the
    contenders taking turns within each round: on a shared machine a slow minute then slows
    every contender of a ratio alike instead of one of them."""
    best: dict[str, tuple[float, object]] = {name: (float("inf"), None) for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            started = time.perf_counter()
            result = fn()
            elapsed = time.perf_counter() - started
            if elapsed < best[name][0]:
                best[name] = (elapsed, result)
    return best
