"""The whole path: the package's /metrics -> a real Prometheus -> the shipped rules fire."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import require_binary, wait_for
from metrics_process import MetricsProcess
from prometheus_server import PrometheusServer

from reer_otel_memory import _names as names
from reer_otel_memory.config import MB
from reer_otel_memory.deploy import rules
from reer_otel_memory.export import naming as series

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ALERT_MB = 80
#: What the test allocates beyond the alert threshold, so RSS stays above it through cleanups.
MARGIN_BYTES = 8 * MB
#: Above the alert threshold with room to spare, so only the alert-level rule is involved.
THRESHOLDS_ENV = {names.ENV_ALERT_MB: str(ALERT_MB), names.ENV_CLEANUP_MB: "1024", names.ENV_CRITICAL_MB: "2048"}


def rule_state(prom: PrometheusServer, alertname: str) -> dict[str, Any]:
    [rule] = [rule for rule in prom.rules() if rule["name"] == alertname]
    return rule


def test_alert_fires_when_the_process_crosses_its_alert_threshold(tmp_path: Path) -> None:
    binary = require_binary("prometheus")
    # for: 2s keeps the pending phase observable at a 1 s evaluation interval.
    rules_text = rules.render_rules(for_s=2)
    with MetricsProcess(tmp_path / "service", THRESHOLDS_ENV) as service, PrometheusServer(
        tmp_path / "prometheus", [service.target], rules_text, binary=binary
    ) as prom:
        selector = f'{{job="{prom.job}",instance="{service.target}"}}'
        # The process's own threshold reaches Prometheus, and its RSS is below it.
        wait_for(
            lambda: prom.query(f'{series.THRESHOLD}{selector[:-1]},{series.LABEL_LEVEL}="alert"}}'),
            timeout_s=20,
            interval_s=0.1,
            message="threshold series scraped",
        )
        [threshold] = prom.query(f'{series.THRESHOLD}{selector[:-1]},{series.LABEL_LEVEL}="alert"}}')
        assert float(threshold["value"][1]) == ALERT_MB * MB
        [rss] = prom.query(f"{series.RSS}{selector}")
        scraped_at_s = float(rss["value"][0])
        assert float(rss["value"][1]) < ALERT_MB * MB, "the process starts above its alert threshold"

        # A rule evaluation after that scrape leaves the alert inactive.
        def evaluated_after_scrape() -> dict[str, Any] | None:
            rule = rule_state(prom, rules.ALERT_THRESHOLD_EXCEEDED)
            return rule if rule.get("lastEvaluation") and _timestamp_s(rule["lastEvaluation"]) > scraped_at_s + 1 else None

        rule = wait_for(evaluated_after_scrape, timeout_s=15, interval_s=0.1, message="a rule evaluation after the scrape")
        assert rule["health"] == "ok", rule
        assert rule["state"] == "inactive"
        assert prom.alerts(rules.ALERT_THRESHOLD_EXCEEDED) == []

        # Cross the threshold: pending first, then firing once for: has passed.
        grown = service.command(f"grow {ALERT_MB * MB - service.start_rss_bytes + MARGIN_BYTES}")
        assert grown["rss_bytes"] >= ALERT_MB * MB

        def firing() -> dict[str, Any] | None:
            alerts = prom.alerts(rules.ALERT_THRESHOLD_EXCEEDED)
            return next((alert for alert in alerts if alert["state"] == "firing"), None)

        alert = wait_for(firing, timeout_s=20, interval_s=0.1, message="ReerMemoryAlertThresholdExceeded firing")
        # Pending before firing, from Prometheus's own record of each evaluation (its ALERTS series),
        # however long our polls took next to the for: window.
        pending = prom.query(
            f'count_over_time(ALERTS{{alertname="{rules.ALERT_THRESHOLD_EXCEEDED}",alertstate="pending",instance="{service.target}"}}[5m])'
        )
        assert pending and float(pending[0]["value"][1]) >= 1, "the alert fired without a pending evaluation first"
        assert alert["labels"]["severity"] == "warning"
        assert alert["labels"]["job"] == prom.job
        assert alert["labels"]["instance"] == service.target
        assert f"its alert threshold of {ALERT_MB}MiB ({names.ENV_ALERT_MB})" in alert["annotations"]["description"]
        assert float(alert["value"]) >= ALERT_MB * MB
        # Only the alert level was crossed.
        assert prom.alerts(rules.CLEANUP_THRESHOLD_EXCEEDED) == []
        assert prom.alerts(rules.CRITICAL_THRESHOLD_EXCEEDED) == []
        # The process counted the crossing itself, and the dashboard's level panel shows it.
        assert wait_for(lambda: prom.query(f'{series.ALERTS}{selector[:-1]},{series.LABEL_LEVEL}="alert"}} > 0'), timeout_s=10)
        assert wait_for(lambda: prom.query(f"{series.LEVEL}{selector} == 1"), timeout_s=10)


def _timestamp_s(rfc3339: str) -> float:
    """Seconds since the epoch of Prometheus's RFC 3339 time (nanoseconds cut to microseconds)."""
    match = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", rfc3339)
    assert match, rfc3339
    fraction = (match.group(2) or "0")[:6].ljust(6, "0")
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.fromisoformat(f"{match.group(1)}.{fraction}{zone}").timestamp()
