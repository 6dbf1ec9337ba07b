"""The epoch records of a child run, through a real sweep (Ray Tune, MLflow in a temp folder):
``epochs_run`` and ``epoch_test_accuracy`` have every epoch in their history and their final
value as MLflow's latest, for a one-shot and for an iterative recipe, while the per-iteration
contract metrics keep step = prune iteration and Tune still gets one report per rung.

The two recipes are a test-local grid (``--grid`` of a study defined here), so exactly these two
run, whatever a sampler would propose.
"""

from __future__ import annotations

import glob
import json
import os

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from search_spaces import GRIDS
from sweeps.cli import Study

GRID = "epoch_records"
ONESHOT = {"method": "global_magnitude", "target_sparsity": 0.6, "schedule": "oneshot",
           "iterations": 1, "finetune_epochs": 4, "lr": 0.01}  # fmt: skip
ITERATIVE = {**ONESHOT, "schedule": "iterative", "iterations": 2, "finetune_epochs": 2}
STUDY = Study(name=GRID, models=("cnn",), dataset="digits", space="unstructured",
              description="epoch records of a one-shot and an iterative recipe")  # fmt: skip
CONTRACT = ("test_accuracy", "sparsity", "nonzero_params", "total_params")


@pytest.fixture
def grid():
    GRIDS.register(GRID)(lambda quick=False: [dict(ONESHOT), dict(ITERATIVE)])
    yield
    GRIDS.unregister(GRID)


def points(client: MlflowClient, run_id: str, metric: str) -> list[tuple[int, float]]:
    """(step, value) of ``metric``'s history, by step."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))


def tune_reports(storage: str, run_name_part: str) -> list[dict]:
    """The results Ray Tune recorded for the trial whose recipe's run is named ``*part*``: its
    result.json lines, in order (one per ``tune.report``)."""
    for path in glob.glob(os.path.join(storage, "*", "*", "result.json")):
        with open(path) as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        recipe = rows[0]["config"]["recipe"] if rows else {}
        if rows and recipe.get("schedule") == run_name_part:
            return rows
    raise AssertionError(f"no Tune results of a {run_name_part} trial under {storage}")


@pytest.mark.slow
def test_epoch_history_ends_at_the_final_epoch(grid, tmp_path, ray_tmpdir):
    from sweeps.runner import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = [
        "--quick", "--grid", "--baseline-epochs", "2", "--tracking-uri", uri,
        "--experiment", "epochs", "--cache-dir", str(tmp_path / "baselines"),
        "--storage-path", str(tmp_path / "ray"), "--results-dir", str(tmp_path / "results"),
        "--max-concurrent", "2", "--seed", "0",
    ]  # fmt: skip
    assert main(STUDY, argv) == 0
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    runs = mlflow.search_runs(experiment_names=["epochs"])
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert sorted(children["tags.mlflow.runName"]) == [
        "cnn_prune_60perc_iterative2_2", "cnn_prune_60perc_oneshot4"]  # fmt: skip
    assert (children["status"] == "FINISHED").all()
    by_name = {row["tags.mlflow.runName"]: row for _, row in children.iterrows()}

    # one-shot, 4 fine-tune epochs: a point per epoch, latest = the 4th
    one = by_name["cnn_prune_60perc_oneshot4"]
    latest = client.get_run(one["run_id"]).data.metrics
    assert points(client, one["run_id"], "epochs_run") == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]
    assert latest["epochs_run"] == 4.0 == one["metrics.epochs_run"]
    accuracy = points(client, one["run_id"], "epoch_test_accuracy")
    assert [step for step, _ in accuracy] == [1, 2, 3, 4]
    assert all(0.0 <= value <= 1.0 for _, value in accuracy)
    # the last epoch's point is the recipe's final test accuracy, and MLflow's latest value
    assert accuracy[-1][1] == latest["epoch_test_accuracy"] == latest["test_accuracy"]
    # the contract metrics keep one point, at step = prune iteration 1
    for metric in CONTRACT:
        assert [step for step, _ in points(client, one["run_id"], metric)] == [1], metric

    # iterative, 2 prune steps of 2 epochs: a point per prune step at step = epochs so far
    it = by_name["cnn_prune_60perc_iterative2_2"]
    latest = client.get_run(it["run_id"]).data.metrics
    assert points(client, it["run_id"], "epochs_run") == [(2, 2.0), (4, 4.0)]
    assert latest["epochs_run"] == 4.0
    per_step = [value for _, value in points(client, it["run_id"], "test_accuracy")]
    accuracy = points(client, it["run_id"], "epoch_test_accuracy")
    assert accuracy == [(2, per_step[0]), (4, per_step[1])]
    assert latest["epoch_test_accuracy"] == latest["test_accuracy"] == per_step[1]
    for metric in CONTRACT:
        assert [step for step, _ in points(client, it["run_id"], metric)] == [1, 2], metric

    # what Tune got is unchanged: the one-shot recipe's rungs are its epochs, the iterative
    # one's its prune steps, each with the epochs run by then
    storage = str(tmp_path / "ray")
    reports = [(r["rung"], r["epochs_run"]) for r in tune_reports(storage, "oneshot")]
    assert reports == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]
    reports = [(r["rung"], r["epochs_run"]) for r in tune_reports(storage, "iterative")]
    assert reports == [(1, 2.0), (2, 4.0)]
