"""One exception hierarchy: every error on bad input is a ReerMemoryError and its builtin."""

from __future__ import annotations

import math

import pytest

from reer_otel_memory.deploy import _yaml
from reer_otel_memory.deploy.rules import format_duration, rule_groups
from reer_otel_memory.errors import (
    ConfigurationError,
    InvalidArgumentError,
    MalformedLineError,
    NotFoundError,
    ReerMemoryError,
    TraceStoreError,
)
from reer_otel_memory.export.endpoint import start_prometheus_exporter
from reer_otel_memory.instrumentation import parse_signal
from reer_otel_memory.ml.lazy import LazyModelLoader
from reer_otel_memory.ml.optimizer import MemoryOptimizer
from reer_otel_memory.ml.profiler import MemoryProfiler
from reer_otel_memory.ml.resources import MemoryResourceManager
from reer_otel_memory.ml.sizing import estimate_size
from reer_otel_memory.trace_store.jsonl import StreamingJSONLReader
from reer_otel_memory.trace_store.store import REERTraceStore


@pytest.mark.parametrize(
    ("error_class", "builtin"),
    [
        (ConfigurationError, ValueError),
        (InvalidArgumentError, TypeError),
        (NotFoundError, KeyError),
        (TraceStoreError, ValueError),
        (MalformedLineError, ValueError),
    ],
)
def test_each_error_is_a_reer_memory_error_and_its_builtin(error_class, builtin):
    assert issubclass(error_class, ReerMemoryError)
    assert issubclass(error_class, builtin)
    assert issubclass(ReerMemoryError, Exception) and not issubclass(ReerMemoryError, (ValueError, TypeError, KeyError))


def test_not_found_reads_as_its_message_not_a_quoted_key():
    error = NotFoundError("get_model_stats(model_name='x'): no load of that model was profiled")
    assert str(error) == "get_model_stats(model_name='x'): no load of that model was profiled"


def _bad_inputs(tmp_path):
    """(call, expected class, fragments the message must hold: the input, its value, the expectation)."""
    jsonl = tmp_path / "traces.jsonl"
    jsonl.write_text("")
    return [
        (lambda: estimate_size([], max_objects=0), ConfigurationError, ["max_objects=0", "expected a positive integer"]),
        (lambda: MemoryProfiler(max_models=-3), ConfigurationError, ["max_models=-3", "expected a positive integer"]),
        (
            lambda: MemoryProfiler().profile_model_loading("bert", 42),
            InvalidArgumentError,
            ["load_model_func=42", "expected a callable"],
        ),
        (lambda: MemoryProfiler().get_model_stats("gpt"), NotFoundError, ["model_name='gpt'", "no load of that model"]),
        (lambda: format_duration(-1), ConfigurationError, ["for_s=-1", "expected a non-negative number of seconds"]),
        (lambda: rule_groups(config="strict"), InvalidArgumentError, ["config='strict'", "expected a MemoryConfig"]),
        (lambda: start_prometheus_exporter(port=70000), ConfigurationError, ["port=70000", "expected a port number"]),
        (lambda: parse_signal("SIGNOPE"), ConfigurationError, ["'SIGNOPE'", "expected a catchable signal"]),
        (lambda: _yaml.dumps({"x": math.nan}), ConfigurationError, ["value=nan", "expected a finite number"]),
        (lambda: _yaml.dumps({"x": object()}), InvalidArgumentError, ["value=<object", "expected a mapping"]),
        (lambda: StreamingJSONLReader(3), InvalidArgumentError, ["file_path=3", "expected a path"]),
        (lambda: StreamingJSONLReader(jsonl, chunk_size=0), TraceStoreError, ["chunk_size=0", "expected a positive number of bytes"]),
        (lambda: REERTraceStore(jsonl, chunk_bytes=0), TraceStoreError, ["chunk_bytes=0", "expected a positive number of bytes"]),
    ]


def test_representative_bad_inputs_raise_the_hierarchy_naming_input_value_and_expectation(tmp_path):
    for call, error_class, fragments in _bad_inputs(tmp_path):
        with pytest.raises(error_class) as caught:
            call()
        assert type(caught.value) is error_class, (fragments, caught.value)
        assert isinstance(caught.value, ReerMemoryError)
        message = str(caught.value)
        for fragment in fragments:
            assert fragment in message, (fragment, message)


def test_callers_catching_the_builtins_keep_working():
    with pytest.raises(ValueError):
        estimate_size([], max_objects=0)
    with pytest.raises(TypeError):
        MemoryProfiler().profile_model_loading("bert", 42)
    with pytest.raises(KeyError):
        MemoryProfiler().get_model_stats("gpt")


@pytest.mark.parametrize(
    ("call", "error_class", "fragments"),
    [
        pytest.param(
            lambda: MemoryResourceManager(max_size_objects=0),
            ConfigurationError,
            ["max_size_objects=0", "expected a positive integer"],
            id="resources-max-size-objects",
        ),
        pytest.param(
            lambda: MemoryResourceManager().register_resource("", [1]),
            InvalidArgumentError,
            ["name=''", "expected a non-empty string"],
            id="resources-name",
        ),
        pytest.param(
            lambda: MemoryResourceManager().register_resource("r", [1], cleanup_callback=lambda a, b: None),
            InvalidArgumentError,
            ["cleanup_callback=<function", "expected a callable taking no argument or the resource"],
            id="resources-callback-signature",
        ),
        pytest.param(
            lambda: MemoryResourceManager().register_resource("r", [1], memory_limit_mb=0),
            ConfigurationError,
            ["memory_limit_mb=0", "expected a positive number of MB up to 1073741824 (1 PiB)"],
            id="resources-memory-limit",
        ),
        pytest.param(
            lambda: MemoryOptimizer.register_cache(5),
            InvalidArgumentError,
            ["cache=5", "expected an object with cache_clear()"],
            id="optimizer-cache",
        ),
        pytest.param(
            lambda: MemoryOptimizer.register_cache({}, name=""),
            InvalidArgumentError,
            ["name=''", "expected a non-empty string"],
            id="optimizer-cache-name",
        ),
        pytest.param(
            lambda: MemoryOptimizer.find_large_objects(size_threshold_mb=-1),
            ConfigurationError,
            ["size_threshold_mb=-1", "expected a number of MB from 0 up to 1073741824 (1 PiB)"],
            id="optimizer-threshold",
        ),
        pytest.param(lambda: MemoryOptimizer.optimize_numpy_arrays([], float_rtol=2), ConfigurationError, ["float_rtol=2", "below 1"], id="optimizer-rtol"),
        pytest.param(lambda: MemoryOptimizer.optimize_numpy_arrays(5), InvalidArgumentError, ["int 5", "expected an array"], id="optimizer-not-arrays"),
        pytest.param(
            lambda: MemoryOptimizer.optimize_numpy_arrays([], report=()),
            InvalidArgumentError,
            ["report=()", "expected a list"],
            id="optimizer-report",
        ),
        pytest.param(lambda: LazyModelLoader("model.bin"), InvalidArgumentError, ["load_model_func='model.bin'", "expected a callable"], id="lazy-loader"),
        pytest.param(
            lambda: LazyModelLoader(dict, idle_timeout_s=-1),
            ConfigurationError,
            ["idle_timeout_s=-1", "expected seconds >= 0"],
            id="lazy-idle-timeout",
        ),
        pytest.param(
            lambda: LazyModelLoader(dict, model_name=""),
            InvalidArgumentError,
            ["model_name=''", "expected a non-empty string"],
            id="lazy-model-name",
        ),
        pytest.param(lambda: LazyModelLoader(dict, profiler="p"), InvalidArgumentError, ["profiler='p'", "expected a MemoryProfiler"], id="lazy-profiler"),
    ],
)
def test_ml_bad_inputs_raise_the_hierarchy_naming_input_value_and_expectation(call, error_class, fragments):
    with pytest.raises(error_class) as caught:
        call()
    assert type(caught.value) is error_class, (fragments, caught.value)
    assert isinstance(caught.value, ReerMemoryError)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
