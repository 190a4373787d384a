"""MemoryTracker: a bounded ring of snapshots, statistics, and the profiler's own bounded memory."""

from __future__ import annotations

import gc
import math
import mmap
import sys
import time

import psutil
import pytest
from _buffers import MiB, mapped, release_free_memory, touched

from reer_otel_memory import (
    PROBE,
    MemoryLevel,
    MemorySnapshot,
    MemoryTracker,
    _telemetry,
    get_memory_tracker,
    memory_context,
    memory_profile,
    setup_memory_limits,
)
from reer_otel_memory import config as config_module
from reer_otel_memory.profiling import operations as _profile

STATS_KEYS = {"current_memory_mb", "peak_memory_mb", "baseline_memory_mb", "snapshot_count", "growth_rate_mb_per_min"}


def test_the_ring_is_bounded_and_keeps_the_newest():
    tracker = MemoryTracker(max_snapshots=5)
    for i in range(12):
        tracker.take_snapshot(operation=f"op-{i}")
    snapshots = tracker.snapshots
    assert tracker.max_snapshots == 5
    assert [s.operation for s in snapshots] == [f"op-{i}" for i in range(7, 12)]
    assert [s.timestamp for s in snapshots] == sorted(s.timestamp for s in snapshots)
    assert tracker.get_memory_stats()["snapshot_count"] == 5


def test_snapshots_is_a_copy():
    tracker = MemoryTracker(max_snapshots=3)
    tracker.take_snapshot("a")
    copy = tracker.snapshots
    copy.clear()
    assert len(tracker.snapshots) == 1


@pytest.mark.parametrize("bad", [0, -1])
def test_a_ring_needs_room(bad):
    with pytest.raises(ValueError, match=f"max_snapshots={bad}"):
        MemoryTracker(max_snapshots=bad)


def test_snapshot_fields():
    tracker = MemoryTracker(max_snapshots=10)
    snapshot = tracker.take_snapshot("manual")
    assert snapshot.operation == "manual"
    assert abs(snapshot.rss_bytes - psutil.Process().memory_info().rss) <= 0.02 * snapshot.rss_bytes
    assert snapshot.process_memory_mb == snapshot.rss_bytes / MiB
    assert snapshot.level is config_module.get_config().level_for(snapshot.rss_bytes)
    assert abs(snapshot.timestamp - time.time()) < 60
    if snapshot.heap_bytes is not None:
        assert snapshot.heap_mb == snapshot.heap_bytes / MiB and snapshot.heap_bytes > 0
    assert isinstance(snapshot, MemorySnapshot)


def test_profiled_operations_add_snapshots_with_operation_and_level(telemetry):
    setup_memory_limits(alert_mb=1, cleanup_mb=2, critical_mb=100_000)

    @memory_profile(operation_name="tracked_step")
    def tracked_step() -> None:
        pass

    tracked_step()
    with memory_context("tracked_block"):
        pass
    snapshots = get_memory_tracker().snapshots
    assert [s.operation for s in snapshots] == ["tracked_step", "tracked_block"]
    assert all(s.level is MemoryLevel.CLEANUP for s in snapshots)
    span_end = telemetry.span("tracked_step").attributes["reer.memory.rss.end"]
    assert snapshots[0].rss_bytes == span_end


def test_memory_stats_have_sane_values(telemetry):
    tracker = get_memory_tracker()
    for _ in range(5):
        tracker.take_snapshot()
    stats = tracker.get_memory_stats()
    assert STATS_KEYS <= set(stats)
    rss_mb = psutil.Process().memory_info().rss / MiB
    assert abs(stats["current_memory_mb"] - rss_mb) <= 0.02 * rss_mb
    assert stats["peak_memory_mb"] >= stats["current_memory_mb"]
    assert 0 < stats["baseline_memory_mb"] <= stats["peak_memory_mb"]
    assert stats["snapshot_count"] == 5
    assert math.isfinite(stats["growth_rate_mb_per_min"])
    assert stats["level"] in ("ok", "alert", "cleanup", "critical")
    assert stats["leak_suspects"] == []


def test_peak_includes_a_spike_already_freed(telemetry):
    with memory_context("spike"):
        spike = mapped(96 * MiB)  # unmapped at close: RSS falls back whatever the allocator holds free
        spike_rss = PROBE.rss_bytes()
        spike.close()
    stats = get_memory_tracker().get_memory_stats()
    assert stats["peak_memory_mb"] >= (spike_rss - MiB) / MiB
    assert stats["current_memory_mb"] < stats["peak_memory_mb"] - 64


def snapshots_while(tracker: MemoryTracker, step, count: int) -> None:
    """Take ``count`` snapshots, calling ``step()`` before each: memory changes as time passes."""
    for _ in range(count):
        step()
        tracker.take_snapshot("growth")
    snapshots = tracker.snapshots
    assert snapshots[-1].timestamp > snapshots[0].timestamp


def test_growth_rate_is_positive_while_memory_grows():
    release_free_memory()
    tracker = MemoryTracker(max_snapshots=200)
    held: list[bytearray] = []
    snapshots_while(tracker, lambda: held.append(touched(2 * MiB)), count=25)
    snapshots = tracker.snapshots
    stats = tracker.get_memory_stats()
    observed_mb_per_min = (snapshots[-1].rss_bytes - snapshots[0].rss_bytes) / MiB / (snapshots[-1].timestamp - snapshots[0].timestamp) * 60
    held.clear()
    assert stats["growth_rate_mb_per_min"] > 0
    assert stats["growth_rate_mb_per_min"] == pytest.approx(observed_mb_per_min, rel=0.5)
    assert stats["growth_since_baseline_mb"] >= 40


def test_growth_rate_is_negative_while_memory_shrinks():
    # Anonymous maps go back to the OS when closed, whatever the allocator would keep.
    held = []
    for _ in range(40):
        block = mmap.mmap(-1, 2 * MiB)
        block[::4096] = b"x" * len(range(0, 2 * MiB, 4096))
        held.append(block)
    tracker = MemoryTracker(max_snapshots=200)
    snapshots_while(tracker, lambda: held.pop().close(), count=40)
    assert tracker.get_memory_stats()["growth_rate_mb_per_min"] < 0


def test_clear_forgets_snapshots_and_leak_statistics(telemetry):
    tracker = get_memory_tracker()
    for _ in range(40):
        tracker.leak_detector.observe("leaky", 512 * 1024)
    tracker.take_snapshot()
    assert tracker.leak_suspects()
    tracker.clear()
    assert tracker.snapshots == [] and tracker.leak_suspects() == []
    assert abs(tracker.baseline_rss_bytes - PROBE.rss_bytes()) < 16 * MiB


@pytest.fixture
def fresh_operation_caps():
    """The process's caps on operations are filled by the test, then forgotten: later tests'
    operations get their own series again."""
    from reer_otel_memory._runtime import RUNTIME

    RUNTIME.replace("operation_attributes", None)
    yield
    RUNTIME.replace("operation_attributes", None)


def test_the_profilers_own_memory_stays_bounded(telemetry, fresh_operation_caps):
    """Thousands of calls over as many operation names: everything the package keeps is capped.

    Past the caps (1000 operations; the SDK's own 2000 attribute sets per instrument), the
    number of live Python memory blocks must stop growing: keeping anything per call, even
    one string, would add at least one block per call.
    """
    past_the_caps, measured = 3_000, 5_000

    def run(first: int, last: int) -> None:
        for i in range(first, last):
            with memory_context(f"request-{i}"):
                pass
            if i % 1000 == 999:
                telemetry.clear()  # the in-memory exporter keeps every span; a real one does not

    run(0, past_the_caps)
    gc.collect()
    blocks_before = sys.getallocatedblocks()
    run(past_the_caps, past_the_caps + measured)
    telemetry.clear()
    gc.collect()
    growth = sys.getallocatedblocks() - blocks_before
    print(f"live memory blocks grew by {growth} over {measured} profiled calls with distinct names")
    assert growth < measured // 10

    tracker = get_memory_tracker()
    assert len(tracker.snapshots) <= tracker.max_snapshots
    assert len(tracker.leak_detector.states()) <= tracker.leak_detector.max_operations
    assert len(_profile._timings().mean_duration_s) <= _profile._MAX_TRACKED_DURATIONS
    # One key per operation up to the cap, and one for every later one.
    assert len(_telemetry.current().operation_net.bytes_by_operation) <= _telemetry.MAX_OPERATIONS + 1
    # The package records at most the cap of operations' series itself, whichever SDK keeps them;
    # later ones share OpenTelemetry's overflow attribute.
    for metric in ("reer.memory.operation.duration", "reer.memory.operation.net"):
        points = telemetry.metric_points(metric)
        assert len(points) <= _telemetry.MAX_OPERATIONS + 1
        assert [dict(p.attributes) for p in points if "reer.operation" not in p.attributes] == [{"otel.metric.overflow": True}]
