"""Sweeps with other objectives, CPU fractions shared by four trials, GPUs that do not exist."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pandas as pd
import pytest
import ray

from sweeps.cli import resolve_spec
from sweeps.resnet18_iterative import STUDY
from sweeps.runner import run_sweep


def args(tmp_path, *extra: str) -> list[str]:
    return [
        "--quick", "--baseline-epochs", "1", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
        "--cache-dir", str(tmp_path / "baselines"), "--storage-path", str(tmp_path / "ray"),
        "--results-dir", str(tmp_path / "results"), *extra,
    ]  # fmt: skip


def child_runs_of(outcome) -> pd.DataFrame:
    """The sweep's child runs, read back through ``mlflow.search_runs``."""
    mlflow.set_tracking_uri(outcome.tracking_uri)
    return mlflow.search_runs(
        experiment_ids=[outcome.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'",
    )


@pytest.mark.slow
@pytest.mark.parametrize("second", ["latency_ms", "effective_flops", "size_bytes"])
def test_objective_pairs_are_logged_on_every_child_run(tmp_path, ray_tmpdir, second):
    objectives = f"test_accuracy:max,{second}:min"
    spec = resolve_spec(
        STUDY,
        args(tmp_path, "--model", "mlp", "--num-samples", "2", "--objectives", objectives,
             "--experiment", f"obj-{second}"),
    )  # fmt: skip
    outcome = run_sweep(spec, STUDY)
    assert outcome.failed_trials == 0
    runs = child_runs_of(outcome)
    assert len(runs) == 2
    assert runs[f"metrics.{second}"].notna().all() and (runs[f"metrics.{second}"] > 0).all()
    assert runs["metrics.test_accuracy"].notna().all()
    assert (runs["params.latency_batch_size"] == "64").all()
    assert (runs["params.latency_device"] == "cpu").all()
    # the front was computed on that pair
    assert second in outcome.runs.columns and outcome.runs["pareto"].any()
    front = pd.read_csv(tmp_path / "results" / outcome.sweep_name / "pareto.csv")
    assert len(front) == 2 and front["pareto"].any()


def most_at_once(starts: list, ends: list) -> int:
    """The largest number of [start, end) intervals that overlap at one moment."""
    # at equal times an end (-1) sorts before a start (+1): touching intervals do not overlap
    events = sorted([(t, 1) for t in starts] + [(t, -1) for t in ends], key=lambda e: (e[0], e[1]))
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def test_most_at_once_counts_overlaps():
    assert most_at_once([0, 1, 2, 3], [10, 10, 10, 10]) == 4
    assert most_at_once([0, 5, 10], [5, 10, 15]) == 1  # back to back, never together
    assert most_at_once([0, 1, 4, 6], [5, 3, 7, 8]) == 2


@pytest.mark.slow
def test_four_trials_share_two_cpus(tmp_path, ray_tmpdir):
    # a Ray with exactly 2 CPUs, on any machine: trials of 1 CPU could never run more than two
    # at a time, so three or more at once shows the 0.5-CPU shares were used. The cnn's trials
    # (4-5 s each on half a core; all four at once in two runs) long outlast the seconds
    # between their processes' starts, at a third of the quick ResNet-18's time (26-30 s, 65 s)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    share = ["--model", "cnn", "--num-samples", "4", "--cpus-per-trial", "0.5"]
    spec = resolve_spec(STUDY, args(tmp_path, *share, "--experiment", "share"))
    outcome = run_sweep(spec, STUDY)
    assert outcome.failed_trials == 0
    runs = child_runs_of(outcome)
    assert len(runs) == 4
    assert (runs["params.cpus_assigned"].astype(float) == 0.5).all()
    # the trial processes start one after another (seconds apart on two busy cores), so the
    # shortest recipe may end before the last one starts: three at once is the robust proof
    starts, ends = runs["start_time"].to_list(), runs["end_time"].to_list()
    assert most_at_once(starts, ends) >= 3, list(zip(starts, ends, strict=True))


def test_gpu_request_without_gpus_fails_fast(tmp_path, ray_tmpdir):
    env = {**os.environ, "RAY_TMPDIR": ray_tmpdir}
    proc = subprocess.run(
        [sys.executable, "-m", "sweeps.resnet18_iterative", *args(tmp_path), "--gpus-per-trial",
         "0.25"],
        capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "--gpus-per-trial 0.25" in last and "0 GPUs" in last
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    assert mlflow.search_runs(search_all_experiments=True).empty
