"""Prometheus text exposition (format 0.0.4) straight from OpenTelemetry metrics data, fast.

The page is what ``PrometheusMetricReader`` (no scope or resource labels) and
``prometheus_client.generate_latest`` write for the same data, byte for byte (a test compares
them). It is faster because the usual path builds a family and sample object for every line and
validates and escapes every name again on each: here each name is mapped and escaped once and
remembered, each label set rendered once, and an unchanged histogram series (most of them,
between two scrapes) reuses its lines whole. :class:`CumulativeText`, what the endpoint uses,
sums histograms collected as deltas into the page the cumulative collection would give.
docs/performance.md has the figures.
"""

from __future__ import annotations

import json
import math
import threading
from itertools import accumulate
from typing import Any

from opentelemetry.sdk.metrics.export import AggregationTemporality, Gauge, Histogram, Sum
from prometheus_client.openmetrics import exposition as _openmetrics

from .._runtime import RUNTIME
from . import naming

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_INF = math.inf
_MINUS_INF = -math.inf
_MAX_CACHED_NAMES = 10_000

_MAX_CACHED_LABEL_SETS = 50_000

# Caches of text derived from names alone (the same for every process and every reset), bounded
# by the limits above: kept at module level beside the functions that fill them.
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
        self._prefixes: dict[tuple[Any, ...], tuple[list[str], tuple[str, str] | None]] = {}
        #: Each histogram series' counts, sum and lines at the last scrape.
        self._series: dict[tuple[Any, ...], tuple[tuple[int, ...], Any, str]] = {}
        #: Each family of running totals: the state its text was made from, and the text.
        self._totals_texts: dict[str, tuple[tuple[Any, ...], str]] = {}

    def _family(self, name: str, unit: str, kind: str) -> tuple[str, str]:
        """(family name, identity the exporter merges families by), from ``naming``, remembered."""
        key = (name, unit, kind)
        found = self._families.get(key)
        if found is None:
            found = (naming.family_name(name, unit, kind), naming.family_identity(name, unit, kind))
            if len(self._families) < _MAX_CACHED_NAMES:
                self._families[key] = found
        return found

    def _bucket_prefixes(self, name: str, row: dict[str, str], bounds: tuple[str, ...]) -> tuple[list[str], tuple[str, str] | None]:
        """``name_bucket{...,le="B",...} `` for each bound, and ``name_count{...} `` with ``name_sum{...} ``
        (None where the exporter writes neither): the same for every scrape of a series."""
        key = (name, tuple(row.items()), bounds)
        prefixes = self._prefixes.get(key)
        if prefixes is None:
            buckets = []
            for bound in bounds:
                labels = dict(row)
                labels["le"] = bound
                buckets.append(f"{_metric_name(name + '_bucket')}{_label_block(labels)} ")
            label_text = _label_block(row) if row else ""
            totals = None
            if bounds and float(bounds[0]) >= 0:
                totals = (f"{_metric_name(name + '_count')}{label_text} ", f"{_metric_name(name + '_sum')}{label_text} ")
            if len(self._prefixes) >= _MAX_CACHED_LABEL_SETS:
                self._prefixes.clear()
            prefixes = self._prefixes[key] = (buckets, totals)
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
        metrics = [
            metric
            for resource_metrics in metrics_data.resource_metrics
            for scope_metrics in resource_metrics.scope_metrics
            for metric in scope_metrics.metrics
        ]
        return self._page(self._target_info_text(metrics_data), metrics)

    def _page(self, target_info: str, metrics: list[Any]) -> bytes:
        """The page of these metrics (SDK ``Metric`` or :class:`HistogramTotals`), in this order."""
        # family id -> [exposed name, help, type, label keys, points of (labels, value), totals]
        families: dict[str, list[Any]] = {}
        for metric in metrics:
            if isinstance(metric, HistogramTotals):
                self._add_totals(families, metric)
            else:
                self._add_metric(families, metric)
        output = [target_info]
        # A family merged from metrics with other label names names every metric's values by the
        # first metric's names, cut to the shorter of the two, as prometheus_client does (strict=False).
        for family_id, (name, documentation, kind, label_keys, points, totals) in families.items():
            help_text = _help_text(documentation)
            exposed = name + "_total" if kind == "counter" else name
            output.append(f"# HELP {_metric_name(exposed)} {help_text}\n# TYPE {_metric_name(exposed)} {kind}\n")
            if kind != "histogram":
                for labels, value in points:
                    output.append(_sample_line(exposed, dict(zip(label_keys, labels, strict=False)), value, None))
                continue
            if totals is not None:
                output.append(self._totals_text(family_id, name, label_keys, totals))
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
                text = self._histogram_text(name, dict(zip(label_keys, labels, strict=False)), bounds, counts, total)
                if cached is None and len(series) >= _MAX_CACHED_LABEL_SETS:
                    series.clear()
                series[key] = (counts, total, text)
                output.append(text)
        return "".join(output).encode("utf-8")

    def _add_totals(self, families: dict[str, list[Any]], totals: HistogramTotals) -> None:
        """A histogram stream of running totals: its lines are kept with it, per series."""
        family, identity = self._family(totals.name, totals.unit, "histogram")
        family_id = f"{identity}|{totals.description}"
        entry = families.get(family_id)
        if entry is None:
            families[family_id] = [family, totals.description, "histogram", totals.label_keys(), [], [totals]]
        elif entry[5] is not None:
            entry[5].append(totals)
        else:  # a family of SDK points too (never so on the endpoint): the general path
            entry[4].extend(totals.points())

    def _totals_text(self, family_id: str, name: str, family_keys: list[str], streams: list[HistogramTotals]) -> str:
        """A histogram family's lines from running totals; the whole text again when no series changed."""
        state = (tuple(family_keys), *((id(stream), stream.version) for stream in streams))
        cached = self._totals_texts.get(family_id)
        if cached is not None and cached[0] == state:
            return cached[1]
        parts = []
        for stream in streams:
            # As the exporter does: a stream's values in its own key order, named by the family's keys.
            stream_keys = stream.label_keys()
            text_key = (state[0], tuple(stream_keys))
            for series in stream.series.values():
                if series.text is None or series.text_key != text_key:
                    labels = [series.labels.get(key, "") for key in stream_keys]
                    series.text = self._histogram_text(
                        name, dict(zip(family_keys, labels, strict=False)), series.bounds, tuple(series.counts), series.total
                    )
                    series.text_key = text_key
                parts.append(series.text)
        text = "".join(parts)
        if len(self._totals_texts) < _MAX_CACHED_NAMES:
            self._totals_texts[family_id] = (state, text)
        return text

    def _histogram_text(self, name: str, row: dict[str, str], bounds: tuple[str, ...], counts: tuple[int, ...], total: Any) -> str:
        buckets, totals = self._bucket_prefixes(name, row, bounds)
        # The lines of most pages: keep to one formatted string per line (counts are whole numbers).
        lines = [
            f"{prefix}{cumulative}.0\n" if type(cumulative) is int and 0 <= cumulative < 1_000_000 else f"{prefix}{_go_float(cumulative)}\n"
            for prefix, cumulative in zip(buckets, accumulate(counts), strict=True)
        ]
        if totals is not None and total is not None:
            count_prefix, sum_prefix = totals
            lines.append(f"{count_prefix}{_go_float(sum(counts))}\n{sum_prefix}{_go_float(total)}\n")
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
            families[family_id] = [family, description, kind, label_keys, points, None]
        else:
            if entry[5] is not None:  # running totals first (never so on the endpoint): the general path
                for totals in entry.pop():
                    entry[4].extend(totals.points())
                entry.append(None)
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


#: Label sets one histogram stream keeps apart, as the SDK's default cardinality limit: further
#: ones add to one ``otel_metric_overflow="true"`` series, as a cumulative collection shows them.
CARDINALITY_LIMIT = 2000
_OVERFLOW_ATTRIBUTES = {"otel.metric.overflow": True}


class _Series:
    """One histogram series' running totals, its labels, and its lines once made."""

    __slots__ = ("bounds", "counts", "labels", "text", "text_key", "total")

    def __init__(self, attributes: Any, bounds: tuple[str, ...], size: int) -> None:
        self.labels = _point_labels(attributes)
        self.bounds = bounds
        self.counts = [0] * size
        self.total: Any = 0
        self.text: str | None = None
        self.text_key: tuple[Any, ...] = ()


class HistogramTotals:
    """One histogram stream (scope, name) summed from delta collections: what a cumulative one shows.

    Series stay in the order they first appeared, as the SDK keeps them; the sum of each series
    is added up interval by interval, as the SDK adds it up for a cumulative reader.
    """

    def __init__(self, metric: Any) -> None:
        self.name: str = metric.name
        self.unit: str = metric.unit or ""
        self.description: str = metric.description or ""
        self.series: dict[Any, _Series] = {}
        #: Changes whenever a series changes or appears (a family's text is reused until then).
        self.version = 0
        self._label_keys: list[str] | None = None

    def add(self, data_points: Any) -> None:
        for point in data_points:
            bounds = _bounds_text(point.explicit_bounds)
            key = (_attributes_key(point.attributes), bounds)
            series = self.series.get(key)
            if series is None:
                attributes = point.attributes
                if len(self.series) >= CARDINALITY_LIMIT:
                    attributes = _OVERFLOW_ATTRIBUTES
                    key = (_attributes_key(attributes), bounds)
                    series = self.series.get(key)
                if series is None:
                    series = self.series[key] = _Series(attributes, bounds, len(point.bucket_counts))
                    self._label_keys = None
            series.counts = [total + count for total, count in zip(series.counts, point.bucket_counts, strict=True)]
            series.total = series.total + point.sum
            series.text = None
        self.version += 1

    def label_keys(self) -> list[str]:
        """Every label name of the stream's series, sorted (as the exporter orders them)."""
        if self._label_keys is None:
            self._label_keys = sorted({key for series in self.series.values() for key in series.labels})
        return self._label_keys

    def points(self) -> list[tuple[list[str], tuple[tuple[str, ...], list[int], Any]]]:
        """The series as the formatter's points: label values in :meth:`label_keys` order, bounds, counts, sum."""
        keys = self.label_keys()
        return [([series.labels.get(key, "") for key in keys], (series.bounds, series.counts, series.total)) for series in self.series.values()]


def _attributes_key(attributes: Any) -> tuple[Any, ...]:
    """A hashable key of an attribute set, as the SDK tells sets apart (order-free; True is not 1)."""
    return tuple(sorted((name, type(value).__name__, tuple(value) if isinstance(value, (list, tuple)) else value) for name, value in attributes.items()))


class CumulativeText:
    """The page of a reader that collects histograms as deltas, reading as a cumulative collection.

    The SDK's cumulative histogram collection rebuilds every point of every series on each
    collection, changed or not: with 100 profiled operations that is about half of a scrape.
    Collected as deltas, a histogram series appears only when it was recorded to since the last
    collection; :meth:`add` adds those points to running totals (:class:`HistogramTotals`) and
    keeps the other metrics of the collection as they are, and :meth:`render` writes what the
    cumulative collection gives (a test compares the two pages byte for byte): metrics in the
    order the SDK keeps them (the order they first appeared), grouped by scope as the SDK groups
    them, the families merged and named by :class:`OpenTelemetryText`.

    Every collection the reader takes must be added (a ``force_flush`` collects too), so
    :meth:`add` is what the reader's ``_receive_metrics`` calls.
    """

    def __init__(self) -> None:
        self._text = OpenTelemetryText()
        self._lock = threading.Lock()
        self._target_info: str | None = None
        #: Every metric stream seen, in the order it first appeared; histogram streams hold their totals.
        self._streams: dict[tuple[Any, ...], HistogramTotals | None] = {}
        self._scopes: dict[tuple[Any, ...], Any] = {}
        #: The latest collection's other metrics, by stream.
        self._latest: dict[tuple[Any, ...], list[Any]] = {}
        RUNTIME.after_fork_call(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # a /metrics thread of the parent may have held it

    def add(self, metrics_data: Any) -> None:
        """Take one collection: histogram deltas into the totals, the rest as the latest values."""
        latest: dict[tuple[Any, ...], list[Any]] = {}
        with self._lock:
            if metrics_data is not None:
                if self._target_info is None:
                    self._target_info = self._text._target_info_text(metrics_data)
                for resource_metrics in metrics_data.resource_metrics:
                    for scope_metrics in resource_metrics.scope_metrics:
                        self._add_scope(scope_metrics, latest)
            self._latest = latest

    def _add_scope(self, scope_metrics: Any, latest: dict[tuple[Any, ...], list[Any]]) -> None:
        scope = scope_metrics.scope
        streams = self._streams
        for metric in scope_metrics.metrics:
            data = metric.data
            key = (scope, metric.name, metric.unit, metric.description, type(data))
            if key not in streams:
                totals = None
                if isinstance(data, Histogram) and data.aggregation_temporality == AggregationTemporality.DELTA:
                    totals = HistogramTotals(metric)
                streams[key] = totals
                self._scopes[key] = scope
            totals = streams[key]
            if totals is not None:
                totals.add(data.data_points)
            else:
                latest.setdefault(key, []).append(metric)

    def render(self) -> bytes:
        """The page: every histogram's totals, and the other metrics of the latest collection."""
        with self._lock:
            if self._target_info is None:
                return b""
            by_scope: dict[Any, list[Any]] = {}
            for key, totals in self._streams.items():
                found: list[Any] | None = [totals] if totals is not None and totals.series else self._latest.get(key)
                if found:
                    by_scope.setdefault(self._scopes[key], []).extend(found)
            return self._text._page(self._target_info, [metric for metrics in by_scope.values() for metric in metrics])
