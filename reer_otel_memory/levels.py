"""Memory levels: ``ok`` < ``alert`` < ``cleanup`` < ``critical``."""

from __future__ import annotations

import enum


class MemoryLevel(str, enum.Enum):
    """How close the process RSS is to its thresholds; compares by severity."""

    OK = "ok"
    ALERT = "alert"
    CLEANUP = "cleanup"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 for ok up to 3 for critical: the value of the ``reer_memory_level`` gauge."""
        return _RANK[self]

    def __str__(self) -> str:
        return self.value

    def __lt__(self, other: object) -> bool:
        if isinstance(other, MemoryLevel):
            return _RANK[self] < _RANK[other]
        return NotImplemented

    def __le__(self, other: object) -> bool:
        if isinstance(other, MemoryLevel):
            return _RANK[self] <= _RANK[other]
        return NotImplemented

    def __gt__(self, other: object) -> bool:
        if isinstance(other, MemoryLevel):
            return _RANK[self] > _RANK[other]
        return NotImplemented

    def __ge__(self, other: object) -> bool:
        if isinstance(other, MemoryLevel):
            return _RANK[self] >= _RANK[other]
        return NotImplemented


_RANK = {MemoryLevel.OK: 0, MemoryLevel.ALERT: 1, MemoryLevel.CLEANUP: 2, MemoryLevel.CRITICAL: 3}

#: Levels that have a threshold, lowest first.
THRESHOLD_LEVELS = (MemoryLevel.ALERT, MemoryLevel.CLEANUP, MemoryLevel.CRITICAL)
