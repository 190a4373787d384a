"""Property tests: no value of any REER_MEMORY_* variable or numeric argument escapes as anything
but a ReerMemoryError naming it, and none stops a running monitor.

Arbitrary strings go to every variable through ``load_config(environ)`` and the parsers the
instrumentor uses; arbitrary numbers, strings and other objects go to the public functions'
numeric arguments, while a real monitor samples on its thread. Each property is bounded
(``max_examples``) so the suite stays fast.
"""

from __future__ import annotations

import fractions
from typing import Any

import numpy as np
import pytest
from _procfs import ProcDir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reer_otel_memory import (
    MemoryMonitor,
    MemoryOptimizer,
    MemoryTracker,
    ReerMemoryError,
    StreamingJSONLReader,
    set_memory_limit,
    setup_memory_limits,
)
from reer_otel_memory import _names as names
from reer_otel_memory.config import MemoryConfig, MemoryLimit, load_config, load_config_with_fallbacks, parse_bool
from reer_otel_memory.instrumentation import parse_profile_targets, parse_signal
from reer_otel_memory.ml.resources import MemoryResourceManager
from reer_otel_memory.trace_store import REERTraceStore

LIMIT = MemoryLimit(8 << 30, "test limit")
BOUNDED = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

#: Strings a person or a template might put in a variable, plus anything at all.
variable_values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["1e308", "inf", "-inf", "nan", "1_000", "\uff11\uff10", "0x10", "80%", "1e-9%", "+5", " 7 ", "1e10", "0.1", "86400"]),
    st.from_regex(r"[+-]?[0-9]{0,400}(\.[0-9]*)?([eE][+-]?[0-9]{1,4})?%?", fullmatch=True),
)

#: Values for numeric arguments: every kind of number, huge and tiny, and things that are not numbers.
numeric_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.fractions(),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from([None, [], {}, object(), b"10", complex(1, 1), 10**400, 1e308, -0.0, 5e-324]),
)


def assert_names(error: ReerMemoryError, argument: str, value: object) -> None:
    message = str(error)
    assert argument in message, message
    assert repr(value) in message, message


@pytest.fixture
def running_monitor(tmp_path):
    proc = ProcDir(tmp_path, rss_bytes=10 << 20)
    monitor = MemoryMonitor(probe=proc.probe, tracker=MemoryTracker(max_snapshots=10, probe=proc.probe))
    monitor.configure(monitoring_interval=0.1)
    monitor.start_monitoring()
    yield monitor
    monitor.stop_monitoring()
    proc.close()


# --- environment variables -------------------------------------------------------------------

CONFIG_VARIABLES = [names.ENV_ALERT_MB, names.ENV_CLEANUP_MB, names.ENV_CRITICAL_MB, names.ENV_MONITORING_INTERVAL]


@BOUNDED
@given(variable=st.sampled_from(CONFIG_VARIABLES), value=variable_values)
def test_any_string_in_a_config_variable_is_accepted_or_refused_naming_it(variable, value):
    environ = {variable: value}
    try:
        config = load_config(environ, limit=LIMIT)
    except ReerMemoryError as error:
        assert_names(error, variable, value)
        # With the real memory limit a percentage may be fine; the fallback never raises either way.
        fallback, problem = load_config_with_fallbacks(environ)
        assert isinstance(fallback, MemoryConfig) and (problem is None or variable in problem)
    else:
        assert 0 < config.alert_bytes <= config.cleanup_bytes <= config.critical_bytes <= 1 << 50
        assert 0.1 <= config.monitoring_interval_s <= 86400


@BOUNDED
@given(values=st.fixed_dictionaries({}, optional={variable: variable_values for variable in CONFIG_VARIABLES}))
def test_any_strings_in_all_config_variables_together_never_raise_anything_else(values):
    try:
        load_config(values, limit=LIMIT)
    except ReerMemoryError as error:
        bad = [variable for variable in values if variable in str(error)]
        assert bad, str(error)
    config, _ = load_config_with_fallbacks(values)
    assert 0 < config.alert_bytes <= config.cleanup_bytes <= config.critical_bytes
    assert 0.1 <= config.monitoring_interval_s <= 86400


@BOUNDED
@given(value=variable_values)
def test_any_string_in_the_other_variables_is_accepted_or_refused_naming_it(value):
    try:
        parse_bool(names.ENV_RESET_PEAK, value, default=True)
    except ReerMemoryError as error:
        assert_names(error, names.ENV_RESET_PEAK, value)
    try:
        parse_signal(value)
    except ReerMemoryError as error:
        assert_names(error, names.ENV_EMERGENCY_SIGNAL, value)
    targets, errors = parse_profile_targets(value)
    assert all(names.ENV_PROFILE_TARGETS in error for error in errors)


# --- numeric arguments -----------------------------------------------------------------------


@BOUNDED
@given(argument=st.sampled_from(["alert_mb", "cleanup_mb", "critical_mb", "monitoring_interval"]), value=numeric_values)
def test_setup_memory_limits_accepts_or_refuses_any_value_and_the_monitor_keeps_running(running_monitor, argument, value):
    try:
        setup_memory_limits(**{argument: value})
    except ReerMemoryError as error:
        assert_names(error, argument, value)
    try:
        set_memory_limit(value)
    except ReerMemoryError as error:
        assert_names(error, "critical_mb", value)
    assert running_monitor.is_running


@BOUNDED
@given(
    argument=st.sampled_from(
        ["alert_threshold_mb", "critical_threshold_mb", "cleanup_threshold_mb", "monitoring_interval", "hysteresis_share", "cleanup_cooldown_s"]
    ),
    value=numeric_values,
)
def test_a_monitor_accepts_or_refuses_any_value_and_keeps_running(running_monitor, argument, value):
    try:
        MemoryMonitor(**{argument: value}, probe=running_monitor.probe, tracker=running_monitor.tracker)
    except ReerMemoryError as error:
        assert_names(error, argument, value)
    if argument in ("alert_threshold_mb", "critical_threshold_mb", "cleanup_threshold_mb", "monitoring_interval"):
        try:
            running_monitor.configure(**{argument: value})
        except ReerMemoryError as error:
            assert_names(error, argument, value)
        running_monitor.configure(alert_threshold_mb=1000, cleanup_threshold_mb=1500, critical_threshold_mb=2000, monitoring_interval=0.1)
    assert running_monitor.is_running


@BOUNDED
@given(value=numeric_values)
def test_ml_and_trace_store_arguments_accept_or_refuse_any_value(tmp_path, value):
    calls: list[tuple[str, Any]] = [
        ("memory_limit_mb", lambda: MemoryResourceManager().register_resource("r", [1], memory_limit_mb=value)),
        ("float_rtol", lambda: MemoryOptimizer.optimize_numpy_arrays(np.ones(4), float_rtol=value)),
        ("chunk_size", lambda: StreamingJSONLReader(tmp_path / "x.jsonl", chunk_size=value)),
        ("max_line_bytes", lambda: StreamingJSONLReader(tmp_path / "x.jsonl", max_line_bytes=value)),
        ("max_reported_malformed", lambda: StreamingJSONLReader(tmp_path / "x.jsonl", max_reported_malformed=value)),
        ("chunk_bytes", lambda: REERTraceStore(tmp_path / "t.jsonl", chunk_bytes=value)),
    ]
    for argument, call in calls:
        try:
            call()
        except ReerMemoryError as error:
            assert_names(error, argument, value)


def test_fractions_and_huge_integers_are_numbers_like_any_other():
    assert setup_memory_limits(alert_mb=fractions.Fraction(1, 2)).alert_bytes == 1 << 19
    with pytest.raises(ReerMemoryError, match=r"up to 1073741824 \(1 PiB\)"):
        setup_memory_limits(critical_mb=10**400)
