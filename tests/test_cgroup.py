"""The container's view: memory cgroup v2, v1 and hybrid trees built for real, and this machine's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from reer_otel_memory._cgroup import MemoryCgroup, memory_cgroup
from reer_otel_memory.errors import ConfigurationError

MB = 1024 * 1024


def _write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def test_v2_usage_working_set_limit_events_and_pressure(tmp_path):
    root = tmp_path / "cgroup"
    _write(root, {"cgroup.controllers": "cpu memory\n", "memory.max": "max\n"})
    _write(root / "kubepods", {"memory.max": f"{512 * MB}\n"})
    _write(
        root / "kubepods" / "pod1",
        {
            "memory.current": f"{300 * MB}\n",
            "memory.max": f"{1024 * MB}\n",
            "memory.stat": f"anon {200 * MB}\nfile {100 * MB}\nactive_file {40 * MB}\ninactive_file {60 * MB}\n",
            "memory.events": "low 0\nhigh 0\nmax 17\noom 3\noom_kill 2\noom_group_kill 0\n",
            "memory.pressure": "some avg10=1.00 avg60=0.50 avg300=0.10 total=2500000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1000\n",
        },
    )
    proc = tmp_path / "cgroup.proc"
    proc.write_text("0::/kubepods/pod1\n")
    cgroup = memory_cgroup(root, proc)
    assert cgroup is not None and cgroup.version == 2
    reading = cgroup.read()
    assert reading.usage_bytes == 300 * MB
    assert reading.working_set_bytes == 240 * MB
    assert reading.limit_bytes == 512 * MB  # the parent's limit binds
    assert reading.limit_path == str(root / "kubepods" / "memory.max")
    assert (reading.oom_kills, reading.limit_hits) == (2, 17)
    assert reading.pressure_stall_s == pytest.approx(2.5)


def test_v1_usage_working_set_limit_oom_and_failcnt(tmp_path):
    root = tmp_path / "cgroup"
    _write(root / "memory", {"memory.usage_in_bytes": "1\n", "memory.limit_in_bytes": "9223372036854771712\n"})
    _write(
        root / "memory" / "docker" / "abc",
        {
            "memory.usage_in_bytes": f"{150 * MB}\n",
            "memory.limit_in_bytes": f"{200 * MB}\n",
            "memory.stat": f"cache {50 * MB}\ninactive_file {1 * MB}\ntotal_inactive_file {30 * MB}\n",
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n",
            "memory.failcnt": "123\n",
        },
    )
    proc = tmp_path / "cgroup.proc"
    proc.write_text("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    cgroup = memory_cgroup(root, proc)
    assert cgroup is not None and cgroup.version == 1
    reading = cgroup.read()
    assert reading.usage_bytes == 150 * MB
    assert reading.working_set_bytes == 120 * MB  # total_inactive_file, not inactive_file
    assert reading.limit_bytes == 200 * MB  # the root's "no limit" is ignored
    assert (reading.oom_kills, reading.limit_hits) == (4, 123)
    assert reading.pressure_stall_s is None  # cgroup v1 has no PSI, and there is no v2 tree here


def test_hybrid_reads_v1_memory_and_the_v2_cgroups_pressure(tmp_path):
    root = tmp_path / "cgroup"
    _write(root / "memory" / "svc", {"memory.usage_in_bytes": f"{10 * MB}\n"})
    _write(root / "unified", {"cgroup.controllers": ""})
    _write(root / "unified" / "svc", {"memory.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=42\n"})
    proc = tmp_path / "cgroup.proc"
    proc.write_text("4:memory:/svc\n0::/svc\n")
    cgroup = memory_cgroup(root, proc)
    assert cgroup is not None and cgroup.version == 1
    reading = cgroup.read()
    assert reading.usage_bytes == reading.working_set_bytes == 10 * MB  # no memory.stat: usage
    assert reading.limit_bytes is None and reading.oom_kills is None and reading.limit_hits is None
    assert reading.pressure_stall_s == pytest.approx(42e-6)


def test_missing_and_unreadable_files_leave_values_absent(tmp_path):
    assert memory_cgroup(tmp_path, tmp_path / "no-such-file") is None
    proc = tmp_path / "cgroup.proc"
    proc.write_text("0::/gone\n")
    assert memory_cgroup(tmp_path, proc) is None  # no memory.current there: no memory controller
    _write(tmp_path / "odd", {"memory.current": "garbage\n", "memory.events": "max x\n", "memory.pressure": "some total=\n"})
    reading = MemoryCgroup(tmp_path / "odd", 2).read()
    assert reading.usage_bytes is None and reading.working_set_bytes is None
    assert reading.limit_hits is None and reading.pressure_stall_s is None


def test_a_bad_version_is_named():
    with pytest.raises(ConfigurationError, match="version 3"):
        MemoryCgroup("/sys/fs/cgroup", 3)


def test_this_process_cgroup_reads_where_the_machine_has_one():
    cgroup = memory_cgroup()
    if cgroup is None:
        pytest.skip("this process is in no memory cgroup here")
    reading = cgroup.read()
    assert reading.usage_bytes is not None and reading.usage_bytes > 0
    assert reading.working_set_bytes is not None and 0 <= reading.working_set_bytes <= reading.usage_bytes


# --- in a container or not --------------------------------------------------------------------


def container_check(tmp_path, cgroup_lines: str, markers: tuple[str, ...] = (), environ: dict[str, str] | None = None) -> bool:
    from reer_otel_memory._cgroup import in_container

    root = tmp_path / "root"
    for marker in markers:
        (root / marker).parent.mkdir(parents=True, exist_ok=True)
        (root / marker).touch()
    root.mkdir(exist_ok=True)
    proc_cgroup = tmp_path / "cgroup"
    proc_cgroup.write_text(cgroup_lines)
    return in_container(proc_cgroup, root, environ or {})


@pytest.mark.parametrize(
    ("lines", "markers", "environ"),
    [
        ("12:memory:/docker/4f1c2a\n", (), {}),
        ("0::/kubepods.slice/kubepods-burstable.slice/cri-containerd-4f1c2a.scope\n", (), {}),
        ("0::/machine.slice/libpod-4f1c2a.scope/container\n", (), {}),
        ("0::/\n", (".dockerenv",), {}),
        ("0::/\n", ("run/.containerenv",), {}),
        ("0::/\n", (), {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}),
    ],
)
def test_a_container_is_known_by_its_runtime(tmp_path, lines, markers, environ):
    assert container_check(tmp_path, lines, markers, environ)


@pytest.mark.parametrize("lines", ["0::/system.slice/myservice.service\n", "12:memory:/user.slice/user-0.slice\n", "0::/\n", ""])
def test_a_service_on_a_host_is_not_a_container(tmp_path, lines):
    assert not container_check(tmp_path, lines)
