"""The pytest plugin, run on real test files with pytester: budgets, leaks, the baseline, xdist, async.

Inner runs are in-process (fast) except where the outer process's state would change the result
(a global OpenTelemetry SDK set by an earlier test, the largest child ever waited for) or its
size would slow it down (limit_leaks collects garbage around every call), and the xdist one,
whose workers are processes anyway.
``-p no:memray``: pytest-memray, where installed (``make bench`` installs it), reads the same
marker names on its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from reer_otel_memory.errors import ConfigurationError
from reer_otel_memory.pytest_plugin import format_size, parse_size

pytest_plugins = ["pytester"]

# Plugins the inner runs do not need (hypothesis's costs a second per run).
BARE = ("-p", "no:memray", "-p", "no:cacheprovider", "-p", "no:hypothesispytest")
ON = (*BARE, "-p", "reer_otel_memory")

HELPERS = '''
import gc, mmap, psutil, pytest

PAGE = 4096
KEEP = []

@pytest.fixture(autouse=True)
def no_free_memory_to_reuse():
    # Free memory still resident from earlier tests in this process would be reused, growing
    # nothing: hand it back before the measured call.
    gc.collect()
    psutil.heap_trim()

def touched(n_bytes):
    # Fresh anonymous pages, every one written: they add exactly n_bytes to RSS whatever the
    # allocator still holds free (a bytearray could land partly on resident free memory).
    buffer = mmap.mmap(-1, n_bytes)
    for offset in range(0, n_bytes, PAGE):
        buffer[offset] = 1
    return buffer
'''


def write_tests(pytester: pytest.Pytester, body: str, name: str = "test_budgets") -> None:
    pytester.makepyfile(**{name: HELPERS + textwrap.dedent(body)})


def test_sizes_take_decimal_and_binary_units() -> None:
    assert parse_size("24 MB") == 24_000_000
    assert parse_size("24MiB") == 24 * 2**20
    assert parse_size("1.5 gib") == 3 * 2**29
    assert parse_size("512 KB") == 512_000
    assert parse_size("512 KiB") == 512 * 1024
    assert parse_size("100 B") == parse_size("100") == parse_size(100) == 100
    for bad in ("lots", "12 MBs", "-1 MB", -5, True, 1.5, ""):
        with pytest.raises(ConfigurationError, match="size"):
            parse_size(bad)
    assert format_size(100 * 2**20) == "100.0 MiB"
    assert format_size(-2048) == "-2.0 KiB"


def test_a_peak_budget_catches_memory_freed_before_the_end_and_a_retained_one_does_not(pytester: pytest.Pytester) -> None:
    write_tests(pytester, '''
        @pytest.mark.limit_memory("50 MB")
        def test_peak():
            buffer = touched(100 * 2**20)
            del buffer

        @pytest.mark.limit_memory("50 MB", measure="retained")
        def test_retained():
            buffer = touched(100 * 2**20)
            del buffer
    ''')
    result = pytester.runpytest(*ON)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines([
        "*test_peak*",
        "memory limit exceeded: *.? MiB > 50 MB (limit_memory marker): peak RSS growth during the test",
        "measured: peak growth *.? MiB, retained *",
    ])
    assert "test_retained" not in result.stdout.str().split("short test summary")[1]


def test_without_being_enabled_the_plugin_measures_nothing(pytester: pytest.Pytester) -> None:
    write_tests(pytester, '''
        @pytest.mark.limit_memory("1 MB")
        def test_over_budget():
            buffer = touched(20 * 2**20)
            del buffer
    ''')
    result = pytester.runpytest(*BARE, "-W", "ignore::pytest.PytestUnknownMarkWarning")
    result.assert_outcomes(passed=1)
    markers = pytester.runpytest(*BARE, "--markers").stdout.str()
    assert "reer_otel_memory" not in markers


def test_the_entry_point_pytest_loads_everywhere_imports_neither_the_package_nor_opentelemetry() -> None:
    code = (
        "import sys, _reer_otel_memory_pytestplugin; "
        "print(sorted(m for m in sys.modules if m.startswith(('reer_otel_memory', 'opentelemetry', 'psutil'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "[]"


def test_a_conftest_loading_the_module_enables_it(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["reer_otel_memory.pytest_plugin"]')
    write_tests(pytester, '''
        @pytest.mark.limit_memory("5 MiB")
        def test_over_budget():
            buffer = touched(20 * 2**20)
            del buffer
    ''')
    result = pytester.runpytest(*BARE)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["memory limit exceeded: * > 5 MiB (limit_memory marker)*"])


def test_the_ini_option_enables_it_and_a_default_limit_applies_to_unmarked_tests(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmemory_budgets = true\nmemory_limit = 5 MiB\n")
    write_tests(pytester, '''
        def test_unmarked_over_the_default():
            buffer = touched(20 * 2**20)
            del buffer

        @pytest.mark.limit_memory("40 MiB")
        def test_its_own_marker_wins():
            buffer = touched(20 * 2**20)
            del buffer
    ''')
    result = pytester.runpytest(*BARE)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*> 5 MiB (--memory-limit / memory_limit)*"])


def test_a_bad_size_or_marker_argument_is_a_collection_error_naming_test_and_value(pytester: pytest.Pytester) -> None:
    write_tests(pytester, '''
        @pytest.mark.limit_memory("lots")
        def test_bad_size():
            pass

        @pytest.mark.limit_memory("1 MB", measure="average")
        def test_bad_measure():
            pass

        @pytest.mark.limit_leaks("1 MB", calls=1)
        def test_bad_calls():
            pass
    ''')
    result = pytester.runpytest(*ON)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([
        "*ERROR collecting test_budgets.py*",
        "test_budgets.py::test_bad_size: limit_memory('lots'): size 'lots': expected *",
        "test_budgets.py::test_bad_measure: limit_memory(measure='average'): expected 'peak' or 'retained'",
        "test_budgets.py::test_bad_calls: limit_leaks(calls=1): expected a whole number of calls >= 2",
    ])
    bad_option = pytester.runpytest(*ON, "--memory-limit=huge")
    assert bad_option.ret == pytest.ExitCode.USAGE_ERROR
    bad_option.stderr.fnmatch_lines(["*--memory-limit / memory_limit: size 'huge': expected*"])


def test_limit_leaks_fails_a_leaking_test_and_passes_a_steady_one(pytester: pytest.Pytester) -> None:
    write_tests(pytester, '''
        CALLS = []

        import mmap

        @pytest.mark.limit_leaks("1 MB", calls=10)
        def test_leaking():
            # A mapping of its own each call: resident growth whatever the allocator kept free
            # from earlier tests in this process.
            block = mmap.mmap(-1, 512 * 1024)
            block.write(b"x" * (512 * 1024))
            KEEP.append(block)

        @pytest.mark.limit_leaks("1 MB", calls=10)
        def test_steady():
            buffer = touched(2 * 2**20)
            del buffer

        @pytest.mark.limit_leaks("1 MB", calls=6)
        def test_runs_the_body_calls_times():
            CALLS.append(1)

        def test_counted():
            assert len(CALLS) == 6
    ''')
    # In a process of its own: each of the 26 calls collects garbage and reads the heap, which
    # costs seconds in the outer process, its heap grown by every test before this one.
    result = pytester.runpytest_subprocess(*ON)
    result.assert_outcomes(failed=1, passed=3)
    result.stdout.fnmatch_lines(["*test_leaking*", "memory leak: about 512.0 KiB retained per call over 8 calls*"])


def test_the_failure_names_the_top_profiled_operations_and_the_spans(pytester: pytest.Pytester) -> None:
    write_tests(pytester, '''
        from reer_otel_memory import memory_profile

        @memory_profile(operation_name="load_weights")
        def load_weights():
            return touched(30 * 2**20)

        @memory_profile(operation_name="tokenize")
        def tokenize():
            return touched(2 * 2**20)

        @pytest.mark.limit_memory("10 MiB")
        def test_model():
            tokenize()
            load_weights()

        @pytest.mark.limit_memory("10 MiB")
        def test_with_the_fixture(memory_telemetry):
            load_weights()
            assert [span.name for span in memory_telemetry.spans()] == ["load_weights"]

        @pytest.fixture
        def own_capture():
            from reer_otel_memory.testing import capture_telemetry
            with capture_telemetry() as capture:
                yield capture

        @pytest.mark.limit_memory("100 MiB")
        def test_a_capture_of_its_own_keeps_its_spans(own_capture):
            load_weights()
            assert [span.name for span in own_capture.spans()] == ["load_weights"]

        def test_a_test_without_a_limit_runs_with_what_was_in_force():
            from reer_otel_memory import _telemetry
            assert _telemetry.current().tracer_provider is None
    ''')
    # In a fresh process: where an earlier test set a global OpenTelemetry SDK the spans go there.
    result = pytester.runpytest_subprocess(*ON)
    result.assert_outcomes(failed=2, passed=2)
    result.stdout.fnmatch_lines([
        "*test_model*",
        "top operations by peak growth: load_weights ??.? MiB, tokenize *",
        "spans: tokenize, load_weights",
        "*test_with_the_fixture*",
        "top operations by peak growth: load_weights ??.? MiB",
        "spans: load_weights",
    ])


def test_baseline_round_trip_and_fail_on_increase(pytester: pytest.Pytester) -> None:
    baseline = pytester.path / "memory.json"
    write_tests(pytester, '''
        import os
        SIZE = int(os.environ.get("GROW_MIB", "4")) * 2**20

        def test_grows():
            buffer = touched(SIZE)
            del buffer

        def test_small():
            pass
    ''')
    written = pytester.runpytest(*ON, f"--memory-baseline={baseline}")
    written.assert_outcomes(passed=2)
    figures = json.loads(baseline.read_text())["tests"]
    # 4 MiB written; the rest of the process may give back a few pages meanwhile.
    assert figures["test_budgets.py::test_grows"]["peak_growth_bytes"] >= 3.5 * 2**20
    assert set(figures) == {"test_budgets.py::test_grows", "test_budgets.py::test_small"}

    same = pytester.runpytest(*ON, f"--memory-baseline={baseline}", "--memory-fail-on-increase=50")
    same.assert_outcomes(passed=2)

    pytester._monkeypatch.setenv("GROW_MIB", "12")
    grown = pytester.runpytest(*ON, f"--memory-baseline={baseline}", "--memory-fail-on-increase=50")
    grown.assert_outcomes(failed=1, passed=1)
    # The baseline's own figure, as the plugin prints it: about 4 MiB, give or take what else moved.
    was = format_size(figures["test_budgets.py::test_grows"]["peak_growth_bytes"])
    grown.stdout.fnmatch_lines([f"memory grew over the baseline: peak 1?.? MiB, was {was} (+*; --memory-fail-on-increase=50%)"])
    assert json.loads(baseline.read_text())["tests"] == figures, "a comparing run must not rewrite the baseline"


def test_the_report_lists_tests_by_peak(pytester: pytest.Pytester) -> None:
    write_tests(pytester, '''
        def test_small():
            buffer = touched(4 * 2**20)

        def test_big():
            buffer = touched(16 * 2**20)
    ''')
    result = pytester.runpytest(*ON, "--memory-report")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "*memory report (reer_otel_memory)*",
        "test * peak growth * retained * heap delta * device peak * duration",
        "test_budgets.py::test_big * 1?.? MiB *",
        "test_budgets.py::test_small * ?.? MiB *",  # a page already resident can take a few KiB off
    ])


def test_async_tests_are_measured(pytester: pytest.Pytester) -> None:
    # The way async plugins run a coroutine test: their own pytest_pyfunc_call.
    pytester.makeconftest('''
        import asyncio, inspect, pytest

        @pytest.hookimpl(tryfirst=True)
        def pytest_pyfunc_call(pyfuncitem):
            if inspect.iscoroutinefunction(pyfuncitem.obj):
                arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
                asyncio.run(pyfuncitem.obj(**arguments))
                return True
    ''')
    write_tests(pytester, '''
        import asyncio

        @pytest.mark.limit_memory("10 MiB")
        async def test_over():
            buffer = touched(40 * 2**20)
            await asyncio.sleep(0)
            del buffer

        @pytest.mark.limit_memory("10 MiB")
        async def test_under():
            await asyncio.sleep(0)
    ''')
    result = pytester.runpytest(*ON)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["memory limit exceeded: *MiB > 10 MiB*"])


@pytest.mark.slow
def test_xdist_workers_measure_their_own_tests_and_the_controller_reports(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    baseline = pytester.path / "memory.json"
    write_tests(pytester, '''
        import pytest

        @pytest.mark.parametrize("mib", [1, 2, 3, 24])
        def test_alloc(mib):
            buffer = touched(mib * 2**20)
            del buffer

        @pytest.mark.limit_memory("8 MiB")
        def test_over():
            buffer = touched(32 * 2**20)
            del buffer
    ''')
    result = pytester.runpytest_subprocess(*ON, "-n", "2", "--memory-report", f"--memory-baseline={baseline}")
    result.assert_outcomes(failed=1, passed=4)
    result.stdout.fnmatch_lines(["*memory limit exceeded: 3?.? MiB > 8 MiB*", "*memory report*", "test_budgets.py::test_over *"])
    figures = json.loads(baseline.read_text())["tests"]
    assert len(figures) == 5
    assert figures["test_budgets.py::test_alloc[24]"]["peak_growth_bytes"] >= 20 * 2**20


def test_include_children_adds_a_child_processes_peak(pytester: pytest.Pytester) -> None:
    write_tests(pytester, '''
        import subprocess, sys

        CHILD = "b = bytearray(60 * 2**20); b[::4096] = b'x' * len(range(0, len(b), 4096))"

        @pytest.mark.limit_memory("30 MiB", include_children=True)
        def test_child_counts():
            subprocess.run([sys.executable, "-c", CHILD], check=True)

        @pytest.mark.limit_memory("30 MiB")
        def test_child_ignored():
            subprocess.run([sys.executable, "-c", CHILD], check=True)
    ''')
    # In a fresh process: RUSAGE_CHILDREN keeps the largest child ever waited for.
    result = pytester.runpytest_subprocess(*ON)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*test_child_counts*", "*plus its child processes'*", "*children's peak *MiB*"])


def test_a_device_budget_catches_accelerator_memory_and_says_what_it_measured(pytester: pytest.Pytester) -> None:
    pytest.importorskip("mlx.core")  # MLX's CPU build reports real device memory on Linux
    write_tests(pytester, '''
        import mlx.core as mx

        @pytest.mark.limit_device_memory("32 MiB")
        def test_device_peak():
            arrays = mx.ones((64, 2**18))  # 64 MiB of float32
            mx.eval(arrays)
            del arrays

        @pytest.mark.limit_device_memory("32 MiB", measure="retained")
        def test_device_retained():
            arrays = mx.ones((64, 2**18))
            mx.eval(arrays)
            del arrays

        @pytest.mark.limit_device_memory("32 MiB")
        def test_device_small():
            small = mx.ones((1024,))
            mx.eval(small)
    ''')
    result = pytester.runpytest(*ON)
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines([
        "*test_device_peak*",
        "device memory limit exceeded: 64.? MiB > 32 MiB (limit_device_memory marker): peak device memory growth during the test, summed over mlx",
    ])


def test_a_device_budget_without_a_framework_warns_that_nothing_was_checked(pytester: pytest.Pytester) -> None:
    write_tests(pytester, '''
        @pytest.mark.limit_device_memory("1 MiB")
        def test_no_framework():
            pass
    ''')
    # In a fresh process: this one may have imported MLX for other tests.
    result = pytester.runpytest_subprocess(*ON)
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*limit_device_memory('1 MiB'): no accelerator framework reported device memory*"])


def test_a_bad_device_budget_is_a_collection_error_naming_test_and_value(pytester: pytest.Pytester) -> None:
    write_tests(pytester, '''
        @pytest.mark.limit_device_memory("lots")
        def test_bad_size():
            pass
    ''')
    result = pytester.runpytest(*ON)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*test_bad_size: limit_device_memory('lots'): size 'lots': expected*"])
