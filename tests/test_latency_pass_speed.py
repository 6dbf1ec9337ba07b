"""What the driver's latency pass (sweeps.latency) costs, on a real MLflow SQLite store with
tiny mlp checkpoints: every checkpoint is loaded once to take its timing signature, and each
group of checkpoints with one signature (the same architecture, device type and thread count) is
timed once, on its representative (its first run), whose model is kept while the checkpoints fit
KEEP_LOADED_BYTES (loaded again each round above it), still warmed up in every round; no other
model stays in memory; checkpoints in a local artifact store are read in place (no
download_artifacts), others are downloaded; and what it logs per run."""

from __future__ import annotations

import gc
import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

import sweeps.latency as latency
from prune_core.checkpoint import save_state
from prune_core.models import build_model
from prune_core.structured import remove_pruned_channels, save_pruned_model
from sweeps.tracking import child_runs, log_params

# digits-shaped input and the 300-100 mlp: a pass of a batch of 64 takes well under 1 ms
IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE, BATCH = 1, 10, 8, 64
ROUNDS, WARMUP, REPEATS = 3, 1, 2  # fewer passes than the default: the test counts, not times
TRIAL_STEP = 3  # the step at which the trials logged latency_ms (the driver logs at it too)
BIG = 1 << 30  # the default KEEP_LOADED_BYTES: the tiny checkpoints are kept under it


def _dense_mlp(path) -> None:
    """A plain state dict of the 300-100 mlp, as an unstructured trial leaves it."""
    save_state(build_model("mlp", IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE).state_dict(), path)


def _narrow_mlp(path) -> None:
    """A channel-removed mlp (``save_pruned_model``): 150 of the first layer's 300 outputs zeroed
    and removed, so its tensors are (150, 64), (150,), (100, 150), ...: another signature."""
    model = build_model("mlp", IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE)
    with torch.no_grad():
        model[1].weight[:150] = 0
        model[1].bias[:150] = 0
    remove_pruned_channels(model, torch.randn(2, IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE))
    save_pruned_model(model, str(path), "mlp", IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE)


def _store(tmp_path, artifact_location: str, checkpoints: dict | None = None):
    """(client, tracking URI, experiment id, parent run id, {run name: run id}): a FINISHED child
    run per entry of ``checkpoints`` ({run name: (writer of its checkpoint, latency_threads)};
    by default 3 dense mlps ``mlp_trial_0..2`` on 1 thread), each with its checkpoint and a trial
    latency_ms of 10 + its index at TRIAL_STEP."""
    from mlflow.tracking import MlflowClient

    if checkpoints is None:
        checkpoints = {f"mlp_trial_{i}": (_dense_mlp, 1) for i in range(3)}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("latency", artifact_location)
    parent_id = client.create_run(experiment_id, run_name="sweep").info.run_id
    torch.manual_seed(0)
    ids = {}
    for i, (name, (write, threads)) in enumerate(checkpoints.items()):
        path = tmp_path / f"{name}.pt"
        write(path)
        run_id = client.create_run(
            experiment_id, run_name=name, tags={"mlflow.parentRunId": parent_id}
        ).info.run_id
        log_params(client, run_id, {
            "model": "mlp", "device": "cpu", "latency_batch_size": BATCH,
            "latency_threads": threads,
        })  # fmt: skip
        client.log_metric(run_id, "latency_ms", 10.0 + i, step=TRIAL_STEP)
        client.log_artifact(run_id, str(path), artifact_path="checkpoints")
        client.set_terminated(run_id, "FINISHED")
        ids[name] = run_id
    return client, uri, experiment_id, parent_id, ids


def _in_order(runs, names: list[str]):
    """The runs frame with its rows in the order of ``names`` (the pass's order)."""
    position = {name: i for i, name in enumerate(names)}
    ordered = runs.sort_values("tags.mlflow.runName", key=lambda col: col.map(position))
    assert list(ordered["tags.mlflow.runName"]) == names
    return ordered


def _remeasure(client, runs, log=None):
    """The pass with the test's few passes per round."""
    example = torch.randn(BATCH, IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    return latency.remeasure_latency(
        client, runs, example, IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE, log=log,
        rounds=ROUNDS, warmup=WARMUP, repeats_per_round=REPEATS,
    )  # fmt: skip


def _checkpoint_name(path: str) -> str:
    """The run name of a loaded checkpoint path (``.../checkpoints/<run name>.pt``)."""
    return os.path.basename(path)[: -len(".pt")]


@dataclass
class Spy:
    """What the pass loaded and timed. ``loads``: the run name of each load_checkpoint call, in
    order; ``models``: a weak reference to each loaded model (the spy keeps none alive);
    ``passes``: per forward_times_ms call, which load's model it timed (index into ``loads``),
    which loaded models were still in memory then, warmup, repeats and the thread count.
    ``fake``: if set, forward_times_ms returns ``fake(pass index, timed load index)`` instead of
    timing."""

    loads: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    models: list[weakref.ref] = field(default_factory=list)
    passes: list[dict] = field(default_factory=list)
    fake: Callable[[int, int], list[float]] | None = None


@pytest.fixture
def spy(monkeypatch):
    """Watch load_checkpoint and forward_times_ms; both still do the real work (unless
    ``spy.fake`` is set)."""
    seen = Spy()
    real_load, real_times = latency.load_checkpoint, latency.forward_times_ms

    def load(path, *args, **kwargs):
        model = real_load(path, *args, **kwargs)
        seen.loads.append(_checkpoint_name(str(path)))
        seen.paths.append(str(path))
        seen.models.append(weakref.ref(model))
        return model

    def times(model, example, warmup, repeats):
        gc.collect()  # what is still referenced is what the pass holds
        timed = next(i for i, ref in enumerate(seen.models) if ref() is model)
        alive = {i for i, ref in enumerate(seen.models) if ref() is not None}
        seen.passes.append({
            "timed": timed, "alive": alive, "warmup": warmup, "repeats": repeats,
            "threads": torch.get_num_threads(),
        })  # fmt: skip
        if seen.fake is not None:
            return seen.fake(len(seen.passes) - 1, timed)
        return real_times(model, example, warmup=warmup, repeats=repeats)

    monkeypatch.setattr(latency, "load_checkpoint", load)
    monkeypatch.setattr(latency, "forward_times_ms", times)
    return seen


FIGURES = ("latency_ms", "latency_ms_spread", "latency_ms_p10", "latency_ms_p90")


@pytest.mark.parametrize("cap", [0, BIG])
def test_one_architecture_is_timed_once_on_its_first_run(tmp_path, monkeypatch, spy, cap):
    """3 dense mlp checkpoints (one signature), passed in the order trial_1, trial_2, trial_0:
    one group, whose representative is trial_1 (the first run of ``runs``).

    Loads: each checkpoint once for its signature, in the order of ``runs`` (3); with cap 1 GiB
    the representative's model from that load is kept, so 3 in all; with cap 0 every model is
    dropped after its signature and the representative is loaded again in each round, so
    3 + ROUNDS = 6. forward_times_ms: ROUNDS calls in all (one per round, as one checkpoint got
    before), each with ``warmup`` and ``repeats`` passes, all on trial_1's model, with no other
    loaded model in memory. Every run gets the group's figures, its own latency_ms_trial, and the
    tag latency_timed_run = trial_1."""
    monkeypatch.setattr(latency, "KEEP_LOADED_BYTES", cap)
    client, uri, experiment_id, parent_id, ids = _store(tmp_path, (tmp_path / "art").as_uri())
    order = ["mlp_trial_1", "mlp_trial_2", "mlp_trial_0"]
    lines: list[str] = []
    result = _remeasure(
        client, _in_order(child_runs(uri, experiment_id, parent_id), order), lines.append
    )

    if cap:
        assert spy.loads == order
        timed = [0] * ROUNDS  # the signature load of trial_1, kept for every round
    else:
        assert spy.loads == order + ["mlp_trial_1"] * ROUNDS
        timed = [3 + r for r in range(ROUNDS)]  # a fresh load of trial_1 each round
    assert [p["timed"] for p in spy.passes] == timed
    assert [p["alive"] for p in spy.passes] == [{i} for i in timed]  # nothing else in memory
    assert all(
        (p["warmup"], p["repeats"], p["threads"]) == (WARMUP, REPEATS, 1) for p in spy.passes
    )

    assert set(result) == set(ids.values())
    first = result[ids["mlp_trial_1"]]
    assert first["latency_ms_p10"] <= first["latency_ms"] <= first["latency_ms_p90"]
    logged = child_runs(uri, experiment_id, parent_id).set_index("tags.mlflow.runName")
    for i, name in enumerate(["mlp_trial_0", "mlp_trial_1", "mlp_trial_2"]):
        figures = result[ids[name]]
        assert {k: figures[k] for k in FIGURES} == {k: first[k] for k in FIGURES}
        assert figures["latency_ms_trial"] == 10.0 + i  # the run's own
        assert logged.loc[name, "metrics.latency_ms"] == first["latency_ms"]
        assert logged.loc[name, "tags.latency_timed_run"] == "mlp_trial_1"
    assert len(lines) == 3
    assert all(
        line.endswith("; timed once for 3 checkpoints of the same architecture, on mlp_trial_1's")
        for line in lines
    ), lines


@pytest.mark.parametrize("cap", [0, BIG])
def test_two_architectures_are_two_groups_timed_in_turn(tmp_path, monkeypatch, spy, cap):
    """3 dense mlps and 2 channel-removed ones (save_pruned_model, a smaller first layer), passed
    as narrow_1, dense_2, dense_0, narrow_0, dense_1: two groups, narrow (narrow_1) and dense
    (dense_2), timed in turn A B A B A B (ROUNDS x 2 calls). Loads: 5 for the signatures, in that
    order; with cap 0 then narrow_1 and dense_2 again in each round (5 + 2 x ROUNDS = 11).

    forward_times_ms is faked so the figures are exact: the narrow group's rounds give (1, 2),
    (3, 4), (5, 6) ms, the dense group's 10 ms more. Pooled over the rounds, the narrow group's
    6 times 1..6 have median 3.5 and inclusive p10 / p90 at positions 0.5 and 4.5 of the sorted
    times, 1.5 and 5.5 (spread 5.5 / 1.5); the dense group's 13.5, 11.5 and 15.5. Every run gets
    its group's figures, so runs of different groups differ."""
    monkeypatch.setattr(latency, "KEEP_LOADED_BYTES", cap)
    dense, narrow = ["dense_0", "dense_1", "dense_2"], ["narrow_0", "narrow_1"]
    checkpoints = {name: (_dense_mlp, 1) for name in dense}
    checkpoints |= {name: (_narrow_mlp, 1) for name in narrow}
    client, uri, experiment_id, parent_id, ids = _store(
        tmp_path, (tmp_path / "art").as_uri(), checkpoints
    )
    order = ["narrow_1", "dense_2", "dense_0", "narrow_0", "dense_1"]
    calls = {"narrow_1": 0, "dense_2": 0}

    def fake(index: int, timed: int) -> list[float]:
        name = spy.loads[timed]
        k, calls[name] = calls[name], calls[name] + 1
        base = 0.0 if name == "narrow_1" else 10.0
        return [base + 2 * k + 1, base + 2 * k + 2]

    spy.fake = fake
    lines: list[str] = []
    result = _remeasure(
        client, _in_order(child_runs(uri, experiment_id, parent_id), order), lines.append
    )

    if cap:
        assert spy.loads == order
        timed = [0, 1] * ROUNDS  # the signature loads of narrow_1 and dense_2, kept
        alive = [{0, 1}] * (2 * ROUNDS)
    else:
        assert spy.loads == order + ["narrow_1", "dense_2"] * ROUNDS
        timed = [5 + i for i in range(2 * ROUNDS)]
        alive = [{i} for i in timed]
    assert [p["timed"] for p in spy.passes] == timed
    assert [spy.loads[i] for i in timed] == ["narrow_1", "dense_2"] * ROUNDS
    assert [p["alive"] for p in spy.passes] == alive
    assert all((p["warmup"], p["repeats"]) == (WARMUP, REPEATS) for p in spy.passes)

    expected = {
        "narrow_1": {"latency_ms": 3.5, "latency_ms_p10": 1.5, "latency_ms_p90": 5.5},
        "dense_2": {"latency_ms": 13.5, "latency_ms_p10": 11.5, "latency_ms_p90": 15.5},
    }
    logged = child_runs(uri, experiment_id, parent_id).set_index("tags.mlflow.runName")
    for i, name in enumerate(checkpoints):
        rep = "narrow_1" if name in narrow else "dense_2"
        figures = result[ids[name]]
        assert figures["latency_ms"] == pytest.approx(expected[rep]["latency_ms"])
        assert figures["latency_ms_p10"] == pytest.approx(expected[rep]["latency_ms_p10"])
        assert figures["latency_ms_p90"] == pytest.approx(expected[rep]["latency_ms_p90"])
        assert figures["latency_ms_spread"] == pytest.approx(
            expected[rep]["latency_ms_p90"] / expected[rep]["latency_ms_p10"]
        )
        assert figures["latency_ms_trial"] == 10.0 + i
        row = logged.loc[name]
        assert row["tags.latency_timed_run"] == rep
        assert row["metrics.latency_ms"] == figures["latency_ms"]
        assert row["metrics.latency_ms_spread"] == figures["latency_ms_spread"]
    assert len(lines) == 5
    for name, line in zip(order, lines, strict=True):
        n, rep = (2, "narrow_1") if name in narrow else (3, "dense_2")
        assert line.startswith(f"latency {name}: ")
        assert line.endswith(
            f"; timed once for {n} checkpoints of the same architecture, on {rep}'s"
        )


def test_another_thread_count_is_another_group(tmp_path, spy):
    """Two dense mlp checkpoints, one timed by its trial with 1 thread and one with 2: the same
    architecture, but not the same timing conditions, so two groups of one, each timed on its
    own model with its own thread count (1 2 1 2 ...), each run its own latency_timed_run and no
    'timed once for' in its line; this process's thread count is restored afterwards."""
    checkpoints = {"one_thread": (_dense_mlp, 1), "two_threads": (_dense_mlp, 2)}
    client, uri, experiment_id, parent_id, ids = _store(
        tmp_path, (tmp_path / "art").as_uri(), checkpoints
    )
    before = torch.get_num_threads()
    lines: list[str] = []
    runs = _in_order(child_runs(uri, experiment_id, parent_id), ["one_thread", "two_threads"])
    result = _remeasure(client, runs, lines.append)

    assert spy.loads == ["one_thread", "two_threads"]
    assert [p["timed"] for p in spy.passes] == [0, 1] * ROUNDS
    assert [p["threads"] for p in spy.passes] == [1, 2] * ROUNDS
    assert torch.get_num_threads() == before
    assert set(result) == set(ids.values())
    logged = child_runs(uri, experiment_id, parent_id).set_index("tags.mlflow.runName")
    for name in checkpoints:
        assert logged.loc[name, "tags.latency_timed_run"] == name
    assert len(lines) == 2 and not any("timed once" in line for line in lines)


@pytest.mark.parametrize("store", ["file_uri", "plain_path"])
def test_a_local_artifact_store_is_read_in_place(tmp_path, monkeypatch, spy, store):
    """``file:///...`` (with a percent-encoded space, decoded as MLflow does) and a plain
    absolute path: no download_artifacts call, the checkpoints are read in the store."""
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

    assert downloads == [] and set(result) == set(ids.values())
    assert spy.paths and all(path.startswith(f"{folder}/") for path in spy.paths)


def test_other_artifact_stores_are_downloaded(tmp_path, monkeypatch, spy):
    """An artifact URI that is not a local folder (here s3://, as a remote store would have)
    is fetched with download_artifacts, once per checkpoint, into a temporary folder that is
    gone afterwards."""
    client, uri, experiment_id, parent_id, ids = _store(tmp_path, (tmp_path / "art").as_uri())
    downloads = []
    real = client.download_artifacts
    monkeypatch.setattr(client, "download_artifacts", lambda *a: downloads.append(a) or real(*a))
    runs = child_runs(uri, experiment_id, parent_id)
    # the frame says s3; the client still reads the real (local) store, so the download works
    runs["artifact_uri"] = [f"s3://bucket/{run_id}/artifacts" for run_id in runs["run_id"]]
    result = _remeasure(client, runs)

    assert sorted(d[0] for d in downloads) == sorted(ids.values())
    assert set(result) == set(ids.values())
    assert spy.paths and not any(path.startswith(str(tmp_path / "art")) for path in spy.paths)
    assert not any(os.path.exists(path) for path in spy.paths)  # temp folder removed


def test_the_logged_figures_are_the_returned_ones_at_the_trials_step(tmp_path, monkeypatch):
    """One log_batch per run (no other write): latency_ms (the latest value: the trial's step, a
    later timestamp, even if the trial's timestamp lies ahead of the clock), latency_ms_trial
    and latency_ms_spread at the same step and timestamp, equal to the returned figures; the
    param and the tags (latency_timed_run: the first run of ``runs``, all three being one
    group)."""
    client, uri, experiment_id, parent_id, names = _store(tmp_path, (tmp_path / "art").as_uri())
    ids = list(names.values())
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
    runs = child_runs(uri, experiment_id, parent_id)
    result = _remeasure(client, runs)
    assert sorted(writes) == sorted(("log_batch", run_id) for run_id in ids)
    representative = runs["tags.mlflow.runName"].iloc[0]

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
        assert row["tags.latency_timed_run"] == representative
        history = client.get_metric_history(run_id, "latency_ms")
        driver = max(history, key=lambda m: m.timestamp)
        assert driver.value == figures["latency_ms"] and driver.step == TRIAL_STEP
        assert driver.timestamp > max(m.timestamp for m in history if m is not driver)
        if i == 0:
            assert driver.timestamp == ahead_ms + 1
        for name in ("latency_ms_trial", "latency_ms_spread"):
            (metric,) = client.get_metric_history(run_id, name)
            assert (metric.step, metric.timestamp) == (TRIAL_STEP, driver.timestamp)


def test_the_timing_signature_ignores_values_but_not_the_model_name():
    """Two mlps whose weights differ (one all zeros, as a 100% pruned one) share a signature;
    another model name with the very same tensors (a user's model could have them) does not,
    nor do another thread count or another architecture."""
    cpu = torch.device("cpu")
    dense = build_model("mlp", IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE)
    zeros = build_model("mlp", IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE)
    with torch.no_grad():
        for p in zeros.parameters():
            p.zero_()
    cnn = build_model("cnn", IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE)
    sig = latency._signature
    assert sig(dense, "mlp", cpu, 1) == sig(zeros, "mlp", cpu, 1)
    assert sig(dense, "mlp", cpu, 1) != sig(dense, "my_mlp", cpu, 1)
    assert sig(dense, "mlp", cpu, 1) != sig(dense, "mlp", cpu, 2)
    assert sig(dense, "mlp", cpu, 1) != sig(cnn, "mlp", cpu, 1)
