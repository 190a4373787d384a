"""Prometheus series and label names of the package's instruments: the one place they are derived.

The rules are the OpenTelemetry specification's for Prometheus, as opentelemetry-exporter-prometheus
applies them: the instrument name sanitized (:func:`sanitize_full_name`), its unit appended
(:func:`map_unit`, ``By`` -> ``bytes``) unless already there, and ``_total`` for a monotonic
counter; attribute keys become labels (:func:`sanitize_attribute`). They are written here
because the exporter's module for them is private; a test compares them with the installed
exporter's, so a change there is caught. The exposition, the alert rules, the dashboards and
``reer_otel_memory.testing`` all take their names from here, e.g.
``series_name(("reer.memory.cleanup.freed", "By", "..."), COUNTER)`` is
``'reer_memory_cleanup_freed_bytes_total'``.
"""

from __future__ import annotations

import re
from typing import Final

from .. import _names as names
from ..errors import ConfigurationError

GAUGE: Final = "gauge"
COUNTER: Final = "counter"
HISTOGRAM: Final = "histogram"
KINDS: Final = (GAUGE, COUNTER, HISTOGRAM)
"""Prometheus metric types the exporter writes. An up-down counter is exported as a gauge."""

_TOTAL = "_total"

_NAME_INVALID = re.compile(r"[^a-zA-Z0-9:]+")
_LABEL_INVALID = re.compile(r"[^a-zA-Z0-9]+")  # as a name, but ":" is not allowed
# UCUM annotations, text in curly braces (``{request}``): any characters, as the exporter reads them.
_UNIT_ANNOTATION = re.compile(r"{.*}")

# UCUM and SI units as Prometheus names them (the OpenTelemetry specification's compatibility
# table, as the collector's translator and the Python exporter have it).
_UNITS: Final = {
    # time
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    # bytes
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    # SI
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    # other
    "Cel": "celsius",
    "Hz": "hertz",
    "1": "",
    "%": "percent",
}
# The denominator of a ratio unit (``By/s`` -> ``bytes_per_second``), singular.
_PER_UNITS: Final = {
    "s": "second",
    "m": "minute",
    "h": "hour",
    "d": "day",
    "w": "week",
    "mo": "month",
    "y": "year",
}


def sanitize_full_name(name: str) -> str:
    """A Prometheus metric name of ``name``: a leading digit and every run of characters outside
    ``[a-zA-Z0-9:]`` become ``_``.
    """
    if name and name[0].isdigit():
        name = "_" + name[1:]
    return _NAME_INVALID.sub("_", name)


def sanitize_attribute(key: str) -> str:
    """A Prometheus label name of attribute ``key``: as :func:`sanitize_full_name`, ``:`` included."""
    if key and key[0].isdigit():
        key = "_" + key[1:]
    return _LABEL_INVALID.sub("_", key)


def map_unit(unit: str) -> str:
    """The Prometheus name suffix of a UCUM ``unit`` (``By`` -> ``bytes``, ``1`` -> nothing).

    Annotations in braces are dropped, ``a/b`` becomes ``a_per_b`` (``m/s`` ->
    ``meters_per_second``), and anything else is sanitized as a name, without leading or
    trailing ``_``.
    """
    unit = _UNIT_ANNOTATION.sub("", unit)
    mapped = _UNITS.get(unit)
    if mapped is not None:
        return mapped
    top, slash, bottom = unit.partition("/")
    if slash:
        bottom = _NAME_INVALID.sub("_", bottom)
        if bottom:
            top = _NAME_INVALID.sub("_", top)
            top = _UNITS.get(top, top)
            bottom = _PER_UNITS.get(bottom, bottom)
            return f"{top}_per_{bottom}" if top else f"per_{bottom}"
    return _NAME_INVALID.sub("_", unit).strip("_")


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
