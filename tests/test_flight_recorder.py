"""The flight recorder: a memory-mapped file that survives SIGKILL, read back by the next process and the postmortem command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from _forks import in_forked_child

from reer_otel_memory import _names as names
from reer_otel_memory.cli import main
from reer_otel_memory.errors import ConfigurationError
from reer_otel_memory.profiling.flight_recorder import SLOT_CAPACITY, FlightRecorder, read_flight_record, render_postmortem

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
    record = read_flight_record(recorder.path)
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
