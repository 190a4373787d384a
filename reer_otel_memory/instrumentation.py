"""Auto-instrumentation: memory monitoring and profiling of a service without code changes.

``opentelemetry-instrument`` finds :class:`MemoryInstrumentor` through the entry point
``reer_memory``. ``instrument()`` binds the package to the given providers, starts the default
monitor, wraps the ``REER_MEMORY_PROFILE_TARGETS`` with :func:`~reer_otel_memory.memory_profile`
(now, or when their module is imported) and sets up the pre-fork, framework, server-span and
emergency-signal parts its settings ask for; ``uninstrument()`` undoes all of it. A service must
never fail because of its instrumentation: a bad value from the environment logs one error line
and falls back to the default or skips that target; bad arguments in code raise
:class:`ConfigurationError`. Code that copied a function before instrumentation (``from mod
import func``) keeps the original, hence instrumenting before the service imports anything. The
README ("Without code changes") is the manual.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import signal
import threading
import types
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import wrapt
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

from . import _names as names
from . import _telemetry
from ._runtime import RUNTIME
from .config import checked_number, get_config, server_spans_wanted
from .errors import ConfigurationError
from .frameworks.views import ViewTables
from .monitoring.system_metrics import follow_forks as follow_system_metrics_forks
from .monitoring.system_metrics import stop_following_forks as stop_following_system_metrics_forks
from .profiling.explain_listener import start_explain_listener
from .profiling.operations import memory_profile

if TYPE_CHECKING:
    from .export.endpoint import PrometheusEndpoint
    from .monitoring.monitor import MemoryMonitor

#: Libraries the instrumentor needs installed: none, it instruments the process itself.
_instruments: tuple[str, ...] = ()

logger = logging.getLogger(__name__)

_LOG_PREFIX = "reer_otel_memory instrumentation"
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_OFF_WORDS = frozenset({"", "0", "off", "none", "false", "no"})
#: Seconds after ``instrument()`` (or after a fork) when targets whose module is still not
#: imported are logged, once each. A pre-fork server's parent, which leaves the app to its
#: workers, logs nothing: the workers do.
PENDING_TARGET_GRACE_S = 30.0


# --- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileTarget:
    """One ``module:qualified.name`` to wrap with :func:`memory_profile`."""

    module: str
    qualname: str

    @property
    def spec(self) -> str:
        return f"{self.module}:{self.qualname}"

    @property
    def operation_name(self) -> str:
        """The operation (span and ``reer.operation`` label) its calls are recorded as."""
        return f"{self.module}.{self.qualname}"


def parse_profile_targets(value: str | Iterable[object], name: str = names.ENV_PROFILE_TARGETS) -> tuple[list[ProfileTarget], list[str]]:
    """The targets in ``value`` (comma-separated string or strings) and one error per bad entry.

    ``name`` is the variable or argument, used in the errors. Duplicates are dropped.
    """
    entries = value.split(",") if isinstance(value, str) else list(value)
    targets: list[ProfileTarget] = []
    errors: list[str] = []
    for entry in entries:
        if not isinstance(entry, str):
            errors.append(f"{name}: target {entry!r} is not a string; expected 'module:function' or 'module:Class.method'")
            continue
        text = entry.strip()
        if not text:
            continue
        module, colon, qualname = text.partition(":")
        module, qualname = module.strip(), qualname.strip()
        if not colon or not _DOTTED.match(module) or not _DOTTED.match(qualname):
            errors.append(
                f"{name}: target {text!r} is not 'module:function' or 'module:Class.method' "
                "(dotted Python names either side of one colon)"
            )
            continue
        target = ProfileTarget(module, qualname)
        if target not in targets:
            targets.append(target)
    return targets, errors


def parse_signal(value: object, name: str = names.ENV_EMERGENCY_SIGNAL) -> signal.Signals | None:
    """The signal ``value`` names (``USR1``, ``SIGUSR1``, ``10``, a ``Signals``), None for off."""
    if value is None or isinstance(value, bool):
        if value is True:
            return signal.SIGUSR1
        return None
    if isinstance(value, signal.Signals):
        found: signal.Signals | None = value
    elif isinstance(value, int):
        try:
            found = signal.Signals(value)
        except ValueError:
            found = None
    elif isinstance(value, str):
        text = value.strip()
        if text.lower() in _OFF_WORDS:
            return None
        if text.isdigit():
            try:
                found = signal.Signals(int(text))
            except ValueError:
                found = None
        else:
            upper = text.upper()
            found = getattr(signal.Signals, upper if upper.startswith("SIG") else "SIG" + upper, None)
    else:
        found = None
    if found is None or found in (signal.SIGKILL, signal.SIGSTOP):
        raise ConfigurationError(
            f"{name}={value!r}: expected a catchable signal name or number such as USR1, SIGUSR2 or "
            f"{int(signal.SIGUSR1)}, or 'off'"
        )
    return found


# --- wrapping ------------------------------------------------------------------------------


class _TargetError(Exception):
    """A target that cannot be wrapped; the message says why."""


class _ProfiledCall:
    """The wrapt wrapper of one target: each call runs as a :func:`memory_profile` operation.

    The profiled function is built once, around the target's own function (the ``__func__`` of
    a static or class method), so the span, its name, its ``reer.function`` attribute and the
    handling of coroutines and generators are exactly those of ``@memory_profile``. wrapt has
    already bound the call: ``instance`` is the object (or, for a class method, the class) the
    function receives first, None for plain functions and static methods.
    """

    __slots__ = ("bound", "profiled", "target")

    def __init__(self, function: Callable[..., Any], target: ProfileTarget, bound: bool) -> None:
        self.target = target
        self.bound = bound
        self.profiled: Callable[..., Any] = memory_profile(operation_name=target.operation_name)(function)

    def __call__(self, wrapped: Callable[..., Any], instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.bound and instance is not None:
            return self.profiled(instance, *args, **kwargs)
        return self.profiled(*args, **kwargs)


@dataclass
class _Installed:
    """A wrapper put in place: what to hand to ``wrapt.unwrap_object`` to take it out again."""

    target: ProfileTarget
    container: object  # the module or class holding the attribute
    attribute: str
    handle: object  # the wrapt FunctionWrapper installed


def _wrap(module: types.ModuleType, target: ProfileTarget, installed: Collection[_Installed]) -> _Installed | None:
    """Put the profiled wrapper in place; None if this target is already wrapped.

    ``installed`` are the wrappers in place now: a target inherited from a base class whose
    own target is wrapped wraps the base's original, so each call is one span, not two.
    """
    *outer, attribute = target.qualname.split(".")
    container: object = module
    walked = [target.module]
    for part in outer:
        try:
            container = getattr(container, part)
        except AttributeError:
            raise _TargetError(f"{'.'.join(walked)} has no attribute {part!r}") from None
        walked.append(part)
        if not isinstance(container, type):
            raise _TargetError(f"{'.'.join(walked)} is a {type(container).__name__}, expected a class")
    if isinstance(container, type):
        owned = attribute in container.__dict__
        raw = next((klass.__dict__[attribute] for klass in container.__mro__ if attribute in klass.__dict__), None)
    else:
        owned = attribute in vars(container)
        raw = vars(container).get(attribute)
    if raw is None:
        raise _TargetError(f"{'.'.join(walked)} has no attribute {attribute!r}")
    inherited_wrapper = any(record.handle is raw for record in installed)
    if inherited_wrapper:
        if owned:
            return None
        raw = raw.__wrapped__  # the base class's original
    if isinstance(raw, (staticmethod, classmethod)):
        function = raw.__func__
        bound = isinstance(raw, classmethod)
    elif isinstance(raw, type):
        raise _TargetError(f"{target.operation_name} is a class; name one of its methods, like module:Class.method")
    elif isinstance(raw, property) or (not callable(raw) and hasattr(raw, "__get__")):
        raise _TargetError(f"{target.operation_name} is a {type(raw).__name__}, expected a function or method")
    elif not callable(raw):
        raise _TargetError(f"{target.operation_name} is a {type(raw).__name__}, not callable")
    else:
        function = raw
        bound = isinstance(container, type)
    call = _ProfiledCall(function, target, bound)
    if inherited_wrapper:
        original = raw

        # wrap_object calls factory(found, *args, **kwargs); found is the base class's wrapper.
        def around_original(found: object, *args: object, **kwargs: object) -> wrapt.BaseObjectProxy[Any]:
            return wrapt.FunctionWrapper(original, call)

        handle = wrapt.wrap_object(container, attribute, around_original)
    else:
        handle = wrapt.wrap_function_wrapper(container, attribute, call)
    return _Installed(target, container, attribute, handle)


def _unwrap(record: _Installed) -> bool:
    """Take the wrapper out; False if someone replaced it since (then the replacement stays).

    ``wrapt.unwrap_object`` puts back exactly what was there: the module's or class's own
    function, static or class method object, or, for a wrapper that shadowed an inherited
    method, nothing (the attribute is deleted). A wrapper since wrapped again by another wrapt
    wrapper is spliced out from under it.
    """
    try:
        removed = wrapt.unwrap_object(record.container, record.attribute, record.handle, missing_ok=True)
    except wrapt.WrapperNotOutermostError:
        return False
    return removed is not None


# --- the instrumentor ----------------------------------------------------------------------


class MemoryInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Memory monitoring, profiled targets and the emergency handler for the whole process.

    Keyword arguments of :meth:`instrument`: ``tracer_provider``, ``meter_provider`` (default:
    the global ones), ``profile_targets`` (a comma-separated string or a list; default
    ``REER_MEMORY_PROFILE_TARGETS``), ``emergency_signal`` (a signal, name or number, or None
    for off; default ``REER_MEMORY_EMERGENCY_SIGNAL``), ``start_monitor`` (default True).
    """

    def __init__(self) -> None:
        # BaseInstrumentor is a singleton: __init__ runs on every MemoryInstrumentor() call.
        if not hasattr(self, "_state_lock"):
            self._state_lock = threading.RLock()
            self._generation = 0
            self._installed: list[_Installed] = []
            self._pending: set[ProfileTarget] = set()
            self._previous_telemetry: _telemetry.Telemetry | None = None
            self._started_monitor: MemoryMonitor | None = None
            self._emergency_signal: signal.Signals | None = None
            self._views = ViewTables()
            self._pending_timer: threading.Timer | None = None
            self._pending_grace_s = PENDING_TARGET_GRACE_S
            self._pending_source = names.ENV_PROFILE_TARGETS
            self._server_spans = False
            self._metrics_endpoint: tuple[int, PrometheusEndpoint] | None = None  # (pid, endpoint) of the bounded zero-code /metrics

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    # --- what is in force --------------------------------------------------------------------

    @property
    def wrapped_targets(self) -> list[str]:
        """Targets wrapped right now, as ``module:qualname``."""
        with self._state_lock:
            return [record.target.spec for record in self._installed]

    @property
    def pending_targets(self) -> list[str]:
        """Targets waiting for their module to be imported."""
        with self._state_lock:
            return sorted(target.spec for target in self._pending)

    @property
    def emergency_signal(self) -> signal.Signals | None:
        """The signal the emergency handler was installed on, or None."""
        return self._emergency_signal

    # --- instrument / uninstrument -----------------------------------------------------------

    def _instrument(self, **kwargs: Any) -> None:
        # Arguments given in code are checked before anything changes, and raise.
        explicit_targets = kwargs.get("profile_targets")
        targets: list[ProfileTarget] = []
        if explicit_targets is not None:
            targets, errors = parse_profile_targets(explicit_targets, "profile_targets")
            if errors:
                raise ConfigurationError("; ".join(errors))
        emergency_signal = (
            parse_signal(kwargs["emergency_signal"], "emergency_signal") if "emergency_signal" in kwargs else self._signal_from_environment()
        )
        server_spans = kwargs["server_spans"] if "server_spans" in kwargs else server_spans_wanted()
        if not isinstance(server_spans, bool):
            raise ConfigurationError(f"server_spans={server_spans!r}: expected True or False")
        grace = checked_number(
            kwargs.get("pending_grace_s", PENDING_TARGET_GRACE_S), 0.0, low_inclusive=False,
            name="pending_grace_s", expected="expected a number of seconds above 0",
        )
        if explicit_targets is None:
            targets = self._targets_from_environment()

        self._ensure_config()
        with self._state_lock:
            self._generation += 1
            generation = self._generation
            self._previous_telemetry = _telemetry.current()
        _telemetry.configure(kwargs.get("tracer_provider"), kwargs.get("meter_provider"))
        self._start_monitor(bool(kwargs.get("start_monitor", True)))
        start_explain_listener()  # `reer-otel-memory explain PID`; never raises, off with REER_MEMORY_EXPLAIN=off
        self._share_worker_metrics(kwargs.get("meter_provider"))
        follow_system_metrics_forks()  # OTel's process.* figures in a forked worker: the worker's own
        if emergency_signal is not None:
            self._install_emergency_handler(emergency_signal, "emergency_signal" if "emergency_signal" in kwargs else names.ENV_EMERGENCY_SIGNAL)
        source = "profile_targets" if explicit_targets is not None else names.ENV_PROFILE_TARGETS
        if targets:
            self._views.install()
        for target in targets:
            self._watch(target, generation, source)
        if server_spans:
            self._install_server_spans()
        with self._state_lock:
            self._pending_grace_s, self._pending_source = grace, source
        self._start_pending_timer(generation)

    def _uninstrument(self, **kwargs: Any) -> None:
        with self._state_lock:
            self._generation += 1  # pending post-import hooks of the last instrument() go quiet
            installed, self._installed = self._installed, []
            self._pending.clear()
            previous, self._previous_telemetry = self._previous_telemetry, None
            monitor, self._started_monitor = self._started_monitor, None
            emergency_signal, self._emergency_signal = self._emergency_signal, None
            timer, self._pending_timer = self._pending_timer, None
            server_spans, self._server_spans = self._server_spans, False
            metrics_endpoint, self._metrics_endpoint = self._metrics_endpoint, None
        stop_following_system_metrics_forks()
        if metrics_endpoint is not None and metrics_endpoint[0] == os.getpid():
            from .export.zero_code import give_back

            give_back(metrics_endpoint[1])
        if timer is not None:
            timer.cancel()
        self._views.uninstall()
        if server_spans:
            from .frameworks import server_spans as spans

            spans.uninstall()
        for record in reversed(installed):
            if not _unwrap(record):
                logger.warning(
                    "%s: %s was replaced after it was wrapped; leaving the replacement in place",
                    _LOG_PREFIX,
                    record.target.spec,
                )
        if emergency_signal is not None:
            try:
                from .monitoring.emergency import remove_emergency_memory_handler

                remove_emergency_memory_handler(emergency_signal)
            except Exception as exc:  # never break the host's shutdown
                logger.error("%s: removing the emergency handler failed: %r", _LOG_PREFIX, exc)
        if monitor is not None:
            try:
                monitor.stop_monitoring()
            except Exception as exc:
                logger.error("%s: stopping the memory monitor failed: %r", _LOG_PREFIX, exc)
        if previous is not None:
            _telemetry.restore(previous)

    # --- parts -------------------------------------------------------------------------------

    @staticmethod
    def _signal_from_environment() -> signal.Signals | None:
        try:
            return parse_signal(os.environ.get(names.ENV_EMERGENCY_SIGNAL))
        except ConfigurationError as exc:
            logger.error("%s: %s; the emergency handler stays off", _LOG_PREFIX, exc)
            return None

    @staticmethod
    def _targets_from_environment() -> list[ProfileTarget]:
        targets, errors = parse_profile_targets(os.environ.get(names.ENV_PROFILE_TARGETS, ""))
        if errors:
            logger.error("%s: %s; skipping %s", _LOG_PREFIX, "; ".join(errors), "it" if len(errors) == 1 else "them")
        return targets

    @staticmethod
    def _ensure_config() -> None:
        """Make sure the process-wide configuration is usable before the monitor reads it."""
        get_config()  # a bad REER_MEMORY_* logs one line and falls back (see config.get_config)

    def _start_monitor(self, start: bool) -> None:
        try:
            # Importing the monitor registers its gauges and counters on the Telemetry in force
            # (and on every one bound later), so they appear even when the thread is not started.
            from .monitoring.monitor import get_memory_monitor

            monitor = get_memory_monitor()
            if start and not monitor.is_running:
                monitor.start_monitoring()
                with self._state_lock:
                    self._started_monitor = monitor
        except Exception as exc:
            logger.error("%s: the memory monitor could not start: %r", _LOG_PREFIX, exc)

    def _serve_metrics_bounded(self) -> None:
        """The exporter's zero-code ``/metrics`` moved to the bounded server (export.zero_code), in the process that serves it."""
        parent = os.environ.get(names.ENV_WORKER_PARENT, "").strip()
        if parent.isdigit() and int(parent) != os.getpid():
            return  # a worker or another descendant: it serves nothing (export.workers closes its listener)
        with self._state_lock:
            if self._metrics_endpoint is not None and self._metrics_endpoint[0] == os.getpid():
                return
        try:
            from .export.zero_code import serve_exporter_registry_bounded

            endpoint = serve_exporter_registry_bounded()
        except Exception as exc:  # the stock server serves on
            logger.error("%s: /metrics stays on prometheus_client's server: %r", _LOG_PREFIX, exc)
            return
        if endpoint is None:
            return
        with self._state_lock:
            self._metrics_endpoint = (os.getpid(), endpoint)
        pid = os.getpid()
        atexit.register(lambda: endpoint.shutdown() if os.getpid() == pid else None)

    def _share_worker_metrics(self, meter_provider: Any) -> None:
        """Pre-fork servers: workers' series on the parent's Prometheus page (export.workers); once per process."""
        self._serve_metrics_bounded()
        if getattr(self, "_worker_pages_pid", None) == os.getpid():
            return
        try:
            from opentelemetry import metrics

            from .export.workers import share_worker_metrics

            provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
            share_worker_metrics(provider, get_config().monitoring_interval_s)
            self._worker_pages_pid = os.getpid()
        except Exception as exc:
            logger.error("%s: workers' metrics will not be merged: %r", _LOG_PREFIX, exc)

    def _install_emergency_handler(self, signum: signal.Signals, setting: str) -> None:
        try:
            from .monitoring.emergency import setup_emergency_memory_handler
            from .monitoring.servers import server_taking

            taken = server_taking(signum)
            if taken is not None:  # installed all the same: it works in any process the server does not reach
                logger.warning("%s: %s", _LOG_PREFIX, taken.message(setting))
            setup_emergency_memory_handler(signum)
        except Exception as exc:  # e.g. not the main thread: the service runs on without it
            logger.error("%s: emergency handler on %s not installed: %s", _LOG_PREFIX, signum.name, exc)
            return
        self._emergency_signal = signum

    def _install_server_spans(self) -> None:
        try:
            from .frameworks import server_spans

            server_spans.install()
        except Exception as exc:
            logger.error("%s: %s: requests will not be measured: %r", _LOG_PREFIX, names.ENV_SERVER_SPANS, exc)
            return
        with self._state_lock:
            self._server_spans = True

    def _start_pending_timer(self, generation: int) -> None:
        """Log the targets still pending :data:`PENDING_TARGET_GRACE_S` from now (a daemon timer)."""
        with self._state_lock:
            if not self._pending or generation != self._generation:
                return
            if self._pending_timer is not None:
                self._pending_timer.cancel()
            timer = self._pending_timer = threading.Timer(self._pending_grace_s, self._log_pending, (generation,))
            timer.daemon = True
            timer.name = "reer-memory-pending-targets"
        RUNTIME.after_fork_call(self)  # a forked worker imports the app itself: it starts its own timer
        timer.start()

    def _after_fork_in_child(self) -> None:
        with self._state_lock:
            self._pending_timer = None  # the parent's timer thread is not in the child
            generation = self._generation
        try:
            self._start_pending_timer(generation)
        except Exception as exc:
            logger.error("%s: pending targets will not be reported in this process: %r", _LOG_PREFIX, exc)

    def _log_pending(self, generation: int) -> None:
        with self._state_lock:
            if generation != self._generation:
                return
            pending = sorted(target.spec for target in self._pending)
            grace, source = self._pending_grace_s, self._pending_source
        if not pending:
            return
        try:
            import psutil

            if psutil.Process().children():
                return  # a pre-fork parent (gunicorn's arbiter, uvicorn's supervisor): its workers import the app
        except Exception:
            pass
        for spec in pending:
            module = spec.partition(":")[0]
            logger.error(
                "%s: %s target %r has no effect yet: module %r was not imported %g s after start-up "
                "(a typo in the module name?); it is wrapped if the module is imported later",
                _LOG_PREFIX, source, spec, module, grace,
            )

    def _watch(self, target: ProfileTarget, generation: int, source: str) -> None:
        """Wrap ``target`` now if its module is imported, else when it is."""
        with self._state_lock:
            self._pending.add(target)

        def on_import(module: types.ModuleType) -> None:
            # Runs inside the service's import statement: it must never raise.
            try:
                self._wrap_on_import(module, target, generation, source)
            except Exception as exc:
                logger.error("%s: %s could not be wrapped: %r; skipping it", _LOG_PREFIX, target.spec, exc)

        wrapt.register_post_import_hook(on_import, target.module)

    def _wrap_on_import(self, module: types.ModuleType, target: ProfileTarget, generation: int, source: str) -> None:
        with self._state_lock:
            if generation != self._generation:
                return
            self._pending.discard(target)
            try:
                record = _wrap(module, target, self._installed)
            except _TargetError as exc:
                logger.error("%s: %s target %r cannot be wrapped: %s; skipping it", _LOG_PREFIX, source, target.spec, exc)
                return
            if record is not None:
                self._installed.append(record)
                if record.container is module and isinstance(record.handle, wrapt.FunctionWrapper):
                    # A view: the framework's route table holds the original too (frameworks.views).
                    self._views.view_wrapped(target.spec, module, record.handle.__wrapped__, record.handle)
