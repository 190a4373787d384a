"""Prometheus series and label names of the package's instruments: the one place they are derived.

opentelemetry-exporter-prometheus names a series with its own helpers
(``opentelemetry.exporter.prometheus._mapping``): the instrument name with every run of
characters outside ``[a-zA-Z0-9:]`` made ``_`` (``sanitize_full_name``), then the unit
(``map_unit``: ``By`` -> ``bytes``, ``s`` -> ``seconds``, ``1`` -> nothing) appended unless the
name already ends with it, and ``_total`` for a monotonic counter, as ``prometheus_client``'s
families add them. Attribute keys become labels through ``sanitize_attribute``
(``reer.operation`` -> ``reer_operation``). Those helpers are called here, not rewritten, so the
names are the exporter's by construction; the exposition (``export.exposition``), the alert
rules, the dashboards and ``reer_otel_memory.testing`` all take their names from this module.

    >>> series_name(("reer.memory.cleanup.freed", "By", "..."), COUNTER)
    'reer_memory_cleanup_freed_bytes_total'
    >>> label_name("reer.operation")
    'reer_operation'
"""

from __future__ import annotations

from typing import Final

from opentelemetry.exporter.prometheus._mapping import map_unit, sanitize_attribute, sanitize_full_name

from .. import _names as names
from ..errors import ConfigurationError

GAUGE: Final = "gauge"
COUNTER: Final = "counter"
HISTOGRAM: Final = "histogram"
KINDS: Final = (GAUGE, COUNTER, HISTOGRAM)
"""Prometheus metric types the exporter writes. An up-down counter is exported as a gauge."""

_TOTAL = "_total"


def family_name(name: str, unit: str, kind: str) -> str:
    """The Prometheus family (``# TYPE`` line) name the exporter gives instrument ``name``.

    ``kind`` is the Prometheus type (:data:`KINDS`). A counter's samples are this name plus
    ``_total``; a histogram's are ``_bucket``, ``_sum`` and ``_count`` after it.
    """
    if kind not in KINDS:
        raise ConfigurationError(f"kind={kind!r} of {name!r}: expected {GAUGE!r}, {COUNTER!r} or {HISTOGRAM!r}")
    family = sanitize_full_name(name)
    suffix = map_unit(unit)
    # prometheus_client's CounterMetricFamily drops a trailing _total before the unit goes on.
    if kind == COUNTER and family.endswith(_TOTAL):
        family = family[: -len(_TOTAL)]
    if suffix and not family.endswith("_" + suffix):
        family = f"{family}_{suffix}"
    return family


def series_name(metric: tuple[str, str, str], kind: str = GAUGE) -> str:
    """The Prometheus name the exporter gives ``metric`` (a ``_names.METRIC_*`` tuple).

    For a counter this ends in ``_total``; for a histogram it is the base name, and the series
    are ``<name>_bucket``, ``_sum`` and ``_count``.
    """
    name, unit, _description = metric
    family = family_name(name, unit, kind)
    return family + _TOTAL if kind == COUNTER else family


def family_identity(name: str, unit: str, kind: str) -> str:
    """What the exporter merges instruments by: those with the same identity (and description)
    share one family, however their OTel names differ (``a.b`` and ``a_b``, or two scopes).
    """
    return f"{sanitize_full_name(name)}|{map_unit(unit)}|{kind}"


def label_name(attribute_key: str) -> str:
    """The Prometheus label the exporter makes of a metric attribute key."""
    return sanitize_attribute(attribute_key)


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
PROCESS_LEAK_SUSPECTED = series_name(names.METRIC_PROCESS_LEAK_SUSPECTED)
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
LABEL_PID = label_name(names.LABEL_PID)
LABEL_MODEL = label_name(names.LABEL_MODEL)
LABEL_RESOURCE = label_name(names.LABEL_RESOURCE)
LABEL_TRACE_STORE_PATH = label_name(names.LABEL_TRACE_STORE_PATH)

# Accelerators and containers (the ML-memory series; see _names).
DEVICE_USED = series_name(names.METRIC_DEVICE_USED)
DEVICE_PEAK = series_name(names.METRIC_DEVICE_PEAK)
DEVICE_LIMIT = series_name(names.METRIC_DEVICE_LIMIT)
DEVICE_THRESHOLD = series_name(names.METRIC_DEVICE_THRESHOLD)
CGROUP_USAGE = series_name(names.METRIC_CGROUP_USAGE)
CGROUP_WORKING_SET = series_name(names.METRIC_CGROUP_WORKING_SET)
CGROUP_LIMIT = series_name(names.METRIC_CGROUP_LIMIT)
CGROUP_OOM_KILLS = series_name(names.METRIC_CGROUP_OOM_KILLS, COUNTER)
CGROUP_PRESSURE = series_name(names.METRIC_CGROUP_PRESSURE, COUNTER)
LABEL_FRAMEWORK = label_name(names.LABEL_FRAMEWORK)
LABEL_DEVICE = label_name(names.LABEL_DEVICE)
# The same quantities under the semantic conventions' names (up-down counters: gauges).
CONTAINER_MEMORY_USAGE = series_name(names.METRIC_CONTAINER_MEMORY_USAGE)
CONTAINER_MEMORY_WORKING_SET = series_name(names.METRIC_CONTAINER_MEMORY_WORKING_SET)
HW_GPU_MEMORY_USAGE = series_name(names.METRIC_HW_GPU_MEMORY_USAGE)
HW_GPU_MEMORY_LIMIT = series_name(names.METRIC_HW_GPU_MEMORY_LIMIT)
LABEL_HW_ID = label_name(names.LABEL_HW_ID)

# Requests of the instrumented web frameworks, by route (REER_MEMORY_SERVER_SPANS).
ROUTE_PEAK = series_name(names.METRIC_ROUTE_PEAK, HISTOGRAM)
ROUTE_NET = series_name(names.METRIC_ROUTE_NET)  # an up-down counter is exported as a gauge
ROUTE_REQUESTS = series_name(names.METRIC_ROUTE_REQUESTS, COUNTER)
LABEL_ROUTE = label_name(names.LABEL_ROUTE)
