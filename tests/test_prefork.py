"""Pre-fork servers under opentelemetry-instrument: every worker on the parent's /metrics, by ``pid``.

Real gunicorn (3 forked workers) and uvicorn (2 spawned workers) processes, auto-instrumented
with ``OTEL_METRICS_EXPORTER=prometheus``; the page is scraped over HTTP, the alert rules are
evaluated by promtool on the scraped values.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
import yaml
from _children import scrape
from _servers import BIN, InstrumentedServer
from conftest import require_binary, wait_for

from reer_otel_memory import _names as names
from reer_otel_memory.deploy import rules
from reer_otel_memory.export import naming as series

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MB = 1024 * 1024

APP = '''
import os
import subprocess
import sys

held = []
helpers = []


def spawn_helper():
    """A Python subprocess of the service (it inherits the worker's environment), kept running."""
    code = "import sys; print('ready', flush=True); sys.stdin.read()"  # after its start-up, instrumentation included
    helper = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    helper.stdout.readline()
    helpers.append(helper)
    return helper.pid


def handle_work(size):
    return len(bytearray(size))


def grow(mb):
    held.append(bytearray(mb * 1024 * 1024))
    for page in range(0, len(held[-1]), 4096):
        held[-1][page] = 1  # touch every page: resident, not just reserved


def wsgi(environ, start_response):
    path = environ["PATH_INFO"]
    answer = os.getpid()
    if path == "/grow":
        grow(int(environ["QUERY_STRING"]))
    elif path == "/spawn":
        answer = spawn_helper()
    else:
        handle_work(1 << 16)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(answer).encode()]


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    answer = os.getpid()
    if scope["path"] == "/grow":
        grow(int(scope["query_string"]))
    elif scope["path"] == "/spawn":
        answer = spawn_helper()
    else:
        handle_work(1 << 16)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(answer).encode()})
'''

OPERATION_COUNT = series.series_name(names.METRIC_OPERATION_DURATION, series.HISTOGRAM) + "_count"
THRESHOLD = series.series_name(names.METRIC_THRESHOLD)
LEVEL = series.series_name(names.METRIC_LEVEL)
RSS = series.series_name(names.METRIC_RSS)


class Server(InstrumentedServer):
    """A pre-fork server under opentelemetry-instrument, its app in a temporary directory."""

    def __init__(self, tmp_path: Path, command: list[str], alert_mb: int, interval_s: str | None = "1", env: dict[str, str] | None = None) -> None:
        settings = {
            names.ENV_PROFILE_TARGETS: "toyapp:handle_work",
            **({names.ENV_MONITORING_INTERVAL: interval_s} if interval_s is not None else {}),
            names.ENV_ALERT_MB: str(alert_mb),
            names.ENV_CLEANUP_MB: str(alert_mb + 4000),
            names.ENV_CRITICAL_MB: str(alert_mb + 8000),
            **(env or {}),
        }
        super().__init__(tmp_path, {"toyapp.py": APP}, command, settings)

    def request(self, path: str = "/work") -> int:
        return int(self.get(path))

    def operations(self) -> float:
        """The profiled calls of every process on the page: one series, summed over live and exited workers."""
        samples = scrape(self.url).get(OPERATION_COUNT, {})
        found = [value for labels, value in samples.items() if dict(labels).get(series.LABEL_OPERATION) == "toyapp.handle_work"]
        assert len(found) <= 1, samples
        return found[0] if found else 0.0

    def pids(self, name: str, **labels: str) -> set[int]:
        return set(self.by_pid(name, **labels))


def every_worker_appears(server: Server, worker_count: int) -> set[int]:
    def ready() -> set[int] | None:
        assert server.process.poll() is None, server.output()
        workers = server.workers()
        if len(workers) != worker_count:
            return None
        try:
            on_page = server.pids(RSS)
        except OSError:
            return None
        return workers if workers | {server.process.pid} <= on_page else None

    return wait_for(ready, timeout_s=60, interval_s=0.2, message=f"{worker_count} workers and the parent on /metrics")


def assert_every_worker_is_its_own_series(server: Server, workers: set[int]) -> None:
    """Gauges per process, by pid; the profiled calls of all workers summed in one series without pid."""
    for level in ("alert", "cleanup", "critical"):
        assert workers <= server.pids(THRESHOLD, level=level)
    assert workers <= server.pids(LEVEL)
    before = server.operations()
    served: list[int] = []

    def all_served() -> bool:
        served.extend(server.request() for _ in range(6))
        return workers <= set(served)

    wait_for(all_served, timeout_s=60, interval_s=0.1, message="a request served by every worker")
    assert not server.pids(OPERATION_COUNT)
    wait_for(lambda: server.operations() - before == len(served), timeout_s=10, message=f"{len(served)} calls on /metrics")


def assert_alerts_fire_per_worker(tmp_path: Path, server: Server, alert_mb: int) -> None:
    """Grow one worker past the alert threshold: the rule fires for that pid alone."""
    grown = server.request(f"/grow?{alert_mb + 64}")
    others = server.workers() - {grown}

    def grown_is_above() -> bool:
        rss = {int(dict(labels)[names.LABEL_PID]): value for labels, value in scrape(server.url)[RSS].items()}
        return rss.get(grown, 0) >= alert_mb * MB and all(rss[pid] < alert_mb * MB for pid in others if pid in rss)

    wait_for(grown_is_above, timeout_s=30, interval_s=0.2, message="the grown worker's RSS above its alert threshold on /metrics")
    page = scrape(server.url)
    input_series = []
    for name in (RSS, THRESHOLD):
        for labels, value in page[name].items():
            label_text = ",".join(f'{k}="{v}"' for k, v in sorted({**dict(labels), "job": "svc", "instance": "host:9464"}.items()))
            input_series.append({"series": f"{name}{{{label_text}}}", "values": f"{value:.0f}x5"})
    rule = next(r for r in rules.rule_groups(for_s=0)["groups"][0]["rules"] if r["alert"] == "ReerMemoryAlertThresholdExceeded")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [{"record": "firing", "expr": rule["expr"]}]}]}))
    test_file = tmp_path / "test.yml"
    test_file.write_text(
        json.dumps(
            {
                "rule_files": ["rules.yml"],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": input_series,
                        "promql_expr_test": [
                            {
                                "expr": "count by (pid) (firing)",
                                "eval_time": "2m",
                                "exp_samples": [{"labels": f'{{pid="{grown}"}}', "value": 1}],
                            }
                        ],
                    }
                ],
            }
        )
    )
    result = subprocess.run([require_binary("promtool"), "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def baseline_alert_mb() -> int:
    # Above any idle worker, below one that grew by alert_mb's margin.
    return int(psutil.Process().memory_info().rss / MB) + 150


def test_gunicorn_three_workers_each_on_the_parents_page(tmp_path: Path) -> None:
    alert_mb = baseline_alert_mb()
    server = Server(tmp_path, [str(BIN / "gunicorn"), "-w", "3", "-b", "127.0.0.1:{port}", "toyapp:wsgi"], alert_mb)
    try:
        workers = every_worker_appears(server, 3)
        assert_every_worker_is_its_own_series(server, workers)

        # A worker that dies is gone from the next scrape, its calls stay in the total; gunicorn's
        # replacement appears.
        total = server.operations()
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in server.pids(RSS), timeout_s=10, interval_s=0.1, message="the killed worker to leave /metrics")
        assert server.operations() == total
        replaced = every_worker_appears(server, 3)
        assert victim not in replaced

        assert_alerts_fire_per_worker(tmp_path, server, alert_mb)
        assert "Traceback" not in server.output()
    finally:
        server.stop()


def test_uvicorn_two_spawned_workers_each_on_the_parents_page(tmp_path: Path) -> None:
    alert_mb = baseline_alert_mb()
    server = Server(
        tmp_path,
        [str(BIN / "uvicorn"), "--workers", "2", "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning", "toyapp:asgi"],
        alert_mb,
    )
    try:
        workers = every_worker_appears(server, 2)
        assert_every_worker_is_its_own_series(server, workers)
        assert_alerts_fire_per_worker(tmp_path, server, alert_mb)
        assert "Traceback" not in server.output()
    finally:
        server.stop()
