"""reer-otel-memory: memory profiling, monitoring and alerting as OpenTelemetry spans and metrics.

    from reer_otel_memory import memory_profile, memory_context

    @memory_profile(operation_name="data_processing")
    def process_data(data):
        return [x * 2 for x in data]

    with memory_context("critical_operation"):
        result = expensive_computation()

Each profiled operation becomes a span with ``reer.memory.*`` attributes and feeds the
``reer.memory.operation.*`` metrics; see README.md for monitoring, Prometheus and Grafana.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__
from .config import (
    MemoryConfig,
    MemoryLimit,
    effective_memory_limit,
    get_config,
    load_config,
    set_memory_limit,
    setup_memory_limits,
)
from .errors import ConfigurationError, InvalidArgumentError, MalformedLineError, NotFoundError, ReerMemoryError, TraceStoreError
from .levels import MemoryLevel
from .profiling.leak import LeakDetector, LeakSuspect
from .profiling.operations import OperationResult, memory_context, memory_profile
from .profiling.probe import MemoryProbe
from .profiling.tracker import MemorySnapshot, MemoryTracker, get_memory_tracker

if TYPE_CHECKING:
    # What the lazily loaded names are, for type checkers: at run time each loads on first use.
    from .export.endpoint import start_prometheus_exporter
    from .instrumentation import MemoryInstrumentor
    from .ml.lazy import LazyModelLoader
    from .ml.optimizer import MemoryOptimizer
    from .ml.profiler import MemoryProfiler, get_memory_profiler
    from .ml.resources import MemoryResourceManager, get_resource_manager
    from .monitoring.cleanup import CleanupResult, register_cleanup_hook, run_cleanup, unregister_cleanup_hook
    from .monitoring.emergency import remove_emergency_memory_handler, setup_emergency_memory_handler
    from .monitoring.monitor import MemoryMonitor, get_memory_monitor, start_memory_monitoring, stop_memory_monitoring
    from .profiling.explain import AllocationSite, ExplainUnavailableError, MemoryExplanation, explain_memory
    from .trace_store import REERTraceStore
    from .trace_store.jsonl import StreamingJSONLReader

    #: The process-wide probe (opened on first use).
    PROBE: MemoryProbe
    #: The default monitor (:func:`get_memory_monitor`).
    _memory_monitor: MemoryMonitor

# Heavier parts load on first use, so importing the package stays cheap for the decorator.
_LAZY = {
    "PROBE": "profiling.probe",
    "MemoryMonitor": "monitoring.monitor",
    "start_memory_monitoring": "monitoring.monitor",
    "stop_memory_monitoring": "monitoring.monitor",
    "get_memory_monitor": "monitoring.monitor",
    "_memory_monitor": "monitoring.monitor",
    "setup_emergency_memory_handler": "monitoring.emergency",
    "remove_emergency_memory_handler": "monitoring.emergency",
    "start_prometheus_exporter": "export.endpoint",
    "MemoryInstrumentor": "instrumentation",
    "MemoryProfiler": "ml.profiler",
    "get_memory_profiler": "ml.profiler",
    "MemoryOptimizer": "ml.optimizer",
    "LazyModelLoader": "ml.lazy",
    "StreamingJSONLReader": "trace_store.jsonl",
    "MemoryResourceManager": "ml.resources",
    "get_resource_manager": "ml.resources",
    "CleanupResult": "monitoring.cleanup",
    "register_cleanup_hook": "monitoring.cleanup",
    "unregister_cleanup_hook": "monitoring.cleanup",
    "run_cleanup": "monitoring.cleanup",
    "REERTraceStore": "trace_store",
    "explain_memory": "profiling.explain",
    "MemoryExplanation": "profiling.explain",
    "AllocationSite": "profiling.explain",
    "ExplainUnavailableError": "profiling.explain",
}


def __getattr__(name: str) -> object:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'reer_otel_memory' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    if name != "_memory_monitor":  # it follows the runtime: testing.reset_state() replaces the default monitor
        globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "PROBE",
    "AllocationSite",
    "CleanupResult",
    "ConfigurationError",
    "ExplainUnavailableError",
    "InvalidArgumentError",
    "LazyModelLoader",
    "LeakDetector",
    "LeakSuspect",
    "MalformedLineError",
    "MemoryConfig",
    "MemoryExplanation",
    "MemoryInstrumentor",
    "MemoryLevel",
    "MemoryLimit",
    "MemoryMonitor",
    "MemoryOptimizer",
    "MemoryProbe",
    "MemoryProfiler",
    "MemoryResourceManager",
    "MemorySnapshot",
    "MemoryTracker",
    "NotFoundError",
    "OperationResult",
    "REERTraceStore",
    "ReerMemoryError",
    "StreamingJSONLReader",
    "TraceStoreError",
    "__version__",
    "effective_memory_limit",
    "explain_memory",
    "get_config",
    "get_memory_monitor",
    "get_memory_profiler",
    "get_memory_tracker",
    "get_resource_manager",
    "load_config",
    "memory_context",
    "memory_profile",
    "register_cleanup_hook",
    "remove_emergency_memory_handler",
    "run_cleanup",
    "set_memory_limit",
    "setup_emergency_memory_handler",
    "setup_memory_limits",
    "start_memory_monitoring",
    "start_prometheus_exporter",
    "stop_memory_monitoring",
    "unregister_cleanup_hook",
]
