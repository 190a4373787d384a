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

from ._profile import OperationResult, memory_context, memory_profile
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
from .errors import ConfigurationError, ReerMemoryError, TraceStoreError
from .leak import LeakDetector, LeakSuspect
from .levels import MemoryLevel
from .probe import PROBE, MemoryProbe
from .tracker import MemorySnapshot, MemoryTracker, get_memory_tracker

__all__ = [
    "ConfigurationError",
    "LeakDetector",
    "LeakSuspect",
    "MemoryConfig",
    "MemoryLevel",
    "MemoryLimit",
    "MemoryProbe",
    "MemorySnapshot",
    "MemoryTracker",
    "OperationResult",
    "PROBE",
    "ReerMemoryError",
    "TraceStoreError",
    "__version__",
    "effective_memory_limit",
    "get_config",
    "get_memory_tracker",
    "load_config",
    "memory_context",
    "memory_profile",
    "set_memory_limit",
    "setup_memory_limits",
]
