"""``make stack`` (scripts/stack.py): the demo, Prometheus and Alertmanager come up on loopback, alerts fire and are
printed, and SIGINT (Ctrl-C) stops all three and removes their directory."""

from __future__ import annotations

import re
import runpy
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from _children import free_port
from conftest import require_binary, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "scripts" / "stack.py"


def test_stack_shows_alerts_firing_and_stops_cleanly_on_ctrl_c() -> None:
    require_binary("prometheus")
    if not any(shutil.which(name) for name in runpy.run_path(str(STACK))["ALERTMANAGER_BINARIES"]):
        require_binary("alertmanager")  # skips, or fails in CI
    ports = [free_port() for _ in range(3)]
    process = subprocess.Popen(
        [sys.executable, str(STACK),
         "--prometheus-port", str(ports[0]), "--alertmanager-port", str(ports[1]), "--demo-port", str(ports[2])],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_for(lambda: any(" FIRING " in line for line in lines), timeout_s=90, interval_s=0.2, message=f"an alert printed as firing: {lines}")
        text = "".join(lines)
        assert re.search(rf"Prometheus alerts  http://127\.0\.0\.1:{ports[0]}/(classic/)?alerts\n", text), text
        assert f"Alertmanager       http://127.0.0.1:{ports[1]}\n" in text
        workdir = Path(re.search(r"files under (\S+)\)", text).group(1))  # type: ignore[union-attr]
        assert workdir.is_dir()
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 3
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    reader.join(timeout=10)
    assert "".join(lines).rstrip().endswith("Stopped the demo, Alertmanager and Prometheus.")
    assert not workdir.exists()
    # The stack waited for each of its three children: none is left running.
    assert [child for child in children if Path(f"/proc/{child}").exists()] == []
