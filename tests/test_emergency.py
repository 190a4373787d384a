"""The emergency signal: SIGUSR1 sent to a real process wakes its monitor for a cleanup."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from reer_otel_memory import remove_emergency_memory_handler, setup_emergency_memory_handler

SIGNALLED_CHILD = """
import json, os, signal, sys, threading
from reer_otel_memory import get_memory_monitor, register_cleanup_hook
from reer_otel_memory import setup_emergency_memory_handler, remove_emergency_memory_handler
from reer_otel_memory.testing import capture_telemetry

chained = []
previous = lambda signum, frame: chained.append(signum)
signal.signal(signal.SIGUSR1, previous)
cleanup_threads = []
register_cleanup_hook("record-thread", lambda: cleanup_threads.append(threading.current_thread().name))


def say(**message):
    print(json.dumps(message), flush=True)


with capture_telemetry() as telemetry:
    monitor = get_memory_monitor()  # default interval, 30 s: only the signal can make it clean up now
    running_before = monitor.is_running
    setup_emergency_memory_handler()
    say(ready=True, pid=os.getpid(), running_before=running_before, running=monitor.is_running)
    pause = threading.Event()
    for _ in range(2000):
        if monitor.cleanup_counts["emergency"] >= 1 and chained:
            break
        pause.wait(0.01)  # a signal interrupts this wait; the handler runs in this thread
    say(
        emergency=monitor.cleanup_counts["emergency"],
        cleanups=monitor.cleanup_count,
        metric=telemetry.metric_value("reer.memory.cleanups", trigger="emergency"),
        chained=len(chained),
        cleanup_threads=cleanup_threads,
    )
    removed = remove_emergency_memory_handler()
    say(removed=removed, restored=signal.getsignal(signal.SIGUSR1) is previous, running=monitor.is_running)
"""


def test_sigusr1_to_a_real_process_triggers_a_cleanup_counted_as_emergency(children):
    child = children.start(SIGNALLED_CHILD)
    ready = child.message(lambda m: m.get("ready"))
    assert ready["running_before"] is False and ready["running"] is True
    os.kill(ready["pid"], signal.SIGUSR1)
    result = child.message(lambda m: "emergency" in m)
    assert result["emergency"] == 1 and result["cleanups"] == 1
    assert result["metric"] == 1
    assert result["chained"] == 1  # the handler installed before ours still ran
    assert result["cleanup_threads"] == ["reer-memory-monitor"]  # never inside the signal handler
    removed = child.message(lambda m: "removed" in m)
    assert removed == {"removed": True, "restored": True, "running": False}
    assert child.wait() == 0, child.stderr


def test_signals_during_a_pending_cleanup_coalesce_and_the_process_survives(children):
    child = children.start(
        """
        import json, os, threading
        from reer_otel_memory import get_memory_monitor, setup_emergency_memory_handler
        monitor = get_memory_monitor()
        setup_emergency_memory_handler()
        print(json.dumps({"pid": os.getpid()}), flush=True)
        pause = threading.Event()
        for _ in range(2000):
            if monitor.cleanup_counts["emergency"] >= 1:
                break
            pause.wait(0.01)
        print(json.dumps({"emergency": monitor.cleanup_counts["emergency"], "alive": monitor.is_running}), flush=True)
        """
    )
    pid = child.message()["pid"]
    for _ in range(20):
        os.kill(pid, signal.SIGUSR1)
    result = child.message(lambda m: "emergency" in m)
    assert 1 <= result["emergency"] <= 20 and result["alive"] is True
    assert child.wait() == 0, child.stderr


def test_setup_refuses_outside_the_main_thread():
    errors = []

    def install():
        try:
            setup_emergency_memory_handler()
        except RuntimeError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=install, name="worker-7")
    thread.start()
    thread.join(10)
    assert len(errors) == 1
    assert "setup_emergency_memory_handler(signum=SIGUSR1)" in errors[0]
    assert "'worker-7'" in errors[0] and "main thread" in errors[0]


def test_a_bad_signal_number_is_refused():
    with pytest.raises(ValueError, match=r"signum=12345: expected a signal number"):
        setup_emergency_memory_handler(12345)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSTOP])
def test_an_uncatchable_signal_is_refused_naming_it(signum):
    from reer_otel_memory import ConfigurationError

    with pytest.raises(ConfigurationError) as caught:
        setup_emergency_memory_handler(signum)
    assert str(caught.value) == (
        f"signum={signum.name} ({int(signum)}): this signal cannot be caught, so it cannot ask for a cleanup; "
        "expected a catchable signal such as signal.SIGUSR1 or signal.SIGUSR2"
    )


def test_remove_restores_the_previous_handler_and_stops_a_monitor_it_started(tmp_path):
    from _procfs import ProcDir

    from reer_otel_memory import MemoryMonitor, MemoryTracker

    proc = ProcDir(tmp_path)
    monitor = MemoryMonitor(100, 300, 200, 3600, probe=proc.probe, tracker=MemoryTracker(10, probe=proc.probe))

    def previous(signum, frame):
        pass

    original = signal.signal(signal.SIGUSR2, previous)
    try:
        setup_emergency_memory_handler(signal.SIGUSR2, monitor=monitor)
        assert signal.getsignal(signal.SIGUSR2) is not previous
        assert monitor.is_running
        assert remove_emergency_memory_handler(signal.SIGUSR2) is True
        assert signal.getsignal(signal.SIGUSR2) is previous
        assert not monitor.is_running
        assert remove_emergency_memory_handler(signal.SIGUSR2) is False
    finally:
        signal.signal(signal.SIGUSR2, original)
        monitor.stop_monitoring()
        proc.close()
