"""export.naming's Prometheus naming rules against the installed OpenTelemetry Prometheus exporter's.

The package writes the rules itself (the exporter keeps its own in a private module); these tests
compare the two wherever the installed exporter has them, so a change in the exporter shows here.
"""

from __future__ import annotations

import importlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reer_otel_memory import _names as names
from reer_otel_memory.export import naming

_exporter_mapping = None
try:
    _exporter_mapping = importlib.import_module("opentelemetry.exporter.prometheus._mapping")
except ImportError:
    pass

needs_exporter_rules = pytest.mark.skipif(_exporter_mapping is None, reason="the installed exporter has no naming module to compare with")

_PACKAGE_METRICS = [value for key, value in vars(names).items() if key.startswith("METRIC_") and isinstance(value, tuple)]
_PACKAGE_LABELS = [value for key, value in vars(names).items() if key.startswith("LABEL_") and isinstance(value, str)]

NAMES = [
    *(name for name, _unit, _description in _PACKAGE_METRICS),
    *_PACKAGE_LABELS,
    "",
    "a",
    "1abc",
    "9",
    "a.b-c d",
    "a::b",
    "__x__",
    "x..y",
    "émoji_ü_名",
    "http.server.request.duration",
    "a/b",
    "trailing.",
]

UNITS = [
    *(unit for _name, unit, _description in _PACKAGE_METRICS),
    "",
    "1",
    "By",
    "s",
    "%",
    "{request}",
    "{a}/s",
    "By/s",
    "1/s",
    "/s",
    "By/",
    "m/ms",
    "KiBy/mo",
    "foo bar",
    "_By_",
    "kBy",
    "{packets}By",
    "{a}{b}",
    "a/b/c",
    "Cel",
]


def test_the_package_metric_names_and_units_are_in_the_compared_sets():
    assert len(_PACKAGE_METRICS) > 10 and len(_PACKAGE_LABELS) > 3
    assert {"By", "s", "1"} <= set(UNITS)


@needs_exporter_rules
@pytest.mark.parametrize("name", NAMES)
def test_metric_and_label_names_are_the_exporters(name):
    assert naming.sanitize_full_name(name) == _exporter_mapping.sanitize_full_name(name)
    assert naming.sanitize_attribute(name) == _exporter_mapping.sanitize_attribute(name)


@needs_exporter_rules
@pytest.mark.parametrize("unit", UNITS)
def test_unit_suffixes_are_the_exporters(unit):
    assert naming.map_unit(unit) == _exporter_mapping.map_unit(unit)


@needs_exporter_rules
def test_every_unit_the_exporter_maps_is_mapped_the_same():
    tables = [getattr(_exporter_mapping, "_UNIT_MAPPINGS", {}), getattr(_exporter_mapping, "_PER_UNIT_MAPPINGS", {})]
    units = {unit for table in tables for unit in table}
    assert "By" in units  # the tables are where this exporter keeps them: otherwise this test compares nothing
    units |= {f"By/{per}" for per in tables[1]} | {f"{unit}/s" for unit in tables[0]}
    assert {unit: naming.map_unit(unit) for unit in units} == {unit: _exporter_mapping.map_unit(unit) for unit in units}


@needs_exporter_rules
@settings(max_examples=300, deadline=None)
@given(st.text(max_size=24))
def test_any_text_is_named_as_the_exporter_names_it(text):
    assert naming.sanitize_full_name(text) == _exporter_mapping.sanitize_full_name(text)
    assert naming.sanitize_attribute(text) == _exporter_mapping.sanitize_attribute(text)
    assert naming.map_unit(text) == _exporter_mapping.map_unit(text)


@needs_exporter_rules
@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="{}/_ .1%abBymsKiMG", max_size=12))
def test_unit_like_text_maps_as_the_exporter_maps_it(text):
    assert naming.map_unit(text) == _exporter_mapping.map_unit(text)


def test_series_names_follow_the_rules():
    assert naming.series_name(("reer.memory.rss", "By", ""), naming.GAUGE) == "reer_memory_rss_bytes"
    assert naming.series_name(("a.b_total", "By", ""), naming.COUNTER) == "a_b_bytes_total"
    assert naming.series_name(("a.duration", "s", ""), naming.HISTOGRAM) == "a_duration_seconds"
    assert naming.series_name(("a.rate", "By/s", ""), naming.GAUGE) == "a_rate_bytes_per_second"
    assert naming.series_name(("a.ratio", "1", ""), naming.GAUGE) == "a_ratio"
    assert naming.label_name("1reer.operation") == "_reer_operation"
