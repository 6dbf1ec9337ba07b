"""Latency measured alone: the driver re-times the finished trials' checkpoints after the sweep.

A trial times its model while other trials train on the same cores, so its ``latency_ms`` says
more about what ran beside it than about the model (12 identical ResNet-18 checkpoints spanned
40-124 ms). ``remeasure_latency`` runs in the driver once every trial has finished and times the
checkpoints one at a time, with nothing else running, under the trial's own conditions (batch,
thread count, device type), and overwrites the run's ``latency_ms``. The timed passes are spread
over several rounds that take the checkpoints in turn (A B C, A B C, ...), so a slow spell of the
machine (another process, frequency changes) lands on every checkpoint alike instead of on
whichever was being timed then.

Checkpoints of the same architecture are timed once, as one group. Most sweeps prune
unstructured: the pruned weights are zeros in dense tensors, which dense kernels multiply like
any other value, so every such checkpoint of a model runs the same computation, and timing each
one only gave the same workload N different figures whose differences were noise (a quick
ResNet-18 sweep: 6 identical-architecture checkpoints, 41.4-50.6 ms). Two checkpoints share a
group when they have the same *timing signature*: the run's model name, the loaded model's
class, the name, shape and dtype of every state-dict entry in order, the device type and the
thread count they are timed with. Channel-removed checkpoints (``save_pruned_model``) have
smaller tensors, so each removed shape is a group of its own. The group's first run is its
representative: its model is the one timed, and every run of the group gets the group's figures.

What each child run gets (MLflow):

- metric ``latency_ms``: the driver's median ms per batch (its group's). Logged at the step of
  the trial's own value with a later timestamp, so it is the run's latest value
  (``search_runs``, the UI, the Pareto front); the trial's value stays in the metric's history.
- metric ``latency_ms_trial``: the trial's in-sweep value (the run's own), for comparison.
- metric ``latency_ms_spread``: p90 / p10 of the group's timed passes, all rounds together
  (dimensionless; 1.0 means every pass took the same time).
- param ``latency_measured_by=driver``; tag ``latency_driver_device`` (the device label, e.g.
  ``cpu`` or ``cuda:0 (NVIDIA H200)``); tag ``latency_timed_run``: the run name of the group's
  representative, whose checkpoint was timed (the run's own name if it was the one), so the UI
  shows which runs share one timing. MLflow refuses to change a logged param, so the pass logs
  no param whose value could differ from the trial's or between passes: ``latency_batch_size``
  and ``latency_threads`` stay true because the pass uses the same batch size and thread count,
  the one new param is the same on every run and every rerun of the pass, and what a rerun may
  change (the device label, the representative) is a tag.
"""

from __future__ import annotations

import os
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch

from prune_core.checkpoint import load_state
from prune_core.measure import device_label, forward_times_ms, latency_summary
from prune_core.models import build_model
from prune_core.structured import PRUNED_MODEL_FORMAT, load_pruned_model

ROUNDS = 4  # turns over all groups of checkpoints; each group is timed once per round
WARMUP = 2  # untimed passes per group and round (first-call allocations, caches)
REPEATS_PER_ROUND = 5  # timed passes per group and round: 20 in all, for p10/median/p90
# The metrics the pass logs to each run (latency_ms_trial only where the trial timed one).
DRIVER_METRICS = ("latency_ms", "latency_ms_spread", "latency_ms_trial")
# Bytes of checkpoint files (on disk, all runs together) up to which each group's representative
# is kept in memory across the rounds from the one load that took its signature; above it, every
# model is dropped right after its signature is taken and each representative is loaded again in
# every round, one model in memory at a time (a sweep of a hundred ResNet-50s, about 100 MB each,
# stays at one). The file size stands in for the model's memory: a checkpoint is the model's
# tensors as torch.save writes them (the same dtypes and shapes, plus a few KiB of names and
# pickle framing), so the loaded model takes about as many bytes, on the CPU or on the GPU it is
# moved to.
KEEP_LOADED_BYTES = 1 << 30  # 1 GiB
# A checkpoint's timing signature: (the run's model name, model class, ((state-dict name, shape,
# dtype), ...), device type, thread count). Checkpoints with equal signatures run the same
# computation, so they are timed once, as one group (see the module docstring).
Signature = tuple[str, str, tuple[tuple[str, tuple[int, ...], str], ...], str, int]


def checkpoint_artifact(run_name: str) -> str:
    """Artifact path of a trial's pruned checkpoint (``sweeps.trial`` writes it there)."""
    return f"checkpoints/{run_name}.pt"


def load_checkpoint(
    path: str, model_name: str, in_channels: int, num_classes: int, image_size: int
) -> torch.nn.Module:
    """A trial's checkpoint as a CPU model: a channel-removed model written by
    ``save_pruned_model`` (rebuilt at its smaller shapes), or a plain state dict of the
    registered ``model_name`` (its pruned weights are zeros in dense tensors)."""
    state = load_state(path, map_location="cpu")
    if isinstance(state, dict) and state.get("format") == PRUNED_MODEL_FORMAT:
        return load_pruned_model(path)
    model = build_model(model_name, in_channels, num_classes, image_size)
    model.load_state_dict(state)
    return model


def _param(row: pd.Series, name: str) -> str | None:
    """The run's param ``name`` as MLflow stored it (a string), or None if it was not logged."""
    value = row.get(f"params.{name}")
    return None if value is None or pd.isna(value) else str(value)


def _trial_latency(row: pd.Series) -> float:
    """The trial's own ``latency_ms`` (NaN if none): after an earlier pass of the driver it is
    kept as ``latency_ms_trial``, and ``latency_ms`` is the driver's."""
    for column in ("metrics.latency_ms_trial", "metrics.latency_ms"):
        value = row.get(column)
        if value is not None and not pd.isna(value):
            return float(value)
    return float("nan")


def _device_for(row: pd.Series) -> torch.device:
    """The trial's device type, where this process has it (a CUDA trial on a CPU-only driver is
    timed on the CPU, and the tag ``latency_driver_device`` says so)."""
    if _param(row, "device") == "cuda" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _threads_for(row: pd.Series, own_threads: int) -> int:
    """The thread count the run is timed with: the trial's ``latency_threads``, else this
    process's own count."""
    threads = _param(row, "latency_threads")
    return int(float(threads)) if threads else own_threads


def _signature(
    model: torch.nn.Module, model_name: str, device: torch.device, threads: int
) -> Signature:
    """The timing signature of a loaded model (the run's ``model_name``) timed on ``device``'s
    type with ``threads`` threads: what decides the computation a forward pass runs, not the
    values in the tensors (dense kernels do not skip the zeros of unstructured pruning). The
    model's name too: the tensors do not show what has none (activations, pooling, strides), so
    two models with the same tensors, a user's among them, must not share a timing."""
    cls = type(model)
    state = model.state_dict()
    tensors = tuple((name, tuple(t.shape), str(t.dtype)) for name, t in state.items())
    return (model_name, f"{cls.__module__}.{cls.__qualname__}", tensors, device.type, threads)


def _log_driver_latency(
    client: Any, run_id: str, figures: dict[str, float], device: str, timed_run: str
) -> None:
    """Log the driver's figures so that they become the run's latest ``latency_ms``, with the
    param and tags that say who timed it and on which run's checkpoint (``timed_run``, the
    group's representative). Two MLflow calls per run: ``get_metric_history`` (the step and
    timestamps to follow) and one ``log_batch`` with the metrics, the param and the tags (one
    call instead of four). MLflow's SQL store still commits params, metrics and tags in a
    session each inside that call: on SQLite that is most of the 10-40 ms per run this function
    took (100 runs, a 2-core machine with other jobs writing to the disk)."""
    from mlflow.entities import Metric, Param, RunTag

    history = client.get_metric_history(run_id, "latency_ms")
    step = max((m.step for m in history), default=0)
    # same step, strictly later timestamp (ms): MLflow then takes this value as the latest
    now_ms = max([int(time.time() * 1000)] + [m.timestamp + 1 for m in history])
    # not NaN: latency_ms_trial is logged only where the trial had one
    names = [k for k in DRIVER_METRICS if figures[k] == figures[k]]
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(figures[k]), now_ms, step) for k in names],
        params=[Param("latency_measured_by", "driver")],
        tags=[RunTag("latency_driver_device", device), RunTag("latency_timed_run", timed_run)],
    )


def remeasure_latency(
    client: Any,
    runs: pd.DataFrame,
    example: torch.Tensor,
    in_channels: int,
    num_classes: int,
    image_size: int,
    log: Callable[[str], None] | None = None,
    rounds: int = ROUNDS,
    warmup: int = WARMUP,
    repeats_per_round: int = REPEATS_PER_ROUND,
) -> dict[str, dict[str, float]]:
    """Re-time every FINISHED child run's checkpoint in this process, one checkpoint at a time,
    each architecture once.

    Call it after the sweep's trials have all finished (nothing else should run meanwhile).

    - ``client``: an ``MlflowClient`` of the sweep's tracking URI.
    - ``runs``: child runs as ``mlflow.search_runs`` returns them (``sweeps.tracking.child_runs``):
      columns ``run_id``, ``tags.mlflow.runName``, ``params.model``, and where present
      ``status``, ``params.device``, ``params.latency_threads``, ``params.latency_batch_size``,
      ``metrics.latency_ms``. Rows whose ``status`` is not FINISHED are skipped.
    - ``example``: the batch the trials timed (``data.normalize(data.x_test[:64])``, see
      ``prune_core.experiment.run_pruning``); its size must equal the runs'
      ``latency_batch_size``, else ValueError (raised before anything is downloaded or logged).
    - ``in_channels``, ``num_classes``, ``image_size``: the dataset's, to rebuild plain
      state-dict checkpoints.

    A checkpoint in a local artifact store (the run's ``artifact_uri`` a ``file:`` URI or an
    absolute path) is read where it is; any other is downloaded to a temporary folder first
    (deleted at the end). Every checkpoint is loaded once to take its timing signature (model
    class, state-dict names, shapes and dtypes, device type, thread count); the runs with equal
    signatures form a group, whose representative is its first run in ``runs``. Checkpoints of
    the same architecture run the same computation (unstructured pruning leaves zeros in dense
    tensors), so timing each of them only measured noise: each group is timed once, on its
    representative's model. In each of ``rounds`` rounds, every group in turn gets ``warmup``
    untimed and ``repeats_per_round`` timed passes (``prune_core.measure.forward_times_ms``).
    While the checkpoint files come to at most ``KEEP_LOADED_BYTES`` in all, each representative
    is kept from its first load across the rounds; above it, every model is dropped right after
    its signature is taken and each representative is loaded again in every round and freed
    after its passes, one model in memory at a time. Other runs' models are never kept. Each
    group is timed on its device type with its thread count (``latency_threads``; this
    process's own count is restored afterwards); on CUDA the model is put in channels_last
    memory format, as training on CUDA leaves a trial's model.

    Returns ``{run_id: {"latency_ms", "latency_ms_spread", "latency_ms_p10", "latency_ms_p90",
    "latency_ms_trial"}}``: the median, p90 / p10, 10th and 90th percentiles of all the timed
    passes of the run's group (ms per batch; the same for every run of a group), and the run's
    own trial value (NaN if it logged none). Logs them to each run as the module docstring says,
    with the tag ``latency_timed_run`` naming the representative.
    """
    say = log or (lambda msg: None)
    if "status" in runs:
        runs = runs[runs["status"] == "FINISHED"]
    rows = [row for _, row in runs.iterrows()]
    _check_batch(rows, example)
    own_threads = torch.get_num_threads()
    shapes = (in_channels, num_classes, image_size)
    times, timed_by, devices = _time_checkpoints(
        client, rows, example, shapes, rounds, warmup, repeats_per_round
    )
    names = {row["run_id"]: row["tags.mlflow.runName"] for row in rows}
    group_size = Counter(timed_by.values())
    summaries = {rep_id: latency_summary(passes) for rep_id, passes in times.items()}
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        run_id = row["run_id"]
        rep_id = timed_by[run_id]
        out[run_id] = _figures(summaries[rep_id], _trial_latency(row))
        _log_driver_latency(client, run_id, out[run_id], devices[rep_id], names[rep_id])
        threads = _threads_for(row, own_threads)
        group = (group_size[rep_id], names[rep_id])
        say(_progress_line(names[run_id], out[run_id], devices[rep_id], threads, example, group))
    return out


def _progress_line(
    run_name: str,
    figures: dict[str, float],
    device: str,
    threads: Any,
    example: torch.Tensor,
    group: tuple[int, str],
) -> str:
    """The pass's line for one run: its figures, how it was timed, and for a ``group`` of more
    than one (size, representative's run name) on whose checkpoint."""
    size, representative = group
    shared = (
        f"; timed once for {size} checkpoints of the same architecture, on {representative}'s"
        if size > 1
        else ""
    )
    return (
        f"latency {run_name}: {figures['latency_ms']:.2f} ms (p90/p10 "
        f"{figures['latency_ms_spread']:.2f}; in the sweep {figures['latency_ms_trial']:.2f} ms) "
        f"on {device}, {threads} thread(s), batch {example.shape[0]}{shared}"
    )


def _figures(summary: dict[str, float], trial_ms: float) -> dict[str, float]:
    """A run's figures: its group's timing ``summary`` (``latency_summary``) and the trial's own
    ``trial_ms``."""
    return {
        "latency_ms": summary["median_ms"],
        "latency_ms_spread": summary["spread"],
        "latency_ms_p10": summary["p10_ms"],
        "latency_ms_p90": summary["p90_ms"],
        "latency_ms_trial": trial_ms,
    }


def _check_batch(rows: list[pd.Series], example: torch.Tensor) -> None:
    """Raise ValueError if a run timed another batch size than ``example``'s."""
    for row in rows:
        batch = _param(row, "latency_batch_size")
        if batch is not None and int(float(batch)) != example.shape[0]:
            raise ValueError(
                f"example batch of {example.shape[0]} images; run "
                f"{row['tags.mlflow.runName']} timed latency_batch_size={batch}: pass the batch "
                "the trials used"
            )


def _local_checkpoint(row: pd.Series, artifact: str) -> str | None:
    """The checkpoint file where it lies, if the run's artifact store is a local folder (an
    ``artifact_uri`` ``file:///abs/path`` or ``/abs/path``) and the file is there; else None
    (then it is downloaded). The path is resolved as MLflow's ``LocalArtifactRepository`` does,
    with its own ``local_file_uri_to_path``, and joined with the normalized artifact path."""
    from mlflow.utils.file_utils import local_file_uri_to_path

    uri = row.get("artifact_uri")
    if not isinstance(uri, str) or not uri:
        return None
    parsed = urllib.parse.urlparse(uri)
    local = (parsed.scheme == "file" and not parsed.netloc) or (
        not parsed.scheme and os.path.isabs(uri)
    )
    if not local:  # http(s), s3, mlflow-artifacts, file://host/..., a relative path: downloaded
        return None
    root = os.path.abspath(local_file_uri_to_path(uri))
    path = os.path.abspath(os.path.join(root, os.path.normpath(artifact)))
    # a run name with ".." must not lead out of the run's folder (MLflow refuses it too)
    if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
        return None
    return path


def _checkpoint_paths(client: Any, rows: list[pd.Series], tmp: str) -> dict[str, str]:
    """{run id: local path of its checkpoint}: in place for a local artifact store, else
    downloaded under ``tmp``."""
    paths = {}
    for row in rows:
        run_id = row["run_id"]
        artifact = checkpoint_artifact(row["tags.mlflow.runName"])
        local = _local_checkpoint(row, artifact)
        paths[run_id] = local or client.download_artifacts(run_id, artifact, f"{tmp}/{run_id}")
    return paths


def _on_device(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` moved to ``device``; on CUDA in channels_last memory format, as training on CUDA
    leaves a trial's model."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def _time_checkpoints(
    client: Any,
    rows: list[pd.Series],
    example: torch.Tensor,
    shapes: tuple[int, int, int],
    rounds: int,
    warmup: int,
    repeats_per_round: int,
) -> tuple[dict[str, list[float]], dict[str, str], dict[str, str]]:
    """Find or download every run's checkpoint, load each once to group the runs by timing
    signature, then time the groups' representatives in turn, ``rounds`` times (see
    ``remeasure_latency``). Returns ({representative's run id: ms per timed pass}, {run id: its
    group's representative's run id}, {representative's run id: device label})."""
    own_threads = torch.get_num_threads()
    timed_by: dict[str, str] = {}
    devices: dict[str, str] = {}
    kept: dict[str, torch.nn.Module] = {}  # representative's run id -> model on its device
    try:
        with tempfile.TemporaryDirectory() as tmp:
            paths = _checkpoint_paths(client, rows, tmp)
            keep = sum(os.path.getsize(p) for p in paths.values()) <= KEEP_LOADED_BYTES
            # the groups in the order of their first run: the rounds take them in this order
            representatives: dict[Signature, pd.Series] = {}
            for row in rows:
                run_id = row["run_id"]
                device = _device_for(row)
                name = str(row["params.model"])
                model = load_checkpoint(paths[run_id], name, *shapes)
                signature = _signature(model, name, device, _threads_for(row, own_threads))
                if signature not in representatives:
                    representatives[signature] = row
                    if keep:
                        kept[run_id] = _on_device(model, device)
                timed_by[run_id] = representatives[signature]["run_id"]
                # any other model goes now: above the cap one model in memory at a time, and a
                # run that is not a representative is never timed
                del model
            times: dict[str, list[float]] = {rep["run_id"]: [] for rep in representatives.values()}
            for _ in range(rounds):
                for rep in representatives.values():
                    run_id = rep["run_id"]
                    torch.set_num_threads(_threads_for(rep, own_threads))
                    device = _device_for(rep)
                    model = kept.get(run_id)
                    if model is None:
                        model = _on_device(
                            load_checkpoint(paths[run_id], str(rep["params.model"]), *shapes),
                            device,
                        )
                    # warm-up passes in every round, kept model or not: the caches and the
                    # allocator went cold while the other groups ran
                    times[run_id] += forward_times_ms(
                        model, example.to(device), warmup=warmup, repeats=repeats_per_round
                    )
                    devices[run_id] = device_label(device)
                    del model
    finally:
        kept.clear()
        torch.set_num_threads(own_threads)
    return times, timed_by, devices


__all__ = ["DRIVER_METRICS", "checkpoint_artifact", "load_checkpoint", "remeasure_latency"]
