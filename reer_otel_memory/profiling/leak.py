"""Leak verdicts: which operation keeps memory, judged only on evidence that is its own.

Each call gives one retained figure (the smaller of its end and start-to-start views, from the
heap where it is read and credible, else RSS); calls that overlapped others are kept apart as
contested evidence. A short and a long judgement raise an operation's suspicion on its own
evidence, a process-level verdict where the growth cannot be pinned on one operation, and
explanations (``profiling.explain``) settle both. The rules, for users: docs/telemetry.md,
"Leak verdicts".
"""

from __future__ import annotations

import bisect
import collections
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from .. import _names as names
from .._runtime import RUNTIME
from ..config import checked_number
from ..errors import ConfigurationError
from .window import EXPLANATION_WINDOW

if TYPE_CHECKING:
    from opentelemetry.trace import Span

logger = logging.getLogger(__name__)





#: Python small-object blocks are at most this many bytes: a bound on what a block count can hold.
_MAX_SMALL_BLOCK = 512
#: A typical small-object block (a small dict or list, a short str): what new blocks hold at
#: least when their memory came from free space in arenas, where neither RSS nor heap moves.
_TYPICAL_SMALL_BLOCK = 64
#: An explanation settles a verdict only when the window's new live bytes reach this many floors.
_EXPLANATION_FLOORS = 4
#: Share of an explanation's new live bytes that confirms an operation, and that clears one.
_CONFIRM_SHARE = 0.5
_CLEAR_SHARE = 0.1
#: The heap is judged credible once calls that read it saw this much RSS growth, and the sums
#: are halved past the span, so they follow the process's recent allocations.
_CREDIBILITY_FLOOR = 1 << 20
_CREDIBILITY_SPAN = 256 << 20
#: RSS samples kept for the process-level judgement (spread over ``process_window_s``).
_PROCESS_SAMPLES = 64
#: A suspicion only an explanation could see holds this long before a new explanation must confirm it.
_EXPLAINED_HOLD_S = 600.0
# How often a verdict whose explanation could not start asks again (from its operations' calls).
_RETRY_EXPLANATION_S = 1.0
#: A candidate's other-thread check needs at least this much wall time since its mark.
_MIN_MARK_AGE_S = 0.002
#: The other-thread mark is renewed this often while an operation is not a candidate.
_MARK_RENEW_S = 30.0


@dataclass(frozen=True)
class LeakSuspect:
    """An operation whose retained memory keeps growing."""

    operation: str
    bytes_per_call: int
    calls_seen: int

    def as_dict(self) -> dict[str, object]:
        return {"operation": self.operation, "bytes_per_call": self.bytes_per_call, "calls_seen": self.calls_seen}


class StartReadings(Protocol):
    """What a call read at its start, for the start-to-start view (heap and blocks: None if
    unread); ``open_seq`` and ``nested``: the probe's count of windows opened up to this call's,
    and how many opened inside it (0, 0: unknown), so that other operations' calls between two
    starts of this one can be told. A profiled call passes itself."""

    @property
    def rss_start(self) -> int: ...
    @property
    def heap_start(self) -> int | None: ...
    @property
    def blocks_start(self) -> int | None: ...
    @property
    def open_seq(self) -> int: ...
    @property
    def nested(self) -> int: ...


class CallStart(NamedTuple):
    """:class:`StartReadings` as plain values."""

    rss_start: int
    heap_start: int | None = None
    blocks_start: int | None = None
    open_seq: int = 0
    nested: int = 0


def retained_bytes(rss_delta: int, heap_delta: int | None, blocks_delta: int | None) -> int:
    """One view of what a call kept (docs/telemetry.md, "Leak verdicts"): the heap's change plus the part of
    the RSS change that new small-object blocks can hold; the RSS change where the heap is unread."""
    if heap_delta is None:
        return rss_delta
    if not blocks_delta or blocks_delta <= 0:
        return heap_delta
    rest = rss_delta - heap_delta
    held = min(rest, blocks_delta * _MAX_SMALL_BLOCK) if rest > 0 else 0
    return heap_delta + max(held, blocks_delta * _TYPICAL_SMALL_BLOCK)


class _Evidence:
    """Retained figures of one kind (own or contested), newest last: the short window is the
    last ``window`` of them, the long window the last ``long_window``."""

    __slots__ = ("heap", "long_sum", "long_window", "short_sum", "values", "window")

    def __init__(self, window: int, long_window: int) -> None:
        self.window = window
        self.long_window = long_window
        size = max(window, long_window)
        self.values: collections.deque[int] = collections.deque(maxlen=size)
        self.heap: collections.deque[bool] = collections.deque(maxlen=size)  # each figure read the heap
        # Running totals, so that a window that cannot hold a leak is passed over without a sort;
        # a race between two calls can skew them, so they are summed again every few judgements.
        self.short_sum = 0
        self.long_sum = 0

    def add(self, retained: int, heap: bool) -> None:
        values = self.values
        count = len(values)
        if count >= self.window:
            self.short_sum -= values[-self.window]
        if count >= self.long_window:
            self.long_sum -= values[-self.long_window]
        values.append(retained)
        self.heap.append(heap)
        self.short_sum += retained
        self.long_sum += retained

    def short(self) -> list[int]:
        return list(itertools.islice(reversed(self.values), self.window))

    def long(self) -> list[int]:
        return list(itertools.islice(reversed(self.values), self.long_window))

    def resync(self) -> None:
        self.short_sum = sum(self.short())
        self.long_sum = sum(self.long())

    def mostly_rss(self) -> bool:
        """Whether most figures of either window were read from RSS alone (whichever judgement fired)."""
        flags = list(reversed(self.heap))
        short, long = flags[: self.window], flags[: self.long_window]
        return sum(short) * 2 < len(short) or sum(long) * 2 < len(long)


class _OperationHistory:
    __slots__ = (
        "announce",
        "bytes_per_call",
        "calls",
        "candidate",
        "contested",
        "excused",
        "explained",
        "explained_at",
        "heap_seen",
        "mark",
        "own",
        "pending",
        "rechecked",
        "suspected",
        "threads",
        "traced_calls",
        "vetoed",
    )

    def __init__(self, window: int, long_window: int) -> None:
        self.own = _Evidence(window, long_window)
        self.contested = _Evidence(window, long_window)
        self.calls = 0
        self.suspected = False
        self.candidate = False  # a process-level candidate
        self.explained = False  # the suspicion was confirmed by an explanation
        self.explained_at = 0.0  # when (monotonic seconds)
        self.traced_calls = 0  # its calls that ended while allocations were traced, since the latest request
        self.vetoed = False  # an explanation showed the operation owns next to none of the growth
        self.excused = False  # ... and that another operation owns most of it
        self.announce = False  # a suspicion raised outside a call: the next call reports it
        self.bytes_per_call = 0
        self.heap_seen = False  # some call read it: the heap can be read for this operation
        self.rechecked = False  # an RSS-only suspicion was set aside once to be judged on the heap
        self.pending: tuple[StartReadings, int, int] | None = None  # previous call: start, end view, overlap
        self.threads: set[int] = set()  # native ids of the threads the operation ran in
        self.mark: tuple[float, dict[int, int]] | None = None  # wall time, CPU ns per thread


def _thread_cpu_ns(task_dir: str) -> dict[int, int]:
    """CPU nanoseconds of each Python thread of the process, by native id (from ``schedstat``)."""
    cpu: dict[int, int] = {}
    for thread in threading.enumerate():
        native = thread.native_id
        if native is None:
            continue
        try:
            with open(f"{task_dir}/{native}/schedstat", "rb") as handle:
                cpu[native] = int(handle.read().split(None, 1)[0])
        except (OSError, ValueError, IndexError):
            continue
    return cpu


class LeakDetector:
    """Leak verdicts per operation (docs/telemetry.md, "Leak verdicts"); bounded to ``max_operations`` names."""

    def __init__(
        self,
        window: int = 32,
        warmup_calls: int = 8,
        min_samples: int = 24,
        floor_bytes: int = 32 * 1024,
        positive_share: float = 0.75,
        check_every: int = 4,
        max_operations: int = 1000,
        *,
        long_window: int = 256,
        long_min_samples: int = 128,
        long_floor_bytes: int = 8 * 1024,
        busy_thread_share: float = 0.05,
        task_dir: str = "/proc/self/task",
        heap_watch_calls: int = 512,
        explainer: Any = None,
        explained_hold_s: float = _EXPLAINED_HOLD_S,
        process_window_s: float = 300.0,
        process_floor_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        """``explainer``: what verdicts ask for explanations (``request`` and ``add_listener``,
        as :class:`~reer_otel_memory.profiling.explain.AutoExplainer`); None: the process's own;
        False: none."""
        for argument, value in (
            ("window", window), ("min_samples", min_samples), ("check_every", check_every), ("max_operations", max_operations),
            ("long_window", long_window), ("long_min_samples", long_min_samples),
        ):
            checked_number(value, 1, whole=True, where="LeakDetector", name=argument, expected="expected a whole number >= 1")
        checked_number(warmup_calls, 0, whole=True, where="LeakDetector", name="warmup_calls", expected="expected a whole number >= 0")
        if min_samples > window:
            raise ConfigurationError(
                f"LeakDetector(min_samples={min_samples!r}, window={window!r}): "
                "expected min_samples <= window, or the window is never judged"
            )
        if long_min_samples > long_window:
            raise ConfigurationError(
                f"LeakDetector(long_min_samples={long_min_samples!r}, long_window={long_window!r}): "
                "expected long_min_samples <= long_window, or the long window is never judged"
            )
        for argument, number in (
            ("floor_bytes", floor_bytes), ("long_floor_bytes", long_floor_bytes), ("process_window_s", process_window_s),
            ("process_floor_bytes", process_floor_bytes),
        ):
            unit = "seconds" if argument.endswith("_s") else "bytes"
            checked_number(number, 0, low_inclusive=False, where="LeakDetector", name=argument, expected=f"expected a positive number of {unit}")
        for argument, share in (("positive_share", positive_share), ("busy_thread_share", busy_thread_share)):
            checked_number(share, 0, 1, low_inclusive=False, where="LeakDetector", name=argument, expected="expected a share above 0 and at most 1")
        self.window = window
        self.warmup_calls = warmup_calls
        self.min_samples = min_samples
        self.floor_bytes = floor_bytes
        self.positive_share = positive_share
        self.check_every = check_every
        self.max_operations = max_operations
        self.long_window = long_window
        self.long_min_samples = long_min_samples
        self.long_floor_bytes = long_floor_bytes
        self.busy_thread_share = busy_thread_share
        self.task_dir = task_dir
        self.heap_watch_calls = heap_watch_calls
        self.explained_hold_s = explained_hold_s
        self.process_window_s = process_window_s
        self.process_floor_bytes = process_floor_bytes
        self._explainer = explainer
        self._lock = threading.Lock()
        self._ops: collections.OrderedDict[str, _OperationHistory] = collections.OrderedDict()
        self._process_suspected = False
        self._process_growth = False
        self._process_samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=_PROCESS_SAMPLES)
        self._explainer_hooked = False
        # A verdict's explanation that could not start (another window running, the time budget):
        # (when to try again, reason, operations, the operation suspected or None for the process).
        self._pending_explanation: tuple[float, str, tuple[str, ...], str | None] | None = None
        self._rss_sum = 0  # RSS growth, and what the heap views retained, over calls that read the heap
        self._heap_sum = 0
        RUNTIME.after_fork_call(self)

    def _after_fork_in_child(self) -> None:
        # Another thread may have held the lock when the process forked.
        self._lock = threading.Lock()
        for history in self._ops.values():
            history.threads = set()
            history.mark = None

    # --- one call ------------------------------------------------------------------------------

    def observe(
        self,
        operation: str,
        rss_delta: int,
        heap_delta: int | None = None,
        *,
        blocks_delta: int | None = None,
        overlap: int = 0,
        start: StartReadings | None = None,
        span: Span | None = None,
    ) -> bool | None:
        """Add one call. Returns True on the call that raised the operation's suspicion (or the
        first call after an explanation raised it), False on one that cleared it, None otherwise.

        ``start``: the call's start readings, for the start-to-start view; without it each call
        is judged on its end view alone (a test body run in a loop, say). ``overlap``: other
        profiled operations in flight during the call. ``span``: the call's span, for the
        process-level event and the explanation's link.
        """
        history = self._ops.get(operation)
        if history is None:
            with self._lock:
                history = self._ops.get(operation)
                if history is None:
                    history = self._ops[operation] = _OperationHistory(self.window, self.long_window)
                    if len(self._ops) > self.max_operations:
                        self._ops.popitem(last=False)
        history.calls += 1  # a lost increment under a race only shifts when the next check runs
        if EXPLANATION_WINDOW.open:
            history.traced_calls += 1
        calls = history.calls
        if calls <= self.warmup_calls:
            if start is not None:
                history.pending = None
            return None
        if calls == self.warmup_calls + 1 and history.mark is None:
            history.mark = (time.monotonic(), _thread_cpu_ns(self.task_dir))
        if heap_delta is not None:
            history.heap_seen = True
        end_view = self._view(rss_delta, heap_delta, blocks_delta, count=True)
        if start is None:
            (history.contested if overlap else history.own).add(end_view, heap_delta is not None)
        else:
            previous, history.pending = history.pending, (start, end_view, overlap)
            if previous is not None:
                before, previous_end, previous_overlap = previous
                heap, before_heap = start.heap_start, before.heap_start
                heap_step = None if heap is None or before_heap is None else heap - before_heap
                blocks, before_blocks = start.blocks_start, before.blocks_start
                blocks_step = None if blocks is None or before_blocks is None else blocks - before_blocks
                # Without the heap, RSS pages move between operations that run in turn (one's
                # frees are the next one's reuse): another operation's call between the two
                # starts makes RSS-only evidence shared, as an overlap does.
                shared = previous_overlap or (
                    # any other window opened between the two starts, or calls of this operation
                    # that overlap each other (the previous to end started after this one)
                    heap_step is None and before.open_seq > 0 and start.open_seq - before.open_seq - 1 - before.nested != 0
                )
                if shared:
                    # Between the starts, the other work in flight allocated and freed too: the
                    # start-to-start view is theirs as much as its own, so the call's end view stands.
                    history.contested.add(previous_end, heap_step is not None)
                else:
                    step = self._view(start.rss_start - before.rss_start, heap_step, blocks_step)
                    history.own.add(step if step < previous_end else previous_end, heap_step is not None)
        if history.announce:
            history.announce = False
            return True
        if calls % self.check_every:
            return None
        if start is not None:
            self._sample_process(start.rss_start, span)
        if self._pending_explanation is not None:
            self._retry_explanation(span)
        return self._check(operation, history, span)

    # --- the process -----------------------------------------------------------------------------

    def _sample_process(self, rss: int, span: Span | None) -> None:
        """Keep the process's RSS now and then (``process_window_s`` / 64 apart) from the calls'
        readings, and judge whether it grows steadily where no operation's evidence shows it."""
        now = time.monotonic()
        samples = self._process_samples
        if samples and now - samples[-1][0] < self.process_window_s / _PROCESS_SAMPLES:
            return
        samples.append((now, rss))
        growing = False
        if len(samples) >= _PROCESS_SAMPLES // 4 and now - samples[0][0] >= 0.9 * self.process_window_s:
            values = [value for _, value in samples]
            quarter = len(values) // 4
            steps = [values[min((i + 1) * quarter, len(values) - 1)] - values[i * quarter] for i in range(4)]
            # Growth in every quarter of the window, and the floor in all: a steady climb, not a step.
            growing = min(steps) > 0 and values[-1] - values[0] >= self.process_floor_bytes
        if growing != self._process_growth:
            self._process_growth = growing
            self._update_process_verdict(span)

    def _unowned_growth(self) -> bool:
        """The process grows and no operation is suspected (one that is would own the growth)."""
        return self._process_growth and not any(h.suspected for h in list(self._ops.values()))

    def _view(self, rss_delta: int, heap_delta: int | None, blocks_delta: int | None, count: bool = False) -> int:
        """:func:`retained_bytes`, where the heap is credible in this process: it must account
        for at least half of the RSS growth seen over the calls that read it. Memory mapped
        outside ``malloc`` (the ``mmap`` module, an allocator such as jemalloc preloaded) moves
        RSS but never the heap; there the larger of the two figures is taken instead."""
        if heap_delta is None:
            return rss_delta
        view = retained_bytes(rss_delta, heap_delta, blocks_delta)
        if count:
            rss_sum, heap_sum = self._rss_sum + max(rss_delta, 0), self._heap_sum + max(view, 0)
            if rss_sum > _CREDIBILITY_SPAN:
                rss_sum, heap_sum = rss_sum // 2, heap_sum // 2
            self._rss_sum, self._heap_sum = rss_sum, heap_sum  # a lost update under a race only ages the sums
        if self._rss_sum >= _CREDIBILITY_FLOOR and self._heap_sum * 2 < self._rss_sum:
            return view if view > rss_delta else rss_delta
        return view

    # --- judgements ----------------------------------------------------------------------------

    def _judge_short(self, evidence: _Evidence) -> tuple[bool, int]:
        n = min(len(evidence.values), self.window)
        if n < self.min_samples or evidence.short_sum * 2 < self.floor_bytes * n:
            return False, 0  # a median at the floor needs at least half the floor a call in all
        ordered = sorted(evidence.short())
        median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) // 2
        positive = n - bisect.bisect_right(ordered, 0)  # in C: this runs every few calls on the hot path
        total = sum(ordered)
        suspected = median >= self.floor_bytes and positive >= self.positive_share * n and total >= median * n // 2
        return suspected, median

    def _judge_long(self, evidence: _Evidence) -> tuple[bool, int]:
        n = min(len(evidence.values), self.long_window)
        if n < self.long_min_samples:
            return False, 0
        if evidence.long_sum < self.long_floor_bytes * n:
            return False, evidence.long_sum // n
        values = evidence.long()[::-1]  # oldest first, for the quarters
        total = sum(values)
        rate = total // n
        if rate < self.long_floor_bytes:
            return False, rate
        quarter = n // 4
        least = min(sum(values[i * quarter : (i + 1) * quarter]) for i in range(4))
        # Growth in every quarter, each at least a quarter of its fair share: a steady leak,
        # not one step, and not a cache that was cleared inside the window.
        return least * 16 >= total, rate

    def _judge(self, evidence: _Evidence) -> tuple[bool, int]:
        short, per_call = self._judge_short(evidence)
        if short:
            return True, per_call
        return self._judge_long(evidence)

    def _others_busy(self, history: _OperationHistory) -> bool | None:
        """Whether Python threads the operation never ran in used more than ``busy_thread_share``
        of the time since its mark; None while that cannot be told yet (a new mark)."""
        if threading.active_count() == 1:
            return False  # no other Python thread
        now = time.monotonic()
        mark = history.mark
        if mark is None or now - mark[0] < _MIN_MARK_AGE_S:
            if mark is None:
                history.mark = (now, _thread_cpu_ns(self.task_dir))
            return None
        cpu = _thread_cpu_ns(self.task_dir)
        if not cpu:
            return False  # unreadable here: judged on the operation's evidence alone
        since, before = mark
        own = history.threads
        other_ns = sum(ns - before.get(native, 0) for native, ns in cpu.items() if native not in own and native in before)
        return other_ns > self.busy_thread_share * (now - since) * 1e9

    def _check(self, operation: str, history: _OperationHistory, span: Span | None) -> bool | None:
        threads = history.threads  # the threads it runs in, seen on the calls that are judged
        if len(threads) < 64:
            threads.add(threading.get_native_id())
        if not history.calls % (16 * self.check_every):
            history.own.resync()
            history.contested.resync()
        own_suspected, own_per_call = self._judge(history.own)
        contested_suspected, contested_per_call = self._judge(history.contested)
        with self._lock:
            if operation in self._ops:
                # Operations still being called move to the back, so eviction (past
                # max_operations names) drops the ones not seen for longest.
                self._ops.move_to_end(operation)
        if own_suspected and not history.vetoed and not history.suspected and history.heap_seen and history.own.mostly_rss() and not history.rechecked:
            # RSS alone misleads where pages are reused across operations: judge the suspicion
            # again on calls that read the heap (see wants_heap) before raising it.
            history.rechecked = True
            history.own = _Evidence(self.window, self.long_window)
            return None
        if own_suspected and not history.vetoed and not history.suspected:
            busy = self._others_busy(history)
            if busy is None:
                return None  # decided on a later check, once the other threads' share is known
            own_suspected = not busy
            if busy:
                contested_suspected, contested_per_call = True, own_per_call
        elif not own_suspected and not contested_suspected:
            mark = history.mark
            if mark is None or time.monotonic() - mark[0] > _MARK_RENEW_S:
                history.mark = (time.monotonic(), _thread_cpu_ns(self.task_dir))
        if history.vetoed:
            contested_suspected, contested_per_call = contested_suspected or own_suspected, max(contested_per_call, own_per_call)
            own_suspected = False
        keep_explained = history.explained and (own_suspected or contested_suspected)
        if history.explained and not keep_explained:
            # The figures cannot see this leak (RSS pages reused, say): the explanation's word
            # holds for a while, then a new explanation must confirm it.
            if time.monotonic() - history.explained_at < self.explained_hold_s:
                keep_explained = True
            elif self._request_explanation(f"re-checking operation {operation!r}, suspected by an explanation", [operation], span):
                history.explained_at = time.monotonic()
                keep_explained = True
        suspected = own_suspected or keep_explained
        if own_suspected:
            history.bytes_per_call = own_per_call
        elif keep_explained:
            if not history.bytes_per_call:  # else the explanation's figure stands
                history.bytes_per_call = contested_per_call
        else:
            history.bytes_per_call = 0
        candidate = contested_suspected and not suspected and not history.excused
        changed = None
        if suspected != history.suspected:
            history.suspected = suspected
            changed = suspected
            if not suspected:
                history.explained = False
        if candidate != history.candidate:
            history.candidate = candidate
            if candidate:
                history.bytes_per_call = contested_per_call
            self._update_process_verdict(span)
        elif changed is not None:
            self._update_process_verdict(span)
        if changed:
            logger.warning(
                "memory leak suspected in operation %r: about %d bytes retained per call over its recent calls",
                operation, history.bytes_per_call,
            )
            self._request_verdict_explanation(f"operation {operation!r} suspected of leaking", [operation], operation, span)
        return changed

    def _update_process_verdict(self, span: Span | None) -> None:
        candidates = self.candidates()
        suspected = bool(candidates) or self._unowned_growth()
        if suspected == self._process_suspected:
            return
        self._process_suspected = suspected
        if not suspected:
            logger.info("process-level memory growth no longer seen in the profiled operations")
            return
        if candidates:
            logger.warning(
                "memory grows while profiled operations overlap other work: it cannot be told which owns the growth "
                "(candidate operations: %s); an explanation names the allocating lines",
                ", ".join(candidates),
            )
        else:
            logger.warning(
                "memory grew steadily over the last %.0f s and no profiled operation's own calls show it: the growth is "
                "in code outside the profiled operations, or between their calls; an explanation names the allocating lines",
                self.process_window_s,
            )
        if span is not None and span.is_recording():
            span.add_event(names.EVENT_PROCESS_LEAK_SUSPECTED, {names.ATTR_LEAK_CANDIDATES: candidates})
        self._request_verdict_explanation("process memory grows: " + (", ".join(candidates) or "outside the profiled operations"), candidates, None, span)

    # --- explanations --------------------------------------------------------------------------

    def _request_verdict_explanation(self, reason: str, operations: Sequence[str], suspect: str | None, span: Span | None) -> None:
        """Ask for the explanation of a new verdict (``suspect``: the operation, None: the
        process); one that cannot start now is asked for again, while the verdict holds."""
        if self._request_explanation(reason, operations, span):
            self._pending_explanation = None
        elif self._explainer is not False:
            self._pending_explanation = (time.monotonic() + _RETRY_EXPLANATION_S, reason, tuple(operations), suspect)

    def _retry_explanation(self, span: Span | None) -> None:
        pending = self._pending_explanation
        if pending is None or time.monotonic() < pending[0]:
            return
        _, reason, operations, suspect = pending
        history = self._ops.get(suspect) if suspect is not None else None
        holds = self._process_suspected if suspect is None else history is not None and history.suspected
        if not holds:
            self._pending_explanation = None
            return
        self._request_verdict_explanation(reason, operations, suspect, span)

    def _request_explanation(self, reason: str, operations: Sequence[str], span: Span | None) -> bool:
        """Ask for one explanation window; whether one was started."""
        try:
            explainer = self._explainer
            if explainer is False:
                return False
            if explainer is None:
                from .explain import auto_explainer

                explainer = auto_explainer()
            if not self._explainer_hooked:
                self._explainer_hooked = True
                explainer.add_listener(self.on_explanation)
            links = [span.get_span_context()] if span is not None and span.is_recording() else []
            started = bool(explainer.request(reason, list(operations), links))
        except Exception as exc:  # an explanation is a help, never a failure of the host's call
            logger.debug("explanation not requested: %r", exc)
            return False
        if started:
            for history in list(self._ops.values()):
                history.traced_calls = 0  # counted again for the bytes a call keeps
        return started

    def on_explanation(self, explanation: object, reason: object = None, operations: object = None) -> None:
        """Settle verdicts from an explanation's live bytes per operation (docs/telemetry.md, "Leak verdicts")."""
        by_operation: dict[str, int] = dict(getattr(explanation, "operations", {}) or {})
        # An operation with a call in flight at the window's end holds that call's working memory
        # too: it proves nothing either way, and its bytes are left out of the shares.
        in_flight = set(getattr(explanation, "in_flight", ()) or ())
        total = int(getattr(explanation, "total_bytes", 0) or 0) - sum(by_operation.get(name, 0) for name in in_flight)
        by_operation = {name: size for name, size in by_operation.items() if name not in in_flight}
        if total < _EXPLANATION_FLOORS * self.floor_bytes:
            return
        raised: list[str] = []
        # An operation owning most of the new memory excuses the others; where none does (the
        # growth is in code outside every profiled operation), the process-level verdict stands.
        owned = any(size >= _CONFIRM_SHARE * total for size in by_operation.values())
        now = time.monotonic()
        with self._lock:
            for name, history in self._ops.items():
                if name in in_flight:
                    continue
                share = by_operation.get(name, 0) / total
                if share >= _CONFIRM_SHARE:
                    history.vetoed = history.excused = False
                    history.explained_at = now
                    if not history.suspected or not history.bytes_per_call:
                        # The live bytes over the calls in the window: exact where shared or RSS-only
                        # figures were not (a suspicion on its own evidence keeps that figure).
                        history.bytes_per_call = by_operation[name] // max(1, history.traced_calls)
                    if not history.suspected:
                        history.suspected = history.explained = history.announce = True
                        history.candidate = False
                        raised.append(name)
                    else:
                        history.explained = True
                elif share < _CLEAR_SHARE and (history.suspected or history.candidate):
                    history.vetoed = True
                    history.excused = owned
                    if history.suspected:
                        history.suspected = history.explained = False
                    history.candidate = not owned
        for name in raised:
            logger.warning("memory leak suspected in operation %r: an explanation attributes most new live memory to it", name)
        self._process_suspected = self.process_suspected()

    # --- reading -------------------------------------------------------------------------------

    def bytes_per_call(self, operation: str) -> int:
        """The latest estimate of bytes retained per call (0 before the first check)."""
        history = self._ops.get(operation)
        return 0 if history is None else history.bytes_per_call

    def wants_heap(self, operation: str) -> bool:
        """Whether the operation's calls should read the heap even where that costs more than
        usual: during its first ``heap_watch_calls`` calls and while it is a suspect or candidate."""
        history = self._ops.get(operation)
        if history is None or history.calls < self.heap_watch_calls:
            return True
        return history.suspected or history.candidate or history.rechecked

    def is_suspected(self, operation: str) -> bool:
        history = self._ops.get(operation)
        return history is not None and history.suspected

    def suspects(self) -> list[LeakSuspect]:
        with self._lock:
            return [LeakSuspect(name, h.bytes_per_call, h.calls) for name, h in self._ops.items() if h.suspected]

    def candidates(self) -> list[str]:
        """Operations named by a process-level verdict: their calls show growth that cannot be
        shown to be their own. Empty while there is no such verdict, and while an operation is
        suspected: growth the others show only in shared evidence is then taken as its own."""
        histories = list(self._ops.items())
        if any(h.suspected for _, h in histories):
            return []
        return [name for name, h in histories if h.candidate]

    def process_suspected(self) -> bool:
        """Whether the process-level verdict holds: candidates (see :meth:`candidates`), or the
        process's RSS climbing steadily over ``process_window_s`` while no operation is suspected."""
        return bool(self.candidates()) or self._unowned_growth()

    def states(self) -> list[tuple[str, bool]]:
        """(operation, suspected) for every operation seen, for the leak gauge."""
        with self._lock:
            return [(name, h.suspected) for name, h in self._ops.items() if h.calls > self.warmup_calls]

    def clear(self) -> None:
        with self._lock:
            self._ops.clear()
            self._process_suspected = self._process_growth = False
            self._process_samples.clear()
