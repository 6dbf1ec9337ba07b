"""The Ray Tune trainable: one pruning recipe on the shared dense baseline, tracked in MLflow."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch

from prune_core.checkpoint import save_state
from prune_core.config import DataConfig, ExperimentConfig, ModelConfig, PruneConfig, TrainConfig
from prune_core.experiment import run_pruning
from prune_core.schedules import sparsity_schedule
from prune_core.structured import save_pruned_model

from .tracking import log_metrics, log_params

# Per-step metrics of the MLflow contract, reported to Tune and logged with step = prune iteration.
CONTRACT_METRICS = ("test_accuracy", "sparsity", "nonzero_params", "total_params")


# Recipe keys that become PruneConfig fields (the rest of a recipe, e.g. ``model``, is not).
PRUNE_FIELDS = (
    "method", "target_sparsity", "schedule", "iterations", "finetune_epochs", "lr", "retrain",
    "rewind_epoch", "remove_channels", "norm", "scope", "nm_n", "nm_m", "include_bias", "layers",
)  # fmt: skip
# Measurements of the final model, logged once at the last step (MLflow metric names).
MEASURED_METRICS = ("size_bytes", "sparse_size_bytes", "flops", "effective_flops", "latency_ms")


def recipe_run_name(model: str, recipe: dict[str, Any]) -> str:
    """Checkpoint/run name in the studies' style, e.g. ``resnet18_prune_75perc_iterative3_5``.

    The number after the schedule is fine-tune epochs per step; after the underscore, iterations.
    Methods other than global magnitude, rewinding and N:M patterns are named too.
    """
    method = recipe.get("method", "global_magnitude")
    schedule = recipe.get("schedule", "oneshot")
    perc = round(100 * float(recipe["target_sparsity"]))
    kind = "prune" if method == "global_magnitude" else method
    if method == "ln_structured":
        kind = f"l{recipe.get('norm', 1)}_structured"
    if method == "nm":
        kind = f"nm{recipe.get('nm_n', 2)}of{recipe.get('nm_m', 4)}"
    name = f"{model}_{kind}_{perc}perc_{schedule}{recipe.get('finetune_epochs', 1)}"
    if schedule != "oneshot":
        name += f"_{recipe.get('iterations', 1)}"
    if recipe.get("retrain", "finetune") != "finetune":
        name += f"_{recipe['retrain']}{recipe.get('rewind_epoch', 1)}"
    if recipe.get("remove_channels"):
        name += "_removed"
    return name


def experiment_config(context: dict[str, Any], recipe: dict[str, Any]) -> ExperimentConfig:
    """The prune_core config of one trial: the sweep's data/model/training plus the recipe."""
    prune = {k: recipe[k] for k in PRUNE_FIELDS if k in recipe}
    model = {"name": recipe.get("model", context["model"]["name"])}
    return ExperimentConfig(
        data=DataConfig(**context["data"]),
        model=ModelConfig(**model),
        train=TrainConfig(**context["train"]),  # the configs turn lists back into tuples
        prune=PruneConfig(**prune),
        seed=int(context["seed"]),
    )


def prune_trial(
    config: dict[str, Any],
    context: dict[str, Any] | None = None,
    baselines: dict[str, Any] | None = None,
    data: Any = None,
) -> None:
    """Ray Tune function trainable. ``context``, ``baselines`` (per model) and ``data`` come
    through the object store (``tune.with_parameters``), so trials on any node share one copy and
    never retrain the dense model. ``config`` is the recipe: flat from OptunaSearch, or under
    ``"recipe"`` in grid mode."""
    import ray
    from mlflow.tracking import MlflowClient
    from ray import tune

    assert context is not None and baselines is not None and data is not None
    cpus = max(1, int(context["cpus_per_trial"]))
    torch.set_num_threads(cpus)  # Ray sets OMP_NUM_THREADS too; torch reads it only at import
    use_cuda = context["gpus_per_trial"] > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    recipe = dict(config.get("recipe", config))
    cfg = experiment_config(context, recipe)
    baseline = baselines[cfg.model.name]
    run_name = recipe_run_name(cfg.model.name, recipe)

    client = MlflowClient(tracking_uri=context["tracking_uri"])
    run = client.create_run(
        context["experiment_id"],
        run_name=run_name,
        tags={
            "mlflow.parentRunId": context["parent_run_id"],
            "sweep": context["sweep_name"],
            "trial_id": tune.get_context().get_trial_id() or "",
        },
    )
    run_id = run.info.run_id
    try:
        p = cfg.prune
        params = {
            "dataset": cfg.data.dataset, "model": cfg.model.name, "method": p.method,
            "schedule": p.schedule, "target_sparsity": round(p.target_sparsity, 6),
            "iterations": p.iterations, "finetune_epochs": p.finetune_epochs, "lr": p.lr,
            "seed": cfg.seed, "retrain": p.retrain, "device": device.type,
            "baseline_hash": cfg.baseline_hash(),
        }  # fmt: skip
        runtime = ray.get_runtime_context()
        assigned = runtime.get_assigned_resources()
        params["node_id"] = runtime.get_node_id()  # which Ray node ran the trial
        params["cpus_assigned"] = assigned.get("CPU", 0)
        params["gpus_assigned"] = assigned.get("GPU", 0)
        # options only where they mean something, so the UI's parallel coordinates stay readable
        if p.retrain != "finetune":
            params["rewind_epoch"] = p.rewind_epoch
        if p.method == "ln_structured":
            params.update(norm=p.norm, scope=p.scope, remove_channels=p.remove_channels)
        if p.method == "nm":
            params["nm"] = f"{p.nm_n}:{p.nm_m}"
        if p.include_bias:
            params["include_bias"] = True
        if p.layers:
            params["layers"] = ",".join(p.layers)
        log_params(client, run_id, params)
        last_step = len(sparsity_schedule(p.schedule, p.target_sparsity, p.iterations))

        def report(step: int, metrics: dict[str, float]) -> None:
            values = {k: metrics[k] for k in CONTRACT_METRICS}
            log_metrics(client, run_id, values, step=step)
            if step < last_step:  # the last report waits for the measurements (objectives)
                # sizes, FLOPs and latency are measured once, on the final model: NaN until then
                # (Tune insists that every report holds every objective)
                pending = dict.fromkeys(MEASURED_METRICS, float("nan"))
                tune.report({**values, **pending, "step": step})

        result = run_pruning(
            cfg,
            data.to(device),
            baseline["state"],
            report=report,
            dense_test_accuracy=baseline["test_accuracy"],
            rewind_states=baseline.get("rewind_states"),
            measure=True,
            log=lambda msg: print(f"[{run_name}] {msg}", flush=True),
        )
        measured = {k: float(result.measurements[k]) for k in MEASURED_METRICS}
        extra = {**measured, "permanent_test_accuracy": result.permanent_test_accuracy}
        extra["accuracy_change"] = result.final["test_accuracy"] - result.dense_test_accuracy
        log_metrics(client, run_id, extra, step=last_step)
        log_params(client, run_id, {
            "latency_batch_size": result.measurements["latency_batch_size"],
            "latency_device": result.measurements["latency_device"],
            "latency_threads": result.measurements["latency_threads"],
        })  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = os.path.join(tmp, f"{run_name}.pt")
            if p.remove_channels:
                save_pruned_model(
                    result.model,
                    ckpt,
                    cfg.model.name,
                    data.in_channels,
                    data.num_classes,
                    data.image_size,
                )
            else:
                save_state({k: v.cpu() for k, v in result.model.state_dict().items()}, ckpt)
            client.log_artifact(run_id, ckpt, artifact_path="checkpoints")
            layers = os.path.join(tmp, "layer_sparsity.json")
            with open(layers, "w") as fh:
                json.dump(result.layer_sparsity, fh, indent=1)
            client.log_artifact(run_id, layers)
        client.set_terminated(run_id, "FINISHED")
        final = {k: result.final[k] for k in CONTRACT_METRICS}
        tune.report({**final, **extra, "step": last_step})
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
