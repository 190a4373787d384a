"""Thresholds and interval from ``REER_MEMORY_*`` variables or code, and the effective memory limit.

A ``*_MB`` value is a number of MB (1 MB = 1,048,576 bytes) or ``NN%`` of the effective limit:
the smallest of the cgroup v2 ``memory.max``, the cgroup v1 ``memory.limit_in_bytes`` (both
walked up the hierarchy) and physical RAM. Bad values raise :class:`ConfigurationError` naming
the variable or argument, the value and what was expected.

    >>> import reer_otel_memory as rom
    >>> rom.setup_memory_limits(alert_mb=800, cleanup_mb="60%", critical_mb="80%")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil

from . import _names as names
from ._runtime import RUNTIME
from .errors import ConfigurationError
from .levels import MemoryLevel

logger = logging.getLogger(__name__)

MB = 1024 * 1024

DEFAULT_ALERT_MB = 1000.0
DEFAULT_CLEANUP_MB = 1500.0
DEFAULT_CRITICAL_MB = 2000.0
DEFAULT_MONITORING_INTERVAL_S = 30.0

#: Where the kernel mounts the cgroup hierarchy; a parameter everywhere so tests build real trees.
DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup"
DEFAULT_PROC_CGROUP = "/proc/self/cgroup"

# cgroup v1 reports "no limit" as a page-rounded LONG_MAX; anything this large is no limit.
_UNLIMITED_BYTES = 1 << 62


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


# --- the effective limit -------------------------------------------------------------------


def _read_limit_file(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 < value < _UNLIMITED_BYTES else None


def _cgroup_paths(proc_cgroup: str | os.PathLike[str]) -> tuple[str | None, str | None]:
    """(v2 path, v1 memory path) of this process from ``/proc/self/cgroup``."""
    v2 = v1 = None
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _walk_up(base: Path, relative: str, filename: str) -> list[Path]:
    """``filename`` in the process's cgroup directory and every ancestor up to ``base``."""
    candidates = []
    current = (base / relative.lstrip("/")) if relative else base
    while True:
        candidates.append(current / filename)
        if current == base or base not in current.parents:
            break
        current = current.parent
    if candidates[-1] != base / filename:
        candidates.append(base / filename)
    return candidates


def effective_memory_limit(
    cgroup_root: str | os.PathLike[str] = DEFAULT_CGROUP_ROOT,
    proc_cgroup: str | os.PathLike[str] = DEFAULT_PROC_CGROUP,
    physical_bytes: int | None = None,
) -> MemoryLimit:
    """Smallest of cgroup v2 ``memory.max``, cgroup v1 ``memory.limit_in_bytes`` and RAM.

    Both cgroup versions are walked from the process's own cgroup up to the root, since a
    parent's limit binds its children. Unreadable files and ``max`` mean no limit there.
    """
    if physical_bytes is None:
        physical_bytes = psutil.virtual_memory().total
    best = MemoryLimit(int(physical_bytes), "physical RAM")
    root = Path(cgroup_root)
    v2, v1 = _cgroup_paths(proc_cgroup)
    if v2 is not None:
        # In the hybrid layout the v2 hierarchy is mounted at <root>/unified.
        v2_root = root / "unified" if (root / "unified" / "cgroup.controllers").exists() else root
        for path in _walk_up(v2_root, v2, "memory.max"):
            value = _read_limit_file(path)
            if value is not None and value < best.bytes:
                best = MemoryLimit(value, f"cgroup v2 {path}")
    if v1 is not None:
        for path in _walk_up(root / "memory", v1, "memory.limit_in_bytes"):
            value = _read_limit_file(path)
            if value is not None and value < best.bytes:
                best = MemoryLimit(value, f"cgroup v1 {path}")
    return best


# --- parsing -------------------------------------------------------------------------------


def parse_threshold_mb(name: str, value: object, limit: MemoryLimit) -> tuple[int, str]:
    """Bytes for a ``*_mb`` value (a number of MB or ``"NN%"`` of ``limit``) and its origin.

    ``name`` is the variable or argument, used in the error message.
    """
    if isinstance(value, bool):
        raise ConfigurationError(f"{name}={value!r}: expected a number of MB or a percentage like '80%'")
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            try:
                share = float(text[:-1])
            except ValueError:
                raise ConfigurationError(
                    f"{name}={value!r}: expected a percentage like '80%' of the memory limit"
                ) from None
            if not math.isfinite(share) or share <= 0 or share > 100:
                raise ConfigurationError(
                    f"{name}={value!r}: a percentage must be above 0% and at most 100%"
                )
            threshold_bytes = int(limit.bytes * share / 100)
            if threshold_bytes < 1:
                raise ConfigurationError(f"{name}={value!r}: is less than one byte of the {limit.bytes}-byte limit; expected a larger percentage")
            return threshold_bytes, f"{share:g}% of {limit.bytes} bytes ({limit.source})"
        try:
            mb = float(text)
        except ValueError:
            raise ConfigurationError(
                f"{name}={value!r}: expected a number of MB (1 MB = 1048576 bytes) or a percentage like '80%'"
            ) from None
    elif isinstance(value, numbers.Real):  # int, float, Fraction, numpy scalars
        mb = float(value)
    else:
        raise ConfigurationError(
            f"{name}={value!r}: expected a number of MB or a percentage like '80%', "
            f"not {type(value).__name__}"
        )
    if not math.isfinite(mb) or mb <= 0:
        raise ConfigurationError(f"{name}={value!r}: expected a positive number of MB")
    if int(mb * MB) < 1:
        raise ConfigurationError(f"{name}={value!r}: is less than one byte; expected a positive number of MB (1 MB = 1048576 bytes)")
    return int(mb * MB), f"{mb:g} MB"


def parse_interval_s(name: str, value: object) -> float:
    """Seconds for a monitoring interval; must be a positive, finite number."""
    try:
        if isinstance(value, bool):
            raise ValueError
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name}={value!r}: expected a positive number of seconds") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigurationError(f"{name}={value!r}: expected a positive number of seconds")
    return seconds


def _check_order(config: MemoryConfig, names_by_level: Mapping[str, str], given: Mapping[str, object]) -> None:
    """Refuse thresholds out of order; ``given`` holds the raw value of each level set explicitly."""
    values = {"alert": config.alert_bytes, "cleanup": config.cleanup_bytes, "critical": config.critical_bytes}

    def describe(level: str) -> str:
        mb = f"{values[level] / MB:g} MB"
        if level not in given:
            return f"{names_by_level[level]}={mb} (unchanged)"
        raw = given[level]
        if isinstance(raw, (int, float)) and not isinstance(raw, bool) and float(raw) * MB == values[level]:
            return f"{names_by_level[level]}={mb}"
        return f"{names_by_level[level]}={raw!r} ({mb})"

    for low, high in (("alert", "cleanup"), ("cleanup", "critical")):
        if values[low] > values[high]:
            raise ConfigurationError(f"{describe(low)} is above {describe(high)}: expected alert <= cleanup <= critical")


#: The arguments of :func:`setup_memory_limits`, by what they set.
SETUP_ARGUMENTS = {"alert": "alert_mb", "cleanup": "cleanup_mb", "critical": "critical_mb", "interval": "monitoring_interval"}


def with_overrides(base: MemoryConfig, overrides: Mapping[str, object], argument_names: Mapping[str, str] = SETUP_ARGUMENTS) -> MemoryConfig:
    """``base`` with the thresholds (MB or ``"NN%"``) and interval set in code replaced.

    ``overrides`` maps ``alert``, ``cleanup``, ``critical`` and ``interval`` to the values given;
    ``argument_names`` maps the same keys to the argument names that errors and sources name.
    Raises :class:`ConfigurationError` on a bad or unordered value. The one place where code
    overrides the configuration: :func:`setup_memory_limits` and every monitor use it.
    """
    values = {"alert": base.alert_bytes, "cleanup": base.cleanup_bytes, "critical": base.critical_bytes}
    sources = dict(base.sources)
    given: dict[str, object] = {}
    for level in values:
        if overrides.get(level) is not None:
            raw = given[level] = overrides[level]
            arg_name = argument_names[level]
            values[level], origin = parse_threshold_mb(arg_name, raw, base.limit)
            sources[level] = f"code {arg_name}={raw!r} ({origin})"
    interval_s = base.monitoring_interval_s
    if overrides.get("interval") is not None:
        arg_name = argument_names["interval"]
        interval_s = parse_interval_s(arg_name, overrides["interval"])
        sources["monitoring_interval"] = f"code {arg_name}={overrides['interval']!r}"
    config = replace(
        base,
        alert_bytes=values["alert"],
        cleanup_bytes=values["cleanup"],
        critical_bytes=values["critical"],
        monitoring_interval_s=interval_s,
        sources=sources,
    )
    _check_order(config, argument_names, given)
    return config


_ENV_NAMES = {"alert": names.ENV_ALERT_MB, "cleanup": names.ENV_CLEANUP_MB, "critical": names.ENV_CRITICAL_MB}
_DEFAULTS = {"alert": DEFAULT_ALERT_MB, "cleanup": DEFAULT_CLEANUP_MB, "critical": DEFAULT_CRITICAL_MB}


def load_config(
    environ: Mapping[str, str] | None = None,
    *,
    cgroup_root: str | os.PathLike[str] = DEFAULT_CGROUP_ROOT,
    proc_cgroup: str | os.PathLike[str] = DEFAULT_PROC_CGROUP,
    limit: MemoryLimit | None = None,
) -> MemoryConfig:
    """The configuration the ``REER_MEMORY_*`` variables describe, defaults for the rest.

    Raises :class:`ConfigurationError` on a bad or unordered value.
    """
    env = os.environ if environ is None else environ
    if limit is None:
        limit = effective_memory_limit(cgroup_root, proc_cgroup)
    thresholds: dict[str, int] = {}
    sources: dict[str, str] = {}
    given: dict[str, object] = {}
    for level, var in _ENV_NAMES.items():
        raw = env.get(var)
        if raw is None or raw.strip() == "":
            thresholds[level] = int(_DEFAULTS[level] * MB)
            sources[level] = f"default ({_DEFAULTS[level]:g} MB)"
        else:
            given[level] = raw
            thresholds[level], origin = parse_threshold_mb(var, raw, limit)
            sources[level] = f"environment {var}={raw} ({origin})"
    raw_interval = env.get(names.ENV_MONITORING_INTERVAL)
    if raw_interval is None or raw_interval.strip() == "":
        interval = DEFAULT_MONITORING_INTERVAL_S
        sources["monitoring_interval"] = f"default ({interval:g} s)"
    else:
        interval = parse_interval_s(names.ENV_MONITORING_INTERVAL, raw_interval)
        sources["monitoring_interval"] = f"environment {names.ENV_MONITORING_INTERVAL}={raw_interval}"
    config = MemoryConfig(
        alert_bytes=thresholds["alert"],
        cleanup_bytes=thresholds["cleanup"],
        critical_bytes=thresholds["critical"],
        monitoring_interval_s=interval,
        limit=limit,
        sources=sources,
    )
    _check_order(config, _ENV_NAMES, given)
    return config


def default_config(limit: MemoryLimit | None = None) -> MemoryConfig:
    """The built-in defaults, used where a configuration cannot be read."""
    return load_config({}, limit=limit)


# --- the process-wide configuration --------------------------------------------------------

_listeners: list[Callable[[MemoryConfig], None]] = []


def load_config_with_fallbacks(environ: Mapping[str, str] | None = None) -> tuple[MemoryConfig, str | None]:
    """The configuration ``environ`` describes, bad values replaced by defaults, and what was wrong.

    Never raises: for code that must not stop its host (the decorator, auto-instrumentation).
    """
    environ = os.environ if environ is None else environ
    try:
        return load_config(environ), None
    except ConfigurationError as exc:
        first_error = exc
    limit = effective_memory_limit()
    problems: list[str] = []
    usable = dict(environ)
    for var in (names.ENV_ALERT_MB, names.ENV_CLEANUP_MB, names.ENV_CRITICAL_MB, names.ENV_MONITORING_INTERVAL):
        raw = environ.get(var)
        if raw is None or not raw.strip():
            continue
        try:
            if var == names.ENV_MONITORING_INTERVAL:
                parse_interval_s(var, raw)
            else:
                parse_threshold_mb(var, raw, limit)
        except ConfigurationError as exc:
            problems.append(str(exc))
            usable.pop(var)
    if problems:
        replaced = sorted(set(environ) - set(usable))
        try:
            config = load_config(usable, limit=limit)
            return config, "; ".join(problems) + f"; using the default for {' and '.join(replaced)} instead"
        except ConfigurationError as exc:
            problems.append(str(exc))
    else:
        problems.append(str(first_error))
    return default_config(limit), "; ".join(problems) + "; using the default thresholds and interval instead"


def get_config() -> MemoryConfig:
    """The process-wide configuration, read from the environment on first use.

    Profiled calls and the monitor read it, so it never raises: a bad ``REER_MEMORY_*`` value
    logs one error line naming it and falls back to the default for that value (or for all of
    them when the rest are out of order). :func:`load_config` raises instead.
    """
    return RUNTIME.get("config", _first_config)


def _first_config() -> MemoryConfig:
    config, problem = load_config_with_fallbacks()
    if problem is not None:
        logger.error("reer_otel_memory: %s", problem)
    return config


def set_config(config: MemoryConfig) -> None:
    """Replace the process-wide configuration and tell every listener (the monitors)."""
    with RUNTIME.lock("config"):
        RUNTIME.replace("config", config)
        listeners = list(_listeners)
    for listener in listeners:
        listener(config)


def add_config_listener(listener: Callable[[MemoryConfig], None]) -> None:
    """Call ``listener(config)`` whenever the process-wide configuration changes."""
    with RUNTIME.lock("config"):
        _listeners.append(listener)


def remove_config_listener(listener: Callable[[MemoryConfig], None]) -> None:
    with RUNTIME.lock("config"):
        if listener in _listeners:
            _listeners.remove(listener)


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
