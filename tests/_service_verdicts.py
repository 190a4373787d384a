"""The client side of the real-service verdict tests: a bounded load, ``/report``, the promises.

The service (``_flask_service.py`` or ``_asgi_service.py``) serves ``/predict`` (numpy
temporaries, freed) and ``/remember`` (keeps 64 KiB a call); 4 client threads send 1,500
requests, 3 to ``/predict`` for 1 to ``/remember``. :func:`check_verdicts` waits for the
package's explanation and verdict, prints the figures (``pytest -s``) and asserts them.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from _children import Child
from conftest import wait_for

REQUESTS = 1500
CLIENTS = 4
LEAK_MARK = "# the leak: kept for the life of the process"


def fetch_report(port: int) -> dict[str, Any] | None:
    """The service's ``/report``; None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/report", timeout=10) as response:
            return json.loads(response.read())
    except (OSError, http.client.HTTPException):
        return None


def wait_until_serving(server: Child, port: int) -> dict[str, Any]:
    """The first report, once the service answers."""
    try:
        report: Any = wait_for(lambda: fetch_report(port), timeout_s=30, interval_s=0.1, message="the service to answer")
    except AssertionError:
        raise AssertionError(f"the service did not answer; its output:\n{server.stderr}") from None
    return report  # type: ignore[no-any-return]


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


def leak_line(service: Path) -> int:
    lines = [number for number, line in enumerate(service.read_text().splitlines(), 1) if LEAK_MARK in line]
    assert len(lines) == 1, f"{LEAK_MARK!r} marks {len(lines)} lines of {service.name}"
    return lines[0]


def check_verdicts(server: Child, port: int, service: Path, before: dict[str, Any]) -> None:
    """Load the service, wait for an explanation and a verdict naming ``remember``, and assert the
    promises: the innocent never flagged nor suspected, the leaker named, the explanation's top
    site its leaking line with at least 90% of the attributed bytes not in flight."""
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
    not_in_flight = {name: size for name, size in explanation["operations"].items() if name not in explanation["in_flight"]}
    attributed = sum(not_in_flight.values())
    shares = {name: round(size / attributed, 3) for name, size in not_in_flight.items()} if attributed else {}
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
    assert top is not None and Path(top["filename"]) == service and top["lineno"] == leak_line(service) and top["function"] == "remember", top
    assert "remember" not in explanation["in_flight"], explanation["in_flight"]
    assert not_in_flight.get("remember", 0) >= 0.9 * attributed, explanation["operations"]
