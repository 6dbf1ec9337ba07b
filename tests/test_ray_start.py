"""Starting a local Ray for a sweep: the start-up wait is long enough for a loaded machine, a
start that still times out ends the sweep with one line (exit 2, no traceback, no MLflow
store), and trial workers run at the driver's priority."""

from __future__ import annotations

import inspect
import os
import time

import pytest

from sweeps import runner
from sweeps.resnet18_iterative import STUDY

# what Ray 2.60's ray._private.node.Node raises when its raylet has not registered in time
NODE_TIMEOUT = Exception(
    "The current node timed out during startup. This could happen because some of the raylet "
    "failed to startup or the GCS has become overloaded."
)


def unset(monkeypatch, name: str) -> None:
    """Remove ``name`` from the environment for this test, and again after it when the code
    under test sets it (``delenv`` alone records nothing to undo for an absent name)."""
    monkeypatch.setenv(name, "")
    monkeypatch.delenv(name)


def sweep_argv(tmp_path) -> list[str]:
    return [
        "--quick", "--model", "cnn", "--num-samples", "1", "--baseline-epochs", "1",
        "--tracking-uri", f"sqlite:///{tmp_path}/mlruns/mlflow.db",
        "--cache-dir", str(tmp_path / "baselines"), "--storage-path", str(tmp_path / "ray"),
        "--results-dir", str(tmp_path / "results"),
    ]  # fmt: skip


def test_node_start_timeout_ends_in_one_line(tmp_path, monkeypatch, capsys):
    import ray

    unset(monkeypatch, runner.RAY_START_WAIT_ENV)
    calls = []

    def timed_out(*args, **kwargs):
        # the environment Ray's processes would have inherited
        calls.append({**kwargs, "environ": dict(os.environ)})
        raise NODE_TIMEOUT

    monkeypatch.setattr(ray, "init", timed_out)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    unset(monkeypatch, runner.RAY_WORKER_NICENESS_ENV)
    assert runner.main(STUDY, sweep_argv(tmp_path)) == 2
    assert len(calls) == 1
    # the trials' settings come through the environment Ray starts with, not a runtime env
    # (whose workers Ray would start anew for each trial actor)
    assert calls[0]["runtime_env"] is None
    assert calls[0]["environ"]["RAY_worker_niceness"] == "0"
    assert calls[0]["environ"]["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    # and only while Ray starts: the driver's own environment is as it was
    assert "RAY_worker_niceness" not in os.environ
    # Ray was given the longer wait through its own setting (inherited by its processes)
    assert os.environ[runner.RAY_START_WAIT_ENV] == str(runner.RAY_START_WAIT_S) == "120"
    err = capsys.readouterr().err.strip().splitlines()
    # the progress lines before Ray ("[sweep] dataset ...") and then exactly one line
    problems = [line for line in err if not line.startswith("[sweep] ")]
    assert problems == [
        "python -m sweeps.resnet18_iterative: error: Ray's local node did not start within "
        "120 s (The current node timed out during startup. This could happen because some of "
        "the raylet failed to startup or the GCS has become overloaded.); the machine is busy: "
        "try again later, or allow longer with RAY_gcs_server_port_wait_time_s=480"
    ]
    assert not any("Traceback" in line for line in err)
    # Ray is checked before any MLflow store exists: not even its folder is made
    assert not (tmp_path / "mlruns").exists()
    assert not (tmp_path / "results").exists()


def test_the_baseline_trains_and_the_store_is_made_while_ray_starts(tmp_path, monkeypatch, capsys):
    """With cores to spare, Ray's start overlaps the dense baseline and the SQLite store's
    creation: the fake ``ray.init`` waits (up to 60 s) until both have happened before it
    fails. The store it made is removed again, the baseline (a cache) stays."""
    import ray

    db = tmp_path / "mlruns" / "mlflow.db"
    cache = tmp_path / "baselines"
    seen = {}

    def slow_start(*args, **kwargs):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (db.exists() and list(cache.glob("*.pt"))):
            time.sleep(0.05)
        seen["store"], seen["baseline"] = db.exists(), bool(list(cache.glob("*.pt")))
        raise NODE_TIMEOUT

    monkeypatch.setattr(runner, "OVERLAP_MIN_CPUS", 1)  # as on a machine with spare cores
    monkeypatch.setattr(ray, "init", slow_start)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    unset(monkeypatch, runner.RAY_START_WAIT_ENV)
    assert runner.main(STUDY, sweep_argv(tmp_path)) == 2
    assert seen["store"] and seen["baseline"]
    assert capsys.readouterr().err.count("error:") == 1
    assert not (tmp_path / "mlruns").exists()  # the new store, removed with its folder
    assert len(list(cache.glob("*.pt"))) == 1  # the baseline is kept for the next start


def test_the_store_is_made_while_ray_starts_with_two_cores(tmp_path, monkeypatch, capsys):
    """On the 2-core VM the store is still made while Ray starts (the baseline trains after
    Ray's start there): the fake ``ray.init`` waits (up to 60 s) until the store exists, and no
    baseline exists yet then. The store it made is removed again after the failed start."""
    import ray

    db = tmp_path / "mlruns" / "mlflow.db"
    seen = {}

    def slow_start(*args, **kwargs):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not db.exists():
            time.sleep(0.05)
        seen["store"] = db.exists()
        seen["baseline"] = bool(list((tmp_path / "baselines").glob("*.pt")))
        raise NODE_TIMEOUT

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(ray, "init", slow_start)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    unset(monkeypatch, runner.RAY_START_WAIT_ENV)
    assert runner.main(STUDY, sweep_argv(tmp_path)) == 2
    assert seen == {"store": True, "baseline": False}
    assert capsys.readouterr().err.count("error:") == 1
    assert not (tmp_path / "mlruns").exists()  # the new store, removed with its folder


def test_a_failed_start_leaves_an_existing_store_alone(tmp_path, monkeypatch):
    import ray

    from sweeps.tracking import prepare_sqlite_store, resolve_tracking_uri

    prepare_sqlite_store(resolve_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db"))
    monkeypatch.setattr(runner, "OVERLAP_MIN_CPUS", 1)
    monkeypatch.setattr(ray, "init", lambda *a, **k: (_ for _ in ()).throw(NODE_TIMEOUT))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    unset(monkeypatch, runner.RAY_START_WAIT_ENV)
    assert runner.main(STUDY, sweep_argv(tmp_path)) == 2
    assert (tmp_path / "mlruns" / "mlflow.db").exists()


def test_the_baseline_overlaps_only_with_cores_to_spare(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert not runner.overlaps_start_up()  # the 2-core VM: one after the other
    monkeypatch.setattr(os, "cpu_count", lambda: runner.OVERLAP_MIN_CPUS)
    assert runner.overlaps_start_up()


def test_the_user_setting_of_the_wait_is_kept(monkeypatch):
    monkeypatch.setenv(runner.RAY_START_WAIT_ENV, "300")
    assert runner.ray_start_wait_s() == 300
    monkeypatch.setenv(runner.RAY_START_WAIT_ENV, "soon")
    with pytest.raises(runner.UsageError, match="RAY_gcs_server_port_wait_time_s='soon'"):
        runner.ray_start_wait_s()


def test_other_start_failures_are_one_line_too(monkeypatch):
    import ray

    def fails(*args, **kwargs):
        raise RuntimeError("Failed to start GCS.  Last 0 lines of error files:\n\nmore\nlines")

    monkeypatch.setattr(ray, "init", fails)
    monkeypatch.setenv("RAY_TMPDIR", "/tmp/rayX")
    with pytest.raises(runner.RayStartFailed) as err:
        runner._start_local_ray({})
    assert str(err.value) == (
        "cannot start a local Ray (Failed to start GCS.  Last 0 lines of error files:); Ray's "
        "logs are in /tmp/rayX/session_latest/logs"
    )


def test_raylet_registration_waits_past_rays_30_seconds(monkeypatch):
    from ray._private import node, services

    # the wait this lengthens: Ray's node polls services.get_node for a fixed 30 s (if a Ray
    # upgrade changes that, _raylet_registration_wait has to follow)
    source = inspect.getsource(node.Node.__init__)
    assert "raylet_start_wait_time_s = 30" in source
    assert "ray._private.services.get_node(" in source

    polls = []

    def not_yet(*args):
        polls.append(time.monotonic())
        if len(polls) < 3:
            raise RuntimeError("node not found")
        return {"node_id": args[1]}

    monkeypatch.setattr(services, "get_node", not_yet)
    monkeypatch.setattr(time, "sleep", lambda s: None)
    with runner._raylet_registration_wait(60):
        # one call of Ray's keeps polling until the node is there
        assert services.get_node("gcs", "n1") == {"node_id": "n1"}
    assert len(polls) == 3
    assert services.get_node is not_yet  # put back afterwards
    polls.clear()
    with runner._raylet_registration_wait(0), pytest.raises(RuntimeError, match="not found"):
        services.get_node("gcs", "n1")  # past the deadline: Ray's own error, at once
    assert len(polls) == 1


def test_trial_niceness_is_0_unless_the_user_set_it(monkeypatch):
    unset(monkeypatch, runner.RAY_WORKER_NICENESS_ENV)
    assert runner.trial_niceness() == "0"
    monkeypatch.setenv(runner.RAY_WORKER_NICENESS_ENV, "15")  # Ray's default, asked for
    assert runner.trial_niceness() == "15"
    monkeypatch.setenv(runner.RAY_WORKER_NICENESS_ENV, "low")
    with pytest.raises(runner.UsageError, match="RAY_worker_niceness='low': not an integer"):
        runner.trial_niceness()


@pytest.mark.slow
def test_trial_workers_run_at_the_drivers_priority(tmp_path, ray_tmpdir, monkeypatch):
    import ray

    from sweeps.cli import resolve_spec
    from sweeps.tracking import resolve_tracking_uri

    unset(monkeypatch, runner.RAY_WORKER_NICENESS_ENV)
    unset(monkeypatch, runner.RAY_START_WAIT_ENV)
    spec = resolve_spec(STUDY, sweep_argv(tmp_path))
    connected, _ = runner._init_ray(spec, resolve_tracking_uri(spec.tracking_uri))
    assert connected

    @ray.remote(num_cpus=1)
    def niceness() -> int:
        return os.nice(0)

    # Ray's default would be the driver's + 15
    assert ray.get(niceness.remote()) == os.nice(0)
