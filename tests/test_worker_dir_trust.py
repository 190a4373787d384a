"""The pre-fork pages' directory against another local user: nothing planted there is followed, read or waited on.

The attacker is the real uid ``nobody`` (subprocesses that drop to it) working in a directory it
can write; the service is this process (root). Each case leaves the parent's page exactly its
own and its live child's, the merge fast, and every file outside the directory untouched.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from test_prefork import BIN, RSS, Server, baseline_alert_mb, every_worker_appears

from reer_otel_memory import _names as names
from reer_otel_memory.export import workers
from reer_otel_memory.export.workers import MAX_PAGE_BYTES, WorkerPages, families_of

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second real uid")

NOBODY = pwd.getpwnam("nobody")
#: A merge reads a few small files: well under this even on a loaded machine.
MERGE_BOUND_S = 1.0


def as_nobody(attack: Callable[..., None], *args: str) -> None:
    """Run ``attack(*args)`` in a forked process that became the uid nobody (real and effective, no supplementary groups)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY.pw_gid)
            os.setuid(NOBODY.pw_uid)
            assert os.getuid() == os.geteuid() == NOBODY.pw_uid
            attack(*args)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the attack as nobody failed (its traceback is on stderr)"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory anyone can write (mode 0777), reachable by nobody."""
    directory = Path(tempfile.mkdtemp(prefix="reer-shared-"))
    directory.chmod(0o777)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A live child of this process: the one real worker."""
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        yield process
    finally:
        process.kill()
        process.communicate(timeout=10)


def own() -> list[Any]:
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

    calls = CounterMetricFamily("calls", "Calls.", labels=["op"])
    calls.add_metric(["a"], 1)
    rss = GaugeMetricFamily("rss_bytes", "RSS.")
    rss.add_metric([], 5)
    return [calls, rss]


def page_text(pid: int, start: float, parent: int, calls: float, rss: float, extra: list[Any] | None = None) -> str:
    families = families_of(own())
    families[0][4][0] = (families[0][4][0][0], {"op": "a"}, calls)
    families[1][4][0] = (families[1][4][0][0], {}, rss)
    return json.dumps({"pid": pid, "start": start, "parent": parent, "families": families + (extra or [])})


def write_child_page(directory: Path, child: subprocess.Popen[bytes]) -> None:
    import psutil

    (directory / f"{child.pid}.json").write_text(page_text(child.pid, psutil.Process(child.pid).create_time(), os.getpid(), calls=4, rss=9))


def timed_merge(pages: WorkerPages) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    merged = {m.name: m for m in pages.merged()}
    return merged, time.monotonic() - started


def assert_page_is_own_and_child(merged: dict[str, Any], child: subprocess.Popen[bytes]) -> None:
    assert set(merged) == {"calls", "rss_bytes"}, sorted(merged)
    assert [(s.labels, s.value) for s in merged["calls"].samples] == [({"op": "a"}, 5.0)]
    assert {s.labels["pid"]: s.value for s in merged["rss_bytes"].samples} == {str(os.getpid()): 5.0, str(child.pid): 9.0}


def test_pages_planted_by_another_user_are_not_read(shared_dir: Path, child: subprocess.Popen[bytes], caplog: pytest.LogCaptureFixture) -> None:
    """Links, a FIFO, a foreign page claiming a live pid and an oversized file: skipped, one warning per kind, no wait."""
    import psutil

    write_child_page(shared_dir, child)
    evil = [["evil_total", "counter", "x", "", [["evil_total", {}, 1.0]]]]
    injected = page_text(1, psutil.Process(1).create_time(), os.getpid(), calls=1e9, rss=9.99e12, extra=evil)
    # A page of this user's that claims a live process which is not this process's child.
    (shared_dir / "1.json").write_text(injected)
    secret = Path(tempfile.mkdtemp(prefix="reer-secret-")) / "secret"
    secret.write_text(page_text(child.pid, psutil.Process(child.pid).create_time(), os.getpid(), calls=1e9, rss=1e12))
    secret.chmod(0o600)

    def plant(directory: str, secret: str, injected: str, live: str) -> None:
        os.symlink(secret, os.path.join(directory, "2.json"))  # a link to a root-only page
        with open(os.path.join(directory, live + "0.json"), "w") as f:  # a foreign page (a made-up pid)
            f.write(injected.replace('"pid":1,', '"pid":' + live + "0,"))
        os.mkfifo(os.path.join(directory, "3.json"))  # a FIFO: a blocking open would wait forever
        with open(os.path.join(directory, "4.json"), "w") as f:  # a 200 MB (sparse) page
            f.truncate(200 * 1024 * 1024)
        with open(os.path.join(directory, "5.json"), "w") as f:  # a foreign page of pid 5
            f.write(injected.replace('"pid":1,', '"pid":5,'))

    as_nobody(plant, str(shared_dir), str(secret), injected, str(child.pid))
    assert (shared_dir / "3.json").lstat().st_uid == NOBODY.pw_uid and stat.S_ISFIFO((shared_dir / "3.json").lstat().st_mode)
    # And the same kinds owned by this user: refused for what they are, not only for their owner.
    os.symlink(secret, shared_dir / "6.json")
    os.mkfifo(shared_dir / "7.json")
    with (shared_dir / "8.json").open("w") as big:
        big.truncate(MAX_PAGE_BYTES + 1)
    secret_before = secret.read_bytes()

    pages = WorkerPages(shared_dir, os.getpid(), own, 30.0, owns_directory=False)
    slowest_s = 0.0
    with caplog.at_level(logging.DEBUG, logger=workers.__name__):
        for _ in range(15):
            merged, took_s = timed_merge(pages)
            slowest_s = max(slowest_s, took_s)
            assert took_s < MERGE_BOUND_S, f"a merge took {took_s:.2f} s"
            assert_page_is_own_and_child(merged, child)
    print(f"15 merges beside planted links, FIFOs and a 200 MB page: slowest {slowest_s * 1000:.1f} ms")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings  # a link or FIFO, a foreign owner, an oversized page: once each
    assert any("not a regular file" in w for w in warnings) and any(f"uid {NOBODY.pw_uid}" in w for w in warnings)
    assert any(f"over the {MAX_PAGE_BYTES}" in w for w in warnings)
    assert secret.read_bytes() == secret_before
    shutil.rmtree(secret.parent)


def test_a_worker_never_writes_through_planted_links(shared_dir: Path) -> None:
    """nobody plants the old temporary name and the page's own name as links to a root-only file: the file is untouched."""
    outside = Path(tempfile.mkdtemp(prefix="reer-outside-"))
    try:
        target = outside / "root-only"
        target.write_text("root's data\n")
        target.chmod(0o600)
        pid = os.getpid()

        def plant(directory: str, target: str, pid: str) -> None:
            for name in (f".{pid}.tmp", f"{pid}.json"):
                os.symlink(target, os.path.join(directory, name))

        as_nobody(plant, str(shared_dir), str(target), str(pid))
        pages = WorkerPages(shared_dir, os.getppid(), own, 30.0, owns_directory=False)
        pages._write_page()
        assert pages.writes == 1
        assert target.read_text() == "root's data\n" and stat.S_IMODE(target.stat().st_mode) == 0o600
        written = (shared_dir / f"{pid}.json").lstat()
        assert stat.S_ISREG(written.st_mode) and written.st_uid == 0 and stat.S_IMODE(written.st_mode) == 0o600
        assert json.loads((shared_dir / f"{pid}.json").read_text())["pid"] == pid
        # Only the planted link and the page: the temporary file was renamed, none is left.
        assert sorted(p.name for p in shared_dir.iterdir()) == sorted([f".{pid}.tmp", f"{pid}.json"])
    finally:
        shutil.rmtree(outside)


@pytest.mark.parametrize("case", ["others_can_write", "owned_by_nobody", "a_link"])
def test_an_unsafe_configured_directory_is_refused(case: str, tmp_path: Path) -> None:
    directory = Path(tempfile.mkdtemp(prefix="reer-configured-"))
    try:
        if case == "others_can_write":
            directory.chmod(0o777)
            expected = "writable by group or others (mode 777)"
        elif case == "owned_by_nobody":
            os.chown(directory, NOBODY.pw_uid, NOBODY.pw_gid)
            expected = f"owned by uid {NOBODY.pw_uid}"
        else:
            link = tmp_path / "link"
            link.symlink_to(directory)
            directory = link
            expected = "a symbolic link"
        refusal = workers.directory_refusal(directory)
        assert refusal is not None and expected in refusal
    finally:
        shutil.rmtree(directory.resolve(), ignore_errors=True)


def test_a_missing_configured_directory_is_made_private(tmp_path: Path) -> None:
    made = workers._configured_directory(str(tmp_path / "a" / "pages"))
    assert made == tmp_path / "a" / "pages"
    assert stat.S_IMODE(made.stat().st_mode) == 0o700 and workers.directory_refusal(made) is None


@pytest.mark.e2e
def test_gunicorn_with_a_directory_nobody_owns_falls_back_to_a_private_one(tmp_path: Path) -> None:
    """One error line; the workers' pages go to the private default; nothing is written where nobody could read it."""
    configured = Path(tempfile.mkdtemp(prefix="reer-nobodys-"))
    os.chown(configured, NOBODY.pw_uid, NOBODY.pw_gid)
    configured.chmod(0o755)
    server = Server(
        tmp_path,
        [str(BIN / "gunicorn"), "-w", "2", "-b", "127.0.0.1:{port}", "toyapp:wsgi"],
        baseline_alert_mb(),
        env={names.ENV_WORKER_DIR: str(configured)},
    )
    try:
        every_worker_appears(server, 2)
        output = server.output()
        assert output.count(f"{names.ENV_WORKER_DIR}={str(configured)!r} refused (owned by uid {NOBODY.pw_uid}") == 1, output
        assert list(configured.iterdir()) == []
        wait_for(lambda: server.pids(RSS) == server.workers() | {server.process.pid}, timeout_s=10, interval_s=0.1, message="the page")
        assert "Traceback" not in output
    finally:
        server.stop()
        shutil.rmtree(configured, ignore_errors=True)
