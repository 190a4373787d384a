"""The benchmark page writer (benchmarks/_doc.py) on a copy of a page: it replaces a benchmark's
marked region and nothing else, names the benchmark and the file where the markers are missing,
and writing the same figures twice leaves the page as the first write did."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import _doc  # noqa: E402
from benchmarks._report import Figure  # noqa: E402

PAGE = """# Performance

Prose before, with a hand-written table that stays:

| part | run 1 |
|---|---|
| probe reads | 11.0 us |

<!-- bench:profile begin -->
| old | table |
|---|---|
| stale | 1 |
<!-- bench:profile end -->

Prose between the tables.

<!-- bench:jsonl begin -->
the jsonl region, left alone
<!-- bench:jsonl end -->

Prose after.
"""

FIGURES = [
    Figure("decorated no-op", 30.0, "us/call", "bare span", 20.0, "<= 1.3x"),
    Figure("  heap read on every call", 45.0, "us/call", "bare span", 20.0),
    Figure("added cost with no SDK", 1.25, "us/call", target="<= 3 us"),
    Figure("a note, no value", 0.0, ""),
]
LINE = "Measured 2000-01-01 by `python -m benchmarks profile`: a fixed line for the test."


@pytest.fixture
def page(tmp_path: Path) -> Path:
    path = tmp_path / "performance.md"
    path.write_text(PAGE, encoding="utf-8")
    return path


def _outside(text: str, bench: str) -> tuple[str, str]:
    begin, end = f"<!-- bench:{bench} begin -->", f"<!-- bench:{bench} end -->"
    return text[: text.index(begin)], text[text.index(end) :]


def test_only_the_marked_region_changes(page: Path) -> None:
    assert _doc.write(page, "profile", FIGURES, LINE)
    text = page.read_text(encoding="utf-8")
    assert _outside(text, "profile") == _outside(PAGE, "profile")
    start, stop = _doc.region(text, "profile", page)
    region = text[start:stop]
    assert "stale" not in region
    assert "| decorated no-op | 30.0 us/call | bare span | 20.0 us/call | 1.50x | <= 1.3x: missed |" in region
    assert "| ↳ heap read on every call | 45.0 us/call | bare span | 20.0 us/call | 2.25x |  |" in region
    assert "| added cost with no SDK | 1.25 us/call |  |  |  | <= 3 us: met |" in region
    assert "| a note, no value |  |  |  |  |  |" in region
    assert region.rstrip().endswith(LINE)
    assert "the jsonl region, left alone" in text


def test_a_missing_marker_pair_names_the_benchmark_and_the_file(page: Path) -> None:
    with pytest.raises(_doc.MarkerError) as raised:
        _doc.write(page, "models", FIGURES, LINE)
    assert "'models'" in str(raised.value) and str(page) in str(raised.value)
    page.write_text(PAGE.replace("<!-- bench:jsonl end -->\n", ""), encoding="utf-8")
    with pytest.raises(_doc.MarkerError, match="'jsonl'"):
        _doc.write(page, "jsonl", FIGURES, LINE)
    assert page.read_text(encoding="utf-8") == PAGE.replace("<!-- bench:jsonl end -->\n", "")


def test_a_second_write_is_idempotent(page: Path) -> None:
    assert _doc.write(page, "profile", FIGURES, LINE)
    first = page.read_text(encoding="utf-8")
    assert not _doc.write(page, "profile", FIGURES, LINE)
    assert page.read_text(encoding="utf-8") == first


def test_quick_runs_write_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REER_BENCH_WRITE_DOCS", raising=False)
    monkeypatch.setattr(_doc, "QUICK", True)
    assert not _doc.should_write([])
    assert _doc.should_write(["--write-docs"])
    monkeypatch.setenv("REER_BENCH_WRITE_DOCS", "1")
    assert _doc.should_write([])
    monkeypatch.setattr(_doc, "QUICK", False)
    monkeypatch.delenv("REER_BENCH_WRITE_DOCS")
    assert _doc.should_write([])
    assert not _doc.should_write(["--no-write-docs"])


def test_the_page_has_a_region_for_every_benchmark() -> None:
    text = _doc.PAGE.read_text(encoding="utf-8")
    for module in sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py")):
        _doc.region(text, _doc.key(module), _doc.PAGE)
