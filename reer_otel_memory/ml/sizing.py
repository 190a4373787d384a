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


def estimate_size(obj: Any, max_objects: int = DEFAULT_MAX_OBJECTS) -> SizeEstimate:
    """Walk ``obj`` (bounded by ``max_objects``) and add up the array and buffer bytes it holds."""
    checked_number(max_objects, 1, whole=True, where="estimate_size", name="max_objects", expected="expected a positive integer")
    numpy = sys.modules.get("numpy")
    ndarray = getattr(numpy, "ndarray", None)
    torch = sys.modules.get("torch")
    tensor_type = getattr(torch, "Tensor", None)

    seen: set[int] = set()
    counted_buffers: set[int] = set()
    total = float64_total = buffers = visited = 0
    queue: deque[Any] = deque([obj])
    # Keep every visited object referenced until the walk ends, so ids stay unique.
    keep_alive: list[Any] = []

    def count(owner: Any, nbytes: int, dtype: Any) -> None:
        nonlocal total, float64_total, buffers
        key = id(owner)
        if key in counted_buffers:
            return
        counted_buffers.add(key)
        keep_alive.append(owner)
        total += nbytes
        buffers += 1
        if dtype is not None and _is_float64(dtype):
            float64_total += nbytes

    while queue:
        if visited >= max_objects:
            return SizeEstimate(total, float64_total, buffers, visited, True)
        item = queue.popleft()
        key = id(item)
        if key in seen or isinstance(item, _ATOMS):
            continue
        seen.add(key)
        keep_alive.append(item)
        visited += 1
        try:
            if ndarray is not None and isinstance(item, ndarray):
                owner = item
                while isinstance(getattr(owner, "base", None), ndarray):
                    owner = owner.base
                count(owner, int(owner.nbytes), owner.dtype)
                continue
            if tensor_type is not None and isinstance(item, tensor_type):
                try:
                    storage = item.untyped_storage()
                    nbytes, storage_key = int(storage.nbytes()), storage.data_ptr()
                except Exception:
                    nbytes, storage_key = int(item.element_size() * item.nelement()), id(item)
                if storage_key not in counted_buffers:
                    counted_buffers.add(storage_key)
                    total += nbytes
                    buffers += 1
                    if _is_float64(item.dtype):
                        float64_total += nbytes
                continue
            if isinstance(item, (bytes, bytearray)):
                count(item, len(item), None)
                continue
            if isinstance(item, memoryview):
                source: object = item.obj  # None for a view made over raw memory by C code (typeshed: never)
                if source is not None:
                    queue.append(source)
                else:
                    count(item, item.nbytes, None)
                continue
            if isinstance(item, _NOT_ENTERED):
                continue
            item_type = type(item)
            if hasattr(item_type, "nbytes") and hasattr(item_type, "dtype"):
                count(item, int(item.nbytes), item.dtype)
                continue
            if isinstance(item, dict):
                queue.extend(item.values())
                continue
            if isinstance(item, (list, tuple, set, frozenset, deque)):
                queue.extend(item)
                continue
            try:
                with memoryview(item) as view:
                    count(item, view.nbytes, None)
                continue
            except TypeError:
                pass
            attributes = getattr(item, "__dict__", None)
            if isinstance(attributes, dict):
                queue.extend(attributes.values())
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
        except Exception:  # an exotic object that refuses inspection: skip it, keep walking
            continue
    return SizeEstimate(total, float64_total, buffers, visited, False)
