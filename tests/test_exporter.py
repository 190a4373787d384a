"""The Prometheus endpoint, in real processes: scraped over HTTP and checked with promtool."""

from __future__ import annotations

import socket
import subprocess
import urllib.error
import urllib.request

import psutil
import pytest
from _children import free_port
from conftest import require_binary

from reer_otel_memory import ConfigurationError, start_prometheus_exporter

MONITOR_SERIES = (
    "reer_memory_rss_bytes",
    "reer_memory_peak_rss_bytes",
    "reer_memory_heap_bytes",
    "reer_memory_limit_bytes",
    "reer_memory_utilization",
    "reer_memory_threshold_bytes",
    "reer_memory_level",
    "reer_memory_alerts_total",
    "reer_memory_cleanups_total",
    "reer_memory_cleanup_freed_bytes_total",
    "reer_memory_monitor_cpu_seconds_total",
    "reer_memory_leak_suspected",
    "reer_memory_operation_duration_seconds_count",
)

SERVING_CHILD = """
import json, os, sys, time
from reer_otel_memory import get_memory_tracker, memory_context, start_memory_monitoring, start_prometheus_exporter

endpoint = start_prometheus_exporter({port})
if {system_metrics}:
    from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor
    SystemMetricsInstrumentor().instrument()
start_memory_monitoring()
for index in range(3):
    with memory_context(f"batch_{{index}}"):
        data = [0] * 100_000
# Other threads run here (the monitor's): the verdict waits until their share of time is known.
deadline = time.monotonic() + 30
while not get_memory_tracker().leak_detector.is_suspected("cache_fill") and time.monotonic() < deadline:
    get_memory_tracker().leak_detector.observe("cache_fill", 128 * 1024)
print(json.dumps({{"host": endpoint.host, "port": endpoint.port, "url": endpoint.url, "pid": os.getpid()}}), flush=True)
sys.stdin.readline()
endpoint.shutdown()
print(json.dumps({{"stopped": True}}), flush=True)
sys.stdin.readline()
"""


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def samples(text: str) -> dict[str, list[tuple[str, float]]]:
    """Series name -> [(labels, value)] from the text exposition format."""
    found: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        found.setdefault(name, []).append((labels.rstrip("}"), float(value)))
    return found


def promtool_check(text: str) -> tuple[int, list[str]]:
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return result.returncode, problems


@pytest.mark.e2e
def test_a_process_serves_its_metrics_and_they_pass_promtool(children):
    port = free_port()
    child = children.start(
        SERVING_CHILD.format(port="", system_metrics=False),
        # Explanations off: the leak verdict below would start a tracing window, whose memory
        # comes and goes between the outside RSS reading and the scrape compared with it.
        env={"OTEL_EXPORTER_PROMETHEUS_PORT": str(port), "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1", "REER_MEMORY_ALERT_MB": "900",
             "REER_MEMORY_EXPLAIN": "off"},
    )
    served = child.message()
    assert (served["host"], served["port"]) == ("127.0.0.1", port)
    assert served["url"] == f"http://127.0.0.1:{port}/metrics"
    text = scrape(served["url"])
    outside_rss = psutil.Process(served["pid"]).memory_info().rss

    code, problems = promtool_check(text)
    assert code == 0, problems
    series = samples(text)
    for name in MONITOR_SERIES:
        assert name in series, f"{name} missing from the scrape"
    (_, rss), = series["reer_memory_rss_bytes"]
    assert rss == pytest.approx(outside_rss, rel=0.10)
    thresholds = {labels.split('level="')[1].split('"')[0]: value for labels, value in series["reer_memory_threshold_bytes"]}
    assert thresholds["alert"] == 900 * 2**20 and set(thresholds) == {"alert", "cleanup", "critical"}
    assert any('reer_operation="cache_fill"' in labels and value == 1 for labels, value in series["reer_memory_leak_suspected"])
    assert "target_info" in series

    child.send("")
    child.message(lambda m: m.get("stopped"))
    with pytest.raises(urllib.error.URLError):
        scrape(served["url"])


@pytest.mark.e2e
def test_system_metrics_in_the_same_process_share_the_endpoint_without_conflicts(children):
    child = children.start(SERVING_CHILD.format(port="port=0", system_metrics=True))
    served = child.message()
    text = scrape(served["url"])
    series = samples(text)
    assert "reer_memory_rss_bytes" in series and "process_cpu_time_seconds_total" in series
    # One HELP and TYPE per family: the two instrumentations do not collide.
    type_lines = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(type_lines) == len(set(type_lines))

    code, problems = promtool_check(text)
    # The text parses (exit 1 would be a parse error). promtool's naming lint flags gauges
    # that system-metrics itself names *_count (process_thread_count, ...); nothing else.
    assert code in (0, 3), problems
    for problem in problems:
        assert not problem.startswith(("reer_", "target_info")), problem
        assert 'should not have "_count" suffix' in problem, problem


@pytest.mark.e2e
def test_an_installed_sdk_provider_gets_a_private_one_for_our_metrics(children):
    child = children.start(
        """
        import json, sys
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        metrics.set_meter_provider(MeterProvider())
        from reer_otel_memory import start_prometheus_exporter
        endpoint = start_prometheus_exporter(port=0)
        print(json.dumps({"url": endpoint.url}), flush=True)
        sys.stdin.readline()
        """
    )
    text = scrape(child.message()["url"])
    assert "reer_memory_rss_bytes" in samples(text)
    code, problems = promtool_check(text)
    assert code == 0, problems


def test_a_taken_port_is_refused_naming_host_and_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"cannot serve /metrics on 127\.0\.0\.1:{port}: .*in use"):
            start_prometheus_exporter(port=port, host="127.0.0.1")


@pytest.mark.parametrize(
    ("kwargs", "env", "error", "message"),
    [
        ({"port": 70000}, {}, ValueError, r"port=70000: expected a port number 0-65535"),
        ({"port": "9464"}, {}, ValueError, r"port='9464'"),
        ({}, {"OTEL_EXPORTER_PROMETHEUS_PORT": "nine"}, ConfigurationError, r"OTEL_EXPORTER_PROMETHEUS_PORT='nine'"),
        ({"host": ""}, {}, ValueError, r"host='': expected a host name"),
    ],
)
def test_bad_addresses_are_refused_naming_the_value(monkeypatch, kwargs, env, error, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(error, match=message):
        start_prometheus_exporter(**kwargs)
