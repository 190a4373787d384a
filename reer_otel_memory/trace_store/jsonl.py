"""Constant-memory JSONL reading: one record at a time, whatever the file size.

:class:`StreamingJSONLReader` is the public face of the per-line pass in :mod:`.scan` that the
trace store reads with too: ``for`` reads in the calling thread, ``async for`` in a worker thread
in bounded hops, so neither holds more than a line (or a batch) at once. Records equal
``json.loads`` per line; malformed lines raise or are skipped and counted. The users' manual is
docs/trace-store.md.
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
