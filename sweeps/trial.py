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
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import torch

from prune_core.checkpoint import save_state
from prune_core.config import DataConfig, ExperimentConfig, ModelConfig, PruneConfig, TrainConfig
from prune_core.experiment import run_pruning
from prune_core.methods import get_method
from prune_core.plugins import load_plugins
from prune_core.schedules import sparsity_schedule
from prune_core.structured import save_pruned_model
from prune_core.train import TrainingDiverged, cosine_lr

from .catalog import extra_metrics, final_metrics, measure_final, step_metrics
from .tracking import log_params, log_records, retire_replaced_run, tagged_child_runs

# Per-step metrics of the MLflow contract, reported to Tune and logged with step = prune iteration.
CONTRACT_METRICS = step_metrics()
# Tag of a FINISHED child run whose result later trials reused (the same recipe proposed again):
# their trial ids, comma-separated.
REUSED_BY_TAG = "reused_by"

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
    epochs starting at the dense schedule's rate at that epoch (``prune_core.train.cosine_lr``).
    """
    p, t = cfg.prune, cfg.train
    epochs = p.epochs_per_step(t.epochs)
    if p.retrain == "finetune":
        return epochs, p.lr
    return epochs, cosine_lr(t.lr, p.rewind_epoch, t.epochs)


def recipe_run_name(model: str, recipe: dict[str, Any], dense_epochs: int | None = None) -> str:
    """Checkpoint/run name in the studies' style, e.g. ``resnet18_prune_75perc_iterative3_5``.

    The number after the schedule is the retraining epochs per step (fine-tune epochs; for
    rewinding, the ``dense_epochs - rewind_epoch`` epochs of the replayed dense schedule); after
    the underscore, iterations. The method's part comes from its registry entry (``prune`` for
    global magnitude, ``l2_structured``, ``nm2of4``, a plugin's name and options); rewinding,
    channel removal and a dense output layer (``_keeplast``) are named too.
    """
    entry = get_method(recipe.get("method", "global_magnitude"))
    schedule = recipe.get("schedule", "oneshot")
    retrain = recipe.get("retrain", "finetune")
    perc = round(100 * float(recipe["target_sparsity"]))
    options = entry.resolve_options({k: recipe[k] for k in entry.option_names() if k in recipe})
    epochs = recipe.get("finetune_epochs", 1)
    if retrain != "finetune" and dense_epochs is not None:
        epochs = dense_epochs - recipe.get("rewind_epoch", 1)
    # a source names its model by its last part (torchvision:resnet50 -> resnet50)
    label = model.rsplit(":", 1)[-1]
    name = f"{label}_{entry.name_part(options)}_{perc}perc_{schedule}{epochs}"
    if schedule != "oneshot":
        name += f"_{recipe.get('iterations', 1)}"
    if retrain != "finetune":
        name += f"_{retrain}{recipe.get('rewind_epoch', 1)}"
    if recipe.get("remove_channels"):
        name += "_removed"
    if recipe.get("exclude_last") and not entry.protects_classifier:
        name += "_keeplast"  # the output layer left dense (a method that always does says so)
    return name


def experiment_config(context: TrialContext, recipe: dict[str, Any]) -> ExperimentConfig:
    """The prune_core config of one trial: the sweep's data/model/training plus the recipe."""
    return ExperimentConfig(
        data=context.data,
        model=ModelConfig(name=recipe.get("model", context.model)),
        train=context.train,
        prune=PruneConfig.from_recipe(recipe),
        seed=int(context.seed),
    )


def trial_params(cfg: ExperimentConfig, device: str) -> dict[str, Any]:
    """The child run's params: the recipe as it ran (retraining epochs and rate as used), plus
    options only where they mean something, so the UI's parallel coordinates stay readable: the
    method's own (as its registry entry logs them), rewinding's epoch, channel removal for a
    method that can remove channels."""
    p = cfg.prune
    entry = get_method(p.method)
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
    params.update(entry.logged_params(p.option_values()))
    if entry.can_remove_channels:
        params["remove_channels"] = p.remove_channels
    if p.include_bias:
        params["include_bias"] = True
    if p.exclude_last and not entry.protects_classifier:
        params["exclude_last"] = True
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


@dataclass(frozen=True)
class TrialPlan:
    """What one trial runs, known before it runs: the config, its dense baseline, its run name,
    the device, and its rungs (early stopping's: prune iterations, or for a one-shot recipe its
    retraining epochs, its only intermediate points; the last rung is the finished recipe)."""

    cfg: ExperimentConfig
    baseline: dict[str, Any]
    run_name: str
    device: torch.device
    last_step: int  # prune steps
    epochs_per_step: int
    last_rung: int

    @classmethod
    def create(
        cls, config: dict[str, Any], context: TrialContext, baselines: dict[str, Any]
    ) -> TrialPlan:
        """The plan of Tune's ``config`` (flat from OptunaSearch, or under ``"recipe"`` in grid
        mode) in this sweep, on a GPU when the trial was given a share of one."""
        use_cuda = context.gpus_per_trial > 0 and torch.cuda.is_available()
        recipe = dict(config.get("recipe", config))
        cfg = experiment_config(context, recipe)
        p = cfg.prune
        last_step = len(sparsity_schedule(p.schedule, p.target_sparsity, p.iterations))
        epochs_per_step, _ = retraining(cfg)
        return cls(
            cfg=cfg,
            baseline=baselines[cfg.model.name],
            run_name=recipe_run_name(cfg.model.name, recipe, cfg.train.epochs),
            device=torch.device("cuda" if use_cuda else "cpu"),
            last_step=last_step,
            epochs_per_step=epochs_per_step,
            last_rung=last_step if last_step > 1 else max(1, epochs_per_step),
        )

    def say(self, msg: str) -> None:
        """A progress line prefixed with the run name (the trial's log)."""
        print(f"[{self.run_name}] {msg}", flush=True)


class QuietWorkerExit:
    """``sys.unraisablehook`` of a trial's worker process: a ``SystemExit`` that Python could not
    raise is dropped without a word; anything else goes to the hook it replaced. Ray's SIGTERM
    handler raises ``SystemExit`` wherever the worker is when Ray stops it (an actor no trial
    needs any more, the sweep's end); inside a finalizer (a ``WeakSet`` callback) Python cannot
    raise it and printed "Exception ignored" with a traceback, which Ray forwarded to the
    sweep's output as if a trial had failed. The worker is leaving either way."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(self, unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, SystemExit):
            return
        self.previous(unraisable)

    @classmethod
    def install(cls) -> None:
        """Make it this process's hook (once)."""
        if not isinstance(sys.unraisablehook, cls):
            sys.unraisablehook = cls(sys.unraisablehook)


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
    from mlflow.tracking import MlflowClient
    from ray import tune

    assert context is not None and baselines is not None and data is not None
    QuietWorkerExit.install()  # this runs in the trial's worker process
    load_plugins(context.plugins)  # what they register (methods, metrics) exists here too
    # Ray sets OMP_NUM_THREADS too, but torch reads it only at import
    torch.set_num_threads(max(1, int(context.cpus_per_trial)))
    plan = TrialPlan.create(config, context, baselines)
    client = MlflowClient(tracking_uri=context.tracking_uri)
    trial_id = tune.get_context().get_trial_id() or ""
    earlier = earlier_runs(client, context, trial_id, plan.cfg.short_hash())
    if reuse_finished(client, plan, earlier, trial_id):
        return
    run_id = start_child_run(client, context, plan, trial_id, earlier)
    try:
        run_recipe(client, run_id, plan, data)
    except TrainingDiverged as err:
        record_divergence(client, run_id, plan, err)
    except Exception as err:
        client.set_tag(run_id, "failure", "error")
        client.set_tag(run_id, "error", error_line(err))
        client.set_terminated(run_id, "FAILED")
        raise
    except BaseException:  # stopped from outside (interrupt, worker shutdown): not a fault
        client.set_terminated(run_id, "KILLED")
        raise


def reuse_finished(client: Any, plan: TrialPlan, earlier: list[Any], trial_id: str) -> bool:
    """Report the result of a FINISHED run among ``earlier`` to Tune instead of running the
    recipe again (see the module docstring); True if there was one."""
    from ray import tune

    for old in earlier:
        if old.info.status != "FINISHED":
            continue
        first = old.data.tags.get("trial_id", "")
        if first and first != trial_id:
            # the search proposed a recipe this sweep has run already (densities are rounded
            # to 2 significant digits, so two samples can make one recipe): the run is
            # seeded, so its result is this trial's too; the run says which trials reused it
            reused = {t for t in old.data.tags.get(REUSED_BY_TAG, "").split(",") if t}
            reused.add(trial_id)
            client.set_tag(old.info.run_id, REUSED_BY_TAG, ",".join(sorted(reused)))
            plan.say(f"the same recipe as trial {first}, which finished (run "
                     f"{old.info.run_id}): its result is reused, not run again")  # fmt: skip
        else:
            plan.say("finished before the sweep was interrupted: not run again")
        tune.report(_replay_finished(old, plan.last_step, plan.last_rung))
        return True
    return False


def start_child_run(
    client: Any, context: TrialContext, plan: TrialPlan, trial_id: str, earlier: list[Any]
) -> str:
    """Create the trial's child run (attempt number, the runs it replaces) and delete the runs
    it replaces; returns its id."""
    attempt = 1 + max((int(r.data.tags.get("attempt", 1)) for r in earlier), default=0)
    tags = {
        "mlflow.parentRunId": context.parent_run_id,
        "sweep": context.sweep_name,
        "trial_id": trial_id,
        "config_hash": plan.cfg.short_hash(),
        "attempt": str(attempt),
    }
    if earlier:
        tags["replaces"] = ",".join(r.info.run_id for r in earlier)
    run_id = client.create_run(context.experiment_id, run_name=plan.run_name, tags=tags).info.run_id
    for old in earlier:  # one live child run per trial: the new attempt replaces the old ones
        retire_replaced_run(client, old.info.run_id, run_id)
    return run_id


def log_trial_params(client: Any, run_id: str, plan: TrialPlan) -> None:
    """The child run's params: the recipe (``trial_params``) and where Ray ran it."""
    import ray

    params = trial_params(plan.cfg, plan.device.type)
    runtime = ray.get_runtime_context()
    assigned = runtime.get_assigned_resources()
    params["node_id"] = runtime.get_node_id()  # which Ray node ran the trial
    params["cpus_assigned"] = assigned.get("CPU", 0)
    params["gpus_assigned"] = assigned.get("GPU", 0)
    log_params(client, run_id, params)


class TrialReporter:
    """Logs a running trial's points to its child run and reports them to Tune.

    Two step axes, so that in MLflow (whose latest value is the one at the highest step) every
    metric's latest value is its final one:

    * the per-iteration contract metrics (``CONTRACT_METRICS``): one point per prune step
      (``step``), MLflow step = prune iteration;
    * ``epochs_run`` and ``epoch_test_accuracy``: MLflow step = the retraining epochs run so far
      (cumulative over the prune steps), value = that count and the test accuracy then. A
      one-shot recipe has a point after every retraining epoch (``epoch`` for all but the last,
      ``step`` for the last: history 1, 2, ..., N); an iterative one after every prune step,
      where it is measured (k x epochs per step). A step axis of its own, because logging the
      final count at step = prune iteration (1 for a one-shot recipe) left it below the
      per-epoch points, and MLflow reported the count of the last epoch but one.

    Tune gets one report per rung: per prune step, and for a one-shot recipe per retraining
    epoch but the last (the last report waits for the final measurements, ``run_recipe``).
    """

    def __init__(self, client: Any, run_id: str, plan: TrialPlan):
        self.client, self.run_id, self.plan = client, run_id, plan

    def _pending(self, values: dict[str, float], rung: int, epochs_run: float) -> None:
        from ray import tune

        # sizes, FLOPs and latency are measured once, on the final model: NaN until then
        # (Tune insists that every report holds every objective)
        pending = dict.fromkeys(final_metrics(), float("nan"))
        tune.report({**values, **pending, "epochs_run": epochs_run, "step": rung, "rung": rung,
                     "last_rung": self.plan.last_rung})  # fmt: skip

    @staticmethod
    def _epoch_point(epochs_run: int, test_accuracy: float) -> dict[str, float]:
        """One point of the epoch axis (logged at step = ``epochs_run``, the retraining epochs
        run so far): ``epochs_run`` and ``epoch_test_accuracy``."""
        return {"epochs_run": float(epochs_run), "epoch_test_accuracy": test_accuracy}

    def step(self, step: int, metrics: dict[str, float]) -> None:
        """After prune step ``step``: log it (contract metrics at step = iteration, the epoch
        axis at step = epochs so far); report it unless it is the last (that report waits for
        the final measurements, which are objectives too)."""
        values = {k: metrics[k] for k in CONTRACT_METRICS}
        epochs_run = step * self.plan.epochs_per_step
        # both axes in one batch; where their steps coincide (a one-epoch recipe's step 2 is
        # also 2 epochs run) the names differ, so the two points share that step's entry
        points: dict[int, dict[str, float]] = {step: dict(values)}
        # without retraining every step has 0 epochs: one point (the final one), not several
        # at step 0 where MLflow's latest would be decided by timestamp
        if self.plan.epochs_per_step > 0 or step == self.plan.last_step:
            point = self._epoch_point(epochs_run, values["test_accuracy"])
            points.setdefault(epochs_run, {}).update(point)
        log_records(self.client, self.run_id, points)
        if step < self.plan.last_step:
            self._pending(values, step, float(epochs_run))

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """After retraining epoch ``epoch`` of a one-shot recipe (not the last, which ``step``
        logs): a point of the epoch axis and a rung for Tune."""
        values = {k: metrics[k] for k in CONTRACT_METRICS}
        log_records(self.client, self.run_id,
                    {epoch: self._epoch_point(epoch, values["test_accuracy"])})  # fmt: skip
        self._pending(values, epoch, float(epoch))


def run_recipe(client: Any, run_id: str, plan: TrialPlan, data: Any) -> None:
    """Log the params, prune and retrain as the plan says, then log the final measurements and
    artifacts, end the child run FINISHED and report the final result to Tune."""
    from ray import tune

    log_trial_params(client, run_id, plan)
    reporter = TrialReporter(client, run_id, plan)
    result = run_pruning(
        plan.cfg,
        data.to(plan.device),
        plan.baseline["state"],
        report=reporter.step,
        dense_test_accuracy=plan.baseline["test_accuracy"],
        rewind_states=plan.baseline.get("rewind_states"),
        measure=True,
        log=plan.say,
        epoch_report=reporter.epoch,
    )
    example = data.normalize(data.x_test[:64].to(plan.device))  # the batch run_pruning measured
    measured = measure_final(result.measurements, result.model, example)
    extra = {**measured, "permanent_test_accuracy": result.permanent_test_accuracy}
    extra["accuracy_change"] = result.final["test_accuracy"] - result.dense_test_accuracy
    latency_params = ("latency_batch_size", "latency_device", "latency_threads")
    # the final measurements and how latency was timed: one batch
    log_records(client, run_id, {plan.last_step: extra},
                params={k: result.measurements[k] for k in latency_params})  # fmt: skip
    log_artifacts(client, run_id, plan, result, data)
    client.set_terminated(run_id, "FINISHED")
    final = {k: result.final[k] for k in CONTRACT_METRICS}
    tune.report({**final, **extra, "epochs_run": float(plan.last_step * plan.epochs_per_step),
                 "step": plan.last_step, "rung": plan.last_rung,
                 "last_rung": plan.last_rung})  # fmt: skip


def log_artifacts(client: Any, run_id: str, plan: TrialPlan, result: Any, data: Any) -> None:
    """The permanent pruned checkpoint (a shrunk model as plain data when channels were removed)
    and the per-layer sparsity, as artifacts of the child run: ``checkpoints/<run name>.pt`` and
    ``layer_sparsity.json``, laid out in a folder and uploaded in one call (each call looks the
    run's artifact location up again)."""
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "checkpoints"))
        ckpt = os.path.join(tmp, "checkpoints", f"{plan.run_name}.pt")
        if plan.cfg.prune.remove_channels:
            save_pruned_model(result.model, ckpt, plan.cfg.model.name, data.in_channels,
                              data.num_classes, data.image_size)  # fmt: skip
        else:
            save_state({k: v.cpu() for k, v in result.model.state_dict().items()}, ckpt)
        with open(os.path.join(tmp, "layer_sparsity.json"), "w") as fh:
            json.dump(result.layer_sparsity, fh, indent=1)
        client.log_artifacts(run_id, tmp)


def record_divergence(client: Any, run_id: str, plan: TrialPlan, err: TrainingDiverged) -> None:
    """A loss that went NaN or infinite is deterministic (retrying would diverge again): the
    child run ends FAILED with ``failure=diverged``, and Tune gets NaN objectives (Optuna records
    a trial with NaN values as FAILED)."""
    from ray import tune

    client.set_tag(run_id, "failure", "diverged")
    client.set_tag(run_id, "error", error_line(err))
    client.set_terminated(run_id, "FAILED")
    plan.say(str(err))
    nan = dict.fromkeys((*CONTRACT_METRICS, *final_metrics()), float("nan"))
    # epochs_run too: the searcher reads it (its cost objective) from every result
    tune.report({**nan, "epochs_run": math.nan, "diverged": 1, "step": err.step, "rung": 0})
