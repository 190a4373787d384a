"""Explanations: real tracemalloc windows over real threads name the leaking line and operation."""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest
from _forks import in_forked_child
from conftest import wait_for

from reer_otel_memory import (
    AllocationSite,
    ConfigurationError,
    ExplainUnavailableError,
    MemoryExplanation,
    explain_memory,
    memory_context,
    memory_profile,
)
from reer_otel_memory import _names as names
from reer_otel_memory._runtime import RUNTIME
from reer_otel_memory.profiling import explain

EXPLAIN_LOGGER = "reer_otel_memory.profiling.explain"
THIS_FILE = str(Path(__file__).resolve())
BUFFER = 64 * 1024
BUFFERS = 64


def marker_line(marker: str) -> int:
    """The line of this file carrying the comment ``# marker``."""
    lines = Path(__file__).read_text().splitlines()
    found = [number for number, text in enumerate(lines, 1) if text.rstrip().endswith(f"# {marker}")]
    assert len(found) == 1, f"marker {marker!r} found {len(found)} times"
    return found[0]


def leak_buffers(into: list, count: int = BUFFERS, size: int = BUFFER) -> None:
    for _ in range(count):
        into.append(bytearray(size))  # leak-buffers


def buffers_bytes(count: int = BUFFERS, size: int = BUFFER) -> int:
    return count * sys.getsizeof(bytearray(size))


def churn(stop: threading.Event) -> int:
    """Allocate and drop small lists until told to stop; nothing stays live."""
    calls = 0
    while not stop.is_set():
        calls += len([str(i) for i in range(200)])
    return calls


class Background:
    """A window run on another thread while the test thread does the allocating (tracemalloc's,
    unless ``native``: the tests of sites and attribution hold for either backend)."""

    def __init__(self, seconds: float = 0.5, top: int = 10, native: bool | None = False) -> None:
        self.native = native
        self.stop = threading.Event()
        self.result: MemoryExplanation | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(seconds, top), daemon=True)
        self.thread.start()
        wait_for(explain.window_open, timeout_s=10, message="the explanation window to start tracing")

    def _run(self, seconds: float, top: int) -> None:
        try:
            self.result = explain._explain(seconds, top, self.stop, native=self.native)
        except BaseException as exc:
            self.error = exc

    def explanation(self, *, stop: bool = False) -> MemoryExplanation:
        """The window's explanation; ``stop``: end the window now (the test's work is done) rather
        than at its length, so a slow run cannot end it before the work."""
        if stop:
            self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the window did not end"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def in_thread(target, *args) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


@pytest.fixture(autouse=True)
def no_window_running():
    """Each test starts with no window in the process and leaves none, nor any tracing, behind."""

    def settle() -> None:
        explainer = RUNTIME.auto_explainer
        if explainer is not None:
            explainer.stop()
            assert explainer.wait_idle(30)

    settle()
    assert not tracemalloc.is_tracing()
    yield
    settle()
    assert not tracemalloc.is_tracing(), "a test left tracemalloc tracing"


@pytest.fixture
def kept_ranges():
    """The process's registered code ranges, put back as they were after the test."""
    saved = dict(explain._ranges), dict(explain._blocks_seen)
    yield
    with RUNTIME.lock(explain._RANGES_LOCK):
        for registry, kept in zip((explain._ranges, explain._blocks_seen), saved):
            registry.clear()
            registry.update(kept)


# --- sites ------------------------------------------------------------------------------------


def test_a_leak_in_the_main_thread_is_its_own_line():
    leaked: list[bytearray] = []
    window = Background(0.5)
    leak_buffers(leaked)
    explanation = window.explanation()

    top = explanation.sites[0]
    assert (top.filename, top.lineno, top.function) == (THIS_FILE, marker_line("leak-buffers"), "leak_buffers")
    assert top.size_bytes == pytest.approx(buffers_bytes(), rel=0.10)
    assert top.count >= BUFFERS
    assert top.traceback[0] == f"{THIS_FILE}:{top.lineno} leak_buffers"
    assert top.traceback[1].startswith(f"{THIS_FILE}:") and top.traceback[1].endswith(" test_a_leak_in_the_main_thread_is_its_own_line")
    assert explanation.backend == "tracemalloc"
    assert 0.5 <= explanation.seconds < 5
    assert explanation.total_bytes >= top.size_bytes
    assert not tracemalloc.is_tracing()


def test_sites_come_largest_first_and_are_cut_at_top():
    leaked: list[object] = []
    window = Background(0.5, top=2)
    leak_buffers(leaked, count=8, size=BUFFER)
    leaked.extend(bytes(4 * BUFFER) for _ in range(8))  # four times the bytes
    explanation = window.explanation()
    assert len(explanation.sites) == 2
    assert explanation.sites[0].size_bytes >= explanation.sites[1].size_bytes
    assert explanation.sites[0].function == "test_sites_come_largest_first_and_are_cut_at_top"
    assert explanation.sites[1].lineno == marker_line("leak-buffers")
    assert explanation.sites_total >= 2


def test_freed_allocations_are_not_reported():
    window = Background(0.3)
    for _ in range(BUFFERS):
        transient = bytearray(BUFFER)  # transient-buffer
        del transient
    explanation = window.explanation()
    assert all(site.lineno != marker_line("transient-buffer") for site in explanation.sites)
    assert explanation.total_bytes < BUFFER


def test_the_raw_traces_and_the_public_snapshot_give_the_same_answer(monkeypatch):
    monkeypatch.setattr(explain, "_get_traces", None)
    leaked: list[bytearray] = []
    window = Background(0.3)
    leak_buffers(leaked)
    top = window.explanation().sites[0]
    assert (top.lineno, top.function) == (marker_line("leak-buffers"), "leak_buffers")
    assert top.size_bytes == pytest.approx(buffers_bytes(), rel=0.10)


def test_numpy_buffers_are_seen_at_the_line_that_made_them():
    np = pytest.importorskip("numpy")
    arrays: list[object] = []
    window = Background(0.3)
    for _ in range(16):
        arrays.append(np.ones(100_000))  # numpy-leak
    top = window.explanation().sites[0]
    # np.ones allocates inside numpy's own Python code; the site is the line here that called it.
    assert (top.filename, top.lineno) == (THIS_FILE, marker_line("numpy-leak"))
    assert top.size_bytes == pytest.approx(16 * 100_000 * 8, rel=0.10)


def test_a_leak_through_the_standard_library_is_the_callers_line():
    import json

    payload = json.dumps({"values": list(range(1000))})
    kept: list[object] = []
    window = Background(0.3)
    for _ in range(32):
        kept.append(json.loads(payload))  # json-leak
    explanation = window.explanation()
    top = explanation.sites[0]
    assert (top.filename, top.lineno) == (THIS_FILE, marker_line("json-leak"))
    assert explanation.sites_total < 10, explanation.format()  # not one site per line of json's decoder


def test_function_names_come_from_the_source():
    class Holder:
        def method(self) -> int:
            return 1  # in-method

    assert explain.function_at(THIS_FILE, marker_line("in-method")) == "test_function_names_come_from_the_source.Holder.method"
    assert explain.function_at(THIS_FILE, marker_line("leak-buffers")) == "leak_buffers"
    assert explain.function_at(THIS_FILE, marker_line("module-level")) == "<module>"
    assert explain.function_at("<string>", 1) == "?"
    assert explain.function_at(str(Path(__file__).with_name("no_such_file.py")), 3) == "?"


MODULE_LEVEL = 1  # module-level


def test_format_and_as_dict_carry_the_same_figures():
    leaked: list[bytearray] = []
    window = Background(0.3)
    leak_buffers(leaked, count=4)
    explanation = window.explanation()
    text = explanation.format()
    top = explanation.sites[0]
    assert f"{top.size_bytes:,}" in text and f"{THIS_FILE}:{top.lineno} leak_buffers" in text
    assert "(unattributed)" in text
    data = explanation.as_dict()
    import json

    again = MemoryExplanation.from_dict(json.loads(json.dumps(data)))
    assert again == explanation
    assert isinstance(again.sites[0], AllocationSite)


# --- operations -------------------------------------------------------------------------------


def test_a_leaking_operation_is_told_from_an_innocent_one_in_other_threads(kept_ranges):
    leaked: list[bytearray] = []
    traced: list[int] = []  # the buffers allocated while the window traced: on a loaded machine
    # the window may end before the leaking thread has made all of them

    def leaker_body() -> None:
        leaked.append(bytearray(BUFFER))
        if tracemalloc.is_tracing():
            traced.append(1)

    def innocent_body() -> int:
        return len([str(i) for i in range(200)])

    leaker = memory_profile(operation_name="explain_leaker")(leaker_body)
    innocent = memory_profile(operation_name="explain_innocent")(innocent_body)
    explain.note_function("explain_leaker", leaker_body)
    explain.note_function("explain_innocent", innocent_body)
    stop = threading.Event()

    def leaking_thread() -> None:
        for _ in range(BUFFERS):
            leaker()

    def innocent_thread() -> None:
        while not stop.is_set():
            innocent()

    window = Background(0.5)
    threads = [in_thread(leaking_thread), in_thread(innocent_thread)]
    threads[0].join(10)
    explanation = window.explanation()
    stop.set()
    threads[1].join(10)

    operations = explanation.operations
    assert operations["explain_leaker"] >= 0.9 * explanation.total_bytes, explanation.format()
    assert len(traced) >= 8, f"only {len(traced)} buffers were allocated in the window"
    # a call may allocate after the capture, before tracing stops: at most one buffer per thread
    assert buffers_bytes(len(traced) - 1) * 0.95 <= operations["explain_leaker"] <= buffers_bytes(len(traced)) * 1.05
    assert operations.get("explain_innocent", 0) <= 0.01 * operations["explain_leaker"], explanation.format()
    assert explanation.sites[0].function.endswith("leaker_body")


def test_an_unprofiled_leaker_leaves_its_bytes_unattributed(kept_ranges):
    def innocent_body() -> int:
        return len([str(i) for i in range(200)])

    explain.note_function("explain_innocent_only", innocent_body)
    leaked: list[bytearray] = []
    window = Background(0.3)
    in_thread(leak_buffers, leaked).join(10)
    explanation = window.explanation()
    assert explanation.unattributed_bytes >= 0.9 * explanation.total_bytes
    assert explanation.unattributed_bytes >= buffers_bytes() * 0.9
    assert "explain_innocent_only" not in explanation.operations


def leak_in_block(into: list) -> None:
    with memory_context("explain_block"):  # block-first
        for _ in range(BUFFERS):
            into.append(bytearray(BUFFER))
    # block-last


def test_a_profiled_block_owns_what_its_lines_allocate(kept_ranges):
    explain.note_block("explain_block", THIS_FILE, marker_line("block-first"), marker_line("block-last"))
    leaked: list[bytearray] = []
    window = Background(0.3)
    leak_in_block(leaked)
    explanation = window.explanation()
    assert explanation.operations["explain_block"] >= 0.9 * explanation.total_bytes, explanation.format()
    assert explanation.operations["explain_block"] == pytest.approx(buffers_bytes(), rel=0.10)


def leak_in_profiled_block(into: list, count: int) -> None:
    with memory_context(
        "explain_wired_block"
    ):  # wired-block-first
        for _ in range(count):
            into.append(bytearray(BUFFER))


def test_profiled_functions_and_blocks_register_their_code_themselves(kept_ranges):
    leaked: list[bytearray] = []

    @memory_profile(operation_name="explain_wired_function")
    def wired_function() -> None:
        leaked.append(bytearray(BUFFER))

    leak_in_profiled_block(leaked, 0)  # a block is registered when it is first left
    window = Background(30)
    for _ in range(BUFFERS):
        wired_function()
    leak_in_profiled_block(leaked, BUFFERS)
    operations = window.explanation(stop=True).operations
    assert operations["explain_wired_function"] == pytest.approx(buffers_bytes(), rel=0.10)
    assert operations["explain_wired_block"] == pytest.approx(buffers_bytes(), rel=0.10)


def test_a_block_reported_on_its_with_line_covers_the_whole_statement(kept_ranges):
    first = marker_line("wired-block-first") - 2
    explain.note_block("explain_with_line", THIS_FILE, first, first)  # where Python reports the exit
    explain.note_block("explain_with_line", THIS_FILE, first, first)
    ranges = [site for site, operation in explain._ranges.items() if operation == "explain_with_line"]
    assert ranges == [(THIS_FILE, first, marker_line("wired-block-first") + 2)]


def inner_operation(into: list) -> None:
    into.append(bytes(4 * BUFFER))  # inner-operation


def outer_operation(into: list) -> None:
    into.append(bytes(BUFFER))  # outer-own
    inner_operation(into)
    if into:  # nested-first
        into.append(bytes(2 * BUFFER))
    # nested-last


def test_the_innermost_frame_and_then_the_narrowest_range_win(kept_ranges):
    explain.note_function("explain_outer", outer_operation)
    explain.note_function("explain_inner", inner_operation)
    explain.note_block("explain_nested_block", THIS_FILE, marker_line("nested-first"), marker_line("nested-last"))
    kept: list[bytes] = []
    window = Background(0.3)
    for _ in range(8):
        outer_operation(kept)
    operations = window.explanation().operations
    overhead = 1.1  # object headers and the list's growth
    assert 8 * BUFFER <= operations["explain_outer"] <= 8 * BUFFER * overhead
    assert 8 * 4 * BUFFER <= operations["explain_inner"] <= 8 * 4 * BUFFER * overhead
    assert 8 * 2 * BUFFER <= operations["explain_nested_block"] <= 8 * 2 * BUFFER * overhead


def test_note_block_is_idempotent_and_the_registry_is_bounded(kept_ranges, monkeypatch):
    explain._ranges.clear()  # kept_ranges puts the process's own back
    explain._blocks_seen.clear()
    monkeypatch.setattr(explain, "MAX_RANGES", 3)
    explain.note_block("explain_bounded", "bounded.py", 1, 2)
    explain.note_block("explain_bounded", "bounded.py", 1, 2)
    assert [(site, op) for site, op in explain._ranges.items() if site[0] == "bounded.py"] == [(("bounded.py", 1, 2), "explain_bounded")]
    for line in range(10, 15):
        explain.note_block("explain_bounded", "bounded.py", line, line)
    kept = [site for site in explain._ranges if site[0] == "bounded.py"]
    assert kept == [("bounded.py", line, line) for line in (12, 13, 14)]


def test_one_site_naming_many_operations_keeps_one_range_the_latest_name(kept_ranges):
    for request in range(100):
        explain.note_block(f"request-{request}", "dynamic.py", 5, 9)
    assert [(site, op) for site, op in explain._ranges.items() if site[0] == "dynamic.py"] == [(("dynamic.py", 5, 9), "request-99")]


def test_note_function_reaches_through_a_wrapper_without_code(kept_ranges):
    class WrapperWithoutCode:
        __wrapped__ = staticmethod(inner_operation)

        def __call__(self) -> None:
            pass

    explain.note_function("explain_wrapped", WrapperWithoutCode())
    code = inner_operation.__code__
    ranges = [site for site, operation in explain._ranges.items() if operation == "explain_wrapped"]
    assert ranges == [(code.co_filename, code.co_firstlineno, marker_line("inner-operation"))]


# --- the window -------------------------------------------------------------------------------


def test_tracing_stops_when_the_window_is_interrupted():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    main = threading.main_thread().ident
    assert main is not None

    def interrupt() -> None:
        wait_for(explain.window_open, timeout_s=10)
        signal.pthread_kill(main, signal.SIGINT)

    thread = in_thread(interrupt)
    with pytest.raises(KeyboardInterrupt):
        explain_memory(30)
    thread.join(10)
    assert not tracemalloc.is_tracing()
    assert explain_memory(0.05).seconds >= 0.05  # and the next window may run


def test_a_window_ends_early_when_tracemalloc_outgrows_its_bound(monkeypatch):
    monkeypatch.setattr(explain, "MAX_TRACING_BYTES", 1)
    explanation = explain_memory(30)
    assert explanation.seconds < 10
    assert "tracemalloc's own memory passed 1 bytes" in explanation.ended_early
    assert "The window ended early" in explanation.format()
    assert not tracemalloc.is_tracing()


def test_the_users_own_tracing_is_refused_and_left_running():
    tracemalloc.start(3)
    try:
        kept = bytearray(BUFFER)
        with pytest.raises(ExplainUnavailableError, match="tracemalloc is already tracing"):
            explain_memory(0.05)
        assert tracemalloc.is_tracing()
        assert tracemalloc.get_traceback_limit() == 3
        assert tracemalloc.get_object_traceback(kept) is not None
    finally:
        tracemalloc.stop()


def test_memray_tracking_is_refused(tmp_path):
    memray = pytest.importorskip("memray")
    assert not explain.memray_tracking()
    with memray.Tracker(tmp_path / "capture.bin"):
        assert explain.memray_tracking()
        with pytest.raises(ExplainUnavailableError, match="memray"):
            explain_memory(0.05)
        assert not tracemalloc.is_tracing()
    assert not explain.memray_tracking()


def test_a_second_window_is_refused_while_one_runs():
    explainer = explain.AutoExplainer(enabled=True, seconds=30, native=False)
    assert explainer.request("test", [])
    wait_for(explain.window_open, timeout_s=10)
    with pytest.raises(ExplainUnavailableError, match="already running"):
        explain_memory(0.05)
    assert tracemalloc.is_tracing()  # the running window carries on
    explainer.stop()
    assert explainer.wait_idle(10)
    latest = explainer.latest()
    assert latest is not None and latest.ended_early == "stopped" and latest.seconds < 30


@pytest.mark.parametrize("seconds", [0, -1, math.nan, math.inf, 3601, "1", True, None])
def test_bad_seconds_are_refused(seconds):
    with pytest.raises(ConfigurationError, match=r"seconds=.*expected a number of seconds above 0 and at most 3600") as caught:
        explain_memory(seconds)
    assert repr(seconds) in str(caught.value)
    assert not tracemalloc.is_tracing()


@pytest.mark.parametrize("top", [0, -1, 1.5, True, "3"])
def test_bad_top_is_refused(top):
    with pytest.raises(ConfigurationError, match=r"top=.*expected an int of at least 1") as caught:
        explain_memory(1, top=top)
    assert repr(top) in str(caught.value)


def test_a_forked_child_does_not_inherit_the_windows_tracing():
    explainer = explain.AutoExplainer(enabled=True, seconds=30)
    assert explainer.request("test", [])
    wait_for(explain.window_open, timeout_s=10)
    try:
        in_child = in_forked_child(lambda: [tracemalloc.is_tracing(), explain.explain_memory(0.05).backend])
    finally:
        explainer.stop()
        assert explainer.wait_idle(10)
    assert in_child == [False, "tracemalloc"]


# --- memray (native=True) ---------------------------------------------------------------------


def test_a_native_window_names_the_leaking_line_and_operation(kept_ranges):
    pytest.importorskip("memray")
    np = pytest.importorskip("numpy")
    explain.note_function("explain_native_leaker", leak_buffers)
    leaked: list[object] = []
    result: list[MemoryExplanation] = []
    thread = in_thread(lambda: result.append(explain_memory(0.5, native=True)))
    wait_for(explain.memray_tracking, timeout_s=10, message="the memray window to start")
    leak_buffers(leaked)
    arrays = [np.ones(100_000) for _ in range(4)]  # native-numpy
    thread.join(30)
    (explanation,) = result
    assert explanation.backend == "memray"
    top = explanation.sites[0]
    assert (top.filename, top.lineno, top.function) == (THIS_FILE, marker_line("leak-buffers"), "leak_buffers")
    assert top.size_bytes == pytest.approx(buffers_bytes(), rel=0.10)
    assert explanation.operations["explain_native_leaker"] == pytest.approx(buffers_bytes(), rel=0.10)
    numpy_site = next(site for site in explanation.sites if site.lineno == marker_line("native-numpy"))
    assert numpy_site.size_bytes == pytest.approx(4 * 100_000 * 8, rel=0.10)
    assert not explain.memray_tracking() and not tracemalloc.is_tracing()
    del arrays


def test_native_without_memray_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "memray", None)  # as if it were not installed
    with pytest.raises(ExplainUnavailableError, match=r"native=True\) needs memray.*pip install memray"):
        explain_memory(0.05, native=True)
    assert explain_memory(0.05).backend == "tracemalloc"  # the lock was given back


def test_native_must_be_a_bool():
    with pytest.raises(ConfigurationError, match=r"native='yes'.*expected True, False or None"):
        explain_memory(1, native="yes")


# --- AutoExplainer ----------------------------------------------------------------------------


def test_an_explanation_is_a_span_linked_to_the_operation_a_log_line_and_a_listener_call(telemetry, caplog, kept_ranges):
    caplog.set_level(logging.WARNING, logger=EXPLAIN_LOGGER)
    explain.note_function("explain_auto_leaker", leak_buffers)
    with telemetry.tracer_provider.get_tracer("test").start_as_current_span("explain_auto_leaker") as suspect:
        suspected = suspect.get_span_context()
    heard: list[tuple] = []

    def broken_listener(*args: object) -> None:
        raise RuntimeError("listener failure")

    explainer = explain.AutoExplainer(enabled=True, seconds=0.3, native=False)
    explainer.add_listener(broken_listener)
    explainer.add_listener(lambda *args: heard.append(args))
    leaked: list[bytearray] = []
    assert explainer.request("leak suspected", ["explain_auto_leaker"], [suspected])
    assert not explainer.request("again", ["explain_auto_leaker"])  # busy: one window at a time
    wait_for(explain.window_open, timeout_s=10)
    leak_buffers(leaked)
    assert explainer.wait_idle(10)

    explanation = explainer.latest()
    assert explanation is not None
    assert heard == [(explanation, "leak suspected", ("explain_auto_leaker",))]
    span = telemetry.span(names.SPAN_EXPLAIN)
    attributes = span.attributes
    assert attributes[names.ATTR_EXPLAIN_SITES][0] == f"{THIS_FILE}:{marker_line('leak-buffers')} leak_buffers"
    assert attributes[names.ATTR_EXPLAIN_SITE_BYTES][0] == explanation.sites[0].size_bytes
    assert attributes[names.ATTR_EXPLAIN_OPERATIONS][0] == "explain_auto_leaker"
    assert attributes[names.ATTR_EXPLAIN_OPERATION_BYTES][0] == pytest.approx(buffers_bytes(), rel=0.10)
    assert attributes[names.ATTR_EXPLAIN_SECONDS] == explanation.seconds
    assert attributes[names.ATTR_EXPLAIN_REASON] == "leak suspected"
    assert attributes[names.ATTR_EXPLAIN_BACKEND] == "tracemalloc"
    assert [link.context.span_id for link in span.links] == [suspected.span_id]
    assert span.parent is None

    warnings = [r for r in caplog.records if r.name == EXPLAIN_LOGGER and r.levelno == logging.WARNING]
    summaries = [r.getMessage() for r in warnings if "memory explanation" in r.getMessage()]
    assert len(summaries) == 1
    assert f"leak_buffers holds {explanation.sites[0].size_bytes}" in summaries[0]
    assert "explain_auto_leaker 9" in summaries[0] or "explain_auto_leaker 100%" in summaries[0]
    errors = [r for r in caplog.records if r.name == EXPLAIN_LOGGER and r.levelno == logging.ERROR]
    assert any("listener" in r.getMessage() and r.exc_info for r in errors)


def test_windows_are_rate_limited_to_their_share_of_time():
    now = [1000.0]
    explainer = explain.AutoExplainer(enabled=True, seconds=0.2, max_share=0.02, clock=lambda: now[0])
    assert explainer.request("first", [])
    assert explainer.wait_idle(10)
    window = explainer.latest().seconds
    delay = window / 0.02 - window  # the window is 2% of the time from its start to the next one's
    assert not explainer.request("too soon", [])
    now[0] += delay - 0.01
    assert not explainer.request("still too soon", [])
    now[0] += 0.02
    assert explainer.request("in time", [])
    assert explainer.wait_idle(10)


def test_off_does_nothing(telemetry, monkeypatch):
    monkeypatch.setenv(names.ENV_EXPLAIN, "off")
    explainer = explain.AutoExplainer()
    assert not explainer.enabled
    assert not explainer.request("leak", ["x"])
    assert explainer.wait_idle(0)
    assert not tracemalloc.is_tracing()
    assert explainer.latest() is None
    assert telemetry.spans(names.SPAN_EXPLAIN) == []


def test_the_environment_sets_the_window(monkeypatch):
    monkeypatch.setenv(names.ENV_EXPLAIN, " AUTO ")
    monkeypatch.setenv(names.ENV_EXPLAIN_SECONDS, "2.5")
    explainer = explain.AutoExplainer()
    assert explainer.enabled and explainer.seconds == 2.5


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (names.ENV_EXPLAIN, "sometimes", "expected one of auto, off"),
        (names.ENV_EXPLAIN_SECONDS, "ten", "expected a number of seconds above 0 and at most 3600"),
        (names.ENV_EXPLAIN_SECONDS, "0", "expected a number of seconds above 0 and at most 3600"),
        (names.ENV_EXPLAIN_SECONDS, "inf", "expected a number of seconds above 0 and at most 3600"),
        (names.ENV_EXPLAIN_SECONDS, "1_0", "expected a number of seconds above 0 and at most 3600"),
        (names.ENV_EXPLAIN_SECONDS, "3601", "expected a number of seconds above 0 and at most 3600"),
        (names.ENV_EXPLAIN_SECONDS, "１０", "expected a number of seconds above 0 and at most 3600"),
    ],
)
def test_a_bad_environment_value_logs_one_line_and_uses_the_default(monkeypatch, caplog, variable, value, expected):
    caplog.set_level(logging.INFO, logger=EXPLAIN_LOGGER)
    monkeypatch.delenv(names.ENV_EXPLAIN, raising=False)
    monkeypatch.delenv(names.ENV_EXPLAIN_SECONDS, raising=False)
    monkeypatch.setenv(variable, value)
    explainer = explain.AutoExplainer()
    assert explainer.enabled and explainer.seconds == 10.0
    lines = [r.getMessage() for r in caplog.records if r.name == EXPLAIN_LOGGER]
    assert len(lines) == 1, lines
    assert variable in lines[0] and repr(value) in lines[0] and expected in lines[0]


def test_unavailable_tracing_is_logged_once_per_reason(caplog):
    caplog.set_level(logging.INFO, logger=EXPLAIN_LOGGER)
    explainer = explain.AutoExplainer(enabled=True, seconds=0.1)
    tracemalloc.start()
    try:
        assert not explainer.request("leak", [])
        assert not explainer.request("leak", [])
    finally:
        tracemalloc.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == EXPLAIN_LOGGER]
    assert len(lines) == 1 and "tracemalloc is already tracing" in lines[0]


def test_the_process_explainer_is_one_instance():
    assert explain.auto_explainer() is explain.auto_explainer()


def test_the_default_backend_is_memray_where_it_is_installed_and_tracemalloc_elsewhere(monkeypatch):
    expected = "memray" if explain.memray_available() else "tracemalloc"
    window = Background(0.2, native=None)
    assert explain.window_open()
    explanation = window.explanation()
    assert explanation.backend == expected
    assert not explain.window_open() and not tracemalloc.is_tracing() and not explain.memray_tracking()
    monkeypatch.setitem(sys.modules, "memray", None)  # as if it were not installed
    assert not explain.memray_available()
    assert explain_memory(0.05).backend == "tracemalloc"


@pytest.mark.parametrize("native", [False, None], ids=["tracemalloc", "default"])
def test_a_call_in_flight_at_the_end_is_waited_out_so_its_working_memory_is_not_kept(native):
    """The window ends between two calls of the operation it watches, not in the middle of one."""
    from reer_otel_memory import memory_profile

    done = threading.Event()

    @memory_profile(operation_name="explain_working_memory")
    def working() -> int:
        scratch = bytearray(4 * 2**20)  # freed when the call returns
        done.wait(0.005)  # the call's work
        return len(scratch)

    thread = in_thread(lambda: [working() for _ in iter(done.is_set, True)])
    try:
        explainer = explain.AutoExplainer(enabled=True, seconds=0.2, native=native)
        assert explainer.request("test", ["explain_working_memory"])
        assert explainer.wait_idle(30)
    finally:
        done.set()
        thread.join(10)
    explanation = explainer.latest()
    assert explanation is not None
    assert "explain_working_memory" not in explanation.in_flight
    assert explanation.operations.get("explain_working_memory", 0) < 2**20, explanation.format()


def test_what_the_measuring_machinery_keeps_is_not_the_services(telemetry):
    """Spans kept by the exporter, the tracker's ring, leak histories: none of it is a site."""
    from reer_otel_memory import memory_profile

    @memory_profile(operation_name="explain_noop")
    def noop() -> None:
        pass

    window = Background(0.3)
    for _ in range(3000):
        noop()
    explanation = window.explanation()
    assert len(telemetry.spans("explain_noop")) == 3000  # kept by the in-memory exporter all along
    assert explanation.total_bytes < 64 * 1024, explanation.format()
