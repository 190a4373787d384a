"""Exceptions raised by reer_otel_memory."""

from __future__ import annotations


class ReerMemoryError(Exception):
    """Base class of every error this package raises."""


class ConfigurationError(ReerMemoryError, ValueError):
    """A threshold, interval or other setting is not usable.

    The message names the variable or argument, the value it got and what was expected.
    """


class TraceStoreError(ReerMemoryError, ValueError):
    """A trace or trace-store argument is not acceptable."""
