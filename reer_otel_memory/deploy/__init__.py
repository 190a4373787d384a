"""Deploy-time generators: Prometheus alert rules and configuration, Grafana dashboards and the
Alertmanager example, behind ``reer-otel-memory rules`` and ``reer-otel-memory dashboards``.

No service process needs this subpackage. It reads names from the package's core and series
from :mod:`reer_otel_memory.export.naming`; nothing else in the package imports it. ``make deploy``
(``scripts/deploy_files.py``) writes the files under ``deploy/`` from it.
"""
