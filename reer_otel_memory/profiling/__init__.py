"""Profiled operations on a service's hot path: the probe, the decorator and context manager,
the tracker and leak detection.

What each profiled call costs is written next to the code that pays it (``probe``,
``operations``). This subpackage may import the package's core (``_names``, ``_runtime``,
``_telemetry``, ``config``, ``levels``, ``errors``) and nothing else of the package: the
monitor, the endpoint, the ML add-ons and the deploy generators build on it, never the reverse.
"""
