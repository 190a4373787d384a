"""MemoryProfiler: model loads as profiled operations, per-model statistics and recommendations.

Each load is one profiled operation named ``model_load`` with ``reer.model.name`` and an
estimated ``reer.model.size`` (:mod:`reer_otel_memory.ml.sizing`; numpy and torch are never
imported for it). Per model the profiler keeps the last load's figures, load and unload counts
and the last use; it holds models weakly where the type allows, so a model the program dropped
stops counting once collected (other types need :meth:`MemoryProfiler.record_model_unload`).
:meth:`MemoryProfiler.get_model_memory_recommendations` turns these into advice, largest
estimated savings first. The metrics are listed in docs/telemetry.md.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry.metrics import CallbackOptions, Observation

from .. import _names as names
from .. import _telemetry
from .._runtime import RUNTIME
from ..config import MB, checked_number, get_config
from ..errors import InvalidArgumentError, NotFoundError
from ..profiling import operations as _profile
from ..profiling.operations import OperationResult
from ..profiling.probe import process_probe
from .sizing import SizeEstimate, estimate_size

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_MODELS = 256
#: Recommendation defaults.
DEFAULT_PEAK_RATIO = 2.0
DEFAULT_IDLE_AFTER_S = 900.0
DEFAULT_MIN_SAVINGS_MB = 16.0
DEFAULT_BUDGET_SHARE = 0.5


def _check_model_name(where: str, model_name: object) -> str:
    if not isinstance(model_name, str) or not model_name:
        raise InvalidArgumentError(f"{where}(model_name={model_name!r}): expected a non-empty string naming the model")
    return model_name


def run_profiled(
    operation_name: str,
    attributes: Mapping[str, Any],
    func: Callable[[], T],
    extra_attributes: Callable[[T], Mapping[str, Any]] | None = None,
) -> tuple[T, OperationResult]:
    """Run ``func()`` as a profiled operation (span, metrics, tracker); return its value and measurements.

    ``extra_attributes(value)`` runs after the measurements are taken and before the span
    ends, so its cost (say, a size estimate) is not counted in the operation.
    """
    spec = _profile._Spec(operation_name, None, True, False, attributes, None)
    operation = _profile._start_operation(spec, keep_result=True)
    if operation is None:  # the failure is logged once by _profile; still measure for the caller
        result = OperationResult()
        result.operation = operation_name
        result.rss_start = process_probe().rss_bytes()
        started = time.perf_counter()
        value = func()
        result.duration_s = time.perf_counter() - started
        result.rss_end = process_probe().rss_bytes()
        return value, result
    context: otel_context.Context | None = operation.context
    token = otel_context.attach(context) if context is not None else None
    try:
        value = func()
    except BaseException as exc:
        if token is not None:
            otel_context.detach(token)
        _profile._finish(operation, exc)
        raise
    if token is not None:
        otel_context.detach(token)
    span, owns_span = operation.span, operation.owns_span
    operation.owns_span = False  # ended below, once the extra attributes are on it
    _profile._finish(operation, None)
    try:
        if extra_attributes is not None:
            extra = extra_attributes(value)
            if extra and span is not None and span.is_recording():
                span.set_attributes(dict(extra))
    finally:
        if owns_span and span is not None:
            span.end()
    assert operation.result is not None  # kept: _start_operation(..., keep_result=True)
    return value, operation.result


@dataclass
class ModelStats:
    """What the profiler knows about one model (bytes, seconds; None where not measurable)."""

    name: str
    loads: int = 0
    unloads: int = 0
    loaded: bool = False
    loaded_at: float = 0.0  # wall-clock time of the last load
    load_rss_delta_bytes: int = 0
    load_peak_growth_bytes: int | None = None
    load_heap_delta_bytes: int | None = None
    #: Accelerator bytes the load kept and the highest during it (summed over devices); None
    #: where no accelerator framework with a device was imported when the load began.
    load_device_delta_bytes: int | None = None
    load_device_peak_bytes: int | None = None
    load_duration_s: float = 0.0
    size_bytes: int = 0
    float64_bytes: int = 0
    buffers: int = 0
    size_truncated: bool = False
    usage_tracked: bool = False
    last_used_monotonic: float = 0.0
    last_unload_freed_bytes: int | None = None
    model_ref: weakref.ReferenceType[Any] | None = None

    def is_loaded(self) -> bool:
        if self.loaded and self.model_ref is not None and self.model_ref() is None:
            self.loaded = False
        return self.loaded

    @property
    def retained_bytes(self) -> int:
        """What the loaded model keeps: its size estimate, or its load's RSS growth if larger."""
        return max(self.size_bytes, self.load_rss_delta_bytes, 0)

    def as_dict(self, now_monotonic: float) -> dict[str, Any]:
        return {
            "model": self.name,
            "loaded": self.is_loaded(),
            "loads": self.loads,
            "unloads": self.unloads,
            "loaded_at": self.loaded_at,
            "load_rss_delta_bytes": self.load_rss_delta_bytes,
            "load_peak_growth_bytes": self.load_peak_growth_bytes,
            "load_heap_delta_bytes": self.load_heap_delta_bytes,
            "load_device_delta_bytes": self.load_device_delta_bytes,
            "load_device_peak_bytes": self.load_device_peak_bytes,
            "load_duration_s": self.load_duration_s,
            "size_bytes": self.size_bytes,
            "size_mb": self.size_bytes / MB,
            "size_truncated": self.size_truncated,
            "float64_bytes": self.float64_bytes,
            "buffers": self.buffers,
            "retained_bytes": self.retained_bytes,
            "usage_tracked": self.usage_tracked,
            "idle_s": (now_monotonic - self.last_used_monotonic) if self.usage_tracked else None,
            "last_unload_freed_bytes": self.last_unload_freed_bytes,
        }


class MemoryProfiler:
    """Profiles model loads and keeps bounded per-model statistics; see the module docs."""

    def __init__(self, max_models: int = DEFAULT_MAX_MODELS, max_size_objects: int = 100_000) -> None:
        checked_number(max_models, 1, whole=True, where="MemoryProfiler", name="max_models", expected="expected a positive integer")
        self.max_models = max_models
        self.max_size_objects = max_size_objects
        self._lock = threading.Lock()
        self._models: dict[str, ModelStats] = {}
        _profilers.add(self)
        RUNTIME.after_fork_call(self)
        _install_gauges()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it when the process forked

    # --- recording -----------------------------------------------------------------------------

    def profile_model_loading(self, model_name: str, load_model_func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``load_model_func(*args, **kwargs)`` as a ``model_load`` operation; return the model.

        An exception from the loader is recorded on the span and re-raised unchanged.
        """
        _check_model_name("profile_model_loading", model_name)
        if not callable(load_model_func):
            raise InvalidArgumentError(f"profile_model_loading(load_model_func={load_model_func!r}): expected a callable returning the model")
        estimate: list[SizeEstimate] = []

        def size_attributes(model: object) -> Mapping[str, Any]:
            estimate.append(estimate_size(model, self.max_size_objects))
            return {names.ATTR_MODEL_SIZE: estimate[0].bytes}

        model, result = run_profiled(
            names.OPERATION_MODEL_LOAD,
            {names.ATTR_MODEL_NAME: model_name},
            lambda: load_model_func(*args, **kwargs),
            size_attributes,
        )
        size = estimate[0] if estimate else estimate_size(model, self.max_size_objects)
        try:
            model_ref: weakref.ReferenceType[Any] | None = weakref.ref(model)
        except TypeError:
            model_ref = None
        with self._lock:
            stats = self._models.get(model_name)
            if stats is None:
                self._evict_one()
                stats = self._models[model_name] = ModelStats(model_name)
            stats.loads += 1
            stats.loaded = True
            stats.loaded_at = time.time()
            stats.last_used_monotonic = time.monotonic()
            stats.load_rss_delta_bytes = result.rss_delta
            stats.load_peak_growth_bytes = result.peak_growth
            stats.load_heap_delta_bytes = result.heap_delta
            stats.load_device_delta_bytes = result.device_delta
            stats.load_device_peak_bytes = result.device_peak
            stats.load_duration_s = result.duration_s
            stats.size_bytes = size.bytes
            stats.float64_bytes = size.float64_bytes
            stats.buffers = size.buffers
            stats.size_truncated = size.truncated
            stats.model_ref = model_ref
        try:
            _telemetry.current().counter(names.METRIC_MODEL_LOADS).add(1, {names.LABEL_MODEL: model_name})
        except Exception as exc:  # a metrics failure must not fail the load
            logger.debug("could not count the load of %r: %r", model_name, exc)
        return model

    def _evict_one(self) -> None:
        """Make room for one more model (caller holds the lock): drop an unloaded one, else the oldest."""
        if len(self._models) < self.max_models:
            return
        candidates = [s for s in self._models.values() if not s.is_loaded()] or list(self._models.values())
        oldest = min(candidates, key=lambda s: s.loaded_at)
        del self._models[oldest.name]

    def record_model_use(self, model_name: str, now_monotonic: float | None = None) -> None:
        """Note that ``model_name`` was used at ``now_monotonic`` (default: now), for the ``idle`` recommendation."""
        stats = self._models.get(model_name)
        if stats is not None:
            stats.last_used_monotonic = time.monotonic() if now_monotonic is None else now_monotonic
            stats.usage_tracked = True

    def track_usage(self, model_name: str) -> None:
        """Start tracking use of ``model_name`` (its idle time counts from its last load or use)."""
        stats = self._models.get(model_name)
        if stats is not None:
            stats.usage_tracked = True

    def record_model_unload(self, model_name: str, freed_bytes: int | None = None) -> None:
        """Note that ``model_name`` was unloaded, having released ``freed_bytes`` of RSS if measured."""
        with self._lock:
            stats = self._models.get(model_name)
            if stats is None:
                return
            stats.loaded = False
            stats.unloads += 1
            stats.model_ref = None
            stats.last_unload_freed_bytes = freed_bytes

    def forget_model(self, model_name: str) -> bool:
        """Drop every statistic about ``model_name``; False if it was unknown."""
        with self._lock:
            return self._models.pop(model_name, None) is not None

    def clear(self) -> None:
        """Forget every model."""
        with self._lock:
            self._models.clear()

    # --- reading -------------------------------------------------------------------------------

    def loaded_models(self) -> list[ModelStats]:
        with self._lock:
            return [s for s in self._models.values() if s.is_loaded()]

    def get_model_stats(self, model_name: str | None = None) -> dict[str, Any]:
        """Statistics of every model by name, or of ``model_name`` alone (:class:`NotFoundError`, a KeyError, if unknown)."""
        now = time.monotonic()
        with self._lock:
            if model_name is not None:
                stats = self._models.get(model_name)
                if stats is None:
                    raise NotFoundError(f"get_model_stats(model_name={model_name!r}): no load of that model was profiled (known: {sorted(self._models)})")
                return stats.as_dict(now)
            return {name: stats.as_dict(now) for name, stats in self._models.items()}

    def get_model_memory_recommendations(
        self,
        *,
        peak_ratio: float = DEFAULT_PEAK_RATIO,
        idle_after_s: float = DEFAULT_IDLE_AFTER_S,
        min_savings_mb: float = DEFAULT_MIN_SAVINGS_MB,
        budget_share: float = DEFAULT_BUDGET_SHARE,
        budget_bytes: int | None = None,
    ) -> list[dict[str, Any]]:
        """Concrete advice drawn from the measured loads, largest estimated savings first.

        ``budget_bytes`` defaults to the lower of the critical threshold and the effective
        memory limit. Each advice is a dict with ``model``, ``kind``, ``message`` and
        ``estimated_savings_bytes``; the kinds:

        * ``load_peak``: loading peaked at ``peak_ratio`` times or more what the model retains;
          loading in place (memory-mapped weights) saves the transient copy.
        * ``float64``: the model holds float64 arrays; float32 halves them.
        * ``idle``: a model whose use is tracked has not been used for ``idle_after_s``;
          unloading it (``LazyModelLoader.unload()``) frees what it retains.
        * ``models_vs_limit`` (``model`` None): the loaded models together retain more than
          ``budget_share`` of ``budget_bytes``.
        """
        _check_number("peak_ratio", peak_ratio, minimum=1.0)
        _check_number("idle_after_s", idle_after_s, minimum=0.0)
        _check_number("min_savings_mb", min_savings_mb, minimum=0.0)
        _check_number("budget_share", budget_share, minimum=0.0, exclusive=True)
        if budget_bytes is None:
            config = get_config()
            budget_bytes = min(config.critical_bytes, config.limit.bytes)
        else:
            _check_number("budget_bytes", budget_bytes, minimum=0.0, exclusive=True)
        min_savings = int(min_savings_mb * MB)
        now = time.monotonic()
        with self._lock:
            models = list(self._models.values())
        loaded = [s for s in models if s.is_loaded()]
        advice: list[dict[str, Any]] = []
        for stats in loaded:
            advice.extend(_model_advice(stats, now, peak_ratio, idle_after_s, min_savings))
        advice.extend(_models_vs_limit_advice(loaded, budget_share, budget_bytes, min_savings))
        advice.sort(key=lambda a: a["estimated_savings_bytes"], reverse=True)
        return advice


def _check_number(name: str, value: object, minimum: float, exclusive: bool = False) -> None:
    bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
    checked_number(
        value, minimum, math.inf, low_inclusive=not exclusive, high_inclusive=False,
        where="get_model_memory_recommendations", name=name, expected=f"expected a finite number {bound}",
    )


def _advice(model: str | None, kind: str, message: str, savings: int) -> dict[str, Any]:
    return {"model": model, "kind": kind, "message": message, "estimated_savings_bytes": int(savings), "estimated_savings_mb": savings / MB}


def _model_advice(stats: ModelStats, now: float, peak_ratio: float, idle_after_s: float, min_savings: int) -> list[dict[str, Any]]:
    """The ``load_peak``, ``float64`` and ``idle`` advice for one loaded model."""
    advice = []
    retained = stats.retained_bytes
    peak = stats.load_peak_growth_bytes
    if peak is not None and peak >= peak_ratio * max(retained, 1) and peak - retained >= min_savings:
        advice.append(_advice(
            stats.name,
            "load_peak",
            f"Loading {stats.name!r} raised RSS by {peak / MB:.1f} MB at its peak but the model retains "
            f"{retained / MB:.1f} MB: load the weights in place (memory-mapped, e.g. safetensors, "
            f"torch.load(mmap=True), numpy.load(mmap_mode='r')) instead of reading then copying them.",
            peak - retained,
        ))
    if stats.float64_bytes // 2 >= min_savings:
        advice.append(_advice(
            stats.name,
            "float64",
            f"{stats.name!r} holds {stats.float64_bytes / MB:.1f} MB of float64 arrays: float32 halves them "
            f"(MemoryOptimizer.optimize_numpy_arrays(..., float_rtol=...) or model.float()).",
            stats.float64_bytes // 2,
        ))
    if stats.usage_tracked and now - stats.last_used_monotonic >= idle_after_s and retained >= min_savings:
        advice.append(_advice(
            stats.name,
            "idle",
            f"{stats.name!r} has not been used for {now - stats.last_used_monotonic:.0f} s and retains "
            f"{retained / MB:.1f} MB: unload it (LazyModelLoader.unload(), or an idle_timeout_s) until it is needed.",
            retained,
        ))
    return advice


def _models_vs_limit_advice(loaded: list[ModelStats], budget_share: float, budget_bytes: float, min_savings: int) -> list[dict[str, Any]]:
    """The ``models_vs_limit`` advice, when the loaded models together retain too much of the budget."""
    total = sum(s.retained_bytes for s in loaded)
    allowed = budget_share * budget_bytes
    if not (loaded and total > allowed and total - allowed >= min_savings):
        return []
    largest = sorted(loaded, key=lambda s: s.retained_bytes, reverse=True)[:3]
    listing = ", ".join(f"{s.name!r} {s.retained_bytes / MB:.1f} MB" for s in largest)
    return [_advice(
        None,
        "models_vs_limit",
        f"{len(loaded)} loaded models retain {total / MB:.1f} MB, {total / budget_bytes:.0%} of the "
        f"{budget_bytes / MB:.0f} MB memory budget (largest: {listing}): load them lazily "
        f"(LazyModelLoader) and unload the idle ones.",
        int(total - allowed),
    )]


# --- metrics -----------------------------------------------------------------------------------

# The live instances the gauges describe, held weakly: not process state a reset could forget,
# but objects the user's code made and still holds.
_profilers: weakref.WeakSet[MemoryProfiler] = weakref.WeakSet()


def _observe_model_sizes(options: CallbackOptions) -> Iterable[Observation]:
    observations = []
    for profiler in list(_profilers):
        for stats in profiler.loaded_models():
            observations.append(Observation(stats.size_bytes, {names.LABEL_MODEL: stats.name}))
    return observations


def _register_gauges(telemetry: _telemetry.Telemetry) -> None:
    telemetry.observable_gauge(names.METRIC_MODEL_SIZE, _observe_model_sizes)


def _install_gauges() -> None:
    """Register the model gauges on the Telemetry in force and every later one."""
    _telemetry.register_on_every_telemetry("ml.profiler", _register_gauges)


def get_memory_profiler() -> MemoryProfiler:
    """The process-wide profiler that :class:`~reer_otel_memory.LazyModelLoader` reports to by default."""
    return RUNTIME.get("ml_profiler", MemoryProfiler)
