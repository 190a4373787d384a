"""``make stack``: the demo, Prometheus and Alertmanager together on loopback, alerts shown as they fire.

    make stack        # or: .venv/bin/python scripts/stack.py [--duration 120]

Starts, each on 127.0.0.1 and storing under one temporary directory removed at the end:

1. ``reer-otel-memory demo`` (a workload that climbs through the memory levels every few
   seconds) serving ``/metrics``;
2. Alertmanager with the shipped ``alertmanager.yml`` (its grouping waits shortened);
3. Prometheus with the shipped scrape configuration and rules, scraping and evaluating every
   second. The rules are the shipped ones with short ``for:`` durations and a one-minute
   prediction window, since the demo cycles in seconds where a service takes hours.

It prints the URLs, then a line each time an alert starts or stops firing. Ctrl-C
(or SIGTERM, or ``--duration``) stops the three processes and removes the directory; the exit
status is 0, or 1 when a process could not start (the message says which and why).
Needs ``prometheus`` and ``alertmanager`` (Debian: ``prometheus-alertmanager``) on ``PATH``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from reer_otel_memory.deploy import rules

HOST = "127.0.0.1"
DEFAULT_PROMETHEUS_PORT = 9090
DEFAULT_ALERTMANAGER_PORT = 9093
DEFAULT_DEMO_PORT = 9464
INTERVAL_S = 1.0
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
#: ``for:`` durations for the demo, which crosses every level within seconds: long enough that
#: the terminal shows alerts pending before they fire, short enough to fire in each cycle.
DEMO_FOR_S = 1.0
DEMO_OPTIONS = rules.RuleOptions(prediction_window_s=60, prediction_horizon_s=120, cleanup_window_s=30)
ALERTMANAGER_BINARIES = ("alertmanager", "prometheus-alertmanager")


class StackError(RuntimeError):
    """A process of the stack could not start."""


def _binary(candidates: Sequence[str]) -> str:
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    raise StackError(f"none of {list(candidates)} is on PATH: install Prometheus and Alertmanager (Debian: apt-get install prometheus prometheus-alertmanager)")


def _ready(url: str, process: subprocess.Popen[bytes], name: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"{name} exited with status {process.returncode}; its log ({log}):\n{log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise StackError(f"{name} did not answer {url} within {READY_TIMEOUT_S:g} s; its log: {log}")


class Stack:
    """The three processes and their directory; :meth:`start`, then :meth:`stop` (idempotent)."""

    def __init__(self, prometheus_port: int, alertmanager_port: int, demo_port: int, workdir: Path | None = None) -> None:
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="reer-stack-"))
        self._owns_workdir = workdir is None
        self.prometheus = f"http://{HOST}:{prometheus_port}"
        self.alertmanager = f"http://{HOST}:{alertmanager_port}"
        self.demo_target = f"{HOST}:{demo_port}"
        self.ports = {"prometheus": prometheus_port, "alertmanager": alertmanager_port, "demo": demo_port}
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def _spawn(self, name: str, command: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as output:
            # A session of its own: the terminal's Ctrl-C reaches this process only, which then
            # stops the children in order.
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.processes.append((name, process))
        return process, log

    def start(self) -> None:
        prometheus_binary = _binary(("prometheus",))
        alertmanager_binary = _binary(ALERTMANAGER_BINARIES)
        rules_path = self.workdir / rules.RULES_FILENAME
        rules_path.write_text(rules.render_rules(for_s=DEMO_FOR_S, options=DEMO_OPTIONS))
        am_config = self.workdir / rules.ALERTMANAGER_CONFIG_FILENAME
        am_config.write_text(rules.render_alertmanager_config(group_wait_s=1, group_interval_s=5))
        prom_config = self.workdir / rules.PROMETHEUS_CONFIG_FILENAME
        prom_config.write_text(
            rules.render_prometheus_config(
                [self.demo_target],
                rule_files=[str(rules_path)],
                scrape_interval_s=INTERVAL_S,
                evaluation_interval_s=INTERVAL_S,
                alertmanagers=[self.alertmanager.removeprefix("http://")],
            )
        )
        demo, demo_log = self._spawn(
            "demo", [sys.executable, "-m", "reer_otel_memory", "demo", "--host", HOST, "--port", str(self.ports["demo"]), "--quiet"]
        )
        _ready(f"http://{self.demo_target}/metrics", demo, "the demo", demo_log)
        alertmanager, am_log = self._spawn(
            "alertmanager",
            [
                alertmanager_binary,
                f"--config.file={am_config}",
                f"--storage.path={self.workdir / 'alertmanager-data'}",
                f"--web.listen-address={HOST}:{self.ports['alertmanager']}",
                "--cluster.listen-address=",
            ],
        )
        _ready(f"{self.alertmanager}/-/ready", alertmanager, "Alertmanager", am_log)
        prometheus, prom_log = self._spawn(
            "prometheus",
            [
                prometheus_binary,
                f"--config.file={prom_config}",
                f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                f"--web.listen-address={HOST}:{self.ports['prometheus']}",
            ],
        )
        _ready(f"{self.prometheus}/-/ready", prometheus, "Prometheus", prom_log)

    def alerts_page(self) -> str:
        """The URL of Prometheus's alerts page: ``/alerts``, or ``/classic/alerts`` in builds
        without the React UI (Debian's package)."""
        for path in ("/alerts", "/classic/alerts"):
            try:
                with urllib.request.urlopen(f"{self.prometheus}{path}", timeout=5) as response:
                    if response.status == 200:
                        return f"{self.prometheus}{path}"
            except urllib.error.HTTPError:
                continue
        return f"{self.prometheus}/alerts"

    def alerts(self) -> list[dict[str, Any]]:
        """Prometheus's pending and firing alerts (``/api/v1/alerts``)."""
        with urllib.request.urlopen(f"{self.prometheus}/api/v1/alerts", timeout=5) as response:
            alerts: list[dict[str, Any]] = json.load(response)["data"]["alerts"]
            return alerts

    def stop(self) -> None:
        # Prometheus first, so it sends no alerts to a stopped Alertmanager, the demo last.
        for _name, process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for _name, process in reversed(self.processes):
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)
        self.processes.clear()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _key(alert: dict[str, Any]) -> tuple[str, str]:
    labels = alert["labels"]
    extra = "".join(f" {name}={labels[name]}" for name in ("reer_operation", "device") if name in labels)
    return labels["alertname"], f"{labels.get('job', '?')}/{labels.get('instance', '?')}{extra}"


def watch(stack: Stack, stopping: threading.Event, out: TextIO, duration_s: float | None = None) -> None:
    """Print a line when an alert starts firing and when it stops, until ``stopping`` is set
    or ``duration_s`` passes. Pending alerts are not shown: the demo makes many of them."""
    firing: dict[tuple[str, str], str] = {}
    deadline = None if duration_s is None else time.monotonic() + duration_s
    while not stopping.is_set() and (deadline is None or time.monotonic() < deadline):
        try:
            now = {_key(alert): alert["labels"].get("severity", "") for alert in stack.alerts() if alert["state"] == "firing"}
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            out.write(f"{time.strftime('%H:%M:%S')}  (Prometheus did not answer: {exc})\n")
            now = firing
        stamp = time.strftime("%H:%M:%S")
        for key in sorted(now.keys() - firing.keys()):
            out.write(f"{stamp}  FIRING    {key[0]:44} {key[1]}  ({now[key]})\n")
        for key in sorted(firing.keys() - now.keys()):
            out.write(f"{stamp}  resolved  {key[0]:44} {key[1]}\n")
        out.flush()
        firing = now
        stopping.wait(INTERVAL_S)


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="make stack", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--prometheus-port", type=int, default=DEFAULT_PROMETHEUS_PORT)
    parser.add_argument("--alertmanager-port", type=int, default=DEFAULT_ALERTMANAGER_PORT)
    parser.add_argument("--demo-port", type=int, default=DEFAULT_DEMO_PORT)
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: at Ctrl-C)")
    args = parser.parse_args(argv)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    stack = Stack(args.prometheus_port, args.alertmanager_port, args.demo_port)
    try:
        out.write(f"Starting the demo, Alertmanager and Prometheus on {HOST} (files under {stack.workdir}) ...\n")
        out.flush()
        stack.start()
        alerts_page = stack.alerts_page()
        out.write(
            f"  Prometheus alerts  {alerts_page}\n"
            f"  Prometheus graph   {alerts_page.replace('/alerts', '/graph')}?g0.expr=reer_memory_rss_bytes&g0.tab=0\n"
            f"  Alertmanager       {stack.alertmanager}\n"
            f"  demo /metrics      http://{stack.demo_target}/metrics\n"
            f"Rules: the shipped ones with for: {rules.format_duration(DEMO_FOR_S)} for the demo. Alerts as they change "
            "(firing and resolved; Ctrl-C stops everything):\n"
        )
        out.flush()
        watch(stack, stopping, out, args.duration)
        return 0
    except StackError as exc:
        out.write(f"make stack: {exc}\n")
        return 1
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        out.write("Stopped the demo, Alertmanager and Prometheus.\n")
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
