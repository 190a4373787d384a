"""docs/runbooks.md against the rules: one complete section per alert, where its runbook_url points."""

from __future__ import annotations

import re
from pathlib import Path

from reer_otel_memory.cli import build_parser, main
from reer_otel_memory.deploy import rules

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "runbooks.md"
PARTS = ("Meaning", "Impact", "Diagnose", "Fix", "Silence")


def sections() -> dict[str, str]:
    text = PAGE.read_text(encoding="utf-8")
    found = re.split(r"^## (\S+)\n", text, flags=re.MULTILINE)
    return dict(zip(found[1::2], found[2::2], strict=True))


def test_one_section_per_alert_and_no_other() -> None:
    assert list(sections()) == list(rules.ALERT_NAMES)


def test_every_runbook_url_points_at_its_section() -> None:
    # GitHub and most Markdown renderers make a heading's anchor its lower-cased text.
    anchors = {name.lower() for name in sections()}
    for rule in rules.rule_groups()["groups"][0]["rules"]:
        base, anchor = rule["annotations"]["runbook_url"].split("#")
        assert (ROOT / base).resolve() == PAGE
        assert anchor in anchors and anchor == rules.runbook_anchor(rule["alert"])


def test_every_section_says_what_to_do_and_the_severity() -> None:
    severities = {rule["alert"]: rule["labels"]["severity"] for rule in rules.rule_groups()["groups"][0]["rules"]}
    for alert, body in sections().items():
        for part in PARTS:
            assert f"**{part}.**" in body, f"{alert}: no {part} paragraph"
        assert re.search(rf"Severity\s+{severities[alert]}\b", body), f"{alert}: the page does not say severity {severities[alert]}"


def test_the_commands_it_names_exist() -> None:
    text = PAGE.read_text(encoding="utf-8")
    named = set(re.findall(r"`reer-otel-memory (\w+)", text))
    assert named == {"rules", "config", "explain", "runbook", "postmortem"}
    # the commands that take a positional argument
    arguments = {"explain": ["1"], "runbook": ["ReerMemoryLeakSuspected"], "postmortem": ["svc.flight"]}
    for command in named:
        assert build_parser().parse_args([command, *arguments.get(command, [])]).command == command
    assert "--runbook-url" in text and "promtool test rules deploy/prometheus/tests/*.yml" in text


def test_the_installed_package_carries_the_runbooks(capsys) -> None:
    """An installed copy has no docs/: ``reer-otel-memory runbook ALERT`` prints each section from
    the package, the same text as the page."""
    from importlib import resources

    assert resources.files("reer_otel_memory").joinpath("runbooks.md").read_text(encoding="utf-8") == PAGE.read_text(encoding="utf-8")
    for alert, body in sections().items():
        assert main(["runbook", alert.lower()]) == 0
        assert capsys.readouterr().out == f"## {alert}\n{body.rstrip()}\n"
    assert main(["runbook"]) == 0
    assert capsys.readouterr().out.split() == list(rules.ALERT_NAMES)


def test_an_unknown_alert_names_the_known_ones(capsys) -> None:
    assert main(["runbook", "ReerMemoryNoSuchAlert"]) == 2
    error = capsys.readouterr().err
    assert "ALERT='ReerMemoryNoSuchAlert'" in error and "ReerMemoryLeakSuspected" in error
