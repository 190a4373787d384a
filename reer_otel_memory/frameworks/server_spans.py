"""Memory per request (``REER_MEMORY_SERVER_SPANS=1``): the server span's memory attributes and per-route metrics.

Each request handled inside a recording span of a framework's OpenTelemetry instrumentation
(Flask, Django, or the ASGI middleware under FastAPI and Starlette) is one window, like a
profiled operation's; it opens inside the instrumentation's span and closes before it ends, so
its attributes land on that span. Metrics are by ``http.route``, the route template, never a raw
path, and at most :data:`MAX_ROUTES` values. The peak and net metrics take only requests that
overlapped nothing: an overlapped window's figures are the process's, not the request's.
"""

from __future__ import annotations

import logging
import threading
import time
import types
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import wrapt
from opentelemetry import context as otel_context
from opentelemetry import trace

from .. import _names as names
from .. import _telemetry
from .._runtime import RUNTIME
from ..config import get_config
from ..profiling.devices import DeviceWindow, device_memory
from ..profiling.operations import _OPERATION_KEY, CHEAP_HEAP_S, HEAP_COST_FACTOR, memory_attributes, moving_mean
from ..profiling.probe import PeakWindow, process_probe

logger = logging.getLogger(__name__)

_LOG_PREFIX = "reer_otel_memory server spans"
#: Distinct ``http.route`` values recorded; later routes are recorded as ``unknown``.
MAX_ROUTES = 200

# The hooks installed in other libraries: wrapped framework methods and import hooks, which
# outlive any reset of the package's state (an import hook cannot be removed). install() and
# uninstall() own them.
_state_lock = threading.Lock()
_active = False
_hooks_registered = False
_class_hooks: list[tuple[type, str, object]] = []


def _log_failure(where: str, exc: BaseException) -> None:
    if RUNTIME.first_time(f"server span failure: {where}: {type(exc).__qualname__}"):
        logger.error("%s: %s failed, request not measured: %r", _LOG_PREFIX, where, exc)


class _Instruments:
    def __init__(self, telemetry: _telemetry.Telemetry) -> None:
        meter = telemetry.meter
        name, unit, description = names.METRIC_ROUTE_PEAK
        self.peak = meter.create_histogram(name, unit=unit, description=description, explicit_bucket_boundaries_advisory=_telemetry.BYTES_BUCKETS)
        name, unit, description = names.METRIC_ROUTE_NET
        self.net = meter.create_up_down_counter(name, unit=unit, description=description)
        name, unit, description = names.METRIC_ROUTE_REQUESTS
        self.requests = meter.create_counter(name, unit=unit, description=description)


class _Requests:
    """What the measured requests have taught: the routes recorded (at most :data:`MAX_ROUTES`)
    and the mean request duration."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.routes: set[str] = set()
        self.mean_request_s: float | None = None  # None until a request is measured

    def _after_fork_in_child(self) -> None:
        self.lock = threading.Lock()  # another thread may have held it when the process forked


def _requests() -> _Requests:
    return RUNTIME.server_requests or RUNTIME.get("server_requests", _Requests)


def _instruments_for(telemetry: _telemetry.Telemetry) -> _Instruments:
    return telemetry.instruments("server_spans", _Instruments)


class _RequestWindow(PeakWindow):
    """One request being measured (no ``name``: explanations wait for named operations only)."""

    __slots__ = ("device_start", "device_window", "heap_start", "rss_start", "span", "started", "token")

    def __init__(self, span: trace.Span) -> None:
        super().__init__()
        self.span = span
        self.heap_start: int | None = None
        self.device_window: DeviceWindow | None = None
        self.device_start: int | None = None
        self.token: object | None = None
        self.rss_start = 0
        self.started = 0.0


def _open() -> _RequestWindow | None:
    """Open a window for the request whose span is current; None where no span records it."""
    if not _active:
        return None
    try:
        current = otel_context.get_current()
        span = trace.get_current_span(current)
        if not span.is_recording():
            return None
        window = _RequestWindow(span)
        parent = current.get(_OPERATION_KEY)
        window.parent = parent if isinstance(parent, PeakWindow) else None
        probe = RUNTIME.probe or process_probe()
        window.rss_start = probe.open_window(window)
        try:
            device_window, device_start = (RUNTIME.device_memory or device_memory()).begin()
            if device_window is not None:
                window.device_window, window.device_start = device_window, device_start
            cost = probe.heap_cost_s
            mean = _requests().mean_request_s
            if cost <= CHEAP_HEAP_S or (mean is not None and mean >= HEAP_COST_FACTOR * cost):
                reading = probe.heap_reading()
                if reading is not None:
                    window.heap_start = reading[0]
            window.token = otel_context.attach(otel_context.set_value(_OPERATION_KEY, window, current))
        except BaseException:
            probe.end_peak(window, window.rss_start)
            raise
        window.started = time.perf_counter()
        return window
    except Exception as exc:
        _log_failure("opening a request's window", exc)
        return None


def _route_of(span: trace.Span, hint: str | None) -> str:
    attributes = getattr(span, "attributes", None)
    route = attributes.get(names.LABEL_ROUTE) if attributes is not None else None
    if not isinstance(route, str) or not route:
        route = hint if isinstance(hint, str) and hint else names.ROUTE_UNKNOWN
    requests = _requests()
    if route not in requests.routes:
        with requests.lock:
            if route not in requests.routes:
                if len(requests.routes) >= MAX_ROUTES:
                    return names.ROUTE_UNKNOWN
                requests.routes.add(route)
    return route


def _detach(window: _RequestWindow | None) -> None:
    """Take the window out of the context (in the context that attached it). Never raises."""
    if window is None:
        return
    token, window.token = window.token, None
    if token is not None:
        try:
            otel_context.detach(token)  # type: ignore[arg-type]
        except Exception as exc:
            _log_failure("detaching a request's window", exc)


def _close(window: _RequestWindow | None, route_hint: Callable[[], str | None]) -> None:
    """Close the window, annotate its span, record the route's metrics. Never raises."""
    if window is None:
        return
    try:
        duration = time.perf_counter() - window.started
        requests = _requests()
        requests.mean_request_s = moving_mean(requests.mean_request_s, duration)
        probe = RUNTIME.probe or process_probe()
        heap_delta = None
        if window.heap_start is not None:
            reading = probe.heap_reading()
            if reading is not None:
                heap_delta = reading[0] - window.heap_start
        rss_end = probe.rss_bytes()
        peak = probe.end_peak(window, rss_end)
        overlap = window.overlap
        rss_start = window.rss_start
        device_end = device_peak = None
        if window.device_window is not None:
            device_end, device_peak = (RUNTIME.device_memory or device_memory()).end(window.device_window)
        level = (RUNTIME.config or get_config()).level_for(rss_end)
        span = window.span
        try:
            hint = route_hint()
        except Exception:
            hint = None
        route = _route_of(span, hint)
        if span.is_recording():
            span.set_attributes(
                memory_attributes(rss_start, rss_end, level, overlap, peak, heap_delta, window.device_start, device_end, device_peak)
            )
        telemetry = RUNTIME.telemetry or _telemetry.current()
        if telemetry.metrics_recording():
            instruments = _instruments_for(telemetry)
            labels = {names.LABEL_ROUTE: route}
            instruments.requests.add(1, labels)
            if not overlap:  # an overlapped window's figures are the process's, not the request's
                instruments.net.add(rss_end - rss_start, labels)
                if peak is not None:
                    instruments.peak.record(peak - rss_start if peak > rss_start else 0, labels)
    except Exception as exc:
        _log_failure("closing a request's window", exc)


# --- frameworks ------------------------------------------------------------------------------


def _flask_route() -> str | None:
    import flask

    rule = flask.request.url_rule if flask.has_request_context() else None
    return None if rule is None else str(rule.rule)


def _flask_dispatch(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    window = _open()
    try:
        return wrapped(*args, **kwargs)
    finally:
        _detach(window)
        _close(window, _flask_route)


def _django_route(request: Any) -> Callable[[], str | None]:
    def route() -> str | None:
        match = getattr(request, "resolver_match", None)
        found = getattr(match, "route", None)
        return found if isinstance(found, str) else None

    return route


def _django_get_response(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    window = _open()
    try:
        return wrapped(*args, **kwargs)
    finally:
        _detach(window)
        _close(window, _django_route(args[0] if args else kwargs.get("request")))


async def _django_get_response_async(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    window = _open()
    try:
        return await wrapped(*args, **kwargs)
    finally:
        _detach(window)
        _close(window, _django_route(args[0] if args else kwargs.get("request")))


Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class _MeasuredASGIApp:
    """The app the OpenTelemetry ASGI middleware calls, inside its server span: each HTTP request one window."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        window = _open()

        def route() -> str | None:
            matched = scope.get("route")
            path = getattr(matched, "path", None)
            return path if isinstance(path, str) else None

        if window is None:
            await self.app(scope, receive, send)
            return
        open_window: _RequestWindow | None = window
        trailers = False

        async def measured_send(message: Any) -> None:
            # The middleware ends its span right after the response's last message: close first.
            nonlocal open_window, trailers
            kind = message.get("type")
            if kind == "http.response.start":
                trailers = bool(message.get("trailers", False))
            elif open_window is not None and (
                (kind == "http.response.body" and not trailers and not message.get("more_body", False))
                or (kind == "http.response.trailers" and not message.get("more_trailers", False))
            ):
                closing, open_window = open_window, None
                _close(closing, route)
            await send(message)

        try:
            await self.app(scope, receive, measured_send)
        finally:
            _detach(window)
            if open_window is not None:
                _close(open_window, route)


def _asgi_middleware_init(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    result = wrapped(*args, **kwargs)
    try:
        if not isinstance(instance.app, _MeasuredASGIApp):
            instance.app = _MeasuredASGIApp(instance.app)
    except Exception as exc:
        _log_failure("wrapping the ASGI middleware's app", exc)
    return result


def _hook(owner: type, attribute: str, wrapper: Callable[..., Any]) -> None:
    handle = wrapt.wrap_function_wrapper(owner, attribute, wrapper)
    with _state_lock:
        _class_hooks.append((owner, attribute, handle))


def _on_flask(module: types.ModuleType) -> None:
    _hook(module.Flask, "dispatch_request", _flask_dispatch)


def _on_django(module: types.ModuleType) -> None:
    _hook(module.BaseHandler, "_get_response", _django_get_response)
    _hook(module.BaseHandler, "_get_response_async", _django_get_response_async)


def _on_asgi(module: types.ModuleType) -> None:
    _hook(module.OpenTelemetryMiddleware, "__init__", _asgi_middleware_init)


def _guarded(hook: Callable[[types.ModuleType], None]) -> Callable[[types.ModuleType], None]:
    def run(module: types.ModuleType) -> None:
        if not _active:
            return
        try:
            hook(module)
        except Exception as exc:  # inside the service's import statement: never raise
            logger.error("%s: hooking %s failed; its requests are not measured: %r", _LOG_PREFIX, module.__name__, exc)

    return run


def install() -> None:
    """Measure requests of each framework when (or if) its module is imported."""
    global _active, _hooks_registered
    with _state_lock:
        if _active:
            return
        _active = True
        register = not _hooks_registered
        _hooks_registered = True
    if not register:
        # Hooks registered before: the frameworks already imported get their wrappers again.
        import sys

        for name, hook in _HOOKS:
            module = sys.modules.get(name)
            if module is not None:
                _guarded(hook)(module)
        return
    for name, hook in _HOOKS:
        wrapt.register_post_import_hook(_guarded(hook), name)


def uninstall() -> None:
    """Stop measuring; the framework methods are unwrapped (ASGI apps already wrapped pass through)."""
    global _active
    with _state_lock:
        _active = False
        hooks = list(_class_hooks)
        _class_hooks.clear()
    for owner, attribute, handle in reversed(hooks):
        try:
            wrapt.unwrap_object(owner, attribute, handle, missing_ok=True)
        except Exception as exc:
            logger.error("%s: removing the hook %s.%s failed: %r", _LOG_PREFIX, owner.__name__, attribute, exc)


def active() -> bool:
    return _active


_HOOKS: tuple[tuple[str, Callable[[types.ModuleType], None]], ...] = (
    ("flask.app", _on_flask),
    ("django.core.handlers.base", _on_django),
    ("opentelemetry.instrumentation.asgi", _on_asgi),
)
