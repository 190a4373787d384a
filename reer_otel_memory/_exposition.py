"""Prometheus text exposition (format 0.0.4) of a ``prometheus_client`` registry, fast.

It writes exactly what ``prometheus_client.generate_latest`` writes (a test compares the two
byte for byte), in about a fifth of the time: ``generate_latest`` validates and escapes every
metric and label name on every sample line, and with 100 profiled operations a page has about
3,000 lines, mostly histogram buckets. Here each name is escaped once and remembered, and the
label block of a sample is built from already-escaped parts.
"""

from __future__ import annotations

import math
from typing import Iterable

from prometheus_client.openmetrics import exposition as _openmetrics
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_INF = math.inf
_MINUS_INF = -math.inf
_TYPE_RENAMES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}
_OPENMETRICS_SUFFIXES = ("_created", "_gsum", "_gcount")
_MAX_CACHED_NAMES = 10_000

_MAX_CACHED_LABEL_SETS = 50_000

_metric_names: dict[str, str] = {}
_label_blocks: dict[tuple[tuple[str, str], ...], str] = {}
_label_names: dict[str, str] = {}


def _metric_name(name: str) -> str:
    escaped = _metric_names.get(name)
    if escaped is None:
        escaped = _openmetrics.escape_metric_name(name, _openmetrics.UNDERSCORES)
        if len(_metric_names) < _MAX_CACHED_NAMES:
            _metric_names[name] = escaped
    return escaped


def _label_name(name: str) -> str:
    escaped = _label_names.get(name)
    if escaped is None:
        escaped = _openmetrics.escape_label_name(name, _openmetrics.UNDERSCORES)
        if len(_label_names) < _MAX_CACHED_NAMES:
            _label_names[name] = escaped
    return escaped


def _go_float(value: float) -> str:
    """``prometheus_client.utils.floatToGoString``: how Go (and so Prometheus) prints a float."""
    value = float(value)
    if value == _INF:
        return "+Inf"
    if value == _MINUS_INF:
        return "-Inf"
    if value != value:
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _label_value(value: object) -> str:
    return str(value).replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def _label_block(labels: dict[str, str]) -> str:
    # Samples repeat the same few label sets (a histogram's buckets differ only in "le"), so
    # each distinct set is escaped and sorted once; the exporter keeps the keys in one order.
    key = tuple(labels.items())
    text = _label_blocks.get(key)
    if text is None:
        text = "{" + ",".join(f'{_label_name(k)}="{_label_value(labels[k])}"' for k in sorted(labels)) + "}"
        if len(_label_blocks) >= _MAX_CACHED_LABEL_SETS:
            _label_blocks.clear()
        _label_blocks[key] = text
    return text


def _sample_line(name: str, labels: dict[str, str], value: float, timestamp: float | None) -> str:
    label_text = _label_block(labels) if labels else ""
    stamp = "" if timestamp is None else f" {int(float(timestamp) * 1000):d}"
    return f"{_metric_name(name)}{label_text} {_go_float(value)}{stamp}\n"


def _help_text(documentation: str) -> str:
    return documentation.replace("\\", r"\\").replace("\n", r"\n")


def generate_text(registry: Collector) -> bytes:
    """The registry's metrics in the Prometheus text format, as ``generate_latest`` writes them."""
    output: list[str] = []
    append = output.append
    for metric in registry.collect():
        name = metric.name
        kind = metric.type
        if kind == "counter":
            exposed = name + "_total"
        elif kind == "info":
            exposed = name + "_info"
        else:
            exposed = name
        kind = _TYPE_RENAMES.get(kind, kind)
        escaped = _metric_name(exposed)
        help_text = _help_text(metric.documentation)
        append(f"# HELP {escaped} {help_text}\n")
        append(f"# TYPE {escaped} {kind}\n")
        extra: dict[str, list[str]] = {}
        for sample in metric.samples:
            sample_name = sample.name
            if sample_name.startswith(name) and sample_name[len(name):] in _OPENMETRICS_SUFFIXES:
                extra.setdefault(sample_name[len(name):], []).append(
                    _sample_line(sample_name, sample.labels, sample.value, sample.timestamp)
                )
            else:
                append(_sample_line(sample_name, sample.labels, sample.value, sample.timestamp))
        for suffix, lines in sorted(extra.items()):
            escaped_extra = _metric_name(name + suffix)
            append(f"# HELP {escaped_extra} {help_text}\n")
            append(f"# TYPE {escaped_extra} gauge\n")
            output.extend(lines)
    return "".join(output).encode("utf-8")


def text_lines(registry: Collector) -> Iterable[str]:
    """The exposition split into lines (for tests and tools)."""
    return generate_text(registry).decode("utf-8").splitlines()
