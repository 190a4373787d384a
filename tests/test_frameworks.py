"""Views as profile targets and memory per request (REER_MEMORY_SERVER_SPANS) in real web frameworks.

In-process: Flask through werkzeug's test client, FastAPI and Starlette called as ASGI apps, with
the frameworks' own OpenTelemetry instrumentations and in-memory providers. Real servers: Flask
under gunicorn, FastAPI under uvicorn and Django under gunicorn, each started with
``opentelemetry-instrument`` (console span exporter, Prometheus page scraped over HTTP).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from _children import scrape
from _servers import BIN, InstrumentedServer
from conftest import wait_for

from reer_otel_memory import _names as names
from reer_otel_memory.export import naming
from reer_otel_memory.instrumentation import MemoryInstrumentor
from reer_otel_memory.testing import TelemetryCapture

MEMORY_ATTRIBUTES = (
    names.ATTR_RSS_START, names.ATTR_RSS_END, names.ATTR_RSS_DELTA, names.ATTR_RSS_PEAK, names.ATTR_LEVEL, names.ATTR_OVERLAP,
)

FLASK_APP = '''
from flask import Blueprint, Flask

app = Flask(__name__)


@app.route("/predict/<int:size>")
def predict(size):
    return str(len(bytearray(size)))


def cached(view):
    def inner(*args, **kwargs):
        return view(*args, **kwargs)
    inner.__module__, inner.__qualname__ = view.__module__, view.__qualname__
    return inner


@cached
@app.route("/stale")
def stale():
    return "stale"


blueprint = Blueprint("later", __name__)


@blueprint.route("/later")
def later():
    return "later"


LIMIT = 3


def create_app():
    factory = Flask("factory")
    factory.add_url_rule("/made/<int:size>", view_func=predict)
    factory.register_blueprint(blueprint)
    return factory
'''

ASGI_APP = '''
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

app = FastAPI()


@app.get("/predict/{size}")
async def predict(size: int):
    return {"size": len(bytearray(size))}


@app.get("/sync")
def sync_view():
    return {"sync": True}


router = APIRouter(prefix="/inc")


@router.get("/luded")
async def included():
    return {"included": True}


app.include_router(router)


def plain(request):
    return PlainTextResponse("plain")


starlette_app = Starlette(routes=[Route("/plain", plain)])
'''

DJANGO_FILES = {
    "djsvc/__init__.py": "",
    "djsvc/settings.py": '''
SECRET_KEY = "test"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "djsvc.urls"
INSTALLED_APPS = []
MIDDLEWARE = []
DATABASES = {}
USE_TZ = True
''',
    "djsvc/views.py": '''
from django.http import HttpResponse


def predict(request, size):
    return HttpResponse(str(len(bytearray(size))))
''',
    "djsvc/urls.py": '''
from django.urls import path

from . import views

urlpatterns = [path("predict/<int:size>", views.predict)]
''',
    "djsvc/wsgi.py": '''
from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
''',
}


# --- in-process ----------------------------------------------------------------------------------


@pytest.fixture
def service(tmp_path: Path):
    """Writes a fresh, not yet imported module; yields a function ``(source) -> module name``."""
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    written: list[str] = []

    def write(source: str) -> str:
        name = f"websvc_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    yield write
    sys.path.remove(str(tmp_path))
    for name in written:
        sys.modules.pop(name, None)


def instrument(instrumentor: MemoryInstrumentor, capture: TelemetryCapture, targets: str, **kwargs: object) -> None:
    instrumentor.instrument(
        tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider, profile_targets=targets, start_monitor=False, **kwargs
    )


def assert_children_of_server_spans(capture: TelemetryCapture, operation: str, count: int) -> None:
    spans = capture.spans(operation)
    assert len(spans) == count, [s.name for s in capture.spans()]
    by_id = {s.context.span_id: s for s in capture.spans()}
    for span in spans:
        parent = by_id[span.parent.span_id]
        assert parent.kind.name == "SERVER", (parent.name, parent.kind)
        assert span.attributes[names.ATTR_OVERLAP] == 0  # the request it runs in is its own work


def assert_memory_attributes(span) -> None:
    missing = [key for key in MEMORY_ATTRIBUTES if key not in span.attributes]
    assert not missing, (span.name, missing, dict(span.attributes))
    assert span.attributes[names.ATTR_RSS_DELTA] == span.attributes[names.ATTR_RSS_END] - span.attributes[names.ATTR_RSS_START]


def route_requests(capture: TelemetryCapture) -> dict[str, float]:
    metric = capture.metric(names.METRIC_ROUTE_REQUESTS[0])
    return {} if metric is None else {p.attributes[names.LABEL_ROUTE]: p.value for p in metric.data.data_points}


def test_flask_views_routes_factories_and_blueprints_profiled_and_put_back(instrumentor, capture, service, caplog):
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    FlaskInstrumentor().instrument(tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider)
    try:
        name = service(FLASK_APP)
        caplog.set_level(logging.ERROR, logger="reer_otel_memory")
        instrument(instrumentor, capture, f"{name}:predict,{name}:later,{name}:stale,{name}:LIMIT", server_spans=True)
        module = importlib.import_module(name)
        client = module.app.test_client()
        for size in (10, 20, 30):
            assert client.get(f"/predict/{size}").data == str(size).encode()
        factory = module.create_app().test_client()  # registered after the target was wrapped
        assert factory.get("/made/5").data == b"5"
        assert factory.get("/later").data == b"later"
        assert client.get("/stale").data == b"stale"
        assert client.get("/missing").status_code == 404

        assert_children_of_server_spans(capture, f"{name}.predict", 4)
        assert_children_of_server_spans(capture, f"{name}.later", 1)
        assert not capture.spans(f"{name}.stale")
        servers = [s for s in capture.spans() if s.kind.name == "SERVER"]
        assert len(servers) == 7
        for span in servers:
            assert_memory_attributes(span)
        assert route_requests(capture) == {"/predict/<int:size>": 3, "/made/<int:size>": 1, "/later": 1, "/stale": 1, names.ROUTE_UNKNOWN: 1}
        peak = capture.metric(names.METRIC_ROUTE_PEAK[0])
        assert peak is not None and {p.attributes[names.LABEL_ROUTE] for p in peak.data.data_points} <= set(route_requests(capture))

        # One line for the view registered under another object, one for the attribute that is no function.
        stale_lines = [r.getMessage() for r in caplog.records if f"{name}:stale" in r.getMessage()]
        assert len(stale_lines) == 1 and "registered elsewhere" in stale_lines[0], stale_lines
        limit_lines = [r.getMessage() for r in caplog.records if f"{name}:LIMIT" in r.getMessage()]
        assert len(limit_lines) == 1 and "not callable" in limit_lines[0], limit_lines

        instrumentor.uninstrument()
        assert module.app.view_functions["predict"] is module.predict
        assert type(module.predict).__name__ == "function"
        capture.clear()
        client.get("/predict/1")
        assert not capture.spans(f"{name}.predict")
        assert all(names.ATTR_RSS_START not in s.attributes for s in capture.spans())
    finally:
        FlaskInstrumentor().uninstrument()


async def asgi_get(app, path: str) -> tuple[int, bytes]:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http", "path": path,
        "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 50000), "server": ("test", 80),
    }
    messages: list[dict] = []
    received = False

    async def receive():
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message):
        messages.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")


def test_fastapi_and_starlette_views_async_and_sync_are_profiled(instrumentor, capture, service):
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    name = service(ASGI_APP)
    instrument(instrumentor, capture, f"{name}:predict,{name}:sync_view,{name}:included,{name}:plain", server_spans=True)
    module = importlib.import_module(name)
    FastAPIInstrumentor.instrument_app(module.app, tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider)
    starlette_app = OpenTelemetryMiddleware(module.starlette_app, tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider)
    try:

        async def requests() -> None:
            assert await asgi_get(module.app, "/predict/7") == (200, b'{"size":7}')
            assert await asgi_get(module.app, "/sync") == (200, b'{"sync":true}')
            assert await asgi_get(module.app, "/inc/luded") == (200, b'{"included":true}')
            assert (await asgi_get(module.app, "/missing"))[0] == 404
            assert await asgi_get(starlette_app, "/plain") == (200, b"plain")

        asyncio.run(requests())
        for operation in ("predict", "sync_view", "included", "plain"):
            assert_children_of_server_spans(capture, f"{name}.{operation}", 1)
        servers = [s for s in capture.spans() if s.kind.name == "SERVER"]
        assert len(servers) == 5
        for span in servers:
            assert_memory_attributes(span)
        assert route_requests(capture) == {"/predict/{size}": 1, "/sync": 1, "/inc/luded": 1, names.ROUTE_UNKNOWN: 1, "/plain": 1}

        instrumentor.uninstrument()
        route = next(r for r in module.app.router.routes if getattr(r, "path", None) == "/predict/{size}")
        assert route.endpoint is module.predict and route.dependant.call is module.predict
    finally:
        FastAPIInstrumentor.uninstrument_app(module.app)


def test_a_target_whose_module_is_never_imported_is_logged_once_after_the_grace(instrumentor, capture, caplog):
    caplog.set_level(logging.ERROR, logger="reer_otel_memory")
    instrument(instrumentor, capture, "websvc_no_such_module_xyz:predict", pending_grace_s=0.2)

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if "websvc_no_such_module_xyz:predict" in r.getMessage()]

    lines = wait_for(logged, timeout_s=10, message="the pending target's log line")
    assert len(lines) == 1 and "was not imported 0.2 s after start-up" in lines[0]
    assert instrumentor.pending_targets == ["websvc_no_such_module_xyz:predict"]


# --- real servers under opentelemetry-instrument -------------------------------------------------


class WebServer(InstrumentedServer):
    """A server under opentelemetry-instrument; spans go to its output (console exporter)."""

    def __init__(self, tmp_path: Path, files: dict[str, str], command: list[str], targets: str, extra_env: dict[str, str] | None = None) -> None:
        settings = {
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            names.ENV_PROFILE_TARGETS: targets,
            names.ENV_SERVER_SPANS: "1",
            names.ENV_MONITORING_INTERVAL: "1",
            **(extra_env or {}),
        }
        super().__init__(tmp_path, files, command, settings, traces="console")

    def get_or_none(self, path: str) -> bytes | None:
        """The answer, or None while the server is not answering yet (it must still be running)."""
        try:
            return self.get(path)
        except OSError:
            assert self.process.poll() is None, self.output()
            return None

    def spans(self) -> list[dict]:
        """Every span the console exporter printed so far."""
        text, found, decoder = self.output(), [], json.JSONDecoder()
        index = text.find("{\n")
        while index >= 0:
            try:
                value, end = decoder.raw_decode(text, index)
            except json.JSONDecodeError:
                index = text.find("{\n", index + 1)
                continue
            if isinstance(value, dict) and "context" in value and "kind" in value:
                found.append(value)
            index = text.find("{\n", end)
        return found


def check_real_server(server: WebServer, operation: str, route: str, request_count: int = 5) -> None:
    try:
        wait_for(lambda: server.get_or_none("/predict/64") is not None, timeout_s=30, interval_s=0.1, message="the server to answer")
        for _ in range(request_count - 1):
            assert b"64" in server.get("/predict/64")

        def traced() -> tuple[list[dict], list[dict]] | None:
            spans = server.spans()
            views = [s for s in spans if s["name"] == operation]
            servers = [s for s in spans if s["kind"] == "SpanKind.SERVER"]
            return (views, servers) if len(views) >= request_count and len(servers) >= len(views) else None

        views, servers = wait_for(traced, timeout_s=20, interval_s=0.1, message=f"{request_count} {operation} spans")
        by_id = {s["context"]["span_id"]: s for s in servers}
        assert len(views) == len({s["context"]["span_id"] for s in views}) == sum(1 for s in servers if s["attributes"].get("http.route") == route)
        for view in views:
            assert view["parent_id"] in by_id, view  # a child of a server span
        for span in servers:
            missing = [key for key in MEMORY_ATTRIBUTES if key not in span["attributes"]]
            assert not missing, (missing, span["attributes"])

        def on_page() -> bool:
            try:
                return server.page_total(naming.ROUTE_REQUESTS, http_route=route) == len(views)
            except OSError:
                return False

        wait_for(on_page, timeout_s=20, interval_s=0.2, message=f"{naming.ROUTE_REQUESTS}{{http_route={route!r}}} on the page")
        assert server.page_total(naming.ROUTE_PEAK + "_count", http_route=route) >= 0
        assert naming.ROUTE_PEAK + "_bucket" in scrape(f"http://127.0.0.1:{server.metrics_port}/metrics")
        assert "Traceback" not in server.output()
    finally:
        server.stop()


@pytest.mark.e2e
@pytest.mark.slow
def test_flask_view_under_gunicorn(tmp_path: Path):
    server = WebServer(
        tmp_path, {"flsvc.py": FLASK_APP},
        [str(BIN / "gunicorn"), "-w", "1", "--threads", "2", "-k", "gthread", "-b", "127.0.0.1:{port}", "flsvc:app"], "flsvc:predict",
    )
    check_real_server(server, "flsvc.predict", "/predict/<int:size>")


@pytest.mark.e2e
def test_fastapi_view_under_uvicorn(tmp_path: Path):
    server = WebServer(
        tmp_path, {"fasvc.py": ASGI_APP},
        [str(BIN / "uvicorn"), "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning", "fasvc:app"], "fasvc:predict",
    )
    check_real_server(server, "fasvc.predict", "/predict/{size}")


@pytest.mark.e2e
def test_django_view_under_gunicorn(tmp_path: Path):
    server = WebServer(
        tmp_path, DJANGO_FILES,
        [str(BIN / "gunicorn"), "-w", "1", "-b", "127.0.0.1:{port}", "djsvc.wsgi:application"], "djsvc.views:predict",
        {"DJANGO_SETTINGS_MODULE": "djsvc.settings"},
    )
    check_real_server(server, "djsvc.views.predict", "predict/<int:size>")


OVERLAP_APP = '''
import threading

from flask import Flask

from reer_otel_memory import memory_context

app = Flask(__name__)
both_in = threading.Barrier(2, timeout=30)


@app.route("/together")
def together():
    both_in.wait()  # two requests in flight at once: each overlaps the other
    return "ok"


@app.route("/annotated")
def annotated():
    with memory_context("in_view", annotate_current=True, heap=True):
        return str(len(bytearray(1 << 16)))
'''


def test_per_route_figures_leave_out_overlapped_requests_and_keep_one_record_per_span(instrumentor, capture, service):
    import threading

    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    FlaskInstrumentor().instrument(tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider)
    try:
        name = service(OVERLAP_APP)
        instrument(instrumentor, capture, "", server_spans=True)
        module = importlib.import_module(name)
        answers: list[bytes] = []
        threads = [threading.Thread(target=lambda: answers.append(module.app.test_client().get("/together").data)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert answers == [b"ok", b"ok"]
        servers = [s for s in capture.spans() if s.kind.name == "SERVER"]
        assert len(servers) == 2 and all(s.attributes[names.ATTR_OVERLAP] >= 1 for s in servers)
        assert route_requests(capture) == {"/together": 2}  # counted, but their figures are the process's:
        for metric in (names.METRIC_ROUTE_PEAK[0], names.METRIC_ROUTE_NET[0]):
            found = capture.metric(metric)
            points = [] if found is None else [p for p in found.data.data_points if p.attributes[names.LABEL_ROUTE] == "/together"]
            assert all(getattr(p, "count", None) == 0 for p in points), (metric, points)

        # An annotation inside the request: the server span keeps the request's record, the
        # annotation's goes as an event, never mixed into it.
        capture.clear()
        assert module.app.test_client().get("/annotated").data == str(1 << 16).encode()
        (server,) = [s for s in capture.spans() if s.kind.name == "SERVER"]
        assert_memory_attributes(server)
        assert names.ATTR_OPERATION not in server.attributes
        (event,) = [e for e in server.events if e.name == names.EVENT_OPERATION]
        assert event.attributes[names.ATTR_OPERATION] == "in_view" and names.ATTR_HEAP_DELTA in event.attributes
        assert route_requests(capture)["/annotated"] == 1
        peak = capture.metric(names.METRIC_ROUTE_PEAK[0])
        assert peak is not None and any(p.attributes[names.LABEL_ROUTE] == "/annotated" and p.count == 1 for p in peak.data.data_points)
    finally:
        FlaskInstrumentor().uninstrument()


def test_views_registered_after_a_second_instrument_are_profiled(instrumentor, capture, service):
    """The instrumentor is a singleton: instrumented again after uninstrument, it hooks route
    registration again (a route registered afterwards, by an app factory, gets the wrapper)."""
    name = service(FLASK_APP)
    instrument(instrumentor, capture, f"{name}:later")
    module = importlib.import_module(name)
    instrumentor.uninstrument()
    instrument(instrumentor, capture, f"{name}:later")
    assert module.create_app().test_client().get("/later").data == b"later"
    assert [span.name for span in capture.spans(f"{name}.later")] == [f"{name}.later"]
