"""The Prometheus endpoint: every ``reer.memory.*`` metric on ``http://127.0.0.1:9464/metrics``.

    from reer_otel_memory import start_prometheus_exporter, start_memory_monitoring

    endpoint = start_prometheus_exporter()       # or port=0 for any free port
    start_memory_monitoring()
    print(endpoint.url)                          # http://127.0.0.1:9464/metrics
    ...
    endpoint.shutdown()

The address comes from the arguments, else ``OTEL_EXPORTER_PROMETHEUS_HOST`` /
``OTEL_EXPORTER_PROMETHEUS_PORT`` (the variables the OpenTelemetry Prometheus exporter reads),
else ``127.0.0.1:9464``: loopback only unless configured otherwise. A port that is taken raises
OSError naming the host and port.

Behind it is a pull reader on an SDK ``MeterProvider``. While the global meter provider is
still the API's default proxy, that provider becomes the global one, so other instrumentations
(system metrics, HTTP servers, ...) appear on the same page. If an SDK provider is already
installed, a reader cannot be added to it, so a private provider carries this package's
instruments instead (the package is rebound to it). Further endpoints (other ports) serve the
same metrics.

Each scrape collects once and writes the text format straight from the OpenTelemetry data
(:class:`reer_otel_memory.export.exposition.CumulativeText`): the same series, names and bytes
as ``PrometheusMetricReader`` with ``generate_latest`` would give (without ``otel_scope_*``
labels). Histograms are collected as deltas and summed into running totals, so the SDK builds
points only for the series recorded to since the last scrape. With 100 profiled operations
(about 3,000 lines, mostly histogram buckets) a scrape takes well under 10 ms on a small machine
(``python -m benchmarks monitor``).

Every gauge is read when the page is scraped, so RSS and level are current even if no monitor
thread runs; the counters need a running monitor to move.

It behaves like a production endpoint: ``GET`` and ``HEAD`` (other methods: 405), gzip when the
scraper accepts it (Prometheus always asks), HTTP/1.1 keep-alive, a listen backlog of
``LISTEN_BACKLOG``, at most ``max_connections`` connection threads (the rest wait in the
backlog, so idle clients cannot pile up threads) each closed after ``connection_timeout_s`` of
silence, and scrapes that arrive while a collection runs share the next one, so a burst of 64
scrapes costs a few collections. A client that hangs up early is logged at debug level, never
as a traceback on the host's stderr.

The HTTP server is a daemon thread and does not survive ``fork()``. Under
``opentelemetry-instrument`` a pre-fork server's workers reach Prometheus through the parent
(see ``reer_otel_memory.export.workers``).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.sdk.metrics import (
    Counter,
    ExemplarReservoir,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricReader

from .. import _names as names
from .. import _telemetry
from .._runtime import RUNTIME
from ..errors import ConfigurationError
from .exposition import CONTENT_TYPE, CumulativeText

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9464


class _TextReader(MetricReader):
    """A pull reader: each scrape collects once and writes the page.

    Histograms are collected as deltas and summed by :class:`CumulativeText`, which writes what
    a cumulative collection gives: the SDK then builds points only for the series recorded to
    since the last collection, instead of every series of every histogram on every scrape.
    """

    def __init__(self) -> None:
        temporality: dict[type, AggregationTemporality] = {
            instrument: AggregationTemporality.CUMULATIVE
            for instrument in (Counter, UpDownCounter, ObservableCounter, ObservableUpDownCounter, ObservableGauge)
        }
        temporality[Histogram] = AggregationTemporality.DELTA
        super().__init__(preferred_temporality=temporality)
        self._lock = threading.Lock()
        self._page = CumulativeText()
        RUNTIME.after_fork_call(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # a /metrics thread of the parent may have held it

    def _receive_metrics(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        # Every collection, a provider's force_flush too: its histogram deltas count.
        self._page.add(metrics_data)

    def render(self) -> bytes:
        """Collect now and return the page (concurrent scrapes take turns)."""
        with self._lock:
            # The SDK passes an empty collection on to no one: without this, the last values would stay.
            self._page.add(None)
            self.collect()
            return self._page.render()

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


class _Pipeline:
    """The reader every endpoint serves, and the provider that feeds it."""

    def __init__(self) -> None:
        self.reader: _TextReader | None = None
        self.provider: Any = None
        self.owns_global = False
        self.previous_telemetry: _telemetry.Telemetry | None = None
        self.bound_telemetry: _telemetry.Telemetry | None = None
        self.endpoints = 0

    def render(self) -> bytes:
        reader = self.reader
        return reader.render() if reader is not None else b""

    def connect(self) -> None:
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
        from opentelemetry.sdk.metrics.view import View
        from opentelemetry.sdk.resources import Resource

        # Series carry exactly the labels docs/telemetry.md lists (no otel_scope_* labels: metric
        # names are already unique across the scopes that share this page), named as every
        # OpenTelemetry Prometheus endpoint names them (see exposition.OpenTelemetryText).
        self.reader = _TextReader()
        # The text format carries no exemplars: offering every measurement to exemplar
        # reservoirs would only cost time on each record and each scrape.
        self.provider = MeterProvider(
            metric_readers=[self.reader],
            resource=Resource.create(),
            exemplar_filter=AlwaysOffExemplarFilter(),
            # ... nor collecting them: each point's reservoir would still be asked on every scrape.
            views=[View(instrument_name="*", exemplar_reservoir_factory=_no_exemplars)],
        )
        if isinstance(metrics.get_meter_provider(), metrics._internal._ProxyMeterProvider):
            metrics.set_meter_provider(self.provider)
        self.owns_global = metrics.get_meter_provider() is self.provider
        if not self.owns_global:
            self.previous_telemetry = _telemetry.current()
            self.bound_telemetry = _telemetry.configure(self.previous_telemetry.tracer_provider, self.provider)
        # The monitor's gauges and counters, on the Telemetry in force and every later one.
        from ..monitoring.monitor import install_instruments

        install_instruments()

    def disconnect(self) -> None:
        """Release a private provider (the global one stays: it cannot be uninstalled)."""
        if self.owns_global or self.provider is None:
            return
        if self.previous_telemetry is not None and _telemetry.current() is self.bound_telemetry:
            _telemetry.restore(self.previous_telemetry)
        self.provider.shutdown()
        self.provider = self.reader = None


_pipeline: _Pipeline | None = None


class _NoExemplars(ExemplarReservoir):
    """The endpoint's exemplar reservoir: none kept, none collected (the text format has none)."""

    def offer(self, value: Any, time_unix_nano: int, attributes: Any, context: Any) -> None:
        pass

    def collect(self, point_attributes: Any) -> list[Any]:
        return []


_NO_EXEMPLARS = _NoExemplars()


def _no_exemplars(aggregation_type: type) -> Callable[..., ExemplarReservoir]:
    return lambda **options: _NO_EXEMPLARS


#: Connections waiting to be accepted (the kernel's queue): a burst of scrapes waits there.
LISTEN_BACKLOG = 128
#: Seconds a connection may take to send its request and read the answer before it is closed.
DEFAULT_CONNECTION_TIMEOUT_S = 10.0
#: Connections served at once, each on its own thread; further ones wait in the backlog, so idle
#: or slow clients cannot pile up threads without bound.
DEFAULT_MAX_CONNECTIONS = 16
#: Smaller pages are sent as they are: compressing them saves less than it costs.
_GZIP_MIN_BYTES = 1024
_ALLOWED = "GET, HEAD"


def gzip_accepted(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header allows gzip (as prometheus_client reads it, and ``q=0`` refuses)."""
    for entry in (accept_encoding or "").split(","):
        coding, _, params = entry.partition(";")
        if coding.strip().lower() != "gzip":
            continue
        quality = params.strip().lower()
        if quality.startswith("q="):
            try:
                return float(quality[2:]) > 0
            except ValueError:
                return False
        return True
    return False


class _Page:
    """One collection, rendered, and its gzip form made on first demand."""

    __slots__ = ("_gzipped", "_lock", "body", "started")

    def __init__(self, body: bytes, started: float) -> None:
        self.body = body
        self.started = started
        self._gzipped: bytes | None = None
        self._lock = threading.Lock()

    def gzipped(self) -> bytes:
        with self._lock:
            if self._gzipped is None:
                # Level 1: 266 KiB -> 13.7 KiB in about 0.7 ms with 100 operations; level 6 saves
                # another 1.6 KiB for three times the CPU (python -m benchmarks monitor).
                self._gzipped = gzip.compress(self.body, compresslevel=1)
            return self._gzipped


class _MetricsServer(ThreadingHTTPServer):
    """The HTTP server: a listen backlog, a cap on connection threads, quiet about hang-ups."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG
    pipeline: _Pipeline
    connection_timeout_s: float = DEFAULT_CONNECTION_TIMEOUT_S

    def __init__(self, address: tuple[str, int], max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self._closing = False
        self._page_lock = threading.Lock()
        self._page: _Page | None = None
        super().__init__(address, _MetricsHandler)

    def page(self) -> _Page:
        """A collection started after this call: scrapes that arrive together share one."""
        asked = time.monotonic()
        with self._page_lock:
            page = self._page
            if page is None or page.started < asked:
                started = time.monotonic()
                page = self._page = _Page(self.pipeline.render(), started)
            return page

    def process_request(self, request: Any, client_address: Any) -> None:
        # Wait for a free slot in the accepting thread: meanwhile new connections queue in the
        # backlog instead of each taking a thread.
        while not self._slots.acquire(timeout=0.2):
            if self._closing:
                self.shutdown_request(request)
                return
        thread = threading.Thread(
            target=self._serve_connection, args=(request, client_address), name="reer-memory-metrics-connection", daemon=True
        )
        try:
            thread.start()
        except BaseException:
            self._slots.release()
            self.shutdown_request(request)
            raise

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Called inside the except block of socketserver's request handling.
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            # A scraper that hung up or stalled: nothing for the host's stderr.
            logger.debug("/metrics client %s went away: %r", client_address, error)
        else:
            logger.error("/metrics request from %s failed", client_address, exc_info=error)

    def close(self) -> None:
        self._closing = True
        self.shutdown()
        self.server_close()


class _MetricsHandler(BaseHTTPRequestHandler):
    """``GET`` / ``HEAD`` ``/metrics`` (and ``/``) in the Prometheus text format, gzip when accepted.

    Other paths answer 404, other methods 405.
    """

    server: _MetricsServer
    protocol_version = "HTTP/1.1"  # keep-alive: Prometheus reuses its connection between scrapes

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.connection_timeout_s)
        # Headers and body go out as two writes: without this, Nagle's algorithm holds the body
        # until the scraper's delayed ACK (40 ms) on a kept-alive connection.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def _not_allowed(self) -> None:
        self.send_response(405)
        self.send_header("Allow", _ALLOWED)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        body = f"{self.command} is not allowed here; use {_ALLOWED}\n".encode()
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed  # noqa: N815

    def _answer(self, with_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path not in ("/metrics", "/"):
            self.send_error(404, "only /metrics is served here")
            return
        try:
            page = self.server.page()
        except Exception as exc:  # a scrape reports the failure; the host process goes on
            logger.exception("collecting metrics for a scrape failed")
            self.send_error(500, f"collecting metrics failed: {type(exc).__name__}")
            return
        body = page.body
        gzipped = len(body) >= _GZIP_MIN_BYTES and gzip_accepted(self.headers.get("Accept-Encoding"))
        if gzipped:
            body = page.gzipped()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Vary", "Accept-Encoding")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(host: str, port: int, pipeline: _Pipeline, connection_timeout_s: float, max_connections: int) -> tuple[_MetricsServer, threading.Thread]:
    """Bind ``host:port`` (IPv4 or IPv6) and serve the pipeline's metrics from a daemon thread."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("_BoundMetricsServer", (_MetricsServer,), {"address_family": family})
    server = server_class((host, port), max_connections)
    server.pipeline = pipeline
    server.connection_timeout_s = connection_timeout_s
    thread = threading.Thread(target=server.serve_forever, name="reer-memory-metrics-http", daemon=True)
    thread.start()
    return server, thread


class PrometheusEndpoint:
    """A running ``/metrics`` server: where it listens, and :meth:`shutdown` to stop it."""

    def __init__(self, host: str, port: int, server: Any, thread: threading.Thread) -> None:
        self.host = host
        #: The port actually bound (the one the system chose when asked for port 0).
        self.port = port
        self._server = server
        self._thread = thread
        self._stopped = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def shutdown(self) -> None:
        """Stop serving and close the port; the last endpoint also releases a private provider."""
        global _pipeline
        with RUNTIME.lock("endpoint"):
            if self._stopped:
                return
            self._stopped = True
            self._server.close()
            pipeline = _pipeline
            if pipeline is not None:
                pipeline.endpoints -= 1
                if pipeline.endpoints == 0 and not pipeline.owns_global:
                    pipeline.disconnect()
                    _pipeline = None
        self._thread.join(5.0)

    def __repr__(self) -> str:
        return f"PrometheusEndpoint({self.url}{', stopped' if self._stopped else ''})"


def _resolve_address(host: str | None, port: int | None) -> tuple[str, int]:
    if host is None:
        host = os.environ.get(names.ENV_PROMETHEUS_HOST, "").strip() or DEFAULT_HOST
    elif not isinstance(host, str) or not host.strip():
        raise ConfigurationError(f"host={host!r}: expected a host name or IP address such as '127.0.0.1'")
    if port is None:
        raw = os.environ.get(names.ENV_PROMETHEUS_PORT, "").strip()
        if not raw:
            return host, DEFAULT_PORT
        try:
            port = int(raw)
        except ValueError:
            raise ConfigurationError(f"{names.ENV_PROMETHEUS_PORT}={raw!r}: expected a port number 0-65535") from None
        if not 0 <= port <= 65535:
            raise ConfigurationError(f"{names.ENV_PROMETHEUS_PORT}={raw!r}: expected a port number 0-65535")
        return host, port
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigurationError(f"port={port!r}: expected a port number 0-65535 (0: any free port)")
    return host, port


def start_prometheus_exporter(
    port: int | None = None,
    host: str | None = None,
    *,
    connection_timeout_s: float = DEFAULT_CONNECTION_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> PrometheusEndpoint:
    """Serve the package's metrics (and the global provider's, when it is ours) on ``/metrics``.

    ``connection_timeout_s``: how long one connection may stay idle or slow before it is closed;
    ``max_connections``: connections served at once (each on a thread), the others wait.
    """
    global _pipeline
    host, port = _resolve_address(host, port)
    if isinstance(connection_timeout_s, bool) or not isinstance(connection_timeout_s, (int, float)) or not 0 < connection_timeout_s < math.inf:
        raise ConfigurationError(f"connection_timeout_s={connection_timeout_s!r}: expected a positive number of seconds")
    if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
        raise ConfigurationError(f"max_connections={max_connections!r}: expected a whole number of connections, 1 or more")
    with RUNTIME.lock("endpoint"):
        pipeline = _pipeline if _pipeline is not None else _Pipeline()
        # Bind first: a taken port fails before any provider is touched.
        try:
            server, thread = _serve(host, port, pipeline, float(connection_timeout_s), max_connections)
        except socket.gaierror as exc:
            raise OSError(f"cannot serve /metrics on {host}:{port}: unknown host {host!r} ({exc})") from exc
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot serve /metrics on {host}:{port}: {exc.strerror or exc}; "
                f"choose another port (port= or {names.ENV_PROMETHEUS_PORT})",
            ) from exc
        if pipeline.provider is None:
            try:
                pipeline.connect()
            except Exception:
                server.close()
                raise
        pipeline.endpoints += 1
        _pipeline = pipeline
    endpoint = PrometheusEndpoint(host, server.server_port, server, thread)
    logger.info("serving memory metrics on %s", endpoint.url)
    return endpoint
