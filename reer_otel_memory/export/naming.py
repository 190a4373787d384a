"""Prometheus series and label names of the package's instruments, derived from ``_names``.

opentelemetry-exporter-prometheus turns an instrument into a series name by replacing every
run of characters outside ``[a-zA-Z0-9:]`` with ``_``, appending the unit (``By`` -> ``bytes``,
``s`` -> ``seconds``, ``1`` -> nothing) and, for monotonic counters, ``_total``; attribute keys
lose everything outside ``[a-zA-Z0-9]`` the same way (``reer.operation`` -> ``reer_operation``).
The alert rules and dashboards query these names, so they are computed here from the one place
that spells the instruments instead of being written out a second time.
"""

from __future__ import annotations

import re

from .. import _names as names

GAUGE = "gauge"
COUNTER = "counter"
HISTOGRAM = "histogram"

# The subset of the exporter's unit table the package's instruments use.
_UNIT_SUFFIXES = {"By": "bytes", "s": "seconds", "1": ""}
_NAME_OUTSIDE = re.compile(r"[^a-zA-Z0-9:]+")
_LABEL_OUTSIDE = re.compile(r"[^a-zA-Z0-9]+")


def series_name(metric: tuple[str, str, str], kind: str = GAUGE) -> str:
    """The Prometheus name the exporter gives ``metric`` (a ``_names.METRIC_*`` tuple).

    For a histogram this is the base name: the series are ``<name>_bucket``, ``_sum`` and
    ``_count``.
    """
    name, unit, _description = metric
    if unit not in _UNIT_SUFFIXES:
        raise ValueError(f"unit={unit!r} of {name!r}: expected one of {sorted(_UNIT_SUFFIXES)}")
    if kind not in (GAUGE, COUNTER, HISTOGRAM):
        raise ValueError(f"kind={kind!r} of {name!r}: expected {GAUGE!r}, {COUNTER!r} or {HISTOGRAM!r}")
    base = _NAME_OUTSIDE.sub("_", name)
    if kind == COUNTER and base.endswith("_total"):
        base = base[: -len("_total")]
    suffix = _UNIT_SUFFIXES[unit]
    if suffix and not base.endswith("_" + suffix):
        base = f"{base}_{suffix}"
    return f"{base}_total" if kind == COUNTER else base


def label_name(attribute_key: str) -> str:
    """The Prometheus label the exporter makes of a metric attribute key."""
    return _LABEL_OUTSIDE.sub("_", attribute_key)


RSS = series_name(names.METRIC_RSS)
PEAK_RSS = series_name(names.METRIC_PEAK_RSS)
HEAP = series_name(names.METRIC_HEAP)
LIMIT = series_name(names.METRIC_LIMIT)
UTILIZATION = series_name(names.METRIC_UTILIZATION)
THRESHOLD = series_name(names.METRIC_THRESHOLD)
LEVEL = series_name(names.METRIC_LEVEL)
ALERTS = series_name(names.METRIC_ALERTS, COUNTER)
CLEANUPS = series_name(names.METRIC_CLEANUPS, COUNTER)
CLEANUP_FREED = series_name(names.METRIC_CLEANUP_FREED, COUNTER)
OPERATION_PEAK = series_name(names.METRIC_OPERATION_PEAK, HISTOGRAM)
OPERATION_NET = series_name(names.METRIC_OPERATION_NET)  # an up-down counter is exported as a gauge
OPERATION_DURATION = series_name(names.METRIC_OPERATION_DURATION, HISTOGRAM)
LEAK_SUSPECTED = series_name(names.METRIC_LEAK_SUSPECTED)
MONITOR_CPU = series_name(names.METRIC_MONITOR_CPU, COUNTER)
MODEL_SIZE = series_name(names.METRIC_MODEL_SIZE)
MODEL_LOADS = series_name(names.METRIC_MODEL_LOADS, COUNTER)
RESOURCES = series_name(names.METRIC_RESOURCES)
RESOURCE_SIZE = series_name(names.METRIC_RESOURCE_SIZE)
RESOURCE_CLEANUPS = series_name(names.METRIC_RESOURCE_CLEANUPS, COUNTER)
TRACE_STORE_SIZE = series_name(names.METRIC_TRACE_STORE_SIZE)
TRACE_STORE_TRACES = series_name(names.METRIC_TRACE_STORE_TRACES)

LABEL_LEVEL = label_name(names.LABEL_LEVEL)
LABEL_TRIGGER = label_name(names.LABEL_TRIGGER)
LABEL_OPERATION = label_name(names.LABEL_OPERATION)
LABEL_MODEL = label_name(names.LABEL_MODEL)
LABEL_RESOURCE = label_name(names.LABEL_RESOURCE)
LABEL_TRACE_STORE_PATH = label_name(names.LABEL_TRACE_STORE_PATH)
