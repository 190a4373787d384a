"""How long each of the newer alerts takes to fire, end to end: a real Prometheus (1 s scrape and
evaluation) running the shipped rules, rendered as `make stack` renders them (for: 1 s, a 60 s
prediction window and 120 s horizon, a 30 s cleanup window), against real processes.

    .venv/bin/python scripts/alert_latency.py

- ReerMemoryCriticalPredicted: a process using the package grows 2 MiB a second towards a
  critical threshold 80 MiB above its start; timed from the first growth.
- ReerMemoryNearLimit: the same growth, with the ratio set just above the process's starting
  utilization (the machine's limit is far too large to approach); timed from the first growth.
- ReerMemoryCleanupIneffective: a process above its cleanup threshold runs three manual
  cleanups a second apart; timed from the first.
- The accelerator and container alerts: the package does not emit those series yet, so a small
  HTTP server exposes them in the Prometheus text format and changes them at a known instant;
  timed from that instant.

Prints one line per alert. Not run by the tests (it takes a minute or two).
"""

from __future__ import annotations

import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from tempfile import TemporaryDirectory

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import stack  # noqa: E402  (scripts/stack.py, beside this file)
from metrics_process import MetricsProcess  # noqa: E402
from prometheus_server import PrometheusServer  # noqa: E402

from reer_otel_memory import _names as names  # noqa: E402
from reer_otel_memory.deploy import rules  # noqa: E402
from reer_otel_memory.export import naming as series  # noqa: E402

MIB = 1024 * 1024
GIB = 1024 * MIB
TIMEOUT_S = 180.0


class Exposition:
    """A /metrics page of accelerator and container series, switched from calm to troubled."""

    def __init__(self) -> None:
        self.troubled = False
        self.oom_kills = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = outer.page().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.target = f"127.0.0.1:{self.server.server_address[1]}"

    def page(self) -> str:
        device = f'{series.LABEL_FRAMEWORK}="torch",{series.LABEL_DEVICE}="cuda:0"'
        used = 15.5 * GIB if self.troubled else 2 * GIB
        working_set = 990 * MIB if self.troubled else 400 * MIB
        return "\n".join(
            [
                f"{series.DEVICE_USED}{{{device}}} {used}",
                f'{series.DEVICE_THRESHOLD}{{{device},{series.LABEL_LEVEL}="alert"}} {12 * GIB}',
                f'{series.DEVICE_THRESHOLD}{{{device},{series.LABEL_LEVEL}="critical"}} {15 * GIB}',
                f"{series.CGROUP_WORKING_SET} {working_set}",
                f"{series.CGROUP_LIMIT} {GIB}",
                f"{series.CGROUP_OOM_KILLS} {self.oom_kills}",
                "",
            ]
        )

    def trouble(self) -> None:
        self.troubled = True
        self.oom_kills = 1

    def stop(self) -> None:
        self.server.shutdown()


def main() -> int:
    with TemporaryDirectory(prefix="reer-latency-") as tmp:
        workdir = Path(tmp)
        with MetricsProcess(workdir / "probe") as probe:
            start_mib = probe.start_rss_bytes // MIB
        critical = start_mib + 80
        grower_env = {names.ENV_ALERT_MB: str(critical - 20), names.ENV_CLEANUP_MB: str(critical - 10), names.ENV_CRITICAL_MB: str(critical)}
        grower = MetricsProcess(workdir / "grower", grower_env)
        stuck = MetricsProcess(workdir / "stuck", {names.ENV_ALERT_MB: "1", names.ENV_CLEANUP_MB: "2", names.ENV_CRITICAL_MB: "4"})
        exposition = Exposition()
        # NearLimit: a ratio the grower crosses after about 20 MiB of growth.
        limit = None
        try:
            options = stack.DEMO_OPTIONS
            prom = PrometheusServer(workdir / "prometheus", [grower.target, stuck.target, exposition.target], rules_text="")
            with prom:
                deadline = time.monotonic() + 30
                while not limit and time.monotonic() < deadline:
                    found = prom.query(f'{series.LIMIT}{{instance="{grower.target}"}}')
                    limit = float(found[0]["value"][1]) if found else None
                    time.sleep(0.2)
                assert limit, "the grower's limit was not scraped"
                rss = float(prom.query(f'{series.RSS}{{instance="{grower.target}"}}')[0]["value"][1])
                ratio = round((rss + 20 * MIB) / limit, 6)
                options = rules.RuleOptions(
                    prediction_window_s=options.prediction_window_s,
                    prediction_horizon_s=options.prediction_horizon_s,
                    cleanup_window_s=options.cleanup_window_s,
                    near_limit_ratio=ratio,
                )
                (prom.workdir / "rules.yml").write_text(rules.render_rules(for_s=stack.DEMO_FOR_S, options=options))
                assert prom.process is not None
                prom.process.send_signal(1)  # SIGHUP: reload the rules
                deadline = time.monotonic() + 30
                while len(prom.rules()) < len(rules.ALERT_NAMES) + 2 and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(3)  # a few evaluations of the calm state first
                assert not [a for a in prom.alerts() if a["labels"]["alertname"] in (rules.CRITICAL_PREDICTED, rules.NEAR_LIMIT)], prom.alerts()

                started: dict[str, float] = {}
                fired: dict[str, float] = {}
                t0 = time.monotonic()
                for alert in (rules.DEVICE_THRESHOLD_EXCEEDED, rules.DEVICE_CRITICAL_THRESHOLD_EXCEEDED, rules.CONTAINER_NEAR_OOM, rules.OOM_KILLED):
                    started[alert] = t0
                exposition.trouble()
                started[rules.CRITICAL_PREDICTED] = started[rules.NEAR_LIMIT] = time.monotonic()
                started[rules.CLEANUP_INEFFECTIVE] = time.monotonic()
                cleanups = 0
                grown = 0
                last_step = 0.0
                while len(fired) < len(started) and time.monotonic() - t0 < TIMEOUT_S:
                    now = time.monotonic()
                    if now - last_step >= 1.0:
                        last_step = now
                        if grown < 35:
                            grower.command(f"grow {2 * MIB}")
                            grown += 1
                        if cleanups < 3:
                            stuck.command("cleanup")
                            cleanups += 1
                    for alert in prom.alerts():
                        name = alert["labels"]["alertname"]
                        if alert["state"] == "firing" and name in started and name not in fired:
                            fired[name] = time.monotonic()
                    time.sleep(0.1)
        finally:
            grower.stop()
            stuck.stop()
            exposition.stop()
    print(f"rules: for: {rules.format_duration(stack.DEMO_FOR_S)}, prediction window {rules.format_duration(options.prediction_window_s)}, "
          f"horizon {rules.format_duration(options.prediction_horizon_s)}, cleanup window {rules.format_duration(options.cleanup_window_s)}, "
          f"near-limit ratio {options.near_limit_ratio:g}; Prometheus scrape and evaluation every 1s")
    for alert, began in started.items():
        took = f"{fired[alert] - began:5.1f} s" if alert in fired else "did not fire"
        print(f"{alert:44} {took}")
    return 0 if len(fired) == len(started) else 1


if __name__ == "__main__":
    sys.exit(main())
