"""The Ray Tune trainable: one pruning recipe on the shared dense baseline, tracked in MLflow.

A Tune trial id maps to exactly one live MLflow child run (tag ``trial_id``), whatever happens to
the trial:

* a trial that runs again (retried after a fault, or re-run by ``--resume`` after an interrupt)
  *replaces* its earlier unfinished child run: the old run is deleted (MLflow keeps it in the
  experiment's trash; the new run's tag ``replaces`` names it), so histories never mix attempts;
* a trial whose recipe already has a FINISHED child run in the sweep (it ended after the driver's
  last Ray Tune checkpoint, then the driver died; see ``earlier_runs``) is not trained again: it
  reports the recorded final metrics to Tune;
* a loss that turns NaN or infinite ends the trial at once: child run FAILED with tag
  ``failure=diverged``, and NaN objectives reported to Tune, which Optuna records as a FAILED trial
  (so the search learns the recipe was bad, and Tune does not retry a deterministic failure);
* any other exception marks the child run FAILED with tag ``error`` (the error's last line) and is
  raised again, so Ray Tune retries the trial up to ``--max-failures`` times on a fresh worker.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import torch

from prune_core.checkpoint import save_state
from prune_core.config import DataConfig, ExperimentConfig, ModelConfig, PruneConfig, TrainConfig
from prune_core.experiment import run_pruning
from prune_core.plugins import load_plugins
from prune_core.schedules import sparsity_schedule
from prune_core.structured import save_pruned_model
from prune_core.train import TrainingDiverged

from .catalog import extra_metrics, final_metrics, measure_final, step_metrics
from .tracking import log_metrics, log_params, tagged_child_runs

# Per-step metrics of the MLflow contract, reported to Tune and logged with step = prune iteration.
CONTRACT_METRICS = step_metrics()
# Tag of a FINISHED child run whose result later trials reused (the same recipe proposed again):
# their trial ids, comma-separated.
REUSED_BY_TAG = "reused_by"


# Recipe keys that become PruneConfig fields (the rest of a recipe, e.g. ``model``, is not).
PRUNE_FIELDS = (
    "method", "target_sparsity", "schedule", "iterations", "finetune_epochs", "lr", "retrain",
    "rewind_epoch", "remove_channels", "norm", "scope", "nm_n", "nm_m", "include_bias", "layers",
)  # fmt: skip
# Measurements of the final model, logged once at the last step (MLflow metric names): the
# catalog's built-in ones; the code asks ``final_metrics()``, which has a plugin's metrics too.
MEASURED_METRICS = final_metrics()
# Metrics logged once at the end besides the measurements.
FINAL_EXTRA_METRICS = extra_metrics()


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one sweep shares: the dense baseline's data and training config, the
    resources per trial, and where to track (sent to the trials through Ray's object store)."""

    data: DataConfig
    train: TrainConfig
    model: str  # the model of recipes that do not choose one
    seed: int
    cpus_per_trial: float
    gpus_per_trial: float
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep_name: str
    plugins: tuple[str, ...] = ()  # loaded in every trial process before its recipe is built


def retraining(cfg: ExperimentConfig) -> tuple[int, float]:
    """(epochs per prune step, learning rate at the first retraining step) that ``cfg`` runs.

    Fine-tuning runs ``finetune_epochs`` at ``lr``. Rewinding (weights or learning rate) replays
    the dense cosine schedule from ``rewind_epoch`` to its end: ``train.epochs - rewind_epoch``
    epochs starting at the dense schedule's rate at that epoch (``prune_core.train.train_epochs``'
    cosine, 0.5 * (1 + cos(pi * rewind_epoch / train.epochs)) times ``train.lr``).
    """
    p, t = cfg.prune, cfg.train
    epochs = p.epochs_per_step(t.epochs)
    if p.retrain == "finetune":
        return epochs, p.lr
    start = 0.5 * (1.0 + math.cos(math.pi * p.rewind_epoch / t.epochs))
    return epochs, t.lr * start


def recipe_run_name(model: str, recipe: dict[str, Any], dense_epochs: int | None = None) -> str:
    """Checkpoint/run name in the studies' style, e.g. ``resnet18_prune_75perc_iterative3_5``.

    The number after the schedule is the retraining epochs per step (fine-tune epochs; for
    rewinding, the ``dense_epochs - rewind_epoch`` epochs of the replayed dense schedule); after
    the underscore, iterations. Methods other than global magnitude, rewinding and N:M patterns
    are named too.
    """
    method = recipe.get("method", "global_magnitude")
    schedule = recipe.get("schedule", "oneshot")
    retrain = recipe.get("retrain", "finetune")
    perc = round(100 * float(recipe["target_sparsity"]))
    kind = "prune" if method == "global_magnitude" else method
    if method == "ln_structured":
        kind = f"l{recipe.get('norm', 1)}_structured"
    if method == "nm":
        kind = f"nm{recipe.get('nm_n', 2)}of{recipe.get('nm_m', 4)}"
    epochs = recipe.get("finetune_epochs", 1)
    if retrain != "finetune" and dense_epochs is not None:
        epochs = dense_epochs - recipe.get("rewind_epoch", 1)
    name = f"{model}_{kind}_{perc}perc_{schedule}{epochs}"
    if schedule != "oneshot":
        name += f"_{recipe.get('iterations', 1)}"
    if retrain != "finetune":
        name += f"_{retrain}{recipe.get('rewind_epoch', 1)}"
    if recipe.get("remove_channels"):
        name += "_removed"
    return name


def experiment_config(context: TrialContext, recipe: dict[str, Any]) -> ExperimentConfig:
    """The prune_core config of one trial: the sweep's data/model/training plus the recipe."""
    prune = {k: recipe[k] for k in PRUNE_FIELDS if k in recipe}
    return ExperimentConfig(
        data=context.data,
        model=ModelConfig(name=recipe.get("model", context.model)),
        train=context.train,
        prune=PruneConfig(**prune),
        seed=int(context.seed),
    )


def trial_params(cfg: ExperimentConfig, device: str) -> dict[str, Any]:
    """The child run's params: the recipe as it ran (retraining epochs and rate as used), plus
    options only where they mean something, so the UI's parallel coordinates stay readable."""
    p = cfg.prune
    epochs, lr = retraining(cfg)
    params: dict[str, Any] = {
        "dataset": cfg.data.dataset, "model": cfg.model.name, "method": p.method,
        "schedule": p.schedule, "target_sparsity": round(p.target_sparsity, 6),
        "iterations": p.iterations, "finetune_epochs": epochs, "lr": lr,
        "seed": cfg.seed, "retrain": p.retrain, "device": device,
        "baseline_hash": cfg.baseline_hash(),
    }  # fmt: skip
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
    return params


def error_line(err: BaseException) -> str:
    """The last non-empty line of ``err``'s text (where Python puts the actual error), cut to a
    length MLflow tags take comfortably."""
    lines = [line.strip() for line in f"{type(err).__name__}: {err}".splitlines() if line.strip()]
    return (lines[-1] if lines else type(err).__name__)[:500]


def _replay_finished(run: Any, last_step: int, last_rung: int) -> dict[str, Any]:
    """The final Tune result of a trial whose child run FINISHED before the driver went down."""
    metrics = dict(run.data.metrics)
    keys = (*CONTRACT_METRICS, *final_metrics(), *FINAL_EXTRA_METRICS, "epochs_run")
    out = {k: float(metrics.get(k, math.nan)) for k in keys}
    return {**out, "step": last_step, "rung": last_rung, "last_rung": last_rung, "replayed": 1}


def earlier_runs(client: Any, context: TrialContext, trial_id: str, config_hash: str) -> list[Any]:
    """The sweep's live child runs that this trial continues: those of the same Tune trial (a
    retry, or a trial ``--resume`` runs again), and those of the same recipe left FINISHED,
    KILLED or FAILED by an earlier driver. Ray Tune's saved state can lag its trials by seconds;
    a driver that died in between leaves trials Tune no longer knows, and the restored (seeded)
    searcher proposes their recipes again under new trial ids. Training is seeded, so a recipe's
    FINISHED run is its result; RUNNING runs of other trials are never touched."""
    ids = (context.experiment_id, context.parent_run_id)
    same_trial = tagged_child_runs(client, *ids, "trial_id", trial_id)
    seen = {r.info.run_id for r in same_trial}
    same_recipe = [
        r
        for r in tagged_child_runs(client, *ids, "config_hash", config_hash)
        if r.info.status != "RUNNING" and r.info.run_id not in seen
    ]
    return [*same_trial, *same_recipe]


def prune_trial(
    config: dict[str, Any],
    context: TrialContext | None = None,
    baselines: dict[str, Any] | None = None,
    data: Any = None,
) -> None:
    """Ray Tune function trainable. ``context``, ``baselines`` (per model) and ``data`` come
    through the object store (``tune.with_parameters``), so trials on any node share one copy and
    never retrain the dense model. ``config`` is the recipe: flat from OptunaSearch, or under
    ``"recipe"`` in grid mode. See the module docstring for how faults are recorded."""
    import ray
    from mlflow.tracking import MlflowClient
    from ray import tune

    assert context is not None and baselines is not None and data is not None
    load_plugins(context.plugins)  # what they register (methods, metrics) exists here too
    cpus = max(1, int(context.cpus_per_trial))
    torch.set_num_threads(cpus)  # Ray sets OMP_NUM_THREADS too; torch reads it only at import
    use_cuda = context.gpus_per_trial > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    recipe = dict(config.get("recipe", config))
    cfg = experiment_config(context, recipe)
    baseline = baselines[cfg.model.name]
    run_name = recipe_run_name(cfg.model.name, recipe, cfg.train.epochs)
    p = cfg.prune
    last_step = len(sparsity_schedule(p.schedule, p.target_sparsity, p.iterations))
    epochs_per_step, _ = retraining(cfg)
    # early stopping's rungs: prune iterations, or for a one-shot recipe its retraining epochs
    # (its only intermediate points); the last rung is the finished recipe
    last_rung = last_step if last_step > 1 else max(1, epochs_per_step)

    client = MlflowClient(tracking_uri=context.tracking_uri)
    trial_id = tune.get_context().get_trial_id() or ""
    config_hash = cfg.short_hash()
    earlier = earlier_runs(client, context, trial_id, config_hash)
    for old in earlier:
        if old.info.status == "FINISHED":
            first = old.data.tags.get("trial_id", "")
            if first and first != trial_id:
                # the search proposed a recipe this sweep has run already (densities are rounded
                # to 2 significant digits, so two samples can make one recipe): the run is
                # seeded, so its result is this trial's too; the run says which trials reused it
                reused = {t for t in old.data.tags.get(REUSED_BY_TAG, "").split(",") if t}
                reused.add(trial_id)
                client.set_tag(old.info.run_id, REUSED_BY_TAG, ",".join(sorted(reused)))
                print(f"[{run_name}] the same recipe as trial {first}, which finished (run "
                      f"{old.info.run_id}): its result is reused, not run again")  # fmt: skip
            else:
                print(f"[{run_name}] finished before the sweep was interrupted: not run again")
            tune.report(_replay_finished(old, last_step, last_rung))
            return
    attempt = 1 + max((int(r.data.tags.get("attempt", 1)) for r in earlier), default=0)
    tags = {
        "mlflow.parentRunId": context.parent_run_id,
        "sweep": context.sweep_name,
        "trial_id": trial_id,
        "config_hash": config_hash,
        "attempt": str(attempt),
    }
    if earlier:
        tags["replaces"] = ",".join(r.info.run_id for r in earlier)
    run = client.create_run(context.experiment_id, run_name=run_name, tags=tags)
    run_id = run.info.run_id
    for old in earlier:  # one live child run per trial: the new attempt replaces the old ones
        client.delete_run(old.info.run_id)
    try:
        params = trial_params(cfg, device.type)
        runtime = ray.get_runtime_context()
        assigned = runtime.get_assigned_resources()
        params["node_id"] = runtime.get_node_id()  # which Ray node ran the trial
        params["cpus_assigned"] = assigned.get("CPU", 0)
        params["gpus_assigned"] = assigned.get("GPU", 0)
        log_params(client, run_id, params)

        def pending_report(values: dict[str, float], rung: int, epochs_run: float) -> None:
            # sizes, FLOPs and latency are measured once, on the final model: NaN until then
            # (Tune insists that every report holds every objective)
            pending = dict.fromkeys(final_metrics(), float("nan"))
            tune.report({**values, **pending, "epochs_run": epochs_run, "step": rung,
                         "rung": rung, "last_rung": last_rung})  # fmt: skip

        def report(step: int, metrics: dict[str, float]) -> None:
            values = {k: metrics[k] for k in CONTRACT_METRICS}
            epochs_run = float(step * epochs_per_step)
            log_metrics(client, run_id, {**values, "epochs_run": epochs_run}, step=step)
            if step < last_step:  # the last report waits for the measurements (objectives)
                pending_report(values, step, epochs_run)

        def epoch_report(epoch: int, metrics: dict[str, float]) -> None:
            values = {k: metrics[k] for k in CONTRACT_METRICS}
            # kept apart from the per-iteration history (step = prune iteration)
            log_metrics(client, run_id, {"epoch_test_accuracy": values["test_accuracy"],
                                         "epochs_run": float(epoch)}, step=epoch)  # fmt: skip
            pending_report(values, epoch, float(epoch))

        result = run_pruning(
            cfg,
            data.to(device),
            baseline["state"],
            report=report,
            dense_test_accuracy=baseline["test_accuracy"],
            rewind_states=baseline.get("rewind_states"),
            measure=True,
            log=lambda msg: print(f"[{run_name}] {msg}", flush=True),
            epoch_report=epoch_report,
        )
        example = data.normalize(data.x_test[:64].to(device))  # the batch run_pruning measured
        measured = measure_final(result.measurements, result.model, example)
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
        epochs_run = float(last_step * epochs_per_step)
        tune.report({**final, **extra, "epochs_run": epochs_run, "step": last_step,
                     "rung": last_rung, "last_rung": last_rung})  # fmt: skip
    except TrainingDiverged as err:
        # deterministic: retrying would diverge again, so the trial ends here as FAILED in MLflow
        # and as NaN objectives for Tune (Optuna records a trial with NaN values as FAILED)
        client.set_tag(run_id, "failure", "diverged")
        client.set_tag(run_id, "error", error_line(err))
        client.set_terminated(run_id, "FAILED")
        print(f"[{run_name}] {err}", flush=True)
        nan = dict.fromkeys((*CONTRACT_METRICS, *final_metrics()), float("nan"))
        # epochs_run too: the searcher reads it (its cost objective) from every result
        tune.report({**nan, "epochs_run": math.nan, "diverged": 1, "step": err.step, "rung": 0})
    except Exception as err:
        client.set_tag(run_id, "failure", "error")
        client.set_tag(run_id, "error", error_line(err))
        client.set_terminated(run_id, "FAILED")
        raise
    except BaseException:  # stopped from outside (interrupt, worker shutdown): not a fault
        client.set_terminated(run_id, "KILLED")
        raise
