"""Trace records: strict JSON encoding of a trace, query predicates and score statistics.

What makes a trace acceptable to :class:`~reer_otel_memory.trace_store.REERTraceStore` lives
here, apart from how the store writes and reads its file.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..config import checked_number
from ..errors import ConfigurationError, TraceStoreError
from .scan import ScanStats

_MISSING = object()


def is_finite_number(value: object) -> bool:
    return (type(value) is float and value - value == 0.0) or type(value) is int  # finite, not bool


def checked_count(value: object, low: int, *, where: str, name: str, expected: str) -> int:
    """:func:`~reer_otel_memory.config.checked_number` for a whole-number argument, raising TraceStoreError."""
    try:
        return checked_number(value, low, whole=True, where=where, name=name, expected=expected)
    except ConfigurationError as exc:
        raise TraceStoreError(str(exc)) from None


def encode_trace(trace: object, where: str) -> tuple[bytes, str]:
    """One trace as a line of strict, ASCII JSON, and its id; TraceStoreError if unacceptable."""
    if not isinstance(trace, Mapping):
        raise TraceStoreError(f"{where}={short_repr(trace)}: expected a JSON object (a dict), got {type(trace).__name__}")
    for key in trace:
        if type(key) is not str:
            raise TraceStoreError(f"{where} has key {key!r} ({type(key).__name__}): JSON object keys must be strings")
    score = trace.get("score", _MISSING)
    if score is _MISSING:
        raise TraceStoreError(f"{where}={short_repr(trace)}: has no 'score'; expected a finite number")
    if not is_finite_number(score):
        raise TraceStoreError(f"{where}['score']={score!r}: expected a finite number")
    trace_id = trace.get("trace_id")
    if trace_id is None:
        trace_id = uuid.uuid4().hex
        record: Mapping[str, Any] = {"trace_id": trace_id, **{k: v for k, v in trace.items() if k != "trace_id"}}
    elif not isinstance(trace_id, str) or not trace_id:
        raise TraceStoreError(f"{where}['trace_id']={trace_id!r}: expected a non-empty string")
    else:
        record = trace if type(trace) is dict else dict(trace)
    try:
        # ASCII output keeps byte offsets equal to character offsets (the reading core's fast path).
        text = json.dumps(record, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise TraceStoreError(f"{where} (trace_id {trace_id!r}) is not serialisable as strict JSON: {exc}") from None
    return text.encode("ascii") + b"\n", trace_id


def short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class ScoreStats:
    """Running count, sum, min and max of the numeric scores seen by a stats pass."""

    __slots__ = ("count", "high", "low", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.low: float | None = None
        self.high: float | None = None

    def consume(self, scores: Iterator[Any], stats: ScanStats, max_bytes: int) -> bool:
        """Fold in the ``score`` of each record until ``max_bytes`` more are read; True once the pass is exhausted."""
        byte_limit = stats.end_offset + max_bytes
        count, total = self.count, self.total
        low = float("inf") if self.low is None else self.low
        high = float("-inf") if self.high is None else self.high
        exhausted = True
        for score in scores:
            if (type(score) is float and score - score == 0.0) or type(score) is int:
                count += 1
                total += score
                if score < low:
                    low = score
                if score > high:
                    high = score
            if stats.end_offset >= byte_limit:
                exhausted = False
                break
        self.count, self.total = count, total
        self.low, self.high = (low, high) if count else (None, None)
        return exhausted


def query_predicate(
    min_score: float | None, max_score: float | None, equals: Mapping[str, Any]
) -> Callable[[dict[str, Any]], bool] | None:
    if min_score is None and max_score is None and not equals:
        return None
    low = float("-inf") if min_score is None else min_score
    high = float("inf") if max_score is None else max_score
    by_score = min_score is not None or max_score is not None
    wanted = list(equals.items())

    def predicate(trace: dict[str, Any]) -> bool:
        if by_score:
            score = trace.get("score")
            if not ((type(score) is float or type(score) is int) and low <= score <= high):
                return False
        return all(trace.get(field, _MISSING) == value for field, value in wanted)

    return predicate
