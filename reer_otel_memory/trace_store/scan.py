"""The chunked JSONL reading core shared by :class:`~reer_otel_memory.trace_store.jsonl.StreamingJSONLReader`
and :class:`~reer_otel_memory.trace_store.REERTraceStore`.

One pass (:class:`JSONLScan`) reads a file in large binary chunks from a byte offset, cuts each
chunk at its last newline (the rest is carried into the next chunk) and decodes each line with
msgspec straight out of the chunk (a ``memoryview`` slice: no per-line copy). A value must end
at its line's newline, so a line holding two values, or a value spread over two lines, is
malformed. A line msgspec refuses goes to ``json.loads``, which decides: results equal a
``json.loads`` per line, NaN, Infinity, integers beyond 64 bits and lone surrogates included
(msgspec refuses the first, second and last), at 2.2x its speed on realistic traces
(``python -m benchmarks jsonl``; msgspec alone parses them at 2.5x, orjson at 2.1x). Passes
that need one field of each record (``field=``: the store's scores and ids) decode only that
field; the rest of the line is validated, not built.

Memory is constant in the file size: one chunk of bytes, its decoded text, and the record being
handed out (a line longer than a chunk is held whole, as it must be). Malformed and blank lines
are skipped and counted, the first :data:`MAX_REPORTED_MALFORMED` malformed line numbers kept.

A last line without its newline is a *torn tail*: a writer was killed mid-record, or is still
writing it. It is not returned (unless ``parse_unterminated_tail`` asks for a valid one to be)
and is reported in :attr:`ScanStats.torn_tail_offset` / ``torn_tail_bytes``.

Costs, per record of realistic traces (1.5 KB): about 1 us reading, finding the line and
handing the record out, the rest parsing and building the Python objects (7.6 us, against
19 us for ``json.loads`` per line). Reads are handed on whole, never copied, and lines are
counted as they are parsed: copying each read and counting its newlines cost 2 us a record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Generator, Iterator
from typing import Any

import msgspec

from ..errors import MalformedLineError

logger = logging.getLogger(__name__)

#: Bytes read per system call by default: large enough that per-chunk costs vanish.
DEFAULT_CHUNK_BYTES = 1 << 20
#: Malformed line numbers kept per pass; the count is always exact.
MAX_REPORTED_MALFORMED = 100
#: A longer line is malformed: a file without newlines must not be read into memory whole.
DEFAULT_MAX_LINE_BYTES = 64 << 20
#: Characters of a malformed line quoted in errors.
SNIPPET_CHARS = 60
#: Line numbers named in the warning a skipping pass logs.
LOGGED_LINE_NUMBERS = 5
_BOM = b"\xef\xbb\xbf"


def snippet(line: bytes | str) -> str:
    """The start of a malformed line, for error messages."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    return text[:SNIPPET_CHARS] + ("..." if len(text) > SNIPPET_CHARS else "")

_SKIP = object()  # a blank line
_BAD = object()  # a malformed line
_REFUSED = object()  # a line the fast decoder refused: json.loads decides
_FAST_ERRORS = (msgspec.MsgspecError, RecursionError, UnicodeDecodeError)  # msgspec before 0.23 raises UnicodeDecodeError on invalid UTF-8
_decode_any = msgspec.json.Decoder().decode
_projections: dict[str, Callable[[Any], Any]] = {}


def decode_line(line: bytes) -> Any:
    """One line's value as ``json.loads`` gives it (msgspec first), or None if it is not JSON."""
    try:
        return _decode_any(line)
    except _FAST_ERRORS:
        pass
    if line.startswith(_BOM):
        return None
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None


def _refuse(line: Any) -> Any:
    raise msgspec.DecodeError("not valid UTF-8")


def _projection(field: str) -> Callable[[Any], Any]:
    """A decoder of one field of a JSON object into ``.value`` (None when absent): the other
    fields are validated and skipped, never built (about 3x faster on long records)."""
    decode = _projections.get(field)
    if decode is None:
        struct = msgspec.defstruct("Projection", [("value", Any, None)], rename={"value": field})
        decode = _projections[field] = msgspec.json.Decoder(struct).decode
    return decode


class ScanStats:
    """What one pass read: lines, records, bytes, malformed and blank lines, torn tail."""

    __slots__ = (
        "blank_lines",
        "bytes_read",
        "end_offset",
        "lines_read",
        "malformed_line_numbers",
        "malformed_lines",
        "max_reported_malformed",
        "records",
        "start_offset",
        "torn_tail_bytes",
        "torn_tail_offset",
    )

    def __init__(self, start_offset: int = 0, max_reported_malformed: int = MAX_REPORTED_MALFORMED) -> None:
        self.start_offset = start_offset
        #: Offset just past the last complete line read from the file.
        self.end_offset = start_offset
        self.bytes_read = 0
        #: Complete lines consumed (records, blank and malformed).
        self.lines_read = 0
        self.records = 0
        self.blank_lines = 0
        self.malformed_lines = 0
        self.malformed_line_numbers: list[int] = []
        #: Offset and length of an unterminated last line that was not returned, else None / 0.
        self.torn_tail_offset: int | None = None
        self.torn_tail_bytes = 0
        self.max_reported_malformed = max_reported_malformed

    def _malformed(self, line_number: int) -> None:
        self.malformed_lines += 1
        if len(self.malformed_line_numbers) < self.max_reported_malformed:
            self.malformed_line_numbers.append(line_number)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__ if name != "max_reported_malformed"}

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in self.as_dict().items())
        return f"ScanStats({fields})"


class JSONLScan:
    """One constant-memory pass over a JSONL file; iterate :meth:`records` once.

    ``start_offset`` must be the start of a line; ``first_line_number`` is that line's number
    (only used to report malformed lines). ``objects_only`` counts a valid line that is not a
    JSON object as malformed. ``with_offsets`` makes :meth:`records` yield ``(offset, value)``
    with each line's byte offset. ``strict`` raises :class:`MalformedLineError` at the first
    malformed line instead of skipping it; otherwise a pass that skipped lines logs one
    warning with their count and first line numbers. A line longer than ``max_line_bytes`` is
    malformed (and never held whole). A UTF-8 byte order mark at the start of the file is
    skipped. A missing file raises ``FileNotFoundError`` on iteration. ``field`` makes
    :meth:`records` yield that field of each record (None where absent; a line that is not a
    JSON object is malformed) instead of the record.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        start_offset: int = 0,
        first_line_number: int = 1,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        objects_only: bool = False,
        with_offsets: bool = False,
        parse_unterminated_tail: bool = False,
        strict: bool = False,
        max_reported_malformed: int = MAX_REPORTED_MALFORMED,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        field: str | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.field = field
        self._decode = _decode_any if field is None else _projection(field)
        self.max_line_bytes = max_line_bytes
        self._next_line = first_line_number
        self.chunk_bytes = chunk_bytes
        self.first_line_number = first_line_number
        self.objects_only = objects_only
        self.with_offsets = with_offsets
        self.parse_unterminated_tail = parse_unterminated_tail
        self.strict = strict
        self.stats = ScanStats(start_offset, max_reported_malformed)

    # --- reading -------------------------------------------------------------------------------

    def _blocks(self) -> Iterator[tuple[int, bytes, int]]:
        """(offset, data, end): ``data[:end]`` is a run of complete lines (the bytes after
        ``end`` are the start of the next line, already carried over); sets the torn tail at EOF.

        The whole read is handed out rather than a copy of its complete lines: copying each
        read cost as much as reading it. ``self._next_line`` is the number of the first line
        of each block when it is yielded; the consumer of a block advances it.
        """
        stats = self.stats
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            offset = stats.start_offset
            if offset == 0 and os.pread(fd, len(_BOM), 0) == _BOM:
                # Editors on Windows write one; it is not part of the first record.
                offset = stats.end_offset = len(_BOM)
                stats.bytes_read += len(_BOM)
            if offset:
                os.lseek(fd, offset, os.SEEK_SET)
            if hasattr(os, "posix_fadvise"):
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                except OSError:
                    pass
            limit = self.max_line_bytes
            # A line within one read is then never longer than the limit: only lines spanning
            # reads need checking.
            read_bytes = min(self.chunk_bytes, limit + 1)
            pending: list[bytes] = []  # an unfinished line, in pieces: joining once avoids quadratic copies
            pending_bytes = 0
            dropping = False  # inside a line over the limit, read but not kept
            while True:
                data = os.read(fd, read_bytes)
                if not data:
                    break
                stats.bytes_read += len(data)
                if pending or dropping:
                    nl = data.find(b"\n")
                    line_bytes = pending_bytes + (len(data) if nl < 0 else nl)
                    if not dropping and line_bytes > limit:
                        self._too_long(offset, pending)
                        pending.clear()
                        dropping = True
                    if dropping:
                        pending_bytes = line_bytes
                        if nl < 0:
                            continue
                        offset = stats.end_offset = offset + line_bytes + 1
                        pending_bytes, dropping = 0, False
                        self._next_line += 1
                        stats.lines_read += 1
                        data = data[nl + 1 :]
                        if not data:
                            continue
                cut = data.rfind(b"\n") + 1
                if not cut:
                    pending.append(data)
                    pending_bytes += len(data)
                    if pending_bytes > limit:
                        self._too_long(offset, pending)
                        pending.clear()
                        dropping = True
                    continue
                if pending:
                    pending.append(data[:cut])
                    block = b"".join(pending)
                    end = len(block)
                    pending.clear()
                    pending_bytes = 0
                else:
                    block, end = data, cut
                stats.end_offset = offset + end
                yield offset, block, end
                offset += end
                del block
                if cut < len(data):
                    pending.append(data[cut:])
                    pending_bytes = len(data) - cut
            if dropping:
                stats.torn_tail_offset, stats.torn_tail_bytes = offset, pending_bytes
            elif pending:
                yield from self._tail(offset, b"".join(pending))
        finally:
            os.close(fd)

    def _too_long(self, offset: int, pieces: list[bytes]) -> None:
        """The line at ``offset`` is over ``max_line_bytes``: raise if strict, else count it as malformed."""
        if self.strict:
            start = b"".join(pieces)[: SNIPPET_CHARS * 4]
            raise MalformedLineError(
                self.path, self._next_line, offset, snippet(start), f"is longer than max_line_bytes={self.max_line_bytes}"
            )
        self.stats._malformed(self._next_line)

    def _tail(self, offset: int, tail: bytes) -> Iterator[tuple[int, bytes, int]]:
        stats = self.stats
        if self.parse_unterminated_tail:
            value = self._parse_line(tail)
            if value is not _SKIP and value is not _BAD:
                stats.end_offset = offset + len(tail)
                yield offset, tail + b"\n", len(tail) + 1
                return
        stats.torn_tail_offset = offset
        stats.torn_tail_bytes = len(tail)

    # --- parsing -------------------------------------------------------------------------------

    def _parse_line(self, line: bytes) -> Any:
        """The slow path for one line: its value, ``_SKIP`` if blank, ``_BAD`` if malformed.

        ``json.loads`` decides every line the fast decoder refuses, so NaN, Infinity, integers
        beyond 64 bits and lone surrogates read as they always did.
        """
        if not line.strip():
            return _SKIP
        if line.startswith(_BOM):
            return _BAD  # json.loads would drop it from bytes; only the file's first line may have one
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return _BAD
        if self.objects_only and type(value) is not dict:
            return _BAD
        if self.field is not None:
            return value.get(self.field) if type(value) is dict else _BAD
        return value

    def records(self) -> Generator[Any, None, None]:
        """Every record (or ``(offset, record)`` with ``with_offsets``), in file order.

        With ``field``, the value of that field of each record (None where it has none).
        """
        try:
            for offset, block, end in self._blocks():
                yield from self._records_of_block(block, end, offset, self._next_line)
        finally:
            self._log_skipped()

    def runs(self) -> Generator[Iterator[Any], None, None]:
        """The records of :meth:`records`, one iterator per read of the file; consume each
        whole before asking for the next.

        A caller that handles records in C (``list.extend(filter(...))``) then runs no Python
        code of its own per record, and can stop between reads (a byte budget per hop).
        """
        try:
            for offset, block, end in self._blocks():
                yield self._records_of_block(block, end, offset, self._next_line)
        finally:
            self._log_skipped()

    def _log_skipped(self) -> None:
        """One warning per pass that skipped malformed lines: data dropped is never dropped silently."""
        stats = self.stats
        if self.strict or not stats.malformed_lines:
            return
        shown = stats.malformed_line_numbers[:LOGGED_LINE_NUMBERS]
        more = ", ..." if stats.malformed_lines > len(shown) else ""
        logger.warning(
            "%s: skipped %d malformed line%s (line%s %s%s)",
            self.path,
            stats.malformed_lines,
            "" if stats.malformed_lines == 1 else "s",
            "" if len(shown) == 1 and not more else "s",
            ", ".join(map(str, shown)),
            more,
        )

    def _records_of_block(self, block: bytes, end: int, offset: int, first_line_number: int) -> Iterator[Any]:
        """The records of the complete lines in ``block[:end]``: msgspec per line, ``json.loads``
        for what it refuses.

        This loop is most of a pass's cost beyond parsing, so it does per line only what each
        line needs: no copy of the line, and lines counted as they go (``bytes.count`` over the
        block cost as much again).
        """
        stats = self.stats
        decode = self._decode
        find = block.find
        view = memoryview(block)  # slices of it are not copies
        projected = self.field is not None
        objects_only = self.objects_only and not projected
        with_offsets = self.with_offsets
        if projected and not block.isascii():
            # Decoding into a projection skips the other fields without checking their UTF-8:
            # check it here, so a pass counts exactly the lines a full read returns.
            try:
                str(view[:end], "utf-8")
            except UnicodeDecodeError:
                decode = _refuse
        pos = 0
        lines = 0  # lines consumed, the one being handed out included
        skipped = 0
        try:
            while pos < end:
                nl = find(b"\n", pos)
                lines += 1
                try:
                    value = decode(view[pos:nl])
                except _FAST_ERRORS:
                    value = _REFUSED
                else:
                    if projected:
                        value = value.value
                    elif objects_only and type(value) is not dict:
                        value = _REFUSED
                if value is _REFUSED:
                    line = block[pos:nl]
                    value = self._parse_line(line)
                    if value is _SKIP or value is _BAD:
                        if value is _SKIP:
                            stats.blank_lines += 1
                        else:
                            line_number = first_line_number + lines - 1
                            stats._malformed(line_number)
                            if self.strict:
                                lines -= 1  # not consumed: the pass ends before it
                                raise MalformedLineError(self.path, line_number, offset + pos, snippet(line))
                        skipped += 1
                        pos = nl + 1
                        continue
                if with_offsets:
                    value = (offset + pos, value)
                pos = nl + 1
                yield value
        finally:
            stats.lines_read += lines
            stats.records += lines - skipped
            self._next_line += lines


def take(
    records: Iterator[Any],
    stats: ScanStats,
    max_items: int,
    max_bytes: int,
    predicate: Callable[[Any], object] | None = None,
) -> tuple[list[Any], bool]:
    """Up to ``max_items`` records passing ``predicate``, stopping once ``max_bytes`` more are read.

    Returns the records and whether the pass is exhausted. One call is one hop of an async
    reader to a worker thread: the byte budget bounds how long a hop runs when few records match.
    """
    found: list[Any] = []
    if max_items <= 0:
        return found, False
    byte_limit = stats.bytes_read + max_bytes
    append = found.append
    for record in records:
        if predicate is None or predicate(record):
            append(record)
            if len(found) >= max_items:
                return found, False
        if stats.bytes_read >= byte_limit:
            return found, False
    return found, True


class AsyncPass:
    """Drives a pass from the event loop: each :meth:`hop` runs ``fn(records, *args)`` in a
    worker thread, so no file I/O or parsing blocks the loop. With ``by_read``, ``records`` is
    :meth:`JSONLScan.runs` (an iterator of records per read) instead of :meth:`JSONLScan.records`.

    :meth:`close` ends the pass at once unless a cancelled hop may still be running it in its
    thread; then the pass closes when that hop lets go of it.
    """

    __slots__ = ("busy", "records", "scan")

    def __init__(self, scan: JSONLScan, *, by_read: bool = False) -> None:
        self.scan = scan
        self.records: Generator[Any, None, None] = scan.runs() if by_read else scan.records()
        self.busy = False

    async def hop(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.busy = True
        try:
            result = await asyncio.to_thread(fn, self.records, *args)
        except asyncio.CancelledError:
            raise  # the worker thread may still be inside the pass
        except BaseException:
            self.busy = False
            raise
        self.busy = False
        return result

    def close(self) -> None:
        if not self.busy:
            self.records.close()
