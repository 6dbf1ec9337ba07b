"""Run a sweep: checks, dense baseline, Ray Tune + OptunaSearch trials, MLflow, Pareto front."""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import pandas as pd

from prune_core.baseline import load_or_train_baseline
from prune_core.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from prune_core.data import DatasetUnavailable, load_dataset
from prune_core.train import pick_device
from search_spaces import get_space

from .cli import Study, SweepSpec, UsageError, resolve_spec
from .pareto import pareto_table, parse_objectives
from .tracking import (
    TrackingError,
    child_runs,
    get_or_create_experiment,
    log_params,
    resolve_tracking_uri,
)
from .trial import prune_trial

RECIPE_COLUMNS = ["target_sparsity", "schedule", "iterations", "finetune_epochs", "lr"]


@dataclass
class SweepOutcome:
    """What a finished sweep produced."""

    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    baseline_reused: bool
    dense_test_accuracy: float
    runs: pd.DataFrame  # one row per FINISHED trial, with a boolean ``pareto`` column
    failed_trials: int


def say(msg: str) -> None:
    """Progress line on stderr (stdout carries the result table)."""
    print(f"[sweep] {msg}", file=sys.stderr, flush=True)


def _base_config(spec: SweepSpec) -> ExperimentConfig:
    return ExperimentConfig(
        data=DataConfig(
            dataset=spec.dataset, root=spec.data_root, download=spec.download,
            batch_size=spec.batch_size,
        ),
        model=ModelConfig(name=spec.model),
        train=TrainConfig(epochs=spec.baseline_epochs, lr=spec.baseline_lr),
        seed=spec.seed,
    )  # fmt: skip


def _init_ray(spec: SweepSpec) -> None:
    import ray

    if spec.address:
        ray.init(address=spec.address, logging_level="WARNING", log_to_driver=True)
    else:
        ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=True)
    if spec.gpus_per_trial > 0:
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < spec.gpus_per_trial:
            raise UsageError(
                f"--gpus-per-trial {spec.gpus_per_trial:g}: the Ray cluster has {gpus:g} GPUs; "
                "pass --gpus-per-trial 0 or connect to a cluster with GPUs (--address)"
            )


def run_sweep(spec: SweepSpec) -> SweepOutcome:
    """Run the sweep ``spec`` end to end and return its outcome (see module docstring).

    Everything that can be checked is checked before any MLflow run exists: the tracking URI,
    the dataset, the objectives, the Ray cluster and its GPUs.
    """
    import ray
    from mlflow.tracking import MlflowClient
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    objectives = parse_objectives(spec.objectives)
    target = resolve_tracking_uri(spec.tracking_uri)
    cfg = _base_config(spec)
    data = load_dataset(spec.dataset, root=spec.data_root, download=spec.download, seed=spec.seed)
    say(f"dataset {spec.dataset}: {len(data.y_train)} train / {len(data.y_test)} test images")

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    _init_ray(spec)
    try:
        client = MlflowClient(tracking_uri=target.uri)
        experiment_id = get_or_create_experiment(client, spec.experiment, target.artifact_location)
        sweep_name = f"{spec.study}-{time.strftime('%Y%m%d-%H%M%S')}"
        parent = client.create_run(experiment_id, run_name=sweep_name, tags={"sweep": sweep_name})
        parent_id = parent.info.run_id
        status = "FAILED"
        try:
            log_params(client, parent.info.run_id, {
                **{k: v for k, v in dataclasses.asdict(spec).items() if k != "tracking_uri"},
                "baseline_hash": cfg.baseline_hash(),
            })  # fmt: skip
            device = pick_device(None)
            say(
                f"dense baseline {cfg.baseline_hash()}: {spec.model}, {spec.baseline_epochs} epochs"
            )
            baseline = load_or_train_baseline(
                cfg, data.to(device), spec.cache_dir, log=lambda m: say(m)
            )
            source = "cache" if baseline.reused else "trained"
            acc = baseline.test_accuracy
            say(f"dense baseline {source}: test accuracy {acc:.4f} ({baseline.path})")
            client.set_tag(parent_id, "baseline_source", source)
            client.log_metric(parent_id, "dense_test_accuracy", baseline.test_accuracy)

            context = {
                "data": dataclasses.asdict(cfg.data),
                "model": dataclasses.asdict(cfg.model),
                "train": dataclasses.asdict(cfg.train),
                "seed": spec.seed,
                "cpus_per_trial": spec.cpus_per_trial,
                "gpus_per_trial": spec.gpus_per_trial,
                "tracking_uri": target.uri,
                "experiment_id": experiment_id,
                "parent_run_id": parent_id,
                "sweep_name": sweep_name,
            }
            trainable = tune.with_resources(
                tune.with_parameters(
                    prune_trial,
                    context=context,
                    baseline={"state": baseline.state, "test_accuracy": baseline.test_accuracy},
                    data=data,
                ),
                {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial},
            )
            search = OptunaSearch(
                get_space(spec.space, quick=spec.quick),
                metric=[o.metric for o in objectives],
                mode=[o.mode for o in objectives],
                seed=spec.seed,
            )
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=search,
                    num_samples=spec.num_samples,
                    max_concurrent_trials=spec.max_concurrent,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=sweep_name, storage_path=spec.storage_path, verbose=1
                ),
            )
            say(
                f"{spec.num_samples} trials, {spec.cpus_per_trial:g} CPU + "
                f"{spec.gpus_per_trial:g} GPU each; MLflow experiment {spec.experiment!r}"
            )
            grid = tuner.fit()
            failed = sum(1 for r in grid if r.error is not None)

            runs = trial_table(child_runs(target.uri, experiment_id, parent_id))
            table = pareto_table(runs, objectives) if len(runs) else runs
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "pareto.csv")
                table.to_csv(path, index=False)
                client.log_artifact(parent_id, path)
            client.log_metric(parent_id, "finished_trials", len(runs))
            client.log_metric(parent_id, "failed_trials", failed)
            status = "FINISHED"
            return SweepOutcome(
                parent_id, experiment_id, target.uri, baseline.reused,
                baseline.test_accuracy, table, failed,
            )  # fmt: skip
        finally:
            client.set_terminated(parent_id, status)
    finally:
        ray.shutdown()


def trial_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per child run: name, recipe and final metrics, under plain column names."""
    if df.empty:
        return pd.DataFrame(columns=["run_id", "run_name", *RECIPE_COLUMNS])
    out = pd.DataFrame({"run_id": df["run_id"], "run_name": df["tags.mlflow.runName"]})
    for col in ["method", *RECIPE_COLUMNS]:
        out[col] = df.get(f"params.{col}")
    for col in [c for c in df.columns if c.startswith("metrics.")]:
        out[col[len("metrics.") :]] = df[col]
    for col in ("target_sparsity", "lr"):
        out[col] = out[col].astype(float)
    for col in ("iterations", "finetune_epochs"):
        out[col] = out[col].astype(int)
    return out.reset_index(drop=True)


def format_front(table: pd.DataFrame, objectives_text: str, dense_accuracy: float) -> str:
    """The printed summary: every trial, Pareto-optimal ones marked with '*'."""
    objectives = parse_objectives(objectives_text)
    cols = ["run_name", "target_sparsity", "iterations", "finetune_epochs", "lr"]
    cols += [o.metric for o in objectives if o.metric not in cols]
    for extra in ("test_accuracy", "sparsity", "nonzero_params"):
        if extra not in cols:
            cols.append(extra)
    shown = table[[c for c in cols if c in table.columns]].copy()
    shown.insert(0, "pareto", table["pareto"].map({True: "*", False: ""}))
    if "nonzero_params" in shown:
        shown["nonzero_params"] = shown["nonzero_params"].astype("int64")
    front = int(table["pareto"].sum())
    header = (
        f"Pareto front over {', '.join(map(str, objectives))}: {front} of {len(table)} trials "
        f"(dense test accuracy {dense_accuracy:.4f})"
    )
    return header + "\n" + shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def main(study: Study, argv: list[str] | None = None) -> int:
    """Command-line entry point of a sweep module; returns the exit status."""
    try:
        spec = resolve_spec(study, argv)
        outcome = run_sweep(spec)
    except (UsageError, TrackingError, DatasetUnavailable) as err:
        print(f"python -m sweeps.{study.name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if outcome.runs.empty:
        print(f"no trial finished ({outcome.failed_trials} failed); see the Ray output above",
              file=sys.stderr)  # fmt: skip
        return 1
    print(format_front(outcome.runs, spec.objectives, outcome.dense_test_accuracy))
    print(
        f"\nMLflow: {outcome.tracking_uri} experiment {spec.experiment!r}, parent run "
        f"{outcome.parent_run_id} (pareto.csv attached). "
        f"UI: mlflow ui --backend-store-uri {spec.tracking_uri}"
    )
    if outcome.failed_trials:
        print(f"warning: {outcome.failed_trials} trial(s) failed", file=sys.stderr)
        return 1
    return 0
