"""The example Alertmanager configuration: amtool accepts it, and with a real Prometheus and a
real Alertmanager a process above its critical threshold notifies once, at the critical level,
while its cleanup and alert-threshold alerts are inhibited."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import require_binary, wait_for
from metrics_process import MetricsProcess
from prometheus_server import PrometheusServer, ServerProcess

from reer_otel_memory import _names as names
from reer_otel_memory.config import MB
from reer_otel_memory.deploy import rules

ROOT = Path(__file__).resolve().parent.parent
DEPLOYED_CONFIG = ROOT / "deploy" / "alertmanager" / rules.ALERTMANAGER_CONFIG_FILENAME

#: Far below any Python process's RSS, so the service is above all three from its first sample.
CRITICAL_MB = 4
THRESHOLDS_ENV = {names.ENV_ALERT_MB: "1", names.ENV_CLEANUP_MB: "2", names.ENV_CRITICAL_MB: str(CRITICAL_MB)}
#: Short enough that the test is over in seconds, long enough that every alert of one rule
#: evaluation has reached Alertmanager (and its inhibitor) before the first group is flushed.
GROUP_WAIT_S = 1.0
GROUP_INTERVAL_S = 1.0


def amtool_check(config_path: Path) -> subprocess.CompletedProcess[str]:
    amtool = require_binary("amtool")
    return subprocess.run([amtool, "check-config", str(config_path)], capture_output=True, text=True, timeout=60)


@pytest.mark.e2e
def test_shipped_config_passes_amtool() -> None:
    assert DEPLOYED_CONFIG.read_text() == rules.render_alertmanager_config(), "run `make deploy`"
    result = amtool_check(DEPLOYED_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "3 inhibit rules" in result.stdout
    assert "1 receivers" in result.stdout


@pytest.mark.e2e
def test_webhook_config_with_short_intervals_passes_amtool(tmp_path: Path) -> None:
    config_path = tmp_path / rules.ALERTMANAGER_CONFIG_FILENAME
    config_path.write_text(
        rules.render_alertmanager_config("http://127.0.0.1:9/hook", group_wait_s=0.5, group_interval_s=1, repeat_interval_s=60)
    )
    result = amtool_check(config_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "group_wait: 500ms" in config_path.read_text()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"receiver_url": "127.0.0.1:5001"}, "receiver_url='127.0.0.1:5001': expected an http:// or https:// URL"),
        ({"group_wait_s": -1}, "group_wait_s=-1: expected a non-negative number of seconds"),
        ({"group_interval_s": 0}, "group_interval_s=0: expected a positive number of seconds"),
        ({"repeat_interval_s": "4h"}, "repeat_interval_s='4h': expected a positive number of seconds"),
    ],
)
def test_bad_arguments_are_refused_by_name(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rules.render_alertmanager_config(**arguments)


# --- a real Alertmanager -----------------------------------------------------------------------


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records the JSON body of every POST it receives."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver._lock:
                    receiver.bodies.append(body)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass  # one line per notification on stderr would only be noise

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert of every notification received so far."""
        with self._lock:
            return [alert for body in self.bodies for alert in body["alerts"]]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


class AlertmanagerServer(ServerProcess):
    """One ``alertmanager`` process with ``config_text``, clustering off, storage under ``workdir``."""

    name = "alertmanager"

    def __init__(self, binary: str, workdir: Path, config_text: str) -> None:
        super().__init__(workdir, binary)
        self.config_path = self.workdir / rules.ALERTMANAGER_CONFIG_FILENAME
        self.config_path.write_text(config_text)

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / f'data-{self.port}'}",
            f"--web.listen-address={self.address}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]

    def alerts(self) -> list[dict[str, Any]]:
        """``/api/v2/alerts``: every alert it holds, active, inhibited or silenced."""
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=10) as response:
            return json.load(response)


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def alertmanager(tmp_path: Path, webhook: WebhookReceiver) -> Iterator[AlertmanagerServer]:
    binary = require_binary("prometheus-alertmanager")
    config_text = rules.render_alertmanager_config(
        webhook.url, group_wait_s=GROUP_WAIT_S, group_interval_s=GROUP_INTERVAL_S, repeat_interval_s=3600
    )
    server = AlertmanagerServer(binary, tmp_path / "alertmanager", config_text)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[MetricsProcess]:
    with MetricsProcess(tmp_path / "service", THRESHOLDS_ENV) as process:
        yield process


@pytest.fixture
def prometheus(tmp_path: Path, service: MetricsProcess, alertmanager: AlertmanagerServer) -> Iterator[PrometheusServer]:
    binary = require_binary("prometheus")
    # for: 1s at a 1 s evaluation interval: the alerts fire on the second evaluation.
    with PrometheusServer(
        tmp_path / "prometheus",
        [service.target],
        rules.render_rules(for_s=1),
        binary=binary,
        alertmanagers=[alertmanager.address],
    ) as prom:
        yield prom


@pytest.mark.e2e
@pytest.mark.slow
def test_critical_alert_notifies_and_inhibits_the_lower_threshold_alerts(
    service: MetricsProcess, prometheus: PrometheusServer, alertmanager: AlertmanagerServer, webhook: WebhookReceiver
) -> None:
    assert service.start_rss_bytes >= CRITICAL_MB * MB, "the service must start above its critical threshold"
    process_labels = {"job": prometheus.job, "instance": service.target}

    def of_the_service(alert: dict[str, Any]) -> bool:
        return all(alert["labels"].get(key) == value for key, value in process_labels.items())

    def critical_notified() -> dict[str, Any] | None:
        return next(
            (
                alert
                for alert in webhook.alerts()
                if of_the_service(alert) and alert["labels"]["alertname"] == rules.CRITICAL_THRESHOLD_EXCEEDED
            ),
            None,
        )

    notified = wait_for(critical_notified, timeout_s=30, interval_s=0.1, message="the critical alert at the webhook")
    assert notified["status"] == "firing"
    assert notified["labels"]["severity"] == "critical"

    threshold_alerts = (rules.CRITICAL_THRESHOLD_EXCEEDED, rules.CLEANUP_THRESHOLD_EXCEEDED, rules.ALERT_THRESHOLD_EXCEEDED)

    def all_three_held() -> dict[str, dict[str, Any]] | None:
        held = {alert["labels"]["alertname"]: alert for alert in alertmanager.alerts() if of_the_service(alert)}
        return held if all(name in held for name in threshold_alerts) else None

    held = wait_for(all_three_held, timeout_s=15, interval_s=0.1, message="all three threshold alerts in Alertmanager")
    critical = held[rules.CRITICAL_THRESHOLD_EXCEEDED]
    cleanup = held[rules.CLEANUP_THRESHOLD_EXCEEDED]
    alert_level = held[rules.ALERT_THRESHOLD_EXCEEDED]
    assert critical["status"]["state"] == "active", critical["status"]
    assert critical["status"]["inhibitedBy"] == []
    assert cleanup["status"]["state"] == "suppressed", cleanup["status"]
    assert cleanup["status"]["inhibitedBy"] == [critical["fingerprint"]]
    assert alert_level["status"]["state"] == "suppressed", alert_level["status"]
    assert alert_level["status"]["inhibitedBy"]
    assert set(alert_level["status"]["inhibitedBy"]) <= {critical["fingerprint"], cleanup["fingerprint"]}
    # The service paged once, at the critical level: the inhibited alerts were never sent.
    notified_names = {alert["labels"]["alertname"] for alert in webhook.alerts() if of_the_service(alert)}
    assert rules.CLEANUP_THRESHOLD_EXCEEDED not in notified_names
    assert rules.ALERT_THRESHOLD_EXCEEDED not in notified_names
