"""Declared dependency bounds: the minimums CI installs are pyproject's, and the features they promise are there."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import psutil
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import reer_otel_memory
from reer_otel_memory import PROBE
from reer_otel_memory.monitoring.cleanup import trim_heap

ROOT = Path(__file__).resolve().parent.parent
MINIMUMS = ROOT / ".ci" / "minimums.txt"


def _lower_bounds() -> dict[str, Version]:
    tomllib = pytest.importorskip("tomllib")
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bounds: dict[str, Version] = {}
    for line in dependencies:
        requirement = Requirement(line)
        lower = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        assert len(lower) == 1, f"{line!r}: every dependency has one '>=' bound, the minimum CI installs"
        bounds[requirement.name.lower()] = Version(lower[0])
    return bounds


def _pinned_minimums() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in MINIMUMS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{line!r}: the minimums file pins exact versions"
        pins[requirement.name.lower()] = Version(spec.version)
    return pins


def test_the_minimums_file_pins_exactly_every_lower_bound_in_pyproject():
    bounds = _lower_bounds()
    assert len(bounds) >= 8
    assert _pinned_minimums() == bounds


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="heap_info and heap_trim are read on Linux (glibc)")
def test_the_installed_psutil_gives_heap_readings_and_trims():
    assert hasattr(psutil, "heap_info") and hasattr(psutil, "heap_trim"), f"psutil {psutil.__version__} lacks heap_info/heap_trim"
    assert PROBE.heap_bytes() is not None
    assert trim_heap() is True


def test_the_package_imports_no_private_module_of_another_distribution():
    """``from x._y import z``, ``import x._y`` and ``from x import _y`` name another distribution's internals."""
    package_dir = Path(reer_otel_memory.__file__).parent
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and not node.module.startswith("reer_otel_memory"):
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names if not alias.name.startswith("reer_otel_memory")]
            else:
                continue
            for name in names:
                if any(part.startswith("_") and not part.startswith("__") for part in name.split(".")[1:]):
                    found.append(f"{path.relative_to(package_dir.parent)}:{node.lineno}: {name}")
    # The one left: _telemetry checks on every profiled call whether a global meter provider is set,
    # which the API offers no public way to do (its proxy provider class is private); it reads the
    # module's names guarded, falling back to get_meter_provider() where they move.
    allowed = {"opentelemetry.metrics._internal"}
    assert [entry for entry in found if entry.rsplit(": ", 1)[1] not in allowed] == []
