"""Cluster runs: sweeps on a two-node Ray cluster logging to a real ``mlflow server`` over HTTP,
on a cluster started with ``ray start`` (token authentication), and the one-line failures of a
SQLite URI on several nodes and of unreachable addresses.

Every process these tests start is found through /proc (by its session, process group or
parent chain), stopped by its own id, and checked to be gone, also when a test fails: other
people's Ray and MLflow processes on the same machine are never touched (no ``ray stop``).
"""

from __future__ import annotations

import glob
import http.client
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sweeps.cli import resolve_spec
from sweeps.resnet18_iterative import STUDY
from sweeps.runner import main, run_sweep
from sweeps.server import ServerError, resolve_store, start_server

REPO = Path(__file__).resolve().parents[1]
MODULE = "python -m sweeps.resnet18_iterative"
METRICS = ("test_accuracy", "sparsity", "nonzero_params", "total_params", "latency_ms")
GiB = 2**30

# --- processes, through /proc --------------------------------------------------------------------

Proc = tuple[int, int]  # (pid, start time in clock ticks): a pid alone may be reused


def _stat(pid: int) -> tuple[str, int, int, int, int] | None:
    """(state, ppid, pgid, session id, start time) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19])


def _table() -> dict[int, tuple[str, int, int, int, int]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            out[int(entry)] = st
    return out


def _running(procs: set[Proc]) -> set[Proc]:
    """The members of ``procs`` that still run (a zombie only waits to be reaped: not running)."""
    alive = set()
    for pid, start in procs:
        st = _stat(pid)
        if st is not None and st[4] == start and st[0] != "Z":
            alive.add((pid, start))
    return alive


def _descendants(roots: set[int]) -> set[Proc]:
    """``roots`` and every process below them (Ray workers are children of their raylet)."""
    table = _table()
    found, frontier = set(), {p for p in roots if p in table}
    while frontier:
        found |= frontier
        frontier = {p for p, st in table.items() if st[1] in frontier and p not in found}
    return {(p, table[p][4]) for p in found if table[p][0] != "Z"}


def _session(sid: int) -> set[Proc]:
    """The running processes of session ``sid``. A process started with ``start_new_session``
    leads a session that all its descendants stay in, even those that open a process group of
    their own (Ray's workers) or are re-parented to init (``ray start``'s daemons)."""
    return {(p, st[4]) for p, st in _table().items() if st[3] == sid and st[0] != "Z"}


def _stop(procs: set[Proc], grace_s: float = 10.0) -> set[Proc]:
    """SIGTERM ``procs``, SIGKILL what still runs after ``grace_s``; returns what still runs."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid, _ in _running(procs):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while _running(procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _running(procs):
            return set()
    return _running(procs)


def _rss(pid: int) -> int:
    """Resident memory of ``pid`` in bytes (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _raylet_node_id(procs: set[Proc]) -> str | None:
    """The Ray node id of the raylet among ``procs`` (from its ``--node_id=`` argument)."""
    for pid, _ in procs:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                args = fh.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if args and args[0].endswith("/raylet"):
            for arg in args:
                if arg.startswith("--node_id="):
                    return arg.split("=", 1)[1]
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _closed_port() -> int:
    """A port that nothing listens on (bound once, then released)."""
    return _free_port()


def _cli(args: list[str], env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess:
    """Run ``python -m sweeps.resnet18_iterative ARGS`` in a session of its own; whatever it
    leaves running is stopped, and the test fails if anything was left."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeps.resnet18_iterative", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        leftover = _stop(_session(proc.pid))  # the command itself too, if it hangs
        proc.wait(timeout=10)
    assert not leftover, f"the sweep left processes running: {sorted(leftover)}"
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    result.elapsed = time.monotonic() - start  # type: ignore[attr-defined]
    return result


def _env(**extra: str) -> dict[str, str]:
    """This environment without any Ray authentication settings of the caller, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def _one_error_line(stderr: str) -> str:
    """The single error line of the sweep CLI; fails on a traceback or several error lines."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith(f"{MODULE}: error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _sweep_args(
    tmp_path: Path, tracking_uri: str, address: str, samples: int = 4, model: str = "mlp"
) -> list[str]:
    return [
        "--quick", "--model", model, "--baseline-epochs", "1", "--num-samples", str(samples),
        "--cpus-per-trial", "1", "--tracking-uri", tracking_uri, "--address", address,
        "--experiment", "cluster", "--cache-dir", str(tmp_path / "baselines"),
        "--storage-path", str(tmp_path / "ray_results"), "--results-dir", str(tmp_path / "results"),
        "--seed", "1",
    ]  # fmt: skip


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator:
    """A real ``mlflow server`` on 127.0.0.1 (free port, own SQLite store and artifact folder),
    stopped by its process group; the test fails if any of its processes survives."""
    store = tmp_path_factory.mktemp("mlflow_server")
    server = start_server(store, port=0)
    procs = _session(server.pid)  # started with start_new_session: pid = session = group id
    try:
        yield server
    finally:
        procs |= _session(server.pid)
        server.stop()
        leftover = _stop(procs)  # only if stop() failed; then the assertion below says so
        assert not leftover, f"mlflow server processes left running: {sorted(leftover)}"


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator:
    """A two-node cluster on this machine (``ray.cluster_utils.Cluster``) in a private short
    RAY_TMPDIR: a head without CPUs, where the driver runs, and two worker nodes with 1 CPU each,
    so trials run on other nodes than the driver's, one at a time per node. (Tune reuses a
    finished trial's actor for the next trial rather than wait for an actor on another node, so
    trials shorter than an actor's start-up could all land on one node: the test that checks the
    spread uses trials of several seconds.)
    Its processes (gcs, raylets, agents and the raylets' workers) are listed before shutdown and
    must all be gone after it."""
    import ray
    from ray.cluster_utils import Cluster

    folder = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # AF_UNIX paths must stay < 107 bytes
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_TMPDIR", folder)
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        cluster.add_node(num_cpus=1)
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        procs: set[Proc] = set()
        if cluster is not None:
            roots = {
                info.process.pid
                for node in cluster.list_all_nodes()
                for infos in node.all_processes.values()
                for info in infos
            }
            procs = _descendants(roots)
            cluster.shutdown()
        leftover = _stop(procs, grace_s=15.0)
        patch.undo()
        shutil.rmtree(folder, ignore_errors=True)
        assert not leftover, f"Ray cluster processes left running: {sorted(leftover)}"


@pytest.fixture
def ray_start_head(tmp_path) -> Iterator[dict[str, str]]:
    """A single-node cluster from ``ray start --head`` with token authentication and a token of
    its own (RAY_AUTH_TOKEN, so ~/.ray/auth_token is neither needed nor touched). ``ray start``
    returns once its daemons run; they keep its session, which is how they (and the workers of
    the raylet) are found and stopped here, not with ``ray stop``, which would stop every Ray on
    the machine."""
    folder = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    port = _free_port()
    token = secrets.token_hex(32)
    env = _env(RAY_TMPDIR=folder, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    start = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={folder}",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    procs: set[Proc] = set()
    try:
        out, _ = start.communicate(timeout=120)
        procs = _session(start.pid)
        assert start.returncode == 0, out[-3000:]
        yield {
            "address": f"127.0.0.1:{port}",
            "token": token,
            "tmpdir": folder,
            "node_id": _raylet_node_id(procs),
        }
    finally:
        if start.poll() is None:
            start.kill()
            start.wait()
        procs |= _session(start.pid)
        assert procs or start.returncode != 0, "found no process of the `ray start` cluster"
        # gcs_server may take 10 s and more over SIGTERM: a throwaway cluster gets 3 s
        leftover = _stop(procs, grace_s=3.0)
        shutil.rmtree(folder, ignore_errors=True)
        assert not leftover, f"`ray start` processes left running: {sorted(leftover)}"


# --- tests ------------------------------------------------------------------------------------


def test_server_helpers_refuse_bad_stores_and_busy_ports(tmp_path):
    with pytest.raises(ServerError, match="database URI"):
        resolve_store(f"file://{tmp_path}/mlruns", str(tmp_path / "a"))
    with pytest.raises(ServerError, match="in-memory"):
        resolve_store("sqlite:///:memory:", str(tmp_path / "a"))
    backend, artifacts = resolve_store("postgresql+psycopg2://u:p@db/mlflow", "s3://bucket/a")
    assert (backend, artifacts) == ("postgresql+psycopg2://u:p@db/mlflow", "s3://bucket/a")
    backend, artifacts = resolve_store(f"sqlite:///{tmp_path}/x/m.db", str(tmp_path / "art"))
    assert backend == f"sqlite:///{tmp_path}/x/m.db" and (tmp_path / "x").is_dir()
    assert (tmp_path / "art").is_dir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        start = time.monotonic()
        with pytest.raises(ServerError, match="another --port"):
            start_server(tmp_path / "s", port=busy.getsockname()[1])
        assert time.monotonic() - start < 5  # refused before any server process started


@pytest.mark.slow
def test_server_command_serves_a_cluster_with_one_worker_and_stops_on_sigterm(tmp_path):
    """``python -m sweeps.server`` on an address other than 127.0.0.1 (here 127.0.0.2, still
    this machine only): prints the URI, accepts requests that name the machine (as other nodes
    will), serves runs and artifacts, takes well under 1 GB (one worker, no job runner), and
    leaves nothing behind on SIGTERM."""
    from mlflow.tracking import MlflowClient

    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeps.server", "--host", "127.0.0.2", "--port", "0",
         "--backend-store-uri", f"sqlite:///{tmp_path}/db/mlflow.db",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )  # fmt: skip
    procs: set[Proc] = set()
    try:
        uri = None
        for line in proc.stdout:  # the banner comes once /health answers
            if "--tracking-uri" in line:
                uri = line.split("--tracking-uri", 1)[1].strip()
                break
        assert uri is not None and uri.startswith("http://127.0.0.2:")
        port = int(uri.rsplit(":", 1)[1])
        procs = _descendants({proc.pid})
        assert len(procs) == 3  # this command, mlflow server, one uvicorn worker; no job runner
        rss = sum(_rss(pid) for pid, _ in procs)
        assert rss < 1.2 * GiB, rss / GiB  # mlflow server's defaults take ~2.5 GB here

        # MLflow answers only requests whose Host header it allows: this machine's name (how
        # the other nodes of a cluster address it) and MLflow's defaults, nothing else
        def status(host_header: str) -> int:
            conn = http.client.HTTPConnection("127.0.0.2", port, timeout=10)
            try:
                conn.request("GET", "/api/2.0/mlflow/experiments/search?max_results=1",
                             headers={"Host": host_header})  # fmt: skip
                return conn.getresponse().status
            finally:
                conn.close()

        assert status(f"{socket.gethostname()}:{port}") == 200
        assert status(f"localhost:{port}") == 200
        assert status(f"elsewhere.example:{port}") == 403

        client = MlflowClient(uri)
        run = client.create_run(client.create_experiment("server-test"))
        (tmp_path / "note.txt").write_text("through the server")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        stored = glob.glob(str(tmp_path / "artifacts" / "**" / "note.txt"), recursive=True)
        assert len(stored) == 1  # uploaded to the server's folder, not written by the client

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not _running(procs), "the server outlived its command"
    finally:
        leftover = _stop(procs | _descendants({proc.pid}))
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not leftover


@pytest.mark.slow
def test_unreachable_tracking_server_and_ray_address_fail_in_seconds(tmp_path):
    base = ["--quick", "--model", "mlp", "--baseline-epochs", "1", "--num-samples", "1",
            "--cache-dir", str(tmp_path / "baselines"), "--storage-path", str(tmp_path / "ray"),
            "--results-dir", str(tmp_path / "results")]  # fmt: skip
    tracking_port, ray_port = _closed_port(), _closed_port()
    tracking = _cli(
        [*base, "--tracking-uri", f"http://127.0.0.1:{tracking_port}"], _env(), timeout_s=120
    )
    folder = tempfile.mkdtemp(prefix="ra", dir="/tmp")  # for Ray, should it get that far
    try:
        address = _cli(
            [*base, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
             "--address", f"127.0.0.1:{ray_port}"],
            _env(RAY_TMPDIR=folder), timeout_s=120,
        )  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for result, needle in ((tracking, f"127.0.0.1:{tracking_port}"),
                           (address, f"--address 127.0.0.1:{ray_port}")):  # fmt: skip
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.elapsed < 30
        line = _one_error_line(result.stderr)
        assert needle in line
    assert "not reachable" in _one_error_line(tracking.stderr)
    assert "ray start --head" in _one_error_line(address.stderr)
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_sweep_on_a_ray_start_cluster_with_token_authentication(tmp_path, ray_start_head):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = _sweep_args(tmp_path, uri, ray_start_head["address"])
    common = {"RAY_TMPDIR": ray_start_head["tmpdir"]}
    # an explicit address never turns token authentication on by itself: without
    # RAY_AUTH_MODE=token the driver is refused, and says in one line what to set
    # (Ray retries a refused connection 20 times, ~30 s; two tries say the same here)
    refused = _cli(args, _env(**common, RAY_gcs_server_port_wait_time_s="2"), timeout_s=120)
    assert refused.returncode == 2, refused.stderr[-3000:]
    line = _one_error_line(refused.stderr)
    assert "RAY_AUTH_MODE=token" in line and "ray get-auth-token" in line
    assert not (tmp_path / "mlflow.db").exists()

    env = _env(**common, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=ray_start_head["token"])
    result = _cli(args, env, timeout_s=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Pareto front" in result.stdout
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name("cluster")
    runs = mlflow.search_runs([experiment.experiment_id])
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(children) == 4 and (children["status"] == "FINISHED").all()
    # every trial ran on the node that `ray start` started, not on a Ray of the driver's own
    assert set(children["params.node_id"]) == {ray_start_head["node_id"]}
    assert (children["metrics.test_accuracy"].between(0, 1)).all()


@pytest.mark.slow
def test_two_node_sweep_logs_every_trial_to_the_tracking_server(
    tmp_path, mlflow_server, ray_cluster
):
    from mlflow.tracking import MlflowClient

    head = ray_cluster.head_node.node_id
    workers = {node.node_id for node in ray_cluster.worker_nodes}
    assert len(workers) == 2 and head not in workers
    # ResNet-18 trials take several seconds, longer than an actor's start, so the two trials
    # run at once, one on each 1-CPU worker node (the small CNN's all ran on one)
    args = _sweep_args(
        tmp_path, mlflow_server.uri, ray_cluster.address, samples=2, model="resnet18"
    )
    outcome = run_sweep(resolve_spec(STUDY, args), STUDY)
    assert outcome.failed_trials == 0
    assert outcome.tracking_uri == mlflow_server.uri

    client = MlflowClient(mlflow_server.uri)  # everything below is read over HTTP
    experiment = client.get_experiment(outcome.experiment_id)
    # artifacts go through the server's proxy, not to a path that exists on one node only
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    children = client.search_runs(
        [outcome.experiment_id], f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'"
    )
    assert len(children) == 2
    # trials ran on both worker nodes, not where the driver runs (trial.py logs the node id):
    # code, dense baseline and data reached them through Ray, their runs through the server
    assert {run.data.params["node_id"] for run in children} == workers
    artifact_root = Path(mlflow_server.artifacts_destination)
    for run in children:
        assert run.info.status == "FINISHED"
        assert float(run.data.params["cpus_assigned"]) == 1.0
        for metric in METRICS:
            assert metric in run.data.metrics, (run.info.run_name, metric)
        assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0
        history = client.get_metric_history(run.info.run_id, "sparsity")
        assert len(history) == int(run.data.params["iterations"])  # one point per prune step
        checkpoint = f"checkpoints/{run.info.run_name}.pt"
        listed = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
        assert listed == [checkpoint]
        # the upload landed in the server's artifact folder, whichever node made it
        stored = glob.glob(str(artifact_root / "**" / run.info.run_id / "**" / checkpoint),
                           recursive=True)  # fmt: skip
        assert len(stored) == 1 and os.path.getsize(stored[0]) > 0
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["finished_trials"] == 2
    assert "pareto.csv" in [a.path for a in client.list_artifacts(outcome.parent_run_id)]


@pytest.mark.slow
def test_two_node_sweep_of_a_user_package_outside_the_repository(
    tmp_path, mlflow_server, ray_cluster, monkeypatch
):
    """The user's own model builder and dataset function, in a package in tmp_path that only
    the driver can import (its sys.path): Ray ships it (runtime_env py_modules) and the trials
    run it on the worker nodes, where nothing else puts it on the path."""
    from user_package import write_user_package

    from sweeps.__main__ import STUDY as GENERIC

    code = write_user_package(tmp_path / "code")
    monkeypatch.syspath_prepend(str(code))
    args = _sweep_args(tmp_path, mlflow_server.uri, ray_cluster.address, samples=2) + [
        "--model", "userpkg.models:build", "--dataset", "userpkg.data:load",
    ]  # fmt: skip
    outcome = run_sweep(resolve_spec(GENERIC, args), GENERIC)
    assert outcome.failed_trials == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    children = client.search_runs(
        [outcome.experiment_id], f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'"
    )
    workers = {node.node_id for node in ray_cluster.worker_nodes}
    assert len(children) == 2
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.params["model"] == "userpkg.models:build"
        assert run.data.params["node_id"] in workers  # not the driver's node (it has no CPU)
        assert run.info.run_name.startswith("build_")


@pytest.mark.slow
def test_sqlite_on_several_nodes_stops_before_any_trial(tmp_path, ray_cluster, capsys):
    db = tmp_path / "mlflow.db"
    status = main(STUDY, _sweep_args(tmp_path, f"sqlite:///{db}", ray_cluster.address))
    assert status == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "SQLite" in line and "3 nodes" in line  # why: head + two workers
    assert "python -m sweeps.server" in line and "--tracking-uri http://" in line  # what instead
    assert not db.exists()  # no experiment, no run
    assert not any((tmp_path / "baselines").glob("*"))  # no dense training either


@pytest.mark.slow
def test_a_user_package_sweep_on_two_nodes_resumes_after_sigint(
    tmp_path, mlflow_server, ray_cluster
):
    """The user's package sweep as a command on the two-node cluster: SIGINT once its trials
    run (exit 130, nothing RUNNING), then ``--resume`` (the package again only on the driver's
    PYTHONPATH) finishes it on the worker nodes."""
    from mlflow.tracking import MlflowClient
    from user_package import write_user_package

    code = write_user_package(tmp_path / "code")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(REPO)])}
    args = _sweep_args(tmp_path, mlflow_server.uri, ray_cluster.address, samples=4) + [
        "--model", "userpkg.models:build", "--dataset", "userpkg.data:load",
        "--experiment", "cluster-resume", "--max-concurrent", "1",
    ]  # fmt: skip
    client = MlflowClient(mlflow_server.uri)

    def children() -> list:
        experiment = client.get_experiment_by_name("cluster-resume")
        if experiment is None:
            return []
        runs = client.search_runs([experiment.experiment_id])
        return [r for r in runs if "mlflow.parentRunId" in r.data.tags]

    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeps", *args], cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if any(r.info.status == "FINISHED" for r in children()):
                break  # a trial has run on a worker: stop the sweep in the middle
            time.sleep(0.5)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        leftover = _stop(_session(proc.pid))
    assert not leftover, f"the sweep left processes running: {sorted(leftover)}"
    assert proc.returncode == 130, err[-3000:]
    # the driver's own output has no traceback (Ray may forward a stopped worker's KeyboardInterrupt
    # from its actor's shutdown, as "(prune_trial pid=N) Traceback ...": the worker's, not ours)
    own = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in err.splitlines()]
    assert not [line for line in own if "Traceback" in line and "pid=" not in line], err[-3000:]
    resume = err.strip().splitlines()[-1].strip()
    assert resume.startswith("python -m sweeps --resume "), err[-3000:]
    assert {r.info.status for r in children()} <= {"FINISHED", "KILLED"}
    finished_before = sum(r.info.status == "FINISHED" for r in children())
    assert finished_before < 4

    name = resume.split()[4]
    again = subprocess.run(
        [sys.executable, "-m", "sweeps", "--resume", name, "--tracking-uri", mlflow_server.uri],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    runs = children()
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 4 and {r.info.status for r in runs} <= {"FINISHED", "KILLED"}
    workers = {node.node_id for node in ray_cluster.worker_nodes}
    assert {r.data.params["node_id"] for r in finished} <= workers
    assert all(r.data.params["model"] == "userpkg.models:build" for r in finished)
