"""A real Prometheus server for tests: ephemeral port, temporary storage, 1 s intervals.

    with PrometheusServer(tmp_path, targets=["127.0.0.1:8000"], rules_text=render_rules()) as prom:
        wait_for(lambda: prom.query("reer_memory_rss_bytes"))
        prom.alerts()

``alertmanagers`` (``host:port`` strings) adds an ``alerting`` section sending alerts there.

The configuration comes from :func:`reer_otel_memory.deploy.rules.render_prometheus_config`, so the
example configuration the package ships is the one exercised here.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _children import free_port

from reer_otel_memory.deploy.rules import render_prometheus_config

#: Scrape and rule evaluation interval of the test server.
INTERVAL_S = 1.0
READY_TIMEOUT_S = 30.0
JOB = "reer-test"


class PrometheusError(RuntimeError):
    """Prometheus did not start, or answered a query with an error."""


class ServerProcess:
    """A server binary on a reserved loopback port: started with retries, ready once
    ``/-/ready`` answers (polled with a deadline), stopped on exit. Subclasses give the command."""

    name = "server"

    def __init__(self, workdir: Path, binary: str) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.binary = binary
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        """The command line for ``self.port``."""
        raise NotImplementedError

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> Any:
        """Start and wait (polling ``/-/ready``) until it serves requests."""
        for _attempt in range(3):  # the reserved port may be taken before the server binds it
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
            if self._wait_ready():
                return self
            self.stop()
        raise PrometheusError(f"{self.name} did not become ready; log:\n{self.log_text()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False  # exited: most likely the port was taken
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class PrometheusServer(ServerProcess):
    """One ``prometheus`` process scraping ``targets`` with ``rules_text`` loaded."""

    name = "prometheus"

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str],
        rules_text: str | None = None,
        *,
        binary: str = "prometheus",
        job: str = JOB,
        interval_s: float = INTERVAL_S,
        alertmanagers: Sequence[str] = (),
    ) -> None:
        super().__init__(workdir, binary)
        self.job = job
        rule_files: list[str] = []
        if rules_text is not None:
            rules_path = self.workdir / "rules.yml"
            rules_path.write_text(rules_text)
            rule_files.append(str(rules_path))
        self.config_path = self.workdir / "prometheus.yml"
        self.config_path.write_text(
            render_prometheus_config(
                list(targets),
                rule_files=rule_files,
                job=job,
                scrape_interval_s=interval_s,
                evaluation_interval_s=interval_s,
                alertmanagers=list(alertmanagers),
            )
        )

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / f'data-{self.port}'}",
            f"--web.listen-address={self.address}",
            "--log.level=warn",
        ]

    # --- HTTP API ---------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """``data`` of a successful ``/api/v1/<path>`` answer; raises PrometheusError otherwise."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            body = json.loads(error.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{url}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant query (a list of series for vector results)."""
        data = self.api("query", query=expr)
        return data["result"]

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule, flattened from ``/api/v1/rules``."""
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def alerts(self, name: str | None = None) -> list[dict[str, Any]]:
        """Pending and firing alerts from ``/api/v1/alerts``, optionally only ``name``."""
        alerts = self.api("alerts")["alerts"]
        return [alert for alert in alerts if name is None or alert["labels"].get("alertname") == name]

    def targets_up(self) -> bool:
        """True once every scrape target has been scraped successfully."""
        active = self.api("targets")["activeTargets"]
        return bool(active) and all(target["health"] == "up" for target in active)
