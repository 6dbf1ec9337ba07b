"""The tracking server never outlives its command and stops when asked (issue 24, "must show" 4),
replaced runs are ended KILLED before they are deleted ("must show" 5), and tracking URIs are
checked without creating anything.

The server tests start ``python -m sweeps.server`` as a real process on 127.0.0.1 (a free port,
a store in ``tmp_path``, one worker unless said), collect its process tree from /proc while it
runs, and kill whatever of that tree a test leaves behind.
"""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sweeps.server
from sweeps.tracking import (
    TrackingError,
    check_sqlite_file,
    prepare_sqlite_store,
    resolve_tracking_uri,
    retire_replaced_run,
)

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 180  # mlflow's imports take 10-30 s on a loaded two-core machine


def children_of(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (read from /proc), as in test_sweep_resilience."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    # the command name may hold spaces: the ppid is the 2nd field after ')'
                    parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a killed child of a dead parent may stay a
    zombie until init reaps it; it holds no port and no memory)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids: set[int], timeout_s: float) -> set[int]:
    """Wait up to ``timeout_s`` for ``pids`` to end; returns those still alive."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = {p for p in pids if alive(p)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def kill_all(pids: set[int]) -> None:
    """Test cleanup: SIGKILL whatever of ``pids`` is alive and wait for it to be gone."""
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    wait_gone(pids, 10.0)


def start_server_command(tmp_path: Path, *extra: str, ignore_sigint: bool = False):
    """``python -m sweeps.server`` on a free 127.0.0.1 port with its store in ``tmp_path``; returns
    the process and the pids of its tree (the command first) once its banner says it runs.
    ``ignore_sigint`` starts it as a background job of a non-interactive shell would."""
    port = sweeps.server.free_port("127.0.0.1")

    def preexec() -> None:
        os.setsid()  # a session of its own, so nothing here reaches the test runner
        if ignore_sigint:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeps.server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/db/mlflow.db",
         "--artifacts-destination", str(tmp_path / "artifacts"), *extra],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        preexec_fn=preexec,
    )  # fmt: skip
    output = b""
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while b"Ctrl-C stops it." not in output:  # the banner's last line, once /health answers
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start: {output.decode()[-3000:]}")
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                output += os.read(proc.stdout.fileno(), 65536)
        tree = {proc.pid} | children_of(proc.pid)
    except BaseException:
        kill_all({proc.pid} | children_of(proc.pid))
        proc.wait(timeout=10)
        raise
    return proc, tree


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# --- the server's process tree ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_of_the_server_command_leaves_no_server_process(tmp_path, workers):
    """The issue's case: the wrapper SIGKILLed left ``mlflow server`` and uvicorn running. Now
    the tree (mlflow, uvicorn, and with 2 workers uvicorn's worker processes) is gone in 10 s."""
    if workers > sweeps.server.max_workers():
        pytest.skip(f"this machine allows {sweeps.server.max_workers()} worker(s)")
    proc, tree = start_server_command(tmp_path, "--workers", str(workers))
    try:
        server = tree - {proc.pid}
        # mlflow server and uvicorn at least (with 2 workers, uvicorn's workers as well)
        assert len(server) >= 2 + (workers if workers > 1 else 0), [command_line(p) for p in server]
        assert any("uvicorn" in command_line(p) for p in server)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        left = wait_gone(server, 10.0)
        assert not left, [command_line(p) for p in left]
    finally:
        kill_all(tree | children_of(proc.pid))
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_sigint_stops_a_server_started_with_sigint_ignored(tmp_path):
    """A background job of a non-interactive shell inherits SIGINT ignored; the server sets its
    own handler, so SIGINT (Ctrl-C, kill -INT) stops it and its whole tree within 15 s."""
    proc, tree = start_server_command(tmp_path, ignore_sigint=True)
    try:
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        left = wait_gone(tree, max(0.1, 15 - (time.monotonic() - start)))
        assert not left, [command_line(p) for p in left]
        assert b"stopping the MLflow server" in proc.stdout.read()
    finally:
        kill_all(tree)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_server_process_ends_its_group_when_its_starter_goes(tmp_path):
    """``GUARD`` itself, without MLflow: a stand-in server (a sleeping child in the same group)
    started by a starter process that is then SIGKILLed is gone within 10 s."""
    starter_code = (
        "import os, subprocess, sys, time\n"
        "from sweeps.server import guarded_command\n"
        "r, w = os.pipe()\n"
        # a fake 'mlflow' module whose __main__ starts a grandchild and waits, like mlflow server
        f"fake = {str(tmp_path)!r}\n"
        "os.makedirs(fake + '/mlflow', exist_ok=True)\n"
        "open(fake + '/mlflow/__init__.py', 'w').close()\n"
        "open(fake + '/mlflow/__main__.py', 'w').write(\n"
        "    'import subprocess, sys\\n'\n"
        '    \'subprocess.run([sys.executable, "-c", "import time; time.sleep(600)"])\\n\')\n'
        "p = subprocess.Popen(guarded_command([sys.executable, '-m', 'mlflow', 'server'], r),\n"
        "    pass_fds=(r,), start_new_session=True, env={**os.environ, 'PYTHONPATH': fake})\n"
        "os.close(r)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    starter = subprocess.Popen(
        [sys.executable, "-c", starter_code], cwd=REPO, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
    )  # fmt: skip
    tree: set[int] = set()
    try:
        guard = int(starter.stdout.readline())
        deadline = time.monotonic() + 60
        while len(children_of(guard)) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)  # the stand-in server's own child (uvicorn's place)
        tree = {guard} | children_of(guard)
        assert len(tree) == 2
        starter.kill()
        starter.wait(timeout=10)
        left = wait_gone(tree, 10.0)
        assert not left, [command_line(p) for p in left]
    finally:
        kill_all(tree | {starter.pid})
        if starter.poll() is None:
            starter.kill()
            starter.wait()


def test_the_server_warns_when_it_listens_on_every_interface(monkeypatch, capfd, tmp_path):
    """0.0.0.0 typed as such is allowed (a cluster needs it), with a one-line warning that there
    is no login; the server itself is not started here (start_server stands in)."""
    monkeypatch.chdir(tmp_path)

    def interrupted(**kwargs):
        raise KeyboardInterrupt  # as if Ctrl-C came during start-up

    monkeypatch.setattr(sweeps.server, "start_server", interrupted)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        status = sweeps.server.main(["--host", "0.0.0.0", "--port", "0"])
    finally:
        for sig, handler in saved.items():  # main() installs its own: give pytest's back
            signal.signal(sig, handler)
    out, err = capfd.readouterr()
    assert status == 130
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("python -m sweeps.server: warning: --host 0.0.0.0")
    assert "no login" in lines[0] and "its port" in lines[0]


def test_default_host_stays_loopback():
    assert sweeps.server.build_parser().parse_args([]).host == "127.0.0.1"


# --- tracking URIs -------------------------------------------------------------------------


def test_resolve_tracking_uri_creates_nothing_and_prepare_makes_the_store(tmp_path):
    """Checked, not made: the folders come from prepare_sqlite_store, after every other check."""
    target = resolve_tracking_uri(f"sqlite:///{tmp_path}/a/b/mlflow.db")
    assert target.uri == f"sqlite:///{tmp_path}/a/b/mlflow.db"
    assert list(tmp_path.iterdir()) == []
    prepare_sqlite_store(target)
    assert (tmp_path / "a" / "b" / "mlflow.db").is_file()
    # a real store passes the file check, and so does an empty file (SQLite's "new database")
    check_sqlite_file("--tracking-uri", tmp_path / "a" / "b" / "mlflow.db")
    (tmp_path / "empty.db").touch()
    resolve_tracking_uri(f"sqlite:///{tmp_path}/empty.db")


def test_check_sqlite_file_reads_and_leaves_the_file_alone(tmp_path):
    db = tmp_path / "tables-less.db"
    sqlite3.connect(db).close()  # a database with no table yet: MLflow may make its store there
    check_sqlite_file("--tracking-uri", db)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("create table notes (body text)")
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    with pytest.raises(TrackingError, match=r"other\.db: an SQLite database but not an MLflow"):
        check_sqlite_file("--tracking-uri", other)
    (tmp_path / "text.db").write_text("hello")
    with pytest.raises(TrackingError, match="text.db: not an SQLite database"):
        resolve_tracking_uri(f"sqlite:///{tmp_path}/text.db")
    # nothing written, no -wal/-shm/-journal left beside them
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.name != "text.db"} == (
        before
    )


# --- replaced runs ---------------------------------------------------------------------------


def test_replaced_runs_are_killed_before_they_are_deleted(tmp_path):
    """What ``--resume`` or a retry leaves behind: the replaced run, listed with ViewType.ALL,
    is deleted and KILLED (never RUNNING) and names its replacement; a FAILED one keeps
    FAILED, which says why it was retried."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    target = resolve_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    prepare_sqlite_store(target)
    client = MlflowClient(target.uri)
    exp = client.create_experiment("replaced", artifact_location=target.artifact_location)
    parent = client.create_run(exp).info.run_id
    child = {"mlflow.parentRunId": parent, "trial_id": "t1"}
    running = client.create_run(exp, tags=child).info.run_id  # its driver was SIGKILLed
    failed = client.create_run(exp, tags=child).info.run_id
    client.set_terminated(failed, "FAILED")
    new = client.create_run(exp, tags={**child, "replaces": f"{running},{failed}"}).info.run_id

    for old in (running, failed):
        retire_replaced_run(client, old, new)
    retire_replaced_run(client, running, new)  # twice: nothing more happens

    every = {r.info.run_id: r for r in client.search_runs([exp], run_view_type=ViewType.ALL)}
    assert every[running].info.lifecycle_stage == "deleted"
    assert every[running].info.status == "KILLED"
    assert every[running].info.end_time is not None
    assert every[running].data.tags["replaced_by"] == new
    assert (every[failed].info.lifecycle_stage, every[failed].info.status) == ("deleted", "FAILED")
    assert every[failed].data.tags["replaced_by"] == new
    deleted = client.search_runs([exp], run_view_type=ViewType.DELETED_ONLY)
    assert {r.info.run_id for r in deleted} == {running, failed}
    assert not [r for r in deleted if r.info.status == "RUNNING"]
    live = client.search_runs([exp], run_view_type=ViewType.ACTIVE_ONLY)
    assert {r.info.run_id for r in live} == {parent, new}
