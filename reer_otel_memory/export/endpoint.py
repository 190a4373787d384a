"""The Prometheus endpoint: every ``reer.memory.*`` metric on ``http://127.0.0.1:9464/metrics``.

The address comes from the arguments, else ``OTEL_EXPORTER_PROMETHEUS_HOST`` / ``_PORT``, else
loopback. Behind it is a pull reader on an SDK ``MeterProvider``: the global one while the
global is still the API's proxy (so other instrumentations share the page), else a private one
the package is rebound to, since a reader cannot be added to an installed SDK provider. Each
scrape writes the text format straight from the OpenTelemetry data
(:mod:`.exposition`), and the HTTP server (:mod:`._http`) keeps hostile or slow clients from
starving a scrape. Its threads do not survive ``fork()``; pre-fork workers reach Prometheus
through the parent (:mod:`.workers`). The README ("Prometheus and Grafana") is the manual.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
from ..config import checked_number
from ..errors import ConfigurationError
from ._http import LISTEN_BACKLOG, MAX_REQUEST_HEAD_BYTES, BoundedHTTPServer, gzip_accepted
from .exposition import CONTENT_TYPE, CumulativeText

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

__all__ = [
    "DEFAULT_CONNECTION_TIMEOUT_S",
    "DEFAULT_HOST",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_PORT",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "LISTEN_BACKLOG",
    "MAX_REQUEST_HEAD_BYTES",
    "PrometheusEndpoint",
    "gzip_accepted",
    "serve_registry",
    "start_prometheus_exporter",
]

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


class _NoExemplars(ExemplarReservoir):
    """The endpoint's exemplar reservoir: none kept, none collected (the text format has none)."""

    def offer(self, value: Any, time_unix_nano: int, attributes: Any, context: Any) -> None:
        pass

    def collect(self, point_attributes: Any) -> list[Any]:
        return []


_NO_EXEMPLARS = _NoExemplars()


def _no_exemplars(aggregation_type: type) -> Callable[..., ExemplarReservoir]:
    return lambda **options: _NO_EXEMPLARS


#: Seconds a request may take to arrive, counted from accept (on a kept-alive connection, from
#: its first byte): a client dribbling its headers is answered 408 and closed after this.
DEFAULT_REQUEST_TIMEOUT_S = 5.0
#: Seconds an answer may take to be sent, and a kept-alive connection may stay idle.
DEFAULT_CONNECTION_TIMEOUT_S = 10.0
#: Connections open at once. None holds a thread; when the table is full, the connection that
#: has waited longest (over a second) for its request is closed to make room for a new one.
DEFAULT_MAX_CONNECTIONS = 64


class PrometheusEndpoint:
    """A running ``/metrics`` server: where it listens, and :meth:`shutdown` to stop it."""

    def __init__(self, host: str, port: int, server: BoundedHTTPServer, release: Callable[[], None] | None = None) -> None:
        self.host = host
        #: The port actually bound (the one the system chose when asked for port 0).
        self.port = port
        self._server = server
        self._release = release
        self._stopped = False
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    @property
    def open_connections(self) -> int:
        """Client connections open now (at most ``max_connections``)."""
        return self._server.open_connections

    def shutdown(self) -> None:
        """Stop serving and close the port; the last endpoint also releases a private provider."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._server.close()
        if self._release is not None:
            self._release()

    def __repr__(self) -> str:
        return f"PrometheusEndpoint({self.url}{', stopped' if self._stopped else ''})"


def _releaser(pipeline: _Pipeline) -> Callable[[], None]:
    def release() -> None:
        """One endpoint of ``pipeline`` is gone; the last one releases a private provider."""
        with RUNTIME.lock("endpoint"):
            pipeline.endpoints -= 1
            if pipeline.endpoints == 0 and not pipeline.owns_global:
                pipeline.disconnect()
                if RUNTIME.endpoint is pipeline:
                    RUNTIME.replace("endpoint", None)

    return release


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
    return host, checked_number(port, 0, 65535, whole=True, name="port", expected="expected a port number 0-65535 (0: any free port)")


def _check_bounds(request_timeout_s: float, connection_timeout_s: float, max_connections: int) -> None:
    for keyword, seconds in (("request_timeout_s", request_timeout_s), ("connection_timeout_s", connection_timeout_s)):
        checked_number(seconds, 0, low_inclusive=False, high_inclusive=False, name=keyword, expected="expected a positive number of seconds")
    checked_number(max_connections, 1, whole=True, name="max_connections", expected="expected a whole number of connections, 1 or more")


def _bind(
    host: str, port: int, render: Callable[[], bytes], content_type: str, request_timeout_s: float, connection_timeout_s: float, max_connections: int,
    listener: socket.socket | None = None,
) -> BoundedHTTPServer:
    try:
        return BoundedHTTPServer(
            host,
            port,
            render,
            content_type,
            request_timeout_s=float(request_timeout_s),
            connection_timeout_s=float(connection_timeout_s),
            max_connections=max_connections,
            listener=listener,
        )
    except socket.gaierror as exc:
        raise OSError(f"cannot serve /metrics on {host}:{port}: unknown host {host!r} ({exc})") from exc
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"cannot serve /metrics on {host}:{port}: {exc.strerror or exc}; choose another port (port= or {names.ENV_PROMETHEUS_PORT})",
        ) from exc


def start_prometheus_exporter(
    port: int | None = None,
    host: str | None = None,
    *,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    connection_timeout_s: float = DEFAULT_CONNECTION_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> PrometheusEndpoint:
    """Serve the package's metrics (and the global provider's, when it is ours) on ``/metrics``.

    ``request_timeout_s``: how long a request may take to arrive (from accept, or from its first
    byte on a kept-alive connection); ``connection_timeout_s``: how long an answer may take to be
    sent and a kept-alive connection may stay idle; ``max_connections``: connections open at once.
    """
    host, port = _resolve_address(host, port)
    _check_bounds(request_timeout_s, connection_timeout_s, max_connections)
    with RUNTIME.lock("endpoint"):
        pipeline = RUNTIME.endpoint or _Pipeline()
        # Bind first: a taken port fails before any provider is touched.
        server = _bind(host, port, pipeline.render, CONTENT_TYPE, request_timeout_s, connection_timeout_s, max_connections)
        if pipeline.provider is None:
            try:
                pipeline.connect()
            except Exception:
                server.close()
                raise
        pipeline.endpoints += 1
        RUNTIME.replace("endpoint", pipeline)
    endpoint = PrometheusEndpoint(host, server.server_port, server, _releaser(pipeline))
    logger.info("serving memory metrics on %s", endpoint.url)
    return endpoint


def serve_registry(
    registry: Collector | None = None,
    port: int | None = None,
    host: str | None = None,
    *,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    connection_timeout_s: float = DEFAULT_CONNECTION_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    listener: socket.socket | None = None,
) -> PrometheusEndpoint:
    """Serve a prometheus_client registry (or any collector) on ``/metrics`` with this endpoint's bounds.

    What ``prometheus_client.start_http_server(port, addr, registry)`` serves, in the text format
    ``generate_latest`` writes, from the same bounded server as :func:`start_prometheus_exporter`
    (deadlines, header cap, 405, capped connections, two threads). ``registry`` defaults to
    prometheus_client's global ``REGISTRY``; the address to the arguments, else the
    ``OTEL_EXPORTER_PROMETHEUS_*`` variables, else ``127.0.0.1:9464``. Nothing else is touched:
    no provider is installed. ``listener``: a socket already listening on that address, to serve
    from instead of binding one (taking over another server's port without closing it).
    """
    from prometheus_client import REGISTRY, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    source: Collector = REGISTRY if registry is None else registry
    if not callable(getattr(source, "collect", None)):
        raise ConfigurationError(f"registry={registry!r}: expected a prometheus_client registry or collector")
    host, port = _resolve_address(host, port)
    _check_bounds(request_timeout_s, connection_timeout_s, max_connections)
    server = _bind(
        host, port, lambda: generate_latest(source), CONTENT_TYPE_LATEST, request_timeout_s, connection_timeout_s, max_connections, listener
    )
    endpoint = PrometheusEndpoint(host, server.server_port, server)
    logger.info("serving a Prometheus registry on %s", endpoint.url)
    return endpoint
