"""The /metrics endpoint as an HTTP server: gzip, HEAD, 405, bursts, idle clients, hang-ups.

Real sockets against a real endpoint (in this process, or in a child where the host's stderr is
what is checked). No timing is asserted: a burst of 64 scrapes must all be answered correctly
(``make bench`` measures how fast).
"""

from __future__ import annotations

import gzip
import http.client
import socket
import struct
import threading

import pytest
from conftest import wait_for
from prometheus_client.parser import text_string_to_metric_families

from reer_otel_memory import ConfigurationError, memory_context, start_prometheus_exporter
from reer_otel_memory.export.endpoint import gzip_accepted


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


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
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


def connection_threads(besides: frozenset[threading.Thread] = frozenset()) -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "reer-memory-metrics-connection" and thread not in besides)


def test_idle_connections_take_at_most_max_connections_threads_and_are_closed_after_the_timeout() -> None:
    # Connection threads other endpoints of this process still run (their clients' hang-ups are
    # seen after those tests end) are not this endpoint's.
    earlier = frozenset(thread for thread in threading.enumerate() if thread.name == "reer-memory-metrics-connection")
    endpoint = start_prometheus_exporter(port=0, connection_timeout_s=0.5, max_connections=3)
    idle = []
    try:
        for _ in range(12):
            idle.append(socket.create_connection((endpoint.host, endpoint.port), timeout=30))
        wait_for(lambda: connection_threads(earlier) == 3, timeout_s=10, message="3 connection threads for 12 idle clients")
        assert connection_threads(earlier) == 3
        # Each idle client is closed after its timeout and the next one gets the thread: a real
        # scrape queued behind all of them is answered.
        status, _, body = request(endpoint)
        assert status == 200 and b"reer_memory_rss_bytes" in body
        for sock in idle:
            assert sock.recv(1) == b""  # the server closed it
        wait_for(lambda: connection_threads(earlier) == 0, timeout_s=10, message="the connection threads to end")
    finally:
        for sock in idle:
            sock.close()
        endpoint.shutdown()


@pytest.mark.parametrize(("keyword", "value"), [("connection_timeout_s", 0), ("connection_timeout_s", "5"), ("max_connections", 0), ("max_connections", 2.5)])
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
