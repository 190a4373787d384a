"""The package inside a host process: bad settings degrade, kernel counters are respected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from reer_otel_memory import LeakDetector, MemoryTracker

MiB = 1024 * 1024


def run_child(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter (no SDK configured); it prints one JSON line last."""
    environment = {**os.environ, **env}
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=environment, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["stderr"] = completed.stderr
    return result


BAD_SETTING_CHILD = """
    import json
    from reer_otel_memory import get_memory_tracker, memory_context, memory_profile

    @memory_profile
    def double(x):
        return 2 * x

    @memory_profile
    def fails():
        raise KeyError("original")

    outcome = {"value": double(21)}
    try:
        fails()
    except KeyError as exc:
        outcome["error"] = repr(exc)
    with memory_context("block") as block:
        pass
    outcome["block_level"] = str(block.result.level)
    outcome["snapshots"] = len(get_memory_tracker().snapshots)
    {extra}
    print(json.dumps(outcome))
"""

WITH_SDK = """
    from reer_otel_memory.testing import capture_telemetry
    with capture_telemetry() as telemetry:
        double(1)
        with memory_context("traced"):
            pass
    outcome["spans"] = sorted(span.name for span in telemetry.spans())
"""


@pytest.mark.parametrize("extra", ["", WITH_SDK], ids=["no_sdk", "sdk"])
def test_a_bad_threshold_variable_logs_one_line_and_every_call_still_works(extra):
    code = textwrap.dedent(BAD_SETTING_CHILD).replace("{extra}", textwrap.dedent(extra).replace("\n", "\n"))
    outcome = run_child(code, REER_MEMORY_ALERT_MB="abc")
    assert outcome["value"] == 42
    assert outcome["error"] == "KeyError('original')"  # the host's own exception, unchanged
    assert outcome["block_level"] == "ok"
    assert outcome["snapshots"] >= 3
    errors = [line for line in outcome["stderr"].splitlines() if "REER_MEMORY_ALERT_MB" in line]
    assert len(errors) == 1, outcome["stderr"]
    assert "'abc'" in errors[0] and "default" in errors[0]
    if extra:
        assert outcome["spans"] == ["__main__.double", "traced"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's high-water mark is read from /proc")
def test_the_lifetime_peak_covers_the_time_before_import():
    outcome = run_child(
        """
        import json, resource
        spike = bytearray(160 * 1024 * 1024)
        spike[::4096] = b"x" * len(range(0, len(spike), 4096))
        del spike
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        from reer_otel_memory import PROBE, get_memory_tracker
        print(json.dumps({"before": before, "lifetime": PROBE.lifetime_peak_bytes(),
                          "stats_peak_mb": get_memory_tracker().get_memory_stats()["peak_memory_mb"]}))
        """
    )
    assert outcome["before"] >= 160 * MiB
    assert outcome["lifetime"] >= outcome["before"] - MiB
    assert outcome["stats_peak_mb"] * MiB >= outcome["before"] - MiB


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's high-water mark is read from /proc")
def test_reset_peak_off_leaves_the_kernel_figure_alone_and_reports_only_exact_peaks():
    outcome = run_child(
        """
        import json, resource
        def touched(n):
            buffer = bytearray(n)
            buffer[::4096] = b"x" * len(range(0, n, 4096))
            return buffer
        spike = touched(160 * 1024 * 1024)
        del spike
        from reer_otel_memory import PROBE
        after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        window, start = PROBE.begin_peak()
        small = touched(8 * 1024 * 1024)
        below_old_mark = PROBE.end_peak(window, PROBE.rss_bytes())
        window, start_high = PROBE.begin_peak()
        big = touched(240 * 1024 * 1024)
        new_mark = PROBE.end_peak(window, PROBE.rss_bytes())
        print(json.dumps({"mode": PROBE.peak_mode, "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                          "below_old_mark": below_old_mark, "new_mark": new_mark, "start_high": start_high,
                          "after_import": after_import}))
        """,
        REER_MEMORY_RESET_PEAK="0",
    )
    assert outcome["mode"] == "noreset"
    assert outcome["below_old_mark"] is None  # the old 160 MiB mark hides this window's own peak
    assert outcome["new_mark"] - outcome["start_high"] >= 235 * MiB
    assert outcome["after_import"] >= 160 * MiB  # importing did not reset the kernel's mark
    assert outcome["maxrss"] >= outcome["new_mark"] - MiB


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"window": 0}, "window=0"),
        ({"check_every": 0}, "check_every=0"),
        ({"window": 4}, "min_samples=24, window=4"),
        ({"warmup_calls": -1}, "warmup_calls=-1"),
        ({"positive_share": 1.5}, "positive_share=1.5"),
        ({"floor_bytes": 0}, "floor_bytes=0"),
        ({"max_operations": "10"}, "max_operations='10'"),
    ],
)
def test_leak_detector_settings_are_checked(arguments, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        LeakDetector(**arguments)


@pytest.mark.parametrize("size", [0, -5, "10", 2.5, True])
def test_tracker_size_is_checked(size):
    with pytest.raises(ValueError, match=f"max_snapshots={size!r}"):
        MemoryTracker(max_snapshots=size)
