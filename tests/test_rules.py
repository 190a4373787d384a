"""The generated alerting rules: valid for promtool, and firing exactly when they should."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import require_binary
from hypothesis import example, given, settings
from hypothesis import strategies as st

from reer_otel_memory import _names as names
from reer_otel_memory.config import MB, get_config, load_config
from reer_otel_memory.deploy import _yaml, rules
from reer_otel_memory.export import naming as series

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
#: Every alert, and the two recording rules.
RULE_COUNT = len(rules.ALERT_NAMES) + 2


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_binary("promtool"), *map(str, args)], capture_output=True, text=True, timeout=60)


def run_promtool_tests(tmp_path: Path, rules_text: str, tests: list[dict]) -> subprocess.CompletedProcess[str]:
    """Run promtool's rule unit tests (JSON is valid YAML) against ``rules_text``."""
    (tmp_path / "rules.yml").write_text(rules_text)
    test_file = tmp_path / "rules_test.yml"
    test_file.write_text(json.dumps({"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}))
    return promtool("test", "rules", test_file)


def rss(job: str, instance: str, values: str) -> dict:
    return {"series": f'{series.RSS}{{job="{job}",instance="{instance}"}}', "values": values}


def thresholds(job: str, instance: str, alert_mb: int, cleanup_mb: int, critical_mb: int) -> list[dict]:
    return [
        {
            "series": f'{series.THRESHOLD}{{job="{job}",instance="{instance}",{series.LABEL_LEVEL}="{level}"}}',
            "values": f"{mb * MIB}x30",
        }
        for level, mb in (("alert", alert_mb), ("cleanup", cleanup_mb), ("critical", critical_mb))
    ]


def expect(alertname: str, eval_time: str, *alerts: dict) -> dict:
    return {"eval_time": eval_time, "alertname": alertname, "exp_alerts": list(alerts)}


def rendered_rule(alertname: str, text: str | None = None) -> dict:
    data = yaml.safe_load(text if text is not None else rules.render_rules())
    return next(rule for rule in data["groups"][0]["rules"] if rule["alert"] == alertname)


def threshold_alert(alertname: str, job: str, instance: str, above: str, text: str | None = None) -> dict:
    """The alert promtool should see: labels, and annotations as Prometheus renders them.

    ``above`` is the description's middle as it reads once rendered, for example
    ``"450MiB, at or above its critical threshold of 400MiB (REER_MEMORY_CRITICAL_MB)"``.
    """
    rule = rendered_rule(alertname, text)
    lead = f"for more than {rule['for']}. "
    runbook = rule["annotations"]["description"].split(lead, 1)[1]
    return {
        "exp_labels": {"severity": rule["labels"]["severity"], "job": job, "instance": instance},
        "exp_annotations": {
            "summary": rule["annotations"]["summary"],
            "description": f"{job}/{instance} has a resident set size of {above}, {lead}{runbook}",
            "runbook_url": rule["annotations"]["runbook_url"],
        },
    }


def assert_passed(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


# --- shape -------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_rules_pass_promtool_check(tmp_path: Path) -> None:
    for static in (False, True):
        path = tmp_path / f"rules-{static}.yml"
        path.write_text(rules.render_rules(static=static, config=load_config({}) if static else None))
        result = promtool("check", "rules", path)
        assert_passed(result)
        assert f"{RULE_COUNT} rules found" in result.stdout


def test_rendered_yaml_is_the_rule_data() -> None:
    assert yaml.safe_load(rules.render_rules()) == rules.rule_groups()
    config = load_config({names.ENV_ALERT_MB: "300"})
    assert yaml.safe_load(rules.render_rules(static=True, config=config)) == rules.rule_groups(static=True, config=config)


def test_every_alert_is_mixin_style() -> None:
    rendered = rules.rule_groups()["groups"][0]["rules"]
    assert [rule["alert"] for rule in rendered] == list(rules.ALERT_NAMES)
    severities = {rule["alert"]: rule["labels"]["severity"] for rule in rendered}
    assert severities == {
        "ReerMemoryAlertThresholdExceeded": "warning",
        "ReerMemoryCleanupThresholdExceeded": "warning",
        "ReerMemoryCriticalThresholdExceeded": "critical",
        "ReerMemoryLeakSuspected": "warning",
        "ReerMemoryCriticalPredicted": "warning",
        "ReerMemoryNearLimit": "warning",
        "ReerMemoryCleanupIneffective": "warning",
        "ReerMemoryDeviceThresholdExceeded": "warning",
        "ReerMemoryDeviceCriticalThresholdExceeded": "critical",
        "ReerMemoryContainerNearOOM": "critical",
        "ReerMemoryOOMKilled": "warning",
    }
    for rule in rendered:
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}
        assert rule["annotations"]["runbook_url"] == f"docs/runbooks.md#{rule['alert'].lower()}"
        assert rule["for"] == rules.format_duration(rules.DEFAULT_FOR_S[rule["alert"]])


def test_runbook_base_url_is_configurable_when_rendering() -> None:
    options = rules.RuleOptions(runbook_url="https://wiki.example.com/ops/reer-runbooks")
    rendered = rules.rule_groups(options=options)["groups"][0]["rules"]
    assert {rule["annotations"]["runbook_url"] for rule in rendered} == {
        f"https://wiki.example.com/ops/reer-runbooks#{alert.lower()}" for alert in rules.ALERT_NAMES
    }
    result = subprocess.run(
        [sys.executable, "-m", "reer_otel_memory", "rules", "--runbook-url", "https://runbooks.example.com/reer.md"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "runbook_url: \"https://runbooks.example.com/reer.md#reermemorynearlimit\"" in result.stdout
    with pytest.raises(ValueError, match="runbook_url='has space'"):
        rules.RuleOptions(runbook_url="has space")
    with pytest.raises(ValueError, match=r"near_limit_ratio=1.5: expected a number in \(0, 1\]"):
        rules.RuleOptions(near_limit_ratio=1.5)


def test_dynamic_rules_match_each_process_on_job_and_instance() -> None:
    for rule in rules.rule_groups()["groups"][0]["rules"][:3]:
        assert series.RSS in rule["expr"] and series.THRESHOLD in rule["expr"]
        assert "on(job, instance)" in rule["expr"]


def test_for_durations_can_be_overridden() -> None:
    short = rules.rule_groups(for_s=2)["groups"][0]["rules"]
    assert {rule["for"] for rule in short} == {"2s"}
    one = rules.rule_groups(for_s={rules.LEAK_SUSPECTED: 0.5})["groups"][0]["rules"]
    assert [rule["for"] for rule in one][:5] == ["10m", "5m", "1m", "500ms", "15m"]


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (1, "1s"), (90, "90s"), (600, "10m"), (7200, "2h"), (0.25, "250ms")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert rules.format_duration(seconds) == text


def test_bad_arguments_are_refused_with_the_value() -> None:
    with pytest.raises(ValueError, match=r"for_s=-1.*non-negative"):
        rules.render_rules(for_s=-1)
    with pytest.raises(ValueError, match="ReerMemoryTypo"):
        rules.render_rules(for_s={"ReerMemoryTypo": 5})
    with pytest.raises(TypeError, match="config=.*MemoryConfig"):
        rules.render_rules(static=True, config={"alert_mb": 5})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="static=True"):
        rules.render_rules(config=load_config({}))


# --- promtool unit tests: the dynamic rules ------------------------------------------------------


@pytest.mark.e2e
def test_each_process_is_held_to_its_own_thresholds(tmp_path: Path) -> None:
    # Both processes sit at 200 MiB; only the one whose alert threshold is 100 MiB is above it.
    tests = [
        {
            "interval": "1m",
            "input_series": [
                rss("svc", "small:1", "209715200x30"),
                *thresholds("svc", "small:1", 100, 250, 400),
                rss("svc", "large:1", "209715200x30"),
                *thresholds("svc", "large:1", 300, 400, 500),
            ],
            "alert_rule_test": [
                # Pending, not firing, until the for: duration has passed.
                expect(rules.ALERT_THRESHOLD_EXCEEDED, "5m"),
                expect(
                    rules.ALERT_THRESHOLD_EXCEEDED,
                    "15m",
                    threshold_alert(
                        rules.ALERT_THRESHOLD_EXCEEDED,
                        "svc",
                        "small:1",
                        "200MiB, at or above its alert threshold of 100MiB (REER_MEMORY_ALERT_MB)",
                    ),
                ),
                expect(rules.CLEANUP_THRESHOLD_EXCEEDED, "15m"),
                expect(rules.CRITICAL_THRESHOLD_EXCEEDED, "15m"),
            ],
        }
    ]
    assert_passed(run_promtool_tests(tmp_path, rules.render_rules(), tests))


@pytest.mark.e2e
def test_cleanup_and_critical_fire_above_their_thresholds(tmp_path: Path) -> None:
    # 450 MiB is above this process's alert (100), cleanup (250) and critical (400) thresholds.
    def above(level: str, env: str, threshold_mib: int) -> str:
        return f"450MiB, at or above its {level} threshold of {threshold_mib}MiB ({env})"

    tests = [
        {
            "interval": "1m",
            "input_series": [rss("svc", "hot:1", "471859200x30"), *thresholds("svc", "hot:1", 100, 250, 400)],
            "alert_rule_test": [
                expect(rules.CRITICAL_THRESHOLD_EXCEEDED, "30s"),
                expect(
                    rules.CRITICAL_THRESHOLD_EXCEEDED,
                    "2m",
                    threshold_alert(
                        rules.CRITICAL_THRESHOLD_EXCEEDED, "svc", "hot:1", above("critical", names.ENV_CRITICAL_MB, 400)
                    ),
                ),
                expect(rules.CLEANUP_THRESHOLD_EXCEEDED, "2m"),
                expect(
                    rules.CLEANUP_THRESHOLD_EXCEEDED,
                    "6m",
                    threshold_alert(
                        rules.CLEANUP_THRESHOLD_EXCEEDED, "svc", "hot:1", above("cleanup", names.ENV_CLEANUP_MB, 250)
                    ),
                ),
                expect(
                    rules.ALERT_THRESHOLD_EXCEEDED,
                    "11m",
                    threshold_alert(
                        rules.ALERT_THRESHOLD_EXCEEDED, "svc", "hot:1", above("alert", names.ENV_ALERT_MB, 100)
                    ),
                ),
            ],
        }
    ]
    assert_passed(run_promtool_tests(tmp_path, rules.render_rules(), tests))


@pytest.mark.e2e
def test_no_alert_below_the_thresholds_or_without_threshold_series(tmp_path: Path) -> None:
    tests = [
        {
            "interval": "1m",
            "input_series": [
                rss("svc", "calm:1", "52428800x30"),
                *thresholds("svc", "calm:1", 100, 250, 400),
                # A process that exports no thresholds is left to the static rules.
                rss("svc", "old:1", "9999999999x30"),
            ],
            "alert_rule_test": [expect(name, "20m") for name in rules.ALERT_NAMES],
        }
    ]
    assert_passed(run_promtool_tests(tmp_path, rules.render_rules(), tests))


@pytest.mark.e2e
def test_leak_alert_fires_for_the_suspected_operation_only(tmp_path: Path) -> None:
    def leak(operation: str, values: str) -> dict:
        return {
            "series": f'{series.LEAK_SUSPECTED}{{job="svc",instance="a:1",{series.LABEL_OPERATION}="{operation}"}}',
            "values": values,
        }

    rule = rendered_rule(rules.LEAK_SUSPECTED)
    runbook = rule["annotations"]["description"].split("for more than 15m. ", 1)[1]
    tests = [
        {
            "interval": "1m",
            "input_series": [leak("load_model", "0 0 1x30"), leak("predict", "0x30")],
            "alert_rule_test": [
                expect(rules.LEAK_SUSPECTED, "10m"),
                expect(
                    rules.LEAK_SUSPECTED,
                    "20m",
                    {
                        "exp_labels": {
                            "severity": "warning",
                            "job": "svc",
                            "instance": "a:1",
                            series.LABEL_OPERATION: "load_model",
                        },
                        "exp_annotations": {
                            "summary": rule["annotations"]["summary"],
                            "description": "Operation load_model of svc/a:1 has been suspected of leaking memory "
                            f"for more than 15m. {runbook}",
                            "runbook_url": rule["annotations"]["runbook_url"],
                        },
                    },
                ),
            ],
        }
    ]
    assert_passed(run_promtool_tests(tmp_path, rules.render_rules(), tests))


# --- static rules ------------------------------------------------------------------------------


@pytest.mark.e2e
def test_static_rules_bake_in_the_configured_thresholds(tmp_path: Path) -> None:
    config = load_config({names.ENV_ALERT_MB: "100", names.ENV_CLEANUP_MB: "250", names.ENV_CRITICAL_MB: "400"})
    text = rules.render_rules(static=True, config=config)
    exprs = [rule["expr"] for rule in yaml.safe_load(text)["groups"][0]["rules"]]
    assert exprs[:3] == [f"{series.RSS} >= {mb * MB}" for mb in (100, 250, 400)]
    assert series.THRESHOLD not in text
    tests = [
        {
            "interval": "1m",
            # 300 MiB and no threshold series: above alert and cleanup, below critical.
            "input_series": [rss("svc", "a:1", "314572800x30")],
            "alert_rule_test": [
                expect(
                    rules.ALERT_THRESHOLD_EXCEEDED,
                    "15m",
                    threshold_alert(
                        rules.ALERT_THRESHOLD_EXCEEDED,
                        "svc",
                        "a:1",
                        "300MiB, at or above the alert threshold of 100 MB (REER_MEMORY_ALERT_MB, 104857600 bytes)",
                        text,
                    ),
                ),
                expect(
                    rules.CLEANUP_THRESHOLD_EXCEEDED,
                    "15m",
                    threshold_alert(
                        rules.CLEANUP_THRESHOLD_EXCEEDED,
                        "svc",
                        "a:1",
                        "300MiB, at or above the cleanup threshold of 250 MB (REER_MEMORY_CLEANUP_MB, 262144000 bytes)",
                        text,
                    ),
                ),
                expect(rules.CRITICAL_THRESHOLD_EXCEEDED, "15m"),
            ],
        }
    ]
    assert_passed(run_promtool_tests(tmp_path, text, tests))


def test_static_rules_default_to_the_process_configuration() -> None:
    config = get_config()
    exprs = [rule["expr"] for rule in rules.rule_groups(static=True)["groups"][0]["rules"]]
    assert exprs[:3] == [f"{series.RSS} >= {value}" for value in (config.alert_bytes, config.cleanup_bytes, config.critical_bytes)]
    assert f"alert {config.alert_mb:g} MB" in rules.render_rules(static=True).splitlines()[0]


@pytest.mark.e2e
def test_rules_command_bakes_in_the_environment(tmp_path: Path) -> None:
    env = {**os.environ, names.ENV_ALERT_MB: "512", names.ENV_CLEANUP_MB: "768", names.ENV_CRITICAL_MB: "1024"}
    output = tmp_path / "static.yml"
    subprocess.run(
        [sys.executable, "-m", "reer_otel_memory", "rules", "--static", "--output", str(output)],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    text = output.read_text()
    exprs = [rule["expr"] for rule in yaml.safe_load(text)["groups"][0]["rules"]]
    assert exprs[:3] == [f"{series.RSS} >= {mb * MB}" for mb in (512, 768, 1024)]
    assert "512 MB (REER_MEMORY_ALERT_MB" in text
    assert promtool("check", "rules", output).returncode == 0


def test_rules_command_prints_the_dynamic_rules_and_refuses_a_bad_environment() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "reer_otel_memory", "rules"], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout == rules.render_rules()
    bad = {**os.environ, names.ENV_ALERT_MB: "lots"}
    refused = subprocess.run(
        [sys.executable, "-m", "reer_otel_memory", "rules", "--static"], env=bad, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "REER_MEMORY_ALERT_MB='lots'" in refused.stderr
    assert refused.stdout == ""


# --- shipped files -----------------------------------------------------------------------------


def test_deploy_files_are_the_generator_output() -> None:
    for relative, text in rules.deploy_files().items():
        path = ROOT / "deploy" / relative
        assert path.exists(), f"{path} is missing: run `make deploy`"
        assert path.read_text() == text, f"{path} differs from the generator output: run `make deploy`"


@pytest.mark.e2e
def test_example_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    for relative, text in rules.deploy_files().items():
        (tmp_path / Path(relative).name).write_text(text)
    result = promtool("check", "config", tmp_path / rules.PROMETHEUS_CONFIG_FILENAME)
    assert_passed(result)
    assert f"{RULE_COUNT} rules found" in result.stdout


# --- the YAML writer ---------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    st.sampled_from(["yes", "No", "null", "~", "5m", "1.5", "0x1F", "- item", "a: b", "#c", "'q'", '"q"', "{a}", "[1]",
                     "line\nline", " lead\nx", "trail\n", "x\n\n", "&anchor", "*alias", "!tag", "%", "@", "`", "|", ">"]),
)  # fmt: skip
_documents = st.recursive(
    _scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.dictionaries(st.text(max_size=12), _documents, max_size=5), st.lists(_documents, max_size=5)))
@example({"\n\x85": None})  # a line break YAML knows besides \n, which a literal block would read back as \n
@example({"rule": "a\nb\u2028c\rd"})
def test_yaml_writer_round_trips_through_a_yaml_parser(document: object) -> None:
    assert yaml.safe_load(_yaml.dumps(document)) == document
