"""``reer-otel-memory explain PID`` against real processes, through their explain listener's Unix socket.

Each test starts a child that runs :func:`start_memory_monitoring` (which starts the listener) with
``XDG_RUNTIME_DIR`` pointing at a directory of its own, and asks it with the command line. Other
users are tried for real: a child drops to ``nobody`` with ``os.setuid``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _children import Child, Children, clean_environment
from conftest import wait_for

from reer_otel_memory import cli
from reer_otel_memory.profiling import explain
from reer_otel_memory.profiling.explain_listener import MAX_REQUEST_BYTES, NO_LISTENER, REQUEST_TIMEOUT_S

NOBODY = 65534
LEAK_MARK = "# the leaking line"

# A monitored process with a leaking profiled handler; no leak-triggered window in the way of the test's own.
HANDLER = f"""
import json, os, sys, time
from reer_otel_memory import memory_profile, start_memory_monitoring
from reer_otel_memory.profiling.explain import auto_explainer

auto_explainer().enabled = False
start_memory_monitoring()
kept = []

@memory_profile(operation_name="leaky_handler")
def handle_request():
    kept.append(bytearray(4096))  {LEAK_MARK}
    if len(kept) > 10_000:
        del kept[:5_000]
"""

LEAKER = HANDLER + """

print(json.dumps({"pid": os.getpid()}), flush=True)
while True:
    handle_request()
    time.sleep(0.0005)  # the workload's pace
"""

IDLE = """
import json, os, sys, threading
from reer_otel_memory import start_memory_monitoring
start_memory_monitoring()
print(json.dumps({"pid": os.getpid(), "threads": [t.name for t in threading.enumerate()]}), flush=True)
sys.stdin.readline()
"""

# A window of the process's own (say, one a suspected leak started) is running when the request comes.
BUSY = """
import json, os, sys, threading, time
from reer_otel_memory import start_memory_monitoring
from reer_otel_memory.profiling.explain import explain_memory, window_open
start_memory_monitoring()
done = {}
window = threading.Thread(target=lambda: done.update(explanation=explain_memory(1.5)))
window.start()
deadline = time.monotonic() + 10
while not window_open() and time.monotonic() < deadline:
    time.sleep(0.001)
print(json.dumps({"pid": os.getpid(), "tracing": window_open()}), flush=True)
window.join()
print(json.dumps({"own_window_done": "explanation" in done}), flush=True)
sys.stdin.readline()
"""

TRACING_ITSELF = """
import json, os, sys, tracemalloc
from reer_otel_memory import start_memory_monitoring
start_memory_monitoring()
tracemalloc.start()
print(json.dumps({"pid": os.getpid()}), flush=True)
sys.stdin.readline()
"""

UNINSTRUMENTED = """
import json, os, sys
import reer_otel_memory
print(json.dumps({"pid": os.getpid()}), flush=True)
sys.stdin.readline()
"""

# A pre-fork server in small: the parent starts monitoring, then forks a worker that leaks.
FORKING = HANDLER + """

parent = os.getpid()
worker = os.fork()
if worker == 0:
    while os.getppid() == parent:  # ends with its parent
        handle_request()
        time.sleep(0.0005)
    os._exit(0)
print(json.dumps({"pid": parent, "worker": worker}), flush=True)
sys.stdin.readline()
"""

# Everything is imported before dropping to nobody: the interpreter's own files are not theirs to read.
AS_NOBODY = rf"""
import contextlib, io, json, os, shutil, socket, sys  # shutil: argparse imports it late
from reer_otel_memory import cli
from reer_otel_memory.profiling import explain
import reer_otel_memory.profiling.explain, reer_otel_memory.profiling.explain_listener

pid, path = int(os.environ["TARGET_PID"]), os.environ["SOCKET_PATH"]
os.setgroups([])
os.setgid({NOBODY})
os.setuid({NOBODY})

def raw_request():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    with sock:
        try:
            sock.connect(path)
        except OSError as exc:
            return {{"connect_errno": exc.errno}}
        try:
            sock.sendall(b'{{"seconds": 0.1, "top": 1}}\n')
        except BrokenPipeError:
            pass  # refused at once: the answer is already there to read
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return {{"answer": json.loads(data) if data else None}}

err = io.StringIO()
with contextlib.redirect_stderr(err):
    status = cli.main(["explain", str(pid), "--seconds", "0.1"])
print(json.dumps({{"uid": os.getuid(), "cli_status": status, "cli_stderr": err.getvalue(), **raw_request()}}), flush=True)
"""


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """An ``XDG_RUNTIME_DIR`` for the children (owned by us, 0755 like /run/user/UID's parent would allow)."""
    directory = Path(tempfile.mkdtemp(prefix="reer-explain-test-", dir="/tmp"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def start(children: Children, source: str, runtime_dir: Path, **env: str) -> tuple[Child, dict]:
    child = children.start(source, env={"XDG_RUNTIME_DIR": str(runtime_dir), **env})
    return child, child.message()


def socket_path(runtime_dir: Path, pid: int) -> Path:
    return runtime_dir / "reer-otel-memory" / f"{pid}.sock"


def run_cli(*args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reer_otel_memory", "explain", *args], capture_output=True, text=True, timeout=timeout_s, env=clean_environment()
    )


def leak_line(child: Child) -> int:
    return next(number for number, line in enumerate(child.script.read_text().splitlines(), 1) if LEAK_MARK in line)


def raw_request(path: Path, payload: bytes, timeout_s: float = 10.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        sock.sendall(payload)
        return read_answer(sock)


def read_answer(sock: socket.socket) -> dict:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return json.loads(data)


# --- what it shows ---------------------------------------------------------------------------


def test_explain_names_the_leaking_line_and_the_operation(children, runtime_dir):
    child, started = start(children, LEAKER, runtime_dir)
    pid = started["pid"]
    completed = run_cli(str(pid), "--seconds", "0.5")
    assert completed.returncode == 0, completed.stderr
    where = f"{child.script}:{leak_line(child)} handle_request"
    assert where in completed.stdout, completed.stdout
    assert "leaky_handler" in completed.stdout
    assert completed.stdout.startswith(f"process {pid}:")

    completed = run_cli(str(pid), "--seconds", "0.5", "--top", "3", "--json")
    assert completed.returncode == 0, completed.stderr
    answer = json.loads(completed.stdout)
    assert answer["pid"] == pid and answer["backend"] == ("memray" if explain.memray_available() else "tracemalloc")
    assert 0 < len(answer["sites"]) <= 3
    top = answer["sites"][0]
    assert (top["filename"], top["lineno"], top["function"]) == (str(child.script), leak_line(child), "handle_request")
    assert top["size_bytes"] > 0 and answer["operations"]["leaky_handler"] > 0


def test_a_forked_worker_gets_its_own_listener_and_the_parent_keeps_its(children, runtime_dir):
    child, started = start(children, FORKING, runtime_dir)
    parent, worker = started["pid"], started["worker"]
    wait_for(lambda: socket_path(runtime_dir, worker).exists(), message="the worker's socket")
    assert stat.S_IMODE(socket_path(runtime_dir, worker).stat().st_mode) == 0o600

    completed = run_cli(str(worker), "--seconds", "0.5", "--json")
    assert completed.returncode == 0, completed.stderr
    answer = json.loads(completed.stdout)
    assert (answer["sites"][0]["filename"], answer["sites"][0]["lineno"]) == (str(child.script), leak_line(child))

    # The worker closed only its copy of the parent's socket: the parent still answers.
    assert socket_path(runtime_dir, parent).exists()
    completed = run_cli(str(parent), "--seconds", "0.1")
    assert completed.returncode == 0, completed.stderr


def test_a_window_already_running_is_waited_for_and_said_so(children, runtime_dir):
    child, started = start(children, BUSY, runtime_dir)
    assert started["tracing"]
    completed = run_cli(str(started["pid"]), "--seconds", "0.2")
    assert completed.returncode == 0, completed.stderr
    assert "already running" in completed.stderr and "waiting up to" in completed.stderr
    assert completed.stdout.startswith(f"process {started['pid']}:")
    assert child.message()["own_window_done"]


def test_a_process_tracing_on_its_own_refuses_and_says_why(children, runtime_dir, capsys):
    _, started = start(children, TRACING_ITSELF, runtime_dir)
    assert cli.main(["explain", str(started["pid"]), "--seconds", "0.1"]) == 1
    err = capsys.readouterr().err
    assert f"process {started['pid']}: tracemalloc is already tracing" in err


# --- when there is nothing to ask ------------------------------------------------------------


def test_a_process_without_the_listener_gets_a_clear_message_and_exit_1(children, runtime_dir, capsys):
    _, started = start(children, UNINSTRUMENTED, runtime_dir)
    assert cli.main(["explain", str(started["pid"]), "--seconds", "0.1"]) == 1
    err = capsys.readouterr().err
    assert NO_LISTENER.format(pid=started["pid"]) in err
    assert "REER_MEMORY_EXPLAIN=off" in err and "start_memory_monitoring()" in err


def test_explain_off_starts_no_listener(children, runtime_dir, capsys):
    _, started = start(children, IDLE, runtime_dir, REER_MEMORY_EXPLAIN="off")
    assert "reer-memory-explain-listener" not in started["threads"]
    assert not socket_path(runtime_dir, started["pid"]).exists()
    assert cli.main(["explain", str(started["pid"]), "--seconds", "0.1"]) == 1
    assert "has no explain listener" in capsys.readouterr().err


def test_a_process_that_does_not_exist_exits_1(capsys):
    with open("/proc/sys/kernel/pid_max") as file:
        beyond = int(file.read()) + 1
    assert cli.main(["explain", str(beyond)]) == 1
    assert f"no process {beyond}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args", [["--seconds", "0"], ["--seconds", "-1"], ["--seconds", "abc"], ["--seconds", "1e9"], ["--seconds", "nan"], ["--top", "0"], ["x"]]
)
def test_bad_arguments_exit_2(args, capsys):
    argv = ["explain", *(args if args == ["x"] else [str(os.getpid()), *args])]
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert "expected" in capsys.readouterr().err


def test_a_normal_exit_removes_the_socket(children, runtime_dir):
    child, started = start(children, IDLE, runtime_dir)
    path = socket_path(runtime_dir, started["pid"])
    assert path.exists()
    child.send("")
    assert child.wait() == 0
    assert not path.exists()


# --- safety ----------------------------------------------------------------------------------


def test_the_directory_is_private_and_the_socket_ours_alone(children):
    started = children.start(IDLE, env={"XDG_RUNTIME_DIR": ""}).message()  # none: under /tmp
    directory = Path(f"/tmp/reer-otel-memory-{os.geteuid()}")
    found = directory.lstat()
    assert stat.S_ISDIR(found.st_mode) and stat.S_IMODE(found.st_mode) == 0o700 and found.st_uid == os.geteuid()
    sock = (directory / f"{started['pid']}.sock").lstat()
    assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o600


@pytest.mark.parametrize("kind", ["symlink", "open to others", "another user's"])
def test_a_directory_that_is_not_private_is_refused(children, runtime_dir, kind):
    directory = runtime_dir / "reer-otel-memory"
    elsewhere = runtime_dir / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    if kind == "symlink":
        directory.symlink_to(elsewhere)
    else:
        directory.mkdir()
        directory.chmod(0o777 if kind == "open to others" else 0o700)
        if kind == "another user's":
            os.chown(directory, NOBODY, NOBODY)
    child, started = start(children, IDLE, runtime_dir)
    wait_for(lambda: "no explain listener" in child.stderr, message="the warning that the listener did not start")
    assert not socket_path(runtime_dir, started["pid"]).exists()
    assert not (elsewhere / f"{started['pid']}.sock").exists()
    assert "reer-memory-explain-listener" not in started["threads"]


def test_another_user_is_refused_by_the_directory_and_by_the_peer_check(children, runtime_dir):
    _, started = start(children, IDLE, runtime_dir)
    path = socket_path(runtime_dir, started["pid"])
    env = {"TARGET_PID": str(started["pid"]), "SOCKET_PATH": str(path)}

    seen = children.start(AS_NOBODY, env=env, name="nobody").message()
    assert seen["uid"] == NOBODY
    assert seen["cli_status"] == 1 and "permission denied" in seen["cli_stderr"], seen
    assert seen["connect_errno"] == 13, seen  # EACCES: the 0700 directory keeps them out

    # Were the permissions loosened, the listener still answers only its own user (and root).
    path.parent.chmod(0o711)
    path.chmod(0o666)
    seen = children.start(AS_NOBODY, env=env, name="nobody").message()
    answer = seen["answer"]
    assert answer["ok"] is False and answer["kind"] == "refused", seen
    assert f"uid {NOBODY} may not ask" in answer["error"]


@pytest.mark.slow
def test_a_slow_client_holds_the_listener_no_longer_than_the_request_deadline(children, runtime_dir):
    _, started = start(children, IDLE, runtime_dir)
    path = socket_path(runtime_dir, started["pid"])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
        slow.connect(str(path))  # and sends nothing
        began = time.monotonic()
        completed = run_cli(str(started["pid"]), "--seconds", "0.5")
        elapsed = time.monotonic() - began
        assert completed.returncode == 0, completed.stderr
        assert elapsed < REQUEST_TIMEOUT_S + 0.5 + 5.0, elapsed
        slow.settimeout(5)
        answer = read_answer(slow)
        assert answer["ok"] is False and "no complete request" in answer["error"]

    assert "longer than" in raw_request(path, b"x" * (MAX_REQUEST_BYTES + 10))["error"]
    assert raw_request(path, b"[1, 2]\n")["kind"] == "bad_request"
    answer = raw_request(path, b'{"seconds": 0, "top": 1}\n')
    assert answer["kind"] == "bad_request" and "seconds" in answer["error"]
