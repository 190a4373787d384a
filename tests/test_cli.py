"""The reer-otel-memory command: config report with sources, exit status 2 on bad values, --version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reer_otel_memory import __version__, effective_memory_limit
from reer_otel_memory import _names as names
from reer_otel_memory.cli import EXIT_BAD_CONFIGURATION, main
from reer_otel_memory.config import MB

ENV_VARS = tuple(value for key, value in vars(names).items() if key.startswith("ENV_") and value.startswith("REER_MEMORY_"))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


def run_json(capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["config", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_config_defaults_say_they_are_defaults(capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    lines = {line.split("  ")[1].strip(): line for line in out.split("environment variables:")[0].splitlines()[1:]}
    assert "1000.0 MB (1048576000 bytes)" in lines["alert threshold"]
    assert "default (1000 MB)" in lines["alert threshold"]
    assert "default (1500 MB)" in lines["cleanup threshold"]
    assert "default (2000 MB)" in lines["critical threshold"]
    assert "30 s" in lines["monitoring interval"] and "default (30 s)" in lines["monitoring interval"]
    limit = effective_memory_limit()
    assert f"({limit.bytes} bytes)" in lines["effective limit"]
    assert limit.source in lines["effective limit"]


def test_config_names_the_environment_and_the_share_of_the_limit(capsys, monkeypatch):
    monkeypatch.setenv(names.ENV_ALERT_MB, "1.5")
    monkeypatch.setenv(names.ENV_CLEANUP_MB, "1%")
    monkeypatch.setenv(names.ENV_CRITICAL_MB, "90%")
    monkeypatch.setenv(names.ENV_MONITORING_INTERVAL, "2.5")
    report = run_json(capsys)
    limit = effective_memory_limit()
    assert report["alert"]["bytes"] == int(1.5 * MB)
    assert report["alert"]["source"] == f"environment {names.ENV_ALERT_MB}=1.5 (1.5 MB)"
    assert report["cleanup"]["bytes"] == int(limit.bytes * 1 / 100)
    assert f"1% of {limit.bytes} bytes ({limit.source})" in report["cleanup"]["source"]
    assert report["critical"]["bytes"] == int(limit.bytes * 90 / 100)
    assert f"90% of {limit.bytes} bytes ({limit.source})" in report["critical"]["source"]
    assert report["monitoring_interval"] == {
        "seconds": 2.5,
        "source": f"environment {names.ENV_MONITORING_INTERVAL}=2.5",
    }
    assert report["limit"] == {"bytes": limit.bytes, "mb": limit.bytes / MB, "source": limit.source}
    assert report["rss"]["bytes"] > 0


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        (names.ENV_ALERT_MB, "abc", "expected a positive number of MB"),
        (names.ENV_CRITICAL_MB, "-5", "expected a positive number of MB"),
        (names.ENV_CLEANUP_MB, "150%", "at most 100%"),
        (names.ENV_MONITORING_INTERVAL, "0", "expected a positive number of seconds"),
        (names.ENV_ALERT_MB, "5000", "expected alert <= cleanup <= critical"),
    ],
)
def test_config_exits_2_naming_the_bad_value(capsys, monkeypatch, var, value, expected):
    monkeypatch.setenv(var, value)
    assert main(["config"]) == EXIT_BAD_CONFIGURATION
    captured = capsys.readouterr()
    assert captured.out == ""
    message = captured.err.strip()
    assert len(message.splitlines()) == 1
    assert f"{var}={value!r}" in message or f"{var}={value}" in message
    assert expected in message


def test_version_and_missing_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"reer-otel-memory {__version__}"
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2


def test_demo_rejects_bad_options(capsys):
    for argv in (["demo", "--port", "70000"], ["demo", "--duration", "-1"], ["demo", "--interval", "soon"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert argv[-1] in capsys.readouterr().err


def test_console_script_exits_2_with_the_message():
    script = Path(sys.executable).with_name("reer-otel-memory")
    assert script.exists(), "the package is not installed with its console script"
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env[names.ENV_CRITICAL_MB] = "lots"
    result = subprocess.run([str(script), "config"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_BAD_CONFIGURATION
    assert f"{names.ENV_CRITICAL_MB}='lots'" in result.stderr
    del env[names.ENV_CRITICAL_MB]
    result = subprocess.run([sys.executable, "-m", "reer_otel_memory", "config"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "effective configuration" in result.stdout


ALL_VARIABLES = sorted(value for key, value in vars(names).items() if key.startswith("ENV_") and value.startswith("REER_MEMORY_"))


def test_config_shows_every_variable_with_its_value_and_source(capsys, monkeypatch):
    for var in ALL_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(names.ENV_RESET_PEAK, "off")
    monkeypatch.setenv(names.ENV_EMERGENCY_SIGNAL, "USR2")
    monkeypatch.setenv(names.ENV_MONITORING_INTERVAL, "2.5")
    report = run_json(capsys)
    assert sorted(report["variables"]) == ALL_VARIABLES and len(ALL_VARIABLES) >= 7
    assert report["variables"][names.ENV_RESET_PEAK] == {"value": "off", "effective": "off", "source": "environment"}
    assert report["variables"][names.ENV_EMERGENCY_SIGNAL] == {"value": "USR2", "effective": "SIGUSR2", "source": "environment"}
    assert report["variables"][names.ENV_MONITORING_INTERVAL] == {"value": "2.5", "effective": "2.5 s", "source": "environment"}
    assert report["variables"][names.ENV_ALERT_MB] == {"value": None, "effective": "1000 MB (1048576000 bytes)", "source": "default"}
    assert report["variables"][names.ENV_PROFILE_TARGETS] == {"value": None, "effective": "none", "source": "default"}
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    for var in ALL_VARIABLES:
        assert sum(line.strip().startswith(var + " ") for line in out.splitlines()) == 1, out
    assert any(line.split() == [names.ENV_RESET_PEAK, "'off'", "environment:", "off"] for line in out.splitlines())


def test_config_reports_every_bad_variable_at_once_and_exits_2(capsys, monkeypatch):
    monkeypatch.setenv(names.ENV_ALERT_MB, "1e308")
    monkeypatch.setenv(names.ENV_RESET_PEAK, "maybe")
    monkeypatch.setenv(names.ENV_EMERGENCY_SIGNAL, "KILL")
    monkeypatch.setenv(names.ENV_PROFILE_TARGETS, "not a target")
    assert main(["config"]) == EXIT_BAD_CONFIGURATION
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    for fragment in ("REER_MEMORY_ALERT_MB='1e308'", "up to 1073741824 (1 PiB)", "REER_MEMORY_RESET_PEAK='maybe'",
                     "REER_MEMORY_EMERGENCY_SIGNAL='KILL'", "REER_MEMORY_PROFILE_TARGETS: target 'not a target'"):
        assert fragment in captured.err


def test_an_overflowing_value_exits_2_without_a_traceback():
    env = {k: v for k, v in os.environ.items() if not k.startswith("REER_MEMORY_")}
    env[names.ENV_ALERT_MB] = "1e308"
    for command in (["config"], ["rules", "--static"]):
        result = subprocess.run([sys.executable, "-m", "reer_otel_memory", *command], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == EXIT_BAD_CONFIGURATION, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith(f"reer-otel-memory {command[0]}: REER_MEMORY_ALERT_MB='1e308': expected a positive number of MB")
