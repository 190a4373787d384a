"""Leak detection per profiled operation.

After a warm-up, an operation is suspected of leaking when, over its recent calls, the memory it
retains per call is robustly positive: the median per-call delta is at least ``floor_bytes``,
most deltas are positive, and the window's total growth agrees (so a cache that fills and is
flushed does not count). A steady workload, whose deltas scatter around zero, is never flagged.

Two windows are judged, and either can raise the suspicion: RSS deltas, which every call has
and which see everything resident, Python's own small-object arenas included; and allocator
heap deltas, from the calls that measured them, which see native allocations to the byte even
before their pages are touched, but not those arenas (they are mapped outside ``malloc``).

The first judgement waits for ``min_samples`` calls after the warm-up (call 32 by default), so
a bounded cache that fills over its first couple of dozen calls and then evicts is seen to stop
growing before it could look like a leak; a real leak is flagged on that call.
"""

from __future__ import annotations

import bisect
import collections
import logging
import threading
from dataclasses import dataclass

from .._runtime import RUNTIME
from ..errors import ConfigurationError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeakSuspect:
    """An operation whose retained memory keeps growing."""

    operation: str
    bytes_per_call: int
    calls_seen: int

    def as_dict(self) -> dict[str, object]:
        return {"operation": self.operation, "bytes_per_call": self.bytes_per_call, "calls_seen": self.calls_seen}


class _OperationHistory:
    __slots__ = ("bytes_per_call", "calls", "deltas", "heap_deltas", "suspected")

    def __init__(self, window: int) -> None:
        self.deltas: collections.deque[int] = collections.deque(maxlen=window)  # RSS, every call
        self.heap_deltas: collections.deque[int] | None = None  # heap, once a call measures it
        self.calls = 0
        self.suspected = False
        self.bytes_per_call = 0


class LeakDetector:
    """Watches per-call RSS deltas of each operation; bounded to ``max_operations`` names."""

    def __init__(
        self,
        window: int = 32,
        warmup_calls: int = 8,
        min_samples: int = 24,
        floor_bytes: int = 32 * 1024,
        positive_share: float = 0.75,
        check_every: int = 4,
        max_operations: int = 1000,
    ) -> None:
        for argument, value in (
            ("window", window), ("min_samples", min_samples), ("check_every", check_every), ("max_operations", max_operations),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"LeakDetector({argument}={value!r}): expected a whole number >= 1")
        if isinstance(warmup_calls, bool) or not isinstance(warmup_calls, int) or warmup_calls < 0:
            raise ConfigurationError(f"LeakDetector(warmup_calls={warmup_calls!r}): expected a whole number >= 0")
        if min_samples > window:
            raise ConfigurationError(
                f"LeakDetector(min_samples={min_samples!r}, window={window!r}): "
                "expected min_samples <= window, or the window is never judged"
            )
        if isinstance(floor_bytes, bool) or not isinstance(floor_bytes, (int, float)) or floor_bytes <= 0:
            raise ConfigurationError(f"LeakDetector(floor_bytes={floor_bytes!r}): expected a positive number of bytes")
        if isinstance(positive_share, bool) or not isinstance(positive_share, (int, float)) or not 0 < positive_share <= 1:
            raise ConfigurationError(f"LeakDetector(positive_share={positive_share!r}): expected a share above 0 and at most 1")
        self.window = window
        self.warmup_calls = warmup_calls
        self.min_samples = min_samples
        self.floor_bytes = floor_bytes
        self.positive_share = positive_share
        self.check_every = check_every
        self.max_operations = max_operations
        self._lock = threading.Lock()
        self._ops: collections.OrderedDict[str, _OperationHistory] = collections.OrderedDict()
        RUNTIME.after_fork_call(self)

    def _after_fork_in_child(self) -> None:
        # Another thread may have held the lock when the process forked.
        self._lock = threading.Lock()

    def observe(self, operation: str, rss_delta: int, heap_delta: int | None = None) -> bool | None:
        """Add one call's delta. Returns True on the call that raised the suspicion, False on
        one that cleared it, None when nothing changed.

        ``heap_delta``, where the call measured it, goes to a second window judged alongside
        the RSS one (see the module docs): neither signal alone sees every leak.
        About 0.5 us: the lock is taken only to add an operation and on every
        ``check_every``-th call, when the window is judged.
        """
        history = self._ops.get(operation)
        if history is None:
            with self._lock:
                history = self._ops.get(operation)
                if history is None:
                    history = self._ops[operation] = _OperationHistory(self.window)
                    if len(self._ops) > self.max_operations:
                        self._ops.popitem(last=False)
        history.calls += 1  # a lost increment under a race only shifts when the next check runs
        calls = history.calls
        if calls <= self.warmup_calls:
            return None
        history.deltas.append(rss_delta)
        if heap_delta is not None:
            heap_deltas = history.heap_deltas
            if heap_deltas is None:
                heap_deltas = history.heap_deltas = collections.deque(maxlen=self.window)
            heap_deltas.append(heap_delta)
        if calls % self.check_every or len(history.deltas) < self.min_samples:
            return None
        with self._lock:
            if operation in self._ops:
                # Operations still being called move to the back, so eviction (past
                # max_operations names) drops the ones not seen for longest.
                self._ops.move_to_end(operation)
            suspected, per_call = self._judge(history.deltas)
            heap_deltas = history.heap_deltas
            if heap_deltas is not None and len(heap_deltas) >= self.min_samples:
                heap_suspected, heap_per_call = self._judge(heap_deltas)
                # Each signal misses some memory the other sees: the larger estimate is closer.
                if heap_suspected and (not suspected or heap_per_call > per_call):
                    suspected, per_call = True, heap_per_call
            history.bytes_per_call = per_call
            if suspected == history.suspected:
                return None
            history.suspected = suspected
            samples = len(history.deltas)
        if suspected:
            logger.warning(
                "memory leak suspected in operation %r: about %d bytes retained per call over the last %d calls",
                operation, per_call, samples,
            )
        return suspected

    def _judge(self, deltas: collections.deque[int]) -> tuple[bool, int]:
        ordered = sorted(deltas)
        n = len(ordered)
        median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) // 2
        positive = n - bisect.bisect_right(ordered, 0)  # in C: this runs every few calls on the hot path
        total = sum(ordered)
        suspected = median >= self.floor_bytes and positive >= self.positive_share * n and total >= median * n // 2
        return suspected, median

    def bytes_per_call(self, operation: str) -> int:
        """The latest robust estimate of bytes retained per call (0 before the first check)."""
        history = self._ops.get(operation)
        return 0 if history is None else history.bytes_per_call

    def is_suspected(self, operation: str) -> bool:
        history = self._ops.get(operation)
        return history is not None and history.suspected

    def suspects(self) -> list[LeakSuspect]:
        with self._lock:
            return [
                LeakSuspect(name, h.bytes_per_call, h.calls)
                for name, h in self._ops.items()
                if h.suspected
            ]

    def states(self) -> list[tuple[str, bool]]:
        """(operation, suspected) for every operation seen, for the leak gauge."""
        with self._lock:
            return [(name, h.suspected) for name, h in self._ops.items() if h.calls > self.warmup_calls]

    def clear(self) -> None:
        with self._lock:
            self._ops.clear()
