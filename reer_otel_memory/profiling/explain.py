"""Explanations: which lines, and which profiled operations, hold the memory a process grows by.

:func:`explain_memory` traces allocations for a bounded window (memray where installed, else
:mod:`tracemalloc`) and reports the sites and operations holding bytes allocated during the
window and still live at its end; :class:`AutoExplainer` runs one when a leak is suspected. A
site is the innermost line of a traceback in the service's own code (this package, the standard
library and third-party packages are passed over), so two lines leaking through ``json.loads``
are two sites. Tracing slows every allocation in proportion to the frames recorded
(docs/performance.md), so windows are bounded, one at a time, and kept to a small share of wall
time; memray records stacks far more cheaply and sees native allocations, hence preferred.
"""

from __future__ import annotations

import ast
import collections
import importlib
import importlib.util
import logging
import math
import os
import shutil
import site as site_module
import sys
import sysconfig
import tempfile
import threading
import time
import tokenize
import tracemalloc
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext
from opentelemetry.util.types import AttributeValue

from .. import _names as names
from .. import _telemetry
from .._runtime import RUNTIME
from ..config import checked_number, number_in_range, parse_choice
from ..errors import ConfigurationError, ReerMemoryError
from .probe import process_probe
from .window import EXPLANATION_WINDOW

logger = logging.getLogger(__name__)

#: Frames recorded per allocation (see the module docs).
TRACEBACK_FRAMES = 32
#: The longest window :func:`explain_memory` accepts, seconds.
MAX_SECONDS = 3600.0
#: A window ends early once tracemalloc's own memory passes this, so that it stays bounded.
MAX_TRACING_BYTES = 512 * 1024 * 1024
#: Frames kept in each site's traceback.
SITE_FRAMES = 5
#: Code ranges kept for attribution; the oldest are dropped beyond this.
MAX_RANGES = 10_000
#: Source files whose function index is kept.
_MAX_INDEXED_FILES = 256
_POLL_S = 0.1
_BACKEND = "tracemalloc"
#: At a window's end, how long it may wait for a moment with no watched operation in flight.
_SETTLE_MAX_S = 1.0
_WINDOW_LOCK = "explain.window"
_RANGES_LOCK = "explain.ranges"
_UNATTRIBUTED = "(unattributed)"

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
#: The measuring machinery (profiled calls, probe, tracker, leak detection): what it allocates
#: for itself, directly or through a library (the tracing SDK's spans), is not the service's.
_MEASURING_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_THIS_FILE = os.path.abspath(__file__)
_TRACEMALLOC_FILE = os.path.abspath(tracemalloc.__file__)
#: What ``tracemalloc.take_snapshot`` wraps (see :func:`_capture`); None where it is missing.
_get_traces: Callable[[], Sequence[Any]] | None = getattr(tracemalloc, "_get_traces", None)


class ExplainUnavailableError(ReerMemoryError, RuntimeError):
    """An explanation window cannot run now: other tracing is active, or a window already runs."""


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AllocationSite:
    """A line whose allocations made during the window are still live at its end."""

    filename: str
    lineno: int
    function: str
    size_bytes: int
    count: int
    #: ``"path:line function"`` of the site and its callers, innermost first.
    traceback: tuple[str, ...] = ()

    @property
    def location(self) -> str:
        """``"path:line function"``."""
        return f"{self.filename}:{self.lineno} {self.function}"

    def as_dict(self) -> dict[str, object]:
        return {
            "filename": self.filename,
            "lineno": self.lineno,
            "function": self.function,
            "size_bytes": self.size_bytes,
            "count": self.count,
            "traceback": list(self.traceback),
        }


@dataclass(frozen=True)
class MemoryExplanation:
    """What an explanation window found: the sites and operations holding what it allocated."""

    sites: tuple[AllocationSite, ...]
    #: Bytes still live per profiled operation they were allocated under, largest first.
    operations: dict[str, int]
    unattributed_bytes: int
    total_bytes: int
    #: The window's actual length.
    seconds: float
    backend: str = _BACKEND
    #: Why the window ended before its length ("" when it ran its length).
    ended_early: str = ""
    #: How many distinct sites held bytes (``sites`` keeps the largest ``top``).
    sites_total: int = 0
    #: Profiled operations with a call in flight when the window ended: their bytes may include
    #: that call's working memory, which it frees when it returns, so they prove no leak.
    in_flight: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        """A JSON-serialisable dict (read back by :meth:`from_dict`)."""
        return {
            "backend": self.backend,
            "seconds": self.seconds,
            "total_bytes": self.total_bytes,
            "unattributed_bytes": self.unattributed_bytes,
            "ended_early": self.ended_early,
            "sites_total": self.sites_total,
            "sites": [site.as_dict() for site in self.sites],
            "operations": dict(self.operations),
            "in_flight": list(self.in_flight),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MemoryExplanation:
        """The explanation :meth:`as_dict` described."""
        sites = tuple(
            AllocationSite(
                filename=str(site["filename"]),
                lineno=int(site["lineno"]),
                function=str(site["function"]),
                size_bytes=int(site["size_bytes"]),
                count=int(site["count"]),
                traceback=tuple(str(line) for line in site.get("traceback", ())),
            )
            for site in data.get("sites", ())
        )
        return cls(
            sites=sites,
            operations={str(name): int(size) for name, size in dict(data.get("operations", {})).items()},
            unattributed_bytes=int(data.get("unattributed_bytes", 0)),
            total_bytes=int(data.get("total_bytes", 0)),
            seconds=float(data.get("seconds", 0.0)),
            backend=str(data.get("backend", _BACKEND)),
            ended_early=str(data.get("ended_early", "")),
            sites_total=int(data.get("sites_total", len(sites))),
            in_flight=tuple(str(name) for name in data.get("in_flight", ())),
        )

    def format(self) -> str:
        """A readable table: the sites (bytes, blocks, where), then the operations."""
        lines = [
            f"Allocated in the {self.seconds:.1f} s window and still live at its end: {self.total_bytes:,} bytes"
            f" ({self.backend}; top {len(self.sites)} of {self.sites_total} sites)"
        ]
        if self.ended_early:
            lines.append(f"The window ended early: {self.ended_early}")
        lines.append(f"{'bytes':>14} {'blocks':>8}  site")
        for site in self.sites:
            lines.append(f"{site.size_bytes:>14,} {site.count:>8,}  {site.location}")
            lines.extend(f"{'':>24}    called from {caller}" for caller in site.traceback[1:])
        lines.append("")
        lines.append(f"{'bytes':>14} {'share':>7}  operation")
        rows = [*self.operations.items(), (_UNATTRIBUTED, self.unattributed_bytes)]
        for name, size in rows:
            share = size / self.total_bytes if self.total_bytes else 0.0
            note = "  (a call was in flight at the end)" if name in self.in_flight else ""
            lines.append(f"{size:>14,} {share:>7.1%}  {name}{note}")
        return "\n".join(lines)


# --- code ranges of profiled operations ------------------------------------------------------
# Facts about the code loaded in the process (where each operation's code lies), true across a
# reset of the package's state: module level, beside the functions that learn them.

#: (filename, first line, last line) -> the operation named there most recently, oldest first:
#: one entry per site of code, however many names a site gives its operations.
_ranges: collections.OrderedDict[tuple[str, int, int], str] = collections.OrderedDict()
#: The (filename, first line, last line) :func:`note_block` was called with, as called, and its operation.
_blocks_seen: collections.OrderedDict[tuple[str, int, int], str] = collections.OrderedDict()


def note_block(operation: str, filename: str, first_line: int, last_line: int) -> None:
    """Attribute allocations made while ``filename``'s lines ``first_line``..``last_line`` run to ``operation``.

    Called on every exit of a profiled block: one dictionary lookup once the range is known. A
    ``with`` statement starting on ``first_line`` extends the range to its last line: Python
    reports a block's exit on its ``with`` line, not on the last line the block ran.
    """
    key = (filename, first_line, last_line)
    if _blocks_seen.get(key) == operation:
        return
    _note_block_slowly(operation, key)


def _note_block_slowly(operation: str, key: tuple[str, int, int]) -> None:
    filename, first_line, last_line = key
    index = _source(filename)
    end = index.with_ends.get(first_line, last_line) if index is not None else last_line
    _add_range(operation, (filename, first_line, max(last_line, end)))
    with RUNTIME.lock(_RANGES_LOCK):
        _blocks_seen[key] = operation
        _blocks_seen.move_to_end(key)
        while len(_blocks_seen) > MAX_RANGES:
            _blocks_seen.popitem(last=False)


def note_function(operation: str, func: Callable[..., object]) -> None:
    """Attribute allocations made while ``func``'s code runs to ``operation`` (once per decoration)."""
    code = getattr(func, "__code__", None)
    if code is None:
        code = getattr(getattr(func, "__wrapped__", None), "__code__", None)
    if code is None:
        return
    first = code.co_firstlineno
    last = first
    for _start, _end, line in code.co_lines():
        if line is not None and line > last:
            last = line
    _add_range(operation, (code.co_filename, first, last))


def _add_range(operation: str, site: tuple[str, int, int]) -> None:
    with RUNTIME.lock(_RANGES_LOCK):
        if _ranges.get(site) == operation:
            return
        _ranges[site] = operation
        _ranges.move_to_end(site)
        while len(_ranges) > MAX_RANGES:
            _ranges.popitem(last=False)


def _ranges_by_file() -> dict[str, list[tuple[int, int, str]]]:
    """The registered ranges by file, narrowest first (so the first one containing a line wins)."""
    with RUNTIME.lock(_RANGES_LOCK):
        entries = list(_ranges.items())
    by_file: dict[str, list[tuple[int, int, str]]] = {}
    for (filename, first, last), operation in entries:
        by_file.setdefault(filename, []).append((first, last, operation))
    for ranges in by_file.values():
        ranges.sort(key=lambda r: (r[1] - r[0], -r[0]))
    return by_file


class _Attributor:
    """The operation an allocation was made under: the innermost frame inside a registered range."""

    def __init__(self) -> None:
        self._by_file = _ranges_by_file()
        #: The files holding profiled code.
        self.files: Mapping[str, object] = self._by_file
        self._cache: dict[tuple[str, int], str | None] = {}

    def operation(self, frames: Sequence[tuple[str, int]]) -> str | None:
        by_file = self._by_file
        for frame in frames:
            if frame[0] not in by_file:
                continue
            if frame in self._cache:
                found = self._cache[frame]
            else:
                filename, lineno = frame
                found = self._cache[frame] = next((op for first, last, op in by_file[filename] if first <= lineno <= last), None)
            if found is not None:
                return found
        return None


# --- function names from source --------------------------------------------------------------

class _SourceIndex:
    """What explanations read from a source file: its defs, and where each ``with`` statement ends."""

    __slots__ = ("functions", "with_ends")

    def __init__(self, functions: list[tuple[int, int, str]], with_ends: dict[int, int]) -> None:
        #: (first line, last line, qualified name) of every def.
        self.functions = functions
        #: The last line of the ``with`` statements starting on each line.
        self.with_ends = with_ends


_source_index: collections.OrderedDict[str, _SourceIndex | None] = collections.OrderedDict()  # parsed sources, by file name


def _index_source(filename: str) -> _SourceIndex | None:
    """The defs and ``with`` statements of ``filename``; None if it cannot be read or parsed."""
    try:
        with tokenize.open(filename) as source:  # the encoding its coding line names
            tree = ast.parse(source.read(), filename)
    except (OSError, SyntaxError, ValueError):  # no such file, not Python, not decodable
        return None
    functions: list[tuple[int, int, str]] = []
    with_ends: dict[int, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.With, ast.AsyncWith)):
                end = child.end_lineno or child.lineno
                for line in range(child.lineno, max(child.lineno + 1, child.body[0].lineno if child.body else 0)):
                    with_ends[line] = max(with_ends.get(line, line), end)  # a header over several lines
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                functions.append((child.lineno, child.end_lineno or child.lineno, name))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return _SourceIndex(functions, with_ends)


def _source(filename: str) -> _SourceIndex | None:
    with RUNTIME.lock("explain.sources"):
        if filename in _source_index:
            _source_index.move_to_end(filename)
            return _source_index[filename]
    index = _index_source(filename)  # parsed outside the lock
    with RUNTIME.lock("explain.sources"):
        _source_index[filename] = index
        while len(_source_index) > _MAX_INDEXED_FILES:
            _source_index.popitem(last=False)
    return index


def function_at(filename: str, lineno: int) -> str:
    """The (qualified) name of the innermost def containing the line; ``<module>`` outside any; ``?`` if unreadable."""
    index = _source(filename)
    if index is None:
        return "?"
    best: tuple[int, int, str] | None = None
    for first, last, name in index.functions:
        if first <= lineno <= last and (best is None or first >= best[0]):
            best = (first, last, name)
    return best[2] if best is not None else "<module>"


# --- the window -------------------------------------------------------------------------------


class _WindowState:
    """Which backend this process's window is tracing with, so a forked child can let it go."""

    def __init__(self) -> None:
        self.tracing = False  # tracemalloc
        self.memray = False  # a memray Tracker
        #: A forked child of a process whose memray window was running: memray stops tracking
        #: in a child, but leaves its thread hooks, which are not a Tracker of anyone's.
        self.memray_inherited = False

    def _after_fork_in_child(self) -> None:
        # The window's thread does not exist in the child: nothing would ever stop its tracing.
        EXPLANATION_WINDOW.reset()
        if self.tracing:
            self.tracing = False
            tracemalloc.stop()
        if self.memray:
            self.memray = False
            self.memray_inherited = True


def _window_state() -> _WindowState:
    return RUNTIME.get("explain_window", _WindowState)


def memray_tracking() -> bool:
    """True while a ``memray.Tracker`` is active in this process.

    memray has no public query for it. While a Tracker is active it sets ``_name`` and ``_ident``
    on :class:`threading.Thread` to its ``ThreadNameInterceptor`` and installs its
    ``start_thread_trace`` as the threading profile hook; either is taken as the sign.
    """
    if "memray" not in sys.modules:
        return False
    state = RUNTIME.explain_window
    if state is not None and state.memray_inherited:
        return False
    interceptor = getattr(sys.modules.get("memray._thread_name_interceptor"), "ThreadNameInterceptor", None)
    if isinstance(interceptor, type) and isinstance(vars(threading.Thread).get("_ident"), interceptor):
        return True
    hook = getattr(sys.modules.get("memray._memray"), "start_thread_trace", None)
    return hook is not None and threading.getprofile() is hook


def unavailable_reason() -> str | None:
    """Why a window cannot start now (other tracing in the process), or None."""
    if tracemalloc.is_tracing():
        return (
            "tracemalloc is already tracing in this process (started by other code); "
            "an explanation window would replace its traces, so none is started"
        )
    if memray_tracking():
        return "memray is tracking this process; an explanation window would distort its capture, so none is started"
    return None


def _check_arguments(seconds: object, top: object) -> tuple[float, int]:
    window = checked_number(
        seconds, 0.0, MAX_SECONDS, low_inclusive=False,
        where="explain_memory", name="seconds", expected=f"expected a number of seconds above 0 and at most {MAX_SECONDS:.0f}",
    )
    return window, checked_number(top, 1, whole=True, where="explain_memory", name="top", expected="expected an int of at least 1")


def explain_memory(seconds: float = 10.0, *, top: int = 10, native: bool | None = None) -> MemoryExplanation:
    """Trace allocations for ``seconds``; the ``top`` sites, and the operations, holding what stays live.

    The calling thread waits for the window. Raises :class:`ExplainUnavailableError` when
    tracemalloc is already tracing (the user's own tracing is left untouched), memray is
    tracking, or another window is running in the process.

    ``native``: trace with memray (True; ``pip install 'reer-otel-memory[explain]'``), which also
    sees allocations made in C by extensions and costs less per allocation than tracemalloc
    (docs/performance.md), writing the window's allocations to a temporary file removed
    afterwards; with tracemalloc (False); or with memray where it can be imported and runs,
    else tracemalloc (None, the default). ``native=True`` without memray raises
    :class:`ExplainUnavailableError`.
    """
    window, top = _check_arguments(seconds, top)
    if native is not None and not isinstance(native, bool):
        raise ConfigurationError(f"explain_memory(native={native!r}): expected True, False or None")
    return _explain(window, top, threading.Event(), native=native)


def wait_for_window(timeout: float) -> bool:
    """Wait, at most ``timeout`` seconds, until no explanation window runs in this process;
    whether none runs now (one runs at a time: a caller that got "already running" may retry)."""
    lock = RUNTIME.lock(_WINDOW_LOCK)
    if not lock.acquire(timeout=max(0.0, timeout)):
        return False
    lock.release()
    return True


def window_running() -> bool:
    """Whether an explanation window runs in this process now (tracing, or ending)."""
    return RUNTIME.lock(_WINDOW_LOCK).locked()


def window_open() -> bool:
    """Whether an explanation window is tracing this process's allocations now (either backend)."""
    return EXPLANATION_WINDOW.open


def memray_available() -> bool:
    """Whether memray can be imported here (it is not imported by asking)."""
    try:
        return importlib.util.find_spec("memray") is not None
    except (ImportError, ValueError):
        return False


class _Settled:
    """The end of a window: wait, at most ``bound_s``, for a moment when none of the ``watch``
    operations (None: none at all) has a call in flight (see ``leak._Window``); entered, the
    operations in flight then. The capture is taken inside, and leaving lets the held call go."""

    def __init__(self, watch: frozenset[str] | None, bound_s: float) -> None:
        self.watch = watch
        self.bound_s = bound_s
        self.entered = False

    def __enter__(self) -> tuple[str, ...]:
        window = EXPLANATION_WINDOW
        probe = RUNTIME.probe or process_probe()
        window.quiet.clear()
        window.captured.clear()
        window.watch = self.watch
        window.settling = self.entered = True
        try:
            names = probe.in_flight_operations()
            if names if self.watch is None else names & self.watch:
                window.quiet.wait(self.bound_s)
            window.settling = False
            return tuple(sorted(probe.in_flight_operations()))
        except BaseException:
            self.__exit__()  # no call may be left waiting for a capture that will not come
            raise

    def __exit__(self, *exc_info: object) -> None:
        if self.entered:
            self.entered = False
            EXPLANATION_WINDOW.settling = False
            EXPLANATION_WINDOW.captured.set()


def _explain(
    seconds: float, top: int, stop: threading.Event, *, native: bool | None = None, watch: frozenset[str] | None = None,
) -> MemoryExplanation:
    lock = RUNTIME.lock(_WINDOW_LOCK)
    if not lock.acquire(blocking=False):
        raise ExplainUnavailableError("an explanation window is already running in this process; one runs at a time")
    try:
        state = _window_state()
        if native or (native is None and memray_available() and not tracemalloc.is_tracing() and not state.memray_inherited):
            try:
                return _explain_with_memray(seconds, top, stop, watch)
            except (ExplainUnavailableError, OSError) as exc:
                if native:
                    raise
                logger.info("reer_otel_memory: explaining with tracemalloc instead of memray: %s", exc)
        return _explain_with_tracemalloc(seconds, top, stop, watch)
    finally:
        lock.release()


def _explain_with_tracemalloc(seconds: float, top: int, stop: threading.Event, watch: frozenset[str] | None) -> MemoryExplanation:
    """The window traced by tracemalloc, always stopped at its end, whatever happens."""
    reason = unavailable_reason()
    if reason is not None:
        raise ExplainUnavailableError(reason)
    state = _window_state()
    try:
        state.tracing = True
        tracemalloc.start(TRACEBACK_FRAMES)
        EXPLANATION_WINDOW.open = True
        started = time.monotonic()
        ended_early = _wait(started + seconds, stop)
        with _Settled(watch, _settle_bound(seconds)) as in_flight:
            if not tracemalloc.is_tracing():
                raise ExplainUnavailableError("tracemalloc was stopped by other code during the explanation window")
            captured = _capture()
        ended = time.monotonic()
    finally:
        EXPLANATION_WINDOW.open = False
        if state.tracing:
            state.tracing = False
            tracemalloc.stop()
    return _build(_grouped(captured), top, ended - started, ended_early, in_flight=in_flight)


def _explain_with_memray(seconds: float, top: int, stop: threading.Event, watch: frozenset[str] | None) -> MemoryExplanation:
    """The window traced by a memray ``Tracker`` (every Python allocation, and native ones), read back from its file."""
    try:
        memray: Any = importlib.import_module("memray")  # an optional dependency: not typed here
    except ImportError as exc:
        raise ExplainUnavailableError("explain_memory(native=True) needs memray, which is not installed (pip install memray)") from exc
    if memray_tracking():
        raise ExplainUnavailableError("memray is already tracking this process; it allows one Tracker at a time")
    directory = tempfile.mkdtemp(prefix="reer-otel-memory-explain-")  # private to this user (mode 0700)
    try:
        capture = os.path.join(directory, "window.bin")
        state = _window_state()
        settled = _Settled(watch, _settle_bound(seconds))
        try:
            with memray.Tracker(capture, trace_python_allocators=True, file_format=memray.FileFormat.AGGREGATED_ALLOCATIONS):
                EXPLANATION_WINDOW.open = state.memray = True
                try:
                    started = time.monotonic()
                    ended_early = _wait(started + seconds, stop)
                    in_flight = settled.__enter__()
                    ended = time.monotonic()
                finally:
                    EXPLANATION_WINDOW.open = state.memray = False
        finally:
            settled.__exit__()  # tracking has stopped: the held call may go
        groups = [
            (record.size, record.n_allocations, tuple((filename, lineno) for _function, filename, lineno in record.stack_trace()))
            for record in memray.FileReader(capture).get_leaked_allocation_records(merge_threads=True)
        ]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return _build(groups, top, ended - started, ended_early, backend="memray", in_flight=in_flight)


def _settle_bound(seconds: float) -> float:
    return min(_SETTLE_MAX_S, seconds / 2)


def _wait(deadline: float, stop: threading.Event) -> str:
    """Sleep until ``deadline``, a stop, or tracemalloc's memory passing its bound; why it ended early."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return ""
        if stop.wait(min(remaining, _POLL_S)):
            return "stopped"
        if tracemalloc.get_tracemalloc_memory() > MAX_TRACING_BYTES:
            logger.info("explanation window ended early: tracemalloc's own memory passed %d bytes", MAX_TRACING_BYTES)
            return f"tracemalloc's own memory passed {MAX_TRACING_BYTES} bytes"


def _capture() -> Any:
    """What tracemalloc holds now: its raw traces, or a snapshot where they cannot be had.

    ``tracemalloc._get_traces`` is what ``take_snapshot`` wraps. It hands each distinct traceback
    out as one shared tuple (frames innermost first), so grouping needs no hashing of frames and
    no object per frame; where it is missing, the public snapshot is used.
    """
    if _get_traces is not None:
        return _get_traces()
    return tracemalloc.take_snapshot()


def _grouped(captured: Any) -> list[tuple[int, int, tuple[tuple[str, int], ...]]]:
    """(bytes, blocks, frames innermost first) per distinct traceback of what :func:`_capture` took."""
    if isinstance(captured, tracemalloc.Snapshot):
        return [
            (stat.size, stat.count, tuple((frame.filename, frame.lineno) for frame in reversed(stat.traceback)))
            for stat in captured.statistics("traceback")
        ]
    groups: dict[int, list[Any]] = {}
    for trace_tuple in captured:  # (domain, size, frames, ...)
        frames = trace_tuple[2]
        group = groups.get(id(frames))
        if group is None:
            groups[id(frames)] = [trace_tuple[1], 1, frames]
        else:
            group[0] += trace_tuple[1]
            group[1] += 1
    return [(size, blocks, frames) for size, blocks, frames in groups.values()]


_USER, _LIBRARY, _INTERNAL, _OWN, _MEASURING = range(5)


def _library_prefixes() -> tuple[str, ...]:
    found = {sysconfig.get_paths().get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    found.update(site_module.getsitepackages() if hasattr(site_module, "getsitepackages") else ())
    return tuple(sorted(os.path.join(path, "") for path in found if path))


def _classify(filename: str, libraries: tuple[str, ...], profiled: Mapping[str, object]) -> int:
    """Whose code ``filename`` is: the window's own, the measuring machinery's, this package's (or
    tracemalloc's), a library's, or the user's."""
    if filename == _THIS_FILE:
        return _OWN
    if filename.startswith(_MEASURING_DIR):
        return _MEASURING
    if filename.startswith(_PACKAGE_DIR) or filename == _TRACEMALLOC_FILE:
        return _INTERNAL
    if filename in profiled:
        return _USER  # code with profiled operations is the user's wherever it is installed
    if filename.startswith(libraries) or filename.startswith("<frozen "):
        return _LIBRARY
    return _USER


def _build(
    groups: Iterable[tuple[int, int, tuple[tuple[str, int], ...]]], top: int, seconds: float, ended_early: str, backend: str = _BACKEND,
    in_flight: tuple[str, ...] = (),
) -> MemoryExplanation:
    attributor = _Attributor()
    libraries = _library_prefixes()
    kinds: dict[str, int] = {}
    sites: dict[tuple[str, int], list[Any]] = {}  # (file, line) -> [bytes, blocks, largest traceback's bytes, frames from the site]
    operations: dict[str, int] = {}
    unattributed = 0
    total = 0
    for size, blocks, frames in groups:
        if not frames:  # allocated with no Python code running (memray sees such native allocations)
            total += size
            unattributed += size
            continue
        first_outside = first_user = -1
        own = False
        only_libraries = True  # so far, from the allocation outwards
        for index, (filename, _lineno) in enumerate(frames):
            kind = kinds.get(filename)
            if kind is None:
                kind = kinds[filename] = _classify(filename, libraries, attributor.files)
            if kind == _OWN or (kind == _MEASURING and only_libraries):
                own = True  # the window's own bookkeeping, or the measuring machinery's
                break
            if kind != _LIBRARY:
                only_libraries = False
            if kind == _MEASURING:
                kind = _INTERNAL
            if kind != _INTERNAL and first_outside < 0:
                first_outside = index
            if kind == _USER:
                first_user = index
                break
        if own or first_outside < 0:
            continue
        site_at = first_user if first_user >= 0 else first_outside
        total += size
        operation = attributor.operation(frames)
        if operation is None:
            unattributed += size
        else:
            operations[operation] = operations.get(operation, 0) + size
        site = sites.get(frames[site_at])
        if site is None:
            sites[frames[site_at]] = [size, blocks, size, frames[site_at:]]
        else:
            site[0] += size
            site[1] += blocks
            if size > site[2]:
                site[2], site[3] = size, frames[site_at:]
    chosen = sorted(sites.items(), key=lambda item: item[1][0], reverse=True)[:top]
    return MemoryExplanation(
        sites=tuple(
            AllocationSite(
                filename=filename,
                lineno=lineno,
                function=function_at(filename, lineno),
                size_bytes=size,
                count=blocks,
                traceback=tuple(f"{path}:{line} {function_at(path, line)}" for path, line in list(site_frames)[:SITE_FRAMES]),
            )
            for (filename, lineno), (size, blocks, _largest, site_frames) in chosen
        ),
        operations=dict(sorted(operations.items(), key=lambda item: item[1], reverse=True)),
        unattributed_bytes=unattributed,
        total_bytes=total,
        seconds=seconds,
        backend=backend,
        ended_early=ended_early,
        sites_total=len(sites),
        in_flight=in_flight,
    )


# --- explanations on demand -------------------------------------------------------------------

Listener = Callable[[MemoryExplanation, str, tuple[str, ...]], object]


def _seconds_from_env(value: str | None, default: float) -> float:
    if value is None or not value.strip():
        return default
    text = value.strip()
    number: float | None = None
    if text.isascii() and "_" not in text:
        try:
            number = number_in_range(float(text), 0.0, MAX_SECONDS, low_inclusive=False)
        except ValueError:
            number = None
    if number is None:
        logger.error(
            "%s=%r: expected a number of seconds above 0 and at most %.0f; using %g",
            names.ENV_EXPLAIN_SECONDS, value, MAX_SECONDS, default,
        )
        return default
    return number


def _enabled_from_env(value: str | None) -> bool:
    try:
        return parse_choice(names.ENV_EXPLAIN, value, ("auto", "off"), "auto") == "auto"
    except ConfigurationError as exc:
        logger.error("%s; using auto", exc)
        return True


class AutoExplainer:
    """Runs one explanation window in the background when asked, and reports what it found.

    :meth:`request` never blocks and never raises into its caller (a leak detector on a profiled
    call's path). A finished window is reported three ways: a ``reer.memory.explain`` span linked
    to the suspected operations' spans, one warning log line, and each listener's call.

    Windows take at most ``max_share`` of wall time: after a window of ``w`` seconds ends, the
    next may start only ``w / max_share - w`` seconds later. Tracing slows every allocation in the
    process while it runs, so its share of time, not a count of windows, is what is bounded.
    """

    def __init__(
        self,
        enabled: bool | None = None,
        seconds: float | None = None,
        max_share: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
        *,
        top: int = 10,
        native: bool | None = None,
    ) -> None:
        """``enabled`` and ``seconds`` default to ``REER_MEMORY_EXPLAIN`` and ``REER_MEMORY_EXPLAIN_SECONDS``."""
        if enabled is None:
            enabled = _enabled_from_env(os.environ.get(names.ENV_EXPLAIN))
        if seconds is None:
            seconds = _seconds_from_env(os.environ.get(names.ENV_EXPLAIN_SECONDS), 10.0)
        self.seconds, self.top = _check_arguments(seconds, top)
        self.native = native  # the backend, as explain_memory(native=...)
        share = checked_number(
            max_share, 0.0, 1.0, low_inclusive=False, where="AutoExplainer", name="max_share", expected="expected a share above 0 and at most 1"
        )
        self.enabled = bool(enabled)
        self.max_share = share
        self._clock = clock
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._next_allowed = -math.inf
        self._logged: set[str] = set()
        self._listeners: list[Listener] = []
        self._latest: MemoryExplanation | None = None
        RUNTIME.after_fork_call(self)

    def _after_fork_in_child(self) -> None:
        # The window's thread does not exist in the child; its tracing is stopped by _WindowState.
        self._lock = threading.Lock()
        self._thread = None
        self._stop = threading.Event()

    # --- listeners -----------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(explanation, reason, operations)`` after each window."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def latest(self) -> MemoryExplanation | None:
        """The last window's explanation, or None."""
        return self._latest

    # --- windows -------------------------------------------------------------------------------

    def request(self, reason: str, operations: Sequence[str], links: Sequence[SpanContext] = ()) -> bool:
        """Start one window in a daemon thread; False when off, too soon, busy or tracing is unavailable."""
        try:
            if not self.enabled:
                return False
            with self._lock:
                if self._thread is not None and self._thread.is_alive():
                    return False
                if self._clock() < self._next_allowed:
                    return False
                unavailable = unavailable_reason()
                if unavailable is not None:
                    self._log_unavailable(unavailable)
                    return False
                if RUNTIME.lock(_WINDOW_LOCK).locked():
                    return False  # explain_memory is running elsewhere in the process
                self._stop = threading.Event()
                thread = threading.Thread(
                    target=self._run,
                    args=(str(reason), tuple(operations), tuple(links), self._stop),
                    name="reer-memory-explain",
                    daemon=True,
                )
                thread.start()
                self._thread = thread
            return True
        except Exception as exc:  # never into the caller
            logger.error("explanation request failed: %r", exc)
            return False

    def stop(self) -> None:
        """End a running window now (it still reports what it saw)."""
        self._stop.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait for the running window, if any, to finish and report; False on timeout."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _on_reset(self) -> None:
        self.stop()
        self.wait_idle(30)

    def _log_unavailable(self, reason: str) -> None:
        if reason not in self._logged:
            self._logged.add(reason)
            logger.warning("no memory explanation: %s", reason)

    def _run(self, reason: str, operations: tuple[str, ...], links: tuple[SpanContext, ...], stop: threading.Event) -> None:
        start_ns = time.time_ns()
        try:
            explanation = _explain(self.seconds, self.top, stop, native=self.native, watch=frozenset(operations) or None)
        except ExplainUnavailableError as exc:
            with self._lock:
                self._log_unavailable(str(exc))
            return
        except Exception:
            logger.exception("memory explanation window failed")
            return
        end_ns = time.time_ns()
        window = explanation.seconds
        with self._lock:
            self._latest = explanation
            self._next_allowed = self._clock() + window / self.max_share - window
            listeners = list(self._listeners)
        self._report(explanation, reason, operations, links, start_ns, end_ns)
        for listener in listeners:
            try:
                listener(explanation, reason, operations)
            except Exception:
                logger.exception("memory explanation listener %r failed", listener)

    def _report(
        self, explanation: MemoryExplanation, reason: str, operations: tuple[str, ...], links: tuple[SpanContext, ...], start_ns: int, end_ns: int
    ) -> None:
        try:
            attributes: dict[str, AttributeValue] = {
                names.ATTR_EXPLAIN_SITES: [site.location for site in explanation.sites],
                names.ATTR_EXPLAIN_SITE_BYTES: [site.size_bytes for site in explanation.sites],
                names.ATTR_EXPLAIN_OPERATIONS: list(explanation.operations),
                names.ATTR_EXPLAIN_OPERATION_BYTES: list(explanation.operations.values()),
                names.ATTR_EXPLAIN_SECONDS: explanation.seconds,
                names.ATTR_EXPLAIN_REASON: reason,
                names.ATTR_EXPLAIN_BACKEND: explanation.backend,
            }
            span = _telemetry.current().tracer.start_span(
                names.SPAN_EXPLAIN,
                context=Context(),
                links=[Link(context) for context in links if context.is_valid],
                attributes=attributes,
                start_time=start_ns,
            )
            span.end(end_time=end_ns)
        except Exception:
            logger.exception("reporting a memory explanation as a span failed")
        logger.warning("%s", summary(explanation, reason, operations))


def summary(explanation: MemoryExplanation, reason: str, operations: Sequence[str]) -> str:
    """One line: the top site and the suspected operations' shares of what the window left live."""
    total = explanation.total_bytes

    def share(size: int) -> str:
        return f"{size / total:.0%}" if total else "0%"

    if explanation.sites:
        site = explanation.sites[0]
        head = f"top allocation site {site.location} holds {site.size_bytes} of {total} bytes"
    else:
        head = f"{total} bytes"
    shares = [f"{name} {share(explanation.operations.get(name, 0))}" for name in operations]
    largest = next(iter(explanation.operations), None)
    if largest is not None and largest not in operations:
        shares.append(f"largest: {largest} {share(explanation.operations[largest])}")
    shares.append(f"unattributed {share(explanation.unattributed_bytes)}")
    return (
        f"memory explanation ({reason}): {head} allocated in the last {explanation.seconds:.1f} s and still live;"
        f" operations: {', '.join(shares)}"
    )


def auto_explainer() -> AutoExplainer:
    """The process's explainer, configured from the environment on first use."""
    return RUNTIME.get("auto_explainer", AutoExplainer)
