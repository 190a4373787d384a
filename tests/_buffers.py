"""Real allocations whose RSS effect is known: touched buffers on a heap with nothing to reuse.

A buffer only adds to RSS if its pages are new: memory a previous test freed may still be
resident in the allocator's free lists, and a later allocation that reuses it grows nothing.
Tests that assert RSS growth call :func:`release_free_memory` first, which hands the free
lists back to the OS (``malloc_trim``), so every page they touch afterwards is a new one.
"""

from __future__ import annotations

import gc

import psutil

KiB = 1024
MiB = 1024 * KiB
PAGE_BYTES = 4096


def touched(n_bytes: int) -> bytearray:
    """A buffer whose every page has been written (so it is resident)."""
    buffer = bytearray(n_bytes)
    buffer[::PAGE_BYTES] = b"x" * len(range(0, n_bytes, PAGE_BYTES))
    return buffer


def release_free_memory() -> None:
    """Collect garbage and return the allocator's free memory to the OS, where supported."""
    gc.collect()
    heap_trim = getattr(psutil, "heap_trim", None)
    if heap_trim is not None:
        heap_trim()
