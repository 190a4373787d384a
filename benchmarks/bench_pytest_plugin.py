"""The pytest plugin's overhead on 200 small tests, each under limit_memory: vs no plugin, and vs pytest-memray.

One generated suite of 200 small tests (a few hundred microseconds of work each, every one marked
``limit_memory("512 MB")``), run in subprocesses three ways, interleaved, best of ROUNDS (12; 2 in the short mode):

* no plugin: the markers are inert (``-p no:memray``, this package's plugin not enabled);
* this plugin: ``-p reer_otel_memory`` (pytest-memray blocked);
* pytest-memray: its own plugin reads the same markers (installed by ``make bench`` from the
  ``bench`` extra); skipped with a note where it is not installed.

Two figures per run: the wall time of the whole ``pytest`` process, and the time of the test
loop alone (``pytest_runtestloop``, measured by the suite's conftest), which leaves out the
interpreter start and plugin imports every run pays alike.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._report import Figure, scaled

TESTS = 200
FILES = 4
ROUNDS = scaled(12, 2)

CONFTEST = '''
import json, os, time, pytest

def pytest_configure(config):
    # Known to every mode: without a plugin an unknown marker would cost a warning per test.
    config.addinivalue_line("markers", "limit_memory(size): a memory budget")

@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session):
    started = time.perf_counter()
    try:
        return (yield)
    finally:
        with open(os.environ["LOOP_TIMES"], "a") as out:
            out.write(json.dumps(time.perf_counter() - started) + "\\n")
'''

TEST_FILE = '''
import json
import pytest

pytestmark = pytest.mark.limit_memory("512 MB")

def work(seed):
    rows = [{"id": i, "name": f"row-{i}", "value": i * seed} for i in range(300)]
    return len(json.dumps(rows))

@pytest.mark.parametrize("seed", range({count}))
def test_small(seed):
    assert work(seed) > 0
'''

#: Plugins no configuration needs; hypothesis's alone costs about a second per run.
COMMON = ("-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:xdist", "-p", "no:timeout")
MODES = {
    "no plugin": ("-p", "no:memray"),
    "reer_otel_memory": ("-p", "no:memray", "-p", "reer_otel_memory"),
    "pytest-memray": ("-p", "no:reer_otel_memory"),
}


def _write_suite(directory: Path) -> None:
    (directory / "conftest.py").write_text(CONFTEST)
    for index in range(FILES):
        (directory / f"test_suite_{index}.py").write_text(TEST_FILE.replace("{count}", str(TESTS // FILES)))


def _run(directory: Path, arguments: tuple[str, ...], loop_times: Path) -> float:
    env = dict(os.environ, LOOP_TIMES=str(loop_times))
    env.pop("PYTEST_ADDOPTS", None)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *COMMON, *arguments, str(directory)],
        cwd=directory, env=env, capture_output=True, text=True, check=False,
    )
    wall_s = time.perf_counter() - started
    if done.returncode != 0 or f"{TESTS} passed" not in done.stdout:
        raise RuntimeError(f"benchmark suite failed under {arguments}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return wall_s


def run() -> list[Figure]:
    modes = dict(MODES)
    if importlib.util.find_spec("pytest_memray") is None:
        print("  (pytest-memray is not installed: `make bench` installs it from the bench extra; measuring without it)")
        del modes["pytest-memray"]
    wall: dict[str, list[float]] = {name: [] for name in modes}
    loop: dict[str, list[float]] = {name: [] for name in modes}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        _write_suite(directory)
        for arguments in modes.values():  # warm the file cache and the bytecode
            _run(directory, arguments, directory / "warmup.jsonl")
        for _ in range(ROUNDS):
            for name, arguments in modes.items():
                times = directory / f"{name}.jsonl"
                wall[name].append(_run(directory, arguments, times))
            for name in modes:
                loop[name] = [json.loads(line) for line in (directory / f"{name}.jsonl").read_text().splitlines()]
    best_wall = {name: min(values) for name, values in wall.items()}
    best_loop = {name: min(values) for name, values in loop.items()}
    figures = [
        Figure(f"{TESTS} tests, whole pytest run, reer_otel_memory", best_wall["reer_otel_memory"], "s",
               "no plugin", best_wall["no plugin"], "<= 1.05x"),
        Figure(f"{TESTS} tests, test loop only, reer_otel_memory", best_loop["reer_otel_memory"] * 1e3, "ms",
               "no plugin", best_loop["no plugin"] * 1e3, "<= 1.05x"),
        Figure("per test, reer_otel_memory minus no plugin", (best_loop["reer_otel_memory"] - best_loop["no plugin"]) / TESTS * 1e6, "us"),
    ]
    if "pytest-memray" in modes:
        figures += [
            Figure(f"{TESTS} tests, whole pytest run, pytest-memray", best_wall["pytest-memray"], "s",
                   "no plugin", best_wall["no plugin"]),
            Figure(f"{TESTS} tests, test loop only, pytest-memray", best_loop["pytest-memray"] * 1e3, "ms",
                   "no plugin", best_loop["no plugin"] * 1e3),
            Figure(f"{TESTS} tests, test loop only, reer_otel_memory", best_loop["reer_otel_memory"] * 1e3, "ms",
                   "pytest-memray", best_loop["pytest-memray"] * 1e3, "below pytest-memray (ratio < 1)"),
        ]
    return figures
