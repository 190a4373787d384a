"""The container's view of memory: the process's memory cgroup, as the kernel's OOM killer sees it.

In a container the kernel OOM-kills on the cgroup's usage (page cache and every process in the
cgroup included), not on one process's RSS. This module finds the process's memory cgroup (v2,
v1, or the hybrid layout) from ``/proc/self/cgroup`` and reads usage, working set (what the
kubelet evicts on), limit, OOM kills, limit hits and pressure stall, each guarded: a file missing
or unreadable leaves that value None. docs/telemetry.md says which file gives each. Both roots
are parameters, so tests point them at trees they build.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigurationError

#: Where the kernel mounts the cgroup hierarchies, and where a process lists its cgroups.
DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup"
DEFAULT_PROC_CGROUP = "/proc/self/cgroup"

# cgroup v1 reports "no limit" as a page-rounded LONG_MAX; anything this large is no limit.
_UNLIMITED_BYTES = 1 << 62


@dataclass(frozen=True)
class CgroupMemory:
    """One reading of a memory cgroup, in bytes, counts and seconds; None where unreadable."""

    #: 1 or 2: which cgroup version the memory controller is mounted as.
    version: int
    #: The cgroup's directory.
    path: str
    usage_bytes: int | None
    #: Usage minus inactive file cache, as cAdvisor and the kubelet compute it.
    working_set_bytes: int | None
    #: The smallest limit from this cgroup up to the root; None where none is set.
    limit_bytes: int | None
    #: The file that set :attr:`limit_bytes`.
    limit_path: str | None
    #: Processes the kernel OOM-killed in this cgroup (and, in v2, its descendants).
    oom_kills: int | None
    #: Times usage hit the limit (v2 ``max`` events, v1 ``failcnt``).
    limit_hits: int | None
    #: Seconds in which some task stalled waiting for memory (PSI); None without PSI (plain v1).
    pressure_stall_s: float | None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _read_keyed(path: Path, key: str) -> int | None:
    """The value of ``key`` in a flat-keyed file (``memory.stat``, ``memory.events``)."""
    text = _read_text(path)
    if text is None:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


def _read_limit(path: Path) -> int | None:
    text = _read_text(path)
    if text is None or text.strip() == "max":
        return None
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if 0 < value < _UNLIMITED_BYTES else None


def _read_pressure_s(path: Path) -> float | None:
    """Seconds from the ``total=`` (microseconds) of the ``some`` line of a PSI file."""
    text = _read_text(path)
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith("some "):
            for field in line.split():
                if field.startswith("total="):
                    try:
                        return int(field[6:]) / 1e6
                    except ValueError:
                        return None
    return None


def cgroup_paths(proc_cgroup: str | os.PathLike[str] = DEFAULT_PROC_CGROUP) -> tuple[str | None, str | None]:
    """(v2 path, v1 memory path) of the process from its ``/proc/<pid>/cgroup``; None where absent."""
    v2 = v1 = None
    text = _read_text(Path(proc_cgroup))
    for line in (text or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _walk_up(base: Path, directory: Path) -> list[Path]:
    """``directory`` and each of its ancestors up to and including ``base``."""
    found = [directory]
    current = directory
    while current != base and base in current.parents:
        current = current.parent
        found.append(current)
    return found


def v2_root(cgroup_root: Path) -> Path:
    """Where the v2 hierarchy is: ``<root>/unified`` in the hybrid layout, else the root."""
    # In the hybrid layout the v2 hierarchy is mounted at <root>/unified.
    unified = cgroup_root / "unified"
    return unified if (unified / "cgroup.controllers").exists() else cgroup_root


class MemoryCgroup:
    """A memory cgroup's directory and how to read it (version 1 or 2)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        version: int,
        *,
        root: str | os.PathLike[str] | None = None,
        pressure_file: str | os.PathLike[str] | None = None,
    ) -> None:
        """``root`` bounds the walk up for the limit (default: the directory alone);
        ``pressure_file`` is the PSI file to read (default: ``memory.pressure`` in the directory, v2 only)."""
        if version not in (1, 2):
            raise ConfigurationError(f"MemoryCgroup version {version!r}: expected 1 or 2")
        self.directory = Path(directory)
        self.version = version
        self.root = Path(root) if root is not None else self.directory
        if pressure_file is None and version == 2:
            pressure_file = self.directory / "memory.pressure"
        self.pressure_file = Path(pressure_file) if pressure_file is not None else None

    def __repr__(self) -> str:
        return f"MemoryCgroup({str(self.directory)!r}, version={self.version})"

    def limit(self) -> tuple[int | None, str | None]:
        """The smallest limit from this cgroup up to the root, and the file that set it."""
        name = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
        best: tuple[int | None, str | None] = (None, None)
        for directory in _walk_up(self.root, self.directory):
            value = _read_limit(directory / name)
            if value is not None and (best[0] is None or value < best[0]):
                best = (value, str(directory / name))
        return best

    def read(self) -> CgroupMemory:
        """Every value now (a few file reads)."""
        directory = self.directory
        if self.version == 2:
            usage = _read_int(directory / "memory.current")
            inactive = _read_keyed(directory / "memory.stat", "inactive_file")
            oom_kills = _read_keyed(directory / "memory.events", "oom_kill")
            limit_hits = _read_keyed(directory / "memory.events", "max")
        else:
            usage = _read_int(directory / "memory.usage_in_bytes")
            inactive = _read_keyed(directory / "memory.stat", "total_inactive_file")
            oom_kills = _read_keyed(directory / "memory.oom_control", "oom_kill")
            limit_hits = _read_int(directory / "memory.failcnt")
        working_set = None
        if usage is not None:
            working_set = max(0, usage - inactive) if inactive is not None else usage
        limit, limit_path = self.limit()
        pressure = _read_pressure_s(self.pressure_file) if self.pressure_file is not None else None
        return CgroupMemory(self.version, str(directory), usage, working_set, limit, limit_path, oom_kills, limit_hits, pressure)


#: What container runtimes name the cgroups of their containers (``/docker/<id>``,
#: ``/kubepods/...``, ``cri-containerd-<id>.scope``, ``libpod-<id>.scope``, ...), seen where the
#: container has no private cgroup namespace.
_RUNTIME_CGROUP_PREFIXES = ("docker", "kubepods", "containerd", "cri-containerd", "crio", "libpod", "lxc", "garden")
#: Files container runtimes put in a container's root: Docker's, and Podman's (and CRI-O's).
_RUNTIME_MARKERS = (".dockerenv", "run/.containerenv")


def in_container(
    proc_cgroup: str | os.PathLike[str] = DEFAULT_PROC_CGROUP,
    root: str | os.PathLike[str] = "/",
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Whether the process runs in a container: a runtime's marker file under ``root``, the
    variables Kubernetes gives every container (``KUBERNETES_SERVICE_HOST``), or a cgroup path
    a container runtime made. A systemd service's cgroup on a host is none of these."""
    environ = os.environ if environ is None else environ
    if environ.get("KUBERNETES_SERVICE_HOST"):
        return True
    if any((Path(root) / marker).exists() for marker in _RUNTIME_MARKERS):
        return True
    for line in (_read_text(Path(proc_cgroup)) or "").splitlines():
        path = line.split(":", 2)[-1]
        if any(part.startswith(_RUNTIME_CGROUP_PREFIXES) for part in path.split("/")):
            return True
    return False


def memory_cgroup(
    cgroup_root: str | os.PathLike[str] = DEFAULT_CGROUP_ROOT,
    proc_cgroup: str | os.PathLike[str] = DEFAULT_PROC_CGROUP,
) -> MemoryCgroup | None:
    """The memory cgroup of the process ``proc_cgroup`` describes, or None where there is none.

    cgroup v2 is used where its directory has ``memory.current`` (the memory controller is on);
    otherwise the v1 memory hierarchy. In the hybrid layout (v1 memory, v2 at ``unified``), the
    v2 cgroup's ``memory.pressure`` still gives the stall time where the kernel has PSI.
    """
    root = Path(cgroup_root)
    v2, v1 = cgroup_paths(proc_cgroup)
    v2_directory = None
    if v2 is not None:
        unified = v2_root(root)
        v2_directory = unified / v2.lstrip("/")
        if (v2_directory / "memory.current").exists():
            return MemoryCgroup(v2_directory, 2, root=unified)
    if v1 is not None:
        v1_root = root / "memory"
        v1_directory = v1_root / v1.lstrip("/")
        if (v1_directory / "memory.usage_in_bytes").exists():
            pressure = v2_directory / "memory.pressure" if v2_directory is not None and (v2_directory / "memory.pressure").exists() else None
            return MemoryCgroup(v1_directory, 1, root=v1_root, pressure_file=pressure)
    return None
