"""examples/memory_profiling_example.py runs on its own, shows every section, and exits 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "memory_profiling_example.py"


@pytest.mark.slow
def test_the_example_runs_every_section():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REER_MEMORY_", "OTEL_"))}
    result = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120, env=env, cwd=EXAMPLE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Traceback" not in result.stderr, result.stderr

    # Each section of the module docstring is shown, in order, and none is left out.
    documented = re.findall(r"^(\d+)\. ", EXAMPLE.read_text().split('"""')[1], flags=re.MULTILINE)
    shown = re.findall(r"^== (\d+)\. ", out, flags=re.MULTILINE)
    assert shown == documented and len(shown) == 16
    assert f"all {len(shown)} sections shown" in out

    # What each feature reports really happened.
    assert "alert seen: True" in out
    assert "SIGUSR1 -> emergency cleanup on the monitor thread: True" in out
    assert "emergency cleanups: 2" in out
    assert "leak suspected: leaky_append" in out
    assert "hooks run ['example.cache']" in out and "cache entries left 0" in out
    assert "('ids', 'int8')" in out  # the numpy path ran
    assert "after unload: loaded False" in out
    assert "1000 records" in out and "malformed lines [1001]" in out
    assert "cleaned up 1, callbacks run: ['buffer_pool']" in out
    assert "5 traces with score >= 0.5" in out and "total_traces 10" in out
    assert "wrapped: ['__main__:score']" in out and "after uninstrument: []" in out
    assert "span data_processing: rss.delta" in out
    assert re.search(r"^  reer_memory_alerts_total\{level=\"alert\"\} [1-9]", out, flags=re.MULTILINE)
    assert re.search(r"^  reer_memory_cleanups_total\{trigger=\"emergency\"\} 2", out, flags=re.MULTILINE)
