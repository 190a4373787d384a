"""Thresholds and interval from ``REER_MEMORY_*`` variables or code, and the effective memory limit.

A ``*_MB`` value is a number of MB or ``NN%`` of the effective limit (the smallest cgroup limit up
the hierarchy, or physical RAM); a device threshold is a percentage of that device's own limit.
Every range is checked in one place (:func:`parse_threshold_mb`, :func:`parse_interval_s`,
:func:`parse_bool`) for variables and arguments alike, and numbers are plain ASCII decimals, so
``inf``, ``nan`` and ``1_000`` are refused. Bad values raise one :class:`ConfigurationError`
naming every one of them; :func:`get_config`, which profiled calls, monitors and
auto-instrumentation read, never raises: it logs one line and uses the default for each bad
value. docs/telemetry.md lists every variable and its range.
"""

from __future__ import annotations

import itertools
import logging
import math
import numbers
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, overload

import psutil

from . import _cgroup
from . import _names as names
from ._runtime import RUNTIME
from .errors import ConfigurationError
from .levels import THRESHOLD_LEVELS, MemoryLevel

logger = logging.getLogger(__name__)

MB = 1024 * 1024

DEFAULT_ALERT_MB = 1000.0
DEFAULT_CLEANUP_MB = 1500.0
DEFAULT_CRITICAL_MB = 2000.0
DEFAULT_MONITORING_INTERVAL_S = 30.0

#: Where the kernel mounts the cgroup hierarchy; a parameter everywhere so tests build real trees.
DEFAULT_CGROUP_ROOT = _cgroup.DEFAULT_CGROUP_ROOT
DEFAULT_PROC_CGROUP = _cgroup.DEFAULT_PROC_CGROUP


@dataclass(frozen=True)
class MemoryLimit:
    """The effective memory limit and which source set it."""

    bytes: int
    source: str  # "cgroup v2 <path>", "cgroup v1 <path>" or "physical RAM"


@dataclass(frozen=True)
class MemoryConfig:
    """Effective thresholds (bytes), sampling interval and where each value came from."""

    alert_bytes: int
    cleanup_bytes: int
    critical_bytes: int
    monitoring_interval_s: float
    limit: MemoryLimit
    sources: Mapping[str, str] = field(default_factory=dict)
    #: Thresholds on each accelerator device by level (``alert``, ``cleanup``, ``critical``); a
    #: level left out has none. From ``REER_MEMORY_DEVICE_*_MB``.
    device_thresholds: Mapping[str, DeviceThreshold] = field(default_factory=dict)
    #: What the host levels compare: ``rss`` or ``working_set`` (``REER_MEMORY_THRESHOLD_SOURCE``).
    threshold_source: str = names.SOURCE_RSS

    @property
    def alert_mb(self) -> float:
        return self.alert_bytes / MB

    @property
    def cleanup_mb(self) -> float:
        return self.cleanup_bytes / MB

    @property
    def critical_mb(self) -> float:
        return self.critical_bytes / MB

    def threshold_bytes(self, level: MemoryLevel) -> int:
        """The RSS at which ``level`` begins (0 for ok)."""
        if level is MemoryLevel.ALERT:
            return self.alert_bytes
        if level is MemoryLevel.CLEANUP:
            return self.cleanup_bytes
        if level is MemoryLevel.CRITICAL:
            return self.critical_bytes
        return 0

    def level_for(self, rss_bytes: int) -> MemoryLevel:
        """The level an RSS falls in, without hysteresis."""
        if rss_bytes >= self.critical_bytes:
            return MemoryLevel.CRITICAL
        if rss_bytes >= self.cleanup_bytes:
            return MemoryLevel.CLEANUP
        if rss_bytes >= self.alert_bytes:
            return MemoryLevel.ALERT
        return MemoryLevel.OK

    def device_threshold_bytes(self, level: MemoryLevel, limit_bytes: int | None) -> int | None:
        """Where ``level`` begins on a device with ``limit_bytes`` (None: no such threshold there)."""
        threshold = self.device_thresholds.get(level.value)
        return None if threshold is None else threshold.resolve(limit_bytes)

    def device_level_for(self, used_bytes: int, limit_bytes: int | None) -> MemoryLevel:
        """The level a device's use falls in, without hysteresis: the highest threshold reached."""
        reached = MemoryLevel.OK
        for level in THRESHOLD_LEVELS:
            threshold_bytes = self.device_threshold_bytes(level, limit_bytes)
            if threshold_bytes is not None and used_bytes >= threshold_bytes:
                reached = level
        return reached


@dataclass(frozen=True)
class DeviceThreshold:
    """One device threshold: a number of bytes, or a percentage of each device's own limit."""

    bytes: int | None = None
    percent: float | None = None

    def resolve(self, limit_bytes: int | None) -> int | None:
        """Bytes on a device with ``limit_bytes``; None for a percentage where the limit is unknown."""
        if self.bytes is not None:
            return self.bytes
        if self.percent is None or not limit_bytes:
            return None
        return max(1, int(limit_bytes * self.percent / 100))

    def __str__(self) -> str:
        return f"{self.percent:g}% of the device's limit" if self.percent is not None else f"{(self.bytes or 0) / MB:g} MB"


# --- the effective limit -------------------------------------------------------------------


def effective_memory_limit(
    cgroup_root: str | os.PathLike[str] = DEFAULT_CGROUP_ROOT,
    proc_cgroup: str | os.PathLike[str] = DEFAULT_PROC_CGROUP,
    physical_bytes: int | None = None,
) -> MemoryLimit:
    """Smallest of cgroup v2 ``memory.max``, cgroup v1 ``memory.limit_in_bytes`` and RAM.

    Both cgroup versions are walked from the process's own cgroup up to the root, since a
    parent's limit binds its children (:mod:`reer_otel_memory._cgroup` finds and reads them).
    Unreadable files and ``max`` mean no limit there.
    """
    if physical_bytes is None:
        physical_bytes = psutil.virtual_memory().total
    best = MemoryLimit(int(physical_bytes), "physical RAM")
    root = Path(cgroup_root)
    v2, v1 = _cgroup.cgroup_paths(proc_cgroup)
    found = []
    if v2 is not None:
        v2_root = _cgroup.v2_root(root)
        found.append(("cgroup v2", _cgroup.MemoryCgroup(v2_root / v2.lstrip("/"), 2, root=v2_root)))
    if v1 is not None:
        v1_root = root / "memory"
        found.append(("cgroup v1", _cgroup.MemoryCgroup(v1_root / v1.lstrip("/"), 1, root=v1_root)))
    for version, cgroup in found:
        value, path = cgroup.limit()
        if value is not None and value < best.bytes:
            best = MemoryLimit(value, f"{version} {path}")
    return best


# --- parsing -------------------------------------------------------------------------------

#: The largest threshold accepted: 1 PiB, in MB. Anything above is a typo, not a memory size.
MAX_THRESHOLD_MB = float(1 << 30)
#: The monitoring interval's range: faster burns CPU for nothing, slower is no monitoring.
MIN_INTERVAL_S = 0.1
MAX_INTERVAL_S = 86400.0
#: The words a boolean ``REER_MEMORY_*`` variable accepts (any case); anything else is refused.
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")

# An ASCII decimal number: no '_', no other digits ('\uff11\uff10'), no 'inf' or 'nan'.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SPACE = " \t\r\n"

_THRESHOLD_EXPECTED = (
    f"expected a positive number of MB (1 MB = 1048576 bytes) up to {MAX_THRESHOLD_MB:.0f} (1 PiB), "
    "or a percentage like '80%' of the memory limit"
)
_DEVICE_THRESHOLD_EXPECTED = (
    f"expected a positive number of MB (1 MB = 1048576 bytes) up to {MAX_THRESHOLD_MB:.0f} (1 PiB), "
    "or a percentage like '80%' of the device's memory limit"
)
_INTERVAL_EXPECTED = f"expected a positive number of seconds from {MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:.0f} (1 day)"


def _decimal(text: str) -> float | None:
    """The value of an ASCII decimal number (``inf`` if it overflows), None if ``text`` is not one."""
    text = text.strip(_SPACE)
    if not _DECIMAL.fullmatch(text):
        return None
    return float(text)


def _number(value: object) -> float | None:
    """``value`` as a float (``inf`` if too large), None if it is not a number or ASCII decimal."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return _decimal(value)
    if isinstance(value, numbers.Real):  # int, float, Fraction, numpy scalars
        try:
            return float(value)
        except OverflowError:
            return math.inf
    return None


def _in_range(number: float | None, low: float, high: float, *, low_inclusive: bool, high_inclusive: bool = True) -> bool:
    """The one range check of every setting: above (or at) ``low``, at most (or below) ``high``; never NaN."""
    if number is None:
        return False
    return (number >= low if low_inclusive else number > low) and (number <= high if high_inclusive else number < high)


def number_in_range(value: object, low: float, high: float, *, low_inclusive: bool = True, high_inclusive: bool = True) -> float | None:
    """``value`` as a float if it is a number (not a string or bool) within the range, else None.

    For other modules' numeric arguments, so every range is checked the same way: a huge
    integer is out of range, never an ``OverflowError``.
    """
    number = None if isinstance(value, str) else _number(value)
    return number if _in_range(number, low, high, low_inclusive=low_inclusive, high_inclusive=high_inclusive) else None


@overload
def checked_number(
    value: object, low: float, high: float = ..., *, name: str, expected: str, where: str = ...,
    whole: Literal[True], low_inclusive: bool = ..., high_inclusive: bool = ...,
) -> int: ...
@overload
def checked_number(
    value: object, low: float, high: float = ..., *, name: str, expected: str, where: str = ...,
    whole: Literal[False] = ..., low_inclusive: bool = ..., high_inclusive: bool = ...,
) -> float: ...
def checked_number(
    value: object, low: float, high: float = math.inf, *, name: str, expected: str, where: str = "",
    whole: bool = False, low_inclusive: bool = True, high_inclusive: bool = True,
) -> float:
    """``value`` if it is a number within the range (``whole``: an int, returned as is), else ConfigurationError.

    The range as in :func:`number_in_range`; ``math.inf`` is in it only where ``high`` is
    ``math.inf`` and inclusive. The error reads ``where(name=value): expected``, or
    ``name=value: expected`` without ``where``.
    """
    if whole:
        number = value if isinstance(value, int) and not isinstance(value, bool) else None
        if number is not None and _in_range(number, low, high, low_inclusive=low_inclusive, high_inclusive=high_inclusive):
            return number
    else:
        found = number_in_range(value, low, high, low_inclusive=low_inclusive, high_inclusive=high_inclusive)
        if found is not None:
            return found
    argument = f"{name}={value!r}"
    raise ConfigurationError(f"{where}({argument}): {expected}" if where else f"{argument}: {expected}")


def _percent(name: str, value: object, of_what: str) -> float | None:
    """The share in ``"NN%"`` (above 0, at most 100); None when ``value`` is not a percentage."""
    if not (isinstance(value, str) and value.strip(_SPACE).endswith("%")):
        return None
    share = _decimal(value.strip(_SPACE)[:-1])
    if share is None or not _in_range(share, 0.0, 100.0, low_inclusive=False):
        raise ConfigurationError(f"{name}={value!r}: expected a percentage above 0% and at most 100% of {of_what}, like '80%'")
    return share


def _megabytes(name: str, value: object, expected: str) -> float:
    """A number of MB above 0 and at most :data:`MAX_THRESHOLD_MB` that is at least one byte."""
    if not isinstance(value, (str, numbers.Real)) or isinstance(value, bool):
        raise ConfigurationError(f"{name}={value!r}: {expected}, not {type(value).__name__}")
    mb = _number(value)
    if mb is None or not _in_range(mb, 0.0, MAX_THRESHOLD_MB, low_inclusive=False):
        raise ConfigurationError(f"{name}={value!r}: {expected}")
    if int(mb * MB) < 1:
        raise ConfigurationError(f"{name}={value!r}: is less than one byte; {expected}")
    return mb


def parse_threshold_mb(name: str, value: object, limit: MemoryLimit) -> tuple[int, str]:
    """Bytes for a ``*_mb`` value (a number of MB or ``"NN%"`` of ``limit``) and its origin.

    A number of MB must be above 0 and at most :data:`MAX_THRESHOLD_MB` (1 PiB); a
    percentage above 0% and at most 100%. ``name`` is the variable or argument, used in the
    error message.
    """
    share = _percent(name, value, "the memory limit")
    if share is not None:
        threshold_bytes = int(limit.bytes * share / 100)
        if threshold_bytes < 1:
            raise ConfigurationError(
                f"{name}={value!r}: is less than one byte of the {limit.bytes}-byte limit; expected a larger percentage"
            )
        return threshold_bytes, f"{share:g}% of {limit.bytes} bytes ({limit.source})"
    mb = _megabytes(name, value, _THRESHOLD_EXPECTED)
    return int(mb * MB), f"{mb:g} MB"


def parse_device_threshold_mb(name: str, value: object) -> DeviceThreshold:
    """A device threshold: a number of MB, or ``"NN%"`` of each device's own limit.

    The same ranges as :func:`parse_threshold_mb`; the percentage is resolved per device, against
    the limit its framework reports (a device with no known limit has no such threshold).
    """
    share = _percent(name, value, "the device's memory limit")
    if share is not None:
        return DeviceThreshold(percent=share)
    return DeviceThreshold(bytes=int(_megabytes(name, value, _DEVICE_THRESHOLD_EXPECTED) * MB))


def parse_choice(name: str, value: str | None, choices: tuple[str, ...], default: str) -> str:
    """One of ``choices`` (any case, blanks around ignored); unset or blank: ``default``."""
    if value is None or not value.strip(_SPACE):
        return default
    word = value.strip(_SPACE).lower()
    if word not in choices:
        raise ConfigurationError(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return word


def size_mb_to_bytes(value: object, described_as: str, *, allow_zero: bool = False, or_none: bool = False) -> int:
    """Bytes for a size in MB given in code (above 0, or from 0 with ``allow_zero``; at most 1 PiB).

    ``described_as`` names the argument and value in the error; ``or_none`` says None is accepted too.
    """
    mb = _number(value) if not isinstance(value, str) else None
    if mb is None or not _in_range(mb, 0.0, MAX_THRESHOLD_MB, low_inclusive=allow_zero):
        low = "a number of MB from 0" if allow_zero else "a positive number of MB"
        raise ConfigurationError(f"{described_as}: expected {low} up to {MAX_THRESHOLD_MB:.0f} (1 PiB){', or None' if or_none else ''}")
    return int(mb * MB) if allow_zero else max(1, int(mb * MB))


def parse_interval_s(name: str, value: object) -> float:
    """Seconds for a monitoring interval: from :data:`MIN_INTERVAL_S` to :data:`MAX_INTERVAL_S`."""
    seconds = _number(value)
    if seconds is None or not _in_range(seconds, MIN_INTERVAL_S, MAX_INTERVAL_S, low_inclusive=True):
        raise ConfigurationError(f"{name}={value!r}: {_INTERVAL_EXPECTED}")
    return seconds


def parse_bool(name: str, value: str | None, default: bool) -> bool:
    """A boolean variable: one of :data:`TRUE_WORDS` or :data:`FALSE_WORDS` (any case); unset or blank: ``default``."""
    if value is None or not value.strip(_SPACE):
        return default
    word = value.strip(_SPACE).lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigurationError(
        f"{name}={value!r}: expected one of {', '.join(TRUE_WORDS)} (on) or {', '.join(FALSE_WORDS)} (off)"
    )


def server_spans_wanted(environ: Mapping[str, str] | None = None) -> bool:
    """``REER_MEMORY_SERVER_SPANS`` (default off): memory attributes on every server span and
    per-route metrics. Never raises: a word it does not know logs one line and means off."""
    value = (os.environ if environ is None else environ).get(names.ENV_SERVER_SPANS)
    try:
        return parse_bool(names.ENV_SERVER_SPANS, value, default=False)
    except ConfigurationError as exc:
        logger.error("reer_otel_memory: %s; using the default (off) instead", exc)
        return False


def _order_conflicts(config: MemoryConfig, names_by_level: Mapping[str, str], given: Mapping[str, object]) -> list[str]:
    """Every pair of thresholds out of order; ``given`` holds the raw value of each level set explicitly."""
    values = {"alert": config.alert_bytes, "cleanup": config.cleanup_bytes, "critical": config.critical_bytes}

    def describe(level: str) -> str:
        mb = f"{values[level] / MB:g} MB"
        if level not in given:
            return f"{names_by_level[level]}={mb} (unchanged)"
        raw = given[level]
        if isinstance(raw, (int, float)) and not isinstance(raw, bool) and f"{raw!r} MB" == mb:
            return f"{names_by_level[level]}={mb}"
        return f"{names_by_level[level]}={raw!r} ({mb})"

    return [
        f"{describe(low)} is above {describe(high)}: expected alert <= cleanup <= critical"
        for low, high in (("alert", "cleanup"), ("cleanup", "critical"))
        if values[low] > values[high]
    ]


#: The arguments of :func:`setup_memory_limits`, by what they set.
SETUP_ARGUMENTS = {"alert": "alert_mb", "cleanup": "cleanup_mb", "critical": "critical_mb", "interval": "monitoring_interval"}


def with_overrides(base: MemoryConfig, overrides: Mapping[str, object], argument_names: Mapping[str, str] = SETUP_ARGUMENTS) -> MemoryConfig:
    """``base`` with the thresholds (MB or ``"NN%"``) and interval set in code replaced.

    ``overrides`` maps ``alert``, ``cleanup``, ``critical`` and ``interval`` to the values given;
    ``argument_names`` maps the same keys to the argument names that errors and sources name.
    Raises one :class:`ConfigurationError` listing every bad value and every pair out of order.
    The one place where code overrides the configuration: :func:`setup_memory_limits` and every
    monitor use it.
    """
    values = {"alert": base.alert_bytes, "cleanup": base.cleanup_bytes, "critical": base.critical_bytes}
    sources = dict(base.sources)
    given: dict[str, object] = {}
    problems: list[str] = []
    for level in values:
        if overrides.get(level) is not None:
            raw = overrides[level]
            arg_name = argument_names[level]
            try:
                values[level], origin = parse_threshold_mb(arg_name, raw, base.limit)
            except ConfigurationError as exc:
                problems.append(str(exc))
                continue
            given[level] = raw
            sources[level] = f"code {arg_name}={raw!r} ({origin})"
    interval_s = base.monitoring_interval_s
    if overrides.get("interval") is not None:
        arg_name = argument_names["interval"]
        try:
            interval_s = parse_interval_s(arg_name, overrides["interval"])
            sources["monitoring_interval"] = f"code {arg_name}={overrides['interval']!r}"
        except ConfigurationError as exc:
            problems.append(str(exc))
    config = replace(
        base,
        alert_bytes=values["alert"],
        cleanup_bytes=values["cleanup"],
        critical_bytes=values["critical"],
        monitoring_interval_s=interval_s,
        sources=sources,
    )
    if not problems:
        problems = _order_conflicts(config, argument_names, given)
    if problems:
        raise ConfigurationError("; ".join(problems))
    return config


_ENV_NAMES = {"alert": names.ENV_ALERT_MB, "cleanup": names.ENV_CLEANUP_MB, "critical": names.ENV_CRITICAL_MB}
_DEFAULTS = {"alert": DEFAULT_ALERT_MB, "cleanup": DEFAULT_CLEANUP_MB, "critical": DEFAULT_CRITICAL_MB}


_DEVICE_ENV_NAMES = {"alert": names.ENV_DEVICE_ALERT_MB, "cleanup": names.ENV_DEVICE_CLEANUP_MB, "critical": names.ENV_DEVICE_CRITICAL_MB}


def _device_thresholds_from(env: Mapping[str, str], sources: dict[str, str], problems: list[str], replaced: list[str]) -> dict[str, DeviceThreshold]:
    """The device thresholds ``env`` sets (none for a bad one; none at all when two set in the same
    unit are out of order), noting each in ``sources`` and each problem in ``problems``."""
    found: dict[str, DeviceThreshold] = {}
    for level, var in _DEVICE_ENV_NAMES.items():
        raw = env.get(var)
        if raw is None or raw.strip(_SPACE) == "":
            continue
        try:
            found[level] = parse_device_threshold_mb(var, raw)
        except ConfigurationError as exc:
            problems.append(str(exc))
            replaced.append(var)
    # Thresholds of the same unit must be in order; a percentage against MB is only known per device.
    set_levels = [level for level in _DEVICE_ENV_NAMES if level in found]
    for low, high in itertools.pairwise(set_levels):
        a, b = found[low], found[high]
        if (a.bytes is not None and b.bytes is not None and a.bytes > b.bytes) or (
            a.percent is not None and b.percent is not None and a.percent > b.percent
        ):
            problems.append(
                f"{_DEVICE_ENV_NAMES[low]}={env[_DEVICE_ENV_NAMES[low]]!r} is above {_DEVICE_ENV_NAMES[high]}={env[_DEVICE_ENV_NAMES[high]]!r}: "
                "expected alert <= cleanup <= critical"
            )
            replaced.extend(_DEVICE_ENV_NAMES[level] for level in set_levels if _DEVICE_ENV_NAMES[level] not in replaced)
            return {}
    for level, threshold in found.items():
        sources[f"device_{level}"] = f"environment {_DEVICE_ENV_NAMES[level]}={env[_DEVICE_ENV_NAMES[level]]} ({threshold})"
    return found


def _read_environment(env: Mapping[str, str], limit: MemoryLimit) -> tuple[MemoryConfig, list[str], list[str]]:
    """The configuration ``env`` describes with a default for each bad value (for every threshold
    when they are out of order), every problem found, and the variables replaced by defaults."""
    thresholds: dict[str, int] = {}
    sources: dict[str, str] = {}
    given: dict[str, object] = {}
    problems: list[str] = []
    replaced: list[str] = []
    for level, var in _ENV_NAMES.items():
        raw = env.get(var)
        thresholds[level] = int(_DEFAULTS[level] * MB)
        sources[level] = f"default ({_DEFAULTS[level]:g} MB)"
        if raw is None or raw.strip(_SPACE) == "":
            continue
        try:
            thresholds[level], origin = parse_threshold_mb(var, raw, limit)
        except ConfigurationError as exc:
            problems.append(str(exc))
            replaced.append(var)
            continue
        given[level] = raw
        sources[level] = f"environment {var}={raw} ({origin})"
    raw_interval = env.get(names.ENV_MONITORING_INTERVAL)
    interval = DEFAULT_MONITORING_INTERVAL_S
    sources["monitoring_interval"] = f"default ({interval:g} s)"
    if raw_interval is not None and raw_interval.strip(_SPACE) != "":
        try:
            interval = parse_interval_s(names.ENV_MONITORING_INTERVAL, raw_interval)
            sources["monitoring_interval"] = f"environment {names.ENV_MONITORING_INTERVAL}={raw_interval}"
        except ConfigurationError as exc:
            problems.append(str(exc))
            replaced.append(names.ENV_MONITORING_INTERVAL)
    device_thresholds = _device_thresholds_from(env, sources, problems, replaced)
    raw_source = env.get(names.ENV_THRESHOLD_SOURCE)
    threshold_source = names.SOURCE_RSS
    try:
        threshold_source = parse_choice(names.ENV_THRESHOLD_SOURCE, raw_source, names.THRESHOLD_SOURCES, names.SOURCE_RSS)
    except ConfigurationError as exc:
        problems.append(str(exc))
        replaced.append(names.ENV_THRESHOLD_SOURCE)
    if names.ENV_THRESHOLD_SOURCE not in replaced and raw_source is not None and raw_source.strip(_SPACE):
        sources["threshold_source"] = f"environment {names.ENV_THRESHOLD_SOURCE}={raw_source}"
    else:
        sources["threshold_source"] = f"default ({names.SOURCE_RSS})"
    config = MemoryConfig(
        alert_bytes=thresholds["alert"],
        cleanup_bytes=thresholds["cleanup"],
        critical_bytes=thresholds["critical"],
        monitoring_interval_s=interval,
        limit=limit,
        sources=sources,
        device_thresholds=device_thresholds,
        threshold_source=threshold_source,
    )
    conflicts = _order_conflicts(config, _ENV_NAMES, given)
    if conflicts:
        problems.extend(conflicts)
        defaults = {level: int(_DEFAULTS[level] * MB) for level in _ENV_NAMES}
        config = replace(
            config,
            alert_bytes=defaults["alert"],
            cleanup_bytes=defaults["cleanup"],
            critical_bytes=defaults["critical"],
            sources={**sources, **{level: f"default ({_DEFAULTS[level]:g} MB)" for level in _ENV_NAMES}},
        )
        replaced.extend(var for level, var in _ENV_NAMES.items() if level in given and var not in replaced)
    return config, problems, replaced


def load_config(
    environ: Mapping[str, str] | None = None,
    *,
    cgroup_root: str | os.PathLike[str] = DEFAULT_CGROUP_ROOT,
    proc_cgroup: str | os.PathLike[str] = DEFAULT_PROC_CGROUP,
    limit: MemoryLimit | None = None,
) -> MemoryConfig:
    """The configuration the ``REER_MEMORY_*`` variables describe, defaults for the rest.

    Raises one :class:`ConfigurationError` listing every bad value and every pair of
    thresholds out of order.
    """
    env = os.environ if environ is None else environ
    if limit is None:
        limit = effective_memory_limit(cgroup_root, proc_cgroup)
    config, problems, _ = _read_environment(env, limit)
    if problems:
        raise ConfigurationError("; ".join(problems))
    return config


def default_config(limit: MemoryLimit | None = None) -> MemoryConfig:
    """The built-in defaults, used where a configuration cannot be read."""
    return load_config({}, limit=limit)


# --- the process-wide configuration --------------------------------------------------------

class ConfigListeners:
    """Who is told when the process-wide configuration changes (:func:`add_config_listener`)."""

    def __init__(self) -> None:
        self.listeners: list[Callable[[MemoryConfig], None]] = []


def _listeners() -> list[Callable[[MemoryConfig], None]]:
    return RUNTIME.get("config_listeners", ConfigListeners).listeners


def load_config_with_fallbacks(environ: Mapping[str, str] | None = None) -> tuple[MemoryConfig, str | None]:
    """The configuration ``environ`` describes, bad values replaced by defaults, and what was wrong.

    Never raises: for code that must not stop its host (the decorator, auto-instrumentation).
    Where even the defaults cannot be built (the memory limit unreadable), the limit is taken
    as unknown (1 PiB).
    """
    environ = os.environ if environ is None else environ
    try:
        limit = effective_memory_limit()
    except Exception as exc:  # psutil cannot read the RAM size: thresholds in MB still work
        limit = MemoryLimit(int(MAX_THRESHOLD_MB * MB), f"unknown ({exc!r})")
    try:
        config, problems, replaced = _read_environment(environ, limit)
    except Exception as exc:  # never expected; still, the host must keep running
        return default_config(limit), f"reading the REER_MEMORY_* variables failed ({exc!r}); using the defaults instead"
    if not problems:
        return config, None
    return config, "; ".join(problems) + f"; using the default for {' and '.join(sorted(set(replaced)))} instead"


def get_config() -> MemoryConfig:
    """The process-wide configuration, read from the environment on first use.

    Profiled calls and the monitor read it, so it never raises: a bad ``REER_MEMORY_*`` value
    logs one error line naming it and falls back to the default for that value (or for all of
    them when the rest are out of order). :func:`load_config` raises instead.
    """
    return RUNTIME.config or RUNTIME.get("config", _first_config)


def _first_config() -> MemoryConfig:
    config, problem = load_config_with_fallbacks()
    if problem is not None:
        logger.error("reer_otel_memory: %s", problem)
    return config


def set_config(config: MemoryConfig) -> None:
    """Replace the process-wide configuration and tell every listener (the monitors)."""
    with RUNTIME.lock("config"):
        RUNTIME.replace("config", config)
        listeners = list(_listeners())
    for listener in listeners:
        listener(config)


def add_config_listener(listener: Callable[[MemoryConfig], None]) -> None:
    """Call ``listener(config)`` whenever the process-wide configuration changes."""
    with RUNTIME.lock("config"):
        _listeners().append(listener)


def remove_config_listener(listener: Callable[[MemoryConfig], None]) -> None:
    with RUNTIME.lock("config"):
        listeners = _listeners()
        if listener in listeners:
            listeners.remove(listener)


def setup_memory_limits(
    alert_mb: float | str | None = None,
    critical_mb: float | str | None = None,
    cleanup_mb: float | str | None = None,
    *,
    monitoring_interval: float | None = None,
) -> MemoryConfig:
    """Set the process-wide thresholds (MB or ``"NN%"``); omitted ones keep their value.

    Called with no arguments it re-reads the ``REER_MEMORY_*`` variables. Raises
    :class:`ConfigurationError` naming the argument on a bad or unordered value; the previous
    configuration then stays in force.
    """
    if alert_mb is None and critical_mb is None and cleanup_mb is None and monitoring_interval is None:
        config = load_config()
        set_config(config)
        return config
    config = with_overrides(
        get_config(), {"alert": alert_mb, "cleanup": cleanup_mb, "critical": critical_mb, "interval": monitoring_interval}
    )
    set_config(config)
    return config


def set_memory_limit(mb: float | str) -> MemoryConfig:
    """Set the critical threshold (MB or ``"NN%"``); the other thresholds stay."""
    return setup_memory_limits(critical_mb=mb)
