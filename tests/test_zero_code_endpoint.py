"""The zero-code ``/metrics`` (opentelemetry-instrument, OTEL_METRICS_EXPORTER=prometheus) is the bounded endpoint.

A plain single-process service and a gunicorn parent, both under real ``opentelemetry-instrument``:
16 clients dribbling header bytes hold no thread and a scrape still answers within seconds; an
unknown method is answered 405 with the bounded server's `Allow` (prometheus_client's own server takes a thread per client).
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from _children import clean_environment, free_port, scrape
from conftest import wait_for
from test_prefork import BIN, RSS, Server, baseline_alert_mb, every_worker_appears

SLOW_CLIENTS = 16
BOUNDED_ALLOW = "GET, HEAD"
#: A scrape while the slow clients dribble: the page renders in milliseconds; this is the bound.
SCRAPE_BOUND_S = 3.0


class Dribblers:
    """``count`` connections that each send one byte of a request head every 0.2 s and never finish it."""

    def __init__(self, port: int, count: int) -> None:
        self.sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
        self.sent = 0  # bytes sent on each connection
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._dribble, daemon=True)
        self._thread.start()

    def _dribble(self) -> None:
        head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
        position = 0
        while not self._stop.wait(0.05 if self.sent < 3 else 0.2):
            for sock in self.sockets:
                try:
                    sock.send(head[position : position + 1])
                except OSError:
                    pass  # closed by the server's deadline: as a real slow client, it just fails
            position = (position + 1) % len(head)
            self.sent += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.sockets:
            sock.close()


def method_status(port: int, method: str) -> tuple[int, str | None]:
    """The status and ``Allow`` header of a ``method`` request (the bounded server allows "GET, HEAD", prometheus_client's "OPTIONS,GET")."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, "/metrics")
        response = connection.getresponse()
        return response.status, response.getheader("Allow")
    finally:
        connection.close()


def assert_bounded(pid: int, port: int) -> None:
    """Slow clients cost no thread and do not delay a scrape; unknown methods get 405."""
    process = psutil.Process(pid)
    threads_before = process.num_threads()
    dribblers = Dribblers(port, SLOW_CLIENTS)
    try:
        wait_for(lambda: process.num_threads() > threads_before + 2 or dribblers.sent >= 3, message="slow clients dribbling")
        slowest_s = 0.0
        for _ in range(3):
            started = time.monotonic()
            page = scrape(f"http://127.0.0.1:{port}/metrics")
            took_s = time.monotonic() - started
            slowest_s = max(slowest_s, took_s)
            assert RSS in page
            assert took_s < SCRAPE_BOUND_S, f"a scrape took {took_s:.2f} s beside {SLOW_CLIENTS} slow clients"
        threads_during = process.num_threads()
        print(f"{SLOW_CLIENTS} slow clients: slowest of 3 scrapes {slowest_s * 1000:.0f} ms, threads {threads_before} -> {threads_during}")
        assert threads_during <= threads_before + 2, f"threads {threads_before} -> {threads_during} with {SLOW_CLIENTS} slow clients"
    finally:
        dribblers.close()
    assert method_status(port, "DELETE") == (405, BOUNDED_ALLOW)
    assert method_status(port, "HEAD")[0] == 200


@pytest.fixture
def single_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    (tmp_path / "app.py").write_text("import sys\nsys.stdin.read()\n")
    env = clean_environment(
        {
            "OTEL_METRICS_EXPORTER": "prometheus",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_EXPORTER_PROMETHEUS_PORT": str(port),
        }
    )
    process = subprocess.Popen(
        [str(BIN / "opentelemetry-instrument"), str(BIN / "python"), "app.py"],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process, port
    finally:
        process.kill()
        output, _ = process.communicate(timeout=10)
        assert "Traceback" not in output, output


def answers(port: int) -> bool:
    try:
        return RSS in scrape(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return False


@pytest.mark.e2e
def test_a_single_process_service_gets_the_bounded_endpoint(single_process: tuple[subprocess.Popen[str], int]) -> None:
    process, port = single_process
    wait_for(lambda: answers(port), timeout_s=30, interval_s=0.1, message="the service's /metrics")
    assert process.poll() is None
    assert_bounded(process.pid, port)


@pytest.mark.e2e
def test_a_gunicorn_parent_page_is_the_bounded_endpoint(tmp_path: Path) -> None:
    server = Server(tmp_path, [str(BIN / "gunicorn"), "-w", "1", "-b", "127.0.0.1:{port}", "toyapp:wsgi"], baseline_alert_mb())
    try:
        workers = every_worker_appears(server, 1)
        assert_bounded(server.process.pid, server.metrics_port)
        assert server.pids(RSS) == workers | {server.process.pid}
        assert "Traceback" not in server.output()
    finally:
        server.stop()


def test_the_hand_over_and_back_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exporter's server on a port: taken over by the bounded server, then given back on uninstrument."""
    from prometheus_client import start_http_server

    from reer_otel_memory.export import zero_code

    port = free_port()
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "prometheus")
    monkeypatch.setenv("OTEL_EXPORTER_PROMETHEUS_PORT", str(port))
    stock, _ = start_http_server(port, addr="127.0.0.1")
    assert method_status(port, "DELETE")[1] != BOUNDED_ALLOW
    endpoint = zero_code.serve_exporter_registry_bounded()
    assert endpoint is not None and endpoint.port == port
    try:
        wait_for(lambda: stock not in zero_code.stock_servers(), timeout_s=5, message="prometheus_client's server stopped")
        for _ in range(5):  # every connection now reaches the bounded server
            assert method_status(port, "DELETE") == (405, BOUNDED_ALLOW)
    finally:
        zero_code.give_back(endpoint)
    assert method_status(port, "DELETE")[1] != BOUNDED_ALLOW
    restored = [server for server in zero_code.stock_servers() if server.server_address[1] == port]  # type: ignore[attr-defined]
    assert len(restored) == 1
    restored[0].shutdown()
    restored[0].server_close()
