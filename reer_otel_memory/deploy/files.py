"""The files shipped under ``deploy/``: Prometheus rules and configuration, Grafana dashboards.

All of them are generated (:mod:`reer_otel_memory.deploy.rules`, :mod:`reer_otel_memory.deploy.dashboards`);
``make deploy`` writes them again:

    python -c 'from reer_otel_memory import deploy; deploy.write_deploy_files("deploy")'
"""

from __future__ import annotations

import os
from pathlib import Path

from . import dashboards, rule_tests, rules, scale_out


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
