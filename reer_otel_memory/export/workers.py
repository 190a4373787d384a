"""Pre-fork servers: every worker's metrics on the parent's one ``/metrics`` page, told apart by ``pid``.

Under ``opentelemetry-instrument`` with ``OTEL_METRICS_EXPORTER=prometheus``, the OpenTelemetry
Prometheus exporter serves ``/metrics`` from the process that started first: gunicorn's arbiter,
uvicorn's supervisor. Its workers are forked (gunicorn) or spawned (uvicorn ``--workers``) from
it, and a worker's memory is what matters. So, as prometheus_client's multiprocess mode does for
gunicorn, the page stays one scrape target and each process's series carry a ``pid`` label:

* the parent makes a directory (``REER_MEMORY_WORKER_DIR``, default: a fresh temporary one,
  removed at exit) and names it, and itself as the parent (``REER_MEMORY_WORKER_PARENT``), in
  the environment its workers inherit; spawned workers also inherit
  ``OTEL_EXPORTER_PROMETHEUS_PORT=0`` so their own exporter does not fight over the parent's port;
* each worker (a forked child, or a spawned process that finds those variables naming another
  process) writes its page to ``<dir>/<pid>.prom`` at once and every monitor interval
  (``REER_MEMORY_MONITORING_INTERVAL``), and removes it when it exits;
* each scrape of the parent serves its own series and every live worker's, all with ``pid``. A
  worker whose process is gone (exited, killed, or its pid reused) is dropped at that scrape
  and its file removed, so it disappears from the next scrape. Until a worker has written, the
  page is the parent's alone, without ``pid``.

Why one target with a ``pid`` label rather than one target per worker: it is how Prometheus
users already see gunicorn (prometheus_client's multiprocess mode), it needs no service
discovery and no port per worker (one port per pod, as Kubernetes scrape annotations assume),
and the shipped alert rules compare each series with the thresholds of its ``job`` and
``instance``, so each worker's alerts fire on its own RSS with the rules unchanged.

A worker's values are as fresh as its last write (at most one monitor interval old).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .. import _names as names
from .._runtime import RUNTIME

logger = logging.getLogger(__name__)

_SUFFIX = ".prom"
_HEADER = "# reer-otel-memory worker"


#: Held while this process collects its own series for a scrape, and across fork()
#: (:meth:`Runtime.fork_guard`): a worker forked in the middle of a collection would inherit the
#: SDK's locks held, and hang on its first collection.
_COLLECTING = "export.workers.collecting"


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


def _render(families: Iterable[Any]) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    class _Fixed:
        def __init__(self, collected: list[Any]) -> None:
            self.collected = collected

        def collect(self) -> list[Any]:
            return self.collected

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families)))
    return generate_latest(registry).decode()


def _parse(text: str) -> list[Any]:
    from prometheus_client.parser import text_string_to_metric_families

    return list(text_string_to_metric_families(text))


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


class WorkerPages:
    """The shared directory: workers write their page there, the parent merges them into its own."""

    def __init__(self, directory: Path, parent_pid: int, collect: Callable[[], Iterable[Any]], interval_s: float, owns_directory: bool) -> None:
        self.directory = directory
        self.parent_pid = parent_pid
        self.collect = collect  # the OpenTelemetry exporter's own collect (this process's series)
        self.interval_s = interval_s
        self._owns_directory = owns_directory
        self._lock = threading.Lock()
        self._parsed: dict[Path, tuple[tuple[int, int], float, list[Any]]] = {}
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        RUNTIME.after_fork_call(self)

    # --- the worker side ------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._parsed = {}
        self._owns_directory = False
        self.start_writing()

    def start_writing(self) -> None:
        """Write this worker's page now and every interval until exit (then remove it)."""
        self._stop = threading.Event()
        self._write_page()
        self._writer = threading.Thread(target=self._write_loop, name="reer-memory-worker-page", daemon=True)
        self._writer.start()
        atexit.register(self._remove_own_page)

    @property
    def own_page(self) -> Path:
        return self.directory / f"{os.getpid()}{_SUFFIX}"

    def _write_loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._write_page()

    def _write_page(self) -> None:
        try:
            start = _start_time(os.getpid())
            text = f"{_HEADER} {os.getpid()} {start!r}\n" + _render(self.collect())
            temporary = self.directory / f".{os.getpid()}.tmp"
            temporary.write_text(text, encoding="utf-8")
            os.replace(temporary, self.own_page)
        except Exception as exc:  # the worker serves on; its series are missing until the next write
            logger.debug("writing this worker's metrics to %s failed: %r", self.directory, exc)

    def _remove_own_page(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.own_page.unlink()

    # --- the parent side ------------------------------------------------------------------

    def _worker_families(self) -> list[tuple[int, list[Any]]]:
        """The families of every live worker, parsed once per written version."""
        found: list[tuple[int, list[Any]]] = []
        seen: set[Path] = set()
        try:
            paths = sorted(self.directory.glob(f"*{_SUFFIX}"))
        except OSError:
            return found
        for path in paths:
            try:
                pid = int(path.stem)
            except ValueError:
                continue
            if pid == os.getpid():
                continue
            seen.add(path)
            started = _start_time(pid)
            try:
                stat = path.stat()
                version = (stat.st_mtime_ns, stat.st_size)
                cached = self._parsed.get(path)
                if cached is None or cached[0] != version:
                    text = path.read_text(encoding="utf-8")
                    header = text.split("\n", 1)[0].split()
                    written_start = float(header[-1]) if header[:3] == _HEADER.split() and header[-1] != "None" else None
                    cached = (version, written_start if written_start is not None else -1.0, _parse(text))
                    self._parsed[path] = cached
            except (OSError, ValueError) as exc:
                logger.debug("skipping the worker page %s: %r", path, exc)
                continue
            if started is None or abs(started - cached[1]) > 0.5:
                # Gone, or its pid now belongs to another process: drop it for good.
                self._parsed.pop(path, None)
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            found.append((pid, cached[2]))
        for stale in set(self._parsed) - seen:
            del self._parsed[stale]
        return found

    def merged(self) -> list[Any]:
        """This process's families, with every live worker's merged in, each sample labelled ``pid``."""
        if os.getpid() != self.parent_pid:
            return list(self.collect())
        with RUNTIME.fork_guard(_COLLECTING):
            own = list(self.collect())
        with self._lock:
            workers = self._worker_families()
        if not workers:
            return own
        from prometheus_client.metrics_core import Metric

        merged: dict[str, Any] = {}
        for pid, families in [(os.getpid(), _parse(_render(own))), *workers]:
            label = str(pid)
            for family in families:
                target = merged.get(family.name)
                if target is None:
                    target = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                elif target.type != family.type:
                    continue
                target.samples.extend(sample._replace(labels={**sample.labels, names.LABEL_PID: label}) for sample in family.samples)
        return list(merged.values())

    def close(self) -> None:
        self._stop.set()
        if self._owns_directory and os.getpid() == self.parent_pid:
            shutil.rmtree(self.directory, ignore_errors=True)


def share_worker_metrics(meter_provider: Any, interval_s: float) -> WorkerPages | None:
    """Set up the pre-fork page for this process (parent or spawned worker); None if not served by Prometheus.

    Called by the instrumentor. A bad directory logs one line and leaves the page as it was.
    """
    found = _prometheus_reader_collector(meter_provider)
    if found is None:
        return None
    collector = found
    parent = os.environ.get(names.ENV_WORKER_PARENT, "").strip()
    configured = os.environ.get(names.ENV_WORKER_DIR, "").strip()
    try:
        if parent.isdigit() and int(parent) != os.getpid() and configured and _start_time(int(parent)) is not None:
            # A spawned worker of an instrumented parent: write, don't serve.
            pages = WorkerPages(Path(configured), int(parent), collector.collect, interval_s, owns_directory=False)
            pages.start_writing()
            return pages
        if configured:
            directory, owns = Path(configured), False
            directory.mkdir(parents=True, exist_ok=True)
        else:
            directory, owns = Path(tempfile.mkdtemp(prefix="reer-memory-workers-")), True
    except (OSError, ValueError) as exc:
        logger.error("reer_otel_memory: %s=%r is not a usable directory (%s); workers' metrics will not be merged", names.ENV_WORKER_DIR, configured, exc)
        return None
    pages = WorkerPages(directory, os.getpid(), collector.collect, interval_s, owns_directory=owns)
    os.environ[names.ENV_WORKER_DIR] = str(directory)
    os.environ[names.ENV_WORKER_PARENT] = str(os.getpid())
    # Spawned workers start their own exporter: any free port, not the parent's.
    os.environ[names.ENV_PROMETHEUS_PORT] = "0"
    # The registry calls collector.collect(): in the parent it now serves the merged page (the
    # collector stays registered, so the reader's own shutdown still finds it).
    collector.collect = pages.merged
    atexit.register(pages.close)
    return pages
