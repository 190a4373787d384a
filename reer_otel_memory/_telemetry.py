"""The tracer and instruments profiled operations report to, bound to providers.

By default they are bound to the global OpenTelemetry providers (through the API's proxies, so
an SDK configured later is picked up). :func:`configure` rebinds them to explicit providers:
the instrumentor and :mod:`reer_otel_memory.testing` use it. A part of the package with
instruments of its own keeps them on the providers in force through
:func:`register_on_every_telemetry`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Counter, MeterProvider, Observation
from opentelemetry.metrics import _internal as _metrics_internal
from opentelemetry.trace import TracerProvider
from opentelemetry.util.types import AttributeValue

from . import _names as names
from ._runtime import RUNTIME
from ._version import __version__

#: Histogram buckets for bytes: 64 KiB to 16 GiB in steps of 4x.
BYTES_BUCKETS = tuple(float(64 * 1024 * 4**i) for i in range(10))
#: Distinct operations a process records metrics under; later ones share the overflow attributes.
MAX_OPERATIONS = 1000
#: The attributes of every call of an operation past :data:`MAX_OPERATIONS`.
OVERFLOW_ATTRIBUTES: Mapping[str, AttributeValue] = {names.LABEL_METRIC_OVERFLOW: True}
_MISSING = object()
R = TypeVar("R")
#: Histogram buckets for operation durations, seconds.
DURATION_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)


def _global_sdk_configured() -> bool:
    """True once a real global tracer or meter provider is set.

    Reads the API's module globals directly (``get_tracer_provider()`` costs several times more,
    too much for a check on every profiled call); falls back to the public calls if they move.
    """
    try:
        return trace._TRACER_PROVIDER is not None or _metrics_internal._METER_PROVIDER is not None
    except AttributeError:
        return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider) or not isinstance(
            metrics.get_meter_provider(), _metrics_internal._ProxyMeterProvider
        )


def _global_meter_configured() -> bool:
    meter_provider = getattr(_metrics_internal, "_METER_PROVIDER", _MISSING)
    if meter_provider is _MISSING:
        return not isinstance(metrics.get_meter_provider(), _metrics_internal._ProxyMeterProvider)
    return meter_provider is not None


class _OperationAttributes:
    """The metric attributes of each operation, the same mapping for every call, at most
    :data:`MAX_OPERATIONS` of them: the process's series stay bounded whatever the SDK's own
    cardinality limit does (SDKs before 1.45.2 kept an aggregation for every attribute set)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_operation: dict[str, Mapping[str, AttributeValue]] = {}

    def get(self, operation: str) -> Mapping[str, AttributeValue]:
        found = self.by_operation.get(operation)
        if found is None:
            with self.lock:
                found = self.by_operation.get(operation)
                if found is None:
                    if len(self.by_operation) >= MAX_OPERATIONS:
                        return OVERFLOW_ATTRIBUTES
                    found = self.by_operation[operation] = {names.LABEL_OPERATION: operation}
        return found

    def _after_fork_in_child(self) -> None:
        self.lock = threading.Lock()


def operation_attributes(operation: str) -> Mapping[str, AttributeValue]:
    """The metric attributes to record ``operation``'s calls under (``reer.operation``, or past
    the cap the overflow attributes)."""
    return RUNTIME.get("operation_attributes", _OperationAttributes).get(operation)


class OperationNet:
    """Each operation's sum of RSS deltas (bounded to :data:`MAX_OPERATIONS`; later
    ones are summed under the overflow attributes), observed at collection time.

    Summed here rather than recorded on a synchronous instrument: one instrument fewer on the hot
    path (each SDK record is a real share of a profiled call, docs/performance.md).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes_by_operation: dict[str | None, int] = {}  # None: the operations past the cap

    def add(self, operation: str, delta_bytes: int) -> None:
        net = self.bytes_by_operation
        with self.lock:  # a read-modify-write: two threads must not lose an update
            key: str | None = operation
            previous = net.get(operation)
            if previous is None and len(net) >= MAX_OPERATIONS:
                key, previous = None, net.get(None)
            net[key] = (previous or 0) + delta_bytes

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(value, OVERFLOW_ATTRIBUTES if op is None else {names.LABEL_OPERATION: op})
            for op, value in list(self.bytes_by_operation.items())
        ]

    def _after_fork_in_child(self) -> None:
        self.lock = threading.Lock()  # another thread may have held it when the process forked


class _OperationNets:
    """One OperationNet per meter provider (the global one under the key None)."""

    def __init__(self) -> None:
        self.global_net = OperationNet()
        self.by_provider: weakref.WeakKeyDictionary[MeterProvider, OperationNet] = weakref.WeakKeyDictionary()

    def for_provider(self, meter_provider: MeterProvider | None) -> OperationNet:
        if meter_provider is None or meter_provider is metrics.get_meter_provider():
            return self.global_net
        with RUNTIME.lock("telemetry.operation_net"):
            net = self.by_provider.get(meter_provider)
            if net is None:
                net = self.by_provider[meter_provider] = OperationNet()
            return net


def _operation_net_for(meter_provider: MeterProvider | None) -> OperationNet:
    # A forked child is a new process to Prometheus: its sums start from zero.
    return RUNTIME.get("operation_nets", _OperationNets).for_provider(meter_provider)


class Telemetry:
    """A tracer plus the profiled-operation instruments, from one pair of providers."""

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.tracer = trace.get_tracer(names.INSTRUMENTATION_SCOPE, __version__, tracer_provider=tracer_provider, schema_url=names.SCHEMA_URL)
        self.meter = metrics.get_meter(names.INSTRUMENTATION_SCOPE, __version__, meter_provider=meter_provider, schema_url=names.SCHEMA_URL)
        self._sdk = tracer_provider is not None or meter_provider is not None
        self._metrics = meter_provider is not None
        name, unit, description = names.METRIC_OPERATION_PEAK
        self.operation_peak = self.meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=BYTES_BUCKETS
        )
        self._net: OperationNet | None = None
        # Every Telemetry on one meter provider shares one OperationNet: the SDK hands a second
        # Telemetry on the same meter the instrument made for the first, whose callback would
        # otherwise read the first one's sums (empty once the second is in force).
        name, unit, description = names.METRIC_OPERATION_NET
        self.meter.create_observable_up_down_counter(name, callbacks=[self._observe_operation_net], unit=unit, description=description)
        name, unit, description = names.METRIC_OPERATION_DURATION
        self.operation_duration = self.meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=DURATION_BUCKETS
        )
        # Reentrant: what instruments() makes may ask for instruments of its own.
        self._instruments_lock = threading.RLock()
        self._instruments: dict[str, Any] = {}
        RUNTIME.after_fork_call(self)

    def _after_fork_in_child(self) -> None:
        # Another thread may have held it when the process forked.
        self._instruments_lock = threading.RLock()
        self._net = None  # a forked child's sums start from zero

    @property
    def operation_net(self) -> OperationNet:
        """The per-operation sums this Telemetry's instrument reports."""
        net = self._net
        if net is None:
            net = self._net = _operation_net_for(self.meter_provider)
        return net

    def instruments(self, key: str, make: Callable[[Telemetry], R]) -> R:
        """What ``make(self)`` returned, made on this Telemetry's meter the first time ``key`` is asked for."""
        found = self._instruments.get(key, _MISSING)
        if found is _MISSING:
            with self._instruments_lock:
                found = self._instruments.get(key, _MISSING)
                if found is _MISSING:
                    found = self._instruments[key] = make(self)
        return cast(R, found)

    def add_operation_net(self, operation: str, delta_bytes: int) -> None:
        """Add one call's RSS delta to its operation's running sum (bounded: see :class:`OperationNet`)."""
        self.operation_net.add(operation, delta_bytes)

    def _observe_operation_net(self, options: CallbackOptions) -> Iterable[Observation]:
        return self.operation_net.observe(options)

    def metrics_recording(self) -> bool:
        """True once this Telemetry's meter is a real SDK meter (explicit, or the global one set).

        Until then the instruments are the API's no-op proxies: the hot path skips them.
        """
        if self._metrics:
            return True
        if self.meter_provider is not None or _global_meter_configured():
            self._metrics = True
        return self._metrics

    def recording(self) -> bool:
        """True once an SDK is configured (global or explicit): then spans and metrics are kept."""
        if self._sdk:
            return True
        if _global_sdk_configured():
            self._sdk = True
        return self._sdk

    def observable_gauge(
        self, metric: tuple[str, str, str], callback: Callable[[CallbackOptions], Iterable[Observation]]
    ) -> None:
        """Register an observable gauge once per Telemetry (later calls with the same name are ignored)."""
        name, unit, description = metric
        self.instruments(name, lambda telemetry: telemetry.meter.create_observable_gauge(name, callbacks=[callback], unit=unit, description=description))

    def counter(self, metric: tuple[str, str, str]) -> Counter:
        """The counter for ``metric`` on this Telemetry's meter, created on first use."""
        name, unit, description = metric
        return self.instruments(name, lambda telemetry: telemetry.meter.create_counter(name, unit=unit, description=description))


class Registrations:
    """What :func:`register_on_every_telemetry` was given, by key."""

    def __init__(self) -> None:
        self.by_key: dict[str, Callable[[Telemetry], None]] = {}


def _registrations() -> Registrations:
    return RUNTIME.get("registrations", Registrations)


def _first_telemetry() -> Telemetry:
    telemetry = Telemetry()
    for key, register in list(_registrations().by_key.items()):
        telemetry.instruments(key, register)
    return telemetry


def current() -> Telemetry:
    """The Telemetry in force (bound to the global providers until :func:`configure`)."""
    return RUNTIME.telemetry or RUNTIME.get("telemetry", _first_telemetry)


def _put(telemetry: Telemetry) -> None:
    with RUNTIME.lock("telemetry"):
        RUNTIME.replace("telemetry", telemetry)
        registered = list(_registrations().by_key.items())
    for key, register in registered:
        telemetry.instruments(key, register)


def configure(tracer_provider: TracerProvider | None = None, meter_provider: MeterProvider | None = None) -> Telemetry:
    """Bind profiled operations and package instruments to these providers (None: the global ones)."""
    telemetry = Telemetry(tracer_provider, meter_provider)
    _put(telemetry)
    return telemetry


def restore(telemetry: Telemetry) -> None:
    """Put back a Telemetry returned by :func:`current` earlier."""
    _put(telemetry)


def register_on_every_telemetry(key: str, register: Callable[[Telemetry], None]) -> None:
    """Run ``register(telemetry)`` on the Telemetry in force and on every one bound later, once on
    each: how a part of the package keeps its instruments on the providers in force."""
    with RUNTIME.lock("telemetry"):
        _registrations().by_key.setdefault(key, register)
    current().instruments(key, register)
