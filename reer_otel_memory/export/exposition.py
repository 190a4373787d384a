"""Prometheus text exposition (format 0.0.4) straight from OpenTelemetry metrics data, fast.

The page is what ``PrometheusMetricReader`` (no scope or resource labels) and
``prometheus_client.generate_latest`` write for the same data, byte for byte (a test compares
them), in about a third of the time: with 100 profiled operations a page has about 3,000 lines,
mostly histogram buckets, and the usual path builds a ``prometheus_client`` family and sample
object for each line, then validates and escapes every name again on every line. Here each
name is mapped (by ``naming``) and escaped once and remembered, each distinct label set is
rendered once, and a histogram series whose counts and sum did not change since the last
scrape (most of them, between two scrapes) reuses its lines whole: about 1 ms for such a page,
about 12 ms when every series changed, against about 40 ms for the exporter's path
(``python -m benchmarks monitor``).
"""

from __future__ import annotations

import json
import math
from typing import Any

from opentelemetry.sdk.metrics.export import AggregationTemporality, Gauge, Histogram, Sum
from prometheus_client.openmetrics import exposition as _openmetrics

from . import naming

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_INF = math.inf
_MINUS_INF = -math.inf
_MAX_CACHED_NAMES = 10_000

_MAX_CACHED_LABEL_SETS = 50_000

_metric_names: dict[str, str] = {}
_label_blocks: dict[tuple[tuple[str, str], ...], str] = {}
_label_names: dict[str, str] = {}
_attribute_labels: dict[str, str] = {}
_labels_by_attributes: dict[tuple[tuple[str, Any], ...], dict[str, str]] = {}
_bounds_texts: dict[tuple[float, ...], tuple[str, ...]] = {}


def _escaped(cache: dict[str, str], escape: Any, name: str) -> str:
    """``escape(name)`` as prometheus_client does it, remembered (names repeat on every line)."""
    escaped = cache.get(name)
    if escaped is None:
        escaped = escape(name, _openmetrics.UNDERSCORES)
        if len(cache) < _MAX_CACHED_NAMES:
            cache[name] = escaped
    return escaped


def _metric_name(name: str) -> str:
    return _escaped(_metric_names, _openmetrics.escape_metric_name, name)


def _label_name(name: str) -> str:
    return _escaped(_label_names, _openmetrics.escape_label_name, name)


def _attribute_label(key: str) -> str:
    """``naming.label_name(key)``, remembered: every point of every scrape repeats its keys."""
    label = _attribute_labels.get(key)
    if label is None:
        label = naming.label_name(key)
        if len(_attribute_labels) < _MAX_CACHED_NAMES:
            _attribute_labels[key] = label
    return label


def _go_float(value: float) -> str:
    """``prometheus_client.utils.floatToGoString``: how Go (and so Prometheus) prints a float."""
    if type(value) is int and 0 <= value < 1_000_000:
        return f"{value}.0"  # counts, most lines of a page: what repr(float(value)) gives
    value = float(value)
    if value == _INF:
        return "+Inf"
    if value == _MINUS_INF:
        return "-Inf"
    if math.isnan(value):
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


class OpenTelemetryText:
    """Formats OpenTelemetry ``MetricsData`` straight to the text exposition.

    The output is what ``PrometheusMetricReader`` (without scope labels or resource labels)
    followed by ``generate_latest`` writes for the same data, byte for byte (a test compares
    them), without building ``prometheus_client`` families first: with 100 profiled operations
    that building is about as costly as the SDK's collection itself. Series and label names come
    from :mod:`.naming`, which calls the exporter's own mapping functions, so series are named
    the same as on any OpenTelemetry Prometheus endpoint.
    """

    def __init__(self) -> None:
        self._target_info: str | None = None
        self._families: dict[tuple[str, str, str], tuple[str, str]] = {}
        self._prefixes: dict[tuple[Any, ...], list[str]] = {}
        #: Each histogram series' counts, sum and lines at the last scrape.
        self._series: dict[tuple[Any, ...], tuple[tuple[int, ...], Any, str]] = {}

    def _family(self, name: str, unit: str, kind: str) -> tuple[str, str]:
        """(family name, identity the exporter merges families by), from ``naming``, remembered."""
        key = (name, unit, kind)
        found = self._families.get(key)
        if found is None:
            found = (naming.family_name(name, unit, kind), naming.family_identity(name, unit, kind))
            if len(self._families) < _MAX_CACHED_NAMES:
                self._families[key] = found
        return found

    def _bucket_prefixes(self, name: str, row: dict[str, str], bounds: tuple[str, ...]) -> list[str]:
        """``name_bucket{...,le="B",...} `` for each bound: the same for every scrape of a series."""
        key = (name, tuple(row.items()), bounds)
        prefixes = self._prefixes.get(key)
        if prefixes is None:
            prefixes = []
            for bound in bounds:
                labels = dict(row)
                labels["le"] = bound
                prefixes.append(f"{_metric_name(name + '_bucket')}{_label_block(labels)} ")
            if len(self._prefixes) >= _MAX_CACHED_LABEL_SETS:
                self._prefixes.clear()
            self._prefixes[key] = prefixes
        return prefixes

    def _target_info_text(self, metrics_data: Any) -> str:
        if self._target_info is None:
            attributes: dict[str, Any] = {}
            for resource_metrics in metrics_data.resource_metrics:
                attributes = {**attributes, **resource_metrics.resource.attributes}
            labels = {_attribute_label(key): _label_text_value(value) for key, value in attributes.items()}
            self._target_info = (
                "# HELP target_info Target metadata\n# TYPE target_info gauge\n"
                + _sample_line("target_info", labels, 1, None)
            )
        return self._target_info

    def format(self, metrics_data: Any) -> bytes:
        """The exposition of one collection."""
        if metrics_data is None:
            return b""
        # family id -> [exposed name, help, type, label keys, points of (labels, value)]
        families: dict[str, list[Any]] = {}
        for resource_metrics in metrics_data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    self._add_metric(families, metric)
        output = [self._target_info_text(metrics_data)]
        for name, documentation, kind, label_keys, points in families.values():
            help_text = _help_text(documentation)
            exposed = name + "_total" if kind == "counter" else name
            output.append(f"# HELP {_metric_name(exposed)} {help_text}\n# TYPE {_metric_name(exposed)} {kind}\n")
            if kind != "histogram":
                for labels, value in points:
                    output.append(_sample_line(exposed, dict(zip(label_keys, labels, strict=True)), value, None))
                continue
            series = self._series
            for labels, (bounds, bucket_counts, total) in points:
                # Most series did not change since the last scrape: their lines are reused whole.
                key = (name, tuple(label_keys), tuple(labels), bounds)
                counts = tuple(bucket_counts)
                cached = series.get(key)
                if cached is not None and cached[0] == counts and cached[1] == total:
                    output.append(cached[2])
                    continue
                text = self._histogram_text(name, dict(zip(label_keys, labels, strict=True)), bounds, counts, total)
                if cached is None and len(series) >= _MAX_CACHED_LABEL_SETS:
                    series.clear()
                series[key] = (counts, total, text)
                output.append(text)
        return "".join(output).encode("utf-8")

    def _histogram_text(self, name: str, row: dict[str, str], bounds: tuple[str, ...], counts: tuple[int, ...], total: Any) -> str:
        lines = []
        cumulative = 0
        for prefix, count in zip(self._bucket_prefixes(name, row, bounds), counts, strict=True):
            cumulative += count
            lines.append(f"{prefix}{_go_float(cumulative)}\n")
        if bounds and float(bounds[0]) >= 0 and total is not None:
            lines.append(_sample_line(name + "_count", row, cumulative, None))
            lines.append(_sample_line(name + "_sum", row, total, None))
        return "".join(lines)

    def _add_metric(self, families: dict[str, list[Any]], metric: Any) -> None:
        data = metric.data
        if isinstance(data, Sum):
            # Cumulative non-monotonic sums are gauges in Prometheus, as the exporter makes them.
            cumulative = data.aggregation_temporality == AggregationTemporality.CUMULATIVE
            kind = "gauge" if cumulative and not data.is_monotonic else "counter"
        elif isinstance(data, Gauge):
            kind = "gauge"
        elif isinstance(data, Histogram):
            kind = "histogram"
        else:
            return  # as the exporter: other point kinds are not exposed
        family, identity = self._family(metric.name, metric.unit or "", kind)
        description = metric.description or ""
        family_id = f"{identity}|{description}"
        entry = families.get(family_id)
        rows: list[dict[str, str]] = []
        values: list[Any] = []
        keys: set[str] = set()
        for point in data.data_points:
            labels = _point_labels(point.attributes)
            keys.update(labels)
            rows.append(labels)
            if kind == "histogram":
                values.append((_bounds_text(point.explicit_bounds), point.bucket_counts, point.sum))
            else:
                values.append(point.value)
        label_keys = sorted(keys)
        points = [([labels.get(key, "") for key in label_keys], value) for labels, value in zip(rows, values, strict=True)]
        if entry is None:
            families[family_id] = [family, description, kind, label_keys, points]
        else:
            entry[4].extend(points)


def _point_labels(attributes: Any) -> dict[str, str]:
    """A point's labels (shared: not to be changed), remembered by its attributes: each scrape repeats them."""
    try:
        key: Any = tuple(attributes.items())
        labels = _labels_by_attributes.get(key)
    except TypeError:  # an unhashable value
        key, labels = None, None
    if labels is None:
        labels = {_attribute_label(name): _label_text_value(value) for name, value in attributes.items()}
        if key is not None:
            if len(_labels_by_attributes) >= _MAX_CACHED_LABEL_SETS:
                _labels_by_attributes.clear()
            _labels_by_attributes[key] = labels
    return labels


def _bounds_text(explicit_bounds: Any) -> tuple[str, ...]:
    """A histogram's ``le`` values (its bounds as the exporter prints them, then ``+Inf``), remembered."""
    key = tuple(explicit_bounds)
    text = _bounds_texts.get(key)
    if text is None:
        text = (*(f"{bound}" for bound in key), "+Inf")
        if len(_bounds_texts) < _MAX_CACHED_NAMES:
            _bounds_texts[key] = text
    return text


def _label_text_value(value: Any) -> str:
    """A label value as the OpenTelemetry exporter writes it: strings as they are, else JSON."""
    return value if isinstance(value, str) else json.dumps(value, default=str)
