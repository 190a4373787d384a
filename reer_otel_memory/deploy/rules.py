"""Prometheus alerting and recording rules, and example Prometheus and Alertmanager
configurations, for processes that export the ``reer_memory_*`` series.

By default every rule compares a process's series with the thresholds that same process exports
(``job`` and ``instance``), so the rules never need editing when a threshold changes. Each
``_*_rule`` builder returns one rule as data; :func:`rule_groups` assembles them, the ``render_*``
functions write YAML through :mod:`._yaml`, and :func:`deploy_files` is what ``make deploy``
(``scripts/deploy_files.py``) writes under ``deploy/``; ``scripts/rule_tests.py`` generates the
promtool tests. Users' manual: README.md, "Prometheus and Grafana", and docs/runbooks.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import _names as names
from ..config import MB, MemoryConfig, checked_number, get_config
from ..errors import ConfigurationError, InvalidArgumentError
from ..export import naming as series
from ..levels import THRESHOLD_LEVELS, MemoryLevel
from . import _yaml

ALERT_THRESHOLD_EXCEEDED = "ReerMemoryAlertThresholdExceeded"
CLEANUP_THRESHOLD_EXCEEDED = "ReerMemoryCleanupThresholdExceeded"
CRITICAL_THRESHOLD_EXCEEDED = "ReerMemoryCriticalThresholdExceeded"
LEAK_SUSPECTED = "ReerMemoryLeakSuspected"
CRITICAL_PREDICTED = "ReerMemoryCriticalPredicted"
NEAR_LIMIT = "ReerMemoryNearLimit"
CLEANUP_INEFFECTIVE = "ReerMemoryCleanupIneffective"
DEVICE_THRESHOLD_EXCEEDED = "ReerMemoryDeviceThresholdExceeded"
DEVICE_CRITICAL_THRESHOLD_EXCEEDED = "ReerMemoryDeviceCriticalThresholdExceeded"
CONTAINER_NEAR_OOM = "ReerMemoryContainerNearOOM"
OOM_KILLED = "ReerMemoryOOMKilled"
ALERT_NAMES = (
    ALERT_THRESHOLD_EXCEEDED,
    CLEANUP_THRESHOLD_EXCEEDED,
    CRITICAL_THRESHOLD_EXCEEDED,
    LEAK_SUSPECTED,
    CRITICAL_PREDICTED,
    NEAR_LIMIT,
    CLEANUP_INEFFECTIVE,
    DEVICE_THRESHOLD_EXCEEDED,
    DEVICE_CRITICAL_THRESHOLD_EXCEEDED,
    CONTAINER_NEAR_OOM,
    OOM_KILLED,
)

RULE_GROUP = "reer-memory"
RECORDING_GROUP = "reer-memory-recording"
#: Recording rules, named ``level:metric:operation`` as in the monitoring mixins; the dashboard
#: draws the same series the alerts compare.
PREDICTED_RSS = f"job_instance:{series.RSS}:predict_linear"
CONTAINER_WORKING_SET_RATIO = f"job_instance:{series.CGROUP_WORKING_SET}:ratio"

#: Where ``runbook_url`` annotations point unless rendering is given another base URL: the
#: page in this repository. Teams that host it elsewhere render with ``runbook_url=...``.
DEFAULT_RUNBOOK_URL = "docs/runbooks.md"
#: ReerMemoryCriticalPredicted fits a line to this much RSS history (long enough that a batch
#: or a cleanup does not swing the trend) and looks this far ahead.
DEFAULT_PREDICTION_WINDOW_S = 1800.0
DEFAULT_PREDICTION_HORIZON_S = 3600.0
#: ReerMemoryNearLimit: share of the effective limit (reer_memory_utilization).
DEFAULT_NEAR_LIMIT_RATIO = 0.9
#: ReerMemoryContainerNearOOM: share of the cgroup limit the working set reaches.
DEFAULT_CONTAINER_RATIO = 0.95
#: ReerMemoryCleanupIneffective: at least this many cleanups within the window, while RSS
#: never went below the cleanup threshold in it.
DEFAULT_CLEANUP_WINDOW_S = 900.0
DEFAULT_INEFFECTIVE_CLEANUPS = 3
#: ReerMemoryOOMKilled keeps firing this long after a kill, so it is seen and routed.
OOM_KILL_WINDOW_S = 900.0

#: How long each condition must hold before the alert fires, seconds. The alert level is an
#: early warning, so it waits out short spikes; at the critical level the process is close to
#: being killed, so a minute is enough; leak suspicion already needs a run of growing calls.
DEFAULT_FOR_S: Mapping[str, float] = {
    ALERT_THRESHOLD_EXCEEDED: 600.0,
    CLEANUP_THRESHOLD_EXCEEDED: 300.0,
    CRITICAL_THRESHOLD_EXCEEDED: 60.0,
    LEAK_SUSPECTED: 900.0,
    # The trend must hold for a while: one steep minute is not a prediction.
    CRITICAL_PREDICTED: 900.0,
    NEAR_LIMIT: 300.0,
    # The window already asks for cleanups spread over 15 minutes.
    CLEANUP_INEFFECTIVE: 0.0,
    DEVICE_THRESHOLD_EXCEEDED: 600.0,
    DEVICE_CRITICAL_THRESHOLD_EXCEEDED: 60.0,
    CONTAINER_NEAR_OOM: 120.0,
    # A kill has happened: there is nothing to wait for.
    OOM_KILLED: 0.0,
}

#: The scrape target of the example ``prometheus.yml``: the exporter's default port.
EXAMPLE_TARGET = "127.0.0.1:9464"
EXAMPLE_JOB = "reer-memory"
RULES_FILENAME = "reer-memory-rules.yml"
PROMETHEUS_CONFIG_FILENAME = "prometheus.yml"
ALERTMANAGER_CONFIG_FILENAME = "alertmanager.yml"
#: Where the example ``prometheus.yml`` sends alerts: Alertmanager's default port.
EXAMPLE_ALERTMANAGER = "127.0.0.1:9093"
ALERTMANAGER_RECEIVER = "reer-memory"
#: Labels that tell one process's alerts apart; an inhibit rule only acts within one process.
# A pre-fork server's workers share job and instance and differ by pid (export.workers): one
# worker's critical alert must not silence another worker's lower ones.
_PROCESS_LABELS = ["job", "instance", series.label_name(names.LABEL_PID)]

_GENERATED_HEADER = "Generated by {what}."

_THRESHOLD_ALERTS = (
    (ALERT_THRESHOLD_EXCEEDED, MemoryLevel.ALERT, "warning", names.ENV_ALERT_MB),
    (CLEANUP_THRESHOLD_EXCEEDED, MemoryLevel.CLEANUP, "warning", names.ENV_CLEANUP_MB),
    (CRITICAL_THRESHOLD_EXCEEDED, MemoryLevel.CRITICAL, "critical", names.ENV_CRITICAL_MB),
)

_SUMMARIES = {
    ALERT_THRESHOLD_EXCEEDED: "Process memory is above its alert threshold.",
    CLEANUP_THRESHOLD_EXCEEDED: "Process memory is above its cleanup threshold.",
    CRITICAL_THRESHOLD_EXCEEDED: "Process memory is above its critical threshold.",
    LEAK_SUSPECTED: "A profiled operation is suspected of leaking memory.",
    CRITICAL_PREDICTED: "Process memory is predicted to reach its critical threshold.",
    NEAR_LIMIT: "Process memory is close to its effective memory limit.",
    CLEANUP_INEFFECTIVE: "Memory cleanups keep running without bringing memory below the cleanup threshold.",
    DEVICE_THRESHOLD_EXCEEDED: "Accelerator memory is above its alert threshold.",
    DEVICE_CRITICAL_THRESHOLD_EXCEEDED: "Accelerator memory is above its critical threshold.",
    CONTAINER_NEAR_OOM: "The container's working set is close to its memory limit.",
    OOM_KILLED: "The OOM killer killed a process in the container.",
}

# What the on-call engineer does next, per alert; docs/runbooks.md has the long version.
_RUNBOOKS = {
    ALERT_THRESHOLD_EXCEEDED: (
        "The process is growing towards its cleanup threshold. On the Reer memory dashboard, "
        "check per-operation peak growth and net bytes for the operation that grew, and the "
        "leak suspects panel. If this is the expected working set, raise {env}."
    ),
    CLEANUP_THRESHOLD_EXCEEDED: (
        "The process runs its cleanup hooks at this level; staying above it means cleanups "
        "free too little (see the freed-bytes panel). Look for leak suspects and operations "
        "with large net bytes; reduce batch or cache sizes, or raise {env} and the memory limit "
        "together."
    ),
    CRITICAL_THRESHOLD_EXCEEDED: (
        "The process is close to its memory limit and may be OOM-killed; it runs emergency "
        "cleanups. Shed load or restart the instance now, then find the cause on the Reer memory "
        "dashboard (operation peak growth, leak suspects) before raising {env}."
    ),
    LEAK_SUSPECTED: (
        "Its own calls keep memory call after call (or an explanation attributed most new live "
        "memory to it). Start from the reer.memory.explain span or log line, which names the "
        "allocating lines, or run reer-otel-memory explain PID; then look for what they keep per "
        "call (caches, lists, registries). A restart only buys time."
    ),
    CRITICAL_PREDICTED: (
        "Nothing has crossed the critical threshold yet: there is time to act. On the Reer memory "
        "dashboard, compare the predicted RSS panel with net bytes per operation and leak suspects "
        "to find what grows; plan a restart or a rollout before the prediction comes true."
    ),
    NEAR_LIMIT: (
        "Past the limit the kernel reclaims, then the OOM killer ends the process. Check whether "
        "the critical threshold ({env}) sits above this point, shed load or restart the instance, "
        "and size the limit against the peak RSS panel."
    ),
    CLEANUP_INEFFECTIVE: (
        "Cleanups find no garbage: the memory is held by live objects. Check the bytes-freed panel "
        "and leak suspects; lower cache and batch sizes, or raise {env} and the memory limit together."
    ),
    DEVICE_THRESHOLD_EXCEEDED: (
        "Check the device memory panels of the Reer memory dashboard for the model or batch that "
        "grew; release cached allocator blocks, lower the batch size, or raise the device threshold."
    ),
    DEVICE_CRITICAL_THRESHOLD_EXCEEDED: (
        "The next allocation on this device may fail with out-of-memory. Lower the batch size or "
        "unload a model now; then find which operation grew it on the device memory panels."
    ),
    CONTAINER_NEAR_OOM: (
        "The kernel kills a process of the container when the working set reaches the limit. "
        "Compare RSS, working set and limit on the container panels: page cache counts too. Shed "
        "load or restart now; raise the container limit or lower the thresholds after."
    ),
    OOM_KILLED: (
        "Find the killed process in the kernel log (dmesg, kubectl describe pod: OOMKilled) and "
        "look at the RSS and working-set panels just before the kill; lower the thresholds so "
        "cleanups run earlier, or raise the container limit."
    ),
}


def format_duration(seconds: float) -> str:
    """A Prometheus duration for ``seconds``: ``10m``, ``90s``, ``1h``, ``0s`` or ``500ms``."""
    seconds = checked_number(seconds, 0, high_inclusive=False, name="for_s", expected="expected a non-negative number of seconds")
    millis = round(seconds * 1000)
    if millis % 1000:
        return f"{millis}ms"
    whole = millis // 1000
    for unit, size in (("h", 3600), ("m", 60)):
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def _for_durations(for_s: float | Mapping[str, float] | None) -> dict[str, str]:
    durations = dict(DEFAULT_FOR_S)
    if isinstance(for_s, Mapping):
        unknown = sorted(set(for_s) - set(ALERT_NAMES))
        if unknown:
            raise ConfigurationError(f"for_s has unknown alert names {unknown}: expected some of {list(ALERT_NAMES)}")
        durations.update(for_s)
    elif for_s is not None:
        durations = {alert: for_s for alert in ALERT_NAMES}
    return {alert: format_duration(value) for alert, value in durations.items()}


def runbook_anchor(alert: str) -> str:
    """The anchor of ``alert``'s section in docs/runbooks.md (the heading is the alert name)."""
    return alert.lower()


def _positive(name: str, value: float, *, at_most: float | None = None) -> float:
    number = checked_number(value, 0, low_inclusive=False, high_inclusive=False, name=name, expected="expected a positive number")
    if at_most is not None and number > at_most:
        raise ConfigurationError(f"{name}={value!r}: expected a number in (0, {at_most:g}]")
    return number


@dataclass(frozen=True)
class RuleOptions:
    """What rendering may change beyond thresholds and ``for:`` durations.

    ``runbook_url`` is the base of every ``runbook_url`` annotation (each alert adds
    ``#<alert name in lower case>``); the rest are the windows and ratios of the newer alerts.
    """

    runbook_url: str = DEFAULT_RUNBOOK_URL
    prediction_window_s: float = DEFAULT_PREDICTION_WINDOW_S
    prediction_horizon_s: float = DEFAULT_PREDICTION_HORIZON_S
    near_limit_ratio: float = DEFAULT_NEAR_LIMIT_RATIO
    container_ratio: float = DEFAULT_CONTAINER_RATIO
    cleanup_window_s: float = DEFAULT_CLEANUP_WINDOW_S
    ineffective_cleanups: int = DEFAULT_INEFFECTIVE_CLEANUPS

    def __post_init__(self) -> None:
        if not isinstance(self.runbook_url, str) or not self.runbook_url or any(char.isspace() for char in self.runbook_url):
            raise ConfigurationError(f"runbook_url={self.runbook_url!r}: expected a URL (or path) without spaces")
        for name in ("prediction_window_s", "prediction_horizon_s", "cleanup_window_s"):
            _positive(name, getattr(self, name))
        for name in ("near_limit_ratio", "container_ratio"):
            _positive(name, getattr(self, name), at_most=1.0)
        if isinstance(self.ineffective_cleanups, bool) or not isinstance(self.ineffective_cleanups, int) or self.ineffective_cleanups < 1:
            raise ConfigurationError(f"ineffective_cleanups={self.ineffective_cleanups!r}: expected a whole number >= 1")

    def runbook(self, alert: str) -> str:
        return f"{self.runbook_url.split('#', 1)[0]}#{runbook_anchor(alert)}"


# --- annotation templates ------------------------------------------------------------------

_WHO = "{{ $labels.job }}/{{ $labels.instance }}"


def _query_template(query: str, args: Sequence[str], render: str = "humanize1024", unit: str = "B") -> str:
    """Template text that runs ``query`` (a printf format over ``args``) when the alert fires."""
    arguments = " ".join(args)
    return (
        f'{{{{ with printf "{query}" {arguments} | query }}}}{{{{ . | first | value | {render} }}}}{unit}'
        "{{ else }}unknown{{ end }}"
    )


def _threshold_query_template(level: MemoryLevel) -> str:
    # Looked up when the alert fires, so the description shows the process's own threshold.
    query = f"max({series.THRESHOLD}{{{series.LABEL_LEVEL}=%q,job=%q,instance=%q}})"
    return _query_template(query, (f'"{level.value}"', "$labels.job", "$labels.instance"), "humanize1024")


def _threshold_text(level: MemoryLevel, env: str, static_bytes: int | None) -> str:
    if static_bytes is None:
        return f"its {level.value} threshold of {_threshold_query_template(level)} ({env})"
    return f"the {level.value} threshold of {static_bytes / MB:g} MB ({env}, {static_bytes} bytes)"


def _compare_with_threshold(left: str, operator: str, level: MemoryLevel, static_bytes: int | None) -> str:
    """``left <operator> the process's threshold of level``, matched on job and instance."""
    if static_bytes is not None:
        return f"{left} {operator} {static_bytes}"
    return (
        f"{left}\n"
        f"  {operator} on(job, instance) group_left()\n"
        f'  max by (job, instance) ({series.THRESHOLD}{{{series.LABEL_LEVEL}="{level.value}"}})'
    )


def _alert(alert: str, expr: str, duration: str, severity: str, description: str, options: RuleOptions) -> dict[str, Any]:
    return {
        "alert": alert,
        "expr": expr + "\n" if "\n" in expr else expr,
        "for": duration,
        "labels": {"severity": severity},
        "annotations": {"summary": _SUMMARIES[alert], "description": description, "runbook_url": options.runbook(alert)},
    }


def _threshold_rule(
    alert: str, level: MemoryLevel, severity: str, env: str, duration: str, static_bytes: int | None, options: RuleOptions
) -> dict[str, Any]:
    expr = _compare_with_threshold(series.RSS, ">=", level, static_bytes)
    description = (
        f"{_WHO} has a resident set size of "
        f"{{{{ $value | humanize1024 }}}}B, at or above {_threshold_text(level, env, static_bytes)}, for more than {duration}. "
        + _RUNBOOKS[alert].format(env=env)
    )
    return _alert(alert, expr, duration, severity, description, options)


def _leak_rule(duration: str, options: RuleOptions) -> dict[str, Any]:
    operation = f"$labels.{series.LABEL_OPERATION}"
    description = (
        f"Operation {{{{ {operation} }}}} of {_WHO} has been "
        f"suspected of leaking memory for more than {duration}. " + _RUNBOOKS[LEAK_SUSPECTED]
    )
    return _alert(LEAK_SUSPECTED, f"{series.LEAK_SUSPECTED} > 0", duration, "warning", description, options)


def _predicted_rule(duration: str, static_bytes: int | None, options: RuleOptions) -> dict[str, Any]:
    # Only while RSS is still below critical: above it, ReerMemoryCriticalThresholdExceeded speaks.
    expr = (
        _compare_with_threshold(PREDICTED_RSS, ">=", MemoryLevel.CRITICAL, static_bytes)
        + "\nand on(job, instance)\n"
        + _compare_with_threshold(series.RSS, "<", MemoryLevel.CRITICAL, static_bytes)
    )
    window = format_duration(options.prediction_window_s)
    horizon = format_duration(options.prediction_horizon_s)
    description = (
        f"{_WHO} is on course to reach {{{{ $value | humanize1024 }}}}B within {horizon} (linear trend "
        f"of its resident set size over the last {window}), at or above "
        f"{_threshold_text(MemoryLevel.CRITICAL, names.ENV_CRITICAL_MB, static_bytes)}; the trend has held for "
        f"more than {duration}. " + _RUNBOOKS[CRITICAL_PREDICTED]
    )
    return _alert(CRITICAL_PREDICTED, expr, duration, "warning", description, options)


def _near_limit_rule(duration: str, options: RuleOptions) -> dict[str, Any]:
    limit = _query_template(f"max({series.LIMIT}{{job=%q,instance=%q}})", ("$labels.job", "$labels.instance"), "humanize1024")
    description = (
        f"{_WHO} uses {{{{ $value | humanizePercentage }}}} of its effective memory limit of {limit}, at or above "
        f"{options.near_limit_ratio * 100:g}% of it, for more than {duration}. " + _RUNBOOKS[NEAR_LIMIT].format(env=names.ENV_CRITICAL_MB)
    )
    return _alert(NEAR_LIMIT, f"{series.UTILIZATION} >= {options.near_limit_ratio:g}", duration, "warning", description, options)


def _cleanup_ineffective_rule(duration: str, static_bytes: int | None, options: RuleOptions) -> dict[str, Any]:
    window = format_duration(options.cleanup_window_s)
    # min_over_time: RSS never came down below the threshold in the whole window.
    expr = (
        f"sum by (job, instance) (increase({series.CLEANUPS}[{window}])) >= {options.ineffective_cleanups}\n"
        "and on(job, instance)\n"
        + _compare_with_threshold(f"min_over_time({series.RSS}[{window}])", ">=", MemoryLevel.CLEANUP, static_bytes)
    )
    description = (
        f"{_WHO} ran at least {options.ineffective_cleanups} memory cleanups in the last {window} while its "
        f"resident set size stayed at or above {_threshold_text(MemoryLevel.CLEANUP, names.ENV_CLEANUP_MB, static_bytes)}. "
        + _RUNBOOKS[CLEANUP_INEFFECTIVE].format(env=names.ENV_CLEANUP_MB)
    )
    return _alert(CLEANUP_INEFFECTIVE, expr, duration, "warning", description, options)


_DEVICE_LABELS = f"job, instance, {series.LABEL_FRAMEWORK}, {series.LABEL_DEVICE}"


def _device_rule(alert: str, level: MemoryLevel, severity: str, duration: str, options: RuleOptions) -> dict[str, Any]:
    expr = (
        f"{series.DEVICE_USED}\n"
        f"  >= on({_DEVICE_LABELS}) group_left()\n"
        f'  max by ({_DEVICE_LABELS}) ({series.DEVICE_THRESHOLD}{{{series.LABEL_LEVEL}="{level.value}"}})'
    )
    query = (
        f"max({series.DEVICE_THRESHOLD}{{{series.LABEL_LEVEL}=%q,job=%q,instance=%q,"
        f"{series.LABEL_FRAMEWORK}=%q,{series.LABEL_DEVICE}=%q}})"
    )
    args = (f'"{level.value}"', "$labels.job", "$labels.instance", f"$labels.{series.LABEL_FRAMEWORK}", f"$labels.{series.LABEL_DEVICE}")
    description = (
        f"Device {{{{ $labels.{series.LABEL_DEVICE} }}}} ({{{{ $labels.{series.LABEL_FRAMEWORK} }}}}) of {_WHO} has "
        f"{{{{ $value | humanize1024 }}}}B in use, at or above its {level.value} threshold of "
        f"{_query_template(query, args)}, for more than {duration}. " + _RUNBOOKS[alert]
    )
    return _alert(alert, expr, duration, severity, description, options)


def _container_near_oom_rule(duration: str, options: RuleOptions) -> dict[str, Any]:
    limit = _query_template(f"max({series.CGROUP_LIMIT}{{job=%q,instance=%q}})", ("$labels.job", "$labels.instance"), "humanize1024")
    description = (
        f"The container of {_WHO} has a working set of {{{{ $value | humanizePercentage }}}} of its memory limit of "
        f"{limit}, at or above {options.container_ratio * 100:g}% of it, for more than {duration}. " + _RUNBOOKS[CONTAINER_NEAR_OOM]
    )
    return _alert(CONTAINER_NEAR_OOM, f"{CONTAINER_WORKING_SET_RATIO} >= {options.container_ratio:g}", duration, "critical", description, options)


def _oom_killed_rule(duration: str, options: RuleOptions) -> dict[str, Any]:
    window = format_duration(OOM_KILL_WINDOW_S)
    # increase() treats a counter reset (a restarted process) as a restart, not as kills.
    expr = f"increase({series.CGROUP_OOM_KILLS}[{window}]) > 0"
    description = f"The OOM killer killed a process in the container of {_WHO} within the last {window}. " + _RUNBOOKS[OOM_KILLED]
    return _alert(OOM_KILLED, expr, duration, "warning", description, options)


def _recording_rules(options: RuleOptions) -> list[dict[str, Any]]:
    window = format_duration(options.prediction_window_s)
    return [
        {"record": PREDICTED_RSS, "expr": f"predict_linear({series.RSS}[{window}], {options.prediction_horizon_s:g})"},
        {
            # A cgroup without a limit reports none (or 0): no ratio, rather than a division by zero.
            "record": CONTAINER_WORKING_SET_RATIO,
            # Every process of a pre-fork server reads the one cgroup (one series each, by pid): one
            # ratio per job and instance, so the container's alert fires once.
            "expr": f"max by (job, instance) ({series.CGROUP_WORKING_SET})\n  / on(job, instance)\n  max by (job, instance) ({series.CGROUP_LIMIT} > 0)\n",
        },
    ]


def rule_groups(
    static: bool = False,
    config: MemoryConfig | None = None,
    *,
    for_s: float | Mapping[str, float] | None = None,
    options: RuleOptions | None = None,
) -> dict[str, Any]:
    """The rule file as data: ``{"groups": [{"name": ..., "rules": [...]}, ...]}``.

    The first group holds the alerts, the second the recording rules they share with the
    dashboard. ``static`` bakes in the thresholds of ``config`` (default: :func:`get_config`)
    instead of reading each process's ``reer_memory_threshold_bytes`` (device thresholds are
    always read from ``reer_memory_device_threshold_bytes``). ``for_s`` overrides how long each
    condition must hold: one number for every alert, or a mapping from alert name to seconds.
    ``options`` sets the runbook base URL, windows and ratios (:class:`RuleOptions`).
    """
    if config is not None and not isinstance(config, MemoryConfig):
        raise InvalidArgumentError(f"config={config!r}: expected a MemoryConfig (see reer_otel_memory.load_config)")
    if config is not None and not static:
        raise ConfigurationError("config is only used with static=True: the dynamic rules read each process's thresholds")
    if options is None:
        options = RuleOptions()
    elif not isinstance(options, RuleOptions):
        raise InvalidArgumentError(f"options={options!r}: expected a RuleOptions")
    durations = _for_durations(for_s)
    if static and config is None:
        config = get_config()

    def baked(level: MemoryLevel) -> int | None:
        return config.threshold_bytes(level) if static and config is not None else None

    rules = [
        _threshold_rule(alert, level, severity, env, durations[alert], baked(level), options)
        for alert, level, severity, env in _THRESHOLD_ALERTS
    ]
    rules += [
        _leak_rule(durations[LEAK_SUSPECTED], options),
        _predicted_rule(durations[CRITICAL_PREDICTED], baked(MemoryLevel.CRITICAL), options),
        _near_limit_rule(durations[NEAR_LIMIT], options),
        _cleanup_ineffective_rule(durations[CLEANUP_INEFFECTIVE], baked(MemoryLevel.CLEANUP), options),
        _device_rule(DEVICE_THRESHOLD_EXCEEDED, MemoryLevel.ALERT, "warning", durations[DEVICE_THRESHOLD_EXCEEDED], options),
        _device_rule(
            DEVICE_CRITICAL_THRESHOLD_EXCEEDED, MemoryLevel.CRITICAL, "critical", durations[DEVICE_CRITICAL_THRESHOLD_EXCEEDED], options
        ),
        _container_near_oom_rule(durations[CONTAINER_NEAR_OOM], options),
        _oom_killed_rule(durations[OOM_KILLED], options),
    ]
    return {"groups": [{"name": RULE_GROUP, "rules": rules}, {"name": RECORDING_GROUP, "rules": _recording_rules(options)}]}


def render_rules(
    static: bool = False,
    config: MemoryConfig | None = None,
    *,
    for_s: float | Mapping[str, float] | None = None,
    options: RuleOptions | None = None,
) -> str:
    """The alerting rules as a Prometheus rule file (YAML text); see :func:`rule_groups`."""
    if static and config is None:
        config = get_config()
    groups = rule_groups(static, config, for_s=for_s, options=options)
    if static and config is not None:
        levels = ", ".join(f"{level.value} {config.threshold_bytes(level) / MB:g} MB" for level in THRESHOLD_LEVELS)
        what = f"`reer-otel-memory rules --static`: thresholds baked in ({levels})"
    else:
        what = "`reer-otel-memory rules`: each process is held to the thresholds it exports"
    return _yaml.dumps(groups, header=_GENERATED_HEADER.format(what=what))



def prometheus_config(
    targets: Sequence[str] = (EXAMPLE_TARGET,),
    *,
    rule_files: Sequence[str] = (RULES_FILENAME,),
    job: str = EXAMPLE_JOB,
    scrape_interval_s: float = 15.0,
    evaluation_interval_s: float = 15.0,
    alertmanagers: Sequence[str] = (),
) -> dict[str, Any]:
    """A Prometheus configuration that scrapes ``targets`` and loads ``rule_files``, as data."""
    if isinstance(targets, str) or not targets:
        raise ConfigurationError(f"targets={targets!r}: expected a non-empty list of host:port strings")
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": format_duration(scrape_interval_s),
            "evaluation_interval": format_duration(evaluation_interval_s),
        },
        "rule_files": list(rule_files),
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
    }
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    return config


def render_prometheus_config(targets: Sequence[str] = (EXAMPLE_TARGET,), **options: Any) -> str:
    """:func:`prometheus_config` as YAML text."""
    return _yaml.dumps(
        prometheus_config(targets, **options),
        header=_GENERATED_HEADER.format(what="reer-otel-memory: an example scrape configuration"),
    )


def _inhibit_rules() -> list[dict[str, Any]]:
    # _THRESHOLD_ALERTS runs from the lowest level to the highest: each alert inhibits the ones
    # below it, so a process notifies once, at the highest threshold it crossed.
    ordered = [alert for alert, _level, _severity, _env in _THRESHOLD_ALERTS]
    inhibit_rules = []
    for position in range(len(ordered) - 1, 0, -1):
        lower = "|".join(ordered[:position])
        inhibit_rules.append(
            {
                "source_matchers": [f'alertname="{ordered[position]}"'],
                "target_matchers": [f'alertname=~"{lower}"'],
                "equal": list(_PROCESS_LABELS),
            }
        )
    # Likewise per accelerator: a device above its critical threshold notifies once.
    inhibit_rules.append(
        {
            "source_matchers": [f'alertname="{DEVICE_CRITICAL_THRESHOLD_EXCEEDED}"'],
            "target_matchers": [f'alertname="{DEVICE_THRESHOLD_EXCEEDED}"'],
            "equal": [*_PROCESS_LABELS, series.LABEL_FRAMEWORK, series.LABEL_DEVICE],
        }
    )
    return inhibit_rules


def _alertmanager_duration(name: str, seconds: float, *, allow_zero: bool) -> str:
    expected = "a non-negative" if allow_zero else "a positive"
    try:
        duration = format_duration(seconds)
    except ValueError:
        raise ConfigurationError(f"{name}={seconds!r}: expected {expected} number of seconds") from None
    # Alertmanager refuses a zero group or repeat interval.
    if duration == "0s" and not allow_zero:
        raise ConfigurationError(f"{name}={seconds!r}: expected {expected} number of seconds (at least 1 ms)")
    return duration


def alertmanager_config(
    receiver_url: str | None = None,
    *,
    group_wait_s: float = 30.0,
    group_interval_s: float = 300.0,
    repeat_interval_s: float = 4 * 3600.0,
) -> dict[str, Any]:
    """An Alertmanager (0.25+) configuration for the alerts of :func:`rule_groups`, as data.

    One route grouping by ``alertname``, ``job`` and ``instance`` to one receiver: a webhook
    posting to ``receiver_url``, or without it a receiver with no integrations, to which the
    real ones (email, Slack, PagerDuty...) are added. Its inhibit rules keep only the highest
    threshold alert of a process notifying. ``group_wait_s`` is how long a new group waits for
    more alerts before its first notification; ``group_interval_s`` how long before notifying
    of alerts added to a group; ``repeat_interval_s`` how long before repeating a notification.
    """
    if receiver_url is not None and (not isinstance(receiver_url, str) or not receiver_url.startswith(("http://", "https://"))):
        raise ConfigurationError(f"receiver_url={receiver_url!r}: expected an http:// or https:// URL, or None")
    durations = {
        "group_wait": _alertmanager_duration("group_wait_s", group_wait_s, allow_zero=True),
        "group_interval": _alertmanager_duration("group_interval_s", group_interval_s, allow_zero=False),
        "repeat_interval": _alertmanager_duration("repeat_interval_s", repeat_interval_s, allow_zero=False),
    }
    receiver: dict[str, Any] = {"name": ALERTMANAGER_RECEIVER}
    if receiver_url is not None:
        receiver["webhook_configs"] = [{"url": receiver_url, "send_resolved": True}]
    return {
        "route": {
            "receiver": ALERTMANAGER_RECEIVER,
            "group_by": ["alertname", *_PROCESS_LABELS],
            **durations,
        },
        "receivers": [receiver],
        "inhibit_rules": _inhibit_rules(),
    }


def render_alertmanager_config(receiver_url: str | None = None, **options: Any) -> str:
    """:func:`alertmanager_config` as YAML text."""
    what = (
        "reer-otel-memory: an example Alertmanager configuration.\n"
        f"Add the real integrations to the {ALERTMANAGER_RECEIVER} receiver. The inhibit rules keep only\n"
        "the highest threshold alert of a process (same job and instance), and of a device, notifying"
    )
    return _yaml.dumps(alertmanager_config(receiver_url, **options), header=_GENERATED_HEADER.format(what=what))


def deploy_files() -> dict[str, str]:
    """The files this module ships under ``deploy/``: relative path -> text."""
    return {
        f"prometheus/{RULES_FILENAME}": render_rules(),
        f"prometheus/{PROMETHEUS_CONFIG_FILENAME}": render_prometheus_config(
            alertmanagers=(EXAMPLE_ALERTMANAGER,),
        ),
        f"alertmanager/{ALERTMANAGER_CONFIG_FILENAME}": render_alertmanager_config(),
    }
