"""Pre-fork servers and the signals they keep for themselves, for the emergency signal.

gunicorn and uvicorn install their own handlers after the instrumentor has installed the
emergency handler: gunicorn's arbiter when it starts, each worker again right after it is forked
(the worker first resets the same signals to their default action). On a signal the server keeps,
the emergency handler is replaced and the signal does what the server does with it: under
gunicorn ``USR1`` reopens the log files and ``USR2`` ends a worker. A signal the server leaves
alone keeps the handler that a forked worker inherits, so it works in every worker.

:func:`server_taking` says whether the server running this process keeps a signal and what it
does with it; :data:`RECOMMENDED_SIGNAL` is a signal neither server touches (``SIGURG``: its
default action is to do nothing, so it is also harmless to a process without the handler).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: The signal to recommend: neither gunicorn nor uvicorn handle it, and a process without the
#: emergency handler ignores it (SIGURG's default action), so sending it to every worker is safe.
RECOMMENDED_SIGNAL = signal.SIGURG


def _signals(actions: Mapping[str, str]) -> dict[signal.Signals, str]:
    return {getattr(signal, "SIG" + name): action for name, action in actions.items() if hasattr(signal, "SIG" + name)}


#: What each server does with the signals it handles itself, in its parent or its workers
#: (gunicorn: ``Arbiter.SIGNALS`` and ``Worker.init_signals``; uvicorn: the handlers of its
#: ``--workers`` supervisor and of each worker's ``Server``). uvicorn's supervisor also catches
#: USR1, USR2, WINCH and QUIT but does nothing with them; its workers keep the emergency handler
#: for those, so they are left out.
SERVER_SIGNALS: dict[str, dict[signal.Signals, str]] = {
    "gunicorn": _signals(
        {
            "HUP": "reloads its configuration and replaces the workers",
            "QUIT": "shuts down at once",
            "INT": "shuts down at once",
            "TERM": "shuts down gracefully",
            "TTIN": "adds a worker",
            "TTOU": "removes a worker",
            "USR1": "reopens its log files",
            "USR2": "starts a new arbiter, and a worker exits on it",
            "WINCH": "stops its workers",
            "CHLD": "reaps its workers",
            "ABRT": "ends a worker that timed out",
        }
    ),
    "uvicorn": _signals(
        {
            "INT": "shuts down",
            "TERM": "shuts down",
            "HUP": "restarts its workers (with --workers)",
            "TTIN": "adds a worker (with --workers)",
            "TTOU": "removes a worker (with --workers)",
        }
    ),
}


@dataclass(frozen=True)
class SignalTaken:
    """A signal the server running this process handles itself."""

    server: str
    signum: signal.Signals
    action: str

    def message(self, setting: str) -> str:
        """One line: why ``setting`` (the variable or argument that chose the signal) cannot work, and what can."""
        return (
            f"{setting}={self.signum.name[3:]} cannot trigger an emergency cleanup under {self.server}: "
            f"{self.server} handles {self.signum.name} itself (it {self.action}) and replaces the emergency handler; "
            f"use {setting}={RECOMMENDED_SIGNAL.name[3:]} ({RECOMMENDED_SIGNAL.name}), which {self.server} leaves alone"
        )


def _program(argv: Sequence[str]) -> str:
    """The program an interpreter command line runs: the script's name, or the module after ``-m``."""
    skip = False
    for index, part in enumerate(argv[1:], start=1):
        if skip:
            skip = False
            continue
        if part in ("-X", "-W"):  # the interpreter options that take the next word
            skip = True
            continue
        if part == "-m":
            return argv[index + 1].partition(".")[0] if index + 1 < len(argv) else ""
        if part.startswith("-m") and len(part) > 2:
            return part[2:].partition(".")[0]
        if part == "-c":
            return ""
        if not part.startswith("-"):
            return os.path.basename(part).removesuffix(".py")
    return ""


def detect_server(argv: Sequence[str] | None = None, modules: Mapping[str, object] | None = None) -> str | None:
    """The pre-fork server running this process (``gunicorn``, ``uvicorn``), or None.

    Known from the command line (``sys.orig_argv``: ``gunicorn ...``, ``python -m uvicorn ...``,
    also under ``opentelemetry-instrument``, which runs the server's own script) or, when the
    instrumentor runs later (in a gunicorn hook, say), from the server's modules already imported.
    A uvicorn worker spawned by ``--workers`` is neither: its supervisor speaks for it.
    """
    if argv is None:
        argv = getattr(sys, "orig_argv", sys.argv)
    if modules is None:
        modules = sys.modules
    program = _program(argv)
    for server in SERVER_SIGNALS:
        if program == server:
            return server
    if "gunicorn.arbiter" in modules:
        return "gunicorn"
    return None


def server_taking(signum: signal.Signals, server: str | None = None) -> SignalTaken | None:
    """How the server running this process (or ``server``) takes ``signum``; None if it leaves it alone."""
    if server is None:
        server = detect_server()
    if server is None:
        return None
    action = SERVER_SIGNALS.get(server, {}).get(signum)
    return None if action is None else SignalTaken(server, signum, action)
