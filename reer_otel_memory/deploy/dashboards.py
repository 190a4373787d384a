"""The Grafana dashboard for processes that export the ``reer_memory_*`` series.

Each ``_*_row`` builder returns one row's panels as data; :func:`dashboard` lays the rows out
under the ``datasource``, ``job`` and ``instance`` variables, and :func:`deploy_files` gives the
JSON and provisioning examples ``make deploy`` writes under ``deploy/grafana/``. The recording
rules its panels share with the alerts come from :mod:`.rules`. Users' manual: README.md,
"Prometheus and Grafana".
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..export import naming as series
from ..levels import THRESHOLD_LEVELS
from . import _yaml, rules

DASHBOARD_UID = "reer-memory"
DASHBOARD_TITLE = "Reer memory"
SCHEMA_VERSION = 39
DASHBOARD_FILENAME = "reer-memory-dashboard.json"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: The selector every query carries.
SELECTOR = 'job=~"$job", instance=~"$instance"'
RATE_WINDOW = "$__rate_interval"

_THRESHOLD_COLORS = {"alert": "yellow", "cleanup": "orange", "critical": "red"}
_LEVEL_COLORS = (("ok", "green"), ("alert", "yellow"), ("cleanup", "orange"), ("critical", "red"))
_PANEL_HEIGHT = 8
_GRID_WIDTH = 24
_ALERT_NAME_PATTERN = "ReerMemory.*"


def _select(metric: str, **labels: str) -> str:
    """``metric{job=~"$job", instance=~"$instance", <labels>}``."""
    extra = "".join(f', {key}="{value}"' for key, value in labels.items())
    return f"{metric}{{{SELECTOR}{extra}}}"


#: In a legend of per-process series: the process, on a pre-fork server's page (empty elsewhere).
PID = f"{{{{{series.LABEL_PID}}}}}"


def _target(ref_id: str, expr: str, legend: str) -> dict[str, Any]:
    return {"datasource": DATASOURCE, "refId": ref_id, "expr": expr, "legendFormat": legend, "range": True, "instant": False}


def _threshold_targets(value_of: Any, first_ref: int = 1) -> list[dict[str, Any]]:
    """One dashed series per level: ``value_of(level)`` is the query of that threshold."""
    return [
        _target(chr(ord("A") + first_ref + index), value_of(level.value), f"{{{{instance}}}} {level.value} threshold")
        for index, level in enumerate(THRESHOLD_LEVELS)
    ]


def _threshold_overrides(targets: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    overrides = []
    for target in targets:
        level = target["legendFormat"].split()[-2]
        overrides.append(
            {
                "matcher": {"id": "byFrameRefID", "options": target["refId"]},
                "properties": [
                    {"id": "color", "value": {"mode": "fixed", "fixedColor": _THRESHOLD_COLORS[level]}},
                    {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                    {"id": "custom.fillOpacity", "value": 0},
                    {"id": "custom.lineWidth", "value": 1},
                ],
            }
        )
    return overrides


def _dashed(ref_id: str, color: str) -> dict[str, Any]:
    """An override drawing query ``ref_id`` as a thin dashed line: a limit or a threshold."""
    return {
        "matcher": {"id": "byFrameRefID", "options": ref_id},
        "properties": [
            {"id": "color", "value": {"mode": "fixed", "fixedColor": color}},
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            {"id": "custom.fillOpacity", "value": 0},
        ],
    }


def _timeseries(title: str, description: str, unit: str, targets: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    overrides = extra.pop("overrides", [])
    defaults: dict[str, Any] = {
        "unit": unit,
        "color": {"mode": "palette-classic"},
        "custom": {"drawStyle": "line", "lineWidth": 2, "fillOpacity": 10, "showPoints": "never", "spanNulls": False},
    }
    defaults.update(extra.pop("defaults", {}))
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": overrides},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets,
        **extra,
    }


def _state_timeline(title: str, description: str, targets: list[dict[str, Any]], mappings: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "state-timeline",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {
            "defaults": {
                "unit": "short",
                "color": {"mode": "thresholds"},
                "mappings": mappings,
                "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
                "custom": {"fillOpacity": 80, "lineWidth": 0},
            },
            "overrides": [],
        },
        "options": {
            "showValue": "auto",
            "mergeValues": True,
            "rowHeight": 0.9,
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
            "tooltip": {"mode": "single", "sort": "none"},
        },
        "targets": targets,
    }


def _value_mappings(texts_colors: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    options = {str(index): {"text": text, "color": color, "index": index} for index, (text, color) in enumerate(texts_colors)}
    return [{"type": "value", "options": options}]


def _quantile(histogram: str, quantile: float) -> str:
    return (
        f"histogram_quantile({quantile}, sum by (job, instance, {series.LABEL_OPERATION}, le) "
        f"(rate({_select(histogram + '_bucket')}[{RATE_WINDOW}])))"
    )


def _rate(counter: str, by: str = "") -> str:
    grouping = f"job, instance, {by}" if by else "job, instance"
    return f"sum by ({grouping}) (rate({_select(counter)}[{RATE_WINDOW}]))"


# --- rows ----------------------------------------------------------------------------------


def _memory_row() -> list[dict[str, Any]]:
    rss_thresholds = _threshold_targets(lambda level: f"max by (job, instance) ({_select(series.THRESHOLD, **{series.LABEL_LEVEL: level})})")
    share_thresholds = _threshold_targets(
        lambda level: f"max by (job, instance) ({_select(series.THRESHOLD, **{series.LABEL_LEVEL: level})})"
        f" / on(job, instance) max by (job, instance) ({_select(series.LIMIT)})"
    )
    return [
        _timeseries(
            "RSS and thresholds",
            "Resident set size of each process, with its own alert, cleanup and critical thresholds (dashed).",
            "bytes",
            [_target("A", _select(series.RSS), f"{{{{instance}}}} {PID} RSS"), *rss_thresholds],
            overrides=_threshold_overrides(rss_thresholds),
        ),
        _timeseries(
            "Utilization of the memory limit",
            "RSS as a share of the effective limit (smallest of cgroup limits and RAM), with the thresholds "
            "as shares of the same limit (dashed).",
            "percentunit",
            [_target("A", _select(series.UTILIZATION), f"{{{{instance}}}} {PID} utilization"), *share_thresholds],
            overrides=_threshold_overrides(share_thresholds),
            defaults={"min": 0},
        ),
        _state_timeline(
            "Memory level",
            "The level each process is in: ok, alert, cleanup or critical.",
            [_target("A", _select(series.LEVEL), f"{{{{instance}}}} {PID}")],
            _value_mappings(_LEVEL_COLORS),
        ),
        _timeseries(
            "Allocator heap",
            "Bytes the C allocator has handed out and not freed; RSS far above it points at fragmentation "
            "or memory outside the allocator (mmap, native libraries).",
            "bytes",
            [_target("A", _select(series.HEAP), f"{{{{instance}}}} {PID} heap")],
        ),
        _timeseries(
            "Peak RSS and limit",
            "Highest RSS each process has reached since it started, and its effective memory limit.",
            "bytes",
            [
                _target("A", _select(series.PEAK_RSS), f"{{{{instance}}}} {PID} peak RSS"),
                _target("B", _select(series.LIMIT), f"{{{{instance}}}} {PID} limit"),
            ],
            overrides=[_dashed("B", "red")],
        ),
        _timeseries(
            "Predicted RSS",
            f"Where each process's RSS is heading: the linear trend of the recording rule {rules.PREDICTED_RSS} "
            "(the one ReerMemoryCriticalPredicted compares), against the critical threshold (dashed).",
            "bytes",
            [
                _target("A", _select(rules.PREDICTED_RSS), f"{{{{instance}}}} {PID} predicted RSS"),
                _target(
                    "B",
                    f"max by (job, instance) ({_select(series.THRESHOLD, **{series.LABEL_LEVEL: 'critical'})})",
                    "{{instance}} critical threshold",
                ),
            ],
            overrides=[_dashed("B", "red")],
        ),
    ]


def _alerts_row() -> list[dict[str, Any]]:
    return [
        _timeseries(
            "Level crossings",
            "Upward crossings into each level, per second.",
            "ops",
            [_target("A", _rate(series.ALERTS, series.LABEL_LEVEL), "{{instance}} {{level}}")],
        ),
        _timeseries(
            "Cleanups",
            "Cleanups run per second, by what triggered them (threshold, critical, emergency, manual).",
            "ops",
            [_target("A", _rate(series.CLEANUPS, series.LABEL_TRIGGER), "{{instance}} {{trigger}}")],
        ),
        _timeseries(
            "Bytes freed by cleanups",
            "Resident bytes released by cleanups, per second; cleanups that free little while RSS stays high "
            "point at live objects, not garbage.",
            "binBps",
            [_target("A", _rate(series.CLEANUP_FREED), "{{instance}} freed")],
        ),
        _timeseries(
            "Monitor CPU",
            "CPU the memory monitor spends sampling and cleaning up, as a share of one core.",
            "percentunit",
            [_target("A", _rate(series.MONITOR_CPU), "{{instance}} monitor")],
        ),
    ]


def _operations_row() -> list[dict[str, Any]]:
    operation = f"{{{{instance}}}} {{{{{series.LABEL_OPERATION}}}}}"
    return [
        _timeseries(
            "Operation duration p95",
            "95th percentile duration of each profiled operation.",
            "s",
            [_target("A", _quantile(series.OPERATION_DURATION, 0.95), operation)],
        ),
        _timeseries(
            "Operation peak growth p95",
            "95th percentile of how far RSS rose above its start during each profiled operation.",
            "bytes",
            [_target("A", _quantile(series.OPERATION_PEAK, 0.95), operation)],
        ),
        _timeseries(
            "Net bytes per operation",
            "Sum of RSS deltas of each profiled operation since the process started; a line that only "
            "climbs is memory the operation keeps.",
            "bytes",
            [_target("A", f"sum by (job, instance, {series.LABEL_OPERATION}) ({_select(series.OPERATION_NET)})", operation)],
        ),
        _state_timeline(
            "Leak suspects",
            "Operations suspected of leaking memory on their own evidence: the calls that ran alone "
            "(reer.memory.overlap 0) kept memory call after call while no other Python thread was busy, "
            "or an explanation attributed most of the new live memory to the operation. Growth that "
            "cannot be pinned on one operation shows in Process-level leak verdict instead.",
            [_target("A", f"max by (job, instance, {series.LABEL_OPERATION}) ({_select(series.LEAK_SUSPECTED)})", operation)],
            _value_mappings((("no", "green"), ("suspected", "red"))),
        ),
        _state_timeline(
            "Process-level leak verdict",
            "Whether each process's memory grows while no single profiled operation can be shown to own "
            "the growth (their calls overlapped, or another Python thread was busy meanwhile). No operation "
            "is accused: the candidate operations are named in the log line, the span event "
            "reer.memory.leak.process_suspected and the reer.memory.explain span, which lists the allocation "
            "sites still holding the new memory.",
            [_target("A", f"max by (job, instance) ({_select(series.PROCESS_LEAK_SUSPECTED)})", "{{instance}}")],
            _value_mappings((("no", "green"), ("growth", "orange"))),
        ),
    ]


def _routes_row() -> list[dict[str, Any]]:
    """Requests of the instrumented web frameworks, by route template (REER_MEMORY_SERVER_SPANS)."""
    route = f"{{{{instance}}}} {{{{{series.LABEL_ROUTE}}}}}"
    by_route = f"job, instance, {series.LABEL_ROUTE}"
    return [
        _timeseries(
            "Request peak growth p95 by route",
            "95th percentile of how far RSS rose above its start during a request, by route template, "
            "from the requests that overlapped no other measured work (REER_MEMORY_SERVER_SPANS=1).",
            "bytes",
            [_target("A", f"histogram_quantile(0.95, sum by ({by_route}, le) (rate({_select(series.ROUTE_PEAK + '_bucket')}[{RATE_WINDOW}])))", route)],
        ),
        _timeseries(
            "Net bytes per route",
            "Sum of RSS deltas of each route's requests that overlapped no other measured work; a line "
            "that only climbs is memory the route keeps.",
            "bytes",
            [_target("A", f"sum by ({by_route}) ({_select(series.ROUTE_NET)})", route)],
        ),
        _timeseries(
            "Requests measured alone by route",
            "Share of each route's requests that overlapped no other measured work: only those feed the "
            "two panels beside this one. A low share (a busy threaded or async server) means few figures.",
            "percentunit",
            [
                _target(
                    "A",
                    f"sum by ({by_route}) (rate({_select(series.ROUTE_PEAK + '_count')}[{RATE_WINDOW}])) "
                    f"/ sum by ({by_route}) (rate({_select(series.ROUTE_REQUESTS)}[{RATE_WINDOW}]))",
                    route,
                )
            ],
        ),
    ]


def _models_row() -> list[dict[str, Any]]:
    model = series.LABEL_MODEL
    resource = series.LABEL_RESOURCE
    by_model = f"{{{{instance}}}} {{{{{model}}}}}"
    return [
        _timeseries(
            "Bytes per model",
            "Estimated bytes each loaded model holds in arrays and buffers.",
            "bytes",
            [_target("A", f"sum by (job, instance, {model}) ({_select(series.MODEL_SIZE)})", by_model)],
        ),
        _timeseries(
            "Model loads",
            "Model loads per second, by model.",
            "ops",
            [_target("A", _rate(series.MODEL_LOADS, model), by_model)],
        ),
        _timeseries(
            "Bytes per managed resource",
            "Estimated bytes each managed resource holds, as last measured.",
            "bytes",
            [
                _target(
                    "A",
                    f"sum by (job, instance, {resource}) ({_select(series.RESOURCE_SIZE)})",
                    f"{{{{instance}}}} {{{{{resource}}}}}",
                )
            ],
        ),
        _timeseries(
            "Managed resources",
            "Resources registered with the resource manager and still alive.",
            "short",
            [_target("A", f"sum by (job, instance) ({_select(series.RESOURCES)})", "{{instance}} resources")],
        ),
        _timeseries(
            "Resource cleanups",
            "Managed resources cleaned up per second, by trigger (manual, limit, pressure).",
            "ops",
            [_target("A", _rate(series.RESOURCE_CLEANUPS, series.LABEL_TRIGGER), "{{instance}} {{trigger}}")],
        ),
    ]


def _trace_store_row() -> list[dict[str, Any]]:
    path = series.LABEL_TRACE_STORE_PATH
    by_path = f"{{{{instance}}}} {{{{{path}}}}}"
    return [
        _timeseries(
            "Trace store file size",
            "Bytes of each trace store's JSONL file.",
            "bytes",
            [_target("A", f"sum by (job, instance, {path}) ({_select(series.TRACE_STORE_SIZE)})", by_path)],
        ),
        _timeseries(
            "Traces per store",
            "Complete trace records in each trace store, as of its latest read or write. Trace store "
            "operations (trace_store_*) appear in the Operations row.",
            "short",
            [_target("A", f"sum by (job, instance, {path}) ({_select(series.TRACE_STORE_TRACES)})", by_path)],
        ),
    ]


def _containers_row() -> list[dict[str, Any]]:
    return [
        _timeseries(
            "RSS, working set and limit",
            "The process's RSS beside its container's working set (what the OOM killer weighs: usage less "
            "inactive page cache), usage and memory limit (dashed).",
            "bytes",
            [
                _target("A", _select(series.RSS), f"{{{{instance}}}} {PID} RSS"),
                _target("B", f"max by (job, instance) ({_select(series.CGROUP_WORKING_SET)})", "{{instance}} working set"),
                _target("C", f"max by (job, instance) ({_select(series.CGROUP_USAGE)})", "{{instance}} usage"),
                _target("D", f"max by (job, instance) ({_select(series.CGROUP_LIMIT)})", "{{instance}} limit"),
            ],
            overrides=[_dashed("D", "red")],
        ),
        _timeseries(
            "Working set share of the container limit",
            f"The recording rule {rules.CONTAINER_WORKING_SET_RATIO}, which ReerMemoryContainerNearOOM compares.",
            "percentunit",
            [_target("A", _select(rules.CONTAINER_WORKING_SET_RATIO), "{{instance}} working set / limit")],
            defaults={"min": 0, "max": 1},
        ),
        _timeseries(
            "OOM kills",
            "Processes of the container killed by the OOM killer, per interval.",
            "short",
            [_target("A", f"sum by (job, instance) (increase({_select(series.CGROUP_OOM_KILLS)}[{RATE_WINDOW}]))", "{{instance}} OOM kills")],
        ),
        _timeseries(
            "Memory pressure stalls",
            "Share of time some tasks of the container stalled waiting for memory (PSI); rising stalls come before OOM kills.",
            "percentunit",
            [_target("A", _rate(series.CGROUP_PRESSURE), "{{instance}} stalled")],
        ),
    ]


def _devices_row() -> list[dict[str, Any]]:
    by_device = f"job, instance, {series.LABEL_FRAMEWORK}, {series.LABEL_DEVICE}"
    legend = f"{{{{instance}}}} {{{{{series.LABEL_DEVICE}}}}}"
    thresholds = [
        _target(
            chr(ord("C") + index),
            f"max by ({by_device}) ({_select(series.DEVICE_THRESHOLD, **{series.LABEL_LEVEL: level})})",
            f"{legend} {level} threshold",
        )
        for index, level in enumerate(("alert", "critical"))
    ]
    return [
        _timeseries(
            "Device memory and thresholds",
            "Bytes in use on each accelerator device, with its alert and critical thresholds (dashed), which "
            "the ReerMemoryDevice* alerts compare.",
            "bytes",
            [
                _target("A", f"max by ({by_device}) ({_select(series.DEVICE_USED)})", f"{legend} used"),
                _target("B", f"max by ({by_device}) ({_select(series.DEVICE_PEAK)})", f"{legend} peak"),
                *thresholds,
            ],
            overrides=[_dashed("C", "yellow"), _dashed("D", "red")],
        ),
        _timeseries(
            "Device memory share of capacity",
            "Bytes in use on each device as a share of its capacity.",
            "percentunit",
            [
                _target(
                    "A",
                    f"max by ({by_device}) ({_select(series.DEVICE_USED)}) / max by ({by_device}) ({_select(series.DEVICE_LIMIT)} > 0)",
                    f"{legend} used / capacity",
                )
            ],
            defaults={"min": 0, "max": 1},
        ),
    ]


def _layout(rows: list[tuple[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Rows of two panels side by side, numbered and placed on Grafana's 24-column grid."""
    placed: list[dict[str, Any]] = []
    y = 0
    for title, panels in rows:
        if not panels:
            continue
        placed.append({"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"h": 1, "w": _GRID_WIDTH, "x": 0, "y": y}})
        y += 1
        width = _GRID_WIDTH // 2
        for index, panel in enumerate(panels):
            panel["gridPos"] = {"h": _PANEL_HEIGHT, "w": width, "x": (index % 2) * width, "y": y + (index // 2) * _PANEL_HEIGHT}
            placed.append(panel)
        y += ((len(panels) + 1) // 2) * _PANEL_HEIGHT
    for panel_id, panel in enumerate(placed, start=1):
        panel["id"] = panel_id
    return placed


def _variables() -> list[dict[str, Any]]:
    def query_variable(name: str, label: str, query: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "definition": query,
            "query": {"query": query, "refId": f"{name}-variable"},
            "refresh": 2,  # on time range change, so new processes appear
            "includeAll": True,
            "multi": True,
            "allValue": ".+",
            "current": {},
            "options": [],
            "regex": "",
            "sort": 1,
            "hide": 0,
        }

    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "options": [],
            "regex": "",
            "refresh": 1,
            "hide": 0,
        },
        query_variable("job", "Job", f"label_values({series.RSS}, job)"),
        query_variable("instance", "Instance", f'label_values({series.RSS}{{job=~"$job"}}, instance)'),
    ]


def dashboard() -> dict[str, Any]:
    """The dashboard as data (Grafana's JSON model)."""
    panels = _layout(
        [
            ("Memory", _memory_row()),
            ("Alerts and cleanups", _alerts_row()),
            ("Operations", _operations_row()),
            ("Requests by route", _routes_row()),
            ("Models and resources", _models_row()),
            ("Trace stores", _trace_store_row()),
            ("Containers", _containers_row()),
            ("Accelerators", _devices_row()),
        ]
    )
    return {
        "uid": DASHBOARD_UID,
        "title": DASHBOARD_TITLE,
        "description": "Memory of Python services instrumented with reer-otel-memory: RSS against each "
        "process's thresholds, levels, cleanups and profiled operations.",
        "tags": ["reer-otel-memory", "memory"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                {
                    "name": "Memory alerts",
                    "datasource": DATASOURCE,
                    "enable": True,
                    "hide": False,
                    "iconColor": "red",
                    "expr": f'ALERTS{{alertname=~"{_ALERT_NAME_PATTERN}", alertstate="firing", {SELECTOR}}}',
                    "step": "60s",
                    "titleFormat": "{{alertname}}",
                    "textFormat": "{{job}}/{{instance}} {{severity}}",
                    "tagKeys": "severity",
                    "useValueForTime": False,
                },
            ]
        },
        "templating": {"list": _variables()},
        "panels": panels,
    }


def render_dashboard() -> str:
    """The dashboard as Grafana JSON text, ready to import or provision."""
    return json.dumps(dashboard(), indent=2) + "\n"


# --- provisioning --------------------------------------------------------------------------

_GENERATED_HEADER = "Generated by {what}."

#: Where the provisioning example expects Grafana to find the dashboard file.
PROVISIONED_DASHBOARDS_DIR = "/var/lib/grafana/dashboards/reer-otel-memory"


def provisioning_files() -> dict[str, str]:
    """Grafana provisioning examples: a dashboard provider and a Prometheus data source."""
    provider = {
        "apiVersion": 1,
        "providers": [
            {
                "name": "reer-otel-memory",
                "folder": "Reer",
                "type": "file",
                "disableDeletion": False,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 60,
                "options": {"path": PROVISIONED_DASHBOARDS_DIR, "foldersFromFilesStructure": False},
            }
        ],
    }
    datasource = {
        "apiVersion": 1,
        "datasources": [
            {"name": "Prometheus", "type": "prometheus", "access": "proxy", "url": "http://127.0.0.1:9090", "isDefault": True}
        ],
    }
    return {
        "provisioning/dashboards/reer-memory.yml": _yaml.dumps(
            provider,
            header=_GENERATED_HEADER.format(what="reer-otel-memory: an example dashboard provider")
            + f"\nCopy {DASHBOARD_FILENAME} into {PROVISIONED_DASHBOARDS_DIR}.",
        ),
        "provisioning/datasources/prometheus.yml": _yaml.dumps(
            datasource, header=_GENERATED_HEADER.format(what="reer-otel-memory: an example Prometheus data source")
        ),
    }


def deploy_files() -> dict[str, str]:
    """The files this module ships under ``deploy/``: relative path -> text."""
    files = {f"grafana/{DASHBOARD_FILENAME}": render_dashboard()}
    files.update({f"grafana/{path}": text for path, text in provisioning_files().items()})
    return files
