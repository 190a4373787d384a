"""A benchmark figure: a measured value, its baseline measured in the same run, and the ratio."""

from __future__ import annotations

from dataclasses import dataclass


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

    def line(self) -> str:
        text = f"{self.name:<58} {self.value:>12.3f} {self.unit}"
        if self.baseline_name is not None and self.baseline_value is not None:
            text += f"   vs {self.baseline_name}: {self.baseline_value:.3f} {self.unit}"
            if self.ratio is not None:
                text += f"   ratio {self.ratio:.2f}x"
        if self.target:
            text += f"   [target: {self.target}]"
        return text
