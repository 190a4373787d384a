"""Forking from a test: run a function in a real forked child and get its JSON result back.

``in_forked_child(body)`` forks; the child runs ``body()`` and writes its result as JSON to a
pipe; the parent waits for it with a deadline (a deadlocked child is killed and the test fails)
and returns it. ``while_held(lock)`` holds a lock on another thread around the fork, which is the
case the package's after-fork hooks exist for.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from conftest import wait_for

DEADLINE_S = 20.0


def in_forked_child(body: Callable[[], Any], timeout_s: float = DEADLINE_S) -> Any:
    """``body()``'s JSON-able result, computed in a forked child; an exception there fails here."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: the case under test
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read_fd)
        try:
            payload = {"result": body()}
        except BaseException as exc:
            payload = {"error": repr(exc)}
        os.write(write_fd, json.dumps(payload).encode())
        os._exit(0)
    os.close(write_fd)

    def reaped() -> tuple[int] | None:
        done_pid, status = os.waitpid(pid, os.WNOHANG)
        return (status,) if done_pid else None

    try:
        (status,) = wait_for(reaped, timeout_s=timeout_s, message="the forked child to finish (a deadlock if it never does)")
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        with os.fdopen(read_fd, "rb") as pipe:
            data = pipe.read()
    assert os.waitstatus_to_exitcode(status) == 0
    payload = json.loads(data)
    assert "error" not in payload, f"in the forked child: {payload['error']}"
    return payload["result"]


@contextmanager
def while_held(lock: Any) -> Iterator[None]:
    """Hold ``lock`` on another thread for the duration of the block."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            holding.set()
            release.wait(DEADLINE_S)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(DEADLINE_S)
        yield
    finally:
        release.set()
        holder.join(DEADLINE_S)
