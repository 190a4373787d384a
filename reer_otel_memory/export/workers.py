"""Pre-fork servers: every worker's metrics on the parent's one ``/metrics`` page, live, totals kept.

Under ``opentelemetry-instrument`` with the Prometheus exporter the page is served by the process
that started first (gunicorn's arbiter, uvicorn's supervisor). Its workers write their series to
``REER_MEMORY_WORKER_DIR`` while they work and once more at exit, and each scrape of the parent
merges them: gauges per process (``pid`` label), counters and histograms summed over the parent,
the live workers and every worker that has exited, so totals never drop when a worker is
recycled (the rules: docs/telemetry.md). The directory is trusted only as far as it is safe: it
must be this user's and closed to others, pages are written through a fresh temporary file, and
only files of this user from a live child of the parent are read, without following links.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .. import _names as names
from .._runtime import RUNTIME

logger = logging.getLogger(__name__)

#: A working worker writes its page at most this often (and only when it used CPU since the last).
WRITE_INTERVAL_S = 0.5
#: CPU (outside the writer) below which a worker counts as idle between two writes: less than
#: any request costs, more than an idle event loop's ticks.
IDLE_CPU_S = 50e-6
#: An idle worker writes again when its RSS moved this share from the one on its page (a write
#: itself allocates: the page would otherwise keep the RSS read before it).
RSS_DRIFT_SHARE = 0.01

#: A page larger than this is not read (a warning, once): a real one holds tens of KiB.
MAX_PAGE_BYTES = 4 * 1024 * 1024
#: How a page is opened: never through a link, never waiting on a FIFO or a device.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_KINDS = frozenset({"counter", "gauge", "histogram", "summary", "info", "stateset", "gaugehistogram", "unknown"})

_SUFFIX = ".json"
_TEMPORARY = ".tmp"
_INHERITED = (names.ENV_WORKER_DIR, names.ENV_WORKER_PARENT, names.ENV_WORKER_PORT)

#: Held while this process collects its own series, and across fork() (:meth:`Runtime.fork_guard`):
#: a worker forked in the middle of a collection would inherit the SDK's locks held.
_COLLECTING = "export.workers.collecting"

# How a family's samples meet on the parent's page.
PER_PROCESS = "per_process"  # one series per process, labelled pid; gone with the process
SUMMED = "summed"  # one series over all processes, exited ones included
SHARED = "shared"  # one source seen by every process (the cgroup, the host): the highest reading of the live ones

_SUMMED_TYPES = frozenset({"counter", "histogram"})

#: A family: name, type, help, unit, samples (name, labels, value).
Family = tuple[str, str, str, str, list[tuple[str, dict[str, str], float]]]
_Key = tuple[str, tuple[tuple[str, str], ...]]


def _shared_names() -> frozenset[str]:
    from . import naming as series

    return frozenset(series.series_name(metric) for metric in (names.METRIC_CGROUP_OOM_KILLS, names.METRIC_CGROUP_PRESSURE))


_SHARED_NAMES = _shared_names()


def aggregation(name: str, kind: str) -> str:
    """How the family ``name`` of Prometheus type ``kind`` is merged: PER_PROCESS, SUMMED or SHARED."""
    if name in _SHARED_NAMES or name.startswith("system_"):  # the OpenTelemetry system metrics' host-wide ones
        return SHARED if kind in _SUMMED_TYPES else PER_PROCESS
    return SUMMED if kind in _SUMMED_TYPES else PER_PROCESS


def _prometheus_reader_collector(meter_provider: Any) -> Any:
    """The prometheus_client collector of the provider's OpenTelemetry Prometheus reader, or None."""
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
    except ImportError:  # pragma: no cover - a dependency of the package
        return None
    readers = getattr(meter_provider, "_metric_readers", None) or getattr(getattr(meter_provider, "_sdk_config", None), "metric_readers", ()) or ()
    for reader in readers:
        if isinstance(reader, PrometheusMetricReader):
            collector = getattr(reader, "_collector", None)
            if collector is not None and callable(getattr(collector, "collect", None)):
                return collector
    return None


def families_of(metrics: Iterable[Any]) -> list[Family]:
    """prometheus_client metric families as plain data (what a worker writes)."""
    return [
        (metric.name, metric.type, metric.documentation, metric.unit, [(s.name, dict(s.labels), float(s.value)) for s in metric.samples])
        for metric in metrics
    ]


def _key(sample_name: str, labels: dict[str, str]) -> _Key:
    return sample_name, tuple(sorted(labels.items()))


def _rss() -> int:
    """This process's RSS now (one read of a kept descriptor); 0 if unknown."""
    from ..profiling.probe import process_probe

    try:
        return (RUNTIME.probe or process_probe()).rss_bytes()
    except Exception:
        return 0


def _start_time(pid: int) -> float | None:
    """The process's start time, None if it is gone (or a zombie)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(process.create_time())
    except (psutil.Error, OSError):
        return None


def _same_process(pid: int, start: float) -> bool:
    started = _start_time(pid)
    return started is not None and abs(started - start) <= 0.5


def _live_children() -> dict[int, float]:
    """This process's children now (zombies excluded): pid -> start time."""
    import psutil

    found: dict[int, float] = {}
    for child in psutil.Process().children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                found[child.pid] = float(child.create_time())
        except (psutil.Error, OSError):
            continue
    return found


def directory_refusal(path: Path) -> str | None:
    """Why ``path`` may not hold the pages (None: it may): a directory, not a link, of this user, closed to group and others."""
    try:
        found = os.lstat(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    if stat.S_ISLNK(found.st_mode):
        return "a symbolic link"
    if not stat.S_ISDIR(found.st_mode):
        return "not a directory"
    if found.st_uid != os.geteuid():
        return f"owned by uid {found.st_uid}, not by this process's uid {os.geteuid()}"
    if found.st_mode & 0o022:
        return f"writable by group or others (mode {found.st_mode & 0o7777:o})"
    return None


def _configured_directory(configured: str) -> Path | None:
    """The configured directory (made 0700 if missing), or None with one error line if it is refused."""
    directory = Path(configured)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except (OSError, ValueError) as exc:
        refusal: str | None = str(exc)
    else:
        refusal = directory_refusal(directory)
    if refusal is None:
        return directory
    logger.error(
        "reer_otel_memory: %s=%r refused (%s): it must be a directory of this user that group and others cannot write; "
        "workers' pages go to a private temporary directory instead",
        names.ENV_WORKER_DIR,
        configured,
        refusal,
    )
    return None


def _temporary_pid(name: str) -> int | None:
    """The writer's pid of a temporary page ``.<pid>.<random>.tmp``, else None."""
    if not (name.startswith(".") and name.endswith(_TEMPORARY)):
        return None
    head = name[1:].split(".", 1)[0]
    return int(head) if head.isdigit() else None


class _RefusedError(Exception):
    """A file in the directory that is not read: its kind of refusal and a description."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind


class _Page:
    """One worker's page as read by the parent."""

    __slots__ = ("families", "parent", "pid", "start", "version")

    def __init__(self, version: tuple[int, int, int], pid: int, start: float, parent: int, families: list[Family]) -> None:
        self.version = version
        self.pid = pid
        self.start = start
        self.parent = parent
        self.families = families


class _Merged:
    """The families of one scrape as they are built: per-process samples, sums and maxima."""

    def __init__(self) -> None:
        self.meta: dict[str, tuple[str, str, str]] = {}  # name -> type, help, unit (first seen wins)
        self.samples: dict[str, list[tuple[str, dict[str, str], float]]] = {}
        self.values: dict[str, dict[_Key, tuple[str, dict[str, str], float]]] = {}

    def _accepts(self, name: str, kind: str, documentation: str, unit: str) -> bool:
        known = self.meta.setdefault(name, (kind, documentation, unit))
        return known[0] == kind

    def add(self, families: Iterable[Family], pid: int | None) -> None:
        for name, kind, documentation, unit, samples in families:
            if not self._accepts(name, kind, documentation, unit):
                continue
            how = aggregation(name, kind)
            if how == PER_PROCESS:
                label = {names.LABEL_PID: str(pid)} if pid is not None else {}
                self.samples.setdefault(name, []).extend((sample, {**labels, **label}, value) for sample, labels, value in samples)
                continue
            values = self.values.setdefault(name, {})
            for sample, labels, value in samples:
                key = _key(sample, labels)
                found = values.get(key)
                if found is None:
                    values[key] = (sample, labels, value)
                else:
                    values[key] = (sample, labels, found[2] + value if how == SUMMED else max(found[2], value))

    def metrics(self) -> list[Any]:
        from prometheus_client.metrics_core import Metric
        from prometheus_client.samples import Sample

        built = []
        for name, (kind, documentation, unit) in self.meta.items():
            metric = Metric(name, documentation, kind, unit)
            metric.samples = [Sample(sample, labels, value) for sample, labels, value in self.samples.get(name, [])]
            metric.samples.extend(Sample(sample, labels, value) for sample, labels, value in self.values.get(name, {}).values())
            built.append(metric)
        return built


def _forget_inherited_environment() -> bool:
    """Take the pre-fork variables out of this process's environment; True if the port was the parent's 0."""
    port_was_ours = names.ENV_WORKER_PORT in os.environ and os.environ.get(names.ENV_PROMETHEUS_PORT) == "0"
    original = os.environ.get(names.ENV_WORKER_PORT)
    for variable in _INHERITED:
        os.environ.pop(variable, None)
    if original is not None:
        if original:
            os.environ[names.ENV_PROMETHEUS_PORT] = original
        else:
            os.environ.pop(names.ENV_PROMETHEUS_PORT, None)
    return port_was_ours


def _spawned_by_multiprocessing() -> bool:
    """Started by ``multiprocessing`` as a Process (spawn or forkserver), as uvicorn's workers are."""
    return "--multiprocessing-fork" in getattr(sys, "orig_argv", ())


class WorkerPages:
    """The shared directory: workers write their page there, the parent merges them into its own."""

    def __init__(self, directory: Path, parent_pid: int, collect: Callable[[], Iterable[Any]], interval_s: float, owns_directory: bool) -> None:
        self.directory = directory
        self.parent_pid = parent_pid
        self.collect = collect  # the OpenTelemetry exporter's own collect (this process's series)
        self.interval_s = interval_s
        self._owns_directory = owns_directory
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # The parent's side.
        self._pages: dict[Path, _Page] = {}
        self._exited = _Merged()  # summed series of workers that exited
        self._seen_worker = False
        self._unremovable: set[tuple[int, float]] = set()
        self._refused: set[str] = set()
        # A worker's side.
        self.writing = False
        self._start = 0.0
        self._baseline: dict[_Key, float] = {}
        self._last_others_cpu = 0.0
        self._last_write = 0.0
        self._written_rss = 0
        self._failed_once = False
        #: Pages written and the writer thread's CPU seconds (for the benchmark).
        self.writes = 0
        self.writer_cpu_s = 0.0
        RUNTIME.after_fork_call(self)

    # --- the worker side ------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._pages, self._exited, self._unremovable = {}, _Merged(), set()
        self._owns_directory = False
        if self.writing or os.getppid() != self.parent_pid:
            # Forked by a worker (the service's own pool, a subprocess about to exec): not a worker.
            self.writing = False
            self._stop = threading.Event()
            self._stop.set()
            return
        _forget_inherited_environment()  # its own subprocesses are not workers
        self._baseline = self._summed_values()  # what the parent had counted: not this worker's
        self.start_writing()

    def _summed_values(self) -> dict[_Key, float]:
        try:
            with RUNTIME.fork_guard(_COLLECTING):
                own = families_of(self.collect())
        except Exception as exc:
            logger.debug("reading the series inherited from the parent failed: %r", exc)
            return {}
        return {
            _key(sample, labels): value
            for name, kind, _, _, samples in own
            if aggregation(name, kind) == SUMMED
            for sample, labels, value in samples
            if value
        }

    def start_writing(self) -> None:
        """Write this worker's page now, then while it works, and at exit."""
        self.writing = True
        self._start = _start_time(os.getpid()) or time.time()
        self._stop = threading.Event()
        self._write_page()
        threading.Thread(target=self._write_loop, name="reer-memory-worker-page", daemon=True).start()
        atexit.register(self._final_write)

    @property
    def own_page(self) -> Path:
        return self.directory / f"{os.getpid()}{_SUFFIX}"

    def _write_loop(self) -> None:
        heartbeat_s = max(self.interval_s, WRITE_INTERVAL_S)
        while not self._stop.wait(WRITE_INTERVAL_S):
            # CPU the rest of the process used since the last write: none, nothing new to show.
            others_cpu = time.process_time() - time.thread_time()
            if (
                others_cpu - self._last_others_cpu >= IDLE_CPU_S
                or abs(_rss() - self._written_rss) > self._written_rss * RSS_DRIFT_SHARE
                or time.monotonic() - self._last_write >= heartbeat_s
            ):
                self._write_page()
            self.writer_cpu_s = time.thread_time()

    def _final_write(self) -> None:
        self._stop.set()
        if self.writing and os.getpid() != self.parent_pid:
            self._write_page()

    def _write_page(self) -> None:
        try:
            with self._lock:
                self._last_others_cpu = time.process_time() - time.thread_time()
                self._last_write = time.monotonic()
                self._written_rss = _rss()
                with RUNTIME.fork_guard(_COLLECTING):
                    own = families_of(self.collect())
                baseline = self._baseline
                if baseline:
                    own = [
                        (name, kind, documentation, unit, [(s, labels, value - baseline.get(_key(s, labels), 0.0)) for s, labels, value in samples])
                        if aggregation(name, kind) == SUMMED
                        else (name, kind, documentation, unit, samples)
                        for name, kind, documentation, unit, samples in own
                    ]
                text = json.dumps({"pid": os.getpid(), "start": self._start, "parent": self.parent_pid, "families": own}, separators=(",", ":"))
                self._publish(text.encode("utf-8"))
                self.writes += 1
        except Exception as exc:  # the worker serves on; the page shows its last write
            if not self._failed_once:
                self._failed_once = True
                logger.warning("reer_otel_memory: writing this worker's metrics to %s failed (%r); the parent's page shows its last write", self.directory, exc)
            else:
                logger.debug("writing this worker's metrics to %s failed: %r", self.directory, exc)

    def _publish(self, data: bytes) -> None:
        """Replace this worker's page at once: a fresh temporary file (O_EXCL, no link followed), renamed over it."""
        descriptor, temporary = tempfile.mkstemp(prefix=f".{os.getpid()}.", suffix=_TEMPORARY, dir=self.directory)
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
            os.replace(temporary, self.own_page)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    # --- the parent side ------------------------------------------------------------------

    def _read(self, path: Path) -> _Page:
        """The page in ``path``: a regular file of this user up to MAX_PAGE_BYTES, read without following a link or blocking."""
        found = os.lstat(path)
        self._check(found)
        cached = self._pages.get(path)
        if cached is not None and cached.version == (found.st_ino, found.st_mtime_ns, found.st_size):
            return cached
        descriptor = os.open(path, _READ_FLAGS)
        try:
            found = os.fstat(descriptor)  # the file opened, whatever the name points to now
            self._check(found)
            chunks, left = [], MAX_PAGE_BYTES + 1
            while left > 0:
                chunk = os.read(descriptor, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        finally:
            os.close(descriptor)
        raw = b"".join(chunks)
        if len(raw) > MAX_PAGE_BYTES:
            raise _RefusedError("size", f"{path} grew past {MAX_PAGE_BYTES} bytes")
        data = json.loads(raw.decode("utf-8"))
        families = []
        for n, k, d, u, samples in data["families"]:
            if k not in _KINDS:
                raise ValueError(f"unknown metric type {k!r}")
            values = [(str(s), {str(a): str(b) for a, b in dict(labels).items()}, float(v)) for s, labels, v in samples]
            families.append((str(n), str(k), str(d), str(u), values))
        page = _Page((found.st_ino, found.st_mtime_ns, found.st_size), int(data["pid"]), float(data["start"]), int(data["parent"]), families)
        if f"{page.pid}{_SUFFIX}" != path.name:
            raise ValueError(f"the page of pid {page.pid} is named {path.name}")
        self._pages[path] = page
        return page

    @staticmethod
    def _check(found: os.stat_result) -> None:
        if not stat.S_ISREG(found.st_mode):
            raise _RefusedError("kind", "not a regular file")
        if found.st_uid != os.geteuid():
            raise _RefusedError("owner", f"owned by uid {found.st_uid}, not by this process's uid {os.geteuid()}")
        if found.st_size > MAX_PAGE_BYTES:
            raise _RefusedError("size", f"{found.st_size} bytes, over the {MAX_PAGE_BYTES} read")

    def _refuse(self, path: Path, refusal: _RefusedError) -> None:
        """One warning per kind of refusal (links and FIFOs, foreign owners, oversized pages), then debug lines."""
        if refusal.kind in self._refused:
            logger.debug("skipping the worker page %s: %s", path, refusal)
            return
        self._refused.add(refusal.kind)
        logger.warning("reer_otel_memory: the worker page %s is not read (%s); the page shows the other processes", path, refusal)

    def _fold(self, page: _Page, path: Path) -> None:
        """A worker that exited: its counters and histograms join the exited totals, its gauges go."""
        identity = (page.pid, page.start)
        if identity not in self._unremovable:
            self._exited.add(((n, k, d, u, s) for n, k, d, u, s in page.families if aggregation(n, k) == SUMMED), None)
            self._seen_worker = True
        self._pages.pop(path, None)
        try:
            path.unlink()
            self._unremovable.discard(identity)
        except FileNotFoundError:
            self._unremovable.discard(identity)
        except OSError as exc:
            if identity not in self._unremovable:
                logger.warning("reer_otel_memory: the page of the exited worker %d could not be removed (%r); its totals are kept once", page.pid, exc)
            self._unremovable.add(identity)

    def _refresh(self) -> list[_Page]:
        """Every live worker's page; the pages of workers that exited are folded and removed."""
        live: list[_Page] = []
        seen: set[Path] = set()
        try:
            paths = sorted(self.directory.iterdir())
        except OSError:
            return live
        children: dict[int, float] | None = None
        for path in paths:
            name = path.name
            writer = _temporary_pid(name)
            if writer is not None:
                if _start_time(writer) is None:  # a worker killed mid-write
                    with contextlib.suppress(OSError):
                        path.unlink()
                continue
            if not name.endswith(_SUFFIX) or not name[: -len(_SUFFIX)].isdigit():
                continue
            seen.add(path)
            try:
                page = self._read(path)
            except _RefusedError as refusal:
                self._refuse(path, refusal)
                continue
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.debug("skipping the worker page %s: %r", path, exc)
                continue
            if page.pid == os.getpid():
                continue
            alive = _same_process(page.pid, page.start)
            if page.parent != self.parent_pid:
                if not alive and _start_time(page.parent) is None:  # left by an earlier parent
                    self._pages.pop(path, None)
                    with contextlib.suppress(OSError):
                        path.unlink()
                continue
            if alive:
                if children is None:
                    children = _live_children()
                started = children.get(page.pid)
                if started is None or abs(started - page.start) > 0.5:  # alive, but no worker of this parent
                    logger.debug("skipping the worker page %s: pid %d is not a child of this process", path, page.pid)
                    continue
                live.append(page)
                self._seen_worker = True
            else:
                self._fold(page, path)
        for stale in set(self._pages) - seen:
            del self._pages[stale]
        return live

    def merged(self) -> list[Any]:
        """The page: this process's families with every live worker's and the exited workers' totals."""
        if os.getpid() != self.parent_pid:
            return list(self.collect())
        with RUNTIME.fork_guard(_COLLECTING):
            own_metrics = list(self.collect())
        try:
            with self._lock:
                live = self._refresh()
                if not self._seen_worker:
                    return own_metrics
                merged = _Merged()
                merged.add(families_of(own_metrics), os.getpid())
                for page in live:
                    merged.add(page.families, page.pid)
                merged.add(self._exited_families(), None)
            return merged.metrics()
        except Exception as exc:  # the scrape still gets this process's own series
            if not self._failed_once:
                self._failed_once = True
                logger.warning("reer_otel_memory: merging the workers' metrics failed (%r); this scrape shows the parent's own", exc)
            return own_metrics

    def _exited_families(self) -> list[Family]:
        exited = self._exited
        return [(name, kind, doc, unit, list(exited.values.get(name, {}).values())) for name, (kind, doc, unit) in exited.meta.items()]

    def start_folding(self) -> None:
        """In the parent: fold exited workers' pages every interval even when nobody scrapes."""
        threading.Thread(target=self._fold_loop, name="reer-memory-worker-fold", daemon=True).start()

    def _fold_loop(self) -> None:
        while not self._stop.wait(max(1.0, self.interval_s)):
            if os.getpid() != self.parent_pid:
                return
            try:
                with self._lock:
                    self._refresh()
            except Exception as exc:
                logger.debug("folding exited workers' pages failed: %r", exc)

    def close(self) -> None:
        self._stop.set()
        if self._owns_directory and os.getpid() == self.parent_pid:
            shutil.rmtree(self.directory, ignore_errors=True)


def share_worker_metrics(meter_provider: Any, interval_s: float) -> WorkerPages | None:
    """Set up the pre-fork page for this process (parent or spawned worker); None if it has no part in one.

    Called by the instrumentor. A bad directory logs one line and leaves the page as it was.
    """
    parent = os.environ.get(names.ENV_WORKER_PARENT, "").strip()
    if parent.isdigit() and int(parent) != os.getpid():
        # A descendant of an instrumented parent: a worker only if that parent started it with
        # multiprocessing (uvicorn --workers); none of its own descendants inherits the part.
        configured = os.environ.get(names.ENV_WORKER_DIR, "").strip()
        if _forget_inherited_environment():
            from .zero_code import close_stock_servers

            close_stock_servers()  # the listener the exporter opened here on port 0
        if not (configured and int(parent) == os.getppid() and _spawned_by_multiprocessing()):
            return None
        found = _prometheus_reader_collector(meter_provider)
        if found is None:
            return None
        refusal = directory_refusal(Path(configured))
        if refusal is not None:
            logger.error("reer_otel_memory: %s=%r refused (%s); this worker's metrics are not on the parent's page", names.ENV_WORKER_DIR, configured, refusal)
            return None
        pages = WorkerPages(Path(configured), int(parent), found.collect, interval_s, owns_directory=False)
        pages.start_writing()
        return pages
    found = _prometheus_reader_collector(meter_provider)
    if found is None:
        return None
    collector = found
    configured = os.environ.get(names.ENV_WORKER_DIR, "").strip()
    directory = _configured_directory(configured) if configured else None  # a refused one logs one line
    owns = False
    if directory is None:
        try:
            directory, owns = Path(tempfile.mkdtemp(prefix="reer-memory-workers-")), True
        except OSError as exc:
            logger.error("reer_otel_memory: no private directory for the workers' pages (%s); workers' metrics will not be merged", exc)
            return None
    pages = WorkerPages(directory, os.getpid(), collector.collect, interval_s, owns_directory=owns)
    os.environ[names.ENV_WORKER_DIR] = str(directory)
    os.environ[names.ENV_WORKER_PARENT] = str(os.getpid())
    # Spawned workers start their own exporter: any free port, not the parent's (they close it).
    os.environ.setdefault(names.ENV_WORKER_PORT, os.environ.get(names.ENV_PROMETHEUS_PORT, ""))
    os.environ[names.ENV_PROMETHEUS_PORT] = "0"
    # The registry calls collector.collect(): in the parent it now serves the merged page (the
    # collector stays registered, so the reader's own shutdown still finds it).
    collector.collect = pages.merged
    pages.start_folding()
    atexit.register(pages.close)
    return pages
