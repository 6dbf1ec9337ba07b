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

from .tracking import log_metrics, log_params

# Per-step metrics of the MLflow contract, reported to Tune and logged with step = prune iteration.
CONTRACT_METRICS = ("test_accuracy", "sparsity", "nonzero_params", "total_params")


def recipe_run_name(model: str, recipe: dict[str, Any]) -> str:
    """Checkpoint/run name in the study's style, e.g. ``resnet18_prune_75perc_iterative3_5``.

    The number after the schedule is fine-tune epochs per step; after the underscore, iterations.
    """
    perc = round(100 * float(recipe["target_sparsity"]))
    name = f"{model}_prune_{perc}perc_{recipe['schedule']}{recipe['finetune_epochs']}"
    if recipe["schedule"] != "oneshot":
        name += f"_{recipe['iterations']}"
    return name


def experiment_config(context: dict[str, Any], recipe: dict[str, Any]) -> ExperimentConfig:
    """The prune_core config of one trial: the sweep's data/model/training plus the recipe."""
    return ExperimentConfig(
        data=DataConfig(**context["data"]),
        model=ModelConfig(**context["model"]),
        train=TrainConfig(**context["train"]),
        prune=PruneConfig(
            method=recipe["method"],
            target_sparsity=float(recipe["target_sparsity"]),
            schedule=recipe["schedule"],
            iterations=int(recipe.get("iterations", 1)),
            finetune_epochs=int(recipe["finetune_epochs"]),
            lr=float(recipe["lr"]),
        ),
        seed=int(context["seed"]),
    )


def prune_trial(
    config: dict[str, Any],
    context: dict[str, Any] | None = None,
    baseline: dict[str, Any] | None = None,
    data: Any = None,
) -> None:
    """Ray Tune function trainable. ``context``, ``baseline`` and ``data`` come through the object
    store (``tune.with_parameters``), so trials on any node share one copy and never retrain."""
    from mlflow.tracking import MlflowClient
    from ray import tune

    assert context is not None and baseline is not None and data is not None
    cpus = max(1, int(context["cpus_per_trial"]))
    torch.set_num_threads(cpus)  # Ray sets OMP_NUM_THREADS too; torch reads it only at import
    use_cuda = context["gpus_per_trial"] > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    recipe = {**config}
    cfg = experiment_config(context, recipe)
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
        log_params(
            client,
            run_id,
            {
                "dataset": cfg.data.dataset,
                "model": cfg.model.name,
                "method": cfg.prune.method,
                "schedule": cfg.prune.schedule,
                "target_sparsity": cfg.prune.target_sparsity,
                "iterations": cfg.prune.iterations,
                "finetune_epochs": cfg.prune.finetune_epochs,
                "lr": cfg.prune.lr,
                "seed": cfg.seed,
                "device": device.type,
                "baseline_hash": cfg.baseline_hash(),
            },
        )

        def report(step: int, metrics: dict[str, float]) -> None:
            values = {k: metrics[k] for k in CONTRACT_METRICS}
            log_metrics(client, run_id, values, step=step)
            tune.report({**values, "step": step})

        result = run_pruning(
            cfg,
            data.to(device),
            baseline["state"],
            report=report,
            dense_test_accuracy=baseline["test_accuracy"],
            log=lambda msg: print(f"[{run_name}] {msg}", flush=True),
        )
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = os.path.join(tmp, f"{run_name}.pt")
            save_state({k: v.cpu() for k, v in result.model.state_dict().items()}, ckpt)
            client.log_artifact(run_id, ckpt, artifact_path="checkpoints")
            layers = os.path.join(tmp, "layer_sparsity.json")
            with open(layers, "w") as fh:
                json.dump(result.layer_sparsity, fh, indent=1)
            client.log_artifact(run_id, layers)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
