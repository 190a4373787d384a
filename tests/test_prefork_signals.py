"""Pre-fork servers: the emergency signal in gunicorn's workers, and OTel's process figures after fork.

Real gunicorn and uvicorn under ``opentelemetry-instrument`` (with the system-metrics
instrumentation that ``opentelemetry-bootstrap`` installs): a signal the server leaves alone
triggers the emergency cleanup in the worker it is sent to; one gunicorn keeps for itself is named in one warning line;
each forked worker's ``process.memory.usage`` is its own RSS, not the arbiter's. Plain
``os.fork()`` children show the system-metrics instrumentation repointed only while it is
instrumented, and one debug line where it is shaped otherwise. The table of signals each server
keeps is checked against the installed gunicorn and uvicorn.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import gunicorn.arbiter
import gunicorn.workers.base
import pytest
import uvicorn.server
import uvicorn.supervisors.multiprocess
from _children import scrape
from _servers import BIN, InstrumentedServer
from conftest import wait_for

from reer_otel_memory import _names as names
from reer_otel_memory.export import naming as series
from reer_otel_memory.monitoring.servers import RECOMMENDED_SIGNAL, SERVER_SIGNALS, detect_server, server_taking

MB = 1024 * 1024

APP = """
import os
from pathlib import Path

from reer_otel_memory import register_cleanup_hook

held = []


def record_cleanup():
    with Path(__file__).with_name("cleanups.log").open("a") as log:
        log.write(f"{os.getpid()}\\n")


register_cleanup_hook("signalapp", record_cleanup)  # in each worker, where the app is imported


def wsgi(environ, start_response):
    if environ["PATH_INFO"] == "/grow":
        block = bytearray(int(environ["QUERY_STRING"]) * 1024 * 1024)
        for page in range(0, len(block), 4096):
            block[page] = 1  # touch every page: resident, not just reserved
        held.append(block)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]


async def asgi(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
"""

CLEANUPS = series.series_name(names.METRIC_CLEANUPS, series.COUNTER)
RSS = series.series_name(names.METRIC_RSS)
PROCESS_MEMORY = series.series_name(("process.memory.usage", "By", ""))  # the system-metrics instrumentation's


GUNICORN = [str(BIN / "gunicorn"), "-w", "{workers}", "-b", "127.0.0.1:{port}", "--no-control-socket", "signalapp:wsgi"]
UVICORN = [str(BIN / "uvicorn"), "--workers", "{workers}", "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning", "signalapp:asgi"]


class Server(InstrumentedServer):
    """``opentelemetry-instrument`` running a pre-fork server with the app above, metrics on one page."""

    def __init__(self, tmp_path: Path, command: list[str], workers: int, emergency_signal: str) -> None:
        self.cleanup_log = tmp_path / "cleanups.log"
        settings = {names.ENV_MONITORING_INTERVAL: "1", names.ENV_EMERGENCY_SIGNAL: emergency_signal}
        super().__init__(tmp_path, {"signalapp.py": APP}, command, settings, workers=workers)
        self.worker_count = workers

    def cleaned(self) -> list[int]:
        """The pids of the workers whose cleanup hook ran, once per cleanup."""
        return [int(line) for line in self.cleanup_log.read_text().split()] if self.cleanup_log.exists() else []

    def emergency_cleanups(self) -> float:
        """Emergency cleanups on the page, all processes together."""
        return sum(value for labels, value in scrape(self.url).get(CLEANUPS, {}).items() if (names.LABEL_TRIGGER, names.TRIGGER_EMERGENCY) in labels)

    def request(self, path: str) -> int:
        return int(self.get(path))

    def every_worker_on_the_page(self) -> set[int]:
        def ready() -> set[int] | None:
            assert self.process.poll() is None, self.output()
            workers = self.workers()
            if len(workers) != self.worker_count:
                return None
            try:
                on_page = set(self.by_pid(RSS))
            except OSError:
                return None
            return workers if workers | {self.process.pid} <= on_page else None

        found = wait_for(ready, timeout_s=60, interval_s=0.2, message=f"{self.worker_count} workers and the arbiter on /metrics")
        assert isinstance(found, set)
        return found


def vm_rss(pid: int) -> int:
    """The kernel's resident set size of ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


@pytest.mark.e2e
@pytest.mark.slow
def test_recommended_signal_cleans_up_in_the_worker_it_is_sent_to_and_each_worker_reports_its_own_process_memory(tmp_path: Path) -> None:
    server = Server(tmp_path, GUNICORN, workers=2, emergency_signal=RECOMMENDED_SIGNAL.name)
    try:
        workers = server.every_worker_on_the_page()
        target = min(workers)

        # The recommended signal, sent to one worker and to the arbiter: each runs one emergency cleanup.
        os.kill(target, RECOMMENDED_SIGNAL)
        os.kill(server.process.pid, RECOMMENDED_SIGNAL)
        wait_for(lambda: server.cleaned(), timeout_s=20, interval_s=0.1, message="the signalled worker's cleanup hook")
        wait_for(lambda: server.emergency_cleanups() == 2, timeout_s=20, interval_s=0.1, message="two emergency cleanups on the page")
        assert server.cleaned() == [target]  # that worker alone, once (the arbiter has no app, so no hook)
        assert server.workers() == workers  # no worker ended on it

        # One worker grows by 60 MB: its process.memory.usage follows its own RSS, not the arbiter's.
        grown = server.request("/grow?60")
        assert grown in workers

        def own_rss_on_the_page() -> tuple[float, int] | None:
            on_page = server.by_pid(PROCESS_MEMORY).get(grown)
            actual = vm_rss(grown)
            return (on_page, actual) if on_page is not None and abs(on_page - actual) <= 0.1 * actual else None

        found = wait_for(own_rss_on_the_page, timeout_s=20, interval_s=0.2, message="the grown worker's process.memory.usage within 10% of its VmRSS")
        assert isinstance(found, tuple)
        assert found[1] - vm_rss(server.process.pid) > 40 * MB  # the worker's RSS clearly differs from the arbiter's
        assert "Traceback" not in server.output()
    finally:
        server.stop()


@pytest.mark.e2e
@pytest.mark.slow
def test_recommended_signal_cleans_up_in_a_spawned_uvicorn_worker(tmp_path: Path) -> None:
    server = Server(tmp_path, UVICORN, workers=2, emergency_signal=RECOMMENDED_SIGNAL.name)
    try:
        workers = server.every_worker_on_the_page()
        target = min(workers)
        os.kill(target, RECOMMENDED_SIGNAL)
        wait_for(lambda: server.cleaned(), timeout_s=20, interval_s=0.1, message="the signalled worker's cleanup hook")
        wait_for(lambda: server.emergency_cleanups() == 1, timeout_s=20, interval_s=0.1, message="one emergency cleanup on the page")
        assert server.cleaned() == [target]
        assert server.workers() == workers
        assert "REER_MEMORY_EMERGENCY_SIGNAL" not in server.output()  # no warning: uvicorn leaves URG alone
    finally:
        server.stop()


@pytest.mark.e2e
def test_a_signal_gunicorn_keeps_is_named_in_one_warning_line(tmp_path: Path) -> None:
    server = Server(tmp_path, GUNICORN, workers=1, emergency_signal="USR1")
    try:
        server.every_worker_on_the_page()
        warnings = [line for line in server.output().splitlines() if "REER_MEMORY_EMERGENCY_SIGNAL" in line]
        assert len(warnings) == 1, server.output()
        assert "USR1" in warnings[0]
        assert "gunicorn" in warnings[0]
        assert "reopens its log files" in warnings[0]
        assert f"REER_MEMORY_EMERGENCY_SIGNAL={RECOMMENDED_SIGNAL.name[3:]}" in warnings[0]
    finally:
        server.stop()


def test_the_table_of_kept_signals_matches_the_installed_servers() -> None:
    gunicorn_keeps = {*gunicorn.arbiter.Arbiter.SIGNALS, *gunicorn.workers.base.Worker.SIGNALS, signal.SIGCHLD}
    assert gunicorn_keeps <= set(SERVER_SIGNALS["gunicorn"])
    # uvicorn's workers keep these; its supervisor acts on HUP, TTIN and TTOU, and swallows the rest of its list.
    assert set(uvicorn.server.HANDLED_SIGNALS) <= set(SERVER_SIGNALS["uvicorn"])
    assert {signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU} <= set(SERVER_SIGNALS["uvicorn"])
    for kept in (gunicorn_keeps, set(uvicorn.supervisors.multiprocess.SIGNALS), set(uvicorn.server.HANDLED_SIGNALS)):
        assert RECOMMENDED_SIGNAL not in kept
    assert signal.getsignal(RECOMMENDED_SIGNAL) == signal.SIG_DFL  # ignored by default: harmless without the handler


def test_the_server_is_known_from_its_command_line_or_its_modules() -> None:
    assert detect_server(["/venv/bin/python", "/venv/bin/gunicorn", "-w", "2", "app:wsgi"], {}) == "gunicorn"
    assert detect_server(["python3", "-X", "dev", "-m", "uvicorn", "--workers", "2", "app:asgi"], {}) == "uvicorn"
    assert detect_server(["python3", "-mgunicorn", "app:wsgi"], {}) == "gunicorn"
    assert detect_server(["python3", "-c", "from multiprocessing.spawn import spawn_main"], {}) is None
    assert detect_server(["python3", "service.py"], {}) is None
    assert detect_server(["python3", "service.py"], {"gunicorn.arbiter": object()}) == "gunicorn"
    assert server_taking(signal.SIGUSR1, "uvicorn") is None  # its workers keep the handler for USR1
    taken = server_taking(signal.SIGUSR2, "gunicorn")
    assert taken is not None
    assert "a worker exits on it" in taken.message("emergency_signal")
    assert server_taking(RECOMMENDED_SIGNAL, "gunicorn") is None


FORKS = """
import json
import logging
import os
import sys

from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor
from opentelemetry.sdk.metrics import MeterProvider

from reer_otel_memory.instrumentation import MemoryInstrumentor

logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
provider = MeterProvider()
SystemMetricsInstrumentor().instrument(meter_provider=provider)
MemoryInstrumentor().instrument(meter_provider=provider, start_monitor=False)
system_metrics = SystemMetricsInstrumentor._instance


def fork(case):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        proc = getattr(system_metrics, "_proc", None)
        os.write(write_end, json.dumps({"case": case, "pid": os.getpid(), "proc_pid": getattr(proc, "pid", None)}).encode())
        os._exit(0)
    os.close(write_end)
    line = os.read(read_end, 4096).decode()
    os.waitpid(pid, 0)
    print(line, flush=True)


fork("instrumented")
parents = system_metrics._proc
del system_metrics._proc  # a version of the instrumentation shaped otherwise
fork("no _proc")
system_metrics._proc = parents
system_metrics.uninstrument()
fork("uninstrumented")
print(json.dumps({"case": "parent", "pid": os.getpid()}), flush=True)
print("done", file=sys.stderr, flush=True)
"""


def test_a_forked_child_points_the_system_metrics_instrumentation_at_itself_only_where_it_is_instrumented(children) -> None:
    child = children.start(FORKS, {"REER_MEMORY_EXPLAIN": "off"}, name="forks")
    instrumented = child.message(lambda m: m["case"] == "instrumented")
    assert instrumented["proc_pid"] == instrumented["pid"]
    missing = child.message(lambda m: m["case"] == "no _proc")
    assert missing["proc_pid"] is None
    uninstrumented = child.message(lambda m: m["case"] == "uninstrumented")
    parent = child.message(lambda m: m["case"] == "parent")
    assert uninstrumented["proc_pid"] == parent["pid"]  # not instrumented: left as the child inherited it
    assert child.wait() == 0
    wait_for(lambda: "done" in child.stderr_lines, timeout_s=10, message="the child's last stderr line")
    debug_lines = [line for line in child.stderr_lines if "has no _proc" in line]
    assert len(debug_lines) == 1, child.stderr
    assert debug_lines[0].startswith("DEBUG ")
    assert "Traceback" not in child.stderr
