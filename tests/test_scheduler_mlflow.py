"""MO-ASHA in a real Ray Tune run, without training: scripted trials report rung values, the
scheduler stops the one non-dominated sorting puts outside the top 1/eta, and the sweep's
trial-end callback leaves its MLflow child run KILLED with tag ``early_stopped=rung 1`` and its
partial history, never RUNNING. The finished trials' runs stay FINISHED."""

from __future__ import annotations

import sys

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from prune_core.config import DataConfig, TrainConfig
from sweeps.callbacks import TrialEndCallback
from sweeps.scheduler import MOASHAScheduler
from sweeps.trial import TrialContext

OBJECTIVES = "test_accuracy:max,nonzero_params:min"
LAST_RUNG = 3
# (accuracy, nonzero parameters) each trial reports at rungs 1, 2, 3. Run one at a time, in this
# order. Rung 1: a and b are in grace (fewer than eta = 3 trials there); c arrives third and is
# dominated by both (0.7 < 0.8 < 0.9 and 700 > 600 > 500), so with ceil(3 / 3) = 1 kept it stops.
# Rungs 2 and 3 never hold 3 trials, so a and b run to their last rung.
SCRIPT = {
    "a": [(0.90, 500.0), (0.91, 400.0), (0.92, 300.0)],
    "b": [(0.80, 600.0), (0.81, 500.0), (0.82, 400.0)],
    "c": [(0.70, 700.0), (0.99, 10.0), (0.99, 5.0)],  # would win later: must not get there
}


def scripted_trial(config: dict) -> None:
    """A trial as ``sweeps.trial`` tracks one: a child run tagged with its Ray Tune trial id,
    metrics logged at each rung before the rung is reported, FINISHED only after its last rung."""
    from ray import tune

    client = MlflowClient(config["uri"])
    tags = {"mlflow.parentRunId": config["parent"], "trial_id": tune.get_context().get_trial_id(),
            "script": config["name"]}  # fmt: skip
    run = client.create_run(config["experiment"], run_name=config["name"], tags=tags)
    for rung, (acc, params) in enumerate(SCRIPT[config["name"]], start=1):
        client.log_metric(run.info.run_id, "test_accuracy", acc, step=rung)
        client.log_metric(run.info.run_id, "nonzero_params", params, step=rung)
        tune.report({"test_accuracy": acc, "nonzero_params": params, "rung": rung,
                     "last_rung": LAST_RUNG})  # fmt: skip
    client.set_terminated(run.info.run_id, "FINISHED")


@pytest.mark.slow
def test_stopped_trial_is_killed_in_mlflow_not_left_running(tmp_path, ray_tmpdir):
    import ray
    from ray import tune

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("moasha", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(experiment, run_name="sweep").info.run_id
    ctx = TrialContext(
        data=DataConfig(), train=TrainConfig(), model="cnn", seed=0, cpus_per_trial=1.0,
        gpus_per_trial=0.0, tracking_uri=uri, experiment_id=experiment, parent_run_id=parent,
        sweep_name="moasha",
    )  # fmt: skip
    scheduler = MOASHAScheduler(OBJECTIVES, eta=3)
    # the workers cannot import this test module: send the trial function by value
    module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(module)
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    base = {"uri": uri, "parent": parent, "experiment": experiment}
    tuner = tune.Tuner(
        scripted_trial,
        param_space={**base, "name": tune.grid_search(list(SCRIPT))},
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1),
        run_config=tune.RunConfig(
            name="moasha",
            storage_path=str(tmp_path / "ray"),
            verbose=0,
            callbacks=[TrialEndCallback(ctx)],
        ),
    )
    try:
        results = tuner.fit()
    finally:
        ray.cloudpickle.unregister_pickle_by_value(module)
    assert not results.errors
    assert list(scheduler.stopped_at.values()) == [1]  # one trial, at rung 1

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(
        experiment_ids=[experiment], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    by_name = {row["tags.script"]: row for _, row in runs.iterrows()}
    assert set(by_name) == set(SCRIPT)
    assert (runs["status"] != "RUNNING").all()
    assert by_name["c"]["status"] == "KILLED"
    assert by_name["c"]["tags.early_stopped"] == "rung 1"
    assert by_name["a"]["status"] == by_name["b"]["status"] == "FINISHED"
    assert runs.set_index("tags.script")["tags.early_stopped"].drop("c").isna().all()
    # the stopped trial keeps its partial history: its rung-1 values, nothing after
    stopped_id = by_name["c"]["run_id"]
    history = client.get_metric_history(stopped_id, "test_accuracy")
    assert [(m.step, m.value) for m in history] == [(1, 0.70)]
    finished_history = client.get_metric_history(by_name["a"]["run_id"], "test_accuracy")
    assert [m.step for m in finished_history] == [1, 2, 3]
