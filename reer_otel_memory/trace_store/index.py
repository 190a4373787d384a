"""The trace store's id -> byte-offset index: an open-addressing hash table in two arrays.

About 16 bytes per trace, against several hundred for a dict of str -> int; rebuilt by a scan
when the file changed under it, dropped by cleanups.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable


def index_key(trace_id: str) -> int:
    """The index key of an id: its (per-process) hash; 0 marks an empty slot, so it becomes 1."""
    return hash(trace_id) or 1


class OffsetIndex:
    """trace_id -> byte offset of its latest record: linear probing over two int64 arrays.

    Keys are 64-bit hashes; a lookup reads the record and checks its id, so a collision only
    costs a fallback scan. 16 bytes a slot, at most 60% full.
    """

    __slots__ = ("entries", "file_id", "indexed_through", "keys", "lines_through", "mask", "offsets")

    def __init__(self, file_id: tuple[int, int], capacity: int = 1 << 12) -> None:
        self.keys = array("q", bytes(8 * capacity))
        self.offsets = array("q", bytes(8 * capacity))
        self.mask = capacity - 1
        self.entries = 0
        self.file_id = file_id
        #: Offset just past the last complete line indexed; lines up to there.
        self.indexed_through = 0
        self.lines_through = 0

    @property
    def nbytes(self) -> int:
        return 16 * (self.mask + 1)

    def put_many(self, pairs: Iterable[tuple[int, int]]) -> None:
        keys, offsets, mask = self.keys, self.offsets, self.mask
        limit = int(0.6 * (mask + 1))
        for key, offset in pairs:
            slot = key & mask
            while True:
                found = keys[slot]
                if found == key:
                    offsets[slot] = offset
                    break
                if found == 0:
                    keys[slot] = key
                    offsets[slot] = offset
                    self.entries += 1
                    break
                slot = (slot + 1) & mask
            if self.entries > limit:
                self._grow()
                keys, offsets, mask = self.keys, self.offsets, self.mask
                limit = int(0.6 * (mask + 1))

    def get(self, key: int) -> int:
        keys, mask = self.keys, self.mask
        slot = key & mask
        while True:
            found = keys[slot]
            if found == key:
                return self.offsets[slot]
            if found == 0:
                return -1
            slot = (slot + 1) & mask

    def _grow(self) -> None:
        old_keys, old_offsets = self.keys, self.offsets
        capacity = 2 * (self.mask + 1)
        self.keys = array("q", bytes(8 * capacity))
        self.offsets = array("q", bytes(8 * capacity))
        self.mask = capacity - 1
        self.entries = 0
        self.put_many((key, old_offsets[slot]) for slot, key in enumerate(old_keys) if key)
