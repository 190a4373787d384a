"""Watching the process: the memory monitor thread, its OpenTelemetry instruments, cleanups and
the emergency signal.

May import the package's core and :mod:`reer_otel_memory.profiling`; never the endpoint, the
ML add-ons or the deploy generators.
"""
