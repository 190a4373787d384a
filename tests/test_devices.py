"""Accelerator memory: real MLX (the CPU build reports real numbers), and what happens without frameworks."""

from __future__ import annotations

import logging
import sys
import threading
import types

import pytest
from _forks import in_forked_child
from conftest import IN_CI

from reer_otel_memory.profiling.devices import DeviceMemory, device_memory

MB = 1024 * 1024
#: MLX itself allocates a few bytes now and then (scalars); windows are exact to this.
SLACK_BYTES = 64 * 1024


def _mlx():
    try:
        import mlx.core as mx
    except ImportError:
        if IN_CI:
            pytest.fail("mlx is not installed; the test extra installs mlx[cpu]")
        pytest.skip("mlx is not installed (pip install 'mlx[cpu]')")
    return mx


def _allocate(mx, size_bytes: int):
    array = mx.zeros((size_bytes // 4,), dtype=mx.float32)
    mx.eval(array)
    return array


# --- without frameworks --------------------------------------------------------------------


def test_without_any_framework_nothing_is_read_and_nothing_fails():
    devices = DeviceMemory(modules={}, nvml=False)
    window, used = devices.begin()
    assert (window, used) == (None, 0)
    assert devices.end(window) == (0, None)
    assert devices.readings() == []
    assert devices.frameworks() == []
    assert devices.empty_caches() == {}


def test_the_module_imports_without_importing_any_framework():
    import subprocess

    code = (
        "import sys, reer_otel_memory.profiling.devices as d;"
        "frameworks = ('torch', 'mlx', 'mlx.core', 'jax', 'pynvml');"
        "m = d.device_memory(); w, u = m.begin(); print(m.end(w), m.frameworks(),"
        " sorted(n for n in frameworks if n in sys.modules));"
        "m.readings(); print(sorted(n for n in frameworks if n in sys.modules and n != 'pynvml'))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == ["(0, None) [] []", "[]"]


def test_nvml_without_a_gpu_reports_nothing_and_says_so_once_at_debug(caplog):
    # No driver is the usual case, not a fault: a host's log must not warn about it.
    pytest.importorskip("pynvml")  # the test extra installs nvidia-ml-py
    devices = DeviceMemory(modules={})
    with caplog.at_level(logging.DEBUG, logger="reer_otel_memory.profiling.devices"):
        first = devices.readings()
        devices.readings()
    if any(reading.framework == "nvml" for reading in first):
        pytest.skip("this machine has an NVIDIA driver: NVML reports its GPUs")
    assert first == []
    said = [record for record in caplog.records if "NVML" in record.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.DEBUG


def test_a_module_under_a_framework_name_that_is_not_the_framework_is_skipped_with_one_log_line(caplog):
    impostors = {"torch": types.ModuleType("torch"), "mlx.core": types.ModuleType("mlx.core")}
    devices = DeviceMemory(modules=impostors, nvml=False)
    with caplog.at_level(logging.WARNING, logger="reer_otel_memory.profiling.devices"):
        for _ in range(3):
            window, used = devices.begin()
            assert (window, used) == (None, 0)
            assert devices.readings() == []
    failures = [record.getMessage() for record in caplog.records]
    assert len(failures) == 2, failures  # once per framework, not once per call
    assert any("torch" in message for message in failures) and any("mlx" in message for message in failures)


def test_torch_imported_without_cuda_initialised_is_never_asked_for_more():
    """CUDA is never initialised by us: only is_initialized() is called until it says True."""
    asked: list[str] = []

    class Cuda:
        def is_initialized(self):
            asked.append("is_initialized")
            return False

        def __getattr__(self, name):
            asked.append(name)
            raise AssertionError(f"torch.cuda.{name} called before CUDA was initialised")

    torch = types.ModuleType("torch")
    torch.cuda = Cuda()
    devices = DeviceMemory(modules={"torch": torch}, nvml=False)
    window, _ = devices.begin()
    assert window is None
    assert devices.readings() == []
    assert set(asked) == {"is_initialized"}


def test_the_process_wide_reader_is_one_instance():
    assert device_memory() is device_memory()


# --- MLX, for real ---------------------------------------------------------------------------


def test_mlx_allocated_and_freed_inside_a_window_shows_the_peak_and_no_delta():
    mx = _mlx()
    devices = DeviceMemory(nvml=False)
    window, start = devices.begin()
    assert window is not None
    array = _allocate(mx, 64 * MB)
    del array
    end, peak = devices.end(window)
    assert peak is not None and peak - start >= 64 * MB
    assert abs(end - start) <= SLACK_BYTES


def test_mlx_arrays_kept_show_a_delta_of_their_size():
    mx = _mlx()
    devices = DeviceMemory(nvml=False)
    window, start = devices.begin()
    kept = _allocate(mx, 64 * MB)
    end, peak = devices.end(window)
    assert abs((end - start) - 64 * MB) <= 0.02 * 64 * MB
    assert peak is not None and peak >= end
    reading = next(r for r in devices.readings() if r.framework == "mlx")
    assert reading.device == "cpu:0"
    assert reading.used_bytes >= 64 * MB
    assert reading.limit_bytes is not None and reading.limit_bytes > 64 * MB
    del kept


def test_nested_mlx_windows_are_exact():
    mx = _mlx()
    devices = DeviceMemory(nvml=False)
    outer, outer_start = devices.begin()
    transient = _allocate(mx, 128 * MB)
    del transient  # the outer window's peak, before the inner window resets the mark
    kept = _allocate(mx, 16 * MB)
    inner, inner_start = devices.begin()
    assert abs(inner_start - outer_start - 16 * MB) <= SLACK_BYTES
    inner_transient = _allocate(mx, 32 * MB)
    del inner_transient
    inner_end, inner_peak = devices.end(inner)
    outer_end, outer_peak = devices.end(outer)
    assert inner_peak is not None and outer_peak is not None
    assert abs(inner_peak - (inner_start + 32 * MB)) <= SLACK_BYTES
    assert abs(outer_peak - (outer_start + 128 * MB)) <= SLACK_BYTES
    assert abs(outer_end - inner_end) <= SLACK_BYTES
    del kept


def test_concurrent_mlx_windows_each_see_their_own_peak():
    mx = _mlx()
    devices = DeviceMemory(nvml=False)
    first_open, second_open, first_freed = threading.Event(), threading.Event(), threading.Event()
    results: dict[str, tuple[int, int | None, int]] = {}

    def first() -> None:
        window, start = devices.begin()
        first_open.set()
        second_open.wait(10)
        array = _allocate(mx, 96 * MB)
        del array
        first_freed.set()
        end, peak = devices.end(window)
        results["first"] = (start, peak, end)

    def second() -> None:
        first_open.wait(10)
        window, start = devices.begin()
        second_open.set()
        first_freed.wait(10)
        inner, _ = devices.begin()  # resets the mark after the first thread's peak
        array = _allocate(mx, 8 * MB)
        del array
        devices.end(inner)
        end, peak = devices.end(window)
        results["second"] = (start, peak, end)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    for start, peak, _end in results.values():
        assert peak is not None and peak - start >= 96 * MB - SLACK_BYTES
    assert set(results) == {"first", "second"}


def test_without_resets_the_mlx_mark_is_left_alone_and_peaks_stay_exact_where_known():
    mx = _mlx()
    high = _allocate(mx, 48 * MB)
    del high
    mark_before = mx.get_peak_memory()
    devices = DeviceMemory(nvml=False, reset_peaks=False)
    window, start = devices.begin()
    small = _allocate(mx, 4 * MB)
    del small
    _end, peak = devices.end(window)
    assert mx.get_peak_memory() >= mark_before  # never reset
    assert peak is not None and peak < mark_before  # the older, higher mark is not this window's


def test_mlx_cache_is_emptied():
    mx = _mlx()
    devices = DeviceMemory(nvml=False)
    released = devices.empty_caches()
    assert "mlx" in released
    assert mx.get_cache_memory() == 0


def test_a_forked_child_starts_with_no_open_window_and_still_reads_mlx():
    # MLX cannot evaluate arrays in a forked child (its worker threads are gone), so the child
    # only reads: the parent's open window is not the child's, and the reads still answer.
    mx = _mlx()
    devices = DeviceMemory(nvml=False)
    kept = _allocate(mx, 8 * MB)
    devices.begin()  # left open in the parent: it never ends in the child

    def child() -> list[int]:
        window, start = devices.begin()
        end, peak = devices.end(window)
        return [start, end, peak or 0, len(devices._active), len(devices.frameworks())]

    start, end, peak, open_windows, frameworks = in_forked_child(child)
    assert start >= 8 * MB and end == start and peak >= start
    assert open_windows == 0 and frameworks == 1
    del kept
