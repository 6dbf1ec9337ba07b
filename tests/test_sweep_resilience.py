"""Sweeps that survive: a killed driver resumed, SIGINT/SIGTERM, failing and diverging trials, two
sweeps on one store and one baseline cache, unreadable caches, a baseline that never learned.

Real Ray Tune, Optuna and MLflow (SQLite in ``tmp_path``); the drivers that get signals run as
their own processes, and every process they started is checked to be gone afterwards.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient

import search_spaces
from prune_core.baseline import baseline_path
from sweeps.cli import resolve_spec
from sweeps.resnet18_iterative import STUDY
from sweeps.runner import base_config, main

MODULE = "sweeps.resnet18_iterative"
EXPERIMENT = "resilience"


def sweep_args(tmp_path, *extra: str) -> list[str]:
    """A small CPU sweep: the small CNN on digits, a 2-epoch baseline, in ``tmp_path``."""
    return [
        "--quick", "--model", "cnn", "--baseline-epochs", "2",
        "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--experiment", EXPERIMENT,
        "--cache-dir", str(tmp_path / "baselines"), "--storage-path", str(tmp_path / "ray"),
        "--results-dir", str(tmp_path / "results"), *extra,
    ]  # fmt: skip


def start_driver(
    args: list[str], log_path, module: str = MODULE, pythonpath: str = ""
) -> subprocess.Popen:
    """The sweep as its own process (its own session, so the test can clean up after it);
    ``pythonpath`` goes in front of the inherited one (the user's own code)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args], stdout=log, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )  # fmt: skip


def children_of(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (read from /proc)."""
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
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_all(pids: set[int], wait_s: float = 10.0) -> None:
    """SIGKILL whatever of ``pids`` is still there (test cleanup), and wait up to ``wait_s`` for
    them to be gone: a killed process is still listed until the kernel has torn it down, which
    on a loaded machine can take longer than the next line of the test."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + wait_s
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def child_statuses(db: str) -> dict[str, tuple[str, int | None]]:
    """run id -> (status, end time) of every live child run, read straight from SQLite (cheap
    enough to poll while a sweep writes)."""
    if not os.path.exists(db):
        return {}
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            rows = conn.execute(
                "SELECT r.run_uuid, r.status, r.end_time FROM runs r JOIN tags t "
                "ON t.run_uuid = r.run_uuid WHERE t.key = 'mlflow.parentRunId' "
                "AND r.lifecycle_stage = 'active'"
            ).fetchall()
    except sqlite3.OperationalError:  # tables not made yet
        return {}
    return {run_id: (status, end) for run_id, status, end in rows}


def wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None):
    """Poll ``predicate`` every 0.2 s until it returns something true, else fail the test."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the sweep exited ({proc.returncode}) before {what}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def runs_of(tmp_path):
    """Parent and live child runs of the test experiment, as ``mlflow.search_runs`` frames."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    exp = MlflowClient(uri).get_experiment_by_name(EXPERIMENT)
    runs = mlflow.search_runs(experiment_ids=[exp.experiment_id])
    if "tags.mlflow.parentRunId" not in runs:  # no child run at all
        return runs, runs.iloc[0:0]
    is_child = runs["tags.mlflow.parentRunId"].notna()
    return runs[~is_child], runs[is_child]


@pytest.mark.slow
def test_killed_driver_resumes_without_losing_or_repeating_trials(tmp_path, ray_tmpdir):
    db = str(tmp_path / "mlflow.db")
    args = sweep_args(tmp_path, "--num-samples", "6", "--max-concurrent", "1")
    driver = start_driver(args, tmp_path / "first.log")
    seen: set[int] = set()
    try:

        def two_finished_one_running():
            # kill while a trial is mid-way: between two trials nothing would be left RUNNING
            seen.update(children_of(driver.pid))
            statuses = [s for s, _ in child_statuses(db).values()]
            return statuses.count("FINISHED") >= 2 and "RUNNING" in statuses

        wait_for(two_finished_one_running, 240, "2 finished trials and a running one", driver)
        # a crash: no handler runs. The driver's workers go with it: a worker left running
        # could finish its trial and log it FINISHED before the cleanup below killed it
        seen.update(children_of(driver.pid))
        kill_all(seen | {driver.pid})
        driver.wait(30)
    finally:
        seen.update(children_of(driver.pid))
        kill_all(seen)
    finished_before = {k: v for k, v in child_statuses(db).items() if v[0] == "FINISHED"}
    assert 2 <= len(finished_before) < 6
    assert any(s == "RUNNING" for s, _ in child_statuses(db).values())  # the crash left one

    parents, _ = runs_of(tmp_path)
    sweep_name = parents["tags.sweep"].iloc[0]
    assert main(STUDY, ["--resume", sweep_name, "--tracking-uri", f"sqlite:///{db}"]) == 0

    parents, children = runs_of(tmp_path)
    assert len(parents) == 1 and parents["status"].iloc[0] == "FINISHED"
    assert parents["tags.resumed"].iloc[0] == "1"
    assert len(children) == 6 and (children["status"] == "FINISHED").all()
    assert children["tags.trial_id"].nunique() == 6  # exactly one child run per trial
    after = child_statuses(db)
    for run_id, (status, end_time) in finished_before.items():
        assert after[run_id] == (status, end_time)  # not retrained: same run, same end time


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_marks_killed_and_prints_resume(tmp_path, ray_tmpdir, sig):
    db = str(tmp_path / "mlflow.db")
    args = sweep_args(tmp_path, "--num-samples", "6", "--max-concurrent", "2")
    driver = start_driver(args, tmp_path / "driver.log")
    seen: set[int] = set()
    try:

        def trials_running():
            seen.update(children_of(driver.pid))
            return any(s == "RUNNING" for s, _ in child_statuses(db).values())

        wait_for(trials_running, 240, "a running trial", driver)
        seen.update(children_of(driver.pid))
        sent = time.monotonic()
        os.kill(driver.pid, sig)
        returncode = driver.wait(60)
        took = time.monotonic() - sent
    finally:
        kill_all(seen | children_of(driver.pid))
    log = (tmp_path / "driver.log").read_text()
    assert returncode == 128 + sig, log[-2000:]
    assert took < 30
    assert len(seen) >= 2  # Ray's processes were seen while the sweep ran...
    assert [p for p in seen if alive(p)] == []  # ...and every one of them is gone
    parents, children = runs_of(tmp_path)
    assert parents["status"].iloc[0] == "KILLED"
    assert (children["status"].isin(["FINISHED", "KILLED"])).all()
    assert (children["status"] == "KILLED").any()
    sweep_name = parents["tags.sweep"].iloc[0]
    assert f"python -m {MODULE} --resume {sweep_name} --tracking-uri sqlite:///{db}" in log


@pytest.mark.slow
def test_raising_and_diverging_trials_fail_alone(tmp_path, ray_tmpdir, monkeypatch, capsys):
    recipes = [
        # raises: a layer the CNN does not have (a ValueError inside the trial)
        {"target_sparsity": 0.5, "finetune_epochs": 1, "layers": ("no_such_layer",)},
        # diverges: a learning rate that sends the loss to inf/NaN within a few steps
        {"target_sparsity": 0.6, "finetune_epochs": 2, "lr": 1e30},
        {"target_sparsity": 0.7, "finetune_epochs": 1},
        {"target_sparsity": 0.8, "finetune_epochs": 1},
    ]
    monkeypatch.setattr(search_spaces, "get_grid", lambda study, quick: recipes)
    args = sweep_args(tmp_path, "--grid", "--max-failures", "1")
    # an unreadable cache entry of this very baseline: reported in one line and trained again
    cached = baseline_path(
        str(tmp_path / "baselines"), base_config(resolve_spec(STUDY, args), "cnn")
    )
    os.makedirs(os.path.dirname(cached))
    with open(cached, "wb") as fh:
        fh.write(os.urandom(100))

    assert main(STUDY, args) == 1
    err = capsys.readouterr().err
    assert sum("is unreadable" in line for line in err.splitlines()) == 1
    # one whole sentence, without torch's weights_only advice (wrong for a cache file)
    assert "not a complete PyTorch file (truncated or overwritten)" in err
    assert "weights_only" not in err
    parents, children = runs_of(tmp_path)
    assert parents["status"].iloc[0] == "FINISHED"
    assert parents["tags.baseline_source"].iloc[0] == "trained"
    by_sparsity = {round(float(row["params.target_sparsity"]), 2): row
                   for _, row in children.iterrows()}  # fmt: skip
    assert len(children) == 4 and sorted(by_sparsity) == [0.5, 0.6, 0.7, 0.8]
    raised, diverged = by_sparsity[0.5], by_sparsity[0.6]
    assert raised["status"] == "FAILED" and raised["tags.failure"] == "error"
    assert "no_such_layer" in raised["tags.error"]
    assert raised["tags.attempt"] == "2"  # retried once, the retry replaced the first run
    assert diverged["status"] == "FAILED" and diverged["tags.failure"] == "diverged"
    assert diverged["tags.attempt"] == "1"  # a divergence is not retried
    # stopped at the first non-finite loss: no epoch finished, nothing logged after it
    assert pd_isna(diverged.get("metrics.test_accuracy"))
    for t in (0.7, 0.8):
        assert by_sparsity[t]["status"] == "FINISHED"
    front = (tmp_path / "results").glob("*/pareto.csv")
    text = next(front).read_text()
    assert raised["tags.mlflow.runName"] not in text and diverged["tags.mlflow.runName"] not in text
    assert f"{raised['tags.mlflow.runName']}: error" in err
    assert f"{diverged['tags.mlflow.runName']}: diverged" in err


def pd_isna(value) -> bool:
    """True for None or NaN (a metric never logged)."""
    return value is None or value != value


@pytest.mark.slow
def test_two_sweeps_share_one_store_and_one_baseline(tmp_path, ray_tmpdir):
    drivers, seen = [], set()
    try:
        for i in range(2):
            args = sweep_args(tmp_path, "--num-samples", "2", "--max-concurrent", "1")
            drivers.append(start_driver(args, tmp_path / f"sweep{i}.log"))
        deadline = time.monotonic() + 300
        while any(d.poll() is None for d in drivers) and time.monotonic() < deadline:
            for d in drivers:
                seen.update(children_of(d.pid))
            time.sleep(0.5)
        codes = [d.poll() for d in drivers]
    finally:
        for d in drivers:
            seen.update(children_of(d.pid))
            if d.poll() is None:
                d.kill()
        kill_all(seen)
    logs = [(tmp_path / f"sweep{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], [log[-1500:] for log in logs]
    assert not any("database is locked" in log for log in logs)
    parents, children = runs_of(tmp_path)
    assert len(parents) == 2 and (parents["status"] == "FINISHED").all()
    assert parents["tags.sweep"].nunique() == 2
    assert sorted(parents["tags.baseline_source"]) == ["cache", "trained"]  # trained once
    assert len(children) == 4 and (children["status"] == "FINISHED").all()


@pytest.mark.slow
def test_baseline_at_chance_stops_before_any_trial(tmp_path, ray_tmpdir, capsys, monkeypatch):
    # a baseline that guesses: 10 classes, chance 0.1 (0 epochs, which made one, is refused
    # now before anything is written, so its accuracy is set to a guess's here)
    import dataclasses

    import sweeps.runner

    real = sweeps.runner.load_or_train_baseline

    def guessing(*args, **kwargs):
        return dataclasses.replace(real(*args, **kwargs), test_accuracy=0.105)

    monkeypatch.setattr(sweeps.runner, "load_or_train_baseline", guessing)
    code = main(STUDY, sweep_args(tmp_path, "--baseline-epochs", "1", "--num-samples", "2"))
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "within 2 points of chance" in lines[0]
    assert "--baseline-epochs" in lines[0]
    parents, children = runs_of(tmp_path)
    assert len(children) == 0
    assert parents["status"].iloc[0] == "FAILED"
    assert parents["tags.failure"].iloc[0] == "baseline_not_learned"


@pytest.mark.slow
def test_sweep_of_a_user_package_resumes_after_sigint(tmp_path, ray_tmpdir, monkeypatch):
    """``python -m sweeps`` with the user's own model builder and dataset function (a package
    outside the repository, importable by the driver through PYTHONPATH, shipped to the trials
    by Ray): interrupted by SIGINT during its trials, then ``--resume`` finishes it from the
    sources it recorded."""
    from user_package import write_user_package

    from sweeps.__main__ import STUDY as GENERIC

    code = write_user_package(tmp_path / "code")
    sources = ["--model", "userpkg.models:build", "--dataset", "userpkg.data:load"]
    args = sweep_args(tmp_path, *sources, "--num-samples", "4", "--max-concurrent", "1")
    db = str(tmp_path / "mlflow.db")
    driver = start_driver(args, tmp_path / "driver.log", "sweeps", str(code))
    seen: set[int] = set()
    try:

        def trials_running():
            seen.update(children_of(driver.pid))
            return any(s == "RUNNING" for s, _ in child_statuses(db).values())

        wait_for(trials_running, 240, "a running trial", driver)
        os.kill(driver.pid, signal.SIGINT)
        returncode = driver.wait(60)
    finally:
        kill_all(seen | children_of(driver.pid))
    log = (tmp_path / "driver.log").read_text()
    assert returncode == 130, log[-2000:]
    assert "python -m sweeps --resume" in log
    parents, _ = runs_of(tmp_path)
    assert parents["status"].iloc[0] == "KILLED"
    assert parents["params.models"].iloc[0] == "userpkg.models:build"

    monkeypatch.syspath_prepend(str(code))  # the resuming driver imports the package too
    name = parents["tags.sweep"].iloc[0]
    assert main(GENERIC, ["--resume", name, "--tracking-uri", f"sqlite:///{db}"]) == 0
    parents, children = runs_of(tmp_path)
    assert parents["status"].iloc[0] == "FINISHED"
    assert len(children) == 4 and (children["status"] == "FINISHED").all()
    assert (children["params.model"] == "userpkg.models:build").all()
    assert (children["params.dataset"] == "userpkg.data:load").all()
