"""MemoryTracker: a bounded ring of memory snapshots and the statistics drawn from it.

Profiled operations and the monitor each add a :class:`MemorySnapshot`; the ring never holds
more than ``max_snapshots``, so the tracker's own memory is bounded.

    >>> from reer_otel_memory import get_memory_tracker
    >>> stats = get_memory_tracker().get_memory_stats()
    >>> stats["current_memory_mb"] > 0
    True
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, NamedTuple

from .._runtime import RUNTIME
from ..config import MB, checked_number, get_config
from ..levels import MemoryLevel
from .leak import LeakDetector, LeakSuspect
from .probe import MemoryProbe, process_probe


class MemorySnapshot(NamedTuple):
    """Process memory at one moment, with the operation or monitor sample that took it.

    ``previous_level`` and ``crossed`` are set by the monitor: the level of the sample before
    and whether this sample moved to a new level. A named tuple, so taking one costs well
    under a microsecond on the profiling hot path.
    """

    timestamp: float
    rss_bytes: int
    heap_bytes: int | None
    operation: str | None
    level: MemoryLevel
    previous_level: MemoryLevel | None = None
    crossed: bool = False

    @property
    def process_memory_mb(self) -> float:
        """RSS in MB (1 MB = 1,048,576 bytes)."""
        return self.rss_bytes / MB

    @property
    def heap_mb(self) -> float | None:
        return None if self.heap_bytes is None else self.heap_bytes / MB


_LEVEL_BY_VALUE = {level.value: level for level in MemoryLevel}


def _slope_per_s(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of (time, bytes) in bytes per second."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_b = sum(b for _, b in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var <= 0:
        return 0.0
    return sum((t - mean_t) * (b - mean_b) for t, b in points) / var


class MemoryTracker:
    """Keeps recent snapshots and per-operation leak statistics for one process."""

    def __init__(self, max_snapshots: int = 1000, probe: MemoryProbe | None = None, leak_detector: LeakDetector | None = None) -> None:
        checked_number(max_snapshots, 1, whole=True, where="MemoryTracker", name="max_snapshots", expected="expected a whole number of snapshots >= 1")
        if probe is None:
            probe = process_probe()
        self._probe = probe
        # Profiled calls append plain (timestamp, rss, operation, level value) tuples: cheaper to
        # make, and the garbage collector stops tracking them (atomic items only) instead of
        # walking a thousand of them in every older-generation pass. :attr:`snapshots` makes
        # them MemorySnapshots.
        self._snapshots: collections.deque[MemorySnapshot | tuple[Any, ...]] = collections.deque(maxlen=max_snapshots)
        self._lock = threading.Lock()
        self.leak_detector = leak_detector if leak_detector is not None else LeakDetector()
        self.baseline_rss_bytes = probe.rss_bytes()
        self.started_at = time.time()
        self._peak_rss_bytes = self.baseline_rss_bytes

    @property
    def max_snapshots(self) -> int:
        return self._snapshots.maxlen or 0

    def record(self, snapshot: MemorySnapshot) -> None:
        """Add a snapshot (the oldest drops out once the ring is full)."""
        self._snapshots.append(snapshot)
        if snapshot.rss_bytes > self._peak_rss_bytes:
            self._peak_rss_bytes = snapshot.rss_bytes

    def record_operation(self, operation: str, rss_bytes: int, level: MemoryLevel) -> None:
        """Add the end-of-operation snapshot of a profiled call (on the hot path: keep it cheap).

        The ring holds a plain tuple; :attr:`snapshots` turns it into a MemorySnapshot.
        """
        self._snapshots.append((time.time(), rss_bytes, operation, level.value))
        if rss_bytes > self._peak_rss_bytes:
            self._peak_rss_bytes = rss_bytes

    def take_snapshot(self, operation: str | None = None) -> MemorySnapshot:
        """Measure now (RSS and heap) and record the result."""
        rss = self._probe.rss_bytes()
        snapshot = MemorySnapshot(
            time.time(), rss, self._probe.heap_bytes(), operation, get_config().level_for(rss), None, False
        )
        self.record(snapshot)
        return snapshot

    @property
    def snapshots(self) -> list[MemorySnapshot]:
        """The snapshots held now, oldest first (a copy)."""
        level = _LEVEL_BY_VALUE
        return [
            s if type(s) is MemorySnapshot else MemorySnapshot(s[0], s[1], None, s[2], level[s[3]])
            for s in list(self._snapshots)
        ]

    def clear(self) -> None:
        """Forget every snapshot and leak statistic; the baseline becomes the RSS now."""
        self._snapshots.clear()
        self.leak_detector.clear()
        self.baseline_rss_bytes = self._probe.rss_bytes()
        self._peak_rss_bytes = self.baseline_rss_bytes
        self.started_at = time.time()

    def leak_suspects(self) -> list[LeakSuspect]:
        """Operations whose retained memory keeps growing across calls."""
        return self.leak_detector.suspects()

    def get_memory_stats(self) -> dict[str, Any]:
        """Current, peak and baseline RSS, growth rate over the ring, and leak suspects."""
        current = self._probe.rss_bytes()
        snapshots = self.snapshots
        peak = max(self._peak_rss_bytes, current, self._probe.lifetime_peak_bytes())
        recent = [(s.timestamp, s.rss_bytes) for s in snapshots] + [(time.time(), current)]
        suspects = self.leak_suspects()
        return {
            "current_memory_mb": current / MB,
            "peak_memory_mb": peak / MB,
            "baseline_memory_mb": self.baseline_rss_bytes / MB,
            "growth_since_baseline_mb": (current - self.baseline_rss_bytes) / MB,
            "growth_rate_mb_per_min": _slope_per_s(recent) * 60 / MB,
            "snapshot_count": len(snapshots),
            "max_snapshots": self.max_snapshots,
            "level": get_config().level_for(current).value,
            "heap_mb": None if (heap_bytes := self._probe.heap_bytes()) is None else heap_bytes / MB,
            "leak_suspects": [s.as_dict() for s in suspects],
        }


def get_memory_tracker() -> MemoryTracker:
    """The process-wide tracker that profiled operations and the default monitor feed."""
    return RUNTIME.get("tracker", MemoryTracker)
