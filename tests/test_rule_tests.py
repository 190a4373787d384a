"""The promtool unit tests shipped in deploy/prometheus/tests: generated with the rules, run as an
SRE runs them, covering every alert, and able to fail when a rule changes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import rule_tests  # scripts/rule_tests.py
from conftest import require_binary

from reer_otel_memory.deploy import rules

ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = ROOT / "deploy" / "prometheus" / rule_tests.TESTS_DIR


def promtool_test_rules(cwd: Path, *files: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), "test", "rules", *files], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_committed_files_are_the_generator_output() -> None:
    files = rule_tests.deploy_files()
    assert sorted(TESTS_DIR.glob("*.yml")) == sorted(ROOT / "deploy" / path for path in files), "run `make deploy`"
    for relative, text in files.items():
        assert (ROOT / "deploy" / relative).read_text() == text, f"deploy/{relative} differs from the generator output: run `make deploy`"


@pytest.mark.e2e
def test_promtool_passes_them_from_the_repository_root() -> None:
    files = sorted(str(path.relative_to(ROOT)) for path in TESTS_DIR.glob("*.yml"))
    assert len(files) == 3
    result = promtool_test_rules(ROOT, *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files)


def test_every_alert_is_shown_firing_and_not_firing() -> None:
    assert rule_tests.alerts_tested() == set(rules.ALERT_NAMES)
    quiet = {
        check["alertname"]
        for build in rule_tests._FILES.values()
        for group in build()
        for check in group["alert_rule_test"]
        if not check["exp_alerts"]
    }
    assert quiet == set(rules.ALERT_NAMES)


@pytest.mark.parametrize(
    ("changed", "alert"),
    [
        ({"for_s": {rules.NEAR_LIMIT: 600}}, rules.NEAR_LIMIT),
        ({"options": rules.RuleOptions(prediction_horizon_s=600)}, rules.CRITICAL_PREDICTED),
        ({"options": rules.RuleOptions(container_ratio=0.99)}, rules.CONTAINER_NEAR_OOM),
        ({"options": rules.RuleOptions(ineffective_cleanups=20)}, rules.CLEANUP_INEFFECTIVE),
    ],
)
@pytest.mark.e2e
def test_a_changed_rule_fails_them(tmp_path: Path, changed: dict, alert: str) -> None:
    # The shipped tests against rules rendered with one setting changed: promtool names the alert.
    (tmp_path / rules.RULES_FILENAME).write_text(rules.render_rules(**changed))
    shutil.copytree(TESTS_DIR, tmp_path / rule_tests.TESTS_DIR)
    result = promtool_test_rules(tmp_path, *sorted(str(path.relative_to(tmp_path)) for path in (tmp_path / rule_tests.TESTS_DIR).glob("*.yml")))
    assert result.returncode != 0
    assert f"alertname: {alert}" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("value", "text"), [(0.5, "0.5"), (1023, "1023"), (1024, "1ki"), (450 * 1024**2, "450Mi"), (15.5 * 1024**3, "15.5Gi")]
)
def test_humanize1024_prints_what_prometheus_prints(value: float, text: str) -> None:
    assert rule_tests.humanize1024(value) == text


def test_a_description_left_with_template_text_is_refused() -> None:
    with pytest.raises(ValueError, match="still has template text"):
        rule_tests.expected_alert(rules.ALERT_THRESHOLD_EXCEEDED, {"job": "svc"}, 5.0, [1.0])
    with pytest.raises(ValueError, match=r"queried=\[\]: expected 1 values"):
        rule_tests.expected_alert(rules.ALERT_THRESHOLD_EXCEEDED, {"job": "svc", "instance": "a:1"}, 5.0)
