"""The /metrics endpoint as an HTTP server: gzip, HEAD, 405, bursts, idle, slow and flooding clients, hang-ups.

Real sockets against a real endpoint (in this process, or in a child where the host's stderr is
what is checked). The only timing asserted is the one a scraper has: a scrape under slow clients
is answered within a few seconds (Prometheus gives up after 10); a burst of 64 scrapes must all
be answered correctly (``make bench`` measures how fast).
"""

from __future__ import annotations

import gzip
import http.client
import socket
import struct
import threading
import time

import psutil
import pytest
from conftest import wait_for
from prometheus_client.parser import text_string_to_metric_families

from reer_otel_memory import ConfigurationError, memory_context, start_prometheus_exporter
from reer_otel_memory.export.endpoint import MAX_REQUEST_HEAD_BYTES, gzip_accepted, serve_registry


@pytest.fixture
def endpoint():
    with memory_context("endpoint_http_test"):
        pass
    started = start_prometheus_exporter(port=0, connection_timeout_s=30.0, max_connections=4)
    try:
        yield started
    finally:
        started.shutdown()


def request(endpoint, method: str = "GET", path: str = "/metrics", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=30)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def series_names(page: bytes) -> set[str]:
    return {sample.name for family in text_string_to_metric_families(page.decode()) for sample in family.samples}


def test_gzip_is_sent_when_the_scraper_accepts_it_and_decodes_to_the_plain_page(endpoint) -> None:
    status, headers, plain = request(endpoint)
    assert status == 200 and "content-encoding" not in headers
    status, headers, body = request(endpoint, headers={"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["content-encoding"] == "gzip"
    assert headers["vary"] == "Accept-Encoding"
    assert int(headers["content-length"]) == len(body) < len(plain)
    assert series_names(gzip.decompress(body)) == series_names(plain)
    assert "reer_memory_rss_bytes" in series_names(plain)


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("gzip", True),
        ("deflate, GZIP;q=0.5", True),
        ("identity", False),
        ("gzip;q=0", False),
        ("", False),
        (None, False),
        ("x-gzip", False),
    ],
)
def test_accept_encoding_is_read_like_prometheus_client_with_q_zero_refusing(header, accepted) -> None:
    assert gzip_accepted(header) is accepted


def test_head_answers_the_headers_of_get_without_a_body(endpoint) -> None:
    status, headers, body = request(endpoint, "HEAD")
    assert status == 200
    assert body == b""
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert int(headers["content-length"]) > 0


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "FOO", "PROPFIND"])
def test_other_methods_are_refused_with_405_and_the_allowed_ones(endpoint, method) -> None:
    status, headers, body = request(endpoint, method)
    assert status == 405
    assert headers["allow"] == "GET, HEAD"
    assert method.encode() in body


def test_other_paths_are_404(endpoint) -> None:
    assert request(endpoint, path="/nothing")[0] == 404


def test_64_simultaneous_scrapes_are_all_answered_with_the_whole_page(endpoint) -> None:
    # 64 connections opened at once against 4 connection threads: the others wait in the backlog.
    results: list[tuple[int, set[str]]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(64)

    def scrape() -> None:
        try:
            barrier.wait(30)
            status, headers, body = request(endpoint, headers={"Accept-Encoding": "gzip"})
            results.append((status, series_names(gzip.decompress(body))))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=scrape) for _ in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len(results) == 64
    assert all(status == 200 and "reer_memory_rss_bytes" in names for status, names in results)


def server_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith("reer-memory-metrics")}


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.slow
def test_idle_clients_take_no_thread_at_most_max_connections_slots_and_are_closed_after_the_request_timeout() -> None:
    before = server_threads()
    endpoint = start_prometheus_exporter(port=0, request_timeout_s=0.5, max_connections=3)
    idle = []
    try:
        assert len(server_threads() - before) == 2  # one serves every connection, one renders
        for _ in range(12):
            idle.append(socket.create_connection((endpoint.host, endpoint.port), timeout=30))
        wait_for(lambda: endpoint.open_connections == 3, timeout_s=10, message="3 open connections for 12 idle clients")
        assert len(server_threads() - before) == 2
        # Each idle client is closed after the request timeout (or for a newcomer once it waited a
        # second): a real scrape queued behind all of them is answered.
        status, _, body = request(endpoint)
        assert status == 200 and b"reer_memory_rss_bytes" in body
        for sock in idle:
            assert sock.recv(1) == b""  # the server closed it, sending nothing
        assert endpoint.open_connections <= 3
        assert len(server_threads() - before) == 2
    finally:
        for sock in idle:
            sock.close()
        endpoint.shutdown()
    wait_for(lambda: not (server_threads() - before), timeout_s=10, message="the server's threads to end")


def test_a_request_that_does_not_arrive_within_the_request_timeout_is_answered_408_and_closed() -> None:
    endpoint = start_prometheus_exporter(port=0, request_timeout_s=0.5)
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=30) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # the blank line never comes
            answer = read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 408 ")
    finally:
        endpoint.shutdown()


class SlowClients:
    """Clients that each send one header byte per ``interval_s`` and never finish, reconnecting when closed."""

    def __init__(self, host: str, port: int, count: int, interval_s: float) -> None:
        self.address = (host, port)
        self.interval_s = interval_s
        self.stop = threading.Event()
        self.sockets = [self.connect() for _ in range(count)]
        self.reconnects = 0
        self.thread = threading.Thread(target=self.dribble, daemon=True)
        self.thread.start()

    def connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=10)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        return sock

    def dribble(self) -> None:
        while not self.stop.wait(self.interval_s):  # the attackers' pace, not a synchronisation
            for index, sock in enumerate(self.sockets):
                try:
                    sock.sendall(b"a")
                except OSError:
                    sock.close()
                    self.sockets[index] = self.connect()
                    self.reconnects += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        for sock in self.sockets:
            sock.close()


def test_slow_clients_dribbling_headers_cannot_starve_a_scrape() -> None:
    # More slow clients than connection slots, each sending one header byte every half second and
    # reconnecting when closed: each scrape is still answered within a few seconds, well inside
    # Prometheus' default 10 s scrape timeout. (A timeout per recv let them hold the server for ever.)
    endpoint = start_prometheus_exporter(port=0, max_connections=16)
    slow = SlowClients(endpoint.host, endpoint.port, count=24, interval_s=0.5)
    try:
        wait_for(lambda: endpoint.open_connections == 16, timeout_s=10, message="the slow clients to fill every slot")
        for _ in range(3):
            started = time.monotonic()
            connection = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=8)
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            body = response.read()
            connection.close()
            took = time.monotonic() - started
            assert response.status == 200 and b"reer_memory_rss_bytes" in body
            assert took < 4.0, f"a scrape took {took:.1f}s with slow clients connected"
        assert endpoint.open_connections <= 16
    finally:
        slow.close()
        endpoint.shutdown()


def test_headers_beyond_the_cap_are_answered_431_at_once() -> None:
    endpoint = start_prometheus_exporter(port=0)
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=30) as sock:
            # Twice the cap, in lines the standard library would each accept, and then nothing:
            # the answer comes without waiting for the end of the headers.
            line = b"X-Big: " + b"a" * 60_000 + b"\r\n"
            sock.sendall(b"GET /metrics HTTP/1.1\r\n" + line * 3)
            assert len(line) * 3 > 2 * MAX_REQUEST_HEAD_BYTES
            answer = read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 431 ")
    finally:
        endpoint.shutdown()


def test_a_header_flood_on_many_connections_keeps_the_servers_memory_bounded() -> None:
    # 16 connections each sending 8 MB of header lines of 64 kB (128 MB in all): each gets 431, and the
    # process's RSS stays within a few MiB of where it was, as the server keeps at most the cap per
    # connection.
    process = psutil.Process()
    flood = b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-Flood-%03d: %s\r\n" % (i, b"f" * 64_000) for i in range(128))
    endpoint = start_prometheus_exporter(port=0)
    answers: list[bytes] = []
    peak = baseline = process.memory_info().rss
    done = threading.Event()

    def flooder() -> None:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=30) as sock:
            sender = threading.Thread(target=send_quietly, args=(sock, flood), daemon=True)
            sender.start()
            answers.append(read_answer(sock))
            sender.join(30)

    try:
        flooders = [threading.Thread(target=flooder) for _ in range(16)]
        for thread in flooders:
            thread.start()
        while any(thread.is_alive() for thread in flooders):
            peak = max(peak, process.memory_info().rss)
            done.wait(0.005)  # a sampling period, not a synchronisation
        for thread in flooders:
            thread.join(30)
    finally:
        endpoint.shutdown()
    assert len(answers) == 16
    assert all(answer.startswith(b"HTTP/1.1 431 ") for answer in answers)
    assert peak - baseline < 24 * 2**20, f"RSS grew {(peak - baseline) / 2**20:.1f} MiB under a 128 MB header flood"


def send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass  # the server answered and closed before the flood ended


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("connection_timeout_s", 0),
        ("connection_timeout_s", "5"),
        ("request_timeout_s", -1),
        ("request_timeout_s", float("inf")),
        ("max_connections", 0),
        ("max_connections", 2.5),
    ],
)
def test_bad_server_settings_are_refused_naming_them(keyword, value) -> None:
    with pytest.raises(ConfigurationError, match=keyword):
        start_prometheus_exporter(port=0, **{keyword: value})


HANGING_UP_CHILD = """
import json, logging, sys
from reer_otel_memory import memory_context, start_prometheus_exporter
logging.basicConfig(level=logging.INFO)  # the host logs INFO and up to stderr
for index in range(200):
    with memory_context(f"op_{index}"):
        pass
endpoint = start_prometheus_exporter(port=0)
print(json.dumps({"port": endpoint.port}), flush=True)
sys.stdin.readline()
print(json.dumps({"served": True}), flush=True)
sys.stdin.readline()
"""


def test_a_client_hanging_up_early_leaves_no_traceback_on_the_hosts_stderr(children) -> None:
    child = children.start(HANGING_UP_CHILD)
    port = child.message()["port"]
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.close()
    half = socket.create_connection(("127.0.0.1", port), timeout=10)
    half.sendall(b"GET /metr")  # hangs up in the middle of the request line
    half.close()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics")
    assert connection.getresponse().status == 200
    connection.close()
    child.send("")
    child.message(lambda m: "served" in m)
    assert "Traceback" not in child.stderr
    assert "Error" not in child.stderr, child.stderr


def test_serve_registry_serves_a_prometheus_client_registry_with_the_same_bounds(monkeypatch) -> None:
    from prometheus_client import CollectorRegistry, Counter
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    monkeypatch.delenv("OTEL_EXPORTER_PROMETHEUS_HOST", raising=False)
    registry = CollectorRegistry()
    Counter("demo_requests", "Requests served.", registry=registry).inc(3)
    served = serve_registry(registry, port=0, request_timeout_s=0.5, max_connections=2)
    try:
        assert served.host == "127.0.0.1"
        status, headers, body = request(served, headers={"Accept-Encoding": "gzip"})
        assert status == 200
        assert headers["content-type"] == CONTENT_TYPE_LATEST
        families = {family.name: family for family in text_string_to_metric_families(body.decode())}
        assert {name.removesuffix("_created") for name in families} == {"demo_requests"}  # that registry only
        assert families["demo_requests"].samples[0].value == 3.0
        status, headers, _ = request(served, "FOO")
        assert status == 405 and headers["allow"] == "GET, HEAD"
        with socket.create_connection((served.host, served.port), timeout=30) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
            assert read_answer(sock).startswith(b"HTTP/1.1 408 ")
    finally:
        served.shutdown()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((served.host, served.port), timeout=5).close()


def test_serve_registry_refuses_what_is_not_a_registry() -> None:
    with pytest.raises(ConfigurationError, match="registry"):
        serve_registry(object(), port=0)  # type: ignore[arg-type]
