"""The per-line JSONL pass shared by :class:`~reer_otel_memory.trace_store.jsonl.StreamingJSONLReader`
and :class:`~reer_otel_memory.trace_store.REERTraceStore`.

A pass reads a binary file line by line and decodes each line with msgspec; ``json.loads``
decides the lines msgspec refuses, so the records equal ``json.loads`` per line (NaN, Infinity,
integers beyond 64 bits, lone surrogates). Blank and malformed lines raise or are skipped and
counted; a last line without its newline (a *torn tail*: a writer killed, or still writing) is
reported rather than returned. Memory holds a line at a time (64 KiB of lines in a pass that
decodes one field), and never more than ``max_line_bytes`` of one line.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
from collections.abc import Callable, Generator, Iterator
from functools import partial
from typing import Any

import msgspec

from ..errors import MalformedLineError

logger = logging.getLogger(__name__)

#: Read buffer of a pass by default.
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
_SKIP = object()  # a blank or malformed line, counted
_REFUSED = object()  # a line msgspec refused: json.loads decides
_FAST_ERRORS = (msgspec.MsgspecError, RecursionError, UnicodeDecodeError)  # msgspec before 0.23 raises UnicodeDecodeError on invalid UTF-8
_decode_any = msgspec.json.Decoder().decode
_projections: dict[str, Callable[[Any], Any]] = {}  # one decoder per projected field name: derived from the name alone


def snippet(line: bytes | str) -> str:
    """The start of a malformed line, for error messages."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    return text[:SNIPPET_CHARS] + ("..." if len(text) > SNIPPET_CHARS else "")


def _loads(line: bytes) -> Any:
    """``json.loads`` of one line, or ``_REFUSED`` if it is not JSON (a BOM inside the file included)."""
    if line.startswith(_BOM):
        return _REFUSED  # json.loads would drop it from bytes; only the file's first line may have one
    try:
        return json.loads(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return _REFUSED


def decode_line(line: bytes) -> Any:
    """One line's value as ``json.loads`` gives it (msgspec first), or None if it is not JSON."""
    try:
        return _decode_any(line)
    except _FAST_ERRORS:
        pass
    value = _loads(line)
    return None if value is _REFUSED else value


def _projection(field: str) -> Callable[[bytes], Any]:
    """A decoder of one field of a JSON object into ``.value`` (None when absent): the other
    fields are validated and skipped, never built (their UTF-8 is not checked)."""
    decode = _projections.get(field)
    if decode is None:
        struct = msgspec.defstruct("Projection", [("value", Any, None)], rename={"value": field})
        decode = _projections[field] = msgspec.json.Decoder(struct).decode
    return decode


def _utf8_checked(readline: Callable[[], bytes], batch_bytes: int = 1 << 16) -> Iterator[bytes]:
    """The lines ``readline`` gives, each one that is not valid UTF-8 replaced by as many bytes
    that no JSON parser accepts, so that a projection (which does not check the UTF-8 of the
    fields it skips) refuses the lines a full read refuses. Checked a batch at a time: one
    check per line would cost more than the projection."""
    while True:
        batch: list[bytes] = []
        size = 0
        while size < batch_bytes:
            line = readline()
            if not line:
                break
            batch.append(line)
            size += len(line)
            if line[-1] != 10:
                break
        if not batch:
            return
        joined = b"".join(batch)
        if not joined.isascii():
            try:
                str(joined, "utf-8")
            except UnicodeDecodeError:
                batch = [line if _is_utf8(line) else b"\xff" * (len(line) - 1) + line[-1:] for line in batch]
        del joined
        yield from batch


def _is_utf8(line: bytes) -> bool:
    try:
        str(line, "utf-8")
    except UnicodeDecodeError:
        return False
    return True


class ScanStats:
    """What one pass read: lines, records, bytes, malformed and blank lines, torn tail."""

    __slots__ = (
        "blank_lines",
        "end_offset",
        "lines_read",
        "malformed_line_numbers",
        "malformed_lines",
        "max_reported_malformed",
        "skipped_lines",
        "start_offset",
        "torn_tail_bytes",
        "torn_tail_offset",
    )

    def __init__(self, start_offset: int = 0, max_reported_malformed: int = MAX_REPORTED_MALFORMED) -> None:
        self.start_offset = start_offset
        #: Offset just past the last complete line read from the file.
        self.end_offset = start_offset
        #: Complete lines consumed (records, blank and malformed).
        self.lines_read = 0
        self.skipped_lines = 0
        self.blank_lines = 0
        self.malformed_lines = 0
        self.malformed_line_numbers: list[int] = []
        #: Offset and length of an unterminated last line that was not returned, else None / 0.
        self.torn_tail_offset: int | None = None
        self.torn_tail_bytes = 0
        self.max_reported_malformed = max_reported_malformed

    @property
    def records(self) -> int:
        """Records handed out (complete lines that were neither blank nor malformed)."""
        return self.lines_read - self.skipped_lines

    @property
    def bytes_read(self) -> int:
        """Bytes of the file consumed, a byte order mark and a torn tail included."""
        return self.end_offset - self.start_offset + self.torn_tail_bytes

    def _malformed(self, line_number: int) -> None:
        self.malformed_lines += 1
        if len(self.malformed_line_numbers) < self.max_reported_malformed:
            self.malformed_line_numbers.append(line_number)

    def __repr__(self) -> str:
        names = ("start_offset", "end_offset", "bytes_read", "lines_read", "records", "blank_lines", "malformed_lines",
                 "malformed_line_numbers", "torn_tail_offset", "torn_tail_bytes")  # fmt: skip
        return "ScanStats(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in names) + ")"


class JSONLScan:
    """One constant-memory pass over a JSONL file; iterate :meth:`records` once.

    ``start_offset`` must be the start of a line; ``first_line_number`` is that line's number
    (only used to report malformed lines). ``objects_only`` counts a valid line that is not a
    JSON object as malformed. ``with_offsets`` makes :meth:`records` yield ``(offset, value)``.
    ``strict`` raises :class:`MalformedLineError` at the first malformed line instead of
    skipping it; a pass that skipped lines logs one warning with their count and first line
    numbers. A line longer than ``max_line_bytes`` is malformed (and never held whole). A UTF-8
    byte order mark at the start of the file is skipped. A missing file raises
    ``FileNotFoundError`` on iteration. ``field`` makes :meth:`records` yield that field of
    each record (None where absent; a line that is not a JSON object is malformed).
    ``parse_unterminated_tail`` returns a valid last line that lacks its newline.
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
        self.max_line_bytes = max_line_bytes
        self.chunk_bytes = chunk_bytes
        self.first_line_number = first_line_number
        self.objects_only = objects_only and field is None
        self.with_offsets = with_offsets
        self.parse_unterminated_tail = parse_unterminated_tail
        self.strict = strict
        self.stats = ScanStats(start_offset, max_reported_malformed)
        #: True once the pass has read to its end.
        self.done = False

    def records(self) -> Generator[Any, None, None]:
        """Every record (or ``(offset, record)`` with ``with_offsets``), in file order.

        With ``field``, the value of that field of each record (None where it has none). The
        stats are current whenever a record is handed out.
        """
        stats = self.stats
        try:
            with io.FileIO(self.path) as raw, io.BufferedReader(raw, self.chunk_bytes) as file:
                offset = stats.start_offset
                if offset:
                    file.seek(offset)
                elif file.read(len(_BOM)) == _BOM:
                    offset = stats.end_offset = len(_BOM)  # an editor's, not part of the first record
                else:
                    file.seek(0)
                decode = _decode_any if self.field is None else _projection(self.field)
                projected, objects_only, with_offsets = self.field is not None, self.objects_only, self.with_offsets
                readline = partial(file.readline, self.max_line_bytes + 1)
                source = _utf8_checked(readline) if projected else iter(readline, b"")
                for lines, line in enumerate(source, 1):
                    start = offset
                    try:
                        value = decode(line)
                    except _FAST_ERRORS:
                        value = _REFUSED
                    if value is _REFUSED or line[-1] != 10 or (objects_only and type(value) is not dict):
                        value, offset, last = self._slow_line(file, line, value, offset, lines)
                        if value is not _SKIP:
                            yield (start, value) if with_offsets else value
                        if last:
                            break
                        continue
                    offset += len(line)
                    stats.end_offset, stats.lines_read = offset, lines
                    if projected:
                        value = value.value
                    yield (start, value) if with_offsets else value
            self.done = True
        finally:
            self._log_skipped()

    def _slow_line(self, file: io.BufferedReader[io.FileIO], line: bytes, value: Any, offset: int, lines: int) -> tuple[Any, int, bool]:
        """A line the fast path did not hand out, counted in the stats: (its value or ``_SKIP``,
        the offset after it, whether the pass ends with it)."""
        stats = self.stats
        number = self.first_line_number + lines - 1
        if line[-1] != 10:
            if len(line) > self.max_line_bytes:
                return self._too_long(file, line, offset, lines)
            if self.parse_unterminated_tail and line.strip():
                value = self._value_of(line, value)
                if value is not _REFUSED:
                    stats.end_offset, stats.lines_read = offset + len(line), lines
                    return value, stats.end_offset, True
            stats.torn_tail_offset, stats.torn_tail_bytes = offset, len(line)
            return _SKIP, offset, True
        if not line.strip():
            stats.blank_lines += 1
            value = _SKIP
        else:
            value = self._value_of(line, value)
            if value is _REFUSED:
                stats._malformed(number)
                if self.strict:
                    raise MalformedLineError(self.path, number, offset, snippet(line[:-1]))
                value = _SKIP
        if value is _SKIP:
            stats.skipped_lines += 1
        stats.end_offset, stats.lines_read = offset + len(line), lines
        return value, stats.end_offset, False

    def _value_of(self, line: bytes, value: Any) -> Any:
        """The line's value as a full read gives it (its field with ``field``), or ``_REFUSED``."""
        projected = self.field is not None
        if value is _REFUSED:
            value = _loads(line)
            if value is _REFUSED or ((projected or self.objects_only) and type(value) is not dict):
                return _REFUSED
            return value.get(self.field) if projected else value
        if self.objects_only and type(value) is not dict:
            return _REFUSED
        return value.value if projected else value

    def _too_long(self, file: io.BufferedReader[io.FileIO], line: bytes, offset: int, lines: int) -> tuple[Any, int, bool]:
        """A line over ``max_line_bytes``: raise if strict, else count it malformed and read past it."""
        stats = self.stats
        number = self.first_line_number + lines - 1
        if self.strict:
            raise MalformedLineError(
                self.path, number, offset, snippet(line[: SNIPPET_CHARS * 4]), f"is longer than max_line_bytes={self.max_line_bytes}"
            )
        stats._malformed(number)
        length = len(line)
        while line and line[-1] != 10:
            line = file.readline(self.max_line_bytes + 1)
            length += len(line)
        if not line:  # the file ended inside it: a torn tail as well
            stats.torn_tail_offset, stats.torn_tail_bytes = offset, length
            return _SKIP, offset, True
        stats.skipped_lines += 1
        stats.end_offset, stats.lines_read = offset + length, lines
        return _SKIP, stats.end_offset, False

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
    byte_limit = stats.end_offset + max_bytes
    append = found.append
    for record in records:
        if predicate is None or predicate(record):
            append(record)
            if len(found) >= max_items:
                return found, False
        if stats.end_offset >= byte_limit:
            return found, False
    return found, True


class AsyncPass:
    """Drives a pass from the event loop: each :meth:`hop` runs ``fn(records, *args)`` in a
    worker thread, so no file I/O or parsing blocks the loop.

    :meth:`close` ends the pass at once unless a cancelled hop may still be running it in its
    thread; then the pass closes when that hop lets go of it.
    """

    __slots__ = ("busy", "records", "scan")

    def __init__(self, scan: JSONLScan) -> None:
        self.scan = scan
        self.records: Generator[Any, None, None] = scan.records()
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
