"""Child processes for the monitor, emergency and exporter tests: scripts that print JSON lines.

A test writes a script, starts it with this interpreter and a clean environment (no
``REER_MEMORY_*`` or ``OTEL_*`` of the test run leaks in), and reads its JSON lines with a
deadline. Every child is killed when the test ends.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

MB = 1024 * 1024


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REER_MEMORY_", "OTEL_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def free_port() -> int:
    """A loopback port free now, for a server that cannot report the one it picked itself."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(url: str) -> dict[str, dict[frozenset, float]]:
    """A ``/metrics`` page parsed: sample name -> {labels (without otel_scope ones): value}."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, dict[frozenset, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset((k, v) for k, v in sample.labels.items() if not k.startswith("otel_scope"))
            samples[sample.name][labels] = sample.value
    return samples


class Child:
    """A Python child running ``source``; its stdout JSON lines arrive in :meth:`message`."""

    def __init__(self, directory: Path, source: str, env: Mapping[str, str] | None = None, name: str = "child") -> None:
        self.script = directory / f"{name}.py"
        self.script.write_text(textwrap.dedent(source))
        self.process = subprocess.Popen(
            [sys.executable, str(self.script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_environment(env),
        )
        self.pid = self.process.pid
        self._messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stdout_done = threading.Event()
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.strip()
            if line.startswith("{"):
                self._messages.put(json.loads(line))
        self._stdout_done.set()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)

    def message(self, where: Callable[[dict[str, Any]], bool] = lambda m: True, timeout_s: float = 20.0) -> dict[str, Any]:
        """The next JSON line satisfying ``where`` (earlier ones are dropped)."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no message from {self.script.name} within {timeout_s}s; stderr:\n{self.stderr}")
            try:
                message = self._messages.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                if self._stdout_done.is_set() and self._messages.empty():
                    self.process.wait(10)
                    raise AssertionError(
                        f"{self.script.name} exited with {self.process.returncode}; stderr:\n{self.stderr}"
                    ) from None
                continue
            if where(message):
                return message

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def wait(self, timeout_s: float = 20.0) -> int:
        return self.process.wait(timeout_s)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


class Children:
    """Starts children for one test and kills them all at its end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Child] = []

    def start(self, source: str, env: Mapping[str, str] | None = None, name: str = "child") -> Child:
        child = Child(self.directory, source, env, f"{name}{len(self.started)}")
        self.started.append(child)
        return child

    def close(self) -> None:
        for child in self.started:
            child.close()


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    """Start child processes with ``children.start(source, env)``; all are killed afterwards."""
    started = Children(tmp_path)
    try:
        yield started
    finally:
        started.close()
