"""A benchmark figure: a measured value, its baseline measured in the same run, the ratio, and
whether it meets its target.

``REER_BENCH_QUICK=1`` (``make bench-quick``) runs every benchmark on smaller inputs, for
day-to-day use; the figures of record come from the full run (``make bench``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

#: True in the short mode (``make bench-quick``).
QUICK = os.environ.get("REER_BENCH_QUICK", "") == "1"

_TARGET = re.compile(r"^\s*(<=|>=|<|>)\s*([0-9.]+)\s*(x|\S+)?")


def scaled(full: int, quick: int) -> int:
    """``full`` in the full run, ``quick`` in the short mode."""
    return quick if QUICK else full


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    baseline_name: str | None = None
    baseline_value: float | None = None
    target: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline_value in (None, 0):
            return None
        return self.value / self.baseline_value

    @property
    def met(self) -> bool | None:
        """Whether the target holds: ``<= 1.5x`` bounds the ratio, ``<= 5 us`` the value; None without a target."""
        found = _TARGET.match(self.target)
        if found is None:
            return None
        comparison, bound_text, unit = found.groups()
        measured = self.ratio if unit == "x" else self.value
        if measured is None:
            return None
        bound = float(bound_text)
        return {"<=": measured <= bound, ">=": measured >= bound, "<": measured < bound, ">": measured > bound}[comparison]

    def line(self) -> str:
        text = f"{self.name:<58} {self.value:>12.3f} {self.unit}"
        if self.baseline_name is not None and self.baseline_value is not None:
            text += f"   vs {self.baseline_name}: {self.baseline_value:.3f} {self.unit}"
            if self.ratio is not None:
                text += f"   ratio {self.ratio:.2f}x"
        if self.target:
            met = self.met
            mark = "" if met is None else (" PASS" if met else " FAIL")
            text += f"   [target: {self.target}{mark}]"
        return text
