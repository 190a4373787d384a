"""A crash-safe, append-only JSONL store of reasoning traces, with async streaming queries.

Any number of processes append whole lines under ``flock`` to an ``O_APPEND`` descriptor, so a
killed writer can leave at most one unterminated last line, which reads skip and the next append
closes off. Reads run the per-line pass of :mod:`.scan` in a worker thread, a bounded hop at a
time, so the event loop never blocks and memory does not grow with the file; ``get_trace`` looks
ids up in an offset index (:mod:`.index`) built on first use and dropped by memory cleanups.
The users' manual (file format, guarantees, errors, telemetry) is docs/trace-store.md.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from itertools import islice
from typing import Any

from opentelemetry import trace as otel_trace
from opentelemetry.metrics import CallbackOptions, Observation

from .. import _names as names
from .. import _telemetry
from ..errors import TraceStoreError
from ..monitoring.cleanup import register_cleanup_hook, release_memory, unregister_cleanup_hook
from ..profiling.operations import memory_context, memory_profile
from ..profiling.probe import process_probe
from .index import OffsetIndex, index_key
from .records import ScoreStats, checked_count, encode_trace, is_finite_number, query_predicate, short_repr
from .scan import DEFAULT_CHUNK_BYTES, MAX_REPORTED_MALFORMED, AsyncPass, JSONLScan, ScanStats, decode_line, take

try:
    import fcntl
except ImportError:  # no advisory locks (Windows): appends are exclusive within this process only
    fcntl = None  # type: ignore[assignment]

__all__ = ["REERTraceStore"]

_MB = 1 << 20
#: Bytes one hop of a stats pass or a filtered stream reads at most: bounds the work a cancelled
#: call leaves behind.
HOP_BYTES = 8 << 20
#: Bytes a hop of a query reads at most: what it hands over is at most this much JSON. A hop of a
#: filtered stream reads this much and then on, up to HOP_BYTES, until it has a whole chunk.
QUERY_HOP_BYTES = 2 << 20
#: Traces one hop hands from the worker thread to the event loop (at most; a hop costs about a
#: millisecond of thread hand-offs, so fewer would show in the throughput).
HOP_RECORDS = 4096
#: Records a filtered stream reads between checks of its hop's byte budget.
FILL_RUN_RECORDS = 64
#: Bytes of lines written per lock and ``write`` by ``add_traces``.
WRITE_BATCH_BYTES = 1 << 20


class _Writer:
    """The append descriptor, owned by one process (a forked child opens its own: flock locks
    belong to the open file, which a child would otherwise share with its parent)."""

    __slots__ = ("fd", "pid")

    def __init__(self) -> None:
        self.fd = -1
        self.pid = os.getpid()

    def close(self) -> None:
        if self.fd >= 0 and self.pid == os.getpid():
            try:
                os.close(self.fd)
            except OSError:
                pass
        self.fd = -1


# The live instances the gauges describe, held weakly: not process state a reset could forget,
# but objects the user's code made and still holds.
_live_stores: weakref.WeakSet[REERTraceStore] = weakref.WeakSet()


def _observe_sizes(options: CallbackOptions) -> list[Observation]:
    sizes: dict[str, int] = {}
    for store in list(_live_stores):
        try:
            sizes[store.path] = os.stat(store.path).st_size
        except OSError:
            continue
    return [Observation(size, {names.LABEL_TRACE_STORE_PATH: path}) for path, size in sizes.items()]


def _observe_counts(options: CallbackOptions) -> list[Observation]:
    counts: dict[str, int] = {}
    for store in list(_live_stores):
        known = store._known_traces
        if known is not None:
            counts[store.path] = known
    return [Observation(count, {names.LABEL_TRACE_STORE_PATH: path}) for path, count in counts.items()]


def _register_gauges(telemetry: _telemetry.Telemetry) -> None:
    telemetry.observable_gauge(names.METRIC_TRACE_STORE_SIZE, _observe_sizes)
    telemetry.observable_gauge(names.METRIC_TRACE_STORE_TRACES, _observe_counts)


def _release_hook(ref: weakref.ref[REERTraceStore]) -> Callable[[], object]:
    def release() -> object:
        store = ref()
        return None if store is None else store._release_caches()

    return release


def _forget(writer: _Writer, hook_name: str) -> None:
    writer.close()
    unregister_cleanup_hook(hook_name)


class REERTraceStore:
    """Reasoning traces in an append-only JSONL file; see docs/trace-store.md.

    ``path``: the file. ``durable``: fsync each append. ``chunk_bytes``: read size of scans.
    ``max_reported_malformed``: malformed line numbers kept in the stats.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durable: bool = False,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        max_reported_malformed: int = MAX_REPORTED_MALFORMED,
    ) -> None:
        try:
            self.path = os.fspath(path)
        except TypeError:
            raise TraceStoreError(f"REERTraceStore(path={path!r}): expected a file path (str or os.PathLike)") from None
        if not self.path:
            raise TraceStoreError("REERTraceStore(path=''): expected a file path")
        checked_count(chunk_bytes, 1, where="REERTraceStore", name="chunk_bytes", expected="expected a positive number of bytes")
        checked_count(
            max_reported_malformed, 0, where="REERTraceStore", name="max_reported_malformed", expected="expected a non-negative integer"
        )
        self.durable = bool(durable)
        self.chunk_bytes = chunk_bytes
        self.max_reported_malformed = max_reported_malformed
        self._span_attributes = {names.ATTR_TRACE_STORE_PATH: self.path}
        self._pid = os.getpid()
        self._new_locks()
        self._writer = _Writer()
        self._index: OffsetIndex | None = None
        self._index_generation = 0
        #: Complete records in the file up to ``_known_through``, once a read or write learned it.
        self._known_traces: int | None = None
        self._known_through = 0

        _live_stores.add(self)
        _telemetry.register_on_every_telemetry("trace_store", _register_gauges)
        self._hook_name = f"trace_store:{self.path}:{id(self):x}"
        register_cleanup_hook(self._hook_name, _release_hook(weakref.ref(self)))
        self._finalizer = weakref.finalize(self, _forget, self._writer, self._hook_name)

    def _new_locks(self) -> None:
        #: Guards the index and the known count (held briefly).
        self._state_lock = threading.Lock()
        #: One index build or extension at a time.
        self._index_lock = threading.Lock()
        #: One writer thread at a time: flock does not exclude threads sharing a descriptor.
        self._write_lock = threading.Lock()

    def _after_fork(self) -> None:
        """In a forked child: fresh locks (a parent thread may have held one) and descriptor."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._new_locks()
            if self._writer.fd >= 0:
                # The parent's open file: the child must not lock through it (flock locks
                # belong to the open file). Closing the child's copy leaves the parent's lock.
                try:
                    os.close(self._writer.fd)
                except OSError:
                    pass
            self._writer.fd = -1
            self._writer.pid = self._pid

    def close(self) -> None:
        """Close the append descriptor now (the next write reopens it; collection also closes it)."""
        self._after_fork()
        with self._write_lock:
            self._writer.close()

    def __repr__(self) -> str:
        return f"REERTraceStore({self.path!r})"

    # --- writes --------------------------------------------------------------------------------

    async def add_trace(self, trace: Mapping[str, Any]) -> str:
        """Append one trace; returns its ``trace_id`` once the line is in the file."""
        self._after_fork()
        with memory_context(names.OPERATION_TRACE_STORE_ADD_TRACE, attributes=self._span_attributes) as operation:
            line, trace_id = encode_trace(trace, "trace")
            await asyncio.to_thread(self._append, [line], [trace_id])
            operation.set_attribute(names.ATTR_TRACE_STORE_RECORDS_WRITTEN, 1)
            operation.set_attribute(names.ATTR_TRACE_STORE_BYTES_WRITTEN, len(line))
        return trace_id

    async def add_traces(self, traces: Iterable[Mapping[str, Any]]) -> list[str]:
        """Append many traces (all validated before any is written); returns their ids in order."""
        self._after_fork()
        with memory_context(names.OPERATION_TRACE_STORE_ADD_TRACES, attributes=self._span_attributes) as operation:
            if isinstance(traces, (Mapping, str, bytes)) or not isinstance(traces, Iterable):
                raise TraceStoreError(f"add_traces(traces={short_repr(traces)}): expected an iterable of trace objects")
            lines: list[bytes] = []
            trace_ids: list[str] = []
            for position, trace in enumerate(traces):
                line, trace_id = encode_trace(trace, f"traces[{position}]")
                lines.append(line)
                trace_ids.append(trace_id)
            if lines:
                await asyncio.to_thread(self._append, lines, trace_ids)
            operation.set_attribute(names.ATTR_TRACE_STORE_RECORDS_WRITTEN, len(lines))
            operation.set_attribute(names.ATTR_TRACE_STORE_BYTES_WRITTEN, sum(map(len, lines)))
        return trace_ids

    def _append(self, lines: list[bytes], trace_ids: list[str]) -> None:
        """Write the lines under the locks, all or none, then note them in the index and count.

        The lines go out in writes of at most :data:`WRITE_BATCH_BYTES`; if one fails (disk
        full, file size limit), the file is truncated back to its size before the call, so
        readers never see part of a batch, and the error says so.
        """
        with self._write_lock:
            fd = self._locked_writer_fd()
            try:
                size_before = os.fstat(fd).st_size
                fresh_line = size_before > 0 and os.pread(fd, 1, size_before - 1) != b"\n"
                try:
                    if fresh_line:
                        _write_all(fd, b"\n")  # a torn tail: start on a fresh line
                    start = 0
                    while start < len(lines):
                        stop, batch_bytes = start, 0
                        while stop < len(lines) and (stop == start or batch_bytes + len(lines[stop]) <= WRITE_BATCH_BYTES):
                            batch_bytes += len(lines[stop])
                            stop += 1
                        _write_all(fd, b"".join(lines[start:stop]))
                        start = stop
                    if self.durable:
                        os.fsync(fd)
                except BaseException as exc:
                    self._undo_append(fd, size_before, len(lines), exc)
                    raise
            finally:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        offsets, offset = [], size_before + fresh_line
        for line in lines:
            offsets.append(offset)
            offset += len(line)
        self._note_append(size_before, offset, trace_ids, offsets)

    def _undo_append(self, fd: int, size_before: int, count: int, exc: BaseException) -> None:
        """Truncate a failed append away (still under the flock); raise an OSError saying what was kept."""
        what = "add_trace" if count == 1 else f"add_traces of {count} traces"
        try:
            os.ftruncate(fd, size_before)
        except OSError as undo_error:
            kept = (
                f"the file could not be truncated back to its {size_before} bytes ({undo_error.strerror or undo_error}): "
                f"part of the batch may remain after byte offset {size_before}"
            )
        else:
            kept = f"none of them was kept (the file is back to its {size_before} bytes)"
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"REERTraceStore({self.path!r}): {what} failed: {exc.strerror or exc}; {kept}") from exc

    def _locked_writer_fd(self) -> int:
        """The append descriptor, exclusively flocked, still naming the file at ``path``."""
        writer = self._writer
        for _ in range(3):
            if writer.fd < 0:
                writer.fd = self._open_for_append()
                writer.pid = os.getpid()
            if fcntl is not None:
                fcntl.flock(writer.fd, fcntl.LOCK_EX)
            try:
                on_disk = os.stat(self.path)
            except FileNotFoundError:
                on_disk = None
            opened = os.fstat(writer.fd)
            if on_disk is not None and (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino):
                return writer.fd
            # The file was removed or replaced since it was opened: append to the one at path.
            writer.close()
        raise TraceStoreError(f"REERTraceStore({self.path!r}): the file keeps being replaced; cannot append")

    def _open_for_append(self) -> int:
        flags = os.O_RDWR | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        try:
            return os.open(self.path, flags)
        except FileNotFoundError:
            pass
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        try:
            fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return os.open(self.path, flags)
        if self.durable:  # make the new directory entry durable too
            directory_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(directory_fd)
            finally:
                os.close(directory_fd)
        return fd

    def _note_append(self, size_before: int, end: int, trace_ids: list[str], offsets: list[int]) -> None:
        """Our lines landed at ``offsets``: extend the index and count if they were up to date."""
        with self._state_lock:
            index = self._index
            if index is not None and index.indexed_through == size_before:
                index.put_many(zip(map(index_key, trace_ids), offsets, strict=True))
                index.indexed_through = end
                index.lines_through += len(offsets)
            if size_before == 0 and self._known_traces is None:
                self._known_traces, self._known_through = 0, 0
            if self._known_traces is not None and self._known_through == size_before:
                self._known_traces += len(offsets)
                self._known_through = end

    def _learn_count(self, start: int, end: int, records: int) -> None:
        """A pass counted ``records`` complete records between ``start`` and ``end``."""
        with self._state_lock:
            if start == 0 and (self._known_traces is None or end >= self._known_through):
                self._known_traces, self._known_through = records, end
            elif start > 0 and self._known_traces is not None and start == self._known_through:
                self._known_traces += records
                self._known_through = end

    # --- streaming reads -----------------------------------------------------------------------

    def _scan(self, **options: Any) -> JSONLScan:
        return JSONLScan(
            self.path,
            chunk_bytes=self.chunk_bytes,
            objects_only=True,
            max_reported_malformed=self.max_reported_malformed,
            **options,
        )

    def lazy_query_traces(
        self,
        min_score: float | None = None,
        max_score: float | None = None,
        limit: int | None = None,
        **equals: Any,
    ) -> AsyncIterator[dict[str, Any]]:
        """Traces with ``min_score <= score <= max_score`` and ``trace[field] == value`` for each
        ``field=value``, in file order; reading stops once ``limit`` traces were yielded.

        A bound on the score skips traces without a numeric score.
        """
        for name, bound in (("min_score", min_score), ("max_score", max_score)):
            if bound is not None and not is_finite_number(bound):
                raise TraceStoreError(f"lazy_query_traces({name}={bound!r}): expected a finite number or None")
        if limit is not None:
            checked_count(limit, 0, where="lazy_query_traces", name="limit", expected="expected a non-negative integer or None")
        return self._lazy_query(query_predicate(min_score, max_score, equals), limit)

    @memory_profile(operation_name=names.OPERATION_TRACE_STORE_LAZY_QUERY)
    async def _lazy_query(self, predicate: Callable[[dict[str, Any]], bool] | None, limit: int | None) -> AsyncIterator[dict[str, Any]]:
        # An async generator keeps its span current only while it runs (memory_profile), so
        # the consumer's work between items is not attributed to the query.
        span = otel_trace.get_current_span()
        span.set_attributes(self._span_attributes)
        self._after_fork()
        scan = self._scan()
        run = AsyncPass(scan)
        returned = 0
        try:
            exhausted = limit == 0
            while not exhausted:
                wanted = HOP_RECORDS if limit is None else min(HOP_RECORDS, limit - returned)
                batch, exhausted = await run.hop(_take_existing, scan.stats, wanted, predicate)
                for trace in batch:
                    returned += 1
                    yield trace
                del batch
                if limit is not None and returned >= limit:
                    break
        finally:
            run.close()
            self._set_read_attributes(span, scan.stats, returned)

    def stream_traces_filtered(
        self, filter_func: Callable[[dict[str, Any]], object] | None = None, chunk_size: int = 1000
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Lists of up to ``chunk_size`` traces for which ``filter_func(trace)`` is true (all
        traces without one), in file order; the last list may be shorter.

        ``filter_func`` runs in the worker thread that reads the file.
        """
        if filter_func is not None and not callable(filter_func):
            raise TraceStoreError(f"stream_traces_filtered(filter_func={filter_func!r}): expected a callable or None")
        checked_count(chunk_size, 1, where="stream_traces_filtered", name="chunk_size", expected="expected a positive integer")
        return self._stream_filtered(filter_func, chunk_size)

    @memory_profile(operation_name=names.OPERATION_TRACE_STORE_STREAM_FILTERED)
    async def _stream_filtered(
        self, filter_func: Callable[[dict[str, Any]], object] | None, chunk_size: int
    ) -> AsyncIterator[list[dict[str, Any]]]:
        span = otel_trace.get_current_span()
        span.set_attributes(self._span_attributes)
        self._after_fork()
        scan = self._scan()
        run = AsyncPass(scan)
        filler = _ChunkFiller(filter_func, chunk_size)
        returned = 0
        try:
            exhausted = False
            while not exhausted:
                chunks, exhausted = await run.hop(filler.fill, scan, QUERY_HOP_BYTES, HOP_BYTES)
                chunks.reverse()
                while chunks:  # each chunk yielded off the list: none stays held while the consumer has it
                    returned += len(chunks[-1])
                    yield chunks.pop()
        finally:
            run.close()
            self._set_read_attributes(span, scan.stats, returned)

    def _set_read_attributes(self, span: otel_trace.Span, stats: ScanStats, returned: int | None) -> None:
        attributes = {
            names.ATTR_TRACE_STORE_RECORDS_SCANNED: stats.records,
            names.ATTR_TRACE_STORE_BYTES_READ: stats.bytes_read,
            names.ATTR_TRACE_STORE_MALFORMED_LINES: stats.malformed_lines,
        }
        if returned is not None:
            attributes[names.ATTR_TRACE_STORE_RECORDS_RETURNED] = returned
        span.set_attributes(attributes)

    async def get_memory_efficient_stats(self) -> dict[str, Any]:
        """Counts, malformed lines, torn tail, file size, process RSS and score min/mean/max,
        from one streaming pass.

        Keys: ``total_traces``, ``malformed_lines``, ``malformed_line_numbers`` (the first
        ``max_reported_malformed``), ``blank_lines``, ``torn_tail`` (None, or ``offset`` and
        ``bytes`` of an unterminated last line), ``file_size_bytes``, ``file_size_mb``,
        ``memory_usage_mb`` (process RSS), ``scored_traces``, ``score_min``, ``score_mean``,
        ``score_max`` (None without scores), ``index_entries``, ``index_memory_mb``, ``bytes_read``.
        """
        self._after_fork()
        with memory_context(names.OPERATION_TRACE_STORE_STATS, attributes=self._span_attributes) as operation:
            scan = self._scan(field="score")  # decodes the scores only
            scores = ScoreStats()
            run = AsyncPass(scan)
            exhausted = False
            try:
                while not exhausted:
                    exhausted = await run.hop(scores.consume, scan.stats, HOP_BYTES)
            except FileNotFoundError:
                pass  # no file yet: an empty store
            finally:
                run.close()
            stats = scan.stats
            if exhausted:
                self._learn_count(0, stats.end_offset, stats.records)
            try:
                file_size = os.stat(self.path).st_size
            except FileNotFoundError:
                file_size = 0
            index = self._index
            self._set_read_attributes(operation.span, stats, None)
            return {
                "path": self.path,
                "total_traces": stats.records,
                "malformed_lines": stats.malformed_lines,
                "malformed_line_numbers": list(stats.malformed_line_numbers),
                "blank_lines": stats.blank_lines,
                "torn_tail": None
                if stats.torn_tail_offset is None
                else {"offset": stats.torn_tail_offset, "bytes": stats.torn_tail_bytes},
                "file_size_bytes": file_size,
                "file_size_mb": file_size / _MB,
                "memory_usage_mb": process_probe().rss_bytes() / _MB,
                "scored_traces": scores.count,
                "score_min": scores.low,
                "score_mean": scores.total / scores.count if scores.count else None,
                "score_max": scores.high,
                "index_entries": index.entries if index is not None else 0,
                "index_memory_mb": index.nbytes / _MB if index is not None else 0.0,
                "bytes_read": stats.bytes_read,
            }

    # --- lookups by id -------------------------------------------------------------------------

    async def get_trace(self, trace_id: str) -> dict[str, Any] | None:
        """The latest trace with this ``trace_id``, or None."""
        if not isinstance(trace_id, str) or not trace_id:
            raise TraceStoreError(f"get_trace(trace_id={trace_id!r}): expected a non-empty string")
        self._after_fork()
        with memory_context(names.OPERATION_TRACE_STORE_GET_TRACE, attributes=self._span_attributes) as operation:
            found, scanned, bytes_read = await asyncio.to_thread(self._get_trace, trace_id)
            operation.set_attribute(names.ATTR_TRACE_STORE_RECORDS_SCANNED, scanned)
            operation.set_attribute(names.ATTR_TRACE_STORE_BYTES_READ, bytes_read)
            operation.set_attribute(names.ATTR_TRACE_STORE_RECORDS_RETURNED, 0 if found is None else 1)
            return found

    def _get_trace(self, trace_id: str) -> tuple[dict[str, Any] | None, int, int]:
        """(trace or None, records scanned, bytes read), in a worker thread."""
        index, scanned, bytes_read = self._current_index()
        if index is None:
            return None, scanned, bytes_read
        with self._state_lock:
            offset = index.get(index_key(trace_id))
        if offset < 0:
            return None, scanned, bytes_read
        record, line_bytes = self._read_record_at(offset)
        bytes_read += line_bytes
        if record is not None and record.get("trace_id") == trace_id:
            return record, scanned + 1, bytes_read
        # A hash collision, or the file was rewritten under us: find it the slow way.
        record, stats = self._find_by_scan(trace_id)
        return record, scanned + stats.records, bytes_read + stats.bytes_read

    def _current_index(self) -> tuple[OffsetIndex | None, int, int]:
        """The index, built or extended to the end of the file; (index, records, bytes) scanned."""
        with self._index_lock:
            try:
                on_disk = os.stat(self.path)
            except FileNotFoundError:
                return None, 0, 0
            file_id = (on_disk.st_dev, on_disk.st_ino)
            with self._state_lock:
                index = self._index
                generation = self._index_generation
            if index is None or index.file_id != file_id or on_disk.st_size < index.indexed_through:
                index = OffsetIndex(file_id)
            elif on_disk.st_size == index.indexed_through:
                return index, 0, 0
            with self._state_lock:
                start, lines_before = index.indexed_through, index.lines_through
            scan = self._scan(start_offset=start, first_line_number=lines_before + 1, with_offsets=True, field="trace_id")
            pending: list[tuple[int, int]] = []
            for offset, trace_id in scan.records():
                if type(trace_id) is str:
                    pending.append((index_key(trace_id), offset))
                    if len(pending) >= 4096:
                        with self._state_lock:
                            index.put_many(pending)
                        pending.clear()
            stats = scan.stats
            with self._state_lock:
                index.put_many(pending)
                # Our own appends may have been noted meanwhile; this pass read them too.
                index.indexed_through = max(index.indexed_through, stats.end_offset)
                index.lines_through = lines_before + stats.lines_read
                if self._index_generation == generation:
                    self._index = index
            self._learn_count(start, stats.end_offset, stats.records)
            return index, stats.records, stats.bytes_read

    def _read_record_at(self, offset: int) -> tuple[dict[str, Any] | None, int]:
        """The record of the line starting at ``offset`` (None if not a JSON object), bytes read."""
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            pieces: list[bytes] = []
            position, size = offset, 4096
            while True:
                data = os.pread(fd, size, position)
                if not data:
                    return None, sum(map(len, pieces))
                end = data.find(b"\n")
                if end >= 0:
                    pieces.append(data[:end])
                    break
                pieces.append(data)
                position += len(data)
                size = min(size * 2, DEFAULT_CHUNK_BYTES)
        finally:
            os.close(fd)
        line = b"".join(pieces)
        record = decode_line(line)
        return (record if type(record) is dict else None), len(line) + 1

    def _find_by_scan(self, trace_id: str) -> tuple[dict[str, Any] | None, ScanStats]:
        scan = self._scan()
        found = None
        for record in scan.records():
            if record.get("trace_id") == trace_id:
                found = record
        return found, scan.stats

    # --- memory --------------------------------------------------------------------------------

    def _release_caches(self) -> dict[str, Any]:
        """Drop the offset index (rebuilt on the next lookup); what was released."""
        self._after_fork()
        with self._state_lock:
            index, self._index = self._index, None
            self._index_generation += 1
        return {
            "index_entries_released": index.entries if index is not None else 0,
            "index_memory_released_mb": index.nbytes / _MB if index is not None else 0.0,
        }

    def optimize_memory_usage(self) -> dict[str, Any]:
        """Drop the index, collect garbage and trim the heap; the RSS freed and what was released.

        Keys: ``memory_freed_mb``, ``rss_before_mb``, ``rss_after_mb``,
        ``index_entries_released``, ``index_memory_released_mb``, ``gc_collected_objects``,
        ``heap_trimmed``.
        """
        with memory_context(names.OPERATION_TRACE_STORE_OPTIMIZE, attributes=self._span_attributes):
            released = release_memory(self._release_caches)
        return {
            "memory_freed_mb": released.freed_bytes / _MB,
            "rss_before_mb": released.rss_before_bytes / _MB,
            "rss_after_mb": released.rss_after_bytes / _MB,
            **released.value,
            "gc_collected_objects": released.collected_objects,
            "heap_trimmed": released.trimmed,
        }


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view) :]


def _take_existing(
    records: Iterator[dict[str, Any]], stats: ScanStats, max_items: int, predicate: Callable[[dict[str, Any]], object] | None
) -> tuple[list[dict[str, Any]], bool]:
    """One hop of a query: ``take`` with the store's byte budget; a missing file is an empty store."""
    try:
        return take(records, stats, max_items, QUERY_HOP_BYTES, predicate)
    except FileNotFoundError:
        return [], True


class _ChunkFiller:
    """The hops of ``stream_traces_filtered``: records filtered in C into chunks, the unfinished
    chunk carried to the next hop.

    Per record only the parse and the filter run (``list.extend(filter(...))`` over runs of
    :data:`FILL_RUN_RECORDS` records). A hop stops between runs once it has read ``min_bytes``
    and has a whole chunk (so it holds at most that much of traces beyond its last chunk), or
    once it has read ``max_bytes``. A selective filter thus takes one hop a chunk, handed over as
    soon as it is whole, rather than a hop every ``min_bytes``: fewer thread hand-offs, and fewer
    traces kept alive while the next chunk is read.
    """

    __slots__ = ("chunk_size", "kept", "predicate")

    def __init__(self, predicate: Callable[[dict[str, Any]], object] | None, chunk_size: int) -> None:
        self.predicate = predicate
        self.chunk_size = chunk_size
        self.kept: list[dict[str, Any]] = []

    def fill(
        self, records: Iterator[dict[str, Any]], scan: JSONLScan, min_bytes: int, max_bytes: int
    ) -> tuple[list[list[dict[str, Any]]], bool]:
        """(the chunks completed in this hop, whether the pass is exhausted); the last chunk of
        a pass may be short."""
        kept, predicate, stats, size = self.kept, self.predicate, scan.stats, self.chunk_size
        enough, byte_limit = stats.end_offset + min_bytes, stats.end_offset + max_bytes
        try:
            while not scan.done:
                run = islice(records, FILL_RUN_RECORDS)
                kept.extend(run if predicate is None else filter(predicate, run))
                read_to = stats.end_offset
                if read_to >= byte_limit or (read_to >= enough and len(kept) >= size):
                    break
        except FileNotFoundError:
            scan.done = True  # no file yet: an empty store
        exhausted = scan.done
        whole = len(kept) if exhausted else len(kept) - len(kept) % size
        chunks = [kept[start : start + size] for start in range(0, whole, size)]
        self.kept = kept[whole:] if whole else kept
        return chunks, exhausted
