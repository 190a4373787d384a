"""Real allocations whose RSS effect is known: touched buffers on a heap with nothing to reuse.

A buffer only adds to RSS if its pages are new: memory a previous test freed may still be
resident in the allocator's free lists, and a later allocation that reuses it grows nothing.
Tests that assert RSS growth call :func:`release_free_memory` first, which hands the free
lists back to the OS (``malloc_trim``), so every page they touch afterwards is a new one.

Python's small objects come from its own arenas, which ``malloc_trim`` does not touch: a test
that retains small objects first fills the free room in those arenas with
:func:`fill_free_small_object_memory`, so what it retains afterwards lands on new pages.
"""

from __future__ import annotations

import ctypes
import gc
import mmap

import psutil

from reer_otel_memory import PROBE

KiB = 1024
MiB = 1024 * KiB
PAGE_BYTES = 4096


def touched(n_bytes: int) -> bytearray:
    """A buffer whose every page has been written (so it is resident)."""
    buffer = bytearray(n_bytes)
    buffer[::PAGE_BYTES] = b"x" * len(range(0, n_bytes, PAGE_BYTES))
    return buffer


def mapped(n_bytes: int) -> mmap.mmap:
    """Fresh anonymous pages, every one written: resident and new whatever the allocators hold free."""
    block = mmap.mmap(-1, n_bytes)
    for offset in range(0, n_bytes, PAGE_BYTES):
        block[offset] = 1
    return block


def release_free_memory() -> None:
    """Collect garbage and return the allocator's free memory to the OS, where supported."""
    gc.collect()
    heap_trim = getattr(psutil, "heap_trim", None)
    if heap_trim is not None:
        heap_trim()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def free_heap_bytes() -> int | None:
    """Bytes the C allocator holds free in its arenas (glibc's ``mallinfo2().fordblks``); None elsewhere.

    A request larger than this cannot reuse a free chunk: it gets fresh pages. :func:`release_free_memory`
    hands a free chunk's pages back but keeps the chunk, and ``calloc`` zeroes (so touches) a
    reused chunk where fresh pages are zero already.
    """
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError, TypeError):
        return None
    mallinfo2.restype = _MallInfo2
    return int(mallinfo2().fordblks)


#: About what :func:`small_objects` allocates.
SMALL_OBJECTS_BYTES = 220 * 1024


def small_objects() -> list[dict[str, int]]:
    """About 220 KiB of small Python objects (each well under pymalloc's 512-byte limit)."""
    return [{"row": i} for i in range(1200)]


def fill_free_small_object_memory(max_chunks: int = 2000) -> list[object]:
    """Allocate small objects until RSS grows by most of every chunk; keep the result alive meanwhile.

    Growth by a few pages is not enough: an earlier test that freed many small objects leaves
    free pools scattered through arenas that stay resident, and chunks keep landing in them.
    """
    ballast: list[object] = []
    growing_in_a_row = 0
    rss = PROBE.rss_bytes()
    while growing_in_a_row < 4:
        assert len(ballast) < max_chunks, "Python's free small-object memory never ran out"
        ballast.append(small_objects())
        now = PROBE.rss_bytes()
        growing_in_a_row = growing_in_a_row + 1 if now - rss >= SMALL_OBJECTS_BYTES // 2 else 0
        rss = now
    return ballast
