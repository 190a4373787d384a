"""Whatever the package's own steps do, a profiled call lets the user's exception through unchanged.

Each fault is a real object installed in the runtime (``RUNTIME.replace``) and put back after:
a probe reading a statm file that is not one, or a probe, tracker, configuration, telemetry,
accelerator memory reader or flight recorder whose every method raises. Each is thrown at every profiled path: function, coroutine,
generator, async generator, ``with`` and ``async with``, with and without an SDK.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _procfs import ProcDir

from reer_otel_memory import memory_context, memory_profile
from reer_otel_memory._runtime import RUNTIME
from reer_otel_memory.profiling.flight_recorder import RecorderHolder
from reer_otel_memory.testing import capture_telemetry


class UserError(Exception):
    """The user's own exception: it must arrive as raised, the very same object."""


class _Broken:
    """A component whose every method and attribute raises, as a bug or a broken OS would."""

    def __init__(self, component: str) -> None:
        self._component = component

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"{self._component}.{name} is broken")


class _RecordingButBroken(_Broken):
    """Telemetry that says an SDK records, then fails at every step of recording."""

    def recording(self) -> bool:
        return True


class _SlotNotFreed(_Broken):
    """A flight recorder that hands out a slot, then fails to free it."""

    def __init__(self) -> None:
        super().__init__("recorder")

    def operation_started(self, name: str, rss_start: int, device_start: int | None = None) -> int:
        return 0


def _broken_statm_probe(tmp_path) -> tuple[object, Callable[[], None]]:
    proc = ProcDir(tmp_path)
    proc.break_statm()
    return proc.probe, proc.close


FAULTS: dict[str, Callable[[Any], tuple[str, object, Callable[[], None]]]] = {
    "probe-reading-a-bad-statm": lambda tmp: ("probe", *_broken_statm_probe(tmp)),
    "probe-raising": lambda tmp: ("probe", _Broken("probe"), lambda: None),
    "tracker-raising": lambda tmp: ("tracker", _Broken("tracker"), lambda: None),
    "config-raising": lambda tmp: ("config", _Broken("config"), lambda: None),
    "telemetry-raising": lambda tmp: ("telemetry", _Broken("telemetry"), lambda: None),
    "telemetry-recording-but-raising": lambda tmp: ("telemetry", _RecordingButBroken("telemetry"), lambda: None),
    "device-memory-raising": lambda tmp: ("device_memory", _Broken("device_memory"), lambda: None),
    "flight-recorder-raising": lambda tmp: ("flight_recorder", RecorderHolder(_Broken("recorder")), lambda: None),  # type: ignore[arg-type]
    "flight-recorder-failing-to-free-its-slot": lambda tmp: ("flight_recorder", RecorderHolder(_SlotNotFreed()), lambda: None),  # type: ignore[arg-type]
}


@pytest.fixture(params=[False, True], ids=["no-sdk", "sdk"])
def sdk(request) -> Iterator[bool]:
    if request.param:
        with capture_telemetry():
            yield True
    else:
        yield False


@pytest.fixture(params=sorted(FAULTS))
def fault(request, sdk, tmp_path) -> Iterator[str]:
    key, component, close = FAULTS[request.param](tmp_path)
    previous = getattr(RUNTIME, key)
    RUNTIME.replace(key, component)
    try:
        yield request.param
    finally:
        RUNTIME.replace(key, previous)
        close()


def _function(error: UserError) -> Callable[[], Any]:
    @memory_profile
    def function() -> None:
        raise error

    return function


def _run_sync(error: UserError) -> None:
    _function(error)()


def _run_coroutine(error: UserError) -> None:
    @memory_profile(operation_name="coroutine")
    async def coroutine() -> None:
        await asyncio.sleep(0)
        raise error

    asyncio.run(coroutine())


def _run_generator(error: UserError) -> None:
    @memory_profile
    def generator() -> Iterator[int]:
        yield 1
        yield 2
        raise error

    seen = []
    try:
        for item in generator():
            seen.append(item)
    finally:
        assert seen == [1, 2]


def _run_async_generator(error: UserError) -> None:
    @memory_profile
    async def agen() -> Any:
        yield 1
        await asyncio.sleep(0)
        raise error

    async def consume() -> list[int]:
        return [item async for item in agen()]

    asyncio.run(consume())


def _run_context(error: UserError) -> None:
    with memory_context("block") as operation:
        operation.set_attribute("k", "v")
        raise error


def _run_async_context(error: UserError) -> None:
    async def block() -> None:
        async with memory_context("async-block"):
            await asyncio.sleep(0)
            raise error

    asyncio.run(block())


PATHS = {
    "function": _run_sync,
    "coroutine": _run_coroutine,
    "generator": _run_generator,
    "async-generator": _run_async_generator,
    "with": _run_context,
    "async-with": _run_async_context,
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_the_users_exception_comes_through_unchanged_whatever_fails_inside(fault, path):
    error = UserError("the user's own failure")
    with pytest.raises(UserError) as caught:
        PATHS[path](error)
    assert caught.value is error
    assert caught.value.__context__ is None or not isinstance(caught.value.__context__, RuntimeError)


@pytest.mark.parametrize("path", ["function", "generator", "with"])
def test_a_call_that_succeeds_still_returns_its_value_whatever_fails_inside(fault, path):
    if path == "function":

        @memory_profile
        def compute(x: int) -> int:
            return x * 2

        assert compute(21) == 42
    elif path == "generator":

        @memory_profile
        def numbers() -> Iterator[int]:
            received = yield 1
            yield received

        gen = numbers()
        assert next(gen) == 1
        assert gen.send(7) == 7
        gen.close()
    else:
        with memory_context("ok") as operation:
            value = 5
        assert value == 5 and operation is not None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: memory_profile(attributes=5), "memory_profile(attributes=5): expected a mapping of span attribute names to values, or None"),
        (lambda: memory_context("x", attributes=5), "memory_context(attributes=5): expected a mapping of span attribute names to values, or None"),
        (lambda: memory_profile(heap="yes"), "memory_profile(heap='yes'): expected True, False or None"),
        (lambda: memory_context("x", annotate_current=None), "memory_context(annotate_current=None): expected True or False"),
    ],
)
def test_options_of_the_wrong_kind_are_refused_naming_them(make, message):
    from reer_otel_memory import InvalidArgumentError

    with pytest.raises(InvalidArgumentError) as caught:
        make()
    assert str(caught.value) == message


@pytest.mark.parametrize("key", ["device_memory", "flight_recorder"])
def test_an_operation_that_fails_to_start_leaves_no_peak_window_open(key):
    # The probe keeps every open window to fold later high-water marks into; one left behind by
    # a failed start would stay for the life of the process, one more per failing call.
    from reer_otel_memory.profiling.probe import process_probe

    broken = _Broken(key) if key == "device_memory" else RecorderHolder(_Broken("recorder"))  # type: ignore[arg-type]
    probe = process_probe()
    previous = getattr(RUNTIME, key)
    RUNTIME.replace(key, broken)
    try:
        with capture_telemetry():

            @memory_profile(operation_name="fails_to_start")
            def work() -> int:
                return 1

            open_before = len(probe._active)
            assert [work() for _ in range(5)] == [1] * 5
            assert len(probe._active) == open_before
    finally:
        RUNTIME.replace(key, previous)
