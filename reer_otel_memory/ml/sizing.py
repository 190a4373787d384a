"""Estimating the bytes an object graph holds in arrays and buffers (models, managed resources).

:func:`estimate_size` walks an object breadth-first through attributes, ``__slots__`` and Python
containers and adds up the data buffers it finds (numpy arrays and torch storages once each,
buffer-exporting objects, any type with ``nbytes`` and ``dtype``); for a model the weights are
what matter, so containers, strings and numbers themselves are not counted, and functions,
classes and modules are not entered. numpy and torch are looked up in ``sys.modules``, never
imported: a process that has not imported them holds none of their arrays. The walk's cost grows
with the objects it visits, so it stops at ``max_objects`` (:attr:`SizeEstimate.truncated`: the
bytes are then a lower bound).
"""

from __future__ import annotations

import sys
import types
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..config import checked_number

#: Objects visited by default before the walk stops.
DEFAULT_MAX_OBJECTS = 100_000

_ATOMS = (str, int, float, complex, bool, type(None), range, slice)
_NOT_ENTERED = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.CodeType,
    types.FrameType,
    types.GeneratorType,
    types.CoroutineType,
    property,
    staticmethod,
    classmethod,
)


@dataclass(frozen=True)
class SizeEstimate:
    """Bytes found in buffers, of which float64, how many buffers, and whether the walk finished."""

    bytes: int
    float64_bytes: int
    buffers: int
    objects_visited: int
    truncated: bool


def _is_float64(dtype: Any) -> bool:
    text = str(dtype)
    return text in ("float64", "torch.float64", "double", "<f8", "mlx.core.float64")


class _SizeWalk:
    """One walk's state: the queue, the objects seen, the buffers counted and the running totals."""

    def __init__(self, obj: Any) -> None:
        self.ndarray: Any = getattr(sys.modules.get("numpy"), "ndarray", None)
        self.tensor_type: Any = getattr(sys.modules.get("torch"), "Tensor", None)
        self.seen: set[int] = set()
        self.counted_buffers: set[int] = set()
        self.total = self.float64_total = self.buffers = self.visited = 0
        self.queue: deque[Any] = deque([obj])
        # Keep every visited object referenced until the walk ends, so ids stay unique.
        self.keep_alive: list[Any] = []

    def estimate(self, truncated: bool) -> SizeEstimate:
        return SizeEstimate(self.total, self.float64_total, self.buffers, self.visited, truncated)

    def count(self, owner: Any, nbytes: int, dtype: Any) -> None:
        key = id(owner)
        if key in self.counted_buffers:
            return
        self.counted_buffers.add(key)
        self.keep_alive.append(owner)
        self.total += nbytes
        self.buffers += 1
        if dtype is not None and _is_float64(dtype):
            self.float64_total += nbytes

    def count_tensor(self, item: Any) -> None:
        try:
            storage = item.untyped_storage()
            nbytes, storage_key = int(storage.nbytes()), storage.data_ptr()
        except Exception:
            nbytes, storage_key = int(item.element_size() * item.nelement()), id(item)
        if storage_key not in self.counted_buffers:
            self.counted_buffers.add(storage_key)
            self.total += nbytes
            self.buffers += 1
            if _is_float64(item.dtype):
                self.float64_total += nbytes

    def visit(self, item: Any) -> None:
        """Count ``item`` if it is a buffer, else queue what it holds."""
        ndarray = self.ndarray
        if ndarray is not None and isinstance(item, ndarray):
            owner = item
            while isinstance(getattr(owner, "base", None), ndarray):
                owner = owner.base
            self.count(owner, int(owner.nbytes), owner.dtype)
            return
        if self.tensor_type is not None and isinstance(item, self.tensor_type):
            self.count_tensor(item)
            return
        if isinstance(item, (bytes, bytearray)):
            self.count(item, len(item), None)
            return
        if isinstance(item, memoryview):
            source: object = item.obj  # None for a view made over raw memory by C code (typeshed: never)
            if source is not None:
                self.queue.append(source)
            else:
                self.count(item, item.nbytes, None)
            return
        if isinstance(item, _NOT_ENTERED):
            return
        item_type = type(item)
        if hasattr(item_type, "nbytes") and hasattr(item_type, "dtype"):
            self.count(item, int(item.nbytes), item.dtype)
            return
        if isinstance(item, dict):
            self.queue.extend(item.values())
            return
        if isinstance(item, (list, tuple, set, frozenset, deque)):
            self.queue.extend(item)
            return
        try:
            with memoryview(item) as view:
                self.count(item, view.nbytes, None)
            return
        except TypeError:
            pass
        attributes = getattr(item, "__dict__", None)
        if isinstance(attributes, dict):
            self.queue.extend(attributes.values())
        _queue_slot_values(self.queue, item, item_type)


def _queue_slot_values(queue: deque[Any], item: Any, item_type: type) -> None:
    """Queue the values of ``item``'s ``__slots__`` that are set, through its whole MRO."""
    for klass in item_type.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if not isinstance(slot, str) or slot in ("__dict__", "__weakref__"):
                continue
            attribute = slot
            if slot.startswith("__") and not slot.endswith("__"):
                attribute = f"_{klass.__name__.lstrip('_')}{slot}"  # name mangling
            try:
                queue.append(object.__getattribute__(item, attribute))
            except AttributeError:
                pass


def estimate_size(obj: Any, max_objects: int = DEFAULT_MAX_OBJECTS) -> SizeEstimate:
    """Walk ``obj`` (bounded by ``max_objects``) and add up the array and buffer bytes it holds."""
    checked_number(max_objects, 1, whole=True, where="estimate_size", name="max_objects", expected="expected a positive integer")
    walk = _SizeWalk(obj)
    queue, seen, keep_alive = walk.queue, walk.seen, walk.keep_alive
    while queue:
        if walk.visited >= max_objects:
            return walk.estimate(True)
        item = queue.popleft()
        key = id(item)
        if key in seen or isinstance(item, _ATOMS):
            continue
        seen.add(key)
        keep_alive.append(item)
        walk.visited += 1
        try:
            walk.visit(item)
        except Exception:  # an exotic object that refuses inspection: skip it, keep walking
            continue
    return walk.estimate(False)
