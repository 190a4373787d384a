"""The memory probe against the kernel's own numbers: RSS, heap, peaks, threads and forks."""

from __future__ import annotations

import json
import os
import random
import resource
import sys
import threading

import psutil
import pytest
from _buffers import MiB, free_heap_bytes, mapped, release_free_memory, touched

from reer_otel_memory import PROBE, MemoryProbe
from reer_otel_memory.profiling import probe as probe_module

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.fixture(autouse=True)
def nothing_to_reuse():
    """Every allocation below gets new pages, so RSS grows by what it touches."""
    release_free_memory()


def vmhwm_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def close_to(value: int, reference: int, share: float) -> bool:
    return abs(value - reference) <= share * reference


def test_rss_matches_psutil():
    process = psutil.Process()
    for _ in range(3):
        assert close_to(PROBE.rss_bytes(), process.memory_info().rss, 0.02)
    keep = touched(32 * MiB)
    assert close_to(PROBE.rss_bytes(), process.memory_info().rss, 0.02)
    del keep


def test_rss_sees_touched_memory():
    before = PROBE.rss_bytes()
    keep = touched(64 * MiB)
    grown = PROBE.rss_bytes() - before
    del keep
    assert close_to(grown, 64 * MiB, 0.05)


@pytest.mark.skipif(not hasattr(psutil, "heap_info"), reason="psutil.heap_info() is not available here")
def test_heap_sees_a_large_untouched_native_allocation():
    # bytes(n) is calloc'd: the allocator hands out n bytes on fresh pages and touches none of
    # them. n is more than the allocator holds free, so no chunk earlier tests freed is reused.
    size = 64 * MiB + -(-(free_heap_bytes() or 0) // MiB) * MiB
    heap_before, rss_before = PROBE.heap_bytes(), PROBE.rss_bytes()
    untouched = bytes(size)
    heap_after, rss_after = PROBE.heap_bytes(), PROBE.rss_bytes()
    del untouched
    assert heap_before is not None and heap_after is not None
    assert close_to(heap_after - heap_before, size, 0.02)
    assert rss_after - rss_before < 4 * MiB
    assert PROBE.heap_reading() is not None
    assert PROBE.heap_cost_s > 0  # the reading profiled calls take is timed


def test_peak_is_never_below_start_or_end():
    rng = random.Random(1234)
    kept: list[bytearray] = []
    for _ in range(30):
        window, start = PROBE.begin_peak()
        for _ in range(rng.randint(0, 3)):
            buffer = touched(rng.choice((64 * 1024, MiB, 4 * MiB, 12 * MiB)))
            if rng.random() < 0.5:
                kept.append(buffer)
            del buffer
        if kept and rng.random() < 0.4:
            kept.pop(rng.randrange(len(kept)))
        end = PROBE.rss_bytes()
        peak = PROBE.end_peak(window, end)
        if PROBE.peak_mode != "none":
            assert peak is not None
        if peak is not None:
            assert peak >= max(start, end)


@linux_only
def test_peak_sees_memory_freed_before_the_end():
    window, start = PROBE.begin_peak()
    # Mapped pages, unmapped at close: the allocator could keep a freed heap chunk resident.
    spike = mapped(96 * MiB)
    spike.close()
    end = PROBE.rss_bytes()
    peak = PROBE.end_peak(window, end)
    assert peak is not None
    assert peak - start >= 92 * MiB
    assert end - start < 16 * MiB


@linux_only
def test_nested_reset_does_not_hide_the_outer_peak():
    outer, outer_start = PROBE.begin_peak()
    spike = touched(80 * MiB)
    del spike
    # The inner window resets the kernel's high-water mark after the outer one's spike.
    inner, inner_start = PROBE.begin_peak()
    small = touched(MiB)
    inner_peak = PROBE.end_peak(inner, PROBE.rss_bytes())
    outer_peak = PROBE.end_peak(outer, PROBE.rss_bytes())
    del small
    assert outer_peak is not None and inner_peak is not None
    assert outer_peak - outer_start >= 76 * MiB
    assert inner_peak - inner_start < 16 * MiB


@linux_only
def test_lifetime_peak_survives_high_water_resets():
    spike = touched(112 * MiB)
    spike_rss = PROBE.rss_bytes()
    del spike
    # A later operation resets the kernel's high-water mark; the lifetime peak must keep the spike.
    window, _ = PROBE.begin_peak()
    PROBE.end_peak(window, PROBE.rss_bytes())
    # The kernel's high-water counter may trail statm by a few pages of per-CPU accounting.
    assert PROBE.lifetime_peak_bytes() >= spike_rss - MiB


@linux_only
def test_peak_after_a_thread_that_allocated_and_exited():
    probe = MemoryProbe()
    window, _ = probe.begin_peak()
    probe.end_peak(window, probe.rss_bytes())

    def allocate_and_exit() -> None:
        spike = touched(128 * MiB)
        del spike

    thread = threading.Thread(target=allocate_and_exit)
    thread.start()
    thread.join()

    window, start = probe.begin_peak()
    small = [touched(64 * 1024) for _ in range(8)]
    end = probe.rss_bytes()
    peak = probe.end_peak(window, end)
    # Where the kernel keeps an exited thread's mark in ru_maxrss, the probe must have noticed.
    stale = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 > vmhwm_bytes() + 64 * MiB
    del small
    assert probe.peak_mode == ("status" if stale else "rusage")
    assert peak is not None
    assert max(start, end) <= peak < max(start, end) + 16 * MiB, "the exited thread's high-water mark leaked in"
    probe.close()


@linux_only
def test_status_mode_peaks_are_exact():
    # Kernels that keep an exited thread's mark in ru_maxrss switch the probe to VmHWM; this one
    # may not, so select that mode directly to measure with it.
    probe = MemoryProbe()
    probe._peak_mode = probe_module._PEAK_STATUS
    outer, outer_start = probe.begin_peak()
    spike = touched(64 * MiB)
    del spike
    inner, inner_start = probe.begin_peak()
    inner_peak = probe.end_peak(inner, probe.rss_bytes())
    outer_end = probe.rss_bytes()
    outer_peak = probe.end_peak(outer, outer_end)
    probe.close()
    assert outer_peak is not None and inner_peak is not None
    assert outer_peak - outer_start >= 60 * MiB
    assert max(inner_start, 0) <= inner_peak < inner_start + 16 * MiB


@linux_only
def test_without_clear_refs_a_peak_is_exact_or_absent(tmp_path):
    # A /proc entry that offers statm and status but no clear_refs: the mark cannot be reset.
    pid_dir = f"/proc/{os.getpid()}"
    for name in ("statm", "status"):
        (tmp_path / name).symlink_to(f"{pid_dir}/{name}")
    probe = MemoryProbe(proc_self=str(tmp_path))
    assert probe.peak_mode == "noreset"
    assert close_to(probe.rss_bytes(), psutil.Process().memory_info().rss, 0.02)

    # The high-water mark is already above anything the next window sees: no peak, not a wrong one.
    reset, _ = PROBE.begin_peak()  # resets the kernel's mark, so the spike below sets it
    PROBE.end_peak(reset, PROBE.rss_bytes())
    spike = mapped(96 * MiB)  # given back at close, so RSS falls below the mark
    spike.close()
    window, start = probe.begin_peak()
    end = probe.rss_bytes()
    assert probe.end_peak(window, end) is None

    # A window that raises the mark gets it.
    window, start = probe.begin_peak()
    spike = touched(160 * MiB)
    del spike
    peak = probe.end_peak(window, probe.rss_bytes())
    probe.close()
    assert peak is not None and peak - start >= 150 * MiB


def test_psutil_fallback_where_proc_is_missing(tmp_path):
    probe = MemoryProbe(proc_self=str(tmp_path / "no_proc"))
    assert probe.peak_mode == "none"
    assert close_to(probe.rss_bytes(), psutil.Process().memory_info().rss, 0.02)
    window, start = probe.begin_peak()
    assert start > 0
    assert probe.end_peak(window, probe.rss_bytes()) is None


def test_closed_probe_falls_back_to_psutil():
    probe = MemoryProbe()
    probe.close()
    assert probe.peak_mode == "none"
    assert close_to(probe.rss_bytes(), psutil.Process().memory_info().rss, 0.02)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_reads_its_own_memory():
    # (The autouse fixture released free memory: a child would inherit it resident, and
    # reusing it there would grow no RSS.)
    parent_before = PROBE.rss_bytes()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: allocate what the parent does not, report through the pipe
        try:
            os.close(read_end)
            child_start = PROBE.rss_bytes()
            own = touched(64 * MiB)
            report = {"child_start": child_start, "probe_rss": PROBE.rss_bytes(), "psutil_rss": psutil.Process().memory_info().rss}
            window, start = PROBE.begin_peak()
            spike = touched(48 * MiB)
            del spike
            peak = PROBE.end_peak(window, PROBE.rss_bytes())
            report["peak_growth"] = None if peak is None else peak - start
            del own
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    report = json.loads(payload)

    # A child's RSS starts below its parent's (file pages are not copied at fork), so it is
    # compared with itself and with psutil, which reads the child's own /proc entry.
    assert report["probe_rss"] - report["child_start"] >= 60 * MiB, "the child read the parent's memory"
    assert close_to(report["probe_rss"], report["psutil_rss"], 0.03)
    if sys.platform.startswith("linux"):
        assert report["peak_growth"] is not None and report["peak_growth"] >= 44 * MiB
    parent_now = PROBE.rss_bytes()
    assert close_to(parent_now, psutil.Process().memory_info().rss, 0.02)
    assert parent_now < parent_before + 16 * MiB
