"""Leak detection per operation: a real leak is flagged quickly, steady workloads never."""

from __future__ import annotations

import collections
import logging
import random
import time

import pytest
from _buffers import KiB, MiB, fill_free_small_object_memory, release_free_memory, small_objects, touched

from reer_otel_memory import ConfigurationError, LeakDetector, LeakSuspect, get_memory_tracker, memory_context, memory_profile
from reer_otel_memory.profiling.leak import CallStart
from reer_otel_memory.profiling.window import EXPLANATION_WINDOW

LEAK_LOGGER = "reer_otel_memory.profiling.leak"


def leak_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LEAK_LOGGER and r.levelno == logging.WARNING]


def test_retaining_256_kib_per_call_is_flagged_within_64_calls(telemetry, caplog):
    caplog.set_level(logging.WARNING, logger=LEAK_LOGGER)
    retained: list[bytearray] = []

    @memory_profile(operation_name="leaky_handler")
    def leaky_handler() -> None:
        retained.append(touched(256 * KiB))

    release_free_memory()  # a leak shows in RSS once freed memory is used up; start from none
    for _ in range(64):
        leaky_handler()
    spans = telemetry.spans("leaky_handler")
    retained.clear()
    assert len(spans) == 64

    flags = [bool(span.attributes.get("reer.memory.leak.suspected")) for span in spans]
    assert any(flags), "a 256 KiB-per-call leak went unnoticed for 64 calls"
    first = flags.index(True)
    assert all(flags[first:]), "the suspicion must hold while the leak goes on"

    raised = [i for i, span in enumerate(spans) if any(e.name == "reer.memory.leak.suspected" for e in span.events)]
    assert raised == [first], "one span event, on the call that raised the suspicion"
    (event,) = [e for e in spans[first].events if e.name == "reer.memory.leak.suspected"]
    assert event.attributes["reer.operation"] == "leaky_handler"
    assert event.attributes["reer.memory.leak.bytes_per_call"] == pytest.approx(256 * KiB, rel=0.1)

    (warning,) = leak_warnings(caplog)
    assert "leaky_handler" in warning.getMessage()

    (suspect,) = get_memory_tracker().leak_suspects()
    assert suspect.operation == "leaky_handler"
    assert suspect.bytes_per_call == pytest.approx(256 * KiB, rel=0.1)
    assert suspect.calls_seen == 64
    assert suspect.as_dict() == {"operation": "leaky_handler", "bytes_per_call": suspect.bytes_per_call, "calls_seen": 64}
    stats = get_memory_tracker().get_memory_stats()
    assert [s["operation"] for s in stats["leak_suspects"]] == ["leaky_handler"]
    print(f"leak flagged on call {first + 1}, {suspect.bytes_per_call / KiB:.1f} KiB per call")


@pytest.mark.parametrize("heap", [False, True], ids=["rss_only", "heap_measured"])
def test_retained_small_python_objects_are_flagged(telemetry, heap):
    # Small objects live in Python's own arenas, which the C heap does not count: RSS sees them.
    retained: list[list[dict[str, int]]] = []

    @memory_profile(operation_name="small_object_leak", heap=heap)
    def small_object_leak() -> None:
        retained.append(small_objects())

    ballast = fill_free_small_object_memory()
    # Up to 256 calls: the first ones may still land in free room earlier tests left in
    # Python's arenas, growing no RSS (the ballast takes most of that room, not always all).
    for _ in range(256):
        small_object_leak()
        if get_memory_tracker().leak_suspects():
            break
    (suspect,) = get_memory_tracker().leak_suspects()
    retained.clear()
    del ballast
    assert suspect.operation == "small_object_leak"
    assert suspect.bytes_per_call >= 128 * KiB


def test_retained_untouched_native_memory_is_flagged_through_the_heap(telemetry):
    # calloc'd and never written: no page is resident, so only the heap delta sees it.
    retained: list[bytes] = []

    @memory_profile(operation_name="untouched_leak", heap=True)
    def untouched_leak() -> None:
        retained.append(bytes(256 * KiB))

    for _ in range(40):
        untouched_leak()
    (suspect,) = get_memory_tracker().leak_suspects()
    retained.clear()
    assert suspect.operation == "untouched_leak"
    assert suspect.bytes_per_call == pytest.approx(256 * KiB, rel=0.05)


def test_a_leaking_block_is_flagged_too(telemetry):
    retained: list[bytearray] = []
    release_free_memory()
    for _ in range(40):
        with memory_context("leaky_block"):
            retained.append(touched(256 * KiB))
    retained.clear()
    assert telemetry.spans("leaky_block")[-1].attributes.get("reer.memory.leak.suspected") is True


def assert_never_flagged(telemetry, caplog, operation: str) -> None:
    spans = telemetry.spans(operation)
    assert len(spans) == 500
    flagged = [i for i, span in enumerate(spans) if "reer.memory.leak.suspected" in span.attributes or span.events]
    assert flagged == [], f"steady workload flagged on calls {flagged[:5]}"
    assert leak_warnings(caplog) == []
    assert get_memory_tracker().leak_suspects() == []


@pytest.mark.parametrize("heap", [False, True], ids=["rss_only", "heap_measured"])
def test_allocate_and_free_each_call_is_never_flagged(telemetry, caplog, heap):
    caplog.set_level(logging.WARNING, logger=LEAK_LOGGER)

    @memory_profile(operation_name="transient_batch", heap=heap)
    def transient_batch() -> int:
        scratch = touched(MiB)
        return len(scratch)

    for _ in range(500):
        transient_batch()
    assert_never_flagged(telemetry, caplog, "transient_batch")


@pytest.mark.parametrize("heap", [False, True], ids=["rss_only", "heap_measured"])
def test_a_bounded_cache_that_fills_then_evicts_is_never_flagged(telemetry, caplog, heap):
    caplog.set_level(logging.WARNING, logger=LEAK_LOGGER)
    capacity = 16
    cache: collections.OrderedDict[int, bytearray] = collections.OrderedDict()
    rng = random.Random(7)

    @memory_profile(operation_name="cached_lookup", heap=heap)
    def cached_lookup(key: int) -> int:
        if key in cache:
            cache.move_to_end(key)
        else:
            cache[key] = touched(256 * KiB)
            if len(cache) > capacity:
                cache.popitem(last=False)
        return len(cache[key])

    for _ in range(500):
        cached_lookup(rng.randrange(48))
    assert len(cache) == capacity
    assert_never_flagged(telemetry, caplog, "cached_lookup")


# --- the detector on its own -----------------------------------------------------------------


def feed(detector: LeakDetector, operation: str, deltas) -> list[bool | None]:
    return [detector.observe(operation, delta) for delta in deltas]


def test_suspicion_is_raised_once_and_cleared_when_the_growth_stops():
    detector = LeakDetector()
    changes = feed(detector, "op", [300 * KiB] * 40)
    assert changes.count(True) == 1 and False not in changes
    assert detector.is_suspected("op")
    changes = feed(detector, "op", [0] * 40)
    assert changes.count(False) == 1 and True not in changes
    assert not detector.is_suspected("op")
    assert detector.suspects() == []


def test_nothing_is_judged_during_warm_up():
    detector = LeakDetector(warmup_calls=8, min_samples=12, check_every=4)
    changes = feed(detector, "op", [MiB] * 19)
    assert set(changes) == {None}
    assert detector.states() == [("op", False)]
    assert feed(detector, "op", [MiB]) == [True]


def test_occasional_spikes_are_not_a_leak():
    detector = LeakDetector()
    deltas = [0, 4 * KiB, -4 * KiB, 0, 132 * KiB, 0, -128 * KiB, 8 * KiB] * 40
    assert True not in feed(detector, "op", deltas)


def test_growth_below_the_long_floor_is_not_a_leak():
    detector = LeakDetector(floor_bytes=32 * KiB, long_floor_bytes=8 * KiB)
    assert True not in feed(detector, "op", [4 * KiB] * 600)


def test_a_small_steady_leak_is_flagged_by_the_long_window():
    detector = LeakDetector()
    changes = feed(detector, "op", [16 * KiB] * 300)
    assert True in changes
    assert changes.index(True) < 300
    assert detector.bytes_per_call("op") == 16 * KiB


def test_a_leak_every_tenth_call_is_flagged_by_the_long_window():
    detector = LeakDetector()
    changes = feed(detector, "op", [MiB if call % 10 == 0 else 0 for call in range(300)])
    assert True in changes
    assert detector.bytes_per_call("op") == pytest.approx(MiB / 10, rel=0.1)


@pytest.mark.parametrize("clear_every", [10, 40, 100])
def test_a_bounded_cache_cleared_now_and_then_is_never_flagged(clear_every):
    detector = LeakDetector()
    deltas = [-(clear_every - 1) * 16 * KiB if call % clear_every == clear_every - 1 else 16 * KiB for call in range(1000)]
    assert True not in feed(detector, "op", deltas)


def test_a_heap_reading_vetoes_rss_growth_it_contradicts():
    # Pages faulted in for transient buffers (RSS up, heap and small-object blocks flat) are not
    # retained: here the pages another operation's heap growth took from the free ones.
    pair = LeakDetector()
    for _ in range(100):
        pair.observe("transient", 256 * KiB, 80, blocks_delta=3)
        pair.observe("keeps", 0, 256 * KiB, blocks_delta=1)
    assert [suspect.operation for suspect in pair.suspects()] == ["keeps"]
    # Memory the heap sees although RSS does not (reused pages, untouched calloc) is.
    reused = LeakDetector()
    for _ in range(40):
        reused.observe("op", 0, 300 * KiB, blocks_delta=0)
    assert reused.is_suspected("op")
    # RSS growth that new small-object blocks account for is Python objects kept.
    objects = LeakDetector()
    for _ in range(40):
        objects.observe("op", 300 * KiB, 0, blocks_delta=3000)
    assert objects.is_suspected("op")
    assert objects.bytes_per_call("op") == 300 * KiB
    both = LeakDetector()
    for _ in range(40):
        both.observe("op", 100 * KiB, 300 * KiB)
    assert both.bytes_per_call("op") == 300 * KiB


def test_memory_mapped_outside_malloc_is_judged_on_rss():
    # The heap never moves (an mmap per call, or an allocator such as jemalloc): it is not
    # credible, and RSS growth counts.
    detector = LeakDetector()
    for _ in range(40):
        detector.observe("op", 512 * KiB, 0, blocks_delta=0)
    assert detector.is_suspected("op")
    assert detector.bytes_per_call("op") == 512 * KiB


def test_calls_without_a_heap_reading_still_count():
    detector = LeakDetector()
    for call in range(40):
        detector.observe("op", 300 * KiB, None if call % 2 else 300 * KiB)
    assert detector.is_suspected("op")


def test_memory_handed_to_a_caller_that_drops_it_is_not_retained():
    # The end view sees 1 MiB more; the start of the next call sees it gone.
    detector = LeakDetector()
    for _ in range(200):
        detector.observe("op", MiB, MiB, start=CallStart(100 * MiB, 50 * MiB))
    assert detector.suspects() == []


def test_overlapped_calls_never_accuse_the_operation():
    detector = LeakDetector()
    rss = 100 * MiB
    for _ in range(200):
        detector.observe("innocent", 256 * KiB, overlap=1, start=CallStart(rss))
        rss += 256 * KiB
    assert detector.suspects() == []
    assert detector.candidates() == ["innocent"]
    assert detector.process_suspected()


def test_bytes_per_call_is_robust_to_outliers():
    detector = LeakDetector()
    deltas = [256 * KiB] * 30 + [64 * MiB, -64 * MiB]
    feed(detector, "op", deltas)
    assert detector.is_suspected("op")
    assert detector.bytes_per_call("op") == 256 * KiB
    assert detector.suspects() == [LeakSuspect("op", 256 * KiB, 32)]


def test_operations_are_bounded():
    detector = LeakDetector(max_operations=50)
    for i in range(500):
        detector.observe(f"op-{i}", 0)
    assert len(detector.states()) <= 50
    assert detector.bytes_per_call("op-0") == 0
    assert not detector.is_suspected("never-seen")


def test_an_operation_still_being_called_survives_a_stream_of_new_names():
    detector = LeakDetector(max_operations=50)
    for call in range(400):
        detector.observe("hot", 256 * KiB)
        detector.observe(f"one-off-{call}", 0)
    assert detector.is_suspected("hot")  # its history was never evicted by the one-off names
    assert len(detector.states()) <= 50


class Explainer:
    """What the detector asks for explanations: accepts (or refuses) every request and keeps it."""

    def __init__(self, accept: bool) -> None:
        self.accept = accept  # after the first request, which is always accepted
        self.requests: list[tuple[str, list[str]]] = []
        self.listeners: list[object] = []

    def add_listener(self, listener: object) -> None:
        self.listeners.append(listener)

    def request(self, reason: str, operations: list[str], links: object = ()) -> bool:
        self.requests.append((reason, operations))
        return self.accept or len(self.requests) == 1


class Explanation:
    def __init__(self, operations: dict[str, int], total: int) -> None:
        self.operations = operations
        self.total_bytes = total


@pytest.mark.parametrize("accept", [True, False], ids=["rechecked", "refused"])
def test_a_suspicion_only_an_explanation_saw_is_checked_again_after_its_hold(accept):
    explainer = Explainer(accept)
    detector = LeakDetector(explainer=explainer, explained_hold_s=0.0)
    rss = 100 * MiB
    for _ in range(20):  # figures that cannot see the leak: RSS never moves
        detector.observe("op", 0, start=CallStart(rss))
    detector._request_explanation("asked", ["op"], None)
    EXPLANATION_WINDOW.open = True  # the window: calls ending inside it are counted
    try:
        for _ in range(10):
            detector.observe("op", 0, start=CallStart(rss))
    finally:
        EXPLANATION_WINDOW.open = False
    detector.on_explanation(Explanation({"op": 10 * 256 * KiB}, total=10 * 256 * KiB))
    assert detector.is_suspected("op")
    assert detector.bytes_per_call("op") == 256 * KiB  # the live bytes over the calls in the window
    assert detector.observe("op", 0, start=CallStart(rss)) is True  # the next call reports it
    for _ in range(8):
        detector.observe("op", 0, start=CallStart(rss))
    assert any(reason.startswith("re-checking operation 'op'") for reason, _ in explainer.requests)
    assert detector.is_suspected("op") is accept


def test_an_explanation_naming_another_owner_clears_and_excuses_a_suspect():
    detector = LeakDetector(explainer=False)
    for _ in range(40):
        detector.observe("blamed", 300 * KiB)
    assert detector.is_suspected("blamed")
    detector.on_explanation(Explanation({"owner": MiB, "blamed": 1024}, total=MiB + 1024))
    assert not detector.is_suspected("blamed")
    assert detector.candidates() == []
    assert detector.is_suspected("owner") is False  # an operation the detector never saw is not invented


def test_an_operation_in_flight_at_the_windows_end_is_neither_confirmed_nor_cleared():
    detector = LeakDetector(explainer=False)
    for _ in range(40):
        detector.observe("suspect", 300 * KiB)
        detector.observe("busy", 0, overlap=1)
    assert detector.is_suspected("suspect")
    explanation = Explanation({"busy": 8 * MiB, "suspect": 1024}, total=8 * MiB + 1024)
    explanation.in_flight = ("busy", "suspect")  # type: ignore[attr-defined]
    detector.on_explanation(explanation)
    assert detector.is_suspected("suspect") and not detector.is_suspected("busy")


def test_a_steady_climb_no_operation_shows_is_a_process_level_verdict_naming_none(caplog):
    caplog.set_level(logging.WARNING, logger=LEAK_LOGGER)
    detector = LeakDetector(explainer=False, process_window_s=0.05, process_floor_bytes=MiB)
    rss = 100 * MiB
    deadline = time.monotonic() + 10
    while not detector.process_suspected() and time.monotonic() < deadline:
        rss += 64 * KiB  # the process grows between the calls, which keep nothing themselves
        detector.observe("innocent", 0, start=CallStart(rss))
    assert detector.process_suspected()
    assert detector.candidates() == [] and detector.suspects() == []
    assert any("no profiled operation's own calls show it" in r.getMessage() for r in leak_warnings(caplog))
    # A suspect owns the growth: no process-level verdict beside it.
    for _ in range(40):
        detector.observe("owner", 300 * KiB)
    assert detector.is_suspected("owner") and not detector.process_suspected()


def test_process_settings_are_checked():
    with pytest.raises(ConfigurationError, match=r"process_window_s=0.*positive number of seconds"):
        LeakDetector(process_window_s=0)


@pytest.mark.parametrize("argument", ["floor_bytes", "long_floor_bytes", "process_window_s", "process_floor_bytes"])
def test_a_floor_or_window_of_nan_is_refused(argument):
    with pytest.raises(ConfigurationError, match=rf"^LeakDetector\({argument}=nan\): expected a positive number of "):
        LeakDetector(**{argument: float("nan")})
