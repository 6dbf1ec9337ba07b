"""Run a sweep: checks, dense baselines, Ray Tune trials (Optuna search or a fixed grid), MLflow
runs, the Pareto front and the study's results tables."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from prune_core.baseline import load_or_train_baseline
from prune_core.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from prune_core.data import DatasetUnavailable, load_dataset
from prune_core.train import pick_device

from .analysis import analyse, parse_objectives, trial_table
from .cli import Study, SweepSpec, UsageError, new_sweep_name, resolve_spec
from .report import format_analysis, write_outputs
from .tracking import (
    TrackingError,
    TrackingTarget,
    child_runs,
    get_or_create_experiment,
    log_params,
    resolve_tracking_uri,
)
from .trial import prune_trial

# Spaces that may choose weight rewinding: their baselines keep the early weights it needs.
REWINDING_SPACES = ("unstructured", "full")


@dataclass
class SweepOutcome:
    """What a finished sweep produced."""

    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    baseline_reused: bool  # every model's baseline came from the cache
    dense_test_accuracy: dict[str, float]  # per model
    runs: pd.DataFrame  # one row per FINISHED trial, with a boolean ``pareto`` column
    failed_trials: int
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # CSV name -> table
    sweep_name: str = ""
    results_dir: str = ""  # where the CSV tables, pareto.png and report.md were written
    analysis: Any = None  # sweeps.pareto.Analysis of the finished trials


def say(msg: str) -> None:
    """Progress line on stderr (stdout carries the result tables)."""
    print(f"[sweep] {msg}", file=sys.stderr, flush=True)


def base_config(spec: SweepSpec, model: str) -> ExperimentConfig:
    """The data/model/training config of ``model``'s dense baseline in this sweep."""
    rewind: tuple[int, ...] = ()
    if spec.space in REWINDING_SPACES and not spec.grid:
        from search_spaces import REWIND_EPOCHS

        rewind = tuple(e for e in REWIND_EPOCHS if e < spec.baseline_epochs)
    return ExperimentConfig(
        data=DataConfig(
            dataset=spec.dataset, root=spec.data_root, download=spec.download,
            batch_size=spec.batch_size,
        ),
        model=ModelConfig(name=model),
        train=TrainConfig(epochs=spec.baseline_epochs, lr=spec.baseline_lr, rewind_epochs=rewind),
        seed=spec.seed,
    )  # fmt: skip


def _check_resources(spec: SweepSpec, resources: dict[str, float]) -> None:
    """Raise ``UsageError`` if one trial asks for more CPUs or GPUs than the whole cluster has
    (Ray Tune would otherwise wait for them forever)."""
    gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 0)
    if spec.gpus_per_trial > 0 and gpus < spec.gpus_per_trial:
        raise UsageError(
            f"--gpus-per-trial {spec.gpus_per_trial:g}: the Ray cluster has {gpus:g} GPUs; "
            "pass --gpus-per-trial 0 or connect to a cluster with GPUs (--address)"
        )
    if cpus < spec.cpus_per_trial:
        raise UsageError(
            f"--cpus-per-trial {spec.cpus_per_trial:g}: the Ray cluster has {cpus:g} CPUs; "
            f"pass at most {cpus:g}"
        )


def _check_address_reachable(address: str, timeout_s: float = 5.0) -> None:
    """For ``host:port`` (not ``auto``, not ``ray://``), fail within seconds if nothing listens
    there, instead of letting Ray retry for minutes."""
    import socket

    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--address {address!r}: write auto or HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        raise UsageError(
            f"--address {address}: no Ray cluster answers there ({err.strerror or err}); "
            "start one with `ray start --head` or leave --address out for a local Ray"
        ) from None


def _init_ray(spec: SweepSpec, tracking: TrackingTarget) -> bool:
    """Start or join Ray (unless this process is connected already), and fail at once if the
    sweep cannot work there: a trial's resources can never be met, or several nodes would share a
    SQLite tracking file. Returns True if this call connected (and so must disconnect)."""
    import ray

    # every trial, on any node, finds the tracking URI in its environment
    runtime_env: dict[str, Any] = {"env_vars": {"MLFLOW_TRACKING_URI": tracking.uri}}
    if ray.is_initialized():
        connected = False
    elif spec.address:
        _check_address_reachable(spec.address)
        import prune_core
        import search_spaces
        import sweeps

        # ship this project's code to every node, so workers need only the dependencies
        runtime_env["py_modules"] = [prune_core, search_spaces, sweeps]
        try:
            ray.init(
                address=spec.address, logging_level="WARNING", log_to_driver=True,
                runtime_env=runtime_env,
            )  # fmt: skip
        except Exception as err:  # Ray raises ConnectionError, RuntimeError, auth errors, ...
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UsageError(
                f"--address {spec.address}: cannot join the Ray cluster ({first[:200]}); with "
                "token authentication set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
                "(`ray get-auth-token` on the head)"
            ) from None
        connected = True
    else:
        ray.init(
            include_dashboard=False, logging_level="WARNING", log_to_driver=True,
            runtime_env=runtime_env,
        )  # fmt: skip
        connected = True
    try:
        _check_resources(spec, ray.cluster_resources())
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if len(nodes) > 1 and tracking.is_local_file:
            raise UsageError(
                f"--tracking-uri {spec.tracking_uri}: a SQLite file cannot be shared by the "
                f"{len(nodes)} nodes of this Ray cluster; start a tracking server "
                "(python -m sweeps.server) and pass --tracking-uri http://HEAD:5000"
            )
    except UsageError:
        if connected:
            ray.shutdown()
        raise
    return connected


def space_with_models(trial: Any, space: Callable, models: tuple[str, ...]) -> dict[str, Any]:
    """A study with several models lets Optuna pick the model too."""
    trial.suggest_categorical("model", list(models))
    return space(trial)


def run_sweep(spec: SweepSpec, study: Study | None = None) -> SweepOutcome:
    """Run the sweep ``spec`` end to end and return its outcome.

    Everything that can be checked is checked before any MLflow run exists: the tracking URI,
    the dataset, the objectives, the Ray cluster and its resources.
    """
    import ray
    from mlflow.tracking import MlflowClient
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from search_spaces import get_grid, get_space

    objectives = parse_objectives(spec.objectives)
    target = resolve_tracking_uri(spec.tracking_uri)
    data = load_dataset(spec.dataset, root=spec.data_root, download=spec.download, seed=spec.seed)
    say(f"dataset {spec.dataset}: {len(data.y_train)} train / {len(data.y_test)} test images")

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    connected = _init_ray(spec, target)
    try:
        client = MlflowClient(tracking_uri=target.uri)
        experiment_id = get_or_create_experiment(client, spec.experiment, target.artifact_location)
        sweep_name = new_sweep_name(spec.study)
        parent = client.create_run(experiment_id, run_name=sweep_name, tags={"sweep": sweep_name})
        parent_id = parent.info.run_id
        status = "FAILED"
        try:
            settings = dataclasses.asdict(spec)
            settings["models"] = ",".join(settings["models"])
            log_params(client, parent_id, settings)
            device = pick_device(None)
            device_data = data.to(device)
            baselines, accuracies, reused = {}, {}, []
            for model in spec.models:
                cfg = base_config(spec, model)
                say(f"dense {model} {cfg.baseline_hash()}: {spec.baseline_epochs} epochs")
                b = load_or_train_baseline(cfg, device_data, spec.cache_dir, log=say)
                source = "cache" if b.reused else "trained"
                say(f"dense {model} {source}: test accuracy {b.test_accuracy:.4f} ({b.path})")
                baselines[model] = {
                    "state": b.state,
                    "test_accuracy": b.test_accuracy,
                    "rewind_states": b.rewind_states,
                }
                accuracies[model] = b.test_accuracy
                reused.append(b.reused)
                client.set_tag(parent_id, f"baseline_source.{model}", source)
                client.log_metric(parent_id, f"dense_test_accuracy.{model}", b.test_accuracy)
            client.set_tag(parent_id, "baseline_source", "cache" if all(reused) else "trained")
            client.log_metric(parent_id, "dense_test_accuracy", accuracies[spec.models[0]])
            del device_data

            base = base_config(spec, spec.models[0])  # data and training are the same per model
            context = {
                "data": dataclasses.asdict(base.data),
                "model": {"name": spec.models[0]},
                "train": dataclasses.asdict(base.train),
                "seed": spec.seed,
                "cpus_per_trial": spec.cpus_per_trial,
                "gpus_per_trial": spec.gpus_per_trial,
                "tracking_uri": target.uri,
                "experiment_id": experiment_id,
                "parent_run_id": parent_id,
                "sweep_name": sweep_name,
            }
            trainable = tune.with_resources(
                tune.with_parameters(prune_trial, context=context, baselines=baselines, data=data),
                {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial},
            )
            if spec.grid:
                recipes = [
                    {**r, "model": m} for m in spec.models for r in get_grid(spec.study, spec.quick)
                ]
                tune_config = tune.TuneConfig(
                    num_samples=1, max_concurrent_trials=spec.max_concurrent, reuse_actors=True
                )
                param_space = {"recipe": tune.grid_search(recipes)}
                say(f"grid: {len(recipes)} recipes of the study's protocol")
            else:
                space = get_space(spec.space, quick=spec.quick)
                if len(spec.models) > 1:
                    space = functools.partial(space_with_models, space=space, models=spec.models)
                search = OptunaSearch(
                    space,
                    metric=[o.metric for o in objectives],
                    mode=[o.mode for o in objectives],
                    seed=spec.seed,
                )
                tune_config = tune.TuneConfig(
                    search_alg=search,
                    num_samples=spec.num_samples,
                    max_concurrent_trials=spec.max_concurrent,
                    reuse_actors=True,
                )
                param_space = None
                say(f"Optuna search over space {spec.space!r}: {spec.num_samples} trials")
            say(
                f"{spec.cpus_per_trial:g} CPU + {spec.gpus_per_trial:g} GPU per trial; "
                f"MLflow experiment {spec.experiment!r}, parent run {parent_id}"
            )
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune_config,
                run_config=tune.RunConfig(
                    name=sweep_name, storage_path=spec.storage_path, verbose=1
                ),
            )
            grid = tuner.fit()
            failed = sum(1 for r in grid if r.error is not None)

            runs = trial_table(child_runs(target.uri, experiment_id, parent_id), accuracies)
            out_dir = os.path.join(spec.results_dir, sweep_name)
            os.makedirs(out_dir, exist_ok=True)
            analysis, tables = None, {}
            if len(runs):
                # the same analysis as `python -m sweeps.pareto`: pareto.csv, .png, report.md
                analysis = analyse(runs, objectives, dense=accuracies)
                title = f"{spec.experiment} / {sweep_name}"
                for path in write_outputs(analysis, out_dir, settings=settings, title=title):
                    client.log_artifact(parent_id, path)
                client.log_metric(parent_id, "pareto_hypervolume", analysis.hypervolume)
                client.log_metric(parent_id, "pareto_size", int(analysis.table["pareto"].sum()))
                make_tables = study.tables if study and study.tables else _default_tables
                tables = make_tables(runs)
            for name, frame in tables.items():
                path = os.path.join(out_dir, name)
                frame.to_csv(path, index=False)
                client.log_artifact(parent_id, path)
            client.log_metric(parent_id, "finished_trials", len(runs))
            client.log_metric(parent_id, "failed_trials", failed)
            status = "FINISHED"
            return SweepOutcome(
                parent_id, experiment_id, target.uri, all(reused), accuracies,
                analysis.table if analysis else runs, failed, tables, sweep_name, out_dir,
                analysis,
            )  # fmt: skip
        finally:
            client.set_terminated(parent_id, status)
    finally:
        if connected:
            ray.shutdown()


def results_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The studies' report shape: accuracy, change from dense, sparsity, non-zero over total
    parameters, size in MB, one row per trial."""
    out = pd.DataFrame({
        "run_name": runs["run_name"],
        "model": runs["model"],
        "method": runs["method"],
        "target_sparsity": runs["target_sparsity"],
        "test_accuracy": runs["test_accuracy"],
        "accuracy_change": runs["accuracy_change"],
        "sparsity": runs["sparsity"],
        "nonzero_over_total": [
            f"{int(n)}/{int(t)}"
            for n, t in zip(runs["nonzero_params"], runs["total_params"], strict=True)
        ],
    })  # fmt: skip
    if "size_bytes" in runs:
        out["size_mb"] = runs["size_bytes"] / 2**20
        out["sparse_size_mb"] = runs["sparse_size_bytes"] / 2**20
    return out


def _default_tables(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {"results.csv": results_table(runs)}


def main(study: Study, argv: list[str] | None = None) -> int:
    """Command-line entry point of a sweep module; returns the exit status."""
    try:
        spec = resolve_spec(study, argv)
        outcome = run_sweep(spec, study)
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
    for name, frame in outcome.tables.items():
        print(f"\n{name}\n" + frame.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print()
    print(format_analysis(outcome.analysis))
    if outcome.tracking_uri.startswith(("http://", "https://")):
        ui = (
            f"{outcome.tracking_uri}/#/experiments/{outcome.experiment_id}/runs"
            "?workflowType=machine_learning"
        )
    else:
        ui = f"mlflow ui --backend-store-uri {spec.tracking_uri}"
    print(
        f"\nMLflow: {outcome.tracking_uri} experiment {spec.experiment!r}, parent run "
        f"{outcome.parent_run_id} (pareto.csv, pareto.png, report.md, {', '.join(outcome.tables)} "
        f"attached; also in "
        f"{outcome.results_dir}). "
        f"UI: {ui}"
    )
    if outcome.failed_trials:
        print(f"warning: {outcome.failed_trials} trial(s) failed", file=sys.stderr)
        return 1
    return 0
