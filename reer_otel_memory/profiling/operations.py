"""Profiled operations: ``@memory_profile`` and ``memory_context``, one span each.

Each operation opens a span (or annotates the current one), measures RSS at start and end, the
peak in between, the overlap with other operations and, where affordable, the heap delta;
records the ``reer.memory.operation.*`` metrics, feeds the tracker and leak detection. One
lifecycle (:func:`_start`, :func:`_finish`) serves functions, coroutines, generators, async
generators and blocks, with an SDK or without one. Heap readings get slower as the heap
fragments, so by default a call reads the heap only when its operation is long beside one
reading (:data:`HEAP_COST_FACTOR`). Without an SDK nothing leaves the process but the tracker
and leak detection, so fast functions are measured on a sample of calls (:class:`_LightSampler`,
docs/performance.md); ``memory_context`` blocks, whose result the caller reads, always are.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import time
from collections.abc import Callable, Mapping
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from .. import _names as names
from .. import _telemetry
from .._runtime import RUNTIME
from ..config import get_config
from ..errors import InvalidArgumentError
from ..levels import MemoryLevel
from .devices import DeviceWindow, device_memory
from .flight_recorder import recorder_holder
from .probe import MemoryProbe, PeakWindow, process_probe
from .tracker import get_memory_tracker
from .window import EXPLANATION_WINDOW

if TYPE_CHECKING:
    from .flight_recorder import FlightRecorder

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: Measure the heap by default when an operation lasts this many times a heap reading.
HEAP_COST_FACTOR = 50.0
#: Measure the heap on an operation's first call when one reading costs at most this.
CHEAP_HEAP_S = 5e-6
#: Leak verdicts read the heap on an operation's first calls and while it is under suspicion,
#: whatever the operation's length, while one reading costs at most this.
HEAP_WATCH_MAX_S = 100e-6
#: Where a heap reading costs more than that, it is still timed again on one call in this many.
HEAP_RETIME_EVERY = 64
#: Without an SDK, an operation whose measured calls average at least this long is measured on
#: every call: the two RSS reads then add at most a few percent.
LIGHT_EVERY_CALL_S = 100e-6
#: Without an SDK, a faster operation is measured on one call in this many (its first included).
LIGHT_SAMPLE_EVERY = 16
_MAX_TRACKED_DURATIONS = 1000
#: The operation in flight in the current thread or task, kept in the OpenTelemetry context that
#: runs its code: an operation started inside it is its own work (not an overlap).
_OPERATION_KEY = otel_context.create_key("reer.memory.operation")


class _OperationTimings:
    """Each operation's mean call duration (a moving average, at most :data:`_MAX_TRACKED_DURATIONS`
    operations), and the countdown to the next timing of a dear heap reading."""

    def __init__(self) -> None:
        self.mean_duration_s: dict[str, float] = {}
        self.heap_retime_countdown = HEAP_RETIME_EVERY


def _timings() -> _OperationTimings:
    return RUNTIME.operation_timings or RUNTIME.get("operation_timings", _OperationTimings)


def _want_heap(name: str, heap: bool | None, probe: MemoryProbe) -> bool:
    if heap is not None:
        return heap
    cost = probe.heap_cost_s
    timings = _timings()
    expected = timings.mean_duration_s.get(name)
    if expected is None:
        return cost <= CHEAP_HEAP_S
    if expected >= HEAP_COST_FACTOR * cost:
        return True
    # A leak verdict needs the heap where RSS misleads (pages reused across operations): read it
    # while cheap during an operation's first calls and while it is under suspicion.
    if not (RUNTIME.tracker or get_memory_tracker()).leak_detector.wants_heap(name):
        return False
    if cost <= HEAP_WATCH_MAX_S:
        return True
    # Too dear now; read it on one such call in HEAP_RETIME_EVERY all the same, or a cost that
    # has fallen again (the heap defragmented, the machine no longer busy) would never be seen.
    timings.heap_retime_countdown -= 1
    if timings.heap_retime_countdown > 0:
        return False
    timings.heap_retime_countdown = HEAP_RETIME_EVERY
    return True


def moving_mean(previous: float | None, value: float) -> float:
    """The mean duration after one more call (an operation's, a request's): recent calls weigh most."""
    return value if previous is None else 0.7 * previous + 0.3 * value


def _remember_duration(name: str, duration_s: float) -> None:
    mean_duration_s = _timings().mean_duration_s
    previous = mean_duration_s.get(name)
    if previous is None and len(mean_duration_s) >= _MAX_TRACKED_DURATIONS:
        mean_duration_s.clear()
    mean_duration_s[name] = moving_mean(previous, duration_s)


def _log_failure(where: str, exc: BaseException) -> None:
    """Log each distinct failure (where, and the kind of exception) once for the process."""
    if RUNTIME.first_time(f"operation failure: {where}: {type(exc).__qualname__}"):
        logger.error("reer_otel_memory: %s failed, operation not measured: %r", where, exc)


_explain_module: ModuleType | None = None


def _explain() -> ModuleType:
    """``profiling.explain``, imported on the first profiled function or block (it imports far
    more than a profiled call needs), then kept: a block's exit registers its lines every time."""
    global _explain_module
    if _explain_module is None:
        from . import explain

        _explain_module = explain
    return _explain_module


def _note_function(name: str, func: Callable[..., Any]) -> None:
    """Register the function's lines under the operation, for explanations' attribution."""
    try:
        _explain().note_function(name, func)
    except Exception as exc:
        _log_failure("registering the operation's code for explanations", exc)


def _note_block(name: str, frame: FrameType | None, first_line: int) -> None:
    """Register a ``memory_context`` block's lines, from its entry to its exit line."""
    if frame is None:
        return
    try:
        _explain().note_block(name, frame.f_code.co_filename, first_line, frame.f_lineno)
    except Exception as exc:
        _log_failure("registering the block's code for explanations", exc)


class OperationResult:
    """What one profiled operation measured (bytes and seconds); None where not measurable."""

    __slots__ = (
        "device_end", "device_peak", "device_start", "duration_s", "heap_delta", "leak_suspected", "level", "operation", "overlap",
        "rss_end", "rss_peak", "rss_start",
    )

    def __init__(self) -> None:
        self.operation = ""
        self.rss_start = 0
        self.rss_end = 0
        self.rss_peak: int | None = None
        self.heap_delta: int | None = None
        self.level: MemoryLevel | None = None
        self.duration_s = 0.0
        self.leak_suspected = False
        #: Other profiled operations in flight during this one (see ``reer.memory.overlap``);
        #: above 0, the RSS and heap figures include their memory too.
        self.overlap = 0
        #: Accelerator bytes in use at the start and end and the highest during the operation,
        #: summed over the devices read; None where no framework is read (or no SDK records).
        self.device_start: int | None = None
        self.device_end: int | None = None
        self.device_peak: int | None = None

    @property
    def device_delta(self) -> int | None:
        """Accelerator bytes the operation kept (end minus start); None where not read."""
        return None if self.device_start is None or self.device_end is None else self.device_end - self.device_start

    @property
    def rss_delta(self) -> int:
        return self.rss_end - self.rss_start

    @property
    def peak_growth(self) -> int | None:
        """Highest RSS above the start during the operation (>= 0)."""
        return None if self.rss_peak is None else max(0, self.rss_peak - self.rss_start)

    def __repr__(self) -> str:
        return (
            f"OperationResult(operation={self.operation!r}, rss_start={self.rss_start}, rss_end={self.rss_end}, "
            f"rss_delta={self.rss_delta}, rss_peak={self.rss_peak}, heap_delta={self.heap_delta}, "
            f"device_delta={self.device_delta}, level={self.level!s}, overlap={self.overlap}, duration_s={self.duration_s:.6f})"
        )


class _Operation(PeakWindow):
    """One running profiled operation: its span, start readings, and its own peak window.

    Being the peak window itself, and building an :class:`OperationResult` only where a caller
    reads it (``keep_result``), saves three objects per call on the hot path.
    """

    __slots__ = (
        "blocks_start", "context", "device_start", "device_window", "function", "heap_start", "metric_attributes", "name", "owns_span",
        "probe", "recorder", "result", "rss_start", "slot", "span", "started", "telemetry", "token",
    )
    device_window: DeviceWindow | None  # set by start(); finish() runs only after a successful start()

    def __init__(self, name: str, function: str | None, metric_attributes: Mapping[str, AttributeValue], keep_result: bool) -> None:
        self.name = name
        self.function = function
        self.metric_attributes = metric_attributes
        self.result: OperationResult | None = None
        if keep_result:
            self.result = OperationResult()
            self.result.operation = name  # named even if a measurement fails
        self.span: Span | None = None
        self.owns_span = False
        self.context: Context | None = None
        self.heap_start: int | None = None
        self.blocks_start: int | None = None
        self.device_start: int | None = None
        self.recorder: FlightRecorder | None = None
        self.slot = -1
        self.token: object | None = None  # set where _start(..., attach=True) made the span current

    def start(self, heap: bool | None, annotate_current: bool, attributes: Mapping[str, Any] | None) -> None:
        telemetry = self.telemetry = RUNTIME.telemetry or _telemetry.current()
        current = otel_context.get_current()
        self.parent = cast("PeakWindow | None", current.get(_OPERATION_KEY))  # only profiled calls set the key
        if annotate_current:
            span = trace.get_current_span(current)
        else:
            span = telemetry.tracer.start_span(self.name, current, attributes=attributes)
            self.owns_span = True
            current = trace.set_span_in_context(span, current)
        self.context = otel_context.set_value(_OPERATION_KEY, self, current)
        self.span = span
        probe = self.probe = RUNTIME.probe or process_probe()
        rss_start = self.rss_start = probe.open_window(self)
        try:
            # None (a length check) unless a framework with a device is imported.
            device_window, device_start = (RUNTIME.device_memory or device_memory()).begin()
            self.device_window = device_window
            if device_window is not None:
                self.device_start = device_start
            if heap is not False and _want_heap(self.name, heap, probe):
                reading = probe.heap_reading()
                if reading is not None:
                    self.heap_start, self.blocks_start = reading
            # Last: once the slot is taken nothing here can fail, so finish() always frees it.
            recorder = (RUNTIME.flight_recorder or recorder_holder()).recorder
            if recorder is not None:
                self.slot = recorder.operation_started(self.name, rss_start, self.device_start)
                self.recorder = recorder
        except BaseException:
            # finish() will not run: close the window, or the probe would keep it (and fold
            # every later high-water mark into it) for the life of the process.
            probe.end_peak(self, rss_start)
            raise
        self.started = time.perf_counter()

    def finish(self, exc: BaseException | None) -> None:
        span = self.span
        try:
            duration = time.perf_counter() - self.started
            name = self.name
            probe = self.probe
            heap_delta = blocks_delta = None
            heap_start = self.heap_start
            if heap_start is not None:
                reading = probe.heap_reading()
                if reading is not None:
                    heap_delta = reading[0] - heap_start
                    blocks_delta = reading[1] - self.blocks_start  # type: ignore[operator]  # read with the heap
            rss_end = probe.rss_bytes()
            peak = probe.end_peak(self, rss_end)
            overlap = self.overlap
            device_start = self.device_start
            device_end = device_peak = None
            if self.device_window is not None:
                device_end, device_peak = (RUNTIME.device_memory or device_memory()).end(self.device_window)
            level = (RUNTIME.config or get_config()).level_for(rss_end)
            rss_start = self.rss_start
            delta = rss_end - rss_start
            _remember_duration(name, duration)

            tracker = RUNTIME.tracker or get_memory_tracker()
            tracker.record_operation(name, rss_end, level)
            leak_detector = tracker.leak_detector
            raised = leak_detector.observe(
                name, delta, heap_delta, blocks_delta=blocks_delta, overlap=overlap,
                start=self, span=span,
            )
            suspected = leak_detector.is_suspected(name)

            result = self.result
            if result is not None:
                result.operation, result.rss_start, result.rss_end, result.rss_peak = name, rss_start, rss_end, peak
                result.heap_delta, result.level, result.duration_s, result.leak_suspected = heap_delta, level, duration, suspected
                result.device_start, result.device_end, result.device_peak = device_start, device_end, device_peak
                result.overlap = overlap

            if span is not None and span.is_recording():
                attributes = memory_attributes(rss_start, rss_end, level, overlap, peak, heap_delta, device_start, device_end, device_peak)
                attributes[names.ATTR_OPERATION] = name
                if self.function is not None:
                    attributes[names.ATTR_FUNCTION] = self.function
                if suspected:
                    attributes[names.ATTR_LEAK_SUSPECTED] = True
                if self.owns_span or not _annotated_by_another(self, span):
                    span.set_attributes(attributes)
                else:
                    span.add_event(names.EVENT_OPERATION, attributes)
                if raised:
                    span.add_event(
                        names.EVENT_LEAK_SUSPECTED,
                        {names.ATTR_OPERATION: name, names.ATTR_LEAK_BYTES_PER_CALL: leak_detector.bytes_per_call(name)},
                    )
                if exc is not None:
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            telemetry = self.telemetry
            if telemetry.metrics_recording():
                metric_attributes = self.metric_attributes
                telemetry.operation_duration.record(duration, metric_attributes)
                # An overlapped window's figures are the process's, not the operation's own.
                if not overlap:
                    telemetry.add_operation_net(name, delta)
                    if peak is not None:
                        telemetry.operation_peak.record(peak - rss_start if peak > rss_start else 0, metric_attributes)
        finally:
            if self.recorder is not None:
                self._leave_recorder()
            # Even if a measurement failed, the span must end, or it never reaches an exporter.
            if self.owns_span and span is not None:
                span.end()

    def _leave_recorder(self) -> None:
        recorder, self.recorder = self.recorder, None
        try:
            recorder.operation_finished(self.slot)  # type: ignore[union-attr]
        except Exception as exc:  # in a finally block: must not replace what is being raised
            _log_failure("freeing the flight recorder slot", exc)


def memory_attributes(
    rss_start: int, rss_end: int, level: MemoryLevel, overlap: int, peak: int | None, heap_delta: int | None,
    device_start: int | None, device_end: int | None, device_peak: int | None,
) -> dict[str, AttributeValue]:
    """The memory attributes of one measured window (an operation's, a request's), those it has."""
    attributes: dict[str, AttributeValue] = {
        names.ATTR_RSS_START: rss_start,
        names.ATTR_RSS_END: rss_end,
        names.ATTR_RSS_DELTA: rss_end - rss_start,
        names.ATTR_LEVEL: level.value,
        names.ATTR_OVERLAP: overlap,
    }
    if peak is not None:
        attributes[names.ATTR_RSS_PEAK] = peak
    if heap_delta is not None:
        attributes[names.ATTR_HEAP_DELTA] = heap_delta
    if device_start is not None and device_end is not None:
        attributes[names.ATTR_DEVICE_START] = device_start
        attributes[names.ATTR_DEVICE_END] = device_end
        attributes[names.ATTR_DEVICE_DELTA] = device_end - device_start
        if device_peak is not None:
            attributes[names.ATTR_DEVICE_PEAK] = device_peak
    return attributes


def _annotated_by_another(operation: _Operation, span: Span) -> bool:
    """Whether another annotating operation has put, or will put, its record on ``span``: one
    that enclosing this one annotates the same span (it ends later), or one that ended before.

    A span carries one operation's record in its attributes, never a mix of two (attributes
    cannot be removed, and not every record sets every attribute); the others go as events.
    """
    enclosing = operation.parent
    while enclosing is not None:
        if getattr(enclosing, "span", None) is span:
            return True
        enclosing = enclosing.parent
    attributes = getattr(span, "attributes", None)
    return attributes is not None and names.ATTR_RSS_DELTA in attributes


def _recording() -> bool:
    """Whether an SDK records spans; False (measure lightly) if even that cannot be told."""
    try:
        return bool((RUNTIME.telemetry or _telemetry.current()).recording())
    except Exception as exc:  # instrumentation must never break the host's call
        _log_failure("looking up the telemetry", exc)
        return False


def _attach_context(ctx: Context | None) -> object | None:
    """Make ``ctx`` current; the token to detach it with (None: nothing attached)."""
    if ctx is None:
        return None
    try:
        return otel_context.attach(ctx)
    except Exception as exc:
        _log_failure("attaching the operation's context", exc)
        return None


def _detach(token: object | None) -> None:
    if token is None:
        return
    try:
        otel_context.detach(token)  # type: ignore[arg-type]
    except Exception as exc:
        _log_failure("detaching the operation's context", exc)


class _Spec:
    """What every call of one profiled function or block shares: its name and options, and
    (decorated functions only) which calls are measured without an SDK."""

    __slots__ = ("annotate_current", "attributes", "function", "heap", "metric_attributes", "name", "sampler")

    def __init__(
        self, name: str, function: str | None, heap: bool | None, annotate_current: bool, attributes: Mapping[str, Any] | None,
        sampler: _LightSampler | None,
    ) -> None:
        self.name = name
        self.function = function
        self.metric_attributes = _telemetry.operation_attributes(name)
        self.heap = heap
        self.annotate_current = annotate_current
        self.attributes = attributes
        self.sampler = sampler


def _start(spec: _Spec, keep_result: bool, attach: bool) -> _Operation | _Light | None:
    """Start one call: a span and every reading with an SDK, two RSS reads without (None: not
    measured, or starting failed, logged once). ``attach``: make the call's context current until
    :func:`_finish` (calls and blocks; generators attach it around each step instead)."""
    call: _Operation | _Light | None
    if _recording():
        call = _start_operation(spec, keep_result)
        if call is None:
            return None
    else:
        sampler = spec.sampler
        if sampler is not None and sampler.skip():
            return None
        call = _Light(spec.name, sampler, keep_result)
        call.start()
    if attach:
        call.token = _attach_context(call.context)
    return call


def _start_operation(spec: _Spec, keep_result: bool) -> _Operation | None:
    """Start a call with a span (a non-recording one without an SDK) and every reading; None
    where that failed (logged once). Nothing is attached."""
    try:
        operation = _Operation(spec.name, spec.function, spec.metric_attributes, keep_result)
        operation.start(spec.heap, spec.annotate_current, spec.attributes)
    except Exception as exc:  # instrumentation must never break the host's call
        _log_failure("starting a profiled operation", exc)
        return None
    return operation


def _finish(call: _Operation | _Light | None, exc: BaseException | None) -> None:
    """Detach what :func:`_start` attached, then record the call. Never raises."""
    if call is None:
        return
    token, call.token = call.token, None
    _detach(token)
    try:
        call.finish(exc)
        if EXPLANATION_WINDOW.settling:
            EXPLANATION_WINDOW.call_ended(call.name)
    except Exception as failure:
        _log_failure("finishing a profiled operation", failure)


class _LightSampler:
    """Which calls of one decorated function are measured when no SDK is configured.

    Nothing leaves the process from such a call but the tracker ring and leak detection, so a
    fast operation is measured on one call in :data:`LIGHT_SAMPLE_EVERY`: the two RSS reads
    would otherwise cost more than the call (docs/performance.md, "Decisions"). Each measured call still
    reports its own start and end, so leak detection judges true per-call deltas, only on fewer
    calls. Operations averaging :data:`LIGHT_EVERY_CALL_S` or more, and every call while a
    flight recorder is configured (it must see every operation in flight), are always measured.
    Counting is not locked: a lost update under a race only shifts which call is measured.
    """

    __slots__ = ("countdown", "mean_s")

    def __init__(self) -> None:
        self.countdown = 0  # calls still to skip; the first call is measured
        self.mean_s = 0.0  # smoothed duration of the measured calls

    def skip(self) -> bool:
        """True when this call is not measured."""
        countdown = self.countdown
        if countdown <= 0 or self.mean_s >= LIGHT_EVERY_CALL_S:
            self.countdown = LIGHT_SAMPLE_EVERY - 1
            return False
        if (RUNTIME.flight_recorder or recorder_holder()).recorder is not None:
            return False
        self.countdown = countdown - 1
        return True

    def measured(self, duration_s: float) -> None:
        mean = self.mean_s
        self.mean_s = duration_s if mean == 0.0 else 0.7 * mean + 0.3 * duration_s


class _Light(PeakWindow):
    """One call measured without an SDK: two RSS reads that keep the tracker, leak detection and
    the flight recorder fed, and a result where the caller reads one (``memory_context``)."""

    __slots__ = ("context", "name", "result", "rss_start", "sampler", "slot", "started", "token")
    heap_start = blocks_start = None  # not read without an SDK (see leak.StartReadings)

    def __init__(self, name: str, sampler: _LightSampler | None, keep_result: bool) -> None:
        super().__init__()
        self.name = name
        self.sampler = sampler
        self.result: OperationResult | None = OperationResult() if keep_result else None
        self.rss_start = 0  # 0: RSS could not be read, nothing is recorded
        self.slot = -1
        self.token: object | None = None
        self.context: Context | None = None

    def start(self) -> None:
        try:
            probe = RUNTIME.probe or process_probe()
            current = otel_context.get_current()
            parent = current.get(_OPERATION_KEY)
            self.parent = parent if isinstance(parent, PeakWindow) else None
            self.context = otel_context.set_value(_OPERATION_KEY, self, current)
            probe.open_flight(self)
            self.rss_start = probe.rss_bytes()
        except Exception as exc:  # instrumentation must never break the host's call
            _log_failure("reading RSS", exc)
        else:
            try:
                recorder = (RUNTIME.flight_recorder or recorder_holder()).recorder
                if recorder is not None:
                    self.slot = recorder.operation_started(self.name, self.rss_start)
            except Exception as exc:
                _log_failure("writing the flight recorder", exc)
        self.started = time.perf_counter()

    def finish(self, exc: BaseException | None) -> None:
        duration = time.perf_counter() - self.started
        name, rss_start = self.name, self.rss_start
        if self.sampler is not None:
            self.sampler.measured(duration)
        if self.slot >= 0:
            try:
                (RUNTIME.flight_recorder or recorder_holder()).recorder.operation_finished(self.slot)  # type: ignore[union-attr]
            except Exception as failure:
                _log_failure("freeing the flight recorder slot", failure)
        probe = RUNTIME.probe or process_probe()
        overlap = probe.close_flight(self)
        rss_end = probe.rss_bytes() if rss_start else 0
        result = self.result
        if result is not None:
            # Without an SDK a block still gets its result: code written against it must not
            # break where no SDK is configured. Peak and heap are not measured here.
            result.operation, result.rss_start, result.rss_end = name, rss_start, rss_end or rss_start
            result.overlap, result.duration_s = overlap, duration
        if not rss_start:
            return
        level = (RUNTIME.config or get_config()).level_for(rss_end)
        if result is not None:
            result.level = level
        tracker = RUNTIME.tracker or get_memory_tracker()
        tracker.record_operation(name, rss_end, level)
        tracker.leak_detector.observe(
            name, rss_end - rss_start, overlap=overlap, start=self,
        )


def _check_options(where: str, heap: object, annotate_current: object, attributes: object) -> None:
    if heap is not None and not isinstance(heap, bool):
        raise InvalidArgumentError(f"{where}(heap={heap!r}): expected True, False or None")
    if not isinstance(annotate_current, bool):
        raise InvalidArgumentError(f"{where}(annotate_current={annotate_current!r}): expected True or False")
    if attributes is not None and not isinstance(attributes, Mapping):
        raise InvalidArgumentError(
            f"{where}(attributes={attributes!r}): expected a mapping of span attribute names to values, or None"
        )


def _wrap_async_generator(func: Callable[..., Any], spec: _Spec) -> Callable[..., Any]:
    @functools.wraps(func)
    async def async_gen_wrapper(*args: Any, **kwargs: Any) -> Any:
        # asend/athrow must reach the wrapped generator (an ``async for`` would drop them).
        call = _start(spec, False, False)
        agen = func(*args, **kwargs)
        ctx = call.context if call is not None else None
        to_send: Any = None
        to_throw: BaseException | None = None
        failure: BaseException | None = None
        # The item goes out through a list, never a local: while the consumer has it, the
        # wrapper holds no reference to it (a stream's last chunk would otherwise stay alive).
        items: list[Any] = []
        try:
            while True:
                token = _attach_context(ctx)
                try:
                    if to_throw is not None:
                        thrown, to_throw = to_throw, None
                        items.append(await agen.athrow(thrown))
                    else:
                        items.append(await agen.asend(to_send))
                except StopAsyncIteration:
                    return
                finally:
                    _detach(token)
                try:
                    to_send = yield items.pop()
                except GeneratorExit:
                    await agen.aclose()
                    raise
                except BaseException as thrown:  # delivered into the wrapped generator
                    to_throw = thrown
        except GeneratorExit:
            raise
        except BaseException as exc:
            failure = exc
            raise
        finally:
            _finish(call, failure)

    return async_gen_wrapper


def _wrap_generator(func: Callable[..., Any], spec: _Spec) -> Callable[..., Any]:
    @functools.wraps(func)
    def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
        call = _start(spec, False, False)
        if call is None:
            return (yield from func(*args, **kwargs))
        gen = func(*args, **kwargs)
        ctx = call.context
        to_send: Any = None
        to_throw: BaseException | None = None
        failure: BaseException | None = None
        # The item goes out through a list, never a local: while the consumer has it, the
        # wrapper holds no reference to it (a stream's last chunk would otherwise stay alive).
        items: list[Any] = []
        try:
            while True:
                token = _attach_context(ctx)
                try:
                    if to_throw is not None:
                        thrown, to_throw = to_throw, None
                        items.append(gen.throw(thrown))
                    else:
                        items.append(gen.send(to_send))
                except StopIteration as stop:
                    return stop.value
                finally:
                    _detach(token)
                try:
                    to_send = yield items.pop()
                except GeneratorExit:
                    gen.close()
                    raise
                except BaseException as thrown:
                    to_throw = thrown
        except GeneratorExit:
            raise
        except BaseException as exc:
            failure = exc
            raise
        finally:
            _finish(call, failure)

    return gen_wrapper


def _wrap_coroutine_function(func: Callable[..., Any], spec: _Spec) -> Callable[..., Any]:
    @functools.wraps(func)
    async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
        call = _start(spec, False, True)
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            _finish(call, exc)
            raise
        _finish(call, None)
        return result

    return async_wrapper


def _wrap_function(func: Callable[..., Any], spec: _Spec) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = _start(spec, False, True)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            _finish(call, exc)
            raise
        _finish(call, None)
        return result

    wrapper.__reer_memory_profiled__ = True  # type: ignore[attr-defined]
    return wrapper


@overload
def memory_profile(operation_name: F) -> F: ...
@overload
def memory_profile(
    operation_name: str | None = None,
    *,
    heap: bool | None = None,
    annotate_current: bool = False,
    attributes: Mapping[str, Any] | None = None,
) -> Callable[[F], F]: ...


def memory_profile(
    operation_name: str | Callable[..., Any] | None = None,
    *,
    heap: bool | None = None,
    annotate_current: bool = False,
    attributes: Mapping[str, Any] | None = None,
) -> Any:
    """Profile every call of a function, coroutine function, generator or async generator.

    Each call becomes one span named ``operation_name`` (default: the function's module and
    qualified name) carrying the ``reer.memory.*`` attributes; an exception is recorded on the
    span and re-raised unchanged. For coroutines the span covers the awaits, for generators
    the whole iteration.

    ``heap``: measure the allocator heap delta always (True), never (False) or when
    affordable (None, see the module docs). ``annotate_current``: put the attributes on the
    current span (say, a framework's server span) instead of opening a child span.
    ``attributes``: extra span attributes.

    With no OpenTelemetry SDK configured there is no span: the call feeds the tracker and leak
    detection only, and a fast function (under :data:`LIGHT_EVERY_CALL_S` a call) is measured on
    one call in :data:`LIGHT_SAMPLE_EVERY`.

        @memory_profile(operation_name="data_processing")
        def process_data(data):
            return [x * 2 for x in data]
    """
    if callable(operation_name):
        return memory_profile()(operation_name)
    if operation_name is not None and (not isinstance(operation_name, str) or not operation_name):
        raise InvalidArgumentError(f"memory_profile(operation_name={operation_name!r}): expected a non-empty string or None")
    _check_options("memory_profile", heap, annotate_current, attributes)
    static_attributes = dict(attributes) if attributes else None

    def decorate(func: F) -> F:
        function = f"{getattr(func, '__module__', None) or '?'}.{getattr(func, '__qualname__', repr(func))}"
        spec = _Spec(operation_name or function, function, heap, annotate_current, static_attributes, _LightSampler())
        _note_function(spec.name, func)
        if inspect.isasyncgenfunction(func):
            return _wrap_async_generator(func, spec)  # type: ignore[return-value]
        if inspect.isgeneratorfunction(func):
            return _wrap_generator(func, spec)  # type: ignore[return-value]
        if inspect.iscoroutinefunction(func):
            return _wrap_coroutine_function(func, spec)  # type: ignore[return-value]
        return _wrap_function(func, spec)  # type: ignore[return-value]

    return decorate


class memory_context:  # noqa: N801 - used like a function, as in contextlib
    """Profile a block: ``with memory_context("name") as op:`` or ``async with``.

    Produces one span like :func:`memory_profile`; after the block ``op.result`` holds the
    measurements. ``op.set_attribute(key, value)`` adds attributes to the span.
    """

    __slots__ = ("_call", "_first_line", "_spec", "result")

    def __init__(
        self,
        name: str,
        *,
        heap: bool | None = None,
        annotate_current: bool = False,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"memory_context(name={name!r}): expected a non-empty operation name")
        _check_options("memory_context", heap, annotate_current, attributes)
        # A block's result is read by its caller: every block is measured, none sampled.
        self._spec = _Spec(name, None, heap, annotate_current, dict(attributes) if attributes else None, None)
        self._call: _Operation | _Light | None = None
        self._first_line = 0
        self.result: OperationResult | None = None

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def span(self) -> Span:
        """The operation's span (a non-recording one when no SDK is configured)."""
        call = self._call
        if isinstance(call, _Operation) and call.span is not None:
            return call.span
        return trace.INVALID_SPAN

    def set_attribute(self, key: str, value: Any) -> None:
        self.span.set_attribute(key, value)

    def __enter__(self) -> memory_context:
        return self._enter(sys._getframe(1))

    def _enter(self, frame: FrameType | None) -> memory_context:
        self._first_line = frame.f_lineno if frame is not None else 0
        self._call = _start(self._spec, True, True)
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._exit(exc, sys._getframe(1))

    def _exit(self, exc: BaseException | None, frame: FrameType | None) -> None:
        _note_block(self._spec.name, frame, self._first_line)
        call, self._call = self._call, None
        _finish(call, exc)
        if call is not None:
            self.result = call.result

    async def __aenter__(self) -> memory_context:
        return self._enter(sys._getframe(1))

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._exit(exc, sys._getframe(1))
