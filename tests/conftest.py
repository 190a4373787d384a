"""Shared fixtures: real in-memory SDK providers through reer_otel_memory.testing."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _procfs import ProcDir

from reer_otel_memory import get_memory_tracker
from reer_otel_memory.testing import TelemetryCapture, capture_telemetry, reset_state

# The `children` fixture (child processes killed after each test) lives with its helpers.
pytest_plugins = ["_children"]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# A leak verdict in one test must not leave a tracing window running into the next: tests that
# want explanations build their own AutoExplainer (child processes inherit this; tests of the
# variable set it themselves).
os.environ.setdefault("REER_MEMORY_EXPLAIN", "off")


@pytest.fixture(autouse=True)
def fresh_package_state() -> Iterator[None]:
    """Each test leaves the package's process-wide state as a fresh import leaves it."""
    yield
    reset_state()


@pytest.fixture
def telemetry() -> Iterator[TelemetryCapture]:
    """Profiled operations report to fresh in-memory providers; the tracker starts empty."""
    get_memory_tracker().clear()
    with capture_telemetry() as capture:
        yield capture


def require_binary(name: str) -> str:
    """Path of an external binary; skip without it, except in CI where its absence is a failure."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed; .ci/run must install it")
        pytest.skip(f"{name} is not installed")
    return path


def wait_for(condition: Callable[[], object], timeout_s: float = 10.0, interval_s: float = 0.02, message: str = "") -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {message or condition}")
        time.sleep(interval_s)


@pytest.fixture
def proc(tmp_path: Path) -> Iterator[ProcDir]:
    """A fake /proc/<pid> under tmp_path whose figures the test sets (tests/_procfs.py)."""
    proc_dir = ProcDir(tmp_path)
    yield proc_dir
    proc_dir.close()


@pytest.fixture
def capture() -> Iterator[TelemetryCapture]:
    """Fresh in-memory providers, not bound to the package: for code that is given them."""
    capture = TelemetryCapture()
    yield capture
    capture.shutdown()


@pytest.fixture
def instrumentor(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """The instrumentor, uninstrumented afterwards; no REER_MEMORY_* that it reads set from outside;
    the default monitor stopped before and after."""
    from reer_otel_memory import _names as names
    from reer_otel_memory.instrumentation import MemoryInstrumentor
    from reer_otel_memory.monitoring.monitor import stop_memory_monitoring

    for var in (names.ENV_PROFILE_TARGETS, names.ENV_EMERGENCY_SIGNAL, names.ENV_SERVER_SPANS):
        monkeypatch.delenv(var, raising=False)
    stop_memory_monitoring()
    instance = MemoryInstrumentor()
    yield instance
    instance.uninstrument()
    stop_memory_monitoring()
