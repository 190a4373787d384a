"""Deploy-time generators: Prometheus alert rules and configuration, Grafana dashboards, the
Alertmanager example, and the writer of the files shipped under ``deploy/``.

    python -c 'from reer_otel_memory import deploy; deploy.write_deploy_files("deploy")'

No service process needs this subpackage. It reads names from the package's core and series
from :mod:`reer_otel_memory.export.naming`; nothing else in the package imports it.
"""

from __future__ import annotations

from .files import deploy_files, write_deploy_files

__all__ = ["deploy_files", "write_deploy_files"]
