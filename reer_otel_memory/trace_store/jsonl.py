"""Constant-memory JSONL reading: one record at a time, whatever the file size.

    from reer_otel_memory import StreamingJSONLReader

    reader = StreamingJSONLReader(file_path, chunk_size=8192)
    for record in reader:          # a malformed line raises MalformedLineError (path, line, start)
        process_record(record)

    reader = StreamingJSONLReader(file_path, skip_malformed=True)
    for record in reader:          # malformed lines skipped, counted and logged (one warning a pass)
        process_record(record)
    print(reader.stats.records, reader.stats.malformed_lines, reader.stats.malformed_line_numbers)

    async for record in StreamingJSONLReader(file_path):   # reads in a worker thread
        await process(record)

Each pass reads the file line by line through a read buffer of ``chunk_size`` bytes (default
1 MiB; any size works) and parses every line with msgspec, handing the lines it refuses to
``json.loads``: results equal ``json.loads`` per line (NaN, Infinity and integers beyond 64 bits
included). Blank lines are skipped. A malformed line raises
:class:`~reer_otel_memory.errors.MalformedLineError` naming the file, the 1-based line number,
its byte offset and the line's start; ``skip_malformed=True`` skips such lines instead, counts
them with their line numbers in :attr:`~StreamingJSONLReader.stats` and logs one warning per
pass with the count and the first line numbers. A line longer than ``max_line_bytes`` (default
64 MiB) is malformed: it raises, or is skipped without ever being held whole. A UTF-8 byte
order mark at the start is skipped.

A last line without a trailing newline is returned if it is valid JSON (hand-written files often
end that way); otherwise it is taken for a record still being written, or cut short by a killed
writer, and reported as ``stats.torn_tail_offset`` / ``torn_tail_bytes`` rather than as
malformed. ``parse_unterminated_tail=False`` never returns it, as
:class:`~reer_otel_memory.trace_store.REERTraceStore` does.

Every ``for`` or ``async for`` is a new pass from the start of the file; :attr:`stats`
describes the latest one.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

from ..errors import InvalidArgumentError
from .records import checked_count
from .scan import DEFAULT_CHUNK_BYTES, DEFAULT_MAX_LINE_BYTES, MAX_REPORTED_MALFORMED, AsyncPass, JSONLScan, ScanStats, take

#: Records handed from the worker thread to the event loop at a time by ``async for``.
ASYNC_BATCH_RECORDS = 1024
#: Bytes one hop to the worker thread reads at most, so a cancelled ``async for`` stops soon.
ASYNC_HOP_BYTES = 8 << 20

__all__ = ["ScanStats", "StreamingJSONLReader"]


class StreamingJSONLReader:
    """Iterate the records of a JSONL file in constant memory (``for`` and ``async for``)."""

    def __init__(
        self,
        file_path: str | os.PathLike[str],
        chunk_size: int = DEFAULT_CHUNK_BYTES,
        *,
        skip_malformed: bool = False,
        parse_unterminated_tail: bool = True,
        max_reported_malformed: int = MAX_REPORTED_MALFORMED,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        try:
            self.file_path = os.fspath(file_path)
        except TypeError:
            raise InvalidArgumentError(f"StreamingJSONLReader(file_path={file_path!r}): expected a path (str or os.PathLike)") from None
        where = "StreamingJSONLReader"
        checked_count(chunk_size, 1, where=where, name="chunk_size", expected="expected a positive number of bytes")
        checked_count(max_reported_malformed, 0, where=where, name="max_reported_malformed", expected="expected a non-negative integer")
        checked_count(max_line_bytes, 1, where=where, name="max_line_bytes", expected="expected a positive number of bytes")
        if not isinstance(skip_malformed, bool):
            raise InvalidArgumentError(f"StreamingJSONLReader(skip_malformed={skip_malformed!r}): expected True or False")
        self.chunk_size = chunk_size
        self.max_line_bytes = max_line_bytes
        self.skip_malformed = skip_malformed
        self.parse_unterminated_tail = parse_unterminated_tail
        self.max_reported_malformed = max_reported_malformed
        self._scan: JSONLScan | None = None

    @property
    def stats(self) -> ScanStats:
        """Lines, records, bytes, blank and malformed lines, torn tail of the latest pass."""
        if self._scan is None:
            return ScanStats(0, self.max_reported_malformed)
        return self._scan.stats

    def _new_scan(self) -> JSONLScan:
        self._scan = JSONLScan(
            self.file_path,
            chunk_bytes=self.chunk_size,
            parse_unterminated_tail=self.parse_unterminated_tail,
            strict=not self.skip_malformed,
            max_reported_malformed=self.max_reported_malformed,
            max_line_bytes=self.max_line_bytes,
        )
        return self._scan

    def __iter__(self) -> Iterator[Any]:
        return self._new_scan().records()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._aiter(self._new_scan())

    async def _aiter(self, scan: JSONLScan) -> AsyncIterator[Any]:
        run = AsyncPass(scan)
        try:
            exhausted = False
            while not exhausted:
                batch, exhausted = await run.hop(take, scan.stats, ASYNC_BATCH_RECORDS, ASYNC_HOP_BYTES)
                for record in batch:
                    yield record
                del batch
        finally:
            run.close()

    def __repr__(self) -> str:
        return f"StreamingJSONLReader({self.file_path!r}, chunk_size={self.chunk_size})"
