"""Flight recorder and device windows: added cost per profiled call, against the profiled call without them.

* **Flight recorder.** A profiled no-op (``memory_profile``, no SDK) that also puts itself in
  the recorder's table of running operations (``operation_started`` + ``operation_finished``),
  against the same profiled no-op without the recorder, both measured on every call (with a
  recorder configured every call is measured; without one a fast operation is measured on one
  call in ``LIGHT_SAMPLE_EVERY``, also reported); and one ``record_sample``, against the one RSS
  read a monitor sample costs anyway.
* **Device windows.** ``DeviceMemory.begin()`` + ``end()`` with no framework imported (what
  every profiled call pays where no accelerator framework is in use), and with MLX imported
  (in a fresh interpreter), against the RSS peak window (``begin_peak`` + ``end_peak``) every
  profiled call already opens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from benchmarks._report import Figure
from benchmarks.bench_profile import interleaved


def _recorder_medians() -> dict[str, float]:
    from reer_otel_memory import memory_profile
    from reer_otel_memory.profiling import operations
    from reer_otel_memory.profiling.devices import DeviceMemory
    from reer_otel_memory.profiling.flight_recorder import FlightRecorder
    from reer_otel_memory.profiling.probe import process_probe

    probe = process_probe()
    devices = DeviceMemory(modules={}, nvml=False)
    with tempfile.TemporaryDirectory() as directory:
        recorder = FlightRecorder.open(os.path.join(directory, "bench.flight"))

        @memory_profile(operation_name="noop")
        def _profiled() -> None:
            pass

        # Both go through one more call, so that the difference is the recorder's two calls.
        def profiled() -> None:
            _profiled()

        sampled = interleaved({"profiled_sampled": profiled})
        # What a recorder makes every call cost: each one measured, as with the process's recorder.
        operations.LIGHT_SAMPLE_EVERY = 1

        def profiled_and_recorded() -> None:
            slot = recorder.operation_started("noop", 1 << 20)
            _profiled()
            recorder.operation_finished(slot)

        def slot_only() -> None:
            recorder.operation_finished(recorder.operation_started("noop", 1 << 20))

        def sample() -> None:
            recorder.record_sample(probe.rss_bytes(), 1 << 20, None, "ok")

        def rss_only() -> None:
            probe.rss_bytes()

        def device_window() -> None:
            window, _ = devices.begin()
            devices.end(window)

        def rss_window() -> None:
            window, _ = probe.begin_peak()
            probe.end_peak(window, 0)

        medians = interleaved(
            {
                "profiled": profiled,
                "profiled_recorded": profiled_and_recorded,
                "slot": slot_only,
                "sample": sample,
                "rss": rss_only,
                "device_window": device_window,
                "rss_window": rss_window,
            }
        )
        recorder.close()
    return {**sampled, **medians}


def _mlx_medians() -> dict[str, float]:
    import mlx.core  # noqa: F401  (imported so that the reader sees MLX)

    from reer_otel_memory.profiling.devices import DeviceMemory
    from reer_otel_memory.profiling.probe import process_probe

    devices = DeviceMemory(nvml=False)
    probe = process_probe()

    def device_window() -> None:
        window, _ = devices.begin()
        devices.end(window)

    def rss_window() -> None:
        window, _ = probe.begin_peak()
        probe.end_peak(window, 0)

    return interleaved({"device_window": device_window, "rss_window": rss_window})


def _in_fresh_interpreter(expression: str) -> dict[str, float] | None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = f"import json, sys; sys.path.insert(0, {root!r}); from benchmarks import bench_flight_recorder as b; print(json.dumps({expression}))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def run() -> list[Figure]:
    medians = _in_fresh_interpreter("b._recorder_medians()")
    assert medians is not None, "the flight recorder benchmark failed"
    figures = [
        Figure("profiled no-op + flight recorder slot, no SDK, every call measured", medians["profiled_recorded"], "us/call",
               "profiled no-op, no SDK, every call measured", medians["profiled"], "<= 1.25x"),
        Figure("added by the flight recorder per profiled call", medians["profiled_recorded"] - medians["profiled"], "us/call"),
        Figure("  profiled no-op, no SDK, no recorder (fast calls sampled)", medians["profiled_sampled"], "us/call"),
        Figure("operation_started + operation_finished alone", medians["slot"], "us/call"),
        Figure("monitor sample: RSS read + record_sample", medians["sample"], "us/call", "RSS read alone", medians["rss"]),
        Figure("device begin + end, no framework imported", medians["device_window"], "us/call",
               "RSS peak window (begin_peak + end_peak)", medians["rss_window"], "<= 0.1x"),
    ]
    mlx = _in_fresh_interpreter("b._mlx_medians()")
    if mlx is not None:
        figures.append(Figure("device begin + end, MLX imported", mlx["device_window"], "us/call",
                              "RSS peak window (begin_peak + end_peak)", mlx["rss_window"]))
    return figures
