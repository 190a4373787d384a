"""The flight recorder: the last minutes before the process died, in a file that survives SIGKILL.

After an OOM kill nothing the process held in memory is left to say what it was doing. With
``REER_MEMORY_FLIGHT_RECORDER=PATH`` the process keeps a small fixed-size file (64 KiB) mapped
into memory and writes into it as it goes, with no system call per record (``struct.pack_into``
on a shared ``mmap``): the kernel owns the mapped pages, so whatever was written is in the file
even when the process is killed mid-record. It holds:

* **samples** -- a ring of the last 1024 (time, RSS, working set, device memory, level);
* **running operations** -- a table of 128 slots: name, thread, start time, RSS at start;
* **level changes** -- a ring of the last 64 (time, what was compared, bytes, old and new level);
* **a header** -- pid, process start time, command line, and a clean-shutdown flag set on exit.

``reer-otel-memory postmortem PATH`` prints the last seconds before the death as a table and a
terminal chart and names the operations that were running and how much each had grown. A
process opening the same path first reports its predecessor's death once (a log line, and a
short root span ``reer.memory.predecessor`` carrying the event ``reer.memory.predecessor.died``
with the predecessor's pid, last RSS and working set, and the operations that were running),
then reuses the file. The process's recorder (:func:`process_flight_recorder`) opens on first
use: the monitor's first sample, the instrumentor, or the first profiled call, whichever comes first.

Cost (``benchmarks/bench_flight_recorder.py``): ``operation_started`` + ``operation_finished``
together about 0.9 us (a fifth of a profiled no-op without an SDK), ``record_sample`` about 0.6 us. A forked child does not write into its
parent's file (its writes go to a private buffer); it may open a path of its own.

    >>> recorder = FlightRecorder.open("/tmp/service.flight")  # doctest: +SKIP
    >>> slot = recorder.operation_started("predict", rss_start=512 << 20)  # doctest: +SKIP
    >>> recorder.operation_finished(slot)  # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import itertools
import logging
import mmap
import os
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

import psutil
from opentelemetry.context import Context
from opentelemetry.util.types import AttributeValue

from .. import _names as names
from .. import _telemetry
from .._runtime import RUNTIME
from ..errors import ConfigurationError
from ..levels import MemoryLevel

logger = logging.getLogger(__name__)

MB = 1024 * 1024
MAGIC = b"REERFR01"
FILE_BYTES = 64 * 1024
SAMPLE_CAPACITY = 1024
SLOT_CAPACITY = 128
LEVEL_CAPACITY = 64
_NAME_BYTES = 56
_LEVEL_NAME_BYTES = 8
_ABSENT = -1
_NO_LEVEL = 255
_CLEAN_SHUTDOWN = 1

# magic, version, pid, flags, capacities (samples, slots, levels), start time, process create time, command.
_HEADER = struct.Struct("<8sIIIIIIdd200s")
_HEADER_BYTES = 512
# seq (0: empty), time, rss, working set, device used, level rank.
_SAMPLE = struct.Struct("<QdqqqB7x")
# generation (0: free), thread id, start time, rss at start, device bytes at start, name.
_SLOT = struct.Struct(f"<QQdqq{_NAME_BYTES}s")
# seq (0: empty), time, bytes compared, what was compared, old level, new level.
_LEVEL = struct.Struct(f"<Qdq{_LEVEL_NAME_BYTES}s{_LEVEL_NAME_BYTES}s{_LEVEL_NAME_BYTES}s")
_GENERATION = struct.Struct("<Q")
_FLAGS_OFFSET = struct.calcsize("<8sII")  # after magic, version and pid
_SAMPLES_OFFSET = _HEADER_BYTES
_SLOTS_OFFSET = _SAMPLES_OFFSET + SAMPLE_CAPACITY * _SAMPLE.size
_LEVELS_OFFSET = _SLOTS_OFFSET + SLOT_CAPACITY * _SLOT.size
assert _LEVELS_OFFSET + LEVEL_CAPACITY * _LEVEL.size <= FILE_BYTES

_RANKS = {level: level.rank for level in MemoryLevel} | {level.value: level.rank for level in MemoryLevel}
_BY_RANK = {level.rank: level.value for level in MemoryLevel}


# --- what a file holds ------------------------------------------------------------------------


@dataclass(frozen=True)
class FlightSample:
    """One sample: wall time (s since the epoch), bytes (None where not recorded), level."""

    time_s: float
    rss_bytes: int
    working_set_bytes: int | None
    device_used_bytes: int | None
    level: str | None


@dataclass(frozen=True)
class RunningOperation:
    """An operation that had started and not finished when the file was last written."""

    name: str
    thread_id: int
    started_s: float
    rss_start_bytes: int
    device_start_bytes: int | None
    #: RSS of the latest sample taken after it started, minus its start RSS; None without one.
    growth_bytes: int | None


@dataclass(frozen=True)
class LevelChange:
    time_s: float
    source: str
    value_bytes: int
    old: str
    new: str


@dataclass(frozen=True)
class FlightRecord:
    """A flight recorder file as read: its process, and what it recorded, oldest first."""

    path: str
    pid: int
    started_s: float
    create_time_s: float
    clean_shutdown: bool
    command: str
    samples: list[FlightSample] = field(default_factory=list)
    running: list[RunningOperation] = field(default_factory=list)
    level_changes: list[LevelChange] = field(default_factory=list)

    @property
    def last_sample(self) -> FlightSample | None:
        return self.samples[-1] if self.samples else None

    def summary(self) -> str:
        """One line: the process, how it ended, its last RSS and what was running."""
        how = "shut down cleanly" if self.clean_shutdown else "died without a clean shutdown"
        text = f"pid {self.pid} ({self.command or '?'}) {how}"
        last = self.last_sample
        if last is not None:
            text += f"; last sample {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(last.time_s))}: RSS {last.rss_bytes / MB:.1f} MB"
            if last.working_set_bytes is not None:
                text += f", working set {last.working_set_bytes / MB:.1f} MB"
        if self.running:
            text += "; running: " + ", ".join(_describe(operation) for operation in self.running)
        else:
            text += "; no operation running"
        return text

    def report(self) -> dict[str, object]:
        """The death as plain values, for a span event or a log record."""
        last = self.last_sample
        return {
            "pid": self.pid,
            "command": self.command,
            "started_s": self.started_s,
            "last_sample_s": last.time_s if last else None,
            "last_rss_bytes": last.rss_bytes if last else None,
            "last_working_set_bytes": last.working_set_bytes if last else None,
            "running_operations": [operation.name for operation in self.running],
            "running_growth_bytes": [operation.growth_bytes for operation in self.running],
        }


def _describe(operation: RunningOperation) -> str:
    grown = "no sample since it started" if operation.growth_bytes is None else f"{operation.growth_bytes / MB:+.1f} MB"
    return f"{operation.name} ({grown} from {operation.rss_start_bytes / MB:.1f} MB)"


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("utf-8", "replace")


def parse_flight_record(data: bytes, path: str = "") -> FlightRecord:
    """A flight recorder file's content read; :class:`ConfigurationError` if it is not one."""
    if len(data) < FILE_BYTES or data[:8] != MAGIC:
        raise ConfigurationError(f"flight recorder file {path!r}: not a flight recorder file (expected {FILE_BYTES} bytes starting with {MAGIC!r})")
    _magic, _version, pid, flags, samples_n, slots_n, levels_n, started, created, command = _HEADER.unpack_from(data, 0)
    if (samples_n, slots_n, levels_n) != (SAMPLE_CAPACITY, SLOT_CAPACITY, LEVEL_CAPACITY):
        raise ConfigurationError(f"flight recorder file {path!r}: capacities {samples_n}/{slots_n}/{levels_n} are not those of this version")
    samples = []
    for seq, time_s, rss, working_set, device, rank in sorted(
        (_SAMPLE.unpack_from(data, _SAMPLES_OFFSET + index * _SAMPLE.size) for index in range(SAMPLE_CAPACITY)), key=lambda record: record[0]
    ):
        if seq:
            samples.append(FlightSample(time_s, rss, None if working_set < 0 else working_set, None if device < 0 else device, _BY_RANK.get(rank)))
    running = []
    for index in range(SLOT_CAPACITY):
        generation, thread_id, started_s, rss_start, device_start, name = _SLOT.unpack_from(data, _SLOTS_OFFSET + index * _SLOT.size)
        if generation:
            after = [sample.rss_bytes for sample in samples if sample.time_s >= started_s]
            growth = after[-1] - rss_start if after else None
            running.append(RunningOperation(_text(name), thread_id, started_s, rss_start, None if device_start < 0 else device_start, growth))
    running.sort(key=lambda operation: operation.started_s)
    changes = []
    for seq, time_s, value, source, old, new in sorted(
        (_LEVEL.unpack_from(data, _LEVELS_OFFSET + index * _LEVEL.size) for index in range(LEVEL_CAPACITY)), key=lambda record: record[0]
    ):
        if seq:
            changes.append(LevelChange(time_s, _text(source), value, _text(old), _text(new)))
    return FlightRecord(path, pid, started, created, bool(flags & _CLEAN_SHUTDOWN), _text(command), samples, running, changes)


def read_flight_record(path: str | os.PathLike[str]) -> FlightRecord:
    """Read a flight recorder file (OSError if unreadable, ConfigurationError if not one)."""
    with open(path, "rb") as file:
        return parse_flight_record(file.read(FILE_BYTES), str(path))


# --- writing ------------------------------------------------------------------------------------


def _create_time() -> float:
    try:
        return float(psutil.Process().create_time())
    except psutil.Error:
        return 0.0


def _owner_alive(record: FlightRecord) -> bool:
    """Whether the process that wrote ``record`` still runs (same pid and start time)."""
    try:
        return bool(abs(psutil.Process(record.pid).create_time() - record.create_time_s) < 0.5)
    except psutil.Error:
        return False


class FlightRecorder:
    """Writes samples, running operations and level changes into a memory-mapped file.

    Open with :meth:`open`. Every write method is thread-safe without a lock and never raises
    once the recorder is open; after :meth:`close` they write nowhere.
    """

    def __init__(self, path: str, buffer: mmap.mmap, predecessor: FlightRecord | None) -> None:
        self.path = path
        self._mmap: mmap.mmap | None = buffer
        self._buffer: mmap.mmap | bytearray = buffer
        #: The previous process's record when it died without a clean shutdown, else None.
        self.predecessor = predecessor
        self._sample_seq = itertools.count(1)
        self._level_seq = itertools.count(1)
        self._generation = itertools.count(1)
        self._free_slots = list(range(SLOT_CAPACITY - 1, -1, -1))
        self._names: dict[str, bytes] = {}
        RUNTIME.after_fork_call(self)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> FlightRecorder:
        """Open (create or reuse) the file at ``path``; reports a predecessor's death once.

        Raises :class:`ConfigurationError` when a live process is writing the file, OSError
        when it cannot be created.
        """
        path = os.fspath(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            previous = os.pread(fd, FILE_BYTES, 0)
            predecessor = None
            if previous[:8] == MAGIC:
                try:
                    record = parse_flight_record(previous, path)
                except ConfigurationError:
                    record = None  # another version's file: start afresh
                if record is not None and not record.clean_shutdown:
                    if _owner_alive(record):
                        raise ConfigurationError(f"flight recorder file {path!r}: in use by the running process {record.pid}; give each process its own path")
                    predecessor = record
            os.ftruncate(fd, FILE_BYTES)
            buffer = mmap.mmap(fd, FILE_BYTES, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)  # the mapping keeps the file
        buffer[:] = bytes(FILE_BYTES)
        command = " ".join(sys.argv).encode("utf-8", "replace")[:200]
        _HEADER.pack_into(buffer, 0, MAGIC, 1, os.getpid(), 0, SAMPLE_CAPACITY, SLOT_CAPACITY, LEVEL_CAPACITY, time.time(), _create_time(), command)
        recorder = cls(path, buffer, predecessor)
        if predecessor is not None:
            logger.warning("flight recorder %s: the previous process died: %s", path, predecessor.summary())
        atexit.register(recorder.close)
        return recorder

    def _after_fork_in_child(self) -> None:
        # The mapping is shared with the parent: a child writing into it would corrupt the
        # parent's record. The child's writes go to a private buffer instead.
        self._buffer = bytearray(FILE_BYTES)
        self._mmap = None
        self._free_slots = list(range(SLOT_CAPACITY - 1, -1, -1))

    def close(self, clean: bool = True) -> None:
        """Stop recording; ``clean`` marks the file as a clean shutdown (no death reported)."""
        buffer, self._buffer = self._buffer, bytearray(FILE_BYTES)
        mapped, self._mmap = self._mmap, None
        if mapped is None:
            return
        if clean:
            struct.pack_into("<I", buffer, _FLAGS_OFFSET, _CLEAN_SHUTDOWN)
        try:
            mapped.close()
        except BufferError:
            pass  # a write on another thread still holds it: the mapping goes with the object

    @property
    def active(self) -> bool:
        """Whether writes reach the file (False after close and in a forked child)."""
        return self._mmap is not None

    # --- the hot path -------------------------------------------------------------------------

    def record_sample(
        self,
        rss_bytes: int,
        working_set_bytes: int | None = None,
        device_used_bytes: int | None = None,
        level: MemoryLevel | str | None = None,
    ) -> None:
        """Add a sample to the ring (about 0.6 us)."""
        seq = next(self._sample_seq)
        # One write per record, no lock: a SIGKILL stops every thread at once, so at worst the
        # record being written is cut short; the reader sorts by sequence number.
        _SAMPLE.pack_into(
            self._buffer,
            _SAMPLES_OFFSET + (seq % SAMPLE_CAPACITY) * _SAMPLE.size,
            seq,
            time.time(),
            rss_bytes,
            _ABSENT if working_set_bytes is None else working_set_bytes,
            _ABSENT if device_used_bytes is None else device_used_bytes,
            _NO_LEVEL if level is None else _RANKS.get(level, _NO_LEVEL),
        )

    def operation_started(self, name: str, rss_start: int, device_start: int | None = None) -> int:
        """Put a running operation in a free slot; returns the slot, or -1 when all are taken.

        About 0.5 us.
        """
        try:
            slot = self._free_slots.pop()  # atomic: no lock needed
        except IndexError:
            return -1
        encoded = self._names.get(name)
        if encoded is None:
            if len(self._names) > 4096:
                self._names.clear()  # bounded, whatever names the host invents
            encoded = self._names[name] = name.encode("utf-8", "replace")[:_NAME_BYTES]
        _SLOT.pack_into(
            self._buffer,
            _SLOTS_OFFSET + slot * _SLOT.size,
            next(self._generation),
            threading.get_ident(),
            time.time(),
            rss_start,
            _ABSENT if device_start is None else device_start,
            encoded,
        )
        return slot

    def operation_finished(self, slot: int) -> None:
        """Free the slot :meth:`operation_started` returned (-1 is ignored). About 0.3 us."""
        if slot >= 0:
            _GENERATION.pack_into(self._buffer, _SLOTS_OFFSET + slot * _SLOT.size, 0)
            self._free_slots.append(slot)

    def level_changed(self, old: MemoryLevel | str, new: MemoryLevel | str, value_bytes: int, source: str = "rss") -> None:
        """Record a level change of ``source`` (``rss``, ``working_set``, ``device``) at ``value_bytes``."""
        seq = next(self._level_seq)
        offset = _LEVELS_OFFSET + (seq % LEVEL_CAPACITY) * _LEVEL.size
        _LEVEL.pack_into(self._buffer, offset, seq, time.time(), value_bytes, source.encode()[:8], str(old).encode()[:8], str(new).encode()[:8])


# --- the process's recorder -----------------------------------------------------------------


class RecorderHolder:
    """The process's recorder, or None where none is configured or it could not open.

    Profiled calls read ``(RUNTIME.flight_recorder or recorder_holder()).recorder``: two attribute
    reads when no recorder is configured.
    """

    __slots__ = ("recorder",)

    def __init__(self, recorder: FlightRecorder | None) -> None:
        self.recorder = recorder


def predecessor_attributes(record: FlightRecord) -> dict[str, AttributeValue]:
    """The span event attributes describing a predecessor's death (its last RSS, what was running)."""
    attributes: dict[str, AttributeValue] = {
        names.ATTR_PREDECESSOR_PID: record.pid,
        names.ATTR_PREDECESSOR_COMMAND: record.command,
        names.ATTR_PREDECESSOR_OPERATIONS: [operation.name for operation in record.running],
        names.ATTR_PREDECESSOR_OPERATIONS_RSS_START: [operation.rss_start_bytes for operation in record.running],
    }
    last = record.last_sample
    if last is not None:
        attributes[names.ATTR_PREDECESSOR_LAST_RSS] = last.rss_bytes
        if last.working_set_bytes is not None:
            attributes[names.ATTR_PREDECESSOR_LAST_WORKING_SET] = last.working_set_bytes
    return attributes


def report_predecessor(recorder: FlightRecorder) -> None:
    """Report the predecessor's death (if any) as a short root span ``reer.memory.predecessor``
    with one event ``reer.memory.predecessor.died``, on the telemetry in force. Never raises."""
    record = recorder.predecessor
    if record is None:
        return
    try:
        span = _telemetry.current().tracer.start_span(
            names.SPAN_PREDECESSOR, context=Context(), attributes={names.ATTR_FLIGHT_RECORDER_PATH: recorder.path}
        )
        span.add_event(names.EVENT_PREDECESSOR_DIED, predecessor_attributes(record))
        span.end()
    except Exception as exc:  # the log line has already said it; the host runs on
        logger.warning("flight recorder %s: could not report the previous process's death as a span: %r", recorder.path, exc)


def _from_environment() -> RecorderHolder:
    path = os.environ.get(names.ENV_FLIGHT_RECORDER, "").strip()
    if not path:
        return RecorderHolder(None)
    try:
        recorder = FlightRecorder.open(path)
    except (OSError, ConfigurationError) as exc:
        # Under auto-instrumentation: one line, and the host runs on without a recorder.
        logger.warning("%s=%r: no flight recorder: %s", names.ENV_FLIGHT_RECORDER, path, exc)
        return RecorderHolder(None)
    report_predecessor(recorder)
    return RecorderHolder(recorder)


def recorder_holder() -> RecorderHolder:
    """The holder of the process's recorder, opened from ``REER_MEMORY_FLIGHT_RECORDER`` on first use."""
    return RUNTIME.get("flight_recorder", _from_environment)


def process_flight_recorder() -> FlightRecorder | None:
    """The recorder ``REER_MEMORY_FLIGHT_RECORDER`` names, opened on first use; None without one.

    A predecessor that died is reported when it opens: a log line, and a short span
    ``reer.memory.predecessor`` with the event ``reer.memory.predecessor.died``.
    """
    return (RUNTIME.flight_recorder or recorder_holder()).recorder


# --- the postmortem ----------------------------------------------------------------------------

_BAR = "█"


def render_postmortem(record: FlightRecord, seconds: float = 60.0, rows: int = 20, width: int = 40) -> str:
    """The last ``seconds`` of ``record`` as a table with a bar chart of RSS, then what was running."""
    lines = [record.summary(), ""]
    last = record.last_sample
    if last is None:
        lines.append("no samples recorded")
    else:
        window = [sample for sample in record.samples if sample.time_s >= last.time_s - seconds]
        step = max(1, -(-len(window) // rows))
        shown = window[::-1][::step][::-1]  # the latest sample is always shown
        top = max(max(sample.rss_bytes, sample.working_set_bytes or 0) for sample in shown) or 1
        lines.append(f"last {seconds:g} s before the end ({len(window)} samples, {len(shown)} shown); bar: RSS")
        lines.append(f"{'time':>9}  {'RSS MB':>9}  {'WS MB':>9}  {'device MB':>9}  {'level':<8}  ")
        for sample in shown:
            bar = _BAR * max(1, round(sample.rss_bytes / top * width))
            lines.append(
                f"{sample.time_s - last.time_s:>8.1f}s  {sample.rss_bytes / MB:>9.1f}  {_mb(sample.working_set_bytes):>9}  "
                f"{_mb(sample.device_used_bytes):>9}  {sample.level or '-':<8}  {bar}"
            )
    lines.append("")
    if record.running:
        lines.append("running when the file was last written:")
        end = last.time_s if last else time.time()
        for operation in record.running:
            before_s = end - operation.started_s
            lines.append(f"  {_describe(operation)}, started {before_s:.1f} s before the end, thread {operation.thread_id}")
    else:
        lines.append("no operation was running")
    if record.level_changes:
        lines.append("level changes:")
        for change in record.level_changes[-10:]:
            at = time.strftime("%H:%M:%S", time.localtime(change.time_s))
            lines.append(f"  {at}  {change.source} {change.value_bytes / MB:.1f} MB: {change.old} -> {change.new}")
    return "\n".join(lines) + "\n"


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / MB:.1f}"


__all__ = [
    "FlightRecord",
    "FlightRecorder",
    "FlightSample",
    "LevelChange",
    "RunningOperation",
    "parse_flight_record",
    "process_flight_recorder",
    "read_flight_record",
    "render_postmortem",
]
