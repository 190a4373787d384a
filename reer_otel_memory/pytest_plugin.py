"""Memory budgets in tests: a pytest plugin with exact peaks, leak checks and a baseline.

The markers (``limit_memory``, ``limit_leaks``, ``limit_device_memory``), the options, what is
measured and what a failing test prints are documented in the README, "Memory budgets in your
tests". The ``pytest11`` entry point is the small module ``_reer_otel_memory_pytestplugin``: it
adds the options and ini keys without importing this package or OpenTelemetry, so this module
loads, and any test is measured, only once budgets are asked for. Peaks come from the kernel's RSS
high-water mark (:mod:`.profiling.probe`), so no allocation is traced.
"""

from __future__ import annotations

import gc
import json
import os
import re
import resource
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import _reer_otel_memory_pytestplugin as _entry

from . import _names as names
from . import _telemetry
from .config import checked_number
from .errors import ConfigurationError
from .profiling.devices import device_memory
from .profiling.leak import LeakDetector
from .profiling.probe import process_probe

_ACTIVE_NAME = "reer_otel_memory.budgets"
MiB = 1024 * 1024
#: An increase smaller than this never fails ``--memory-fail-on-increase``: page and allocator noise.
INCREASE_FLOOR_BYTES = MiB
DEFAULT_LEAK_CALLS = 10
#: Read the heap for budget-only tests while one reading costs at most this (seconds): a reading
#: walks the allocator's free lists, which gets slower as the heap fragments.
CHEAP_HEAP_S = 5e-6
_MEASURES = ("peak", "retained")
_UNITS = {"b": 1, "kb": 10**3, "kib": 2**10, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*\Z")
_MARKERS = (
    "limit_memory(size, *, measure='peak', include_children=False): fail when the test's peak (or retained) "
    "memory growth exceeds size (reer_otel_memory)",
    "limit_leaks(size, *, calls=10): run the test body `calls` times; fail when the calls keep retaining "
    "about size or more (reer_otel_memory)",
    "limit_device_memory(size, *, measure='peak'): fail when the test's peak (or retained) accelerator memory "
    "growth exceeds size (reer_otel_memory)",
)


def parse_size(value: object) -> int:
    """Bytes in ``value``: an int, or ``"24 MB"`` (KB = 1000 B, KiB = 1024 B); ConfigurationError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ConfigurationError(f"size {value!r}: expected a number of bytes >= 0")
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    unit = _UNITS.get(match.group(2).lower() or "b") if match else None
    if match is None or unit is None:
        raise ConfigurationError(
            f"size {value!r}: expected bytes as an int or a string such as '24 MB' "
            "(units B, KB, KiB, MB, MiB, GB, GiB; KB = 1000 B, KiB = 1024 B)"
        )
    return int(float(match.group(1)) * unit)


def format_size(n_bytes: float) -> str:
    """``n_bytes`` in binary units, signed only when negative: ``"100.0 MiB"``."""
    size = abs(n_bytes)
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor:
            return f"{'-' if n_bytes < 0 else ''}{size / factor:.1f} {unit}"
    return f"{int(n_bytes)} B"


# --- loading --------------------------------------------------------------------------------------


def activate(config: pytest.Config) -> None:
    """Register the markers and the budgets for this run (once, however the plugin was enabled)."""
    if config.pluginmanager.has_plugin(_ACTIVE_NAME):
        return
    for line in _MARKERS:
        config.addinivalue_line("markers", line)
    config.pluginmanager.register(MemoryBudgets(config), _ACTIVE_NAME)


# Hooks of this module for when a conftest (``pytest_plugins = ["reer_otel_memory.pytest_plugin"]``)
# or ``-p reer_otel_memory.pytest_plugin`` loads it directly: that enables the plugin.


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    if not pluginmanager.has_plugin(_entry.PLUGIN_NAME):
        _entry.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    activate(config)


# --- what a test asked for --------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """The limits one test runs under (parsed from its markers at collection)."""

    limit_bytes: int | None = None
    limit_text: str = ""
    source: str = ""
    measure: str = "peak"
    include_children: bool = False
    leak_limit_bytes: int | None = None
    leak_calls: int = 0
    device_limit_bytes: int | None = None
    device_limit_text: str = ""
    device_measure: str = "peak"


_BUDGET = pytest.StashKey[Budget]()
_FIGURES = pytest.StashKey[dict[str, Any]]()
_CAPTURE = pytest.StashKey[Any]()


def _budget_for(item: pytest.Item, default_limit: tuple[int, str] | None) -> Budget:
    """The item's Budget; ConfigurationError naming the marker and value when an argument is bad."""
    fields: dict[str, Any] = {}
    marker = item.get_closest_marker("limit_memory")
    if marker is not None:
        unknown = set(marker.kwargs) - {"measure", "include_children"}
        if len(marker.args) != 1 or unknown:
            raise ConfigurationError(
                f"limit_memory{_call_text(marker)}: expected one size and optionally measure= and include_children="
            )
        measure = marker.kwargs.get("measure", "peak")
        if measure not in _MEASURES:
            raise ConfigurationError(f"limit_memory(measure={measure!r}): expected 'peak' or 'retained'")
        include_children = marker.kwargs.get("include_children", False)
        if not isinstance(include_children, bool):
            raise ConfigurationError(f"limit_memory(include_children={include_children!r}): expected True or False")
        fields.update(
            limit_bytes=_marker_size("limit_memory", marker.args[0]), limit_text=str(marker.args[0]),
            source="limit_memory marker", measure=measure, include_children=include_children,
        )
    elif default_limit is not None:
        fields.update(limit_bytes=default_limit[0], limit_text=default_limit[1], source="--memory-limit / memory_limit")
    marker = item.get_closest_marker("limit_leaks")
    if marker is not None:
        if len(marker.args) != 1 or set(marker.kwargs) - {"calls"}:
            raise ConfigurationError(f"limit_leaks{_call_text(marker)}: expected one size and optionally calls=")
        calls = marker.kwargs.get("calls", DEFAULT_LEAK_CALLS)
        checked_number(calls, 2, whole=True, where="limit_leaks", name="calls", expected="expected a whole number of calls >= 2")
        fields.update(leak_limit_bytes=_marker_size("limit_leaks", marker.args[0]), leak_calls=calls)
    marker = item.get_closest_marker("limit_device_memory")
    if marker is not None:
        if len(marker.args) != 1 or set(marker.kwargs) - {"measure"}:
            raise ConfigurationError(f"limit_device_memory{_call_text(marker)}: expected one size and optionally measure=")
        device_measure = marker.kwargs.get("measure", "peak")
        if device_measure not in _MEASURES:
            raise ConfigurationError(f"limit_device_memory(measure={device_measure!r}): expected 'peak' or 'retained'")
        fields.update(
            device_limit_bytes=_marker_size("limit_device_memory", marker.args[0]),
            device_limit_text=str(marker.args[0]),
            device_measure=device_measure,
        )
    return Budget(**fields)


def _marker_size(marker: str, value: object) -> int:
    try:
        return parse_size(value)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{marker}({value!r}): {exc}") from None


def _call_text(marker: pytest.Mark) -> str:
    arguments = [repr(a) for a in marker.args] + [f"{k}={v!r}" for k, v in marker.kwargs.items()]
    return f"({', '.join(arguments)})"


# --- the active plugin --------------------------------------------------------------------------------


class MemoryBudgets:
    """Registered by :func:`pytest_configure` only when the plugin is enabled."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        raw_limit = config.getoption("memory_limit") or config.getini("memory_limit") or None
        self.default_limit: tuple[int, str] | None = None
        if raw_limit is not None:
            try:
                self.default_limit = (parse_size(raw_limit), str(raw_limit))
            except ConfigurationError as exc:
                raise pytest.UsageError(f"--memory-limit / memory_limit: {exc}") from None
        self.report = bool(config.getoption("memory_report"))
        baseline = config.getoption("memory_baseline")
        self.baseline_path = Path(baseline) if baseline else None
        self.increase_pct: float | None = None
        raw_pct = config.getoption("memory_fail_on_increase")
        if raw_pct is not None:
            try:
                self.increase_pct = float(str(raw_pct).rstrip("%"))
            except ValueError:
                self.increase_pct = -1.0
            if not self.increase_pct >= 0:
                raise pytest.UsageError(f"--memory-fail-on-increase={raw_pct!r}: expected a percentage >= 0, such as 10")
            if self.baseline_path is None:
                raise pytest.UsageError("--memory-fail-on-increase needs --memory-baseline=FILE to compare with")
        self.baseline: dict[str, dict[str, Any]] = {}
        if self.increase_pct is not None and self.baseline_path is not None and self.baseline_path.exists():
            try:
                self.baseline = json.loads(self.baseline_path.read_text())["tests"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise pytest.UsageError(f"--memory-baseline={str(self.baseline_path)!r}: not a memory baseline file ({exc})") from None
        # Reports and baselines need every test's figures; budgets alone only the budgeted tests'.
        self.measure_all = self.report or self.baseline_path is not None
        self.figures: dict[str, dict[str, Any]] = {}
        self._spans: Any = None  # the in-memory exporter budgeted tests report to, built on first use
        self._telemetry: Any = None
        self._previous_telemetry: Any = None  # what was in force before the plugin bound its own
        self._spans_test: str | None = None  # the test whose spans the exporter holds

    # --- collection: bad markers are collection errors -------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(self, collector: pytest.Collector) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
        report = yield
        if report.outcome != "passed":
            return report
        problems = []
        for node in report.result:
            if not isinstance(node, pytest.Item):
                continue
            try:
                node.stash[_BUDGET] = _budget_for(node, self.default_limit)
            except ConfigurationError as exc:
                problems.append(f"{node.nodeid}: {exc}")
        if problems:
            report.outcome = "failed"
            report.longrepr = "bad memory budget:\n" + "\n".join(problems)
            report.result = []
        return report

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # The OpenTelemetry SDK is imported before the first test, so its import time is not in one.
        if any(item.stash.get(_BUDGET, Budget()).limit_bytes is not None for item in session.items):
            self._span_telemetry()

    # --- the fixture -------------------------------------------------------------------------------

    @pytest.fixture
    def memory_telemetry(self, request: pytest.FixtureRequest) -> Iterator[Any]:
        """The spans and metrics the package produced during the test (a ``TelemetryCapture``)."""
        from .testing import capture_telemetry

        with capture_telemetry() as capture:
            request.node.stash[_CAPTURE] = capture
            yield capture

    # --- measuring -------------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        # Before the fixtures: one that binds its own capture must find what was in force before
        # the plugin, or it would put the plugin's binding back when it ends.
        if self._previous_telemetry is not None:
            budget = item.stash.get(_BUDGET, None)
            if budget is None or budget.limit_bytes is None or "memory_telemetry" in getattr(item, "fixturenames", ()):
                self._unbind_spans()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        budget = item.stash.get(_BUDGET, None)
        if budget is None:
            budget = item.stash[_BUDGET] = _budget_for(item, self.default_limit)
        budgeted = budget.limit_bytes is not None or budget.leak_limit_bytes is not None or budget.device_limit_bytes is not None
        want_spans = budget.limit_bytes is not None and _CAPTURE not in item.stash
        if not budgeted and not self.measure_all and not self.baseline:
            return (yield)
        probe = process_probe()
        leak_deltas = self._run_leak_calls(item, probe, budget) if budget.leak_limit_bytes is not None else None
        self._spans_test = item.nodeid if want_spans and self._bind_spans() else None
        children_before = _children_waited_peak() if budget.include_children else 0
        if leak_deltas is not None:
            gc.collect()
        devices = device_memory() if budget.device_limit_bytes is not None or self.measure_all else None
        device = devices.begin() if devices is not None else (None, 0)
        window, rss_start = probe.begin_peak()
        # The heap delta is a column of the report; for a budget alone it is only a detail of the
        # failure output, read where it is cheap (it walks the allocator's free lists).
        heap_start = probe.heap_bytes() if self.measure_all or probe.heap_cost_s <= CHEAP_HEAP_S else None
        started = time.perf_counter()
        try:
            result = yield
        except BaseException:
            # The test's own failure is the one to show; the figures are still kept.
            self._finish(item, probe, budget, window, rss_start, heap_start, started, children_before, leak_deltas, device, check=False)
            raise
        self._finish(item, probe, budget, window, rss_start, heap_start, started, children_before, leak_deltas, device, check=True)
        return result

    def _finish(
        self, item: pytest.Item, probe: Any, budget: Budget, window: Any, rss_start: int, heap_start: int | None, started: float,
        children_before: int, leak_deltas: list[tuple[int, int | None]] | None, device: tuple[Any, int], *, check: bool,
    ) -> None:
        duration_s = time.perf_counter() - started
        if budget.measure == "retained" or leak_deltas is not None:
            gc.collect()
        rss_end = probe.rss_bytes()
        peak = probe.end_peak(window, rss_end)
        heap_end = probe.heap_bytes() if heap_start is not None else None
        figures: dict[str, Any] = {
            "peak_growth_bytes": None if peak is None else peak - rss_start,
            "retained_bytes": rss_end - rss_start,
            "heap_delta_bytes": None if heap_start is None or heap_end is None else heap_end - heap_start,
            "duration_s": duration_s,
            "measure": budget.measure,
        }
        if budget.include_children:
            figures["children_peak_bytes"], figures["children_rss_bytes"] = _children_figures(children_before)
        device_window, device_start = device
        if device_window is not None:
            device_end, device_peak = device_memory().end(device_window)
            figures["device_peak_growth_bytes"] = None if device_peak is None else max(0, device_peak - device_start)
            figures["device_retained_bytes"] = device_end - device_start
        item.stash[_FIGURES] = figures
        if leak_deltas is not None:
            leak_deltas.append((rss_end - rss_start, figures["heap_delta_bytes"]))
        if check:
            self._check(item, budget, figures, leak_deltas)

    def _run_leak_calls(self, item: pytest.Item, probe: Any, budget: Budget) -> list[tuple[int, int | None]]:
        """Every call of the body but the last (which pytest runs); each call's RSS and heap delta."""
        deltas: list[tuple[int, int | None]] = []
        runtest = item.runtest
        for _ in range(budget.leak_calls - 1):
            gc.collect()
            rss_start = probe.rss_bytes()
            heap_start = probe.heap_bytes()
            runtest()
            gc.collect()
            heap_end = probe.heap_bytes() if heap_start is not None else None
            deltas.append((probe.rss_bytes() - rss_start, None if heap_start is None or heap_end is None else heap_end - heap_start))
        return deltas

    def _bind_spans(self) -> bool:
        """Send the package's spans to the plugin's exporter; False where other providers are in force.

        The binding stays from one budgeted test to the next (checking it is far cheaper than
        binding and restoring): the setup of the first test without a limit (or
        with ``memory_telemetry``), and the end of the session, restore what was in force before.
        """
        current = _telemetry.current()
        mine = self._telemetry
        if mine is not None and current is mine:
            if _telemetry._global_sdk_configured():  # set since: the spans belong there now
                self._unbind_spans()
                return False
            self._spans.clear()
            return True
        # Explicit providers (capture_telemetry, the instrumentor) or a global SDK: their spans stay theirs.
        if current.tracer_provider is not None or _telemetry._global_sdk_configured():
            return False
        mine = self._span_telemetry()
        self._spans.clear()
        self._previous_telemetry = current
        _telemetry.restore(mine)
        return True

    def _unbind_spans(self) -> None:
        previous, self._previous_telemetry = self._previous_telemetry, None
        if previous is not None and _telemetry.current() is self._telemetry:
            _telemetry.restore(previous)

    def _span_telemetry(self) -> Any:
        """The package's tracer bound to the plugin's in-memory exporter (meters stay as they are)."""
        if self._telemetry is None:
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

            self._spans = InMemorySpanExporter()
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(self._spans))
            self._telemetry = _telemetry.Telemetry(provider, None)
        return self._telemetry

    def _check(self, item: pytest.Item, budget: Budget, figures: dict[str, Any], leak_deltas: list[tuple[int, int | None]] | None) -> None:
        problems = []
        measured = _measured(figures, budget.measure, budget.include_children)
        if budget.limit_bytes is not None and measured is not None and measured > budget.limit_bytes:
            what = "peak RSS growth during the test" if budget.measure == "peak" else "RSS retained at the end of the test (after gc)"
            if budget.include_children:
                what += " plus its child processes'"
            problems.append(
                f"memory limit exceeded: {format_size(measured)} > {budget.limit_text} ({budget.source}): {what}"
            )
        if budget.device_limit_bytes is not None:
            key = "device_peak_growth_bytes" if budget.device_measure == "peak" else "device_retained_bytes"
            device_measured = figures.get(key)
            if key not in figures:
                item.warn(pytest.PytestWarning(
                    f"limit_device_memory({budget.device_limit_text!r}): no accelerator framework reported device memory "
                    "during the test (none imported, or no device); nothing was checked"
                ))
            elif device_measured is not None and device_measured > budget.device_limit_bytes:
                what = "peak device memory growth during the test" if budget.device_measure == "peak" else "device memory still in use at the end"
                problems.append(
                    f"device memory limit exceeded: {format_size(device_measured)} > {budget.device_limit_text} "
                    f"(limit_device_memory marker): {what}, summed over {', '.join(device_memory().frameworks()) or 'the devices'}"
                )
        if leak_deltas is not None and budget.leak_limit_bytes is not None:
            problem = _judge_leaks(leak_deltas, budget)
            if problem:
                problems.append(problem)
        baseline = self.baseline.get(item.nodeid) if self.increase_pct is not None else None
        if baseline is not None and self.increase_pct is not None:
            before = _measured(baseline, budget.measure, budget.include_children)
            if measured is not None and before is not None:
                grown = measured - before
                if grown >= INCREASE_FLOOR_BYTES and grown > max(before, 0) * self.increase_pct / 100:
                    problems.append(
                        f"memory grew over the baseline: {budget.measure} {format_size(measured)}, was {format_size(before)} "
                        f"(+{format_size(grown)}; --memory-fail-on-increase={self.increase_pct:g}%)"
                    )
        if problems:
            pytest.fail("\n".join([*problems, self._details(item, figures)]), pytrace=False)

    def _details(self, item: pytest.Item, figures: dict[str, Any]) -> str:
        parts = [f"peak growth {_size_or_unknown(figures['peak_growth_bytes'])}",
                 f"retained {format_size(figures['retained_bytes'])}",
                 f"heap delta {_size_or_unknown(figures['heap_delta_bytes'])}"]
        if "children_peak_bytes" in figures:
            parts.append(f"children's peak {format_size(figures['children_peak_bytes'])}")
        if "device_retained_bytes" in figures:
            parts.append(f"device peak growth {_size_or_unknown(figures['device_peak_growth_bytes'])}")
            parts.append(f"device retained {format_size(figures['device_retained_bytes'])}")
        lines = ["measured: " + ", ".join(parts)]
        capture = item.stash.get(_CAPTURE, None)
        if capture is not None:
            spans = list(capture.spans())
        elif self._spans_test == item.nodeid:
            spans = list(self._spans.get_finished_spans())
        else:
            spans = []
        top = _top_operations(spans)
        if top:
            lines.append("top operations by peak growth: " + ", ".join(f"{name} {format_size(growth)}" for name, growth in top))
        if spans:
            span_names = list(dict.fromkeys(span.name for span in spans))
            shown = ", ".join(span_names[:10]) + (f", ... ({len(span_names)} names)" if len(span_names) > 10 else "")
            lines.append(f"spans: {shown}")
        return "\n".join(lines)

    # --- carrying figures (to the xdist controller) and reporting ------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        figures = item.stash.get(_FIGURES, None)
        if call.when == "call" and figures is not None:
            # A plain attribute: xdist sends a report's __dict__ to the controller.
            report.reer_memory = figures  # type: ignore[attr-defined]
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        figures = getattr(report, "reer_memory", None)
        if report.when == "call" and isinstance(figures, dict):
            self.figures[report.nodeid] = figures

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.report or hasattr(self.config, "workerinput"):
            return
        terminalreporter.write_sep("=", "memory report (reer_otel_memory)")
        rows = sorted(self.figures.items(), key=lambda row: row[1].get("peak_growth_bytes") or 0, reverse=True)
        width = max([len("test"), *(len(nodeid) for nodeid, _ in rows)])
        terminalreporter.write_line(
            f"{'test':<{width}}  {'peak growth':>12}  {'retained':>12}  {'heap delta':>12}  {'device peak':>12}  {'duration':>9}"
        )
        for nodeid, figures in rows:
            terminalreporter.write_line(
                f"{nodeid:<{width}}  {_size_or_unknown(figures.get('peak_growth_bytes')):>12}  "
                f"{format_size(figures.get('retained_bytes') or 0):>12}  {_size_or_unknown(figures.get('heap_delta_bytes')):>12}  "
                f"{_size_or_unknown(figures.get('device_peak_growth_bytes')):>12}  {figures.get('duration_s', 0.0):>8.3f}s"
            )

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self._unbind_spans()
        if self.baseline_path is None or self.increase_pct is not None or hasattr(self.config, "workerinput"):
            return
        data = {"format": 1, "tests": dict(sorted(self.figures.items()))}
        tmp = self.baseline_path.with_name(self.baseline_path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, self.baseline_path)


def _measured(figures: dict[str, Any], measure: str, include_children: bool) -> int | None:
    if measure == "retained":
        value = figures.get("retained_bytes")
        extra = figures.get("children_rss_bytes", 0) if include_children else 0
    else:
        value = figures.get("peak_growth_bytes")
        extra = figures.get("children_peak_bytes", 0) if include_children else 0
    return None if value is None else int(value) + int(extra or 0)


def _judge_leaks(deltas: list[tuple[int, int | None]], budget: Budget) -> str:
    assert budget.leak_limit_bytes is not None
    warmup = max(1, len(deltas) // 5)
    judged = len(deltas) - warmup
    detector = LeakDetector(window=judged, warmup_calls=warmup, min_samples=judged, check_every=1,
                            floor_bytes=max(1, budget.leak_limit_bytes // judged))
    for rss_delta, heap_delta in deltas:
        detector.observe("test", rss_delta, heap_delta)
    if not detector.is_suspected("test"):
        return ""
    per_call = detector.bytes_per_call("test")
    kept = sum(rss for rss, _ in deltas[warmup:])
    return (
        f"memory leak: about {format_size(per_call)} retained per call over {judged} calls "
        f"({format_size(kept)} RSS in all) > limit_leaks({budget.leak_limit_bytes} B) over {budget.leak_calls} calls "
        f"(the first {warmup} warm up and are not judged)"
    )


def _top_operations(spans: list[Any], count: int = 3) -> list[tuple[str, int]]:
    growth: dict[str, int] = {}
    for span in spans:
        attributes = span.attributes or {}
        peak, start = attributes.get(names.ATTR_RSS_PEAK), attributes.get(names.ATTR_RSS_START)
        if isinstance(peak, int) and isinstance(start, int):
            growth[span.name] = max(growth.get(span.name, 0), peak - start)
    return sorted(growth.items(), key=lambda pair: pair[1], reverse=True)[:count]


def _size_or_unknown(n_bytes: int | None) -> str:
    return "unknown" if n_bytes is None else format_size(n_bytes)


def _children_waited_peak() -> int:
    """The largest peak RSS of any child this process has waited for (kernel's ru_maxrss), bytes."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def _children_figures(waited_before: int) -> tuple[int, int]:
    """(children's peak, children's RSS now): see the module docs for what each covers."""
    import psutil

    waited_now = _children_waited_peak()
    peak = waited_now if waited_now > waited_before else 0
    rss = 0
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        children = []
    for child in children:
        try:
            child_rss = int(child.memory_info().rss)
        except psutil.Error:
            continue
        rss += child_rss
        peak = max(peak, _vm_hwm_bytes(child.pid) or child_rss)
    return peak, rss


def _vm_hwm_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
