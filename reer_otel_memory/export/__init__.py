"""The Prometheus ``/metrics`` endpoint, its text renderer, and the one translation of the
package's instrument names into Prometheus series and labels.

May import the package's core; the monitor's instruments are registered through
:mod:`reer_otel_memory.monitoring` when the endpoint starts. The deploy generators and
:mod:`reer_otel_memory.testing` read series names from :mod:`.naming`.
"""
