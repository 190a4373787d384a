"""What the test services (``_flask_service.py``, ``_asgi_service.py``) report on ``/report``.

Importing this binds a real SDK ``TracerProvider`` with an in-memory exporter to the package, the
way ``reer_otel_memory.testing`` binds its providers. :func:`report` gives what the package
concluded: spans flagged ``reer.memory.leak.suspected`` per operation, the leak detector's verdict,
the latest explanation and the server's RSS, as a JSON-serialisable dict.
"""

from __future__ import annotations

import os
import statistics
from typing import Any

import psutil
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from reer_otel_memory import _names as names
from reer_otel_memory import _telemetry, get_memory_tracker
from reer_otel_memory.profiling.explain import auto_explainer

OPERATIONS = ("predict", "remember")
KEEP_BYTES = 64 * 1024

spans = InMemorySpanExporter()
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
_telemetry.configure(tracer_provider, meter_provider)


def _spans_of(operation: str) -> dict[str, Any]:
    """Flagged spans, overlaps and heap readings of one operation's calls, in the order they started
    (``first_flagged_request``: counting the calls of both operations)."""
    every = sorted((s for s in spans.get_finished_spans() if s.name in OPERATIONS), key=lambda s: s.start_time or 0)
    found = [span for span in every if span.name == operation]
    flagged = [i for i, span in enumerate(found) if (span.attributes or {}).get(names.ATTR_LEAK_SUSPECTED)]
    first_request = next((i + 1 for i, s in enumerate(every) if s.name == operation and (s.attributes or {}).get(names.ATTR_LEAK_SUSPECTED)), None)
    overlaps = [int((span.attributes or {}).get(names.ATTR_OVERLAP, 0)) for span in found]  # type: ignore[arg-type]
    events = [event.name for span in found for event in span.events]
    return {
        "calls": len(found),
        "flagged": len(flagged),
        "first_flagged_call": flagged[0] + 1 if flagged else None,
        "first_flagged_request": first_request,
        "alone": overlaps.count(0),
        "overlap_median": statistics.median(overlaps) if overlaps else None,
        "overlap_max": max(overlaps, default=None),
        "heap_read": sum(names.ATTR_HEAP_DELTA in (span.attributes or {}) for span in found),
        "suspected_events": events.count(names.EVENT_LEAK_SUSPECTED),
        "process_events": events.count(names.EVENT_PROCESS_LEAK_SUSPECTED),
    }


def _histories() -> dict[str, Any]:
    """The detector's state per operation, for a precise account when a promise does not hold."""
    detector = get_memory_tracker().leak_detector
    found = {}
    for operation in OPERATIONS:
        history = detector._ops.get(operation)
        if history is None:
            continue
        found[operation] = {
            "calls": history.calls,
            "own_short": history.own.short()[::-1],
            "contested_short": history.contested.short()[::-1],
            "own_long_n": len(history.own.long()),
            "contested_long_n": len(history.contested.long()),
            "own_judged": list(detector._judge(history.own)),
            "contested_judged": list(detector._judge(history.contested)),
            **{flag: getattr(history, flag) for flag in ("suspected", "candidate", "explained", "vetoed", "excused", "rechecked")},
        }
    return found


def report(kept: int) -> dict[str, Any]:
    """What the package concluded in this server (``kept``: the leaker's calls so far)."""
    detector = get_memory_tracker().leak_detector
    explainer = auto_explainer()
    explanation = explainer.latest()
    explained: dict[str, Any] | None = None
    if explanation is not None:
        explained = {
            "top_site": explanation.sites[0].as_dict() if explanation.sites else None,
            "sites": [(site.location, site.size_bytes, site.count) for site in explanation.sites],
            "operations": dict(explanation.operations),
            "total_bytes": explanation.total_bytes,
            "unattributed_bytes": explanation.unattributed_bytes,
            "seconds": explanation.seconds,
            "backend": explanation.backend,
            "in_flight": list(explanation.in_flight),
        }
    explain_spans = [s for s in spans.get_finished_spans() if s.name == names.SPAN_EXPLAIN]
    return {
        "pid": os.getpid(),
        "rss": psutil.Process().memory_info().rss,
        "kept": kept,
        "operations": {operation: _spans_of(operation) for operation in OPERATIONS},
        "suspects": [suspect.as_dict() for suspect in detector.suspects()],
        "candidates": detector.candidates(),
        "process_suspected": detector.process_suspected(),
        "histories": _histories(),
        "explanation": explained,
        "explanation_reasons": [(s.attributes or {}).get(names.ATTR_EXPLAIN_REASON) for s in explain_spans],
        "explainer_idle": explainer.wait_idle(0),
    }
