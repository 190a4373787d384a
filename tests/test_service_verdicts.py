"""Leak verdicts in a real concurrent service: a Flask app under gunicorn's threaded worker.

gunicorn (one ``gthread`` worker, 4 threads) serves ``tests/_flask_service.py`` under the load and
promises of ``_service_verdicts``. Requests overlap, so most calls are contested evidence;
explanations run as a service would run them (``REER_MEMORY_EXPLAIN=auto``). The figures are
printed (``pytest -s tests/test_service_verdicts.py``).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from _children import Child, free_port
from _service_verdicts import check_verdicts, wait_until_serving

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TESTS = Path(__file__).resolve().parent
SERVICE = TESTS / "_flask_service.py"
GUNICORN = Path(sys.executable).parent / "gunicorn"

# The child becomes the gunicorn master (the `children` fixture kills it if the test cannot stop it).
SERVER = """
import os
os.execv({gunicorn!r}, [{gunicorn!r}, "-w", "1", "--threads", "4", "-k", "gthread", "-b", "127.0.0.1:{port}", "--chdir", {tests!r},
                        "_flask_service:app"])
"""


def stop(server: Child, worker: psutil.Process | None) -> None:
    """SIGINT: gunicorn's quick shutdown (its workers get SIGQUIT); the worker is killed if it outlives it."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
        try:
            server.process.wait(15)
        except subprocess.TimeoutExpired:
            pass  # the children fixture kills it
    if worker is not None:
        try:
            worker.wait(5)
        except psutil.TimeoutExpired:
            worker.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.mark.timeout(180)
def test_a_flask_service_under_gunicorn_flags_the_leaker_and_never_the_innocent(children):
    port = free_port()
    server = children.start(
        SERVER.format(gunicorn=str(GUNICORN), port=port, tests=str(TESTS)),
        env={"REER_MEMORY_EXPLAIN": "auto", "REER_MEMORY_EXPLAIN_SECONDS": "0.5"},
        name="gunicorn",
    )
    worker: psutil.Process | None = None
    try:
        before = wait_until_serving(server, port)
        worker = psutil.Process(before["pid"])
        check_verdicts(server, port, SERVICE, before)
    finally:
        stop(server, worker)
