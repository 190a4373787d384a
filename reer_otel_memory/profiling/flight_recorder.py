"""The flight recorder: the last minutes before the process died, in a file that survives SIGKILL.

With ``REER_MEMORY_FLIGHT_RECORDER=PATH`` the process keeps a small fixed-size file of its last
samples, running operations and level changes; ``reer-otel-memory postmortem PATH`` reads it
after an OOM kill, and the next process on the path reports the death once. Each record is one
``os.pwrite`` from an image kept in memory, not a store into a shared mapping: a mapped file
that is truncated or that a full disk cannot back kills the writer with SIGBUS, a ``pwrite``
cannot. The recorder writes only a file it may own (no symbolic link, one link, the user's,
not group- or world-writable, one writer at a time) and checks every field it reads back, so a
corrupt record is one line, never a crash. The README ("Accelerators and containers") is the
manual; a forked child writes nowhere.
"""

from __future__ import annotations

import atexit
import errno
import itertools
import logging
import math
import os
import stat
import struct
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field

import psutil
from opentelemetry.context import Context
from opentelemetry.util.types import AttributeValue

from .. import _names as names
from .. import _telemetry
from .._runtime import RUNTIME
from ..errors import ConfigurationError
from ..levels import MemoryLevel

try:
    import fcntl
except ImportError:  # no advisory locks: a live writer is told by its pid and start time alone
    fcntl = None  # type: ignore[assignment]

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
_VERSION = 1

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


# Control characters (C0, DEL, C1) in a string from the file are shown as escapes, never raw.
_CONTROL = {code: f"\\x{code:02x}" for code in [*range(0x20), *range(0x7F, 0xA0)]} | {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("utf-8", "replace").translate(_CONTROL)


# What a field may hold: times between the epoch and the end of year 9999 (what a calendar
# shows), pids up to the kernel's largest, byte counts below 2**53 (8 PiB, exact as a float).
_MAX_TIME_S = 253402300799.0
_MAX_PID = 1 << 22
_MAX_BYTES = 1 << 53


class _CorruptError(Exception):
    """A field of a record outside what a writer can have written."""


def _time(value: float, what: str) -> float:
    if not (math.isfinite(value) and 0.0 <= value <= _MAX_TIME_S):
        raise _CorruptError(f"{what} is {value!r} (expected seconds since the epoch, 0 to {_MAX_TIME_S:.0f})")
    return value


def _bytes(value: int, what: str, absent_allowed: bool = False) -> int | None:
    if absent_allowed and value == _ABSENT:
        return None
    if not 0 <= value < _MAX_BYTES:
        raise _CorruptError(f"{what} is {value} (expected 0 to 2**53 bytes{' or -1 for none' if absent_allowed else ''})")
    return value


def _level(rank: int, what: str) -> str | None:
    if rank == _NO_LEVEL:
        return None
    if rank not in _BY_RANK:
        raise _CorruptError(f"{what} is {rank} (expected one of {sorted(_BY_RANK)} or {_NO_LEVEL} for none)")
    return _BY_RANK[rank]


def parse_flight_record(data: bytes, path: str = "") -> FlightRecord:
    """A flight recorder file's content read and checked field by field.

    Raises :class:`ConfigurationError` (one line, naming the path and the field) when it is not
    a flight recorder file or when a field holds what no writer writes (NaN, a time past year
    9999, a negative size, an unknown level...). Strings have their control characters escaped.
    """
    if len(data) < FILE_BYTES or data[:8] != MAGIC:
        raise ConfigurationError(f"flight recorder file {path!r}: not a flight recorder file (expected {FILE_BYTES} bytes starting with {MAGIC!r})")
    try:
        return _parse(data, path)
    except _CorruptError as exc:
        raise ConfigurationError(f"flight recorder file {path!r}: corrupt record: {exc}") from None


def _parse(data: bytes, path: str) -> FlightRecord:
    _magic, version, pid, flags, samples_n, slots_n, levels_n, started, created, command = _HEADER.unpack_from(data, 0)
    if version != _VERSION:
        raise _CorruptError(f"version is {version} (expected {_VERSION})")
    if (samples_n, slots_n, levels_n) != (SAMPLE_CAPACITY, SLOT_CAPACITY, LEVEL_CAPACITY):
        raise _CorruptError(f"capacities are {samples_n}/{slots_n}/{levels_n} (expected {SAMPLE_CAPACITY}/{SLOT_CAPACITY}/{LEVEL_CAPACITY})")
    if not 0 < pid <= _MAX_PID:
        raise _CorruptError(f"pid is {pid} (expected 1 to {_MAX_PID})")
    if flags & ~_CLEAN_SHUTDOWN:
        raise _CorruptError(f"flags are {flags:#x} (expected 0 or {_CLEAN_SHUTDOWN})")
    _time(started, "start time")
    _time(created, "process start time")
    samples = []
    for seq, time_s, rss, working_set, device, rank in sorted(
        (_SAMPLE.unpack_from(data, _SAMPLES_OFFSET + index * _SAMPLE.size) for index in range(SAMPLE_CAPACITY)), key=lambda record: record[0]
    ):
        if seq:
            what = f"sample {seq}"
            samples.append(
                FlightSample(
                    _time(time_s, f"{what}: time"),
                    _bytes(rss, f"{what}: RSS") or 0,
                    _bytes(working_set, f"{what}: working set", absent_allowed=True),
                    _bytes(device, f"{what}: device memory", absent_allowed=True),
                    _level(rank, f"{what}: level"),
                )
            )
    running = []
    for index in range(SLOT_CAPACITY):
        generation, thread_id, started_s, rss_start, device_start, name = _SLOT.unpack_from(data, _SLOTS_OFFSET + index * _SLOT.size)
        if generation:
            what = f"operation slot {index}"
            started_s = _time(started_s, f"{what}: start time")
            rss_start = _bytes(rss_start, f"{what}: RSS at start") or 0
            after = [sample.rss_bytes for sample in samples if sample.time_s >= started_s]
            growth = after[-1] - rss_start if after else None
            device = _bytes(device_start, f"{what}: device memory at start", absent_allowed=True)
            running.append(RunningOperation(_text(name), thread_id, started_s, rss_start, device, growth))
    running.sort(key=lambda operation: operation.started_s)
    changes = []
    for seq, time_s, value, source, old, new in sorted(
        (_LEVEL.unpack_from(data, _LEVELS_OFFSET + index * _LEVEL.size) for index in range(LEVEL_CAPACITY)), key=lambda record: record[0]
    ):
        if seq:
            what = f"level change {seq}"
            changes.append(LevelChange(_time(time_s, f"{what}: time"), _text(source), _bytes(value, f"{what}: bytes") or 0, _text(old), _text(new)))
    return FlightRecord(path, pid, started, created, bool(flags & _CLEAN_SHUTDOWN), _text(command), samples, running, changes)


def read_flight_record(path: str | os.PathLike[str]) -> FlightRecord:
    """Read and check a flight recorder file (OSError if unreadable, ConfigurationError if it is
    not one or is corrupt). Opens without blocking and reads regular files only."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigurationError(f"flight recorder file {os.fspath(path)!r}: not a regular file")
        return parse_flight_record(os.pread(fd, FILE_BYTES, 0), os.fspath(path))
    finally:
        os.close(fd)


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


_OPEN_FLAGS = os.O_RDWR | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_pwrite = os.pwrite


def _refuse(path: str, why: str) -> ConfigurationError:
    return ConfigurationError(f"flight recorder file {path!r}: {why}; give the recorder a path of its own")


def _open_own(path: str) -> tuple[int, bool]:
    """A descriptor for ``path`` opened for writing without following a link; True if created."""
    for _attempt in range(3):
        try:
            return os.open(path, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o600), True
        except FileExistsError:
            pass
        try:
            found = os.lstat(path)
            if stat.S_ISLNK(found.st_mode):
                raise _refuse(path, "is a symbolic link, which the recorder does not follow")
            if not stat.S_ISREG(found.st_mode):
                raise _refuse(path, "is not a regular file")
            return os.open(path, _OPEN_FLAGS), False
        except FileNotFoundError:
            continue  # removed since: create it
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # replaced by a link since
                raise _refuse(path, "is a symbolic link, which the recorder does not follow") from None
            raise
    raise _refuse(path, "keeps appearing and disappearing")


def _check_owned(fd: int, path: str) -> os.stat_result:
    """Refuse a file the recorder must not write: see the module's docstring."""
    found = os.fstat(fd)
    if not stat.S_ISREG(found.st_mode):
        raise _refuse(path, "is not a regular file")
    if found.st_uid != os.geteuid():
        raise _refuse(path, f"is owned by uid {found.st_uid}, not by this process's uid {os.geteuid()}")
    if found.st_mode & 0o022:
        raise _refuse(path, f"is writable by group or others (mode {stat.S_IMODE(found.st_mode):04o}), expected mode 0600")
    if found.st_nlink != 1:
        raise _refuse(path, f"has {found.st_nlink} links (another name for the same file)")
    return found


def _lock(fd: int) -> bool | None:
    """Take the file's lock: True, False when another process holds it, None without locks."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None  # a file system without locks
    return True


def _reserve(fd: int, path: str, image: bytearray) -> None:
    """Reserve the file's blocks, then write the whole image: a full disk fails here, cleanly."""
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, FILE_BYTES)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # no fallocate here: the write reserves
            raise OSError(exc.errno, f"cannot reserve {FILE_BYTES} bytes for the flight recorder: {exc.strerror}", path) from None
    written = 0
    while written < FILE_BYTES:
        count = _pwrite(fd, memoryview(image)[written:], written)
        if count <= 0:
            raise OSError(errno.ENOSPC, f"cannot write {FILE_BYTES} bytes for the flight recorder: {os.strerror(errno.ENOSPC)}", path)
        written += count


def _predecessor(fd: int, path: str, size: int) -> tuple[FlightRecord | None, str | None]:
    """What the file holds now: a record, or the reason it is corrupt (refuses a foreign file)."""
    if size == 0:
        return None, None
    previous = os.pread(fd, FILE_BYTES, 0)
    if previous[:8] != MAGIC:
        raise _refuse(path, f"is not a flight recorder file ({size} bytes, not starting with {MAGIC!r}), and is left as it is")
    if size > FILE_BYTES:
        raise _refuse(path, f"is {size} bytes, more than a flight recorder file's {FILE_BYTES}, and is left as it is")
    if len(previous) < FILE_BYTES:
        return None, f"{len(previous)} bytes, short of {FILE_BYTES}"
    try:
        return _parse(previous, path), None
    except _CorruptError as exc:
        return None, str(exc)


def _writer(fd: int, path: str, size: int) -> str:
    """Who holds the file's lock, as far as the file says."""
    try:
        record, _corrupt = _predecessor(fd, path, size)
    except (OSError, ConfigurationError):
        record = None
    return f"the running process {record.pid}" if record is not None else "another running process"


class FlightRecorder:
    """Writes samples, running operations and level changes into a flight recorder file.

    Open with :meth:`open`. Every write method is thread-safe without a lock and never raises
    once the recorder is open; after :meth:`close` they write nowhere.
    """

    def __init__(self, path: str, fd: int, image: bytearray, predecessor: FlightRecord | None) -> None:
        self.path = path
        # The file's whole content, kept here: each record is packed into it, then written.
        self._image = image
        self._view = memoryview(image)
        self._slot_views = [self._view[_SLOTS_OFFSET + slot * _SLOT.size :][: _SLOT.size] for slot in range(SLOT_CAPACITY)]
        self._fd = fd
        self._active = True
        self._truncations = 0
        #: The previous process's record when it died without a clean shutdown, else None.
        self.predecessor = predecessor
        self._sample_seq = itertools.count(1)
        self._level_seq = itertools.count(1)
        self._generation = itertools.count(1)
        self._free_slots = list(range(SLOT_CAPACITY - 1, -1, -1))
        self._cleared: list[int] = []
        self._names: dict[str, bytes] = {}
        RUNTIME.after_fork_call(self)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> FlightRecorder:
        """Open (create or reuse) the file at ``path``; reports a predecessor's death once.

        Raises :class:`ConfigurationError` when the file is not one the recorder may write (a
        symbolic link, another user's, writable by group or others, with other links, not a
        flight recorder file) or a live process is writing it; OSError when it cannot be
        created or its 64 KiB reserved (a full disk). Nothing is written to a refused file.
        """
        path = os.fspath(path)
        fd, created = _open_own(path)
        try:
            found = _check_owned(fd, path)
            locked = _lock(fd)
            if locked is False:
                raise ConfigurationError(f"flight recorder file {path!r}: in use by {_writer(fd, path, found.st_size)}; give each process its own path")
            record, corrupt = _predecessor(fd, path, found.st_size)
            if locked is None and record is not None and not record.clean_shutdown and record.pid != os.getpid() and _owner_alive(record):
                raise ConfigurationError(f"flight recorder file {path!r}: in use by the running process {record.pid}; give each process its own path")
            image = bytearray(FILE_BYTES)
            command = " ".join(sys.argv).encode("utf-8", "replace")[:200]
            _HEADER.pack_into(image, 0, MAGIC, _VERSION, os.getpid(), 0, SAMPLE_CAPACITY, SLOT_CAPACITY, LEVEL_CAPACITY, time.time(), _create_time(), command)
            _reserve(fd, path, image)
        except BaseException:
            if created:
                _remove_if_same(path, fd)
            os.close(fd)
            raise
        predecessor = record if record is not None and not record.clean_shutdown else None
        recorder = cls(path, fd, image, predecessor)
        if corrupt is not None:
            logger.warning("flight recorder %s: the previous writer's record is corrupt (%s); not reported, recording afresh", path, corrupt)
        if predecessor is not None:
            logger.warning("flight recorder %s: the previous process died: %s", path, predecessor.summary())
        atexit.register(recorder.close)
        try:
            threading.Thread(target=_write_ends, args=(weakref.ref(recorder),), name="reer-memory-flight-recorder", daemon=True).start()
        except RuntimeError:  # the interpreter is shutting down: ends go with the next record
            pass
        return recorder

    def _detach(self) -> None:
        # The descriptor's number is pointed at /dev/null rather than closed: a write racing
        # this on another thread goes nowhere, never into a file that reuses the number.
        fd = self._fd
        try:
            null = os.open(os.devnull, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            self._fd = -1
            os.close(fd)
            return
        try:
            os.dup2(null, fd, inheritable=False)
        finally:
            os.close(null)

    def _after_fork_in_child(self) -> None:
        # A child writing into the parent's file would corrupt the parent's record; its writes
        # go to its copy of the image alone, and it lets go of the parent's lock.
        self._active = False
        self._free_slots = list(range(SLOT_CAPACITY - 1, -1, -1))
        self._cleared = []
        self._detach()

    def close(self, clean: bool = True) -> None:
        """Stop recording; ``clean`` marks the file as a clean shutdown (no death reported)."""
        if not self._active:
            return
        self.restore_if_truncated()
        self._active = False
        try:
            self._write_cleared()
        except OSError:
            pass
        if clean:
            struct.pack_into("<I", self._image, _FLAGS_OFFSET, _CLEAN_SHUTDOWN)
            try:
                _pwrite(self._fd, self._view[_FLAGS_OFFSET : _FLAGS_OFFSET + 4], _FLAGS_OFFSET)
            except OSError:
                pass
        self._detach()

    @property
    def active(self) -> bool:
        """Whether writes reach the file (False after close and in a forked child)."""
        return self._active

    def restore_if_truncated(self) -> bool:
        """Write the whole image again if the file was cut short; whether it was (never raises).

        Each monitor sample checks, and the recorder's thread about every second; one log line
        says the first time it happens.
        """
        if not self._active:
            return False
        try:
            size = os.fstat(self._fd).st_size
            if size >= FILE_BYTES:
                return False
            _pwrite(self._fd, self._image, 0)
        except OSError:
            return False  # a full disk: the next check tries again
        self._truncations += 1
        log = logger.warning if self._truncations == 1 else logger.debug
        log("flight recorder %s: the file was cut short while recording (truncated, or rotated with copytruncate); written whole again", self.path)
        return True

    # --- the hot path -------------------------------------------------------------------------

    def record_sample(
        self,
        rss_bytes: int,
        working_set_bytes: int | None = None,
        device_used_bytes: int | None = None,
        level: MemoryLevel | str | None = None,
    ) -> None:
        """Add a sample to the ring, and check that the file still has its size."""
        seq = next(self._sample_seq)
        offset = _SAMPLES_OFFSET + (seq % SAMPLE_CAPACITY) * _SAMPLE.size
        # One write per record, no lock: a SIGKILL stops every thread at once, so at worst the
        # record being written is cut short; the reader sorts by sequence number.
        _SAMPLE.pack_into(
            self._image,
            offset,
            seq,
            time.time(),
            rss_bytes,
            _ABSENT if working_set_bytes is None else working_set_bytes,
            _ABSENT if device_used_bytes is None else device_used_bytes,
            _NO_LEVEL if level is None else _RANKS.get(level, _NO_LEVEL),
        )
        try:
            _pwrite(self._fd, self._view[offset : offset + _SAMPLE.size], offset)
            self._write_cleared()
        except OSError:
            pass  # the recorder never fails its host
        self.restore_if_truncated()

    def operation_started(self, name: str, rss_start: int, device_start: int | None = None) -> int:
        """Put a running operation in a free slot; returns the slot, or -1 when all are taken."""
        try:
            slot = self._free_slots.pop()  # atomic: no lock needed
        except IndexError:
            return -1
        encoded = self._names.get(name)
        if encoded is None:
            if len(self._names) > 4096:
                self._names.clear()  # bounded, whatever names the host invents
            encoded = self._names[name] = name.encode("utf-8", "replace")[:_NAME_BYTES]
        offset = _SLOTS_OFFSET + slot * _SLOT.size
        _SLOT.pack_into(
            self._image,
            offset,
            next(self._generation),
            threading.get_ident(),
            time.time(),
            rss_start,
            _ABSENT if device_start is None else device_start,
            encoded,
        )
        try:
            _pwrite(self._fd, self._slot_views[slot], offset)
            cleared = self._cleared
            while cleared:  # the ends since the last write (often only this slot's last user)
                freed = cleared.pop()
                if freed != slot:
                    _pwrite(self._fd, self._slot_views[freed], _SLOTS_OFFSET + freed * _SLOT.size)
        except (OSError, IndexError):  # IndexError: another thread took the last one first
            pass
        return slot

    def operation_finished(self, slot: int) -> None:
        """Free the slot :meth:`operation_started` returned (-1 is ignored).

        No system call: the end reaches the file with the next write (the next operation's
        start, the next sample) or within ``END_DELAY_S``, whichever comes first.
        """
        if slot >= 0:
            _GENERATION.pack_into(self._image, _SLOTS_OFFSET + slot * _SLOT.size, 0)
            self._cleared.append(slot)
            self._free_slots.append(slot)

    def _write_cleared(self) -> None:
        # The slots freed since, written as the image has them now: free, or taken again (then
        # their new operation is written twice, harmlessly). The list is never replaced (but in
        # a forked child) and pop() is atomic: each freed slot is written once.
        cleared = self._cleared
        try:
            while cleared:
                slot = cleared.pop()
                _pwrite(self._fd, self._slot_views[slot], _SLOTS_OFFSET + slot * _SLOT.size)
        except IndexError:
            pass  # another thread took the last one first

    def level_changed(self, old: MemoryLevel | str, new: MemoryLevel | str, value_bytes: int, source: str = "rss") -> None:
        """Record a level change of ``source`` (``rss``, ``working_set``, ``device``) at ``value_bytes``."""
        seq = next(self._level_seq)
        offset = _LEVELS_OFFSET + (seq % LEVEL_CAPACITY) * _LEVEL.size
        _LEVEL.pack_into(self._image, offset, seq, time.time(), value_bytes, source.encode()[:8], str(old).encode()[:8], str(new).encode()[:8])
        try:
            _pwrite(self._fd, self._view[offset : offset + _LEVEL.size], offset)
        except OSError:
            pass


#: The longest an operation's end waits to reach the file when nothing else is written.
END_DELAY_S = 0.1


#: How many of those rounds apart the thread checks that the file still has its size.
SIZE_CHECK_ROUNDS = 10


def _write_ends(reference: weakref.ref[FlightRecorder]) -> None:
    """Write the ends of operations that no later record has written, every ``END_DELAY_S``,
    and restore a truncated file about every second (a monitor sample does it too)."""
    for round_ in itertools.count(1):
        time.sleep(END_DELAY_S)
        recorder = reference()
        if recorder is None or not recorder.active:
            return
        try:
            recorder._write_cleared()
            if round_ % SIZE_CHECK_ROUNDS == 0:
                recorder.restore_if_truncated()
        except Exception:  # a full disk, a closed descriptor: the next round tries again
            pass
        del recorder


def _remove_if_same(path: str, fd: int) -> None:
    """Remove the file this process created at ``path``, if the name still leads to it."""
    try:
        mine, named = os.fstat(fd), os.lstat(path)
        if (mine.st_dev, mine.st_ino) == (named.st_dev, named.st_ino):
            os.unlink(path)
    except OSError:
        pass


# --- the process's recorder -----------------------------------------------------------------


class RecorderHolder:
    """The process's recorder, or None where none is configured or it could not open.

    Profiled calls read ``(RUNTIME.flight_recorder or recorder_holder()).recorder``: two attribute
    reads when no recorder is configured.
    """

    __slots__ = ("recorder",)

    def __init__(self, recorder: FlightRecorder | None) -> None:
        self.recorder = recorder

    def _on_reset(self) -> None:
        if self.recorder is not None:
            self.recorder.close()


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
        logger.warning("%s: no flight recorder, the process runs on without one: %s", names.ENV_FLIGHT_RECORDER, exc)
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
