"""Take docs/images/prometheus-alerts.png: Prometheus's alerts page while `make stack` runs the demo.

    .venv/bin/python scripts/screenshot_alerts.py [--output docs/images/prometheus-alerts.png]

Starts the same stack as `make stack` on free loopback ports, waits until alerts fire, and has
headless Chromium (Debian: apt-get install -y chromium) load the alerts page and save a
screenshot; then stops the stack. The tests do not run it: it needs a browser.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stack import Stack  # scripts/stack.py, beside this file

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "docs" / "images" / "prometheus-alerts.png"
WINDOW = "1400,1000"
FIRING_WANTED = 3
FIRING_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def firing(stack: Stack) -> set[str]:
    return {alert["labels"]["alertname"] for alert in stack.alerts() if alert["state"] == "firing"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--browser", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    args = parser.parse_args()
    stack = Stack(free_port(), free_port(), free_port())
    try:
        stack.start()
        deadline = time.monotonic() + FIRING_TIMEOUT_S
        while len(firing(stack)) < FIRING_WANTED:
            if time.monotonic() > deadline:
                print(f"fewer than {FIRING_WANTED} alerts fired within {FIRING_TIMEOUT_S:g} s", file=sys.stderr)
                return 1
            time.sleep(0.2)
        print("firing:", ", ".join(sorted(firing(stack))))
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="reer-chromium-") as profile:
            subprocess.run(
                [
                    args.browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                    "--hide-scrollbars", "--virtual-time-budget=5000", f"--window-size={WINDOW}",
                    f"--screenshot={args.output}", stack.alerts_page(),
                ],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
        print(f"wrote {args.output}")
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
