"""The explain listener: how ``reer-otel-memory explain PID`` asks a running process for an explanation.

Started by the instrumentor and :func:`start_memory_monitoring` (never at import), unless
``REER_MEMORY_EXPLAIN=off``: one daemon thread serving a Unix socket ``<pid>.sock`` in a private
per-user directory, one request at a time, each answered with :func:`explain_memory`'s result.
"""

from __future__ import annotations

import atexit
import errno
import json
import logging
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .. import _names as names
from .._runtime import RUNTIME
from ..config import parse_choice
from ..errors import ConfigurationError, ReerMemoryError

logger = logging.getLogger(__name__)

#: The directory under ``$XDG_RUNTIME_DIR``; under ``/tmp`` it is ``reer-otel-memory-<uid>``.
DIRECTORY_NAME = "reer-otel-memory"
FALLBACK_PARENT = "/tmp"
#: A client has this long, in all, to send its request; a slower one is answered with an error.
REQUEST_TIMEOUT_S = 2.0
#: The most a request may hold (it is one short JSON object).
MAX_REQUEST_BYTES = 4096
#: How long a request waits for an explanation window already running in the process to end.
WAIT_FOR_WINDOW_S = 15.0
#: How long the listener tries to hand over an answer before it drops the connection.
ANSWER_TIMEOUT_S = 5.0
#: The values of ``REER_MEMORY_EXPLAIN``: ``auto`` (the default) starts the listener, ``off`` does not.
EXPLAIN_CHOICES = ("auto", "off")
_BACKLOG = 8
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes, NUL included
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_SWEEP_LIMIT = 1000


class ExplainRequestError(ReerMemoryError, RuntimeError):
    """An explanation could not be had from a process; the message says why and what to do.

    ``kind``: ``no_process``, ``no_listener``, ``permission``, ``timeout``, ``refused``
    (the process answered that it cannot explain now), ``bad_request`` (it found the request's
    values unusable) or ``failed``.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def explain_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """False when ``REER_MEMORY_EXPLAIN`` is ``off``; a bad value logs one error line and counts as ``auto``."""
    value = (os.environ if environ is None else environ).get(names.ENV_EXPLAIN)
    try:
        return parse_choice(names.ENV_EXPLAIN, value, EXPLAIN_CHOICES, "auto") != "off"
    except ConfigurationError as exc:
        logger.error("reer_otel_memory: %s; using auto", exc)
        return True


def socket_name(pid: int) -> str:
    return f"{pid}.sock"


def listener_directory() -> str:
    """The private directory this process's listener uses: under ``$XDG_RUNTIME_DIR`` when that is ours, else ``/tmp``."""
    uid = os.geteuid()
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime_dir):
        try:
            found = os.stat(runtime_dir)
        except OSError:
            found = None
        candidate = os.path.join(runtime_dir, DIRECTORY_NAME)
        if (
            found is not None
            and stat.S_ISDIR(found.st_mode)
            and found.st_uid == uid
            and len(os.fsencode(os.path.join(candidate, socket_name(2**22)))) <= _SUN_PATH_MAX
        ):
            return candidate
    return os.path.join(FALLBACK_PARENT, f"{DIRECTORY_NAME}-{uid}")


def _open_private_directory(path: str) -> int:
    """A descriptor of ``path``, created 0700 if missing; refuses one not ours, a symlink, or open to others."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    if os.path.islink(path):  # O_NOFOLLOW below refuses it too, but with a less telling error
        raise PermissionError(errno.EPERM, "a symbolic link, not a directory", path)
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        found = os.fstat(descriptor)
        if found.st_uid != os.geteuid():
            raise PermissionError(errno.EPERM, f"owned by uid {found.st_uid}, not by this process's uid {os.geteuid()}", path)
        if found.st_mode & 0o022:
            raise PermissionError(errno.EPERM, f"writable by other users (mode {stat.S_IMODE(found.st_mode):04o})", path)
        if stat.S_IMODE(found.st_mode) != 0o700:
            os.fchmod(descriptor, 0o700)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _peer(connection: socket.socket) -> tuple[int, int, int]:
    """The other end's (pid, uid, gid), as the kernel recorded them."""
    pid, uid, gid = _PEERCRED.unpack(connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return pid, uid, gid


# --- the listener --------------------------------------------------------------------------


class ExplainListener:
    """The process's listener: a socket and the one thread serving it (see the module docs)."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._connection: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._path: str | None = None
        self._inode: tuple[int, int] | None = None
        self._owner_pid = 0
        self._stopping = threading.Event()
        self._atexit_registered = False

    @property
    def path(self) -> str | None:
        """The socket's path while the listener serves, else None."""
        return self._path if self.is_serving else None

    @property
    def is_serving(self) -> bool:
        return self._sock is not None and self._owner_pid == os.getpid()

    def start(self) -> bool:
        """Open the socket and start the thread (a no-op while serving); False, logged, if it cannot."""
        with RUNTIME.lock("explain_listener"):
            if self.is_serving:
                return True
            directory = listener_directory()
            try:
                sock, path, inode = self._bind(directory)
            except OSError as exc:
                logger.warning(
                    "reer_otel_memory: no explain listener in %s (%s): `reer-otel-memory explain %d` will not reach this process",
                    directory,
                    exc.strerror or exc,
                    os.getpid(),
                )
                return False
            self._sock, self._path, self._inode, self._owner_pid = sock, path, inode, os.getpid()
            self._stopping = threading.Event()
            if not self._atexit_registered:
                atexit.register(self.stop)
                self._atexit_registered = True
            self._thread = threading.Thread(target=self._serve, args=(sock, self._stopping), name="reer-memory-explain-listener", daemon=True)
            self._thread.start()
            return True

    @staticmethod
    def _bind(directory: str) -> tuple[socket.socket, str, tuple[int, int]]:
        descriptor = _open_private_directory(directory)
        try:
            name = socket_name(os.getpid())
            path = os.path.join(directory, name)
            try:
                os.unlink(name, dir_fd=descriptor)  # a stale socket of a process that had this pid before
            except FileNotFoundError:
                pass
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(path)
                os.chmod(name, 0o600, dir_fd=descriptor)  # the directory already keeps others out meanwhile
                found = os.stat(name, dir_fd=descriptor, follow_symlinks=False)
                sock.listen(_BACKLOG)
            except BaseException:
                sock.close()
                raise
            return sock, path, (found.st_dev, found.st_ino)
        finally:
            os.close(descriptor)

    def _on_reset(self) -> None:
        self.stop()

    def stop(self) -> None:
        """Close the socket, remove its file, and let the thread end (it finishes a request in progress)."""
        with RUNTIME.lock("explain_listener"):
            if not self.is_serving:
                return
            sock, self._sock = self._sock, None
            path, inode = self._path, self._inode
            self._stopping.set()
        assert sock is not None
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes the thread's accept()
        except OSError:
            pass
        sock.close()
        if path is not None:
            try:
                found = os.lstat(path)
                if (found.st_dev, found.st_ino) == inode:
                    os.unlink(path)
            except OSError:
                pass

    def _after_fork_in_child(self) -> None:
        # The parent's socket and its file stay the parent's: only close this process's
        # descriptors (no shutdown, which would reach the parent's socket too, no unlink).
        was_serving = self._sock is not None
        for sock in (self._sock, self._connection):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
        self._sock = self._connection = None
        self._thread = None
        self._path = self._inode = None
        self._owner_pid = 0
        if was_serving:  # as the monitor does: a pre-fork server's workers are what one wants to explain
            self.start()

    # --- the thread ----------------------------------------------------------------------

    def _serve(self, sock: socket.socket, stopping: threading.Event) -> None:
        self._sweep(os.path.dirname(self._path or ""))
        failures = 0
        while not stopping.is_set():
            try:
                connection, _ = sock.accept()
            except OSError as exc:
                if stopping.is_set():
                    return
                failures += 1
                if failures == 1 or failures % 100 == 0:
                    logger.error("reer_otel_memory explain listener: accept failed %d times: %r", failures, exc)
                stopping.wait(0.1)  # EMFILE and the like: do not spin
                continue
            self._connection = connection
            try:
                self._handle(connection)
            except Exception as exc:  # one bad request never ends the listener
                logger.warning("reer_otel_memory explain listener: a request failed: %r", exc)
            finally:
                self._connection = None
                connection.close()

    def _handle(self, connection: socket.socket) -> None:
        _, uid, _ = _peer(connection)
        if uid not in (os.geteuid(), 0):
            self._answer(connection, {"ok": False, "kind": "refused", "error": f"uid {uid} may not ask this process (uid {os.geteuid()}) to explain"})
            return
        request = self._read_request(connection)
        if isinstance(request, str):
            self._answer(connection, {"ok": False, "kind": "bad_request", "error": request})
            return
        self._answer(connection, self._explain(request, lambda note: self._answer(connection, {"waiting": note})))

    @staticmethod
    def _read_request(connection: socket.socket) -> dict[str, Any] | str:
        """The request, or what is wrong with it; never waits past :data:`REQUEST_TIMEOUT_S` in all."""
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        received = b""
        while b"\n" not in received:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return f"no complete request within {REQUEST_TIMEOUT_S:g} s"
            connection.settimeout(remaining)
            try:
                chunk = connection.recv(MAX_REQUEST_BYTES + 1 - len(received))
            except TimeoutError:
                return f"no complete request within {REQUEST_TIMEOUT_S:g} s"
            if not chunk:
                break
            received += chunk
            if len(received) > MAX_REQUEST_BYTES:
                return f"request longer than {MAX_REQUEST_BYTES} bytes"
        try:
            request = json.loads(received.split(b"\n", 1)[0])
        except ValueError:
            return "request is not one line of JSON"
        if not isinstance(request, dict):
            return "request is not a JSON object"
        return request

    @staticmethod
    def _explain(request: dict[str, Any], notify: Callable[[str], None]) -> dict[str, Any]:
        from .explain import ExplainUnavailableError, explain_memory, wait_for_window, window_running

        # A window already running (one a suspected leak started, say) is waited for, up to a bound.
        waited_until = time.monotonic() + WAIT_FOR_WINDOW_S
        while True:
            try:
                explanation = explain_memory(request.get("seconds", 10.0), top=request.get("top", 10))
                break
            except ExplainUnavailableError as exc:
                remaining = waited_until - time.monotonic()
                if not window_running() or remaining <= 0:
                    return {"ok": False, "kind": "refused", "error": str(exc)}
                notify(f"{exc}; waiting up to {remaining:.0f} s for it to end")
                wait_for_window(remaining)
            except ConfigurationError as exc:
                return {"ok": False, "kind": "bad_request", "error": str(exc)}
            except Exception as exc:
                logger.exception("reer_otel_memory explain listener: explaining failed")
                return {"ok": False, "kind": "failed", "error": f"explaining failed: {exc!r}"}
        return {"ok": True, "pid": os.getpid(), "explanation": explanation.as_dict()}

    @staticmethod
    def _answer(connection: socket.socket, answer: dict[str, Any]) -> None:
        connection.settimeout(ANSWER_TIMEOUT_S)
        try:
            connection.sendall(json.dumps(answer).encode() + b"\n")
        except OSError:
            pass  # the client left: nothing to tell it

    def _sweep(self, directory: str) -> None:
        """Remove the sockets of processes that died without removing theirs (``os._exit``, a kill)."""
        try:
            entries = list(os.scandir(directory))[:_SWEEP_LIMIT]
        except OSError:
            return
        for entry in entries:
            stem, _, suffix = entry.name.partition(".")
            if suffix != "sock" or not stem.isdigit() or int(stem) == os.getpid():
                continue
            try:
                os.kill(int(stem), 0)
                continue  # alive (here; a process of another pid namespace may share the name: see below)
            except ProcessLookupError:
                pass
            except OSError:
                continue
            if _refuses_connections(entry.path):  # nobody listens on it: a process elsewhere would accept
                try:
                    if stat.S_ISSOCK(os.lstat(entry.path).st_mode):
                        os.unlink(entry.path)
                except OSError:
                    pass


def _refuses_connections(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        probe.connect(path)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


def _listener() -> ExplainListener:
    return RUNTIME.get("explain_listener", ExplainListener)


def start_explain_listener() -> ExplainListener | None:
    """Start this process's explain listener unless ``REER_MEMORY_EXPLAIN=off``; never raises.

    Returns the listener, or None when it is off or could not start (that is logged).
    """
    if not explain_enabled():
        return None
    try:
        listener = _listener()
        return listener if listener.start() else None
    except Exception as exc:  # a service never fails because of its instrumentation
        logger.warning("reer_otel_memory: the explain listener could not start: %r", exc)
        return None


def stop_explain_listener() -> None:
    """Stop this process's explain listener, if it serves."""
    listener = RUNTIME.explain_listener
    if listener is not None:
        listener.stop()


# --- the client ----------------------------------------------------------------------------

NO_LISTENER = (
    "process {pid} has no explain listener: it is not running reer-otel-memory instrumentation or monitoring, "
    "or REER_MEMORY_EXPLAIN=off; start it with opentelemetry-instrument or call start_memory_monitoring()"
)


@dataclass(frozen=True)
class _Target:
    pid: int
    inner_pid: int  # the pid in the process's own pid namespace: its socket's name
    uid: int  # effective
    root: str  # the process's view of the file system (/proc/PID/root)
    runtime_dir: str | None


def _target(pid: int) -> _Target:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as file:
            fields = dict(line.split(":", 1) for line in file if ":" in line)
    except (FileNotFoundError, ProcessLookupError):
        raise ExplainRequestError(f"no process {pid}", "no_process") from None
    except OSError as exc:
        raise ExplainRequestError(f"cannot read process {pid}: {exc.strerror or exc}", "permission") from None
    if fields.get("Tgid", "").strip() not in ("", str(pid)):
        raise ExplainRequestError(f"{pid} is a thread of process {fields['Tgid'].strip()}: give the process's id", "no_process")
    uid = int(fields["Uid"].split()[1])
    ns_pids = fields.get("NSpid", str(pid)).split()
    runtime_dir = None
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            for entry in file.read().split(b"\0"):
                if entry.startswith(b"XDG_RUNTIME_DIR="):
                    runtime_dir = os.fsdecode(entry.split(b"=", 1)[1])
    except OSError:
        pass  # not ours to read: the permission check below says so
    return _Target(pid=pid, inner_pid=int(ns_pids[-1]), uid=uid, root=f"/proc/{pid}/root", runtime_dir=runtime_dir)


def socket_candidates(pid: int) -> list[str]:
    """Where process ``pid``'s socket can be, seen through its own root (containers, private /tmp)."""
    target = _target(pid)
    directories = []
    if target.runtime_dir and os.path.isabs(target.runtime_dir):
        directories.append(os.path.join(target.runtime_dir, DIRECTORY_NAME))
    directories.append(os.path.join(FALLBACK_PARENT, f"{DIRECTORY_NAME}-{target.uid}"))
    return [target.root + os.path.join(directory, socket_name(target.inner_pid)) for directory in directories]


def _connect(path: str, timeout_s: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        if len(os.fsencode(path)) <= _SUN_PATH_MAX:
            sock.connect(path)
        else:  # too long for sun_path: go through a descriptor of its directory
            descriptor = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                sock.connect(f"/proc/self/fd/{descriptor}/{os.path.basename(path)}")
            finally:
                os.close(descriptor)
    except BaseException:
        sock.close()
        raise
    return sock


#: What a client waits beyond the window: a request ahead of it, a window already running, the answer.
CLIENT_MARGIN_S = REQUEST_TIMEOUT_S + WAIT_FOR_WINDOW_S + ANSWER_TIMEOUT_S


def _lines(sock: socket.socket, pid: int, deadline: float, too_late: str) -> Iterator[object]:
    """Each JSON line the listener sends, until it closes; raises once ``deadline`` passes."""
    received = b""
    while True:
        while b"\n" in received:
            line, received = received.split(b"\n", 1)
            try:
                yield json.loads(line)
            except ValueError:
                raise ExplainRequestError(f"process {pid} answered something other than JSON", "failed") from None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ExplainRequestError(too_late, "timeout")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            continue
        except OSError as exc:
            raise ExplainRequestError(f"process {pid} closed the connection: {exc.strerror or exc}", "failed") from None
        if not chunk:
            return
        received += chunk


def request_explanation(
    pid: int, seconds: float = 10.0, *, top: int = 10, margin_s: float = CLIENT_MARGIN_S, on_wait: Callable[[str], object] | None = None
) -> dict[str, Any]:
    """Ask process ``pid``'s listener for an explanation over ``seconds``; its ``as_dict()``.

    Waits ``seconds + margin_s`` at most for the answer; ``on_wait(note)`` is called each time the
    process waits for a window already running there. Raises :class:`ExplainRequestError`
    saying why there is no explanation.
    """
    if not os.path.exists(f"/proc/{pid}"):
        raise ExplainRequestError(f"no process {pid}", "no_process")
    sock = None
    for path in socket_candidates(pid):
        try:
            sock = _connect(path, REQUEST_TIMEOUT_S)
            break
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            continue  # not there, or left behind by a process that is gone
        except PermissionError:
            raise ExplainRequestError(
                f"permission denied: process {pid} runs as uid {_target(pid).uid}; run explain as that user or as root", "permission"
            ) from None
        except (TimeoutError, BlockingIOError):
            raise ExplainRequestError(f"process {pid}'s explain listener is not accepting connections (busy?)", "timeout") from None
    if sock is None:
        raise ExplainRequestError(NO_LISTENER.format(pid=pid), "no_listener")
    with sock:
        peer_pid = _peer(sock)[0]
        if peer_pid != pid:
            raise ExplainRequestError(f"the socket found for process {pid} is served by process {peer_pid}: not asking it", "failed")
        try:
            sock.sendall(json.dumps({"seconds": seconds, "top": top}).encode() + b"\n")
        except OSError:
            pass  # it closed at once (it refused us): its answer says why
        deadline = time.monotonic() + seconds + margin_s
        lines = _lines(sock, pid, deadline, f"process {pid} did not answer within {seconds + margin_s:g} s")
        answer: object = None
        for line in lines:
            if isinstance(line, dict) and "waiting" in line:
                if on_wait is not None:
                    on_wait(str(line["waiting"]))
                continue
            answer = line
            break
    if answer is None:
        raise ExplainRequestError(f"process {pid} closed the connection without an answer", "failed")
    if not isinstance(answer, dict):
        raise ExplainRequestError(f"process {pid} answered something other than a JSON object", "failed")
    if not answer.get("ok"):
        raise ExplainRequestError(f"process {pid}: {answer.get('error', 'no reason given')}", str(answer.get("kind", "failed")))
    explanation = answer.get("explanation")
    if not isinstance(explanation, dict):
        raise ExplainRequestError(f"process {pid} answered without an explanation", "failed")
    return explanation


__all__ = [
    "ExplainListener",
    "ExplainRequestError",
    "explain_enabled",
    "listener_directory",
    "request_explanation",
    "socket_candidates",
    "start_explain_listener",
    "stop_explain_listener",
]
