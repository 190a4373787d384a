"""Leak verdicts in a real ASGI service: a Starlette app under uvicorn, requests as tasks of one event loop.

uvicorn (one process, the asyncio loop) serves ``tests/_asgi_service.py``; 4 client threads send
1,500 requests, 3 ``/predict`` (numpy temporaries held across an ``await``, then freed) to 1
``/remember`` (keeps 64 KiB a call). The calls overlap as tasks in one thread, so most calls are
contested evidence; explanations run as a service would run them (``REER_MEMORY_EXPLAIN=auto``).
``/report`` says what the package concluded; the figures are printed
(``pytest -s tests/test_service_verdicts_asgi.py``).
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from _children import Child, free_port
from conftest import wait_for

TESTS = Path(__file__).resolve().parent
SERVICE = TESTS / "_asgi_service.py"
REQUESTS = 1500
CLIENTS = 4
LEAK_MARK = "# the leak: kept for the life of the process"

# The child becomes the uvicorn server, one process (the `children` fixture kills it if the test cannot stop it).
SERVER = """
import os, sys
os.execv(sys.executable, [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}", "--loop", "asyncio",
                          "--log-level", "warning", "--no-access-log", "--app-dir", {tests!r}, "_asgi_service:app"])
"""


def fetch_report(port: int) -> dict[str, Any] | None:
    """The service's ``/report``; None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/report", timeout=10) as response:
            return json.loads(response.read())
    except (OSError, http.client.HTTPException):
        return None


def load(port: int) -> float:
    """``REQUESTS`` requests from ``CLIENTS`` threads, each on its own keep-alive connection; seconds taken."""
    errors: list[BaseException] = []

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for i in range(REQUESTS // CLIENTS):
                path = "/remember" if (i + index) % 4 == 3 else "/predict"
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
                if response.status != 200:
                    raise AssertionError(f"GET {path}: {response.status} {body[:200]!r}")
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(index,)) for index in range(CLIENTS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, f"requests failed: {errors!r}"
    return time.monotonic() - started


def stop(server: Child) -> None:
    """SIGINT: uvicorn's graceful shutdown; the `children` fixture kills it if it outlives the wait."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
        try:
            server.process.wait(15)
        except subprocess.TimeoutExpired:
            pass


def leak_line() -> int:
    lines = [number for number, line in enumerate(SERVICE.read_text().splitlines(), 1) if LEAK_MARK in line]
    assert len(lines) == 1, f"{LEAK_MARK!r} marks {len(lines)} lines of {SERVICE.name}"
    return lines[0]


@pytest.mark.timeout(180)
def test_an_asgi_service_under_uvicorn_flags_the_leaker_and_never_the_innocent(children):
    port = free_port()
    server = children.start(
        SERVER.format(port=port, tests=str(TESTS)),
        env={"REER_MEMORY_EXPLAIN": "auto", "REER_MEMORY_EXPLAIN_SECONDS": "0.5"},
        name="uvicorn",
    )
    try:
        try:
            before: Any = wait_for(lambda: fetch_report(port), timeout_s=30, interval_s=0.1, message="the service to answer")
        except AssertionError:
            raise AssertionError(f"the service did not answer; its output:\n{server.stderr}") from None
        assert before["pid"] == server.pid, "uvicorn serves in the process it starts in (no --workers)"
        load_s = load(port)

        seen: dict[str, Any] = {}

        def settled() -> dict[str, Any] | None:
            report = seen["report"] = fetch_report(port)
            if report is None or report["explanation"] is None or not report["explainer_idle"]:
                return None
            named = any(s["operation"] == "remember" for s in report["suspects"]) or "remember" in report["candidates"]
            return report if named else None

        try:
            after: Any = wait_for(settled, timeout_s=20, interval_s=0.1, message="an explanation and a verdict naming remember")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the latest report:\n{json.dumps(seen.get('report'), indent=1)}\nserver output:\n{server.stderr}") from None

        predict, remember = after["operations"]["predict"], after["operations"]["remember"]
        explanation = after["explanation"]
        top = explanation["top_site"]
        # Bytes of an operation with a call in flight when the window ended include that call's
        # working memory: they settle nothing, and the shares leave them out, as the verdicts do.
        settled = {name: size for name, size in explanation["operations"].items() if name not in explanation["in_flight"]}
        attributed = sum(settled.values())
        shares = {name: round(size / attributed, 3) for name, size in settled.items()} if attributed else {}
        suspects = [s["operation"] for s in after["suspects"]]
        print(
            f"\nservice: {REQUESTS} requests from {CLIENTS} clients in {load_s:.1f} s ({REQUESTS / load_s:.0f}/s)"
            f"\n  predict: {predict}\n  remember: {remember}"
            f"\n  verdict: suspects={after['suspects']} candidates={after['candidates']} process_suspected={after['process_suspected']}"
            f"\n  explanations: {after['explanation_reasons']}"
            f"\n  explanation ({explanation['backend']}, {explanation['seconds']:.2f} s): {explanation['total_bytes']} bytes live"
            f" ({explanation['unattributed_bytes']} unattributed); top site"
            f" {top and (Path(top['filename']).name, top['lineno'], top['function'], top['size_bytes'])}"
            f"\n  explanation operations: {explanation['operations']} in flight at its end: {explanation['in_flight']}"
            f" shares of attributed (not in flight): {shares}"
            f"\n  explanation sites: {[(Path(location).name, size, count) for location, size, count in explanation['sites']]}"
            f"\n  RSS: {before['rss'] / 2**20:.1f} -> {after['rss'] / 2**20:.1f} MiB"
            f" (+{(after['rss'] - before['rss']) / 2**20:.1f} MiB; kept {after['kept'] * 64 // 1024} MiB)"
        )
        assert predict["calls"] + remember["calls"] == REQUESTS
        # The innocent: never flagged, never suspected.
        assert predict["flagged"] == 0, f"predict flagged on {predict['flagged']} calls, first on call {predict['first_flagged_call']}"
        assert predict["suspected_events"] == 0
        assert "predict" not in suspects, after["histories"].get("predict")
        # The leaker: suspected once the explanation named it, or a candidate of a process-level verdict.
        assert "remember" in suspects or (after["process_suspected"] and "remember" in after["candidates"]), after["histories"]
        # The explanation names the allocating line, and gives remember the attributed bytes.
        assert top is not None and Path(top["filename"]) == SERVICE and top["lineno"] == leak_line() and top["function"] == "remember", top
        assert "remember" not in explanation["in_flight"], explanation["in_flight"]
        assert settled.get("remember", 0) >= 0.9 * attributed, explanation["operations"]
    finally:
        stop(server)
