"""The memory probe: process RSS, allocator heap, and exact peak RSS per operation.

This is the hot path of everything else, so each read is one system call on a kept descriptor
where Linux allows: RSS from ``/proc/self/statm`` (with the GIL held, :func:`_statm_pages_reader`);
the heap from ``psutil.heap_info()``, whose cost grows with fragmentation and is timed
(:attr:`MemoryProbe.heap_cost_s`) so callers can decide whether it is affordable; the peak from
the kernel's RSS high-water mark, reset through ``/proc/self/clear_refs``. Before each reset the
mark is folded into every open peak window, so nested and concurrent operations all get exact
peaks; a rising peak is checked against ``VmHWM``, as ``ru_maxrss`` keeps exited threads' marks.
The reset is visible to the whole process; ``REER_MEMORY_RESET_PEAK=0`` leaves the mark alone
(README, "What it emits"). Elsewhere psutil is used and no peak is reported.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Mapping

import psutil

from .. import _names as names
from .._runtime import RUNTIME
from ..config import parse_bool
from ..errors import ConfigurationError

logger = logging.getLogger(__name__)

_heap_info: Callable[[], object] | None = getattr(psutil, "heap_info", None)


def _statm_pages_reader(fd: int) -> Callable[[], int]:
    """A function returning the resident pages in ``/proc/self/statm`` (second field), read through ``fd``.

    libc's ``pread`` is called through ``ctypes.PyDLL``, which keeps the GIL held. ``os.pread``
    releases it around the short read: in a process with another busy thread (a span exporter, a
    server's workers) the thread then hands the GIL over and waits to get it back, which costs a
    traced call more than the read itself (docs/performance.md). A read of ``statm`` never blocks. Where ctypes or ``pread`` is missing, or
    the interpreter runs without a GIL, ``os.pread`` is used.

    The buffer is shared by the threads reading one descriptor: a thread switch between the read
    and the parse can only give one thread another's reading from microseconds later, and both
    fields parsed end well inside any reading's length.
    """

    def with_os_pread() -> int:
        return int(os.pread(fd, 96, 0).split(None, 2)[1])

    if not getattr(sys, "_is_gil_enabled", lambda: True)():
        return with_os_pread
    try:
        import ctypes

        pread = ctypes.PyDLL(None).pread
        pread.restype = ctypes.c_ssize_t
        buffer = ctypes.create_string_buffer(96)
        # Exact C types made once: converting arguments through argtypes costs more than the read.
        c_fd, c_count, c_offset = ctypes.c_int(fd), ctypes.c_size_t(96), ctypes.c_long(0)  # off_t is a long on Linux
    except (ImportError, OSError, AttributeError):
        return with_os_pread

    def with_gil_held() -> int:
        count = pread(c_fd, buffer, c_count, c_offset)
        if count <= 0:
            return with_os_pread()  # raises the OSError, or reads what a retry finds
        return int(buffer.raw[:count].split(None, 2)[1])

    return with_gil_held

def _rusage_who() -> int:
    """``RUSAGE_THREAD`` where it reports the process-wide ``ru_maxrss``, else ``RUSAGE_SELF``.

    The kernel reports the same process-wide ru_maxrss (the mm's high-water mark) for
    RUSAGE_THREAD as for RUSAGE_SELF, at half the cost: RUSAGE_SELF also sums every thread's CPU
    times. Checked when a probe opens; RUSAGE_SELF where the two disagree or RUSAGE_THREAD is
    missing.
    """
    who = getattr(resource, "RUSAGE_THREAD", None)
    if who is None:
        return resource.RUSAGE_SELF
    try:
        if resource.getrusage(who).ru_maxrss == resource.getrusage(resource.RUSAGE_SELF).ru_maxrss:
            return int(who)
    except (OSError, ValueError):
        pass
    return resource.RUSAGE_SELF


class PeakWindow:
    """An open measurement of the highest RSS between :meth:`MemoryProbe.begin_peak` and end.

    ``overlap``, once the window has ended: how many other windows were open at any time
    during it, not counting its ``parent`` chain (the operations it runs inside, in the same
    thread or task) nor the windows opened inside it: those are the same work, not other work.
    """

    __slots__ = ("hwm_start", "nested", "open_seq", "overlap", "parent", "peak_bytes")

    def __init__(self) -> None:
        self.peak_bytes = 0
        self.hwm_start = 0
        self.parent: PeakWindow | None = None
        self.overlap = 0
        self.open_seq = 0  # windows opened in the process before and with this one
        self.nested = 0  # windows opened inside this one (its descendants)


# Peak modes.
_PEAK_RUSAGE = "rusage"  # ru_maxrss after clear_refs resets
_PEAK_STATUS = "status"  # VmHWM after clear_refs resets (ru_maxrss holds a stale thread peak)
_PEAK_NORESET = "noreset"  # high-water mark readable but not resettable
_PEAK_NONE = "none"


class MemoryProbe:
    """Reads this process's memory. One instance per ``proc_self`` directory is enough.

    ``proc_self`` is where the process's ``/proc`` entry lives; it is a parameter so that
    tests and unusual systems can point it elsewhere.
    """

    def __init__(self, proc_self: str = "/proc/self", *, reset_high_water: bool = True) -> None:
        self._proc_self = proc_self
        self._reset_high_water = reset_high_water
        self._page_size = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._lock = threading.Lock()
        self._active: set[PeakWindow] = set()
        self._opened = 0  # windows opened so far, for the overlap count
        self._lifetime_peak_bytes = 0
        #: Seconds one ``heap_info()`` call took, smoothed; 0 until first measured.
        self.heap_cost_s = 0.0
        self._statm_fd = self._clear_refs_fd = self._status_fd = -1
        self._open()
        RUNTIME.after_fork_call(self)

    # --- descriptors -------------------------------------------------------------------------

    def _open(self) -> None:
        self._rusage_who = _rusage_who()
        def try_open(name: str, flags: int) -> int:
            try:
                return os.open(os.path.join(self._proc_self, name), flags | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                return -1

        self._statm_fd = try_open("statm", os.O_RDONLY)
        if self._statm_fd >= 0:
            self._statm_pages = _statm_pages_reader(self._statm_fd)
        self._status_fd = try_open("status", os.O_RDONLY)
        self._clear_refs_fd = try_open("clear_refs", os.O_WRONLY) if self._reset_high_water else -1
        if self._clear_refs_fd >= 0:
            # The test write below resets the mark: keep what the process reached before it,
            # so the lifetime peak (the peak_rss gauge) covers the time before this probe.
            try:
                before = resource.getrusage(self._rusage_who).ru_maxrss * 1024
                if self._status_fd >= 0:
                    before = min(before, self._vmhwm_bytes())  # ru_maxrss may hold a stale thread peak
                self._lifetime_peak_bytes = max(self._lifetime_peak_bytes, before)
            except (OSError, ValueError):
                pass
            try:
                os.pwrite(self._clear_refs_fd, b"5", 0)
            except OSError:
                os.close(self._clear_refs_fd)
                self._clear_refs_fd = -1
        if self._statm_fd < 0:
            self._psutil_process = psutil.Process()
        if sys.platform.startswith("linux") and self._clear_refs_fd >= 0:
            self._peak_mode = _PEAK_RUSAGE
        elif sys.platform.startswith("linux") and self._status_fd >= 0:
            self._peak_mode = _PEAK_NORESET
        else:
            self._peak_mode = _PEAK_NONE

    def _after_fork_in_child(self) -> None:
        """In a forked child: the kept descriptors still point at the parent's /proc entry."""
        for fd in (self._statm_fd, self._status_fd, self._clear_refs_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._lock = threading.Lock()
        self._lifetime_peak_bytes = 0  # the child's own, seeded again by _open()
        # Windows of other threads never end in the child; the forking thread's own windows
        # still end correctly without being in the set.
        self._active = set()
        self._open()

    def close(self) -> None:
        """Close the kept descriptors; later reads fall back to psutil."""
        for fd in (self._statm_fd, self._status_fd, self._clear_refs_fd):
            if fd >= 0:
                os.close(fd)
        self._statm_fd = self._status_fd = self._clear_refs_fd = -1
        self._psutil_process = psutil.Process()
        self._peak_mode = _PEAK_NONE

    @property
    def peak_mode(self) -> str:
        """How peaks are measured: ``rusage``, ``status``, ``noreset`` or ``none``."""
        return self._peak_mode

    # --- reads ---------------------------------------------------------------------------------

    def rss_bytes(self) -> int:
        """Resident set size now (on Linux one ``pread``)."""
        fd = self._statm_fd
        if fd >= 0:
            return self._statm_pages() * self._page_size
        return int(self._psutil_process.memory_info().rss)

    def _note_heap_cost(self, cost: float) -> None:
        """Smooth the cost of a heap reading: a cheaper reading counts at once, a dearer one a
        fifth. A reading timed across a preemption (a busy machine) costs the wall time it was
        off the CPU, which says nothing about the heap; real growth (fragmentation) persists."""
        previous = self.heap_cost_s
        self.heap_cost_s = cost if previous == 0.0 or cost < previous else 0.8 * previous + 0.2 * cost

    def heap_bytes(self) -> int | None:
        """Bytes the C allocator has handed out and not freed, or None where unknown.

        It walks the allocator's free lists, so its cost grows with heap fragmentation.
        """
        reading = self._read_heap(blocks=False)
        return None if reading is None else reading[0]

    def heap_reading(self) -> tuple[int, int] | None:
        """The allocator heap (:meth:`heap_bytes`) and the count of Python small-object blocks in
        use (``sys.getallocatedblocks()``), read together; None where the heap is unknown.

        The heap does not see Python's small objects (their arenas are mapped outside
        ``malloc``); the block count does, so the two together tell retained Python objects
        from pages the allocator merely reused. Both walk allocator structures, so the pair is
        timed into :attr:`heap_cost_s`.
        """
        return self._read_heap(blocks=True)

    def _read_heap(self, blocks: bool) -> tuple[int, int] | None:
        if _heap_info is None:
            return None
        started = time.perf_counter()
        try:
            info = _heap_info()
        except (OSError, RuntimeError, NotImplementedError):
            return None
        count = 0
        if blocks:  # the reading profiled calls take: its cost decides where they take it
            count = sys.getallocatedblocks()
            self._note_heap_cost(time.perf_counter() - started)
        return int(getattr(info, "heap_used", 0)) + int(getattr(info, "mmap_used", 0)), count

    def _hwm_bytes(self) -> int:
        """The kernel's RSS high-water mark since the last reset (caller holds the lock)."""
        hwm = resource.getrusage(self._rusage_who).ru_maxrss * 1024 if self._peak_mode is _PEAK_RUSAGE else self._vmhwm_bytes()
        if hwm > self._lifetime_peak_bytes:
            self._lifetime_peak_bytes = hwm
        return hwm

    def _vmhwm_bytes(self) -> int:
        status = os.pread(self._status_fd, 4096, 0)
        start = status.find(b"VmHWM:")
        if start < 0:
            return 0
        return int(status[start + 6 : status.find(b"kB", start)]) * 1024

    def lifetime_peak_bytes(self) -> int:
        """Highest RSS of the process seen so far, across every high-water reset."""
        with self._lock:
            if self._peak_mode is not _PEAK_NONE:
                self._hwm_bytes()
            rss = self.rss_bytes()
            if rss > self._lifetime_peak_bytes:
                self._lifetime_peak_bytes = rss
            return self._lifetime_peak_bytes

    # --- peaks ---------------------------------------------------------------------------------

    def _verified_hwm(self, hwm: int) -> int:
        """``hwm`` read from ``ru_maxrss``, checked against ``VmHWM`` (caller holds the lock).

        ``ru_maxrss`` never under-reports, but a thread that exited leaves its high-water mark
        in it, which the reset does not clear. Only a reading that would raise a peak needs
        this check (one more file read); once it finds a stale value the probe reads ``VmHWM`` for good.
        """
        if self._peak_mode is not _PEAK_RUSAGE or self._status_fd < 0:
            return hwm
        exact = self._vmhwm_bytes()
        if exact < hwm:
            self._peak_mode = _PEAK_STATUS
            return exact
        return hwm

    def begin_peak(self) -> tuple[PeakWindow, int]:
        """Open a peak window; returns it and the RSS at its start.

        Reads the high-water mark and folds it into every open window, reads RSS, and resets
        the mark when it is above the RSS.
        """
        window = PeakWindow()
        return window, self.open_window(window)

    def _enter_flight(self, window: PeakWindow) -> None:
        """Count ``window`` in flight (caller holds the lock): the other windows open now, less
        its own ancestors, are its overlap so far; each open ancestor counts it as nested."""
        active = self._active
        opened = self._opened = self._opened + 1
        window.open_seq = opened
        window.nested = 0
        others = len(active)
        ancestor = window.parent
        while ancestor is not None:
            if ancestor in active:
                others -= 1
                ancestor.nested += 1
            ancestor = ancestor.parent
        window.overlap = others
        active.add(window)

    def _leave_flight(self, window: PeakWindow) -> None:
        """``window`` no longer in flight (caller holds the lock): the windows opened since it
        opened, less its own descendants, add to its overlap."""
        self._active.discard(window)
        window.overlap += self._opened - window.open_seq - window.nested

    def open_window(self, window: PeakWindow) -> int:
        """:meth:`begin_peak` into a window the caller made (a subclass, say, with its ``parent``
        set); returns the RSS at its start."""
        window.hwm_start = 0
        mode = self._peak_mode
        if mode is _PEAK_NONE:
            with self._lock:
                self._enter_flight(window)
            rss = self.rss_bytes()
            window.peak_bytes = rss
            return rss
        with self._lock:
            if mode is _PEAK_NORESET:
                window.hwm_start = self._hwm_bytes()
                rss = self.rss_bytes()
            else:
                # Read before every reset, even with no window open: the lifetime peak
                # (the peak_rss gauge) would otherwise lose what the reset clears.
                hwm = self._hwm_bytes()
                active = self._active
                if active and hwm > min(other.peak_bytes for other in active):
                    hwm = self._verified_hwm(hwm)
                    for other in active:
                        if other.peak_bytes < hwm:
                            other.peak_bytes = hwm
                rss = self.rss_bytes()
                if hwm > rss:
                    # The mark is above the RSS now, so it says nothing about this window:
                    # reset it. When it equals the RSS (nothing was freed since the mark was
                    # set) it already measures from here, and the reset is skipped.
                    os.pwrite(self._clear_refs_fd, b"5", 0)
            window.peak_bytes = rss
            self._enter_flight(window)
        return rss

    def in_flight_operations(self) -> set[str]:
        """The names of the operations with a window open now (windows without one left out)."""
        with self._lock:
            windows = list(self._active)
        return {name for name in (getattr(window, "name", None) for window in windows) if isinstance(name, str)}

    def open_flight(self, window: PeakWindow) -> None:
        """Count ``window`` in flight without measuring a peak; :meth:`close_flight` ends it."""
        with self._lock:
            self._enter_flight(window)

    def close_flight(self, window: PeakWindow) -> int:
        """End a window opened by :meth:`open_flight`; its overlap (see :class:`PeakWindow`)."""
        with self._lock:
            self._leave_flight(window)
        return window.overlap

    def end_peak(self, window: PeakWindow, end_rss: int) -> int | None:
        """Close ``window``; the highest RSS seen in it, or None where it cannot be known.

        One read of the high-water mark; one file read more when the mark is above both the
        window's start and end (a transient peak), to check it is not a stale thread peak.
        """
        mode = self._peak_mode
        if mode is _PEAK_NONE:
            self.close_flight(window)
            return None
        with self._lock:
            self._leave_flight(window)
            hwm = self._hwm_bytes()
            floor = window.peak_bytes if window.peak_bytes > end_rss else end_rss
            if hwm > floor:
                hwm = self._verified_hwm(hwm)
        if mode is _PEAK_NORESET:
            # Without a reset the mark is exact only if the window raised it, or if it never
            # exceeded what the window itself began or ended with.
            if hwm > window.hwm_start:
                return hwm
            if window.hwm_start <= floor:
                return floor
            return None
        return hwm if hwm > floor else floor


def _reset_wanted(environ: Mapping[str, str]) -> bool:
    """``REER_MEMORY_RESET_PEAK`` (default on); a word it does not know logs one line and means on."""
    try:
        return parse_bool(names.ENV_RESET_PEAK, environ.get(names.ENV_RESET_PEAK), default=True)
    except ConfigurationError as exc:
        logger.error("reer_otel_memory: %s; using the default (on) instead", exc)
        return True


def _new_process_probe() -> MemoryProbe:
    return MemoryProbe(reset_high_water=_reset_wanted(os.environ))


def process_probe() -> MemoryProbe:
    """The process-wide probe, opened on first use (``REER_MEMORY_RESET_PEAK=0``: never reset the kernel's mark)."""
    return RUNTIME.get("probe", _new_process_probe)


def __getattr__(name: str) -> object:
    # ``PROBE`` is the process-wide probe, opened when first asked for: importing opens nothing.
    if name == "PROBE":
        return process_probe()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
