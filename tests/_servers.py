"""A real server started by ``opentelemetry-instrument``, its app in a temporary directory.

The shared part of the pre-fork, signal and framework tests: the app's files written, the
server in a session of its own (so the whole group stops together), its output in
``server.log``, ``/metrics`` on a free port served by the OpenTelemetry Prometheus exporter.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import psutil
from _children import clean_environment, free_port, scrape

from reer_otel_memory import _names as names

BIN = Path(sys.executable).parent


class InstrumentedServer:
    """``command`` (its parts formatted with ``port``, the HTTP port, and ``formats``) run under
    ``opentelemetry-instrument`` with ``env`` on top of the exporter's settings."""

    def __init__(
        self, tmp_path: Path, files: Mapping[str, str], command: list[str], env: Mapping[str, str],
        traces: str = "none", **formats: object,
    ) -> None:
        for relative, source in files.items():
            path = tmp_path / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source))
        self.metrics_port = free_port()
        self.http_port = free_port()
        environment = clean_environment(
            {
                "PYTHONPATH": str(tmp_path),
                "OTEL_METRICS_EXPORTER": "prometheus",
                "OTEL_TRACES_EXPORTER": traces,
                "OTEL_LOGS_EXPORTER": "none",
                "OTEL_EXPORTER_PROMETHEUS_PORT": str(self.metrics_port),
                **env,
            }
        )
        self.log = (tmp_path / "server.log").open("w+")
        self.process = subprocess.Popen(
            [str(BIN / "opentelemetry-instrument"), *[part.format(port=self.http_port, **formats) for part in command]],
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            start_new_session=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as response:
            return bytes(response.read())

    def workers(self) -> set[int]:
        """The live worker processes (uvicorn's spawn start also runs a resource tracker: not a worker)."""
        found = set()
        for child in psutil.Process(self.process.pid).children():
            try:
                if "resource_tracker" not in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                    found.add(child.pid)
            except psutil.Error:
                pass
        return found

    def by_pid(self, name: str, **labels: str) -> dict[int, float]:
        """``name``'s values on the page by ``pid``, for the series with ``labels``."""
        found = {}
        for label_set, value in scrape(self.url).get(name, {}).items():
            label_map = dict(label_set)
            if names.LABEL_PID in label_map and all(label_map.get(k) == v for k, v in labels.items()):
                found[int(label_map[names.LABEL_PID])] = value
        return found

    def page_total(self, name: str, **labels: str) -> float:
        """``name`` on the page, summed over the series with ``labels``."""
        samples = scrape(self.url).get(name, {})
        return sum(value for label_set, value in samples.items() if all(dict(label_set).get(k) == v for k, v in labels.items()))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.close()
