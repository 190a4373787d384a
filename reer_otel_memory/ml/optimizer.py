"""MemoryOptimizer: release what can be released, find what cannot, and shrink numpy arrays.

No cleanup can free an object the program still references, so
:meth:`MemoryOptimizer.cleanup_large_objects` releases what is held only for speed (registered
caches, ``functools.lru_cache``), collects cycles, returns free heap to the OS, and then *finds*
the large objects still held, so you can see what holds the memory; finding them walks every
object the garbage collector tracks, so its cost grows with the heap. Registered caches are
hooks in the one cleanup registry, so the monitor's cleanups clear them too.
:meth:`MemoryOptimizer.optimize_numpy_arrays` narrows dtypes only where every value survives
(checked, not assumed); numpy is imported only when an object with a ``dtype`` is passed.
"""

from __future__ import annotations

import array
import functools
import gc
import math
import sys
import time
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

from ..config import checked_number, size_mb_to_bytes
from ..errors import ConfigurationError, InvalidArgumentError
from ..monitoring.cleanup import KIND_CACHE, Released, cleanup_registry, release_memory

_LRU_WRAPPER_TYPE = type(functools.lru_cache(maxsize=1)(lambda: None))
_MAX_NESTING = 16
#: Elements compared per step when checking a downcast, to bound the temporary memory.
_CHECK_CHUNK_ELEMENTS = 1 << 20

#: Prefix of a registered cache's hook name in the cleanup registry, which it shares with
#: every other cleanup hook: a cache called "model" never replaces a hook called "model".
_CACHE_HOOK_PREFIX = "cache:"


def _clearer(cache: Any) -> Callable[[], Any] | None:
    """A callable that clears ``cache`` (held weakly where possible), or None if it cannot be cleared."""
    for method_name in ("cache_clear", "clear"):
        if callable(getattr(cache, method_name, None)):
            try:
                ref = weakref.ref(cache)
            except TypeError:
                bound: Callable[[], Any] = getattr(cache, method_name)
                return bound

            def clear(ref: weakref.ReferenceType[Any] = ref, method_name: str = method_name) -> Any:
                target = ref()
                return None if target is None else getattr(target, method_name)()

            return clear
    if callable(cache):
        clears: Callable[[], Any] = cache
        return clears
    return None


def _measured(released: Released[Any]) -> dict[str, Any]:
    return {
        "rss_before_bytes": released.rss_before_bytes,
        "rss_after_bytes": released.rss_after_bytes,
        "rss_freed_bytes": released.freed_bytes,
        "heap_freed_bytes": released.heap_freed_bytes,
        "heap_trimmed": released.trimmed,
        "duration_s": released.duration_s,
    }


def _check_threshold(where: str, size_threshold_mb: object) -> int:
    return size_mb_to_bytes(size_threshold_mb, f"{where}(size_threshold_mb={size_threshold_mb!r})", allow_zero=True)


def _check_top(where: str, top: object) -> None:
    checked_number(top, 0, whole=True, where=where, name="top", expected="expected a non-negative integer (how many objects to list)")


def _check_report(where: str, report: object) -> None:
    if report is not None and not isinstance(report, dict):
        raise InvalidArgumentError(f"{where}(report={report!r}): expected a dict to fill with the details, or None")


class MemoryOptimizer:
    """Memory-release utilities; every method is static. See the module docs for what each does."""

    # --- caches ----------------------------------------------------------------------------

    @staticmethod
    def register_cache(cache: Any, name: str | None = None) -> str:
        """Have :meth:`cleanup_large_objects` and every cleanup clear ``cache``; returns the name it is registered under.

        ``cache`` is anything with ``cache_clear()`` or ``clear()`` (held weakly when its type
        allows: a plain dict is held until unregistered), or a callable that clears a cache.
        """
        clear = _clearer(cache)
        if clear is None:
            raise InvalidArgumentError(f"register_cache(cache={cache!r}): expected an object with cache_clear() or clear(), or a callable")
        if name is None:
            name = f"{type(cache).__qualname__}@{id(cache):x}"
        elif not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"register_cache(name={name!r}): expected a non-empty string or None")
        cleanup_registry().register(_CACHE_HOOK_PREFIX + name, clear, KIND_CACHE)
        return name

    @staticmethod
    def unregister_cache(name: str) -> bool:
        """Stop clearing the cache registered as ``name``; False if there was none."""
        return cleanup_registry().unregister(_CACHE_HOOK_PREFIX + name, KIND_CACHE)

    @staticmethod
    def clear_caches(clear_lru_caches: bool = True) -> tuple[int, int]:
        """Clear the registered caches and, if asked, every non-empty lru_cache; (registered, lru) cleared.

        A registered cache whose clearing raises is logged and skipped, as in every cleanup.
        """
        registered = len(cleanup_registry().run(KIND_CACHE).run)
        lru = 0
        if clear_lru_caches:
            for obj in gc.get_objects():
                if type(obj) is _LRU_WRAPPER_TYPE and obj.cache_info().currsize:
                    obj.cache_clear()
                    lru += 1
        return registered, lru

    # --- large objects -------------------------------------------------------------------------

    @staticmethod
    def find_large_objects(size_threshold_mb: float = 10.0, top: int = 10) -> list[dict[str, Any]]:
        """The objects still alive above ``size_threshold_mb``, largest first (type and bytes, at most ``top``)."""
        threshold = _check_threshold("find_large_objects", size_threshold_mb)
        _check_top("find_large_objects", top)
        return _find_large_objects(threshold)[:top]

    @staticmethod
    def cleanup_large_objects(
        size_threshold_mb: float = 10.0, *, clear_lru_caches: bool = True, top: int = 10, report: dict[str, Any] | None = None
    ) -> int:
        """Release caches and cycles, trim the heap, then find the large objects still held.

        Returns the number of objects and caches released (cycles collected plus caches
        cleared). ``report``, if a dict, receives the details: ``large_objects_found`` and
        ``large_objects_bytes`` (objects above the threshold that remain referenced),
        ``largest`` (up to ``top`` of them: type and bytes), ``caches_cleared``,
        ``lru_caches_cleared``, ``collected_objects``, ``released``, and the measured
        ``rss_freed_bytes`` / ``heap_freed_bytes``.
        """
        threshold = _check_threshold("cleanup_large_objects", size_threshold_mb)
        _check_top("cleanup_large_objects", top)
        _check_report("cleanup_large_objects", report)
        started = time.perf_counter()
        released = release_memory(lambda: MemoryOptimizer.clear_caches(clear_lru_caches), heap=True)
        registered, lru = released.value
        count = registered + lru + released.collected_objects
        if report is None:
            return count
        found = _find_large_objects(threshold)
        report.update(
            {
                "threshold_bytes": threshold,
                "released": count,
                "large_objects_found": len(found),
                "large_objects_bytes": sum(entry["size_bytes"] for entry in found),
                "largest": found[:top],
                "caches_cleared": registered,
                "lru_caches_cleared": lru,
                "collected_objects": released.collected_objects,
            }
        )
        report.update(_measured(released))
        # The call's duration: the census of what is still held as well as the release.
        report["duration_s"] = time.perf_counter() - started
        return count

    # --- garbage collection --------------------------------------------------------------------

    @staticmethod
    def force_garbage_collection(*, report: dict[str, Any] | None = None) -> int:
        """Collect generations 0, 1 and 2 in turn and trim the heap; the number of objects collected.

        ``report``, if a dict, receives ``collected``, ``collected_by_generation``,
        ``uncollectable`` and the measured ``rss_freed_bytes`` / ``heap_freed_bytes``.
        """
        _check_report("force_garbage_collection", report)
        released = release_memory(lambda: {generation: gc.collect(generation) for generation in range(3)}, collect=False, heap=True)
        by_generation = released.value
        collected = sum(by_generation.values())
        if report is not None:
            report.update({"collected": collected, "collected_by_generation": by_generation, "uncollectable": len(gc.garbage)})
            report.update(_measured(released))
        return collected

    # --- numpy arrays --------------------------------------------------------------------------

    @staticmethod
    def optimize_numpy_arrays(
        array_or_arrays: Any,
        *,
        float_rtol: float = 0.0,
        compact_views: bool = True,
        report: list[dict[str, Any]] | None = None,
    ) -> Any:
        """Shrink arrays where no value changes; see the module docs.

        ``float_rtol`` > 0 accepts float downcasts within that relative tolerance (finite
        values must stay finite). ``report``, if a list, receives one dict per array: key,
        action (``downcast``, ``compacted`` or ``unchanged``), dtypes and bytes before/after.
        """
        rtol = checked_number(
            float_rtol, 0.0, math.inf, high_inclusive=False, where="optimize_numpy_arrays", name="float_rtol", expected="expected a finite number >= 0"
        )
        if rtol >= 1.0:
            raise ConfigurationError(f"optimize_numpy_arrays(float_rtol={float_rtol!r}): expected a relative tolerance below 1")
        if report is not None and not isinstance(report, list):
            raise InvalidArgumentError(f"optimize_numpy_arrays(report={report!r}): expected a list to append to, or None")
        if not (_has_dtype(array_or_arrays) or isinstance(array_or_arrays, (list, tuple, dict))):
            raise InvalidArgumentError(
                f"optimize_numpy_arrays({type(array_or_arrays).__name__} {array_or_arrays!r:.80}): expected an array "
                "(an object with a dtype) or a list, tuple or dict of arrays"
            )
        return _optimize(array_or_arrays, None, rtol, compact_views, report, 0)


# --- helpers -----------------------------------------------------------------------------------


def _find_large_objects(threshold_bytes: int) -> list[dict[str, Any]]:
    numpy = sys.modules.get("numpy")
    ndarray = getattr(numpy, "ndarray", None)
    seen: set[int] = set()
    found: list[dict[str, Any]] = []
    containers = (list, dict, set, frozenset, tuple)
    leaves = (bytes, bytearray, array.array)

    def consider(obj: Any) -> None:
        kind = type(obj)
        if kind in leaves or kind in containers:
            size = sys.getsizeof(obj)
        elif ndarray is not None and isinstance(obj, ndarray):
            if obj.base is not None:  # a view: its owner is counted instead
                return
            size = int(obj.nbytes)
        else:
            return
        if size >= threshold_bytes and id(obj) not in seen:
            seen.add(id(obj))
            found.append({"type": f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else kind.__qualname__, "size_bytes": size})

    tracked = gc.get_objects()
    try:
        for obj in tracked:
            consider(obj)
            for referent in gc.get_referents(obj):
                # bytes, bytearray and numpy arrays are not tracked by gc: reach them through their holders.
                if not gc.is_tracked(referent):
                    consider(referent)
    finally:
        del tracked
    # Locals of running functions live in frames the collector does not list.
    for thread_frame in sys._current_frames().values():
        frame: FrameType | None = thread_frame
        while frame is not None:
            for value in list(frame.f_locals.values()):
                consider(value)
            frame = frame.f_back
    del thread_frame, frame
    found.sort(key=lambda entry: entry["size_bytes"], reverse=True)
    return found


def _has_dtype(obj: Any) -> bool:
    # Looked up on the type (or the instance dict) so a proxy's __getattr__, such as a
    # LazyModelLoader's, is never triggered into loading.
    if isinstance(obj, type):
        return False
    if hasattr(type(obj), "dtype"):
        return True
    attributes = getattr(obj, "__dict__", None)
    return isinstance(attributes, dict) and attributes.get("dtype") is not None


def _numpy_for(obj: Any) -> Any:
    try:
        import numpy
    except ImportError:
        raise ImportError(
            f"optimize_numpy_arrays: {type(obj).__name__} with dtype {getattr(obj, 'dtype', None)} needs numpy, "
            "which is not installed (pip install numpy)"
        ) from None
    return numpy


def _optimize(value: Any, key: Any, rtol: float, compact_views: bool, report: list[dict[str, Any]] | None, depth: int) -> Any:
    if _has_dtype(value):
        return _optimize_array(value, key, rtol, compact_views, report)
    if depth >= _MAX_NESTING:
        return value
    if isinstance(value, dict):
        for item_key, item in list(value.items()):
            value[item_key] = _optimize(item, item_key, rtol, compact_views, report, depth + 1)
        return value
    if isinstance(value, list):
        for index, item in enumerate(value):
            value[index] = _optimize(item, index, rtol, compact_views, report, depth + 1)
        return value
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_optimize(item, index, rtol, compact_views, report, depth + 1) for index, item in enumerate(value))
    return value


def _optimize_array(obj: Any, key: Any, rtol: float, compact_views: bool, report: list[dict[str, Any]] | None) -> Any:
    np = _numpy_for(obj)
    is_ndarray = isinstance(obj, np.ndarray)
    entry: dict[str, Any] = {"key": key, "action": "unchanged", "dtype_before": str(obj.dtype)}
    try:
        values = obj if is_ndarray else np.asarray(obj)
    except Exception as exc:  # not convertible (say, an array on a GPU): leave it as it is
        values = None
        entry["reason"] = f"not convertible to a numpy array: {exc!r}"
    result = obj
    if values is not None:
        entry["bytes_before"] = int(values.nbytes)
        smaller = _downcast(np, values, rtol)
        if smaller is not None:
            if is_ndarray:
                result = smaller
            elif callable(getattr(obj, "astype", None)):
                result = obj.astype(smaller.dtype)
            else:
                entry["reason"] = f"{type(obj).__name__} has no astype()"
            if result is not obj:
                entry["action"] = "downcast"
        elif compact_views and is_ndarray and obj.base is not None:
            base_bytes = _base_nbytes(np, obj)
            if base_bytes is not None and 2 * obj.nbytes <= base_bytes:
                result = np.array(obj, copy=True, order="C")
                entry["action"] = "compacted"
                entry["pinned_base_bytes"] = base_bytes
    entry["dtype_after"] = str(result.dtype)
    if values is not None:
        entry["bytes_after"] = int(np.asarray(result).nbytes) if result is not obj else entry["bytes_before"]
    if report is not None:
        report.append(entry)
    return result


def _base_nbytes(np: Any, view: Any) -> int | None:
    owner = view.base
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    if isinstance(owner, np.ndarray):
        return int(owner.nbytes)
    try:
        with memoryview(owner) as buffer:
            return buffer.nbytes
    except TypeError:
        return None


def _downcast(np: Any, values: Any, rtol: float) -> Any | None:
    """A smaller array holding the same values (within ``rtol`` for floats), or None."""
    dtype = values.dtype
    if dtype in (np.float64, np.complex128):
        target = np.float32 if dtype == np.float64 else np.complex64
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow to inf fails the check below
            smaller = values.astype(target, order="C")
        return smaller if _same_values(np, values, smaller, rtol) else None
    if dtype.kind in "iu" and dtype.itemsize > 1:
        candidates = (np.int8, np.int16, np.int32) if dtype.kind == "i" else (np.uint8, np.uint16, np.uint32)
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        for candidate in candidates:
            info = np.iinfo(candidate)
            if np.dtype(candidate).itemsize < dtype.itemsize and info.min <= low and high <= info.max:
                return values.astype(candidate, order="C")
    return None


def _same_values(np: Any, original: Any, smaller: Any, rtol: float) -> bool:
    """Compare chunk by chunk along the first axis, so the check's temporaries stay small."""
    if original.ndim == 0:
        return _chunk_matches(np, original, smaller, rtol)
    row_elements = max(1, original.size // max(1, original.shape[0]))
    rows = max(1, _CHECK_CHUNK_ELEMENTS // row_elements)
    return all(
        _chunk_matches(np, original[start : start + rows], smaller[start : start + rows], rtol) for start in range(0, original.shape[0], rows)
    )


def _chunk_matches(np: Any, original: Any, smaller: Any, rtol: float) -> bool:
    if rtol == 0.0:
        return bool(np.array_equal(smaller, original, equal_nan=True))
    if not np.array_equal(np.isfinite(smaller), np.isfinite(original)):
        return False
    return bool(np.allclose(smaller, original, rtol=rtol, atol=0.0, equal_nan=True))
