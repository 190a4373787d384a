"""Exceptions raised by reer_otel_memory.

Every error the package raises on bad input is a :class:`ReerMemoryError` and also the builtin
exception such input has always raised, so ``except ValueError`` / ``TypeError`` / ``KeyError``
in callers keep working: :class:`ConfigurationError` and :class:`TraceStoreError` and
:class:`MalformedLineError` are ValueErrors (an unusable setting or argument value, a trace
argument, a JSONL line that is not valid JSON or too long), :class:`InvalidArgumentError` a
TypeError (an argument of the wrong kind), :class:`NotFoundError` a KeyError (an unknown name).
Each message names the argument or variable, the value it got and what was expected.
"""

from __future__ import annotations


class ReerMemoryError(Exception):
    """Base class of every error this package raises on bad input."""


class ConfigurationError(ReerMemoryError, ValueError):
    """A threshold, interval or other setting or argument value is not usable.

    The message names the variable or argument, the value it got and what was expected.
    """


class InvalidArgumentError(ReerMemoryError, TypeError):
    """An argument is of the wrong kind: say, not callable where a callable is expected.

    The message names the argument, the value it got and what was expected.
    """


class NotFoundError(ReerMemoryError, KeyError):
    """A name asked for (a model, say) is not known; the message lists what is."""

    def __str__(self) -> str:
        # KeyError's str() is the repr of its argument; the message reads better unquoted.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class TraceStoreError(ReerMemoryError, ValueError):
    """A trace or trace-store argument is not acceptable."""


class MalformedLineError(ReerMemoryError, ValueError):
    """A JSONL line that is not valid JSON, or longer than the reader's ``max_line_bytes``.

    The message names the file, the 1-based line number, its byte offset and the line's start.
    """

    def __init__(self, path: str, line_number: int, line_offset: int, snippet: str = "", reason: str = "is not valid JSON") -> None:
        super().__init__(
            f"{path}: line {line_number} (byte offset {line_offset}) {reason}: {snippet!r}"
            " (pass skip_malformed=True to skip such lines)"
        )
        self.path = path
        self.line_number = line_number
        self.line_offset = line_offset
        self.snippet = snippet
