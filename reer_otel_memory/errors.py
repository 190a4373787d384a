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


class MalformedLineError(ReerMemoryError, ValueError):
    """A JSONL line is not valid JSON (raised only by readers asked not to skip such lines)."""

    def __init__(self, path: str, line_number: int, line_offset: int) -> None:
        super().__init__(f"{path}: line {line_number} (byte offset {line_offset}) is not valid JSON")
        self.path = path
        self.line_number = line_number
        self.line_offset = line_offset
