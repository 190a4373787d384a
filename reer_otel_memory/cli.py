"""The ``reer-otel-memory`` command (also ``python -m reer_otel_memory``).

Subcommands: ``config`` (the effective configuration and where each value came from),
``demo``, ``rules`` and ``dashboards`` (the Prometheus rules and Grafana dashboard),
``postmortem`` (a flight recorder file), ``explain`` (ask a running process which lines hold
its memory) and ``runbook``; ``--help`` describes each. Exit status: 0 on success, 2 on a bad
configuration or arguments (the message names the value), 1 when ``explain`` gets no explanation.
Each subcommand is one ``_add_<name>(subparsers)`` function; :data:`SUBCOMMANDS` lists them in
the order ``--help`` shows them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import IO, TypeAlias

from . import _names as names
from ._version import __version__
from .config import MB, MemoryConfig, load_config, parse_bool
from .errors import ConfigurationError, ReerMemoryError
from .levels import THRESHOLD_LEVELS
from .profiling.probe import process_probe

PROG = "reer-otel-memory"

#: Exit status for a bad configuration or bad arguments (argparse's own usage errors use 2 too).
EXIT_BAD_CONFIGURATION = 2

_Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
#: What ``config`` reports: one section (``bytes``, ``mb``, ``source``, ...) per entry.
_Report: TypeAlias = dict[str, dict[str, object]]


# --- config --------------------------------------------------------------------------------


#: Every ``REER_MEMORY_*`` variable the package reads, as ``_names`` spells them.
ENVIRONMENT_VARIABLES = tuple(
    value for key, value in vars(names).items() if key.startswith("ENV_") and isinstance(value, str) and value.startswith("REER_MEMORY_")
)


def _variables_report(config: MemoryConfig | None, environ: os._Environ[str] | dict[str, str]) -> tuple[_Report, list[str]]:
    """Each ``REER_MEMORY_*`` variable: its value (None: unset), what it means, where that came from; and the problems."""
    from .instrumentation import parse_profile_targets, parse_signal

    report: _Report = {}
    problems: list[str] = []
    by_variable = {
        names.ENV_ALERT_MB: "alert",
        names.ENV_CLEANUP_MB: "cleanup",
        names.ENV_CRITICAL_MB: "critical",
        names.ENV_MONITORING_INTERVAL: "monitoring_interval",
    }
    for variable in ENVIRONMENT_VARIABLES:
        raw = environ.get(variable)
        source = "environment" if raw is not None and raw.strip() else "default"
        effective: object
        if variable in by_variable:
            key = by_variable[variable]
            if config is None:
                effective = "(not read: see the error)"
            elif key == "monitoring_interval":
                effective = f"{config.monitoring_interval_s:g} s"
            else:
                threshold_bytes = getattr(config, f"{key}_bytes")
                effective = f"{threshold_bytes / MB:g} MB ({threshold_bytes} bytes)"
        elif variable == names.ENV_RESET_PEAK:
            try:
                effective = "on" if parse_bool(variable, raw, default=True) else "off"
            except ConfigurationError as exc:
                problems.append(str(exc))
                effective = "(bad value)"
        elif variable == names.ENV_EMERGENCY_SIGNAL:
            try:
                found = parse_signal(raw, variable)
                effective = found.name if found is not None else "off"
            except ConfigurationError as exc:
                problems.append(str(exc))
                effective = "(bad value)"
        elif variable == names.ENV_PROFILE_TARGETS:
            targets, errors = parse_profile_targets(raw or "", variable)
            problems.extend(errors)
            effective = ", ".join(target.operation_name for target in targets) or "none"
        else:
            effective = raw or ""
        report[variable] = {"value": raw, "effective": effective, "source": source}
    return report, problems


def _config_report(config: MemoryConfig) -> _Report:
    rss_bytes = process_probe().rss_bytes()
    report: _Report = {}
    for level in THRESHOLD_LEVELS:
        report[level.value] = {
            "bytes": config.threshold_bytes(level),
            "mb": config.threshold_bytes(level) / MB,
            "source": config.sources.get(level.value, ""),
        }
    report["monitoring_interval"] = {
        "seconds": config.monitoring_interval_s,
        "source": config.sources.get("monitoring_interval", ""),
    }
    report["limit"] = {"bytes": config.limit.bytes, "mb": config.limit.bytes / MB, "source": config.limit.source}
    report["rss"] = {"bytes": rss_bytes, "mb": rss_bytes / MB, "level": config.level_for(rss_bytes).value}
    return report


def _print_config(report: _Report, out: IO[str]) -> None:
    rows: list[tuple[str, str, object]] = []
    for level in THRESHOLD_LEVELS:
        entry = report[level.value]
        rows.append((f"{level.value} threshold", f"{entry['mb']:.1f} MB ({entry['bytes']} bytes)", entry["source"]))
    interval = report["monitoring_interval"]
    rows.append(("monitoring interval", f"{interval['seconds']:g} s", interval["source"]))
    limit = report["limit"]
    rows.append(("effective limit", f"{limit['mb']:.1f} MB ({limit['bytes']} bytes)", limit["source"]))
    rss = report["rss"]
    rows.append(("this process", f"{rss['mb']:.1f} MB RSS", f"level {rss['level']}"))
    label_width = max(len(row[0]) for row in rows)
    value_width = max(len(row[1]) for row in rows)
    print(f"{PROG} {__version__}: effective configuration", file=out)
    for label, value, source in rows:
        print(f"  {label:<{label_width}}  {value:<{value_width}}  {source}", file=out)


def _print_variables(variables: _Report, out: IO[str]) -> None:
    print("environment variables:", file=out)
    name_width = max(map(len, variables))
    shown = {name: "(unset)" if entry["value"] is None else repr(entry["value"]) for name, entry in variables.items()}
    shown_width = max(map(len, shown.values()))
    for name, entry in variables.items():
        print(f"  {name:<{name_width}}  {shown[name]:<{shown_width}}  {entry['source']}: {entry['effective']}", file=out)


def _run_config(args: argparse.Namespace) -> int:
    problems: list[str] = []
    config: MemoryConfig | None
    try:
        config = load_config()
    except ConfigurationError as exc:
        config = None
        problems.append(str(exc))
    variables, variable_problems = _variables_report(config, os.environ)
    problems.extend(variable_problems)
    if problems or config is None:
        print(f"{PROG} config: {'; '.join(problems)}", file=sys.stderr)
        return EXIT_BAD_CONFIGURATION
    report = _config_report(config)
    if args.json:
        json.dump({**report, "variables": variables}, sys.stdout, indent=2)
        print()
    else:
        _print_config(report, sys.stdout)
        _print_variables(variables, sys.stdout)
    return 0


def _add_config(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "config",
        help="print the effective configuration and where each value came from",
        description="Print the thresholds, the monitoring interval and the effective memory limit the "
        "REER_MEMORY_* variables give, every REER_MEMORY_* variable with its value, and where each value "
        "came from. Exits 2 naming every bad value.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=_run_config)


# --- demo ----------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of seconds")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a port number 0-65535 (0: any free port)") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a port number 0-65535 (0: any free port)")
    return value


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(
        host=args.host,
        port=args.port,
        duration_s=args.duration,
        interval_s=args.interval,
        status=not args.quiet,
    )


def _add_demo(subparsers: _Subparsers) -> None:
    from .demo import DEFAULT_HOST, DEFAULT_INTERVAL_S, DEFAULT_PORT

    parser = subparsers.add_parser(
        "demo",
        help="run an ML-style workload that climbs through the memory levels, with /metrics",
        description="Build a model-sized object, process data in batches leaving garbage cycles behind, "
        "with thresholds set above the demo's own starting RSS so it climbs through alert, cleanup and "
        "critical; serve /metrics for Prometheus and show a live status line until Ctrl-C.",
    )
    parser.add_argument("--host", default=None, help=f"address /metrics listens on (default OTEL_EXPORTER_PROMETHEUS_HOST, else {DEFAULT_HOST})")
    parser.add_argument(
        "--port", type=_port, default=None, help=f"port of /metrics, 0 for any free port (default OTEL_EXPORTER_PROMETHEUS_PORT, else {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--duration", type=_positive_float, default=None, metavar="SECONDS", help="stop by itself after this many seconds (default: run until Ctrl-C)"
    )
    parser.add_argument(
        "--interval", type=_positive_float, default=DEFAULT_INTERVAL_S, metavar="SECONDS", help=f"monitoring interval (default {DEFAULT_INTERVAL_S:g} s)"
    )
    parser.add_argument("--quiet", action="store_true", help="no live status line, only the start and end summaries")
    parser.set_defaults(run=_run_demo)


# --- rules and dashboards -------------------------------------------------------------------


def _emit(text: str, output: str | None, command: str) -> int:
    if output is None or output == "-":
        sys.stdout.write(text)
        return 0
    try:
        with open(output, "w", encoding="utf-8") as file:
            file.write(text)
    except OSError as exc:
        print(f"{PROG} {command}: cannot write --output {output!r}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _run_rules(args: argparse.Namespace) -> int:
    from .deploy.rules import RuleOptions, render_rules

    try:
        options = RuleOptions(runbook_url=args.runbook_url) if args.runbook_url else None
        text = render_rules(static=True, config=load_config(), options=options) if args.static else render_rules(options=options)
    except ConfigurationError as exc:
        print(f"{PROG} rules: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIGURATION
    return _emit(text, args.output, "rules")


def _add_rules(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "rules",
        help="print the Prometheus alerting rules",
        description="Print the ReerMemory* alerting rules as a Prometheus rule file. By default each rule "
        "compares a process's RSS with the thresholds that process exports; --static bakes in the "
        "thresholds the REER_MEMORY_* variables give here (exits 2 on a bad value).",
    )
    parser.add_argument("--static", action="store_true", help="bake in this environment's thresholds")
    parser.add_argument("--runbook-url", metavar="URL", help="where docs/runbooks.md is hosted: base of every runbook_url annotation")
    parser.add_argument("--output", metavar="FILE", help="write to FILE instead of standard output")
    parser.set_defaults(run=_run_rules)


def _run_dashboards(args: argparse.Namespace) -> int:
    from .deploy.dashboards import render_dashboard

    return _emit(render_dashboard(), args.output, "dashboards")


def _add_dashboards(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "dashboards",
        help="print the Grafana dashboard JSON",
        description="Print the Reer memory Grafana dashboard (datasource, job and instance variables), "
        "ready to import or provision.",
    )
    parser.add_argument("--output", metavar="FILE", help="write to FILE instead of standard output")
    parser.set_defaults(run=_run_dashboards)


# --- postmortem ----------------------------------------------------------------------------


def _run_postmortem(args: argparse.Namespace) -> int:
    from .profiling.flight_recorder import read_flight_record, render_postmortem

    try:
        record = read_flight_record(args.path)
    except OSError as exc:
        print(f"{PROG} postmortem: cannot read {args.path!r}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_CONFIGURATION
    except ConfigurationError as exc:
        print(f"{PROG} postmortem: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIGURATION
    sys.stdout.write(render_postmortem(record, seconds=args.seconds))
    return 0


def _add_postmortem(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "postmortem",
        help="print what a flight recorder file holds: the last seconds before the process died",
        description="Read a REER_MEMORY_FLIGHT_RECORDER file (also after the process was OOM-killed): "
        "print its last samples as a table and a chart, the operations running at the end and how much "
        "each had grown, and the level changes. Control characters in the file's strings are printed as escapes. "
        "Exits 2, with one line, when the file is unreadable, not a flight recorder file, or corrupt (a field "
        "no writer writes: NaN, a time past year 9999, a negative size...).",
    )
    parser.add_argument("path", metavar="PATH", help="the flight recorder file")
    parser.add_argument("--seconds", type=_positive_float, default=60.0, help="how far back to show (default 60 s)")
    parser.set_defaults(run=_run_postmortem)


# --- explain -------------------------------------------------------------------------------


def _pid(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a process id") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a process id")
    return value


def _window_seconds(text: str) -> float:
    from .profiling.explain import MAX_SECONDS

    value = _positive_float(text)
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of seconds, at most {MAX_SECONDS:g}")
    return value


def _top(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of sites, at least 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of sites, at least 1")
    return value


def _run_explain(args: argparse.Namespace) -> int:
    from .profiling.explain import MemoryExplanation
    from .profiling.explain_listener import ExplainRequestError, request_explanation

    try:
        answer = request_explanation(
            args.pid, args.seconds, top=args.top, on_wait=lambda note: print(f"{PROG} explain: process {args.pid}: {note}", file=sys.stderr)
        )
    except ExplainRequestError as exc:
        print(f"{PROG} explain: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIGURATION if exc.kind == "bad_request" else 1
    if args.json:
        json.dump({"pid": args.pid, **answer}, sys.stdout, indent=2)
        print()
        return 0
    try:
        explanation = MemoryExplanation.from_dict(answer)
    except (KeyError, TypeError, ValueError) as exc:
        print(f"{PROG} explain: process {args.pid} answered an explanation that cannot be read: {exc!r}", file=sys.stderr)
        return 1
    print(f"process {args.pid}:")
    print(explanation.format())
    return 0


def _add_explain(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="ask a running process which lines hold the memory it allocates over a few seconds",
        description="Connect to the explain listener of process PID (started there by opentelemetry-instrument "
        "or start_memory_monitoring(), unless REER_MEMORY_EXPLAIN=off), have it trace its allocations for "
        "--seconds, and print the allocation sites, and the profiled operations, holding what is still live "
        "at the end. Run it as the process's user or as root. Exits 1 when no explanation can be had "
        "(no such process, no listener, permission denied, tracing unavailable there), 2 on bad arguments.",
    )
    parser.add_argument("pid", type=_pid, metavar="PID", help="the process to explain")
    parser.add_argument("--seconds", type=_window_seconds, default=10.0, help="how long the process traces its allocations (default 10 s)")
    parser.add_argument("--top", type=_top, default=10, help="how many allocation sites to show (default 10)")
    parser.add_argument("--json", action="store_true", help="print the explanation as JSON")
    parser.set_defaults(run=_run_explain)


# --- runbook -------------------------------------------------------------------------------


def runbook_sections() -> dict[str, str]:
    """The runbooks shipped in the package, by alert name: each section's text, heading included."""
    import re
    from importlib import resources

    text = resources.files("reer_otel_memory").joinpath("runbooks.md").read_text(encoding="utf-8")
    parts = re.split(r"^## (\S+)\n", text, flags=re.MULTILINE)
    return {alert: f"## {alert}\n{body.rstrip()}\n" for alert, body in zip(parts[1::2], parts[2::2], strict=True)}


def _run_runbook(args: argparse.Namespace) -> int:
    sections = runbook_sections()
    if args.alert is None:
        print("\n".join(sections))
        return 0
    found = {alert.lower(): alert for alert in sections}.get(args.alert.lower())
    if found is None:
        print(f"{PROG} runbook: ALERT={args.alert!r}: expected one of {', '.join(sections)}", file=sys.stderr)
        return EXIT_BAD_CONFIGURATION
    sys.stdout.write(sections[found])
    return 0


def _add_runbook(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "runbook",
        help="print an alert's runbook: what it means, how to diagnose, fix and silence it",
        description="Print the runbook section of ALERT (a ReerMemory* alert of the shipped rules, any case), "
        "as installed with the package: the same text as docs/runbooks.md, where each alert's runbook_url "
        "points. Without ALERT, list the alerts. Exits 2 on an unknown alert.",
    )
    parser.add_argument("alert", nargs="?", metavar="ALERT", help="the alert's name, e.g. ReerMemoryLeakSuspected")
    parser.set_defaults(run=_run_runbook)


# --- the parser ----------------------------------------------------------------------------

#: Every subcommand: a function adding its parser (with ``run=``) to the subparsers.
SUBCOMMANDS: list[Callable[[_Subparsers], None]] = [
    _add_config, _add_demo, _add_rules, _add_dashboards, _add_runbook, _add_postmortem, _add_explain,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Memory profiling, monitoring and alerting for Python services, as OpenTelemetry metrics.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except ReerMemoryError as exc:  # a bad value found deeper down: the message, not a traceback
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIGURATION
