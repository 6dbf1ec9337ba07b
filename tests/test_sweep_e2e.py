"""End to end: a real 2-trial sweep on digits (real Ray Tune, Optuna, MLflow in a temp folder),
checked through ``mlflow.search_runs``; a second sweep reuses the cached dense baseline."""

from __future__ import annotations

import os

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from sweeps.cli import resolve_spec
from sweeps.resnet18_iterative import STUDY
from sweeps.runner import run_sweep

PARAMS = ["dataset", "model", "method", "schedule", "target_sparsity", "iterations",
          "finetune_epochs", "lr", "seed"]  # fmt: skip
METRICS = ["test_accuracy", "sparsity", "nonzero_params", "total_params"]


def sweep_args(tmp_path, num_samples: int) -> list[str]:
    return [
        # the small CNN: ResNet-18 trials cost minutes on 2 cores and test nothing more here
        "--quick", "--model", "cnn", "--num-samples", str(num_samples), "--baseline-epochs", "2",
        "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--experiment", "e2e",
        "--cache-dir", str(tmp_path / "baselines"), "--storage-path", str(tmp_path / "ray"),
        "--max-concurrent", "2", "--seed", "3",
    ]  # fmt: skip


@pytest.mark.slow
def test_two_trial_sweep_tracked_and_baseline_cached(tmp_path, ray_tmpdir, monkeypatch):
    import sweeps.runner

    # as on a machine with cores to spare: the baseline trains and the store is made while Ray
    # starts (the 2-core CI machine runs them one after the other in every other sweep test)
    monkeypatch.setattr(sweeps.runner, "OVERLAP_MIN_CPUS", 1)
    first = run_sweep(resolve_spec(STUDY, sweep_args(tmp_path, 2)))
    assert first.failed_trials == 0
    assert first.baseline_reused is False
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("e2e")
    assert exp.artifact_location == (tmp_path / "artifacts").as_uri()

    runs = mlflow.search_runs(experiment_ids=[exp.experiment_id])
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(parents) == 1 and len(children) == 2
    parent_id = parents["run_id"].iloc[0]
    assert parent_id == first.parent_run_id
    assert (children["tags.mlflow.parentRunId"] == parent_id).all()
    assert (children["status"] == "FINISHED").all()
    assert parents["status"].iloc[0] == "FINISHED"
    # the results carry the latency the driver logged after the trials (put into the frame it
    # had read before the pass, not read again): what the store now holds
    table = first.runs.set_index("run_id")
    for _, row in children.iterrows():
        assert row["params.latency_measured_by"] == "driver"
        for name in ("latency_ms", "latency_ms_spread", "latency_ms_trial"):
            assert table.loc[row["run_id"], name] == row[f"metrics.{name}"], name

    for _, row in children.iterrows():
        for p in PARAMS:
            assert row[f"params.{p}"] is not None, p
        assert row["params.dataset"] == "digits" and row["params.model"] == "cnn"
        assert row["params.method"] == "global_magnitude"
        target = float(row["params.target_sparsity"])
        iterations = int(row["params.iterations"])
        assert row["params.schedule"] == ("oneshot" if iterations == 1 else "iterative")
        # global magnitude prunes round(target * N) of the N conv and linear weights of the CNN
        # on 8x8 digits: 1*16*9 + 16*32*9 + 128*128 + 128*10 = 22,416
        assert row["metrics.sparsity"] == pytest.approx(round(target * 22_416) / 22_416, abs=1e-12)
        assert 0.0 <= row["metrics.test_accuracy"] <= 1.0
        assert row["metrics.total_params"] == 22_602  # the 22,416 weights and 186 biases
        assert row["metrics.nonzero_params"] < row["metrics.total_params"]
        # one point per prune iteration, step = iteration, final value last
        for metric in METRICS:
            history = client.get_metric_history(row["run_id"], metric)
            assert sorted(m.step for m in history) == list(range(1, iterations + 1))
            last = max(history, key=lambda m: m.step)
            assert last.value == pytest.approx(row[f"metrics.{metric}"])
        sparsities = [m.value for m in sorted(client.get_metric_history(row["run_id"], "sparsity"),
                                              key=lambda m: m.step)]  # fmt: skip
        assert sparsities == sorted(sparsities)
        artifacts = [a.path for a in client.list_artifacts(row["run_id"], "checkpoints")]
        assert artifacts == [f"checkpoints/{row['tags.mlflow.runName']}.pt"]

    parent = client.get_run(parent_id)
    assert parent.data.tags["baseline_source"] == "trained"
    assert 0.0 < parent.data.metrics["dense_test_accuracy"] <= 1.0
    assert parent.data.params["num_samples"] == "2"
    parent_artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"pareto.csv", "pareto.png", "report.md", "results.csv"} <= parent_artifacts
    assert parent.data.metrics["pareto_size"] >= 1
    assert first.runs["pareto"].any()
    # the baseline file, and the lock file that keeps two sweeps from training it twice
    cached = sorted(os.listdir(tmp_path / "baselines"))
    assert len(cached) == 2 and cached[1] == cached[0] + ".lock"
    mtime = os.path.getmtime(tmp_path / "baselines" / cached[0])

    # the same sweep again: the baseline comes from the cache, not from training
    second = run_sweep(resolve_spec(STUDY, sweep_args(tmp_path, 1)))
    assert second.baseline_reused is True
    assert second.dense_test_accuracy == first.dense_test_accuracy
    assert sorted(os.listdir(tmp_path / "baselines")) == cached
    assert os.path.getmtime(tmp_path / "baselines" / cached[0]) == mtime
    assert client.get_run(second.parent_run_id).data.tags["baseline_source"] == "cache"
    all_runs = mlflow.search_runs(experiment_ids=[exp.experiment_id])
    assert len(all_runs) == 2 + 3  # two parents, three children

    # two sweeps, different trials (2 and 1), one reference: the parent runs' pareto_hypervolume
    # is measured against the fixed point (accuracy 0, the dense CNN's 22,602 parameters), logged
    # beside it, and equals the area each sweep's own runs dominate up to that point
    for outcome in (first, second):
        parent_data = client.get_run(outcome.parent_run_id).data
        metrics, tags = parent_data.metrics, parent_data.tags
        assert metrics["pareto_reference.test_accuracy"] == 0.0
        assert metrics["pareto_reference.nonzero_params"] == 22_602.0
        assert tags["pareto_reference_kinds"] == "fixed,fixed"
        mine = all_runs[all_runs["tags.mlflow.parentRunId"] == outcome.parent_run_id]
        points = sorted(
            zip(mine["metrics.nonzero_params"], mine["metrics.test_accuracy"], strict=True)
        )
        # integral over p in [0, 22602] of the best accuracy among runs with <= p parameters
        edges = [p for p, _ in points] + [22_602.0]
        area = sum(
            (edges[k + 1] - edges[k]) * max(a for _, a in points[: k + 1])
            for k in range(len(points))
        )
        assert metrics["pareto_hypervolume"] == pytest.approx(area, rel=1e-9)
    assert len(all_runs[all_runs["tags.mlflow.parentRunId"] == second.parent_run_id]) == 1


def one_recipe_space(trial, quick: bool = False) -> dict:
    """A space with one recipe: every trial the search proposes is the same one."""
    trial.suggest_categorical("method", ("global_magnitude",))
    return {"target_sparsity": 0.5, "schedule": "oneshot", "finetune_epochs": 1, "lr": 0.01}


@pytest.mark.slow
def test_a_recipe_proposed_again_reuses_its_run_and_says_so(
    tmp_path, ray_tmpdir, monkeypatch, capfd
):
    from search_spaces import SPACES

    monkeypatch.setitem(SPACES._items, "one_recipe", one_recipe_space)
    args = [*sweep_args(tmp_path, 3), "--space", "one_recipe", "--max-concurrent", "1",
            "--early-stop", "none"]  # fmt: skip
    outcome = run_sweep(resolve_spec(STUDY, args))
    assert outcome.failed_trials == 0
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_ids=[outcome.experiment_id])
    children = runs[runs["tags.mlflow.parentRunId"] == outcome.parent_run_id]
    # three trials, one recipe: one child run, and the two later trials named on it
    assert len(children) == 1 and children["status"].iloc[0] == "FINISHED"
    first = children["tags.trial_id"].iloc[0]
    reused_by = children["tags.reused_by"].iloc[0].split(",")
    assert len(reused_by) == 2 and first not in reused_by and len(set(reused_by)) == 2
    parent = MlflowClient(uri).get_run(outcome.parent_run_id)
    assert parent.data.metrics["reused_trials"] == 2
    err = capfd.readouterr().err  # the driver's progress lines (the trials' come via Ray)
    assert "2 trial(s) proposed a recipe this sweep had already run" in err
