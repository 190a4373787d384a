"""Writes each benchmark's figures into docs/performance.md.

Each benchmark owns one table on the page, between ``<!-- bench:KEY begin -->`` and
``<!-- bench:KEY end -->`` (KEY: the module's name without ``bench_``), and a run replaces that
region only; the rest of the page is left as written. Full runs write the page, quick runs
(``REER_BENCH_QUICK=1``) only when asked: ``--write-docs`` or ``REER_BENCH_WRITE_DOCS=1``
(``--no-write-docs`` or ``REER_BENCH_WRITE_DOCS=0`` keep a full run from writing).
"""

from __future__ import annotations

import datetime
import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path

from benchmarks._report import QUICK, Figure

PAGE = Path(__file__).resolve().parent.parent / "docs" / "performance.md"


class MarkerError(ValueError):
    """The page has no region (or no well-formed region) for a benchmark."""


def key(module_name: str) -> str:
    """The marker key of a benchmark module: ``bench_profile`` -> ``profile``."""
    return module_name.removeprefix("bench_")


def should_write(argv: list[str]) -> bool:
    """Whether this run writes the page: the flag, else the variable, else full runs only."""
    if "--write-docs" in argv:
        return True
    if "--no-write-docs" in argv:
        return False
    setting = os.environ.get("REER_BENCH_WRITE_DOCS", "")
    return setting == "1" if setting in ("0", "1") else not QUICK


def run_line(bench: str, quick: bool = QUICK) -> str:
    """When and where the figures were measured."""
    try:
        from opentelemetry.sdk.version import __version__ as sdk
    except ImportError:
        sdk = "not installed"
    kind = "quick run (`REER_BENCH_QUICK=1`, smaller inputs)" if quick else "full run"
    return (
        f"Measured {datetime.date.today().isoformat()} by `python -m benchmarks {bench}`: Python {platform.python_version()}, "
        f"OpenTelemetry SDK {sdk}, {os.cpu_count()} CPUs, {kind}."
    )


def _number(value: float) -> str:
    """Three significant figures, no fewer digits before the point."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    return f"{value:,.{max(0, 2 - math.floor(math.log10(abs(value))))}f}"


def _cell(text: str) -> str:
    """A table cell: ``|`` and ``__`` escaped; a name indented in the printout (a row under the one above) marked."""
    cell = text.strip().replace("|", "\\|").replace("__", "\\_\\_")
    return f"↳ {cell}" if text.startswith(" ") else cell


def _measured(value: float, unit: str) -> str:
    return f"{_number(value)} {unit}" if unit else ""  # a row without a unit is a note


def table(figures: Sequence[Figure], line: str) -> str:
    """The Markdown table of ``figures``, then ``line``."""
    with_target = any(f.target for f in figures)
    header = ["figure", "measured", "baseline", "baseline measured", "ratio"] + (["target"] if with_target else [])
    rows = [header, ["---"] * len(header)]
    for f in figures:
        has_baseline = f.baseline_name is not None and f.baseline_value is not None
        row = [
            f.name,
            _measured(f.value, f.unit),
            f.baseline_name or "",
            _measured(f.baseline_value, f.unit) if has_baseline else "",
            f"{f.ratio:.2f}x" if has_baseline and f.ratio is not None else "",
        ]
        if with_target:
            verdict = {None: "", True: ": met", False: ": missed"}[f.met]
            row.append(f"{f.target}{verdict}" if f.target else "")
        rows.append([_cell(cell) for cell in row])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows) + f"\n\n{line}\n"


def _markers(bench: str) -> tuple[str, str]:
    return f"<!-- bench:{bench} begin -->", f"<!-- bench:{bench} end -->"


def region(text: str, bench: str, path: Path) -> tuple[int, int]:
    """Start and end offsets of the text between ``bench``'s markers; MarkerError where they are not one ordered pair."""
    begin, end = _markers(bench)
    counts = text.count(begin), text.count(end)
    start, stop = text.find(begin), text.find(end)
    if counts != (1, 1) or stop < start:
        raise MarkerError(
            f"{path}: benchmark {bench!r} needs one {begin!r} line and, after it, one {end!r} line "
            f"(found {counts[0]} and {counts[1]}); add the pair where its table belongs"
        )
    return start + len(begin), stop


def write(path: Path, bench: str, figures: Sequence[Figure], line: str) -> bool:
    """Replace ``bench``'s region of the page at ``path`` with its table; whether the page changed."""
    text = path.read_text(encoding="utf-8")
    start, stop = region(text, bench, path)
    updated = text[:start] + "\n" + table(figures, line) + text[stop:]
    if updated == text:
        return False
    path.write_text(updated, encoding="utf-8")
    return True
