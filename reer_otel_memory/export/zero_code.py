"""The zero-code ``/metrics`` on the package's bounded server instead of prometheus_client's stock one.

Under ``opentelemetry-instrument`` with ``OTEL_METRICS_EXPORTER=prometheus`` the OpenTelemetry
exporter starts ``prometheus_client.start_http_server`` (a thread per connection, no deadline, no
limit). The instrumentor hands that server's listening socket to
:class:`reer_otel_memory.export._http.BoundedHTTPServer`, which serves the same
``prometheus_client.REGISTRY`` (the pre-fork parent's merged page included) on the same address,
then stops the stock server. The port never closes; if the hand-over fails, one error line and
the stock server serves on.
"""

from __future__ import annotations

import logging
import os
import socketserver
import threading
from typing import Any

from opentelemetry.environment_variables import OTEL_METRICS_EXPORTER

from .. import _names as names
from .endpoint import PrometheusEndpoint, serve_registry

logger = logging.getLogger(__name__)

_DEFAULT_PORT = 9464  # the exporter's default for OTEL_EXPORTER_PROMETHEUS_PORT


def stock_servers() -> list[socketserver.BaseServer]:
    """prometheus_client HTTP servers serving in this process now.

    ``start_http_server`` returns the server and its thread, but the exporter keeps neither: the
    only reference left is the serving thread's target, its ``serve_forever``.
    """
    found = []
    for thread in threading.enumerate():
        target = getattr(thread, "_target", None)
        server = getattr(target, "__self__", None)
        if getattr(target, "__name__", "") != "serve_forever" or not isinstance(server, socketserver.BaseServer):
            continue
        if type(server).__module__.startswith("prometheus_client"):
            found.append(server)
    return found


def _stop(server: socketserver.BaseServer, close: bool = True) -> None:
    """Stop a stock server (from a thread other than its own) and, if ``close``, close its socket."""
    try:
        server.shutdown()
        if close:
            server.server_close()
    except Exception as exc:
        logger.debug("stopping prometheus_client's server failed: %r", exc)


def close_stock_servers() -> None:
    """Close every stock server of this process, off this thread (a shutdown waits for the server's next poll)."""
    for server in stock_servers():
        threading.Thread(target=_stop, args=(server,), name="reer-memory-close-listener", daemon=True).start()


def exporter_port() -> int | None:
    """The port the OpenTelemetry exporter was given here (the parent keeps the original while its workers get 0)."""
    if os.environ.get(names.ENV_WORKER_PARENT, "").strip() == str(os.getpid()):
        raw = os.environ.get(names.ENV_WORKER_PORT, "").strip()
    else:
        raw = os.environ.get(names.ENV_PROMETHEUS_PORT, "").strip()
    try:
        return int(raw) if raw else _DEFAULT_PORT
    except ValueError:
        return None


def serve_exporter_registry_bounded() -> PrometheusEndpoint | None:
    """Move the exporter's ``/metrics`` to the bounded server; the endpoint, or None (nothing to move, or it failed and the stock one serves on)."""
    if "prometheus" not in os.environ.get(OTEL_METRICS_EXPORTER, "").lower():
        return None
    port = exporter_port()
    servers = [server for server in stock_servers() if _port(server) == port]
    if len(servers) != 1:
        logger.debug("no single prometheus_client server on port %s to take over (%d found)", port, len(servers))
        return None
    stock = servers[0]
    host = str(getattr(stock, "server_address", ("?",))[0])
    try:
        listener = stock.socket.dup()  # type: ignore[attr-defined]
        try:
            endpoint = serve_registry(None, port=int(port or 0), host=host, listener=listener)  # prometheus_client's REGISTRY
        except BaseException:
            listener.close()
            raise
    except Exception as exc:
        logger.error("reer_otel_memory: /metrics on %s:%s stays on prometheus_client's server (no deadlines or connection limit): %r", host, port, exc)
        return None
    # Both accept on the socket until the stock server's loop ends (within its 0.5 s poll).
    threading.Thread(target=_stop, args=(stock,), name="reer-memory-close-listener", daemon=True).start()
    return endpoint


def give_back(endpoint: PrometheusEndpoint) -> None:
    """Stop the bounded server and start prometheus_client's on its address again (the exporter's reader still serves there)."""
    endpoint.shutdown()
    try:
        from prometheus_client import start_http_server

        start_http_server(endpoint.port, addr=endpoint.host)
    except Exception as exc:
        logger.error("reer_otel_memory: /metrics on %s could not be given back to prometheus_client's server: %r", endpoint.url, exc)


def _port(server: Any) -> int | None:
    try:
        return int(server.server_address[1])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
