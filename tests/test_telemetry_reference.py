"""docs/telemetry.md against the code: the page lists every name the package emits or reads, and
nothing else.

Statically, the page's tables are compared with ``_names`` (every ``ATTR_*``, ``EVENT_*``,
``METRIC_*``, ``ENV_*`` and ``OPERATION_*``), its series with ``export.naming``, and its defaults
with the code's. Dynamically, real package code runs under ``capture_telemetry()`` (a leaking
profiled function, a failing one, the monitor, the model profiler and lazy loader, the resource
manager and a trace store), and every span attribute, span event and metric it emits is looked
up on the page, and every one the page lists must have been emitted.
"""

from __future__ import annotations

import asyncio
import gc
import mmap
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _buffers import KiB, mapped
from conftest import wait_for

from reer_otel_memory import PROBE, LeakDetector, MemoryLevel, get_memory_tracker, load_config, memory_context, memory_profile
from reer_otel_memory import _names as names
from reer_otel_memory import config as config_module
from reer_otel_memory._cgroup import in_container, memory_cgroup
from reer_otel_memory.export import endpoint, naming
from reer_otel_memory.export.exposition import OpenTelemetryText
from reer_otel_memory.instrumentation import parse_profile_targets, parse_signal
from reer_otel_memory.ml import resources
from reer_otel_memory.ml.lazy import LazyModelLoader
from reer_otel_memory.ml.profiler import MemoryProfiler
from reer_otel_memory.ml.resources import MemoryResourceManager
from reer_otel_memory.monitoring.monitor import MemoryMonitor
from reer_otel_memory.profiling import probe
from reer_otel_memory.profiling.devices import device_memory
from reer_otel_memory.profiling.flight_recorder import FlightRecorder, report_predecessor
from reer_otel_memory.testing import TelemetryCapture, capture_telemetry
from reer_otel_memory.trace_store import REERTraceStore

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "telemetry.md"
PACKAGE = ROOT / "reer_otel_memory"

# OpenTelemetry's own event for an exception (Span.record_exception), not a package name.
OTEL_EXCEPTION_EVENT = "exception"
# The Prometheus type each OTel instrument kind on the page is exported as.
PROMETHEUS_KIND = {
    "gauge": naming.GAUGE,
    "counter": naming.COUNTER,
    "up-down counter": naming.GAUGE,
    "histogram": naming.HISTOGRAM,
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
EVERY_OPERATION = "every operation"
#: Names agreed for the accelerator and container series that the alert rules and the dashboard
#: already read but the package does not emit yet. The page lists only what the code emits, so
#: these are left out of the comparison; remove each from here when the code starts emitting it
#: (and add its row to docs/telemetry.md).
PLANNED_NAMES: set[str] = set()


# --- the page ----------------------------------------------------------------------------------


def ticked(cell: str) -> list[str]:
    """The `code` spans of a table cell, in order."""
    return re.findall(r"`([^`]+)`", cell)


def read_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Every Markdown table on the page, keyed by its first column's heading (backticks dropped)."""
    tables: dict[str, list[dict[str, str]]] = {}
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        if not lines[index].startswith("|") or index + 1 >= len(lines) or not lines[index + 1].startswith("|---"):
            index += 1
            continue
        header = [cell.strip().strip("`") for cell in lines[index].strip("|").split("|")]
        rows = []
        index += 2
        while index < len(lines) and lines[index].startswith("|"):
            cells = [cell.strip() for cell in lines[index].strip().strip("|").split("|")]
            assert len(cells) == len(header), f"docs/telemetry.md: row {lines[index]!r} has {len(cells)} cells, expected {len(header)}"
            rows.append(dict(zip(header, cells, strict=True)))
            index += 1
        assert header[0] not in tables, f"docs/telemetry.md: two tables whose first column is {header[0]!r}"
        tables[header[0]] = rows
    return tables


def by_first_name(rows: list[dict[str, str]], column: str) -> dict[str, dict[str, str]]:
    """Rows keyed by the first `code` span of ``column``; a row without one fails."""
    keyed: dict[str, dict[str, str]] = {}
    for row in rows:
        found = ticked(row[column])
        assert found, f"docs/telemetry.md: row {row} has no `name` in column {column!r}"
        assert found[0] not in keyed, f"docs/telemetry.md: {found[0]!r} has two rows"
        keyed[found[0]] = row
    return keyed


@dataclass
class Page:
    text: str
    attributes: dict[str, dict[str, str]]
    events: dict[str, dict[str, str]]
    operations: dict[str, dict[str, str]]
    metrics: dict[str, dict[str, str]]
    levels: dict[str, dict[str, str]]
    triggers: dict[str, dict[str, str]]
    resource_triggers: dict[str, dict[str, str]]
    variables: dict[str, dict[str, str]]

    def attributes_set_on_every_operation(self) -> set[str]:
        """Attributes every profiled operation's span carries."""
        return {name for name, row in self.attributes.items() if row["set on"] == EVERY_OPERATION}

    def attributes_set_on_any_operation(self) -> set[str]:
        """Attributes any operation may carry (``every operation, where/when/while ...``)."""
        return {name for name, row in self.attributes.items() if row["set on"].startswith(EVERY_OPERATION)}

    def event_attributes(self, event: str) -> list[str]:
        return [name for name in ticked(self.events[event]["attributes"]) if name not in ("str", "int", "bool", "By")]

    def metric_labels(self, metric: str) -> dict[str, str]:
        """OTel attribute key -> Prometheus label, as the labels column says (``key -> label``)."""
        cell = self.metrics[metric]["labels"]
        labels = {}
        for key, label in re.findall(r"`([^`]+)`(?:\s*->\s*`([^`]+)`)?", cell):
            labels[key] = label or key
        return labels


@pytest.fixture(scope="module")
def page() -> Page:
    text = PAGE.read_text(encoding="utf-8")
    tables = read_tables(text)
    return Page(
        text=text,
        attributes=by_first_name(tables["attribute"], "attribute"),
        events=by_first_name(tables["event"], "event"),
        operations=by_first_name(tables["operation"], "operation"),
        metrics=by_first_name(tables["OTel instrument"], "OTel instrument"),
        levels=by_first_name(tables["level"], "level"),
        triggers=by_first_name(tables["trigger"], "trigger"),
        resource_triggers=by_first_name(tables["resource trigger"], "resource trigger"),
        variables=by_first_name(tables["variable"], "variable"),
    )


def constants(prefix: str) -> dict[str, Any]:
    """``_names`` constants whose name starts with ``prefix``."""
    return {key: value for key, value in vars(names).items() if key.startswith(prefix)}


# --- static: _names, naming and the code's defaults against the page ---------------------------


def test_every_span_attribute_in_names_is_on_the_page_and_no_other(page: Page) -> None:
    event_attributes = {name for event in page.events for name in page.event_attributes(event)}
    for constant, name in constants("ATTR_").items():
        assert name in page.attributes or name in event_attributes, f"names.{constant} = {name!r} is not in docs/telemetry.md"
    code_names = set(constants("ATTR_").values())
    assert set(page.attributes) - code_names == set(), "docs/telemetry.md lists span attributes no names.ATTR_* defines"
    reer_event_attributes = {name for name in event_attributes if not name.startswith("exception.")}
    assert reer_event_attributes - code_names == set(), "docs/telemetry.md lists event attributes no names.ATTR_* defines"


def test_every_span_event_in_names_is_on_the_page_and_no_other(page: Page) -> None:
    assert set(page.events) == {*constants("EVENT_").values(), OTEL_EXCEPTION_EVENT}


def test_every_metric_in_names_is_on_the_page_with_its_unit_and_series(page: Page) -> None:
    metrics = {constant: metric for constant, metric in constants("METRIC_").items() if metric[0] not in PLANNED_NAMES}
    assert set(page.metrics) == {metric[0] for metric in metrics.values()}, "metric rows of docs/telemetry.md != names.METRIC_*"
    for constant, metric in metrics.items():
        name, unit, _description = metric
        row = page.metrics[name]
        assert ticked(row["unit"]) == [unit], f"{name}: the page says unit {row['unit']}, names.{constant} says {unit!r}"
        kind = row["kind"]
        assert kind in PROMETHEUS_KIND, f"{name}: kind {kind!r} on the page; expected one of {sorted(PROMETHEUS_KIND)}"
        series = ticked(row["Prometheus series"])[0]
        assert series == naming.series_name(metric, PROMETHEUS_KIND[kind]), f"{name}: the page's series {series!r}"
        # The rules and dashboards query naming's constants: the same name, so the same kind.
        assert getattr(naming, constant.removeprefix("METRIC_")) == series, f"naming.{constant.removeprefix('METRIC_')} != {series!r}"


def test_every_label_on_the_page_is_the_exporters_name_for_its_key(page: Page) -> None:
    label_keys = {value for value in constants("LABEL_").values()}
    for metric in page.metrics:
        for key, label in page.metric_labels(metric).items():
            assert key in label_keys, f"{metric}: label key {key!r} is no names.LABEL_*"
            assert label == naming.label_name(key), f"{metric}: the page says {key!r} -> {label!r}, the exporter makes {naming.label_name(key)!r}"


def test_every_operation_the_package_profiles_is_on_the_page_and_no_other(page: Page) -> None:
    assert set(page.operations) == set(constants("OPERATION_").values())


def test_levels_and_their_gauge_values(page: Page) -> None:
    assert list(page.levels) == [level.value for level in MemoryLevel]
    for level in MemoryLevel:
        assert page.levels[level.value][naming.LEVEL] == str(level.rank), level


def test_cleanup_triggers(page: Page) -> None:
    assert list(page.triggers) == list(names.CLEANUP_TRIGGERS)
    assert set(page.resource_triggers) == {resources.TRIGGER_MANUAL, resources.TRIGGER_LIMIT, resources.TRIGGER_PRESSURE}


def test_every_environment_variable_is_on_the_page_with_its_default(page: Page) -> None:
    assert set(page.variables) == set(constants("ENV_").values())
    defaults = {
        names.ENV_ALERT_MB: f"{config_module.DEFAULT_ALERT_MB:g}",
        names.ENV_CLEANUP_MB: f"{config_module.DEFAULT_CLEANUP_MB:g}",
        names.ENV_CRITICAL_MB: f"{config_module.DEFAULT_CRITICAL_MB:g}",
        names.ENV_MONITORING_INTERVAL: f"{config_module.DEFAULT_MONITORING_INTERVAL_S:g}",
        names.ENV_PROMETHEUS_HOST: endpoint.DEFAULT_HOST,
        names.ENV_PROMETHEUS_PORT: str(endpoint.DEFAULT_PORT),
        names.ENV_PROFILE_TARGETS: "(none)" if parse_profile_targets("") == ([], []) else "?",
        names.ENV_EMERGENCY_SIGNAL: "off" if parse_signal(None) is None else "?",
        names.ENV_RESET_PEAK: "on" if probe._reset_wanted({}) else "off",
    }
    for variable, default in defaults.items():
        assert page.variables[variable]["default"] == default, f"{variable}: the page's default is not the code's {default!r}"
    config = load_config({})
    assert config.alert_mb == config_module.DEFAULT_ALERT_MB and config.monitoring_interval_s == config_module.DEFAULT_MONITORING_INTERVAL_S


def test_every_environment_variable_on_the_page_is_read_by_the_code() -> None:
    sources = {path: path.read_text(encoding="utf-8") for path in PACKAGE.rglob("*.py") if path.name != "_names.py"}
    for constant in constants("ENV_"):
        readers = [path for path, text in sources.items() if re.search(rf"\bnames\.{constant}\b", text)]
        assert readers, f"names.{constant} is defined but no module reads it; drop it from _names and the page"


def test_every_reer_name_on_the_page_is_a_real_name(page: Page) -> None:
    dotted = {value for prefix in ("ATTR_", "EVENT_", "LABEL_", "SPAN_") for value in constants(prefix).values()}
    dotted |= {metric[0] for metric in constants("METRIC_").values()}
    series = {getattr(naming, key) for key in dir(naming) if key.isupper() and isinstance(getattr(naming, key), str)}
    series |= {name + suffix for name in series for suffix in HISTOGRAM_SUFFIXES}
    underscored = series | {names.INSTRUMENTATION_NAME, names.INSTRUMENTATION_SCOPE}
    variables = set(constants("ENV_").values())
    for token in re.findall(r"(?<![\w.])reer\.[a-z0-9_.]*[a-z0-9_]", page.text):
        assert token in dotted, f"docs/telemetry.md names {token!r}, which the package does not define"
    for token in re.findall(r"(?<![\w.])reer_[a-z0-9_]*[a-z0-9]", page.text):
        assert token in underscored, f"docs/telemetry.md names {token!r}, which is no series, label or package name"
    for token in re.findall(r"\bREER_MEMORY_[A-Z0-9_]*[A-Z0-9]", page.text):
        assert token in variables, f"docs/telemetry.md names {token!r}, which the package does not read"


# --- dynamic: what real code emits ---------------------------------------------------------------


@dataclass
class Emitted:
    """What the package emitted while the scenario ran."""

    span_attributes: dict[str, dict[str, Any]] = field(default_factory=dict)  # span name -> key -> a value
    events: dict[str, set[str]] = field(default_factory=dict)  # event name -> attribute keys
    metrics: dict[str, tuple[str, str, set[str]]] = field(default_factory=dict)  # name -> (unit, kind, keys)
    exposition: str = ""


def metric_kind(data: Any) -> str:
    kind = type(data).__name__
    if kind == "Sum":
        return "counter" if data.is_monotonic else "up-down counter"
    return kind.lower()


USER_OPERATION = "reference_leaky_call"


def explain_process_level_growth() -> None:
    """Leaking calls that always overlap another operation: a process-level verdict, then an explanation."""
    from reer_otel_memory.profiling.explain import AutoExplainer

    explainer = AutoExplainer(enabled=True, seconds=0.2)
    tracker = get_memory_tracker()
    previous = tracker.leak_detector
    tracker.leak_detector = LeakDetector(explainer=explainer)
    kept: list[bytes] = []
    done = threading.Event()

    @memory_profile(operation_name="reference_waiting_call")
    def waiting_call() -> None:
        done.wait(0.002)

    @memory_profile(operation_name="reference_overlapped_leak")
    def overlapped_leak() -> bool:
        kept.append(b"x" * (64 * KiB))
        return explainer.latest() is not None

    thread = threading.Thread(target=lambda: [waiting_call() for _ in iter(done.is_set, True)], daemon=True)
    thread.start()
    try:
        wait_for(overlapped_leak, timeout_s=30, interval_s=0, message="an explanation of the overlapped leak")
        explainer.wait_idle(10)
    finally:
        done.set()
        thread.join(10)
        tracker.leak_detector = previous
        kept.clear()
FAILING_OPERATION = "reference_failing_block"


async def use_trace_store(store: REERTraceStore) -> None:
    await store.add_trace({"trace_id": "t1", "score": 0.5})
    await store.add_traces([{"trace_id": "t2", "score": 0.9}, {"trace_id": "t3", "score": 0.1}])
    async for _trace in store.lazy_query_traces(min_score=0.2):
        pass
    async for _chunk in store.stream_traces_filtered(chunk_size=2):
        pass
    assert await store.get_trace("t2") is not None
    await store.get_memory_efficient_stats()
    store.optimize_memory_usage()


DIE_MID_OPERATION = """
import os, signal
from reer_otel_memory import memory_context
from reer_otel_memory.profiling.flight_recorder import process_flight_recorder
process_flight_recorder().record_sample(64 << 20, 80 << 20)
with memory_context("doomed"):
    os.kill(os.getpid(), signal.SIGKILL)
"""


def serve_one_request(telemetry: TelemetryCapture) -> None:
    """One Flask request under its OpenTelemetry instrumentation, measured as REER_MEMORY_SERVER_SPANS=1 does."""
    from flask import Flask
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    from reer_otel_memory.frameworks import server_spans

    app = Flask("reference")

    @app.route("/items/<int:size>")
    def items(size: int) -> str:
        return str(len(bytearray(size)))

    FlaskInstrumentor.instrument_app(app, tracer_provider=telemetry.tracer_provider)
    server_spans.install()
    try:
        assert app.test_client().get("/items/4096").data == b"4096"
    finally:
        server_spans.uninstall()
        FlaskInstrumentor.uninstrument_app(app)


@pytest.fixture(scope="module")
def emitted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emitted]:
    """Run the package's instrumented paths once, with real in-memory SDK providers."""
    tracker = get_memory_tracker()
    tracker.clear()
    found = Emitted()
    with capture_telemetry() as telemetry:
        retained: list[mmap.mmap] = []

        @memory_profile(operation_name=USER_OPERATION)
        def leaky_call() -> None:
            # Fresh pages each call: a leak of reused free memory would not show in RSS after
            # whatever the earlier tests of the run left free.
            retained.append(mapped(256 * KiB))

        for _ in range(40):
            leaky_call()
        retained.clear()
        explain_process_level_growth()
        with pytest.raises(ValueError), memory_context(FAILING_OPERATION):
            raise ValueError("raised inside a profiled block")

        try:  # accelerator memory, from MLX's CPU build where it is installed
            import mlx.core as mx

            device_array = mx.ones((256, 1024))
            mx.eval(device_array)
        except ImportError:
            device_array = None

        # An annotation of a profiled block's own span: its record is an event on it (with the
        # device attributes, as MLX is imported now).
        with memory_context("reference_request"):
            memory_profile(operation_name="reference_annotation", annotate_current=True, heap=True)(lambda: None)()

        # Thresholds of 1, 1.5 and 2 MB: one sample crosses all three and cleans up (critical).
        monitor = MemoryMonitor(1, 2, 1.5, 3600, config=load_config({"REER_MEMORY_DEVICE_ALERT_MB": "1"}), cleanup_cooldown_s=3600)
        monitor.sample_once()
        monitor.cleanup()

        # A flight recorder whose previous writer was killed mid-operation.
        flight_path = tmp_path_factory.mktemp("flight") / "service.flight"
        died = subprocess.run(
            [sys.executable, "-c", DIE_MID_OPERATION], env={names.ENV_FLIGHT_RECORDER: str(flight_path), "PATH": ""}, capture_output=True, timeout=60
        )
        assert died.returncode == -9, died.stderr
        recorder = FlightRecorder.open(flight_path)
        report_predecessor(recorder)
        recorder.close()

        profiler = MemoryProfiler()
        model = profiler.profile_model_loading("reference_model", lambda: bytearray(64 * KiB))
        loader = LazyModelLoader(lambda: bytearray(KiB), model_name="reference_lazy_model", profiler=profiler)
        loader.load()
        loader.unload(collect=False)

        manager = MemoryResourceManager()
        kept = bytearray(KiB)
        manager.register_resource("reference_kept", kept)
        manager.register_resource("reference_released", bytearray(KiB), keep_alive=True)
        assert manager.cleanup_resource("reference_released")

        store = REERTraceStore(str(tmp_path_factory.mktemp("trace_store") / "traces.jsonl"))
        asyncio.run(use_trace_store(store))

        for span in telemetry.spans():
            seen = found.span_attributes.setdefault(span.name, {})
            seen.update(span.attributes or {})
            for event in span.events:
                found.events.setdefault(event.name, set()).update(event.attributes or {})
        serve_one_request(telemetry)  # the per-route metrics (its server span is the framework's, not listed here)
        monitor.start_monitoring()  # the gauges describe the running monitor, device thresholds included
        try:
            data = telemetry.metric_reader.get_metrics_data()
        finally:
            monitor.stop_monitoring()
        assert data is not None
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    keys: set[str] = {key for point in metric.data.data_points for key in (point.attributes or {})}
                    found.metrics[metric.name] = (metric.unit or "", metric_kind(metric.data), keys)
        found.exposition = OpenTelemetryText().format(data).decode()
        del model, kept, store, manager, loader, profiler, monitor, device_array
    tracker.clear()
    gc.collect()
    yield found


def package_operations() -> set[str]:
    return set(constants("OPERATION_").values())


def test_every_emitted_span_attribute_is_on_the_page_with_its_type(page: Page, emitted: Emitted) -> None:
    types = {"int": int, "str": str, "bool": bool, "float": float, "str[]": str, "int[]": int}
    for span_name, attributes in emitted.span_attributes.items():
        for key, value in attributes.items():
            assert key in page.attributes, f"span {span_name!r} carries {key!r}, which docs/telemetry.md does not list"
            documented = ticked(page.attributes[key]["type"])[0]
            if documented.endswith("[]"):
                assert isinstance(value, (list, tuple)), f"{key} on {span_name!r} is {type(value).__name__}; the page says {documented}"
                assert all(type(item) is types[documented] for item in value), f"{key} on {span_name!r}: items are not {documented}"
            else:
                assert type(value) is types[documented], f"{key} on {span_name!r} is {type(value).__name__}; the page says {documented}"


def peak_measurable() -> bool:
    """Whether this platform gives operations a peak (the probe reports none where it cannot)."""
    window, _rss_start = PROBE.begin_peak()
    return PROBE.end_peak(window, PROBE.rss_bytes()) is not None


def test_every_span_attribute_on_the_page_was_emitted(page: Page, emitted: Emitted) -> None:
    seen = {key for attributes in emitted.span_attributes.values() for key in attributes}
    optional = set() if peak_measurable() else {names.ATTR_RSS_PEAK}
    assert set(page.attributes) - seen - optional == set(), "docs/telemetry.md lists span attributes the code did not emit"


def test_every_operation_carries_the_attributes_the_page_gives_it(page: Page, emitted: Emitted) -> None:
    every = page.attributes_set_on_every_operation()
    conditional = page.attributes_set_on_any_operation() - every
    for span_name, attributes in emitted.span_attributes.items():
        if span_name in constants("SPAN_").values():
            continue  # the package's own spans that are not profiled operations (the predecessor's report)
        assert every <= set(attributes), f"{span_name!r} lacks {sorted(every - set(attributes))}"
    assert package_operations() <= set(emitted.span_attributes), "the scenario must run every operation the package profiles"
    for operation in package_operations():
        carried = set(emitted.span_attributes[operation])
        listed = set(ticked(page.operations[operation]["span attributes besides every operation's"]))
        assert listed <= carried, f"{operation}: the page lists {sorted(listed - carried)}, not emitted"
        assert carried - every - conditional <= listed, f"{operation}: emits {sorted(carried - every - conditional - listed)}, not listed"
        for key in carried - every - conditional:
            assert operation in ticked(page.attributes[key]["set on"]), f"{key}: 'set on' does not name {operation}"
    for key, row in page.attributes.items():
        for operation in set(ticked(row["set on"])) & package_operations():
            assert key in emitted.span_attributes[operation], f"the page says {key} is set on {operation}; it was not"


def test_every_emitted_span_event_is_on_the_page_and_every_listed_one_was_emitted(page: Page, emitted: Emitted) -> None:
    assert set(emitted.events) == set(page.events)
    for event, keys in emitted.events.items():
        listed = set(page.event_attributes(event))
        assert keys <= listed, f"event {event!r} carries {sorted(keys - listed)}, not on the page"
        if event != OTEL_EXCEPTION_EVENT:  # the SDK decides the exception event's attributes
            assert listed <= keys, f"event {event!r}: the page lists {sorted(listed - keys)}, not emitted"


def not_measurable_here() -> set[str]:
    """Metrics this machine cannot give: no allocator reading, no accelerator framework, no memory cgroup."""
    absent = set() if PROBE.heap_bytes() is not None else {names.METRIC_HEAP[0]}
    readings = device_memory().readings()
    for metric, attribute in ((names.METRIC_DEVICE_USED, "used_bytes"), (names.METRIC_DEVICE_PEAK, "peak_bytes"), (names.METRIC_DEVICE_LIMIT, "limit_bytes")):
        if not any(getattr(reading, attribute) is not None for reading in readings):
            absent.add(metric[0])
    cgroup = memory_cgroup()
    reading = None if cgroup is None else cgroup.read()
    for metric, attribute in (
        (names.METRIC_CGROUP_USAGE, "usage_bytes"),
        (names.METRIC_CGROUP_WORKING_SET, "working_set_bytes"),
        (names.METRIC_CGROUP_LIMIT, "limit_bytes"),
        (names.METRIC_CGROUP_OOM_KILLS, "oom_kills"),
        (names.METRIC_CGROUP_PRESSURE, "pressure_stall_s"),
    ):
        if reading is None or getattr(reading, attribute) is None:
            absent.add(metric[0])
    # The conventions' names: in a container only, and for the GPUs NVML reads.
    for metric, attribute in ((names.METRIC_CONTAINER_MEMORY_USAGE, "usage_bytes"), (names.METRIC_CONTAINER_MEMORY_WORKING_SET, "working_set_bytes")):
        if not in_container() or reading is None or getattr(reading, attribute) is None:
            absent.add(metric[0])
    for metric, attribute in ((names.METRIC_HW_GPU_MEMORY_USAGE, "used_bytes"), (names.METRIC_HW_GPU_MEMORY_LIMIT, "limit_bytes")):
        if not any(reading.framework == "nvml" and getattr(reading, attribute) is not None for reading in readings):
            absent.add(metric[0])
    return absent


def test_every_emitted_metric_is_on_the_page_and_every_listed_one_was_emitted(page: Page, emitted: Emitted) -> None:
    optional = not_measurable_here()
    assert set(emitted.metrics) - set(page.metrics) == set(), "metrics emitted but missing from docs/telemetry.md"
    assert set(page.metrics) - set(emitted.metrics) - optional == set(), "metrics on docs/telemetry.md the code did not emit"
    for name, (unit, kind, keys) in emitted.metrics.items():
        row = page.metrics[name]
        assert ticked(row["unit"]) == [unit], f"{name}: emitted with unit {unit!r}, the page says {row['unit']}"
        assert row["kind"] == kind, f"{name}: emitted as {kind}, the page says {row['kind']}"
        assert keys == set(page.metric_labels(name)), f"{name}: emitted labels {sorted(keys)}, the page says {row['labels']}"


def test_every_series_on_the_page_is_in_the_exposition(page: Page, emitted: Emitted) -> None:
    lines = emitted.exposition.splitlines()
    for name, row in page.metrics.items():
        if name not in emitted.metrics:
            continue
        series = ticked(row["Prometheus series"])[0]
        wanted = series + "_bucket" if row["kind"] == "histogram" else series
        assert any(re.match(rf"{re.escape(wanted)}[{{ ]", line) for line in lines), f"{series} is not in the /metrics page"
        for label in page.metric_labels(name).values():
            assert any(line.startswith(wanted) and f"{label}=" in line for line in lines), f"{series} has no {label} label"
