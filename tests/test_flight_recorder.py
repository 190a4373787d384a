"""The flight recorder: a memory-mapped file that survives SIGKILL, read back by the next process and the postmortem command."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys

import pytest
from _forks import in_forked_child
from conftest import IN_CI, wait_for

from reer_otel_memory import _names as names
from reer_otel_memory.cli import main
from reer_otel_memory.errors import ConfigurationError
from reer_otel_memory.profiling.flight_recorder import (
    _SAMPLE,
    _SAMPLES_OFFSET,
    FILE_BYTES,
    SAMPLE_CAPACITY,
    SLOT_CAPACITY,
    FlightRecorder,
    read_flight_record,
    render_postmortem,
)

MB = 1024 * 1024

KILLED = """
import json, os, sys
from reer_otel_memory.profiling.flight_recorder import FlightRecorder
recorder = FlightRecorder.open(sys.argv[1])
finished = recorder.operation_started("finished_before", 10 << 20)
recorder.operation_finished(finished)
recorder.operation_started("train_epoch", 100 << 20, device_start=1 << 20)
for step in range(30):
    recorder.record_sample((100 + step * 10) << 20, (120 + step * 10) << 20, 5 << 20, "ok" if step < 20 else "alert")
recorder.level_changed("ok", "alert", 300 << 20)
print(json.dumps({"pid": os.getpid()}), flush=True)
sys.stdin.readline()  # killed here
"""


def _killed_mid_operation(tmp_path):
    path = tmp_path / "killed.flight"
    child = subprocess.Popen([sys.executable, "-c", KILLED, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    pid = json.loads(child.stdout.readline())["pid"]
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    child.stdin.close()
    child.stdout.close()
    return path, pid


def test_a_sigkilled_process_leaves_its_samples_running_operations_and_level_changes(tmp_path):
    path, pid = _killed_mid_operation(tmp_path)
    record = read_flight_record(path)
    assert record.pid == pid and not record.clean_shutdown
    assert [operation.name for operation in record.running] == ["train_epoch"]
    operation = record.running[0]
    assert operation.rss_start_bytes == 100 * MB and operation.device_start_bytes == MB
    assert operation.growth_bytes == 290 * MB
    assert [sample.rss_bytes for sample in record.samples] == [(100 + step * 10) * MB for step in range(30)]
    assert record.samples[-1].level == "alert" and record.samples[-1].device_used_bytes == 5 * MB
    assert [(change.old, change.new, change.value_bytes) for change in record.level_changes] == [("ok", "alert", 300 * MB)]

    text = render_postmortem(record)
    assert f"pid {pid}" in text and "died without a clean shutdown" in text
    assert "train_epoch (+290.0 MB from 100.0 MB)" in text
    assert "ok -> alert" in text and "█" in text


def test_the_next_process_reports_the_death_once_then_owns_the_file(tmp_path, caplog):
    path, pid = _killed_mid_operation(tmp_path)
    with caplog.at_level("WARNING", logger="reer_otel_memory.profiling.flight_recorder"):
        recorder = FlightRecorder.open(path)
    assert recorder.predecessor is not None
    report = recorder.predecessor.report()
    assert report["pid"] == pid and report["running_operations"] == ["train_epoch"] and report["last_rss_bytes"] == 390 * MB
    assert [record.getMessage() for record in caplog.records if "previous process died" in record.getMessage()] != []
    assert read_flight_record(path).pid == os.getpid()  # the file is this process's now
    with pytest.raises(ConfigurationError, match="in use by the running process"):
        FlightRecorder.open(path)
    recorder.close()
    caplog.clear()
    with caplog.at_level("WARNING", logger="reer_otel_memory.profiling.flight_recorder"):
        again = FlightRecorder.open(path)  # a clean shutdown is no death
    assert again.predecessor is None and not caplog.records
    again.close()
    assert read_flight_record(path).clean_shutdown


def test_the_ring_keeps_the_latest_samples_and_full_slot_tables_degrade(tmp_path):
    recorder = FlightRecorder.open(tmp_path / "ring.flight")
    for index in range(3000):
        recorder.record_sample(index)
    slots = [recorder.operation_started(f"op{index}", index) for index in range(SLOT_CAPACITY + 5)]
    assert slots[-5:] == [-1] * 5  # the table is full: those operations go unrecorded
    recorder.operation_finished(-1)
    for slot in slots[:10]:
        recorder.operation_finished(slot)
    # Ends cost no system call: with nothing else written, the recorder's thread writes them.
    def ends_written():
        found = read_flight_record(recorder.path)
        return found if len(found.running) == SLOT_CAPACITY - 10 else None

    record = wait_for(ends_written, timeout_s=5, message="the ends of 10 operations in the file")
    recorder.close()
    assert [sample.rss_bytes for sample in record.samples] == list(range(3000 - 1024, 3000))
    assert len(record.running) == SLOT_CAPACITY - 10
    assert recorder.operation_started("after close", 1) >= 0 and not recorder.active  # harmless


def test_a_forked_child_does_not_write_into_its_parents_file(tmp_path):
    recorder = FlightRecorder.open(tmp_path / "parent.flight")
    recorder.record_sample(1 * MB)

    def child() -> bool:
        recorder.record_sample(999 * MB)
        recorder.operation_started("in_the_child", 1)
        return recorder.active

    assert in_forked_child(child) is False
    record = read_flight_record(recorder.path)
    recorder.close()
    assert [sample.rss_bytes for sample in record.samples] == [MB] and record.running == []


def test_the_environment_variable_opens_the_process_recorder_and_a_bad_path_is_one_log_line(tmp_path):
    code = (
        "import logging; logging.basicConfig();"
        "from reer_otel_memory.profiling.flight_recorder import process_flight_recorder as p;"
        "print(p() is p(), p() is not None)"
    )
    env = {**os.environ, names.ENV_FLIGHT_RECORDER: str(tmp_path / "env.flight")}
    ok = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert ok.stdout.split() == ["True", "True"], ok.stderr
    assert read_flight_record(tmp_path / "env.flight").clean_shutdown  # closed at exit
    bad = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={**os.environ, names.ENV_FLIGHT_RECORDER: str(tmp_path / "missing" / "x")}
    )
    assert bad.returncode == 0 and bad.stdout.split() == ["True", "False"]
    assert bad.stderr.count(names.ENV_FLIGHT_RECORDER) == 1


def test_postmortem_command(tmp_path, capsys):
    path, _pid = _killed_mid_operation(tmp_path)
    assert main(["postmortem", str(path), "--seconds", "30"]) == 0
    out = capsys.readouterr().out
    assert "train_epoch" in out and "last 30 s before the end" in out
    not_a_recorder = tmp_path / "notes.txt"
    not_a_recorder.write_text("hello")
    assert main(["postmortem", str(not_a_recorder)]) == 2
    assert "not a flight recorder file" in capsys.readouterr().err
    assert main(["postmortem", str(tmp_path / "missing")]) == 2
    assert "cannot read" in capsys.readouterr().err


SEEN_IN_FLIGHT = """
import json
from reer_otel_memory import memory_profile
from reer_otel_memory.profiling.flight_recorder import SLOT_CAPACITY, process_flight_recorder

recorder = process_flight_recorder()

@memory_profile(operation_name="fast")
def fast():
    return SLOT_CAPACITY - len(recorder._free_slots)  # slots in use; reading the file would make the call slow

print(json.dumps([fast() for _ in range(20)]))
"""


def test_with_a_recorder_and_no_sdk_every_call_of_a_fast_operation_is_in_flight(tmp_path):
    # Without an SDK fast operations are measured on a sample of calls, but a configured recorder
    # must see every operation running, or a postmortem could miss the one that was killed.
    path = tmp_path / "fast.flight"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("REER_MEMORY_", "OTEL_"))}
    env[names.ENV_FLIGHT_RECORDER] = str(path)
    done = subprocess.run([sys.executable, "-c", SEEN_IN_FLIGHT, str(path)], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [1] * 20


# --- a hostile file system: truncation, a full disk, files that are not the recorder's --------

TRUNCATED_UNDER_ME = """
import sys
from reer_otel_memory.profiling.flight_recorder import FlightRecorder
recorder = FlightRecorder.open(sys.argv[1])
recorder.record_sample(1 << 20)
print("ready", flush=True)
sys.stdin.readline()  # the parent has truncated the file
for step in range(200):
    slot = recorder.operation_started("after_truncation", step)
    recorder.level_changed("ok", "alert", step)
    recorder.operation_finished(slot)
recorder.operation_started("still_running", 7 << 20)
print("done", flush=True)
sys.stdin.readline()  # truncated again
recorder.record_sample(3 << 20)
print("sampled", flush=True)
sys.stdin.readline()
"""


def _truncate(path, how):
    if how == "truncate -s0":
        os.truncate(path, 0)
    else:
        with open(path, "w"):  # what the shell's `> file` and logrotate's copytruncate do
            pass
    assert path.stat().st_size == 0


def _whole(path, pid):
    """The record in ``path`` if it is whole again and ``pid``'s, else None."""
    try:
        record = read_flight_record(path)
    except ConfigurationError:
        return None
    return record if record.pid == pid else None


@pytest.mark.parametrize("how", ["truncate -s0", "> file"])
def test_truncating_the_file_under_a_live_writer_does_not_kill_it_and_the_file_is_restored(tmp_path, how):
    path = tmp_path / "live.flight"
    child = subprocess.Popen(
        [sys.executable, "-c", TRUNCATED_UNDER_ME, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        _truncate(path, how)
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "done"  # a writer killed by SIGBUS never says it
        # No sample is taken: the recorder's own thread finds the file cut short and restores it.
        # (A read may overlap the restoring write: poll until the whole record is there.)
        record = wait_for(
            lambda: (found := _whole(path, child.pid)) and [operation.name for operation in found.running] == ["still_running"] and found,
            timeout_s=10,
            message="the file whole again",
        )
        assert not record.clean_shutdown and len(record.level_changes) == 64
        assert [sample.rss_bytes for sample in record.samples] == [1 << 20]
        _truncate(path, how)
        child.stdin.write("sample\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "sampled"
        record = read_flight_record(path)  # a sample restores it at once
        assert [sample.rss_bytes for sample in record.samples] == [1 << 20, 3 << 20]
        child.stdin.write("exit\n")
        child.stdin.close()
        assert child.wait(30) == 0
        lines = child.stderr.read().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and "cut short while recording" in lines[0], lines
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        child.stdout.close()
        child.stderr.close()
    assert read_flight_record(path).clean_shutdown


FULL_DISK = """
import logging, sys
logging.basicConfig(format="%(levelname)s %(message)s")
from reer_otel_memory.profiling.flight_recorder import process_flight_recorder
print(process_flight_recorder() is None, flush=True)
"""


@pytest.fixture
def full_tmpfs(tmp_path):
    """A real 64 KiB tmpfs, filled up: the next file written to it gets ENOSPC."""
    mount_point = tmp_path / "full"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {mounted.stderr.strip()}"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        filler = os.open(mount_point / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with pytest.raises(OSError, match="No space left"):
                while True:
                    os.write(filler, b"x" * 4096)
        finally:
            os.close(filler)
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_a_full_file_system_at_open_is_one_log_line_and_the_host_runs_on(full_tmpfs):
    path = full_tmpfs / "svc.flight"
    env = {**os.environ, names.ENV_FLIGHT_RECORDER: str(path)}
    done = subprocess.run([sys.executable, "-c", FULL_DISK], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr  # not 135 (SIGBUS)
    assert done.stdout.split() == ["True"]  # the recorder is off
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(path) in lines[0] and "No space left on device" in lines[0], done.stderr
    assert not path.exists()  # the empty file it created is gone again


NOBODY_UID = 65534


def _need_root():
    """Giving a file to another uid needs root: skip without it, except in CI, which runs as root."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("the tests of a file owned by another user need root (chown to nobody)")
        pytest.skip("chown to another uid needs root")


def _refused(case, tmp_path):
    """Make the file ``case`` names; returns its path and the reason the recorder must give."""
    path = tmp_path / "svc.flight"
    if case == "symlink":
        target = tmp_path / "important.data"
        target.write_bytes(b"precious" * 16500)  # 132 KB
        path.symlink_to(target)
        return path, "symbolic link"
    if case == "other user's file":
        FlightRecorder.open(path).close()  # even a genuine recorder file
        os.chown(path, NOBODY_UID, NOBODY_UID)
        return path, f"owned by uid {NOBODY_UID}"
    if case == "mode 0666":
        FlightRecorder.open(path).close()
        os.chmod(path, 0o666)
        return path, "writable by group or others (mode 0666)"
    if case == "not a recorder file":
        path.write_bytes(b"log line\n" * 1000)
        return path, "not a flight recorder file"
    if case == "fifo":
        os.mkfifo(path, 0o600)
        return path, "not a regular file"
    if case == "hard link":
        FlightRecorder.open(path).close()
        os.link(path, tmp_path / "another.name")
        return path, "2 links"
    raise AssertionError(case)


REFUSED_CASES = ["symlink", "other user's file", "mode 0666", "not a recorder file", "fifo", "hard link"]


@pytest.mark.parametrize("case", REFUSED_CASES)
def test_files_the_recorder_cannot_own_are_refused_with_the_reason_and_left_as_they_were(tmp_path, case):
    if case == "other user's file":
        _need_root()
    path, reason = _refused(case, tmp_path)
    before = os.lstat(path)
    content = None if case == "fifo" else path.read_bytes()
    with pytest.raises(ConfigurationError, match=re.escape(reason)) as refused:
        FlightRecorder.open(path)
    assert repr(str(path)) in str(refused.value)
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode, after.st_uid, after.st_size) == (before.st_ino, before.st_mode, before.st_uid, before.st_size)
    if content is not None:
        assert path.read_bytes() == content


@pytest.mark.parametrize("case", ["symlink", "other user's file"])
def test_a_refused_file_under_the_environment_variable_is_one_log_line_and_the_host_runs_on(tmp_path, case):
    if case == "other user's file":
        _need_root()
    path, reason = _refused(case, tmp_path)
    env = {**os.environ, names.ENV_FLIGHT_RECORDER: str(path)}
    done = subprocess.run([sys.executable, "-c", FULL_DISK], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stdout.split() == ["True"], done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(path) in lines[0] and reason in lines[0], done.stderr


def test_a_new_file_is_created_readable_and_writable_by_its_owner_only(tmp_path):
    previous = os.umask(0)
    try:
        recorder = FlightRecorder.open(tmp_path / "new.flight")
    finally:
        os.umask(previous)
    recorder.close()
    status = os.stat(tmp_path / "new.flight")
    assert status.st_mode & 0o777 == 0o600 and status.st_uid == os.geteuid() and status.st_size == FILE_BYTES


# --- corrupt but well-formed records -----------------------------------------------------------


def _corrupted(tmp_path, change):
    """A record a killed process left, with ``change(image)`` applied to its bytes."""
    path, _pid = _killed_mid_operation(tmp_path)
    image = bytearray(path.read_bytes())
    change(image)
    path.write_bytes(bytes(image))
    return path


def _last_sample_offset(image):
    # The killed process wrote 30 samples, sequence numbers 1 to 30.
    return _SAMPLES_OFFSET + (30 % SAMPLE_CAPACITY) * _SAMPLE.size


CORRUPTIONS = {
    "NaN time": (lambda image: struct.pack_into("<d", image, _last_sample_offset(image) + 8, float("nan")), "time"),
    "time past year 9999": (lambda image: struct.pack_into("<d", image, _last_sample_offset(image) + 8, 1e300), "time"),
    "negative RSS": (lambda image: struct.pack_into("<q", image, _last_sample_offset(image) + 16, -5), "RSS"),
    "unknown level": (lambda image: struct.pack_into("<B", image, _last_sample_offset(image) + 40, 7), "level"),
    "infinite start time": (lambda image: struct.pack_into("<d", image, 32, float("inf")), "start time"),
    "pid 0": (lambda image: struct.pack_into("<I", image, 12, 0), "pid"),
    "unknown flags": (lambda image: struct.pack_into("<I", image, 16, 0xFF00), "flags"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_postmortem_of_a_corrupt_record_exits_2_with_one_line(tmp_path, capsys, corruption):
    change, field_named = CORRUPTIONS[corruption]
    path = _corrupted(tmp_path, change)
    assert main(["postmortem", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "corrupt" in lines[0] and field_named in lines[0] and repr(str(path)) in lines[0], captured.err


ESCAPES = """
import sys
from reer_otel_memory.profiling.flight_recorder import FlightRecorder
recorder = FlightRecorder.open(sys.argv[1])
recorder.operation_started("op\\x1b]0;owned\\x07\\x1b[2J", 1 << 20)
recorder.record_sample(2 << 20)
print("ready", flush=True)
sys.stdin.readline()
"""


def test_postmortem_escapes_control_characters_from_the_file(tmp_path, capsys):
    path = tmp_path / "escapes.flight"
    child = subprocess.Popen(
        [sys.executable, "-c", ESCAPES, str(path), "--title=\x1b[31mred\x1b[0m\r"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "ready"
    child.kill()
    child.wait(10)
    child.stdin.close()
    child.stdout.close()
    assert main(["postmortem", str(path)]) == 0
    out = capsys.readouterr().out
    assert not any(ord(character) < 32 and character != "\n" or 0x7F <= ord(character) < 0xA0 for character in out)
    assert "--title=\\x1b[31mred\\x1b[0m\\r" in out and "op\\x1b]0;owned\\x07\\x1b[2J" in out


CORRUPT_PREDECESSOR = """
import json, logging, os, sys
logging.basicConfig(format="%(levelname)s %(message)s")
from reer_otel_memory.profiling.flight_recorder import process_flight_recorder
recorder = process_flight_recorder()
recorder.record_sample(5 << 20)
print(json.dumps({"pid": os.getpid(), "active": recorder.active, "predecessor": recorder.predecessor is not None}), flush=True)
"""


def test_a_corrupt_predecessor_is_one_line_and_the_new_process_records_normally(tmp_path):
    path = _corrupted(tmp_path, CORRUPTIONS["NaN time"][0])
    env = {**os.environ, names.ENV_FLIGHT_RECORDER: str(path)}
    done = subprocess.run([sys.executable, "-c", CORRUPT_PREDECESSOR], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["active"] and not seen["predecessor"]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "corrupt" in lines[0] and str(path) in lines[0], done.stderr
    assert f"process {seen['pid']}" not in lines[0] and f"pid {seen['pid']}" not in lines[0] and "in use" not in lines[0]
    record = read_flight_record(path)
    assert record.pid == seen["pid"] and record.clean_shutdown and [sample.rss_bytes for sample in record.samples] == [5 << 20]


def test_a_dead_predecessor_that_had_this_processs_pid_is_reported_not_taken_for_a_live_writer(tmp_path):
    # In a container every start is pid 1: the record of the one before names this very pid.
    path = _corrupted(tmp_path, lambda image: struct.pack_into("<I", image, 12, os.getpid()))
    recorder = FlightRecorder.open(path)
    try:
        assert recorder.predecessor is not None and recorder.predecessor.pid == os.getpid()
        assert [operation.name for operation in recorder.predecessor.running] == ["train_epoch"]
    finally:
        recorder.close()
