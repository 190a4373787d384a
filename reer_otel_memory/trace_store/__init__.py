"""Constant-memory JSONL: the trace store (:class:`REERTraceStore`), the streaming reader and
the per-line pass they share.

    from reer_otel_memory.trace_store import REERTraceStore

May import the package's core, :mod:`reer_otel_memory.profiling` and
:mod:`reer_otel_memory.monitoring`; nothing on the hot path imports this subpackage.
"""

from __future__ import annotations

from .store import REERTraceStore

__all__ = ["REERTraceStore"]
