"""reer-otel-memory demo: a real process whose /metrics shows alerts and cleanups happening."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest
from _children import scrape
from conftest import wait_for

from reer_otel_memory import _names as names
from reer_otel_memory.export.naming import COUNTER, HISTOGRAM, label_name, series_name

ALERTS = series_name(names.METRIC_ALERTS, COUNTER)
CLEANUPS = series_name(names.METRIC_CLEANUPS, COUNTER)
FREED = series_name(names.METRIC_CLEANUP_FREED, COUNTER)
PEAK_RSS = series_name(names.METRIC_PEAK_RSS)
DURATION = series_name(names.METRIC_OPERATION_DURATION, HISTOGRAM)
GiB = 1 << 30


class Demo:
    """The demo in a child process, its output collected line by line as it comes."""

    def __init__(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REER_MEMORY_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reer_otel_memory", "demo", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def url(self) -> str:
        def announced() -> str | None:
            for line in list(self.lines):
                if "/metrics at " in line:
                    return line.split("/metrics at ", 1)[1].strip()
            assert self.process.poll() is None, f"demo exited early: {self.lines}"
            return None

        return wait_for(announced, timeout_s=30, message="the demo to announce its /metrics URL")

    def output(self) -> str:
        self._reader.join(10)
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def total(samples: dict[str, dict[frozenset, float]], name: str) -> float:
    return sum(samples.get(name, {}).values())


@pytest.mark.slow
def test_demo_climbs_through_the_levels_with_real_alerts_and_cleanups():
    demo = Demo("--duration", "120")
    try:
        url = demo.url()

        def alerted_and_cleaned() -> dict | None:
            samples = scrape(url)
            if total(samples, ALERTS) > 0 and total(samples, CLEANUPS) > 0:
                return samples
            return None

        samples = wait_for(alerted_and_cleaned, timeout_s=60, interval_s=0.25, message="alerts and cleanups on /metrics")
        assert samples[ALERTS][frozenset({("level", "alert")})] >= 1
        assert samples[CLEANUPS][frozenset({("trigger", "threshold")})] >= 1
        assert total(samples, FREED) > 0, "the cleanup freed no memory"
        batches = samples[f"{DURATION}_count"][frozenset({(label_name(names.LABEL_OPERATION), "demo.process_batch")})]
        assert batches > 0
        assert total(samples, PEAK_RSS) < GiB

        demo.process.send_signal(signal.SIGINT)
        assert demo.process.wait(30) == 0
        output = demo.output()
        assert "stopped by SIGINT" in output
        assert "Traceback" not in output
    finally:
        demo.kill()


def test_demo_ends_by_itself_after_its_duration():
    demo = Demo("--duration", "1", "--quiet")
    try:
        assert demo.process.wait(60) == 0
        output = demo.output()
        assert "stopped by --duration" in output
        assert "Traceback" not in output
    finally:
        demo.kill()


def test_demo_exits_cleanly_on_sigterm():
    demo = Demo("--quiet")
    try:
        url = demo.url()
        wait_for(lambda: scrape(url).get(series_name(names.METRIC_RSS)), timeout_s=30, message="the first scrape")
        demo.process.send_signal(signal.SIGTERM)
        assert demo.process.wait(30) == 0
        assert "stopped by SIGTERM" in demo.output()
    finally:
        demo.kill()


def test_a_taken_port_is_a_clear_error():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "reer_otel_memory", "demo", "--port", str(port), "--duration", "1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
