"""Accelerator memory: what MLX, PyTorch CUDA, JAX and NVML say this process holds on its devices.

RSS does not see the memory a model keeps on a GPU (or in MLX's unified memory). This module
reads it only from frameworks the process has already imported: it never imports one and never
initialises CUDA. NVML counts every process on a GPU, so it is reported in
:meth:`DeviceMemory.readings` only. Each source is guarded: its first failure is logged once and
the framework skipped from then on. :meth:`DeviceMemory.begin` / :meth:`DeviceMemory.end` give
exact per-operation peaks under nesting and concurrency the way
:class:`~reer_otel_memory.profiling.probe.MemoryProbe` does for RSS (marks folded into every open
window before a reset); the reset is visible to the host, and ``DeviceMemory(reset_peaks=False)``
leaves the marks alone, reporting peaks only where they are still exact.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._runtime import RUNTIME

logger = logging.getLogger(__name__)

FRAMEWORK_MLX = "mlx"
FRAMEWORK_TORCH = "torch"
FRAMEWORK_JAX = "jax"
FRAMEWORK_NVML = "nvml"


@dataclass(frozen=True)
class DeviceReading:
    """Memory on one device as one framework sees it, in bytes; None where it does not say."""

    framework: str
    #: The device as the framework names it: ``cpu:0``, ``gpu:0``, ``cuda:1``.
    device: str
    #: In use by this process (NVML: on the whole device, every process together).
    used_bytes: int
    #: The framework's high-water mark since its last reset.
    peak_bytes: int | None = None
    #: The most the framework may use on the device (MLX's limit, the device's total memory).
    limit_bytes: int | None = None
    #: Freed by the program but kept by the framework's allocator (what ``empty_caches`` returns).
    cache_bytes: int | None = None
    #: NVML only: this process's usage, where the driver reports it.
    process_used_bytes: int | None = None


class _Source:
    """One framework on one device, as an operation window reads it."""

    __slots__ = ("device", "framework", "resettable")

    framework: str
    device: str
    resettable: bool

    def used(self) -> int:
        raise NotImplementedError

    def peak(self) -> int | None:
        raise NotImplementedError

    def reset_peak(self) -> None:
        raise NotImplementedError

    def reading(self) -> DeviceReading:
        raise NotImplementedError


class _MlxSource(_Source):
    __slots__ = ("_mx",)

    def __init__(self, mx: Any) -> None:
        self._mx = mx
        self.framework = FRAMEWORK_MLX
        default = mx.default_device()
        # Device has no index attribute in every release; its repr is "Device(cpu, 0)".
        index = getattr(default, "index", None)
        if index is None:
            index = repr(default).rstrip(")").rpartition(",")[2].strip() or "0"
        self.device = f"{getattr(default.type, 'name', default.type)}:{index}"
        self.resettable = True

    def used(self) -> int:
        return int(self._mx.get_active_memory())

    def peak(self) -> int | None:
        return int(self._mx.get_peak_memory())

    def reset_peak(self) -> None:
        self._mx.reset_peak_memory()

    def reading(self) -> DeviceReading:
        mx = self._mx
        limit = int(mx.get_memory_limit()) if hasattr(mx, "get_memory_limit") else None
        return DeviceReading(self.framework, self.device, self.used(), self.peak(), limit or None, int(mx.get_cache_memory()))


class _TorchCudaSource(_Source):
    __slots__ = ("_cuda", "_index")

    def __init__(self, cuda: Any, index: int) -> None:
        self._cuda = cuda
        self._index = index
        self.framework = FRAMEWORK_TORCH
        self.device = f"cuda:{index}"
        self.resettable = True

    def used(self) -> int:
        return int(self._cuda.memory_allocated(self._index))

    def peak(self) -> int | None:
        return int(self._cuda.max_memory_allocated(self._index))

    def reset_peak(self) -> None:
        self._cuda.reset_peak_memory_stats(self._index)

    def reading(self) -> DeviceReading:
        cuda = self._cuda
        used = self.used()
        _free, total = cuda.mem_get_info(self._index)
        return DeviceReading(self.framework, self.device, used, self.peak(), int(total), int(cuda.memory_reserved(self._index)) - used)


class _JaxSource(_Source):
    __slots__ = ("_device",)

    def __init__(self, device: Any) -> None:
        self._device = device
        self.framework = FRAMEWORK_JAX
        self.device = f"{device.platform}:{device.id}"
        self.resettable = False

    def _stats(self) -> dict[str, Any]:
        stats = self._device.memory_stats()
        return stats if isinstance(stats, dict) else {}

    def used(self) -> int:
        return int(self._stats()["bytes_in_use"])

    def peak(self) -> int | None:
        value = self._stats().get("peak_bytes_in_use")
        return int(value) if isinstance(value, int) else None

    def reset_peak(self) -> None:  # JAX has no way to reset its peak
        pass

    def reading(self) -> DeviceReading:
        stats = self._stats()
        peak, limit = stats.get("peak_bytes_in_use"), stats.get("bytes_limit")
        return DeviceReading(
            self.framework,
            self.device,
            int(stats["bytes_in_use"]),
            int(peak) if isinstance(peak, int) else None,
            int(limit) if isinstance(limit, int) else None,
        )


class DeviceWindow:
    """An open measurement of device memory between :meth:`DeviceMemory.begin` and ``end``."""

    __slots__ = ("marks_at_start", "peaks")

    def __init__(self) -> None:
        #: Highest use seen so far on each source the window reads.
        self.peaks: dict[_Source, int] = {}
        #: Each non-resettable source's mark when the window opened.
        self.marks_at_start: dict[_Source, int] = {}


class DeviceMemory:
    """Reads accelerator memory from the frameworks in ``modules`` (``sys.modules``).

    ``modules`` is a parameter so that tests can show it a mapping of their own; it is only
    ever read. ``nvml=False`` never loads ``pynvml`` even where it is installed.
    """

    def __init__(self, modules: Mapping[str, Any] | None = None, *, reset_peaks: bool = True, nvml: bool = True) -> None:
        self._modules: Mapping[str, Any] = sys.modules if modules is None else modules
        self._reset_peaks = reset_peaks
        self._nvml_wanted = nvml
        self._lock = threading.Lock()
        self._active: set[DeviceWindow] = set()
        self._failed: set[str] = set()
        self._sources: tuple[_Source, ...] = ()
        self._pending = False  # a framework is imported but has no device in use yet
        self._modules_seen = -1
        self._nvml: Any = None
        self._nvml_tried = False
        RUNTIME.after_fork_call(self)

    def _after_fork_in_child(self) -> None:
        # Windows of other threads never end in the child; CUDA is unusable in a forked child
        # (torch says so through is_initialized()), so every source is found again.
        self._lock = threading.Lock()
        self._active = set()
        self._sources = ()
        self._modules_seen = -1
        self._nvml = None
        self._nvml_tried = False

    # --- which frameworks --------------------------------------------------------------------

    def _fail(self, framework: str, exc: BaseException) -> None:
        if framework not in self._failed:
            self._failed.add(framework)
            logger.warning("reading %s memory failed, so %s is no longer read: %r", framework, framework, exc)
        self._sources = tuple(source for source in self._sources if source.framework != framework)

    def _discover(self) -> None:
        """Find the sources of the frameworks imported now (a few us; only when imports change)."""
        modules = self._modules
        self._modules_seen = len(modules)
        sources: list[_Source] = []
        pending = False
        mx = modules.get("mlx.core")
        if mx is not None and FRAMEWORK_MLX not in self._failed:
            try:
                sources.append(_MlxSource(mx))
            except Exception as exc:
                self._fail(FRAMEWORK_MLX, exc)
        torch = modules.get("torch")
        if torch is not None and FRAMEWORK_TORCH not in self._failed:
            try:
                cuda = torch.cuda
                # Never initialise CUDA ourselves: that costs seconds and hundreds of MB.
                if cuda.is_initialized():
                    sources.extend(_TorchCudaSource(cuda, index) for index in range(cuda.device_count()))
                else:
                    pending = True
            except Exception as exc:
                self._fail(FRAMEWORK_TORCH, exc)
        bridge = modules.get("jax._src.xla_bridge")
        if bridge is not None and FRAMEWORK_JAX not in self._failed:
            try:
                # Asking JAX for its devices would start its backends: wait until something else has.
                if getattr(bridge, "_backends", None):
                    for device in modules["jax"].local_devices():
                        stats = device.memory_stats()
                        if isinstance(stats, dict) and isinstance(stats.get("bytes_in_use"), int):
                            sources.append(_JaxSource(device))
                else:
                    pending = True
            except Exception as exc:
                self._fail(FRAMEWORK_JAX, exc)
        self._sources = tuple(sources)
        self._pending = pending

    def _current_sources(self) -> tuple[_Source, ...]:
        # One len() in the common case: sources are looked for again only when the set of
        # imported modules changed, or while a framework waits for its first device.
        if self._pending or len(self._modules) != self._modules_seen:
            self._discover()
        return self._sources

    def frameworks(self) -> list[str]:
        """The frameworks read now, e.g. ``["mlx"]`` (NVML not included)."""
        return sorted({source.framework for source in self._current_sources()})

    # --- gauges --------------------------------------------------------------------------------

    def readings(self) -> list[DeviceReading]:
        """Every device of every framework read now, NVML included (a few us to ms: for the monitor)."""
        found: list[DeviceReading] = []
        for source in self._current_sources():
            try:
                found.append(source.reading())
            except Exception as exc:
                self._fail(source.framework, exc)
        found.extend(self._nvml_readings())
        return found

    def _nvml_module(self) -> Any:
        if not self._nvml_tried:
            self._nvml_tried = True
            if self._nvml_wanted and FRAMEWORK_NVML not in self._failed:
                try:
                    if importlib.util.find_spec("pynvml") is not None:
                        import pynvml

                        pynvml.nvmlInit()
                        self._nvml = pynvml
                except Exception as exc:
                    # No driver or no GPU is the usual case on most machines, not a fault: one
                    # debug line, and NVML is not read.
                    self._failed.add(FRAMEWORK_NVML)
                    logger.debug("NVML is not read: no NVIDIA driver or device here (%r)", exc)
        return self._nvml

    def _nvml_readings(self) -> list[DeviceReading]:
        nvml = self._nvml_module()
        if nvml is None or FRAMEWORK_NVML in self._failed:
            return []
        found = []
        try:
            pid = os.getpid()
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                info = nvml.nvmlDeviceGetMemoryInfo(handle)
                process_bytes = None
                try:
                    for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                        if process.pid == pid and isinstance(process.usedGpuMemory, int):
                            process_bytes = (process_bytes or 0) + process.usedGpuMemory
                except nvml.NVMLError:
                    pass  # not supported on this device or driver: the process's share is unknown
                found.append(DeviceReading(FRAMEWORK_NVML, f"gpu:{index}", int(info.used), None, int(info.total), None, process_bytes))
        except Exception as exc:
            self._fail(FRAMEWORK_NVML, exc)
            return []
        return found

    # --- per-operation windows -------------------------------------------------------------------

    def begin(self) -> tuple[DeviceWindow | None, int]:
        """Open a window; returns it (None when no device is read) and the bytes in use, summed.

        With no framework imported this is one length check of ``sys.modules``; with one, two
        reads and at most one reset of the framework's mark per device (docs/performance.md).
        """
        sources = self._current_sources()
        if not sources:
            return None, 0
        window = DeviceWindow()
        used_sum = 0
        reset = self._reset_peaks
        with self._lock:
            active = self._active
            for source in sources:
                try:
                    mark = source.peak()
                    used = source.used()
                    if mark is not None:
                        for other in active:
                            seen = other.peaks.get(source)
                            if seen is not None and seen < mark:
                                other.peaks[source] = mark
                        if not (reset and source.resettable):
                            window.marks_at_start[source] = mark
                        elif mark > used:
                            # The mark says nothing about this window: reset it. When it equals
                            # the use (nothing freed since) it already measures from here.
                            source.reset_peak()
                except Exception as exc:
                    self._fail(source.framework, exc)
                    continue
                window.peaks[source] = used
                used_sum += used
            active.add(window)
        return window, used_sum

    def end(self, window: DeviceWindow | None) -> tuple[int, int | None]:
        """Close ``window``: the bytes in use now and the highest use during it, each summed.

        ``(0, None)`` for a None window. About as costly as :meth:`begin`.
        """
        if window is None:
            return 0, None
        used_sum = peak_sum = 0
        with self._lock:
            self._active.discard(window)
            for source, highest in window.peaks.items():
                peak = highest
                try:
                    mark = source.peak()
                    used = source.used()
                except Exception as exc:
                    self._fail(source.framework, exc)
                    continue
                if used > peak:
                    peak = used
                if mark is not None and mark > peak:
                    start_mark = window.marks_at_start.get(source)
                    # A mark that was never reset counts only if it rose during the window.
                    if start_mark is None or mark > start_mark:
                        peak = mark
                used_sum += used
                peak_sum += peak
        return used_sum, peak_sum

    # --- cleanup -------------------------------------------------------------------------------

    def empty_caches(self) -> dict[str, int]:
        """Hand the frameworks' cached, unused memory back (``mx.clear_cache``, ``torch.cuda.empty_cache``).

        Returns the bytes each framework's cache held before, by framework.
        """
        released: dict[str, int] = {}
        for source in self._current_sources():
            try:
                if source.framework == FRAMEWORK_MLX and FRAMEWORK_MLX not in released:
                    mx = self._modules["mlx.core"]
                    released[FRAMEWORK_MLX] = int(mx.get_cache_memory())
                    mx.clear_cache()
                elif source.framework == FRAMEWORK_TORCH:
                    cache = source.reading().cache_bytes or 0
                    released[FRAMEWORK_TORCH] = released.get(FRAMEWORK_TORCH, 0) + cache
            except Exception as exc:
                self._fail(source.framework, exc)
        if FRAMEWORK_TORCH in released:
            try:
                self._modules["torch"].cuda.empty_cache()
            except Exception as exc:
                self._fail(FRAMEWORK_TORCH, exc)
        return released


def device_memory() -> DeviceMemory:
    """The process-wide reader of accelerator memory, built on first use."""
    return RUNTIME.get("device_memory", DeviceMemory)
