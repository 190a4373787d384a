"""MemoryInstrumentor: in-process with real in-memory providers, and under opentelemetry-instrument."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import psutil
import pytest
import wrapt
from _children import free_port, scrape
from conftest import wait_for

from reer_otel_memory import _names as names
from reer_otel_memory import _telemetry
from reer_otel_memory.config import MB
from reer_otel_memory.errors import ConfigurationError
from reer_otel_memory.export.naming import COUNTER, HISTOGRAM, label_name, series_name
from reer_otel_memory.monitoring.monitor import get_memory_monitor
from reer_otel_memory.testing import TelemetryCapture

RSS = series_name(names.METRIC_RSS)
THRESHOLD = series_name(names.METRIC_THRESHOLD)
CLEANUPS = series_name(names.METRIC_CLEANUPS, COUNTER)
OPERATION_COUNT = series_name(names.METRIC_OPERATION_DURATION, HISTOGRAM) + "_count"
OPERATION_LABEL = label_name(names.LABEL_OPERATION)

# A service module: one of every kind of callable a target can name.
SERVICE_SOURCE = '''
import asyncio


def handle_request(size):
    return len(bytearray(size))


class Model:
    def __init__(self, scale=1):
        self.scale = scale

    def predict(self, value):
        return value * self.scale

    @staticmethod
    def tokenize(text):
        return text.split()

    @classmethod
    def load(cls):
        return cls(scale=2)

    async def apredict(self, value):
        await asyncio.sleep(0)
        return value * self.scale

    def stream(self, count):
        yield from range(count)


class TinyModel(Model):
    pass


LIMIT = 3
'''


def write_service(directory: Path) -> str:
    """A fresh, not yet imported service module in ``directory``; returns its name."""
    name = f"svc_{uuid.uuid4().hex[:10]}"
    (directory / f"{name}.py").write_text(SERVICE_SOURCE)
    return name


@pytest.fixture
def service_dir(tmp_path: Path):
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    before = set(sys.modules)
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in set(sys.modules) - before:
        if name.startswith("svc_"):
            del sys.modules[name]


def monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "reer-memory-monitor" and t.is_alive()]


def span_names(capture: TelemetryCapture) -> list[str]:
    return [span.name for span in capture.spans()]


# --- in-process --------------------------------------------------------------------------------


def test_instrument_binds_the_providers_starts_the_monitor_and_uninstrument_undoes_it(instrumentor, capture, service_dir):
    service = importlib.import_module(write_service(service_dir))
    originals = {name: service.Model.__dict__[name] for name in ("predict", "tokenize", "load", "apredict", "stream")}
    original_handle = service.handle_request
    chained: list[int] = []

    def previous_handler(signum, frame):
        chained.append(signum)

    previous_usr2 = signal.signal(signal.SIGUSR2, previous_handler)
    previous_telemetry = _telemetry.current()
    try:
        instrumentor.instrument(
            tracer_provider=capture.tracer_provider,
            meter_provider=capture.meter_provider,
            profile_targets=[f"{service.__name__}:{qualname}" for qualname in (
                "handle_request", "Model.predict", "Model.tokenize", "Model.load", "Model.apredict",
                "Model.stream", "TinyModel.predict",
            )],
            emergency_signal="USR2",
        )
        monitor = get_memory_monitor()
        assert monitor.is_running and len(monitor_threads()) == 1
        assert _telemetry.current().meter_provider is capture.meter_provider

        # The gauges are on the given meter provider, read at collection time.
        rss = capture.metric_value(names.METRIC_RSS[0])
        assert rss == pytest.approx(psutil.Process().memory_info().rss, rel=0.1)
        assert capture.metric_value(names.METRIC_THRESHOLD[0], level="alert") == monitor.threshold_bytes(monitor.level.ALERT)

        # Every kind of callable keeps working and is one span per call.
        assert service.handle_request(1000) == 1000
        model = service.Model.load()
        assert isinstance(model, service.Model) and model.scale == 2
        assert isinstance(service.TinyModel.load(), service.TinyModel)  # cls is still the class called
        assert model.predict(3) == 6
        assert service.Model.tokenize("a b") == ["a", "b"] and model.tokenize("c") == ["c"]
        assert asyncio.run(model.apredict(5)) == 10
        assert list(model.stream(3)) == [0, 1, 2]
        assert service.TinyModel(scale=3).predict(2) == 6
        prefix = service.__name__
        assert sorted(span_names(capture)) == sorted(f"{prefix}.{qualname}" for qualname in (
            "handle_request", "Model.load", "Model.load", "Model.predict", "Model.tokenize", "Model.tokenize",
            "Model.apredict", "Model.stream", "TinyModel.predict",
        ))
        span = capture.span(f"{prefix}.handle_request")
        assert span.attributes[names.ATTR_FUNCTION] == f"{prefix}.handle_request"
        assert capture.metric_points(names.METRIC_OPERATION_DURATION[0], reer_operation=f"{prefix}.Model.predict")

        # The emergency signal wakes the monitor for a cleanup and still reaches the old handler.
        before = monitor.cleanup_counts[names.TRIGGER_EMERGENCY]
        os.kill(os.getpid(), signal.SIGUSR2)
        wait_for(lambda: monitor.cleanup_counts[names.TRIGGER_EMERGENCY] > before, message="the emergency cleanup")
        assert chained == [signal.SIGUSR2]

        instrumentor.uninstrument()
        assert not monitor.is_running
        wait_for(lambda: not monitor_threads(), message="the monitor thread to end")
        assert _telemetry.current() is previous_telemetry
        assert signal.getsignal(signal.SIGUSR2) is previous_handler
        assert service.handle_request is original_handle
        for name, original in originals.items():
            assert service.Model.__dict__[name] is original
        assert "predict" not in service.TinyModel.__dict__
        assert instrumentor.wrapped_targets == []

        capture.clear()
        service.handle_request(10)
        service.Model.load().predict(1)
        assert span_names(capture) == []
    finally:
        signal.signal(signal.SIGUSR2, previous_usr2)


def test_a_target_is_wrapped_when_its_module_is_imported(instrumentor, capture, service_dir):
    name = write_service(service_dir)
    instrumentor.instrument(
        tracer_provider=capture.tracer_provider,
        meter_provider=capture.meter_provider,
        profile_targets=f"{name}:handle_request, {name}:Model.predict",
        start_monitor=False,
    )
    assert name not in sys.modules, "the instrumentor must not import the service's modules"
    assert instrumentor.pending_targets == [f"{name}:Model.predict", f"{name}:handle_request"]
    service = importlib.import_module(name)
    assert sorted(instrumentor.wrapped_targets) == [f"{name}:Model.predict", f"{name}:handle_request"]
    assert instrumentor.pending_targets == []
    service.handle_request(10)
    service.Model().predict(1)
    assert span_names(capture) == [f"{name}.handle_request", f"{name}.Model.predict"]


def test_a_pending_target_stays_unwrapped_after_uninstrument(instrumentor, capture, service_dir):
    name = write_service(service_dir)
    instrumentor.instrument(
        tracer_provider=capture.tracer_provider,
        meter_provider=capture.meter_provider,
        profile_targets=f"{name}:handle_request",
        start_monitor=False,
    )
    instrumentor.uninstrument()
    service = importlib.import_module(name)
    service.handle_request(10)
    assert span_names(capture) == []
    assert not hasattr(service.handle_request, "__wrapped__")


def test_uninstrument_leaves_a_replacement_alone_and_keeps_a_wrapper_added_on_top(instrumentor, capture, service_dir, caplog):
    service = importlib.import_module(write_service(service_dir))
    original_predict = service.Model.__dict__["predict"]
    instrumentor.instrument(
        tracer_provider=capture.tracer_provider,
        meter_provider=capture.meter_provider,
        profile_targets=[f"{service.__name__}:handle_request", f"{service.__name__}:Model.predict"],
        start_monitor=False,
    )

    def replacement(size):
        return -size

    service.handle_request = replacement
    outer_calls: list[tuple] = []

    def outer(wrapped, instance, args, kwargs):
        outer_calls.append(args)
        return wrapped(*args, **kwargs)

    wrapt.wrap_function_wrapper(service.Model, "predict", outer)
    with caplog.at_level(logging.WARNING, logger="reer_otel_memory"):
        instrumentor.uninstrument()
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"{service.__name__}:handle_request was replaced" in warnings[0], warnings
    assert service.handle_request is replacement
    assert service.Model(scale=2).predict(4) == 8
    assert outer_calls == [(4,)]
    assert span_names(capture) == []
    assert service.Model.__dict__["predict"].__wrapped__ is original_predict


def test_bad_targets_from_the_environment_log_one_line_each_and_are_skipped(instrumentor, capture, service_dir, monkeypatch, caplog):
    name = write_service(service_dir)
    monkeypatch.setenv(
        names.ENV_PROFILE_TARGETS,
        f"{name}:handle_request,no_colon_here,{name}:missing,{name}:Model,{name}:LIMIT,{name}:Nope.predict",
    )
    with caplog.at_level(logging.ERROR, logger="reer_otel_memory"):
        instrumentor.instrument(tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider, start_monitor=False)
        service = importlib.import_module(name)
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 5, errors
    for fragment, expected in (
        ("'no_colon_here'", "is not 'module:function'"),
        (f"'{name}:missing'", "has no attribute 'missing'"),
        (f"'{name}:Model'", "is a class"),
        (f"'{name}:LIMIT'", "not callable"),
        (f"'{name}:Nope.predict'", "has no attribute 'Nope'"),
    ):
        matching = [message for message in errors if fragment in message]
        assert len(matching) == 1 and expected in matching[0], (fragment, errors)
        assert names.ENV_PROFILE_TARGETS in matching[0]
    service.handle_request(10)
    assert span_names(capture) == [f"{name}.handle_request"]


def test_bad_arguments_in_code_raise_before_anything_changes(instrumentor, capture):
    previous = _telemetry.current()
    with pytest.raises(ConfigurationError, match="profile_targets: target 'nonsense'"):
        instrumentor.instrument(meter_provider=capture.meter_provider, profile_targets="nonsense")
    with pytest.raises(ConfigurationError, match="emergency_signal='SIGNOPE'"):
        instrumentor.instrument(meter_provider=capture.meter_provider, emergency_signal="SIGNOPE")
    assert _telemetry.current() is previous
    assert not instrumentor.is_instrumented_by_opentelemetry
    assert not monitor_threads()


def test_a_bad_emergency_signal_from_the_environment_leaves_the_handler_off(instrumentor, capture, monkeypatch, caplog):
    monkeypatch.setenv(names.ENV_EMERGENCY_SIGNAL, "KILL")
    with caplog.at_level(logging.ERROR, logger="reer_otel_memory"):
        instrumentor.instrument(meter_provider=capture.meter_provider, start_monitor=False)
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"{names.ENV_EMERGENCY_SIGNAL}='KILL'" in errors[0]
    assert instrumentor.emergency_signal is None


def test_emergency_handler_outside_the_main_thread_is_logged_not_raised(instrumentor, capture, caplog):
    failures: list[BaseException] = []

    def instrument_in_a_thread() -> None:
        try:
            instrumentor.instrument(meter_provider=capture.meter_provider, emergency_signal="USR2", start_monitor=False)
        except BaseException as exc:  # pragma: no cover - the assertion below reports it
            failures.append(exc)

    with caplog.at_level(logging.ERROR, logger="reer_otel_memory"):
        thread = threading.Thread(target=instrument_in_a_thread)
        thread.start()
        thread.join(30)
    assert failures == []
    assert instrumentor.emergency_signal is None
    assert any("emergency handler on SIGUSR2 not installed" in r.getMessage() and "main thread" in r.getMessage() for r in caplog.records)


# --- under opentelemetry-instrument ------------------------------------------------------------

CHILD_SOURCE = '''
import asyncio
import select
import sys

from opentelemetry import metrics

import {service}  # imported after instrumentation: its targets are wrapped on import

for _ in range(3):
    {service}.handle_request(4096)
    {service}.Model.tokenize("a b c")
    {service}.Model.load().predict(2)
asyncio.run({service}.Model().apredict(1))
metrics.get_meter("child").create_counter("child.ready").add(1)
print("ready", flush=True)
# Serve until the test closes stdin, waking twice a second as a server loop does: CPython runs a
# signal handler in the main thread between bytecodes, so a main thread blocked in a system call
# with no timeout would hold the emergency signal back until the call returned.
while not select.select([sys.stdin], [], [], 0.5)[0] or sys.stdin.read(1):
    pass
'''


class InstrumentedChild:
    """``opentelemetry-instrument python child.py`` with a Prometheus endpoint on a free port."""

    def __init__(self, directory: Path, env_overrides: dict[str, str]) -> None:
        launcher = Path(sys.executable).with_name("opentelemetry-instrument")
        assert launcher.exists(), "opentelemetry-distro (test extra) is not installed"
        self.service = write_service(directory)
        script = directory / f"child_{self.service}.py"
        script.write_text(CHILD_SOURCE.format(service=self.service))
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REER_MEMORY_", "OTEL_"))}
        env.update(
            OTEL_METRICS_EXPORTER="prometheus",
            OTEL_TRACES_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
            OTEL_SERVICE_NAME="reer-instrumented-child",
            OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1",
            OTEL_EXPORTER_PROMETHEUS_PORT=str(self.port),
        )
        env.update({k.replace("{service}", self.service): v.replace("{service}", self.service) for k, v in env_overrides.items()})
        self.process = subprocess.Popen(
            [str(launcher), sys.executable, str(script)],
            cwd=directory,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = f"http://127.0.0.1:{self.port}/metrics"

    def ready_scrape(self) -> dict[str, dict[frozenset, float]]:
        """A scrape taken once the child has made all its calls."""

        def ready():
            assert self.process.poll() is None, f"child exited: {self.process.communicate()}"
            try:
                samples = scrape(self.url)
            except OSError:
                return None
            return samples if "child_ready_total" in samples else None

        return wait_for(ready, timeout_s=60, interval_s=0.1, message=f"the child's {self.url}")

    def finish(self) -> tuple[int, str]:
        """Close stdin so the child ends; its exit status and stderr."""
        _, stderr = self.process.communicate(input="", timeout=30)
        return self.process.returncode, stderr

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=10)


@pytest.fixture
def children(tmp_path: Path):
    started: list[InstrumentedChild] = []

    def start(env_overrides: dict[str, str]) -> InstrumentedChild:
        child = InstrumentedChild(tmp_path, env_overrides)
        started.append(child)
        return child

    yield start
    for child in started:
        child.kill()


@pytest.mark.e2e
def test_under_opentelemetry_instrument_metrics_thresholds_targets_and_the_signal(children):
    child = children({
        names.ENV_ALERT_MB: "700",
        names.ENV_CLEANUP_MB: "800",
        names.ENV_CRITICAL_MB: "900.5",
        names.ENV_PROFILE_TARGETS: "{service}:handle_request,{service}:Model.tokenize,{service}:Model.load,"
        "{service}:Model.predict,{service}:Model.apredict",
        names.ENV_EMERGENCY_SIGNAL: "USR1",
    })
    samples = child.ready_scrape()
    rss_outside = psutil.Process(child.process.pid).memory_info().rss
    (rss_reported,) = samples[RSS].values()
    assert rss_reported == pytest.approx(rss_outside, rel=0.10)
    assert samples[THRESHOLD] == {
        frozenset({("level", "alert")}): 700 * MB,
        frozenset({("level", "cleanup")}): 800 * MB,
        frozenset({("level", "critical")}): int(900.5 * MB),
    }
    operations = {dict(labels)[OPERATION_LABEL]: count for labels, count in samples[OPERATION_COUNT].items()}
    service = child.service
    assert operations == {
        f"{service}.handle_request": 3,
        f"{service}.Model.tokenize": 3,
        f"{service}.Model.load": 3,
        f"{service}.Model.predict": 3,
        f"{service}.Model.apredict": 1,
    }

    emergency = frozenset({("trigger", names.TRIGGER_EMERGENCY)})
    assert samples[CLEANUPS][emergency] == 0
    child.process.send_signal(signal.SIGUSR1)
    wait_for(lambda: scrape(child.url)[CLEANUPS][emergency] == 1, message="the emergency cleanup on /metrics")

    status, stderr = child.finish()
    assert status == 0, stderr
    assert "Traceback" not in stderr


@pytest.mark.e2e
def test_disabled_through_otel_python_disabled_instrumentations(children):
    child = children({
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": names.INSTRUMENTATION_NAME,
        names.ENV_PROFILE_TARGETS: "{service}:handle_request",
    })
    samples = child.ready_scrape()
    assert "child_ready_total" in samples
    ours = sorted(name for name in samples if name.startswith("reer_"))
    assert ours == []
    status, stderr = child.finish()
    assert status == 0, stderr


@pytest.mark.e2e
def test_bad_configuration_logs_one_line_each_and_the_service_runs_on(children):
    child = children({
        names.ENV_ALERT_MB: "lots",
        names.ENV_CRITICAL_MB: "1500",
        names.ENV_PROFILE_TARGETS: "{service}:handle_request,{service}:missing,broken",
    })
    samples = child.ready_scrape()
    # The bad alert value falls back to its default (1000 MB); the good critical value is kept.
    assert samples[THRESHOLD] == {
        frozenset({("level", "alert")}): 1000 * MB,
        frozenset({("level", "cleanup")}): 1500 * MB,
        frozenset({("level", "critical")}): 1500 * MB,
    }
    operations = {dict(labels)[OPERATION_LABEL] for labels in samples[OPERATION_COUNT]}
    assert operations == {f"{child.service}.handle_request"}
    status, stderr = child.finish()
    assert status == 0, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    ours = [line for line in lines if "reer_otel_memory" in line]
    assert len(ours) == 3, stderr
    assert len([line for line in ours if f"{names.ENV_ALERT_MB}='lots'" in line]) == 1
    assert len([line for line in ours if f"'{child.service}:missing'" in line]) == 1
    assert len([line for line in ours if "'broken'" in line]) == 1


@pytest.mark.e2e
def test_overflowing_and_out_of_range_values_fall_back_and_the_service_runs_on(children):
    child = children({
        names.ENV_ALERT_MB: "1e308",
        names.ENV_MONITORING_INTERVAL: "1e10",
        names.ENV_RESET_PEAK: "maybe",
        names.ENV_PROFILE_TARGETS: "{service}:handle_request",
    })
    samples = child.ready_scrape()
    assert samples[THRESHOLD][frozenset({("level", "alert")})] == 1000 * MB
    assert {dict(labels)[OPERATION_LABEL] for labels in samples[OPERATION_COUNT]} == {f"{child.service}.handle_request"}
    status, stderr = child.finish()
    assert status == 0, stderr
    assert "Traceback" not in stderr
    ours = [line for line in stderr.splitlines() if "reer_otel_memory" in line]
    assert len([line for line in ours if f"{names.ENV_ALERT_MB}='1e308'" in line and f"{names.ENV_MONITORING_INTERVAL}='1e10'" in line]) == 1, stderr
    assert len([line for line in ours if f"{names.ENV_RESET_PEAK}='maybe'" in line]) == 1, stderr
