"""What the driver's latency pass (sweeps.latency) costs, on a real MLflow SQLite store with
tiny mlp checkpoints: each model is loaded once while the checkpoints fit KEEP_LOADED_BYTES
(once per round above it), still warmed up in every round; checkpoints in a local artifact store
are read in place (no download_artifacts), others are downloaded; and what it logs per run."""

from __future__ import annotations

import os
import time

import pytest
import torch

import sweeps.latency as latency
from prune_core.checkpoint import save_state
from prune_core.models import build_model
from sweeps.tracking import child_runs, log_params

# digits-shaped input and the 300-100 mlp: a pass of a batch of 64 takes well under 1 ms
IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE, BATCH = 1, 10, 8, 64
ROUNDS, WARMUP, REPEATS = 3, 1, 2  # fewer passes than the default: the test counts, not times
TRIAL_STEP = 3  # the step at which the trials logged latency_ms (the driver logs at it too)


def _store(tmp_path, artifact_location: str, n: int = 3):
    """(client, tracking URI, experiment id, parent run id, [child run ids]): ``n`` FINISHED
    child runs of an mlp, each with its checkpoint and a trial latency_ms at TRIAL_STEP."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("latency", artifact_location)
    parent_id = client.create_run(experiment_id, run_name="sweep").info.run_id
    torch.manual_seed(0)
    ids = []
    for i in range(n):
        name = f"mlp_trial_{i}"
        path = tmp_path / f"{name}.pt"
        save_state(build_model("mlp", IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE).state_dict(), path)
        run_id = client.create_run(
            experiment_id, run_name=name, tags={"mlflow.parentRunId": parent_id}
        ).info.run_id
        log_params(client, run_id, {
            "model": "mlp", "device": "cpu", "latency_batch_size": BATCH, "latency_threads": 1,
        })  # fmt: skip
        client.log_metric(run_id, "latency_ms", 10.0 + i, step=TRIAL_STEP)
        client.log_artifact(run_id, str(path), artifact_path="checkpoints")
        client.set_terminated(run_id, "FINISHED")
        ids.append(run_id)
    return client, uri, experiment_id, parent_id, ids


def _remeasure(client, runs):
    """The pass with the test's few passes per round."""
    example = torch.randn(BATCH, IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    return latency.remeasure_latency(
        client, runs, example, IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE,
        rounds=ROUNDS, warmup=WARMUP, repeats_per_round=REPEATS,
    )  # fmt: skip


@pytest.fixture
def spies(monkeypatch):
    """Count load_checkpoint calls (run's checkpoint path each) and record every
    forward_times_ms call as (model, warmup, repeats); both still do the real work."""
    loads: list[str] = []
    passes: list[tuple[torch.nn.Module, int, int]] = []
    real_load, real_times = latency.load_checkpoint, latency.forward_times_ms

    def load(path, *args, **kwargs):
        loads.append(str(path))
        return real_load(path, *args, **kwargs)

    def times(model, example, warmup, repeats):
        passes.append((model, warmup, repeats))
        return real_times(model, example, warmup=warmup, repeats=repeats)

    monkeypatch.setattr(latency, "load_checkpoint", load)
    monkeypatch.setattr(latency, "forward_times_ms", times)
    return loads, passes


@pytest.mark.parametrize("cap, loads_per_checkpoint", [(0, ROUNDS), (1 << 30, 1)])
def test_models_are_kept_across_rounds_only_under_the_cap(
    tmp_path, monkeypatch, spies, cap, loads_per_checkpoint
):
    """Cap 0: every checkpoint is loaded in every round (rounds x checkpoints loads, a new model
    each round); cap 1 GiB: once each, the same model timed in every round. Either way each
    checkpoint gets ``warmup`` untimed and ``repeats`` timed passes in every round, in turn
    (A B C, A B C, ...)."""
    loads, passes = spies
    monkeypatch.setattr(latency, "KEEP_LOADED_BYTES", cap, raising=False)
    client, uri, experiment_id, parent_id, ids = _store(tmp_path, (tmp_path / "art").as_uri())
    result = _remeasure(client, child_runs(uri, experiment_id, parent_id))

    n = len(ids)
    assert len(loads) == loads_per_checkpoint * n
    assert len(passes) == ROUNDS * n
    assert all((warmup, repeats) == (WARMUP, REPEATS) for _, warmup, repeats in passes)
    # the same turn order in every round, each run's timed passes all kept
    order = [id(model) for model, _, _ in passes]
    models = [order[r * n : (r + 1) * n] for r in range(ROUNDS)]
    if loads_per_checkpoint == 1:
        assert models == [models[0]] * ROUNDS and len(set(models[0])) == n
    else:  # a fresh model each round (the spy holds them all, so no id is reused)
        assert len(set(order)) == ROUNDS * n
        assert [loads[r * n : (r + 1) * n] for r in range(ROUNDS)] == [loads[:n]] * ROUNDS
    assert set(result) == set(ids)
    for figures in result.values():
        assert figures["latency_ms_p10"] <= figures["latency_ms"] <= figures["latency_ms_p90"]


@pytest.mark.parametrize("store", ["file_uri", "plain_path"])
def test_a_local_artifact_store_is_read_in_place(tmp_path, monkeypatch, spies, store):
    """``file:///...`` (with a percent-encoded space, decoded as MLflow does) and a plain
    absolute path: no download_artifacts call, the checkpoints are read in the store."""
    loads, _ = spies
    folder = tmp_path / "artifact store"
    location = folder.as_uri() if store == "file_uri" else str(folder)
    client, uri, experiment_id, parent_id, ids = _store(tmp_path, location)
    downloads = []
    real = client.download_artifacts
    monkeypatch.setattr(client, "download_artifacts", lambda *a: downloads.append(a) or real(*a))
    runs = child_runs(uri, experiment_id, parent_id)
    if store == "file_uri":
        assert runs["artifact_uri"].str.contains("artifact%20store").all()
    result = _remeasure(client, runs)

    assert downloads == [] and set(result) == set(ids)
    assert loads and all(path.startswith(f"{folder}/") for path in loads)


def test_other_artifact_stores_are_downloaded(tmp_path, monkeypatch, spies):
    """An artifact URI that is not a local folder (here s3://, as a remote store would have)
    is fetched with download_artifacts, once per checkpoint, into a temporary folder that is
    gone afterwards."""
    loads, _ = spies
    client, uri, experiment_id, parent_id, ids = _store(tmp_path, (tmp_path / "art").as_uri())
    downloads = []
    real = client.download_artifacts
    monkeypatch.setattr(client, "download_artifacts", lambda *a: downloads.append(a) or real(*a))
    runs = child_runs(uri, experiment_id, parent_id)
    # the frame says s3; the client still reads the real (local) store, so the download works
    runs["artifact_uri"] = [f"s3://bucket/{run_id}/artifacts" for run_id in runs["run_id"]]
    result = _remeasure(client, runs)

    assert sorted(d[0] for d in downloads) == sorted(ids) and set(result) == set(ids)
    assert loads and not any(path.startswith(str(tmp_path / "art")) for path in loads)
    assert not any(os.path.exists(path) for path in loads)  # temp folder removed


def test_the_logged_figures_are_the_returned_ones_at_the_trials_step(tmp_path, monkeypatch):
    """One log_batch per run (no other write): latency_ms (the latest value: the trial's step, a
    later timestamp, even if the trial's timestamp lies ahead of the clock), latency_ms_trial
    and latency_ms_spread at the same step and timestamp, equal to the returned figures; the
    param and the tag."""
    client, uri, experiment_id, parent_id, ids = _store(tmp_path, (tmp_path / "art").as_uri())
    # one trial's clock ran 10 min ahead: the driver's value must still be the later one
    ahead_ms = int(time.time() * 1000) + 600_000
    client.log_metric(ids[0], "latency_ms", 99.0, timestamp=ahead_ms, step=TRIAL_STEP)
    writes: list[tuple[str, str]] = []

    def spy(name):
        real = getattr(client, name)

        def write(run_id, *args, **kwargs):
            writes.append((name, run_id))
            return real(run_id, *args, **kwargs)

        return write

    for name in ("log_batch", "log_metric", "log_param", "set_tag", "log_metrics"):
        if hasattr(client, name):
            monkeypatch.setattr(client, name, spy(name))
    result = _remeasure(client, child_runs(uri, experiment_id, parent_id))
    assert sorted(writes) == sorted(("log_batch", run_id) for run_id in ids)

    logged = child_runs(uri, experiment_id, parent_id).set_index("run_id")
    for i, run_id in enumerate(ids):
        figures, row = result[run_id], logged.loc[run_id]
        trial_ms = 99.0 if i == 0 else 10.0 + i
        assert figures["latency_ms_trial"] == trial_ms
        assert row["metrics.latency_ms"] == figures["latency_ms"]
        assert row["metrics.latency_ms_trial"] == trial_ms
        assert row["metrics.latency_ms_spread"] == figures["latency_ms_spread"]
        assert figures["latency_ms_spread"] == pytest.approx(
            figures["latency_ms_p90"] / figures["latency_ms_p10"]
        )
        assert row["params.latency_measured_by"] == "driver"
        assert row["tags.latency_driver_device"] == "cpu"
        history = client.get_metric_history(run_id, "latency_ms")
        driver = max(history, key=lambda m: m.timestamp)
        assert driver.value == figures["latency_ms"] and driver.step == TRIAL_STEP
        assert driver.timestamp > max(m.timestamp for m in history if m is not driver)
        if i == 0:
            assert driver.timestamp == ahead_ms + 1
        for name in ("latency_ms_trial", "latency_ms_spread"):
            (metric,) = client.get_metric_history(run_id, name)
            assert (metric.step, metric.timestamp) == (TRIAL_STEP, driver.timestamp)
