"""Pre-fork pages as they run: live worker figures, totals that outlive recycled workers, only real workers.

Real gunicorn (forked) and uvicorn (spawned) workers under ``opentelemetry-instrument`` with the
default monitor interval (30 s), scraped over HTTP. Each figure the tests hold to (how long the
page lags the last response, the page's RSS against ``/proc/<pid>/status``) is printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from _children import scrape
from conftest import wait_for
from test_prefork import BIN, RSS, Server, baseline_alert_mb, every_worker_appears

from reer_otel_memory import _names as names

REQUESTS = 60


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def listens(pid: int, server: Server) -> bool:
    """Whether the process listens on a TCP port other than the service's (which workers share)."""
    try:
        connections = psutil.Process(pid).net_connections(kind="inet")
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port != server.http_port for c in connections)
    except psutil.NoSuchProcess:
        return False


def page_series_count(server: Server) -> int:
    return sum(len(samples) for samples in scrape(server.url).values())


def assert_rss_live(server: Server, workers: set[int]) -> None:
    """Every worker's RSS on the page within 10% of its VmRSS read right after the scrape."""
    worst: dict[int, float] = {}

    def close_enough() -> bool:
        page = {int(dict(labels)[names.LABEL_PID]): value for labels, value in scrape(server.url)[RSS].items()}
        for pid in workers:
            worst[pid] = abs(page.get(pid, 0.0) - vm_rss(pid)) / vm_rss(pid)
        return all(share <= 0.10 for share in worst.values())

    wait_for(close_enough, timeout_s=2, interval_s=0.1, message=f"workers' RSS within 10% of VmRSS: {worst}")
    print(f"page RSS vs VmRSS: {', '.join(f'{pid}: {share:.1%}' for pid, share in worst.items())}")


def assert_helper_is_no_worker(server: Server) -> None:
    """A Python subprocess the service starts inherits nothing of the page, opens no listener, is not on it."""
    helper = server.request("/spawn")  # answers once the subprocess's start-up (instrumentation included) is over
    try:
        environment = psutil.Process(helper).environ()
        assert not {names.ENV_WORKER_DIR, names.ENV_WORKER_PARENT, names.ENV_WORKER_PORT} & set(environment), environment
        assert environment.get(names.ENV_PROMETHEUS_PORT) == str(server.metrics_port)
        assert not listens(helper, server)
        assert helper not in server.pids(RSS)
    finally:
        psutil.Process(helper).kill()


@pytest.mark.e2e
@pytest.mark.slow
def test_gunicorn_page_live_at_the_default_interval(tmp_path: Path) -> None:
    server = Server(tmp_path, [str(BIN / "gunicorn"), "-w", "2", "-b", "127.0.0.1:{port}", "toyapp:wsgi"], baseline_alert_mb(), interval_s=None)
    try:
        workers = every_worker_appears(server, 2)
        before = server.operations()
        for _ in range(REQUESTS):
            server.request()
        last_response = time.monotonic()
        wait_for(lambda: server.operations() - before == REQUESTS, timeout_s=10, interval_s=0.05, message=f"{REQUESTS} calls on /metrics")
        lag_s = time.monotonic() - last_response
        print(f"page total = {REQUESTS} requests {lag_s:.2f} s after the last response")
        assert lag_s <= 2.0

        grown = server.request("/grow?100")
        assert grown in workers
        assert_rss_live(server, workers)
        assert_helper_is_no_worker(server)
    finally:
        server.stop()


@pytest.mark.e2e
@pytest.mark.slow
def test_gunicorn_recycled_workers_keep_their_totals(tmp_path: Path) -> None:
    """With --preload the arbiter makes one call before forking: counted once, not once per worker."""
    (tmp_path / "preload.py").write_text("def when_ready(server):\n    import toyapp\n\n    toyapp.handle_work(1)\n")
    command = [str(BIN / "gunicorn"), "-c", "preload.py", "--preload", "-w", "2", "--max-requests", "40", "-b", "127.0.0.1:{port}", "toyapp:wsgi"]
    server = Server(tmp_path, command, baseline_alert_mb(), interval_s=None)
    try:
        every_worker_appears(server, 2)
        assert server.operations() == 1  # the arbiter's call
        served: set[int] = set()
        totals: list[float] = []
        first_series = 0
        for index in range(400):
            served.add(server.request())
            if index == 30:  # both workers' series on the page, none exited yet
                wait_for(lambda: server.operations() == 1 + 31, timeout_s=10, interval_s=0.05, message="31 calls on /metrics")
                first_series = page_series_count(server)
            if index % 25 == 24:
                totals.append(server.operations())
        wait_for(lambda: server.operations() == 1 + 400, timeout_s=10, interval_s=0.05, message="400 calls on /metrics")
        assert totals == sorted(totals), f"the total dropped: {totals}"
        assert len(served) >= 10, f"only {len(served)} workers served: gunicorn did not recycle them"

        def only_live_processes() -> bool:
            return server.pids(RSS) == server.workers() | {server.process.pid}

        wait_for(only_live_processes, timeout_s=10, interval_s=0.1, message="no exited worker's series on /metrics")
        last_series = page_series_count(server)
        print(f"{len(served)} workers served 400 requests; series {first_series} after 31 requests, {last_series} after 400")
        assert last_series <= first_series * 1.05  # a few per-process gauges come and go (connections)
        assert "Traceback" not in server.output()
    finally:
        server.stop()


@pytest.mark.e2e
@pytest.mark.slow
def test_uvicorn_page_shows_exactly_its_workers(tmp_path: Path) -> None:
    command = [str(BIN / "uvicorn"), "--workers", "2", "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning", "toyapp:asgi"]
    server = Server(tmp_path, command, baseline_alert_mb(), interval_s=None)
    try:
        workers = every_worker_appears(server, 2)
        helpers = set()
        for child in psutil.Process(server.process.pid).children():
            if "resource_tracker" in " ".join(child.cmdline()):
                helpers.add(child.pid)
        assert helpers, "uvicorn started no resource tracker: nothing to check"
        wait_for(lambda: not any(listens(pid, server) for pid in helpers), timeout_s=5, interval_s=0.1, message="the resource tracker's listener closed")
        for _ in range(10):
            server.request()
        assert server.pids(RSS) == workers | {server.process.pid}
        wait_for(lambda: not any(listens(pid, server) for pid in workers), timeout_s=5, interval_s=0.1, message="the workers' own listeners closed")
        assert_rss_live(server, workers)
        assert_helper_is_no_worker(server)
        assert "Traceback" not in server.output()
    finally:
        server.stop()


def test_parent_folds_an_exited_worker_once_and_skips_a_corrupt_page(tmp_path: Path) -> None:
    """The parent's merge with real processes: one that exited, one alive, and a page that is no JSON."""
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

    from reer_otel_memory.export.workers import WorkerPages, families_of

    def own() -> list[object]:
        calls = CounterMetricFamily("calls", "Calls.", labels=["op"])
        calls.add_metric(["a"], 1)
        rss = GaugeMetricFamily("rss_bytes", "RSS.")
        rss.add_metric([], 5)
        return [calls, rss]

    def page(pid: int, calls: float, rss: float) -> None:
        families = families_of(own())
        families[0][4][0] = (families[0][4][0][0], {"op": "a"}, calls)
        families[1][4][0] = (families[1][4][0][0], {}, rss)
        data = {"pid": pid, "start": psutil.Process(pid).create_time(), "parent": os.getpid(), "families": families}
        (tmp_path / f"{pid}.json").write_text(json.dumps(data))

    sleeper = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    exited = subprocess.Popen(sleeper, stdin=subprocess.PIPE)
    alive = subprocess.Popen(sleeper, stdin=subprocess.PIPE)
    try:
        page(exited.pid, calls=10, rss=7)
        page(alive.pid, calls=5, rss=9)
        (tmp_path / f"{alive.pid + 1}.json").write_text("{")
        exited.communicate(timeout=10)
        pages = WorkerPages(tmp_path, os.getpid(), own, 30.0, owns_directory=False)
        for _ in range(2):  # the exited worker's calls are folded once, not once per scrape
            merged = {m.name: m for m in pages.merged()}
            assert [(s.labels, s.value) for s in merged["calls"].samples] == [({"op": "a"}, 16.0)]
            assert {s.labels["pid"]: s.value for s in merged["rss_bytes"].samples} == {str(os.getpid()): 5.0, str(alive.pid): 9.0}
        assert not (tmp_path / f"{exited.pid}.json").exists()
    finally:
        for process in (exited, alive):
            process.kill()
            process.communicate(timeout=10)
