"""A real OOM kill: a child in a 200 MiB memory cgroup grows inside a profiled operation until the kernel kills it.

The cgroup is created under this process's own memory cgroup (cgroup v1 here, with its v2
cgroup beside it in the hybrid layout for pressure; cgroup v2 where the machine has only that),
the child is moved into it, and the test checks what the cgroup reader sees while the child
runs, that the kernel's OOM-kill counter rises, that the flight recorder file names the
operation that was running and its growth, and that the next process on the file reports the
death once. Skips only where the machine does not let this process create a memory cgroup.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _children import clean_environment
from conftest import wait_for

from reer_otel_memory import _names as names
from reer_otel_memory._cgroup import DEFAULT_CGROUP_ROOT, cgroup_paths, memory_cgroup
from reer_otel_memory.profiling.flight_recorder import read_flight_record

MB = 1024 * 1024
LIMIT_BYTES = 200 * MB
OPERATION = "load_too_big_model"

GROWER = f"""
import json, sys
sys.stdin.readline()  # wait until the test has moved this process into the cgroup
from reer_otel_memory import memory_context
from reer_otel_memory._cgroup import memory_cgroup
from reer_otel_memory.profiling.flight_recorder import process_flight_recorder
from reer_otel_memory.profiling.probe import process_probe

recorder, probe, cgroup = process_flight_recorder(), process_probe(), memory_cgroup()
held = []
with memory_context("{OPERATION}"):  # the profiled operation holds its own flight recorder slot
    paused = False
    while True:
        held.append(b"x" * (8 << 20))  # touched: every page is charged to the cgroup
        rss, reading = probe.rss_bytes(), cgroup.read()
        recorder.record_sample(rss, reading.working_set_bytes, None, "ok")
        if not paused and reading.working_set_bytes > {LIMIT_BYTES // 2}:
            paused = True
            print(json.dumps({{"rss": rss, "cgroup": reading.path, "limit": reading.limit_bytes}}), flush=True)
            sys.stdin.readline()  # the test reads the cgroup from outside, then lets it grow on
"""

SUCCESSOR = """
import json, logging
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
from reer_otel_memory.profiling.flight_recorder import process_flight_recorder
recorder = process_flight_recorder()
print(json.dumps(recorder.predecessor.report() if recorder.predecessor else None))
"""


@dataclass
class ChildCgroups:
    """The cgroup directories made for the child: (directory, file to write its pid to)."""

    created: list[Path] = field(default_factory=list)
    join: list[Path] = field(default_factory=list)


def _make_cgroups(name: str) -> ChildCgroups:
    root = Path(DEFAULT_CGROUP_ROOT)
    v2, v1 = cgroup_paths()
    made = ChildCgroups()
    try:
        if v1 is not None and (root / "memory").is_dir():
            directory = root / "memory" / v1.lstrip("/") / name
            directory.mkdir()
            made.created.append(directory)
            (directory / "memory.limit_in_bytes").write_text(str(LIMIT_BYTES))
            if (directory / "memory.memsw.limit_in_bytes").exists():  # swap must not save it
                (directory / "memory.memsw.limit_in_bytes").write_text(str(LIMIT_BYTES))
            made.join.append(directory / "cgroup.procs")
            unified = root / "unified"
            if v2 is not None and (unified / "cgroup.controllers").exists():
                # The hybrid layout: a v2 cgroup beside it gives the child its own PSI file.
                pressure = unified / v2.lstrip("/") / name
                pressure.mkdir()
                made.created.append(pressure)
                made.join.append(pressure / "cgroup.procs")
        elif v2 is not None:
            directory = root / v2.lstrip("/") / name
            directory.mkdir()
            made.created.append(directory)
            (directory / "memory.max").write_text(str(LIMIT_BYTES))
            if (directory / "memory.swap.max").exists():
                (directory / "memory.swap.max").write_text("0")
            made.join.append(directory / "cgroup.procs")
        else:
            pytest.skip("this process is in no memory cgroup, so none can be nested under it")
    except PermissionError as exc:
        _remove(made)
        pytest.skip(f"creating a memory cgroup is not permitted here: {exc}")
    except OSError as exc:
        _remove(made)
        pytest.skip(f"this machine does not let a test create a memory cgroup with a limit: {exc}")
    return made


def _remove(made: ChildCgroups) -> None:
    for directory in reversed(made.created):

        def removed(directory: Path = directory) -> bool:
            try:
                directory.rmdir()
            except FileNotFoundError:
                return True
            except OSError:
                return False  # the killed child is still leaving it
            return True

        wait_for(removed, timeout_s=10, message=f"removing {directory}")


@pytest.fixture
def cgroups() -> Iterator[ChildCgroups]:
    made = _make_cgroups(f"reer-oom-test-{uuid.uuid4().hex[:8]}")
    try:
        yield made
    finally:
        _remove(made)


def _oom_kills(directory: Path) -> int:
    for name, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
        try:
            for line in (directory / name).read_text().splitlines():
                if line.split()[0] == key:
                    return int(line.split()[1])
        except FileNotFoundError:
            continue
    raise AssertionError(f"no OOM-kill counter in {directory}")


def test_a_child_oom_killed_in_a_200_mib_cgroup_is_seen_and_its_flight_record_names_the_operation(tmp_path, cgroups):
    timeline: dict[str, float] = {}
    started = time.monotonic()
    recorder_path = tmp_path / "service.flight"
    env = clean_environment({names.ENV_FLIGHT_RECORDER: str(recorder_path)})
    memory_directory = cgroups.created[0]
    kills_before = _oom_kills(memory_directory)

    child = subprocess.Popen([sys.executable, "-c", GROWER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for procs in cgroups.join:
            procs.write_text(str(child.pid))
        timeline["moved into the cgroup"] = time.monotonic() - started
        child.stdin.write("\n")
        child.stdin.flush()
        halfway = json.loads(child.stdout.readline() or "{}")
        assert halfway, f"the child ended before growing: {child.wait(10)}, {child.stderr.read()}"
        timeline["grown past half the limit"] = time.monotonic() - started
        assert halfway["limit"] == LIMIT_BYTES  # seen from inside

        # Read from outside, through the child's own /proc entry.
        cgroup = memory_cgroup(proc_cgroup=f"/proc/{child.pid}/cgroup")
        assert cgroup is not None and str(cgroup.directory) == str(memory_directory)
        seen = cgroup.read()
        assert seen.limit_bytes == LIMIT_BYTES
        assert seen.working_set_bytes is not None and LIMIT_BYTES // 2 <= seen.working_set_bytes <= LIMIT_BYTES
        assert seen.usage_bytes is not None and seen.usage_bytes >= seen.working_set_bytes
        if len(cgroups.join) > 1 or cgroup.version == 2:
            assert seen.pressure_stall_s is not None and seen.pressure_stall_s >= 0
        assert seen.oom_kills == kills_before

        child.stdin.write("\n")
        child.stdin.flush()
        returncode = child.wait(30)
        timeline["killed"] = time.monotonic() - started
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        stderr = child.stderr.read()
        for stream in (child.stdin, child.stdout, child.stderr):
            stream.close()
    assert returncode == -9, f"expected the OOM killer's SIGKILL, got {returncode}; stderr:\n{stderr}"
    after = memory_cgroup(proc_cgroup=_proc_file(tmp_path, memory_directory, cgroups)).read()
    assert after.oom_kills == kills_before + 1
    assert _oom_kills(memory_directory) == kills_before + 1

    record = read_flight_record(recorder_path)
    assert not record.clean_shutdown and record.pid == child.pid
    assert [operation.name for operation in record.running] == [OPERATION]
    growth = record.running[0].growth_bytes
    assert growth is not None and growth >= LIMIT_BYTES // 2
    assert record.last_sample is not None and record.last_sample.working_set_bytes > LIMIT_BYTES // 2

    postmortem = subprocess.run([sys.executable, "-m", "reer_otel_memory", "postmortem", str(recorder_path)], capture_output=True, text=True, timeout=60)
    assert postmortem.returncode == 0, postmortem.stderr
    assert OPERATION in postmortem.stdout and "died without a clean shutdown" in postmortem.stdout

    # The next process on the file reports the death once, then the file is its own.
    successor = subprocess.run([sys.executable, "-c", SUCCESSOR], capture_output=True, text=True, env=env, timeout=60)
    assert successor.returncode == 0, successor.stderr
    report = json.loads(successor.stdout)
    assert report["pid"] == child.pid and report["running_operations"] == [OPERATION]
    assert report["running_growth_bytes"][0] == growth
    assert successor.stderr.count("the previous process died") == 1 and OPERATION in successor.stderr
    again = subprocess.run([sys.executable, "-c", SUCCESSOR], capture_output=True, text=True, env=env, timeout=60)
    assert json.loads(again.stdout) is None and "previous process died" not in again.stderr
    timeline["successors done"] = time.monotonic() - started
    print("timeline:", ", ".join(f"{event} at {seconds:.2f} s" for event, seconds in timeline.items()))


def _proc_file(tmp_path: Path, memory_directory: Path, cgroups: ChildCgroups) -> Path:
    """A /proc/<pid>/cgroup file naming the (now empty) test cgroup, to read it after the child is gone."""
    root = Path(DEFAULT_CGROUP_ROOT)
    relative = memory_directory.relative_to(root / "memory") if (root / "memory") in memory_directory.parents else memory_directory.relative_to(root)
    line = f"4:memory:/{relative}\n" if (root / "memory") in memory_directory.parents else f"0::/{relative}\n"
    proc = tmp_path / "cgroup.proc"
    proc.write_text(line)
    return proc
