"""A ``/proc/<pid>`` directory a test builds and writes, so a MemoryProbe reads the RSS it sets.

The probe keeps ``statm`` open and reads it with ``pread``; rewriting the file in place makes
the next read see the new value. Used where a test must place RSS exactly (1% around a
threshold), which a real process can only approximate.
"""

from __future__ import annotations

import os
from pathlib import Path

from reer_otel_memory.profiling.probe import MemoryProbe

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


class ProcDir:
    """``statm`` in ``directory``; :attr:`probe` reads it."""

    def __init__(self, directory: Path, rss_bytes: int = 50 * 2**20) -> None:
        self.directory = directory
        self.statm = directory / "statm"
        self.set_rss(rss_bytes)
        self.probe = MemoryProbe(str(directory))

    def set_rss(self, rss_bytes: int) -> None:
        pages = int(rss_bytes) // PAGE_BYTES
        with open(self.statm, "r+" if self.statm.exists() else "w") as statm:
            statm.seek(0)
            statm.write(f"{pages * 2} {pages} 0 0 0 {pages} 0\n".ljust(96))
            statm.truncate()

    def break_statm(self) -> None:
        """Make the file unreadable as statm: every RSS read now raises."""
        with open(self.statm, "r+") as statm:
            statm.write("garbage".ljust(96))

    def close(self) -> None:
        self.probe.close()
