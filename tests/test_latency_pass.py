"""The driver's latency pass (sweeps.latency) on a real MLflow SQLite store: two child runs with
checkpoints of the same model, whose in-sweep latencies were 40 and 124 ms (noise from trials
training beside them), are re-timed alone as one group (the same architecture runs the same
computation) and get the same figures; and prune_core.measure's spread."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prune_core.checkpoint import save_state
from prune_core.measure import latency_ms, latency_stats
from prune_core.models import build_model
from prune_core.structured import save_pruned_model
from sweeps.latency import remeasure_latency
from sweeps.tracking import child_runs, log_metrics, log_params

# digits-shaped input: the cnn takes about 1.5 ms per batch of 64 on one CPU thread, so many
# short passes fit in a fraction of a second
IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE, BATCH = 1, 10, 8, 64
TRIAL_MS = {"cnn_prune_50perc_oneshot1": 40.0, "cnn_prune_50perc_oneshot2": 124.0}


def test_latency_stats_spread_is_p90_over_p10():
    """p10 <= median <= p90 of the timed passes, spread = p90 / p10, and latency_ms keeps its
    documented keys."""
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
    stats = latency_stats(model, torch.randn(5, 16), warmup=1, repeats=7)
    times = sorted(stats["times_ms"])
    assert len(times) == 7 and stats["repeats"] == 7
    # 7 times, inclusive deciles: p10 sits 0.6 of the way from the 1st to the 2nd time
    assert stats["p10_ms"] == pytest.approx(times[0] + 0.6 * (times[1] - times[0]))
    assert stats["p90_ms"] == pytest.approx(times[5] + 0.4 * (times[6] - times[5]))
    assert stats["median_ms"] == times[3]
    assert stats["spread"] == pytest.approx(stats["p90_ms"] / stats["p10_ms"])
    one = latency_stats(model, torch.randn(5, 16), warmup=0, repeats=1)
    assert one["p10_ms"] == one["p90_ms"] == one["median_ms"] and one["spread"] == 1.0
    assert set(latency_ms(model, torch.randn(5, 16), repeats=2)) == {
        "median_ms", "batch_size", "device", "threads", "repeats",
    }  # fmt: skip


def _child_run(client, experiment_id, parent_id, name, checkpoint_path, status="FINISHED"):
    """A child run as a trial leaves it: params, its in-sweep latency, its checkpoint."""
    run_id = client.create_run(
        experiment_id, run_name=name, tags={"mlflow.parentRunId": parent_id}
    ).info.run_id
    log_params(client, run_id, {
        "model": "cnn", "device": "cpu", "latency_batch_size": BATCH, "latency_threads": 1,
        "latency_device": "cpu",
    })  # fmt: skip
    log_metrics(client, run_id, {"latency_ms": TRIAL_MS.get(name, 1.0)}, step=1)
    if checkpoint_path:
        client.log_artifact(run_id, checkpoint_path, artifact_path="checkpoints")
    client.set_terminated(run_id, status)
    return run_id


def test_two_checkpoints_of_one_model_agree_when_timed_by_the_driver(tmp_path):
    """One plain state dict and one save_pruned_model file of the same cnn (no channel removed):
    both load as the same class with the same tensor names, shapes and dtypes, so they share a
    timing signature and are timed once, as one group, on the first run's checkpoint: identical
    figures, the tag latency_timed_run naming that run on both; latency_ms is overwritten (each
    trial's own value kept as latency_ms_trial); the spread and latency_measured_by=driver are
    logged; a FAILED run is left alone; a second pass logs again without MLflow refusing a
    param."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from sweeps.latency import load_checkpoint

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("latency", (tmp_path / "artifacts").as_uri())
    parent_id = client.create_run(experiment_id, run_name="sweep").info.run_id

    torch.manual_seed(0)
    model = build_model("cnn", IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE)
    names = list(TRIAL_MS)
    paths = {name: str(tmp_path / f"{name}.pt") for name in [*names, "failed"]}
    save_state(model.state_dict(), paths[names[0]])
    save_pruned_model(model, paths[names[1]], "cnn", IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE)
    ids = {name: _child_run(client, experiment_id, parent_id, name, paths[name]) for name in names}
    # the pruned-model format is rebuilt from the registered cnn at the same shapes: the same
    # class and state-dict entries as the plain state dict, i.e. the same timing signature
    plain, pruned = (
        load_checkpoint(paths[n], "cnn", IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE) for n in names
    )
    assert type(plain) is type(pruned)
    assert [(k, v.shape, v.dtype) for k, v in plain.state_dict().items()] == [
        (k, v.shape, v.dtype) for k, v in pruned.state_dict().items()
    ]
    failed = _child_run(client, experiment_id, parent_id, "failed", None, status="FAILED")

    # every run the parent has, FAILED included: the pass skips it by its status
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert len(runs) == 3
    # the group's representative: the first FINISHED run in the order of the frame
    timed_run = runs[runs["status"] == "FINISHED"]["tags.mlflow.runName"].iloc[0]
    example = torch.randn(BATCH, IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    threads_before = torch.get_num_threads()
    lines: list[str] = []
    result = remeasure_latency(
        client, runs, example, IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE, log=lines.append,
        rounds=4, warmup=1, repeats_per_round=3,
    )  # fmt: skip
    assert torch.get_num_threads() == threads_before  # the trial's 1 thread was only borrowed
    assert set(result) == set(ids.values()) and len(lines) == 2
    figures = ("latency_ms", "latency_ms_spread", "latency_ms_p10", "latency_ms_p90")
    first, second = (result[ids[name]] for name in names)
    assert {k: first[k] for k in figures} == {k: second[k] for k in figures}  # one timing
    for name in names:
        r = result[ids[name]]
        assert r["latency_ms_trial"] == TRIAL_MS[name]  # the run's own, not the group's
        assert r["latency_ms_p10"] <= r["latency_ms"] <= r["latency_ms_p90"]
        assert r["latency_ms_spread"] == pytest.approx(r["latency_ms_p90"] / r["latency_ms_p10"])
    for line in lines:
        assert line.endswith(
            f"; timed once for 2 checkpoints of the same architecture, on {timed_run}'s"
        ), line

    logged = child_runs(uri, experiment_id, parent_id).set_index("run_id")
    assert len(logged) == 2  # the FAILED run is neither a child run of the table nor re-timed
    for name in names:
        row = logged.loc[ids[name]]
        assert row["metrics.latency_ms"] == result[ids[name]]["latency_ms"]  # the latest value
        assert row["metrics.latency_ms_trial"] == TRIAL_MS[name]
        assert row["metrics.latency_ms_spread"] >= 1.0
        assert row["params.latency_measured_by"] == "driver"
        assert row["params.latency_threads"] == "1"
        assert row["tags.latency_driver_device"] == "cpu"
        assert row["tags.latency_timed_run"] == timed_run
        history = [m.value for m in client.get_metric_history(ids[name], "latency_ms")]
        # the trial's value stays in the history, under the driver's (latest) one
        assert len(history) == 2
        assert TRIAL_MS[name] in history and row["metrics.latency_ms"] in history
    failed_run = client.get_run(failed).data
    assert "latency_ms_spread" not in failed_run.metrics
    assert "latency_measured_by" not in failed_run.params

    # a second pass (e.g. rerun by hand, on the runs as they are now) logs again: no param
    # changes value, and the trial's own figure is still the one kept as latency_ms_trial
    again = remeasure_latency(
        client, child_runs(uri, experiment_id, parent_id), example, IN_CHANNELS, NUM_CLASSES,
        IMAGE_SIZE, rounds=1, repeats_per_round=3,
    )  # fmt: skip
    relogged = child_runs(uri, experiment_id, parent_id).set_index("run_id")
    for name in names:
        assert relogged.loc[ids[name], "metrics.latency_ms"] == again[ids[name]]["latency_ms"]
        assert relogged.loc[ids[name], "metrics.latency_ms_trial"] == TRIAL_MS[name]


def test_wrong_example_batch_is_refused():
    """The trials timed batches of 64: a batch of 8 would time another workload. The check comes
    before any MLflow call, so no store is needed."""
    import pandas as pd

    runs = pd.DataFrame({
        "run_id": ["r1"], "tags.mlflow.runName": ["x"], "params.model": ["cnn"],
        "params.latency_batch_size": ["64"], "status": ["FINISHED"],
    })  # fmt: skip
    with pytest.raises(ValueError, match="latency_batch_size=64"):
        remeasure_latency(None, runs, torch.randn(8, 1, 28, 28), 1, 10, 28)
