"""Add-ons for ML services that use the instrumentation: the model profiler, lazy model loading,
the resource manager, the optimizer and size estimates of object graphs.

May import the package's core, :mod:`reer_otel_memory.profiling` and
:mod:`reer_otel_memory.monitoring`; nothing on the hot path imports this subpackage.
"""
