"""Leak verdicts in a real ASGI service: a Starlette app under uvicorn, requests as tasks of one event loop.

uvicorn (one process, the asyncio loop) serves ``tests/_asgi_service.py`` under the load and
promises of ``_service_verdicts``. The calls overlap as tasks in one thread, so most calls are
contested evidence; explanations run as a service would run them (``REER_MEMORY_EXPLAIN=auto``).
The figures are printed (``pytest -s tests/test_service_verdicts_asgi.py``).
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from _children import Child, free_port
from _service_verdicts import check_verdicts, wait_until_serving

pytestmark = pytest.mark.e2e

TESTS = Path(__file__).resolve().parent
SERVICE = TESTS / "_asgi_service.py"

# The child becomes the uvicorn server, one process (the `children` fixture kills it if the test cannot stop it).
SERVER = """
import os, sys
os.execv(sys.executable, [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}", "--loop", "asyncio",
                          "--log-level", "warning", "--no-access-log", "--app-dir", {tests!r}, "_asgi_service:app"])
"""


def stop(server: Child) -> None:
    """SIGINT: uvicorn's graceful shutdown; the `children` fixture kills it if it outlives the wait."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
        try:
            server.process.wait(15)
        except subprocess.TimeoutExpired:
            pass


@pytest.mark.timeout(180)
def test_an_asgi_service_under_uvicorn_flags_the_leaker_and_never_the_innocent(children):
    port = free_port()
    server = children.start(
        SERVER.format(port=port, tests=str(TESTS)),
        env={"REER_MEMORY_EXPLAIN": "auto", "REER_MEMORY_EXPLAIN_SECONDS": "0.5"},
        name="uvicorn",
    )
    try:
        before = wait_until_serving(server, port)
        assert before["pid"] == server.pid, "uvicorn serves in the process it starts in (no --workers)"
        check_verdicts(server, port, SERVICE, before)
    finally:
        stop(server)
