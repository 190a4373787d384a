"""``make deploy``: every file shipped under ``deploy/``, written again from the generators.

    make deploy        # or: .venv/bin/python scripts/deploy_files.py [DEPLOY_DIR]

Prometheus rules and configuration and the Alertmanager example come from
:mod:`reer_otel_memory.deploy.rules`, the dashboard and its provisioning from
:mod:`reer_otel_memory.deploy.dashboards` (both also behind ``reer-otel-memory rules|dashboards``);
the promtool tests of the rules and the scale-out examples from ``rule_tests.py`` and
``scale_out.py`` beside this file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import rule_tests
import scale_out

from reer_otel_memory.deploy import dashboards, rules

ROOT = Path(__file__).resolve().parent.parent


def deploy_files() -> dict[str, str]:
    """Every generated file: path relative to ``deploy/`` -> text."""
    return {**rules.deploy_files(), **rule_tests.deploy_files(), **dashboards.deploy_files(), **scale_out.deploy_files()}


def write_deploy_files(deploy_dir: str | os.PathLike[str]) -> list[Path]:
    """Write :func:`deploy_files` under ``deploy_dir``; returns the paths written."""
    written = []
    for relative, text in deploy_files().items():
        path = Path(deploy_dir) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    write_deploy_files(sys.argv[1] if len(sys.argv) > 1 else ROOT / "deploy")
