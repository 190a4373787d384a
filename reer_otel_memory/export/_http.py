"""A bounded HTTP/1.1 server for one metrics page: slow, idle or flooding clients cannot stop a scrape.

One thread waits on every connection at once and reads requests without blocking; a second
renders the page, once for all the scrapes waiting for it. No client holds a thread, so the
threads are two however many clients connect. Every request has a deadline counted from accept
(or, on a kept-alive connection, from its first byte), its request line and headers are capped
in bytes, and at most ``max_connections`` connections are open: when the table is full, the
connection that has waited longest for its request is closed to make room. Answers are written
without blocking either, each within ``connection_timeout_s``.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import io
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: Connections waiting to be accepted (the kernel's queue): a burst of scrapes waits there.
LISTEN_BACKLOG = 128
#: Bytes a request line and its headers may take together; more is answered 431.
MAX_REQUEST_HEAD_BYTES = 64 * 1024
#: The methods served; others are answered 405 with this ``Allow``.
ALLOWED_METHODS = "GET, HEAD"
#: Smaller pages are sent as they are: compressing them saves less than it costs.
_GZIP_MIN_BYTES = 1024
#: After an error answer the client's further input is read and dropped this long (or until it
#: hangs up), so the answer reaches it before the close instead of being lost to a reset.
_LINGER_S = 1.0
#: A connection still waiting for its request may be closed for a newcomer once it waited this
#: long: a real client's request follows its connect at once.
_PATIENCE_WHEN_FULL_S = 1.0
#: Connections accepted per turn of the loop, so requests already read are handled in between.
_ACCEPT_BATCH = 16
_RECV_BYTES = 16 * 1024
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    505: "HTTP Version Not Supported",
}

_READING, _RENDERING, _WRITING, _DRAINING = range(4)


def gzip_accepted(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header allows gzip (as prometheus_client reads it, and ``q=0`` refuses)."""
    for entry in (accept_encoding or "").split(","):
        coding, _, params = entry.partition(";")
        if coding.strip().lower() != "gzip":
            continue
        quality = params.strip().lower()
        if quality.startswith("q="):
            try:
                return float(quality[2:]) > 0
            except ValueError:
                return False
        return True
    return False


class _Connection:
    """One client: what it sent so far, what is being sent to it, and its deadline."""

    __slots__ = ("deadline", "events", "inbox", "keep_alive", "outbox", "peer", "ready_since", "scanned", "served", "sock", "state")

    def __init__(self, sock: socket.socket, peer: object, now: float, deadline: float) -> None:
        self.sock = sock
        self.peer = peer
        self.inbox = bytearray()
        self.scanned = 0  # bytes of inbox already searched for the end of the headers
        self.ready_since = now  # when it began to wait for its (next) request
        self.deadline = deadline
        self.outbox: list[memoryview] = []
        self.keep_alive = False
        self.served = False
        self.state = _READING
        self.events = 0


class _Scrape:
    """A complete ``GET`` or ``HEAD`` waiting for the next page."""

    __slots__ = ("connection", "gzip", "head_only", "keep_alive")

    def __init__(self, connection: _Connection, head_only: bool, wants_gzip: bool, keep_alive: bool) -> None:
        self.connection = connection
        self.head_only = head_only
        self.gzip = wants_gzip
        self.keep_alive = keep_alive


def _response(status: int, headers: list[tuple[str, str]], body: bytes, *, with_body: bool = True, keep_alive: bool = False) -> list[bytes]:
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
    head += [f"{name}: {value}" for name, value in headers]
    head.append(f"Content-Length: {len(body)}")
    if not keep_alive:
        head.append("Connection: close")
    encoded = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
    return [encoded, body] if with_body and body else [encoded]


def _plain(status: int, text: str, extra: list[tuple[str, str]] | None = None, *, keep_alive: bool = False) -> list[bytes]:
    return _response(status, [("Content-Type", "text/plain; charset=utf-8"), *(extra or [])], (text + "\n").encode(), keep_alive=keep_alive)


class BoundedHTTPServer:
    """Serves ``render()`` as ``content_type`` on ``/metrics`` and ``/`` until :meth:`close`."""

    def __init__(
        self,
        host: str,
        port: int,
        render: Callable[[], bytes],
        content_type: str,
        *,
        request_timeout_s: float,
        connection_timeout_s: float,
        max_connections: int,
        listener: socket.socket | None = None,
    ) -> None:
        """Bind ``host:port``, or serve on ``listener``, a bound socket handed over (it is put to listen here)."""
        self._render = render
        self._content_type = content_type
        self._request_timeout_s = request_timeout_s
        self._connection_timeout_s = connection_timeout_s
        self._max_connections = max_connections
        handed_over = listener is not None
        if listener is None:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            if not handed_over:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((host, port))
            listener.listen(LISTEN_BACKLOG)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self.server_port: int = listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self._selector.register(self._wake_in, selectors.EVENT_READ)
        self._listening = False
        self._accept_paused_until = 0.0
        self._connections: set[_Connection] = set()
        self._pipelined: list[_Connection] = []
        self._closing = False
        self._scrapes: list[_Scrape] = []
        self._scrapes_ready = threading.Condition()
        self._answers: deque[tuple[_Connection, list[bytes], bool]] = deque()
        self._loop = threading.Thread(target=self._serve, name="reer-memory-metrics-http", daemon=True)
        self._renderer = threading.Thread(target=self._render_pages, name="reer-memory-metrics-render", daemon=True)
        self._loop.start()
        self._renderer.start()

    @property
    def open_connections(self) -> int:
        """Connections open now (at most ``max_connections``)."""
        return len(self._connections)

    def close(self) -> None:
        """Stop serving, close every connection and the port (waits for the serving thread)."""
        self._closing = True
        with self._scrapes_ready:
            self._scrapes_ready.notify_all()
        self._wake()
        if threading.current_thread() is not self._loop:
            self._loop.join(5.0)

    # -- the serving thread --------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway; closed: shutting down
            self._wake_out.send(b"\0")

    def _serve(self) -> None:
        try:
            while not self._closing:
                now = time.monotonic()
                self._listen_if_room(now)
                for key, mask in self._selector.select(self._next_timeout(now)):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_in:
                        with contextlib.suppress(OSError):
                            self._wake_in.recv(4096)
                    else:
                        self._guarded(key.data, mask)
                self._send_answers()
                self._take_pipelined()
                self._expire(time.monotonic())
        except Exception:  # never seen; the host goes on without /metrics rather than with a traceback loop
            logger.exception("the /metrics server stopped")
        finally:
            for connection in list(self._connections):
                self._close(connection)
            self._selector.close()
            self._listener.close()
            self._wake_in.close()
            self._wake_out.close()

    def _guarded(self, connection: _Connection, mask: int) -> None:
        try:
            if mask & selectors.EVENT_READ and connection in self._connections:
                self._on_readable(connection)
            if mask & selectors.EVENT_WRITE and connection in self._connections:
                self._on_writable(connection)
        except Exception:
            logger.exception("/metrics connection from %s failed", connection.peer)
            self._close(connection)

    def _next_timeout(self, now: float) -> float:
        if self._pipelined or self._answers:
            return 0.0
        wake_at = now + 1.0
        for connection in self._connections:
            wake_at = min(wake_at, connection.deadline)
        if not self._listening:
            if now < self._accept_paused_until:
                wake_at = min(wake_at, self._accept_paused_until)
            else:
                waiting = [c.ready_since for c in self._connections if c.state == _READING]
                if waiting:
                    wake_at = min(wake_at, min(waiting) + _PATIENCE_WHEN_FULL_S)
        return max(0.0, wake_at - now)

    def _evictable(self, now: float) -> _Connection | None:
        """The connection waiting longest for its request, if it waited past the patience."""
        oldest: _Connection | None = None
        for connection in self._connections:
            if connection.state == _READING and (oldest is None or connection.ready_since < oldest.ready_since):
                oldest = connection
        if oldest is not None and now - oldest.ready_since >= _PATIENCE_WHEN_FULL_S:
            return oldest
        return None

    def _listen_if_room(self, now: float) -> None:
        room = now >= self._accept_paused_until and (len(self._connections) < self._max_connections or self._evictable(now) is not None)
        if room and not self._listening:
            self._selector.register(self._listener, selectors.EVENT_READ)
        elif not room and self._listening:
            self._selector.unregister(self._listener)
        self._listening = room

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            now = time.monotonic()
            if len(self._connections) >= self._max_connections:
                victim = self._evictable(now)
                if victim is None:
                    return
                logger.debug("/metrics: closing %s, still without a request after %.1fs, for a new connection", victim.peer, now - victim.ready_since)
                self._close(victim)
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # out of file descriptors, say: try again shortly, do not spin
                logger.debug("/metrics: accept failed: %r", error)
                self._accept_paused_until = now + 0.1
                return
            sock.setblocking(False)
            # Headers and body go out as one or two writes; without this, Nagle's algorithm may
            # hold the second until the scraper's delayed ACK (40 ms).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(sock, peer, now, now + self._request_timeout_s)
            self._connections.add(connection)
            self._watch(connection, selectors.EVENT_READ)

    def _watch(self, connection: _Connection, events: int) -> None:
        if events == connection.events:
            return
        if connection.events and events:
            self._selector.modify(connection.sock, events, connection)
        elif events:
            self._selector.register(connection.sock, events, connection)
        else:
            self._selector.unregister(connection.sock)
        connection.events = events

    def _close(self, connection: _Connection) -> None:
        if connection not in self._connections:
            return
        self._connections.discard(connection)
        with contextlib.suppress(KeyError, ValueError, OSError):
            if connection.events:
                self._selector.unregister(connection.sock)
        connection.events = 0
        connection.sock.close()
        connection.inbox = bytearray()
        connection.outbox = []

    def _expire(self, now: float) -> None:
        for connection in [c for c in self._connections if c.deadline <= now]:
            if connection.state == _READING and connection.inbox:
                logger.debug("/metrics: %s sent no complete request in time", connection.peer)
                self._answer(connection, _plain(408, "the request did not arrive in time"), now)
            else:
                self._close(connection)

    def _on_readable(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            logger.debug("/metrics client %s went away: %r", connection.peer, error)
            self._close(connection)
            return
        if not data:
            self._close(connection)
            return
        if connection.state != _READING:
            return  # draining after an error answer: dropped
        now = time.monotonic()
        if connection.served and not connection.inbox:
            # The next request on a kept-alive connection: from its first byte, the same deadline.
            connection.deadline = min(connection.deadline, now + self._request_timeout_s)
        connection.inbox += data
        self._take_request(connection, now)

    def _take_request(self, connection: _Connection, now: float) -> None:
        inbox = connection.inbox
        if connection.scanned == 0:
            # Empty lines before a request line are ignored (RFC 9112, 2.2).
            blank = len(inbox) - len(inbox.lstrip(b"\r\n"))
            if blank:
                del inbox[:blank]
        start = max(0, connection.scanned - 3)
        ends = [(found, len(mark)) for mark in (b"\r\n\r\n", b"\n\n") if (found := inbox.find(mark, start)) >= 0]
        if not ends:
            connection.scanned = len(inbox)
            if len(inbox) > MAX_REQUEST_HEAD_BYTES:
                self._answer(connection, _plain(431, f"the request line and headers exceed {MAX_REQUEST_HEAD_BYTES} bytes"), now)
            return
        end, mark = min(ends)
        if end > MAX_REQUEST_HEAD_BYTES:
            self._answer(connection, _plain(431, f"the request line and headers exceed {MAX_REQUEST_HEAD_BYTES} bytes"), now)
            return
        head = bytes(inbox[:end])
        del inbox[: end + mark]
        connection.scanned = 0
        self._handle(connection, head, now)

    def _handle(self, connection: _Connection, head: bytes, now: float) -> None:
        line, _, rest = head.partition(b"\n")
        words = line.rstrip(b"\r").decode("latin-1").split()
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            self._answer(connection, _plain(400, "a request line is METHOD TARGET HTTP/1.1"), now)
            return
        method, target, version = words
        major, _, minor = version[5:].partition(".")
        if not (major.isdigit() and minor.isdigit()):
            self._answer(connection, _plain(400, f"bad HTTP version {version!r}"), now)
            return
        if (int(major), int(minor)) not in ((1, 0), (1, 1)):
            self._answer(connection, _plain(505, "HTTP/1.0 and HTTP/1.1 are served here"), now)
            return
        try:
            headers = http.client.parse_headers(io.BytesIO(rest + b"\r\n\r\n"))
        except http.client.HTTPException:
            self._answer(connection, _plain(431, "too many or too long header lines"), now)
            return
        tokens = {token.strip().lower() for token in headers.get("Connection", "").split(",")}
        keep_alive = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
        if headers.get("Transfer-Encoding") is not None or headers.get("Content-Length", "0").strip() != "0":
            keep_alive = False  # a body is never read: the connection ends with this answer
        if method not in ("GET", "HEAD"):
            self._answer(connection, _plain(405, f"{method} is not allowed here; use {ALLOWED_METHODS}", [("Allow", ALLOWED_METHODS)]), now)
            return
        if target.split("?", 1)[0] not in ("/metrics", "/"):
            self._answer(connection, _plain(404, "only /metrics is served here", keep_alive=keep_alive), now, keep_alive=keep_alive)
            return
        connection.state = _RENDERING
        connection.deadline = now + self._connection_timeout_s
        self._watch(connection, 0)
        with self._scrapes_ready:
            self._scrapes.append(_Scrape(connection, method == "HEAD", gzip_accepted(headers.get("Accept-Encoding")), keep_alive))
            self._scrapes_ready.notify()

    def _answer(self, connection: _Connection, parts: list[bytes], now: float, *, keep_alive: bool = False) -> None:
        connection.outbox = [memoryview(part) for part in parts]
        connection.keep_alive = keep_alive
        connection.state = _WRITING
        connection.deadline = now + self._connection_timeout_s
        self._watch(connection, selectors.EVENT_WRITE)
        self._on_writable(connection)

    def _on_writable(self, connection: _Connection) -> None:
        outbox = connection.outbox
        while outbox:
            try:
                sent = connection.sock.sendmsg(outbox)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                logger.debug("/metrics client %s went away: %r", connection.peer, error)
                self._close(connection)
                return
            while sent and outbox:
                if sent >= len(outbox[0]):
                    sent -= len(outbox.pop(0))
                else:
                    outbox[0] = outbox[0][sent:]
                    sent = 0
        now = time.monotonic()
        if connection.keep_alive:
            connection.state = _READING
            connection.served = True
            connection.ready_since = now
            connection.deadline = now + self._connection_timeout_s  # idle until its next request
            self._watch(connection, selectors.EVENT_READ)
            if connection.inbox:  # a request sent before this answer ended: taken on the next turn
                connection.deadline = min(connection.deadline, now + self._request_timeout_s)
                self._pipelined.append(connection)
        else:
            # Read and drop what the client still sends until it hangs up, for a short while.
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_WR)
            connection.state = _DRAINING
            connection.inbox = bytearray()
            connection.deadline = now + _LINGER_S
            self._watch(connection, selectors.EVENT_READ)

    def _take_pipelined(self) -> None:
        pipelined, self._pipelined = self._pipelined, []
        for connection in pipelined:
            if connection in self._connections and connection.state == _READING:
                self._take_request(connection, time.monotonic())

    def _send_answers(self) -> None:
        while self._answers:
            connection, parts, keep_alive = self._answers.popleft()
            if connection in self._connections and connection.state == _RENDERING:
                self._answer(connection, parts, time.monotonic(), keep_alive=keep_alive)

    # -- the rendering thread ------------------------------------------------------------------

    def _render_pages(self) -> None:
        while True:
            with self._scrapes_ready:
                while not self._scrapes and not self._closing:
                    self._scrapes_ready.wait()
                if self._closing:
                    return
                # Every scrape waiting now asked before this collection starts: one serves them all.
                scrapes, self._scrapes = self._scrapes, []
            try:
                body = self._render()
            except Exception as exc:  # a scrape reports the failure; the host process goes on
                logger.exception("collecting metrics for a scrape failed")
                failed = _plain(500, f"collecting metrics failed: {type(exc).__name__}")
                self._answers.extend((scrape.connection, failed, False) for scrape in scrapes)
            else:
                compressed: bytes | None = None
                for scrape in scrapes:
                    page = body
                    headers = [("Content-Type", self._content_type), ("Vary", "Accept-Encoding")]
                    if scrape.gzip and len(body) >= _GZIP_MIN_BYTES:
                        if compressed is None:
                            # Level 1: higher levels save little more on this repetitive text for
                            # several times the CPU (docs/performance.md, the scrape's section).
                            compressed = gzip.compress(body, compresslevel=1)
                        page = compressed
                        headers.insert(1, ("Content-Encoding", "gzip"))
                    parts = _response(200, headers, page, with_body=not scrape.head_only, keep_alive=scrape.keep_alive)
                    self._answers.append((scrape.connection, parts, scrape.keep_alive))
            self._wake()
