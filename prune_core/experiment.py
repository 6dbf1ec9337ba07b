"""The prune-and-fine-tune experiment: dense model -> (prune, retrain, evaluate, report)* ->
make permanent -> measure. Reporting is a callback so the same loop serves a notebook, a test
and a Ray trial.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import cpu_state_dict
from .config import ExperimentConfig
from .data import TensorData
from .methods import get_method
from .metrics import count_parameters, layer_sparsity
from .models import build_model
from .pruning import PruneTarget, left_out, make_permanent, prunable_targets, prune_step
from .schedules import sparsity_schedule
from .train import evaluate, train_epochs

Reporter = Callable[[int, dict[str, float]], None]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) random generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_for(cfg: ExperimentConfig, data: TensorData) -> nn.Module:
    """A fresh model of ``cfg.model.name`` adapted to ``data``, on ``data``'s device."""
    model = build_model(
        cfg.model.name, data.in_channels, data.num_classes, data.image_size, cfg.model.weights
    )
    return model.to(data.device)


def train_dense(
    cfg: ExperimentConfig,
    data: TensorData,
    log: Callable[[str], None] | None = None,
    snapshots: dict[int, dict[str, torch.Tensor]] | None = None,
) -> tuple[nn.Module, float]:
    """Train the dense baseline described by ``cfg`` (data, model, train, seed); returns it and
    its test accuracy. ``snapshots``, if given, receives the CPU weights after each epoch in
    ``cfg.train.rewind_epochs`` (0 = at initialisation), for weight rewinding."""
    seed_everything(cfg.seed)
    model = model_for(cfg, data)
    t = cfg.train
    if snapshots is not None and 0 in t.rewind_epochs:
        snapshots[0] = cpu_state_dict(model)

    def keep(epoch: int) -> None:
        if snapshots is not None and epoch in t.rewind_epochs:
            snapshots[epoch] = cpu_state_dict(model)

    train_epochs(
        model, data, t.epochs, t.lr, cfg.data.batch_size, t.optimizer, t.momentum,
        t.weight_decay, seed=cfg.seed, log=log, label="dense", on_epoch_end=keep, compile=t.compile,
    )  # fmt: skip
    return model, evaluate(model, data)


@dataclass
class PruneResult:
    """Outcome of one recipe: the permanent pruned model and its metrics."""

    model: nn.Module
    dense: dict[str, Any]  # metrics of the dense model (test_accuracy, params, measurements)
    history: list[dict[str, float]]  # one entry per prune step, step = 1..k
    layer_sparsity: dict[str, float] = field(default_factory=dict)
    measurements: dict[str, Any] = field(default_factory=dict)  # of the final model
    permanent_test_accuracy: float = float("nan")  # after prune.remove (equal unless a bug)

    @property
    def final(self) -> dict[str, float]:
        """Metrics after the last step."""
        return self.history[-1]

    @property
    def dense_test_accuracy(self) -> float:
        """Test accuracy of the dense model the recipe started from."""
        return self.dense["test_accuracy"]


def select_targets(
    model: nn.Module,
    cfg: ExperimentConfig,
    example: torch.Tensor | None = None,
    log: Callable[[str], None] | None = None,
) -> list[PruneTarget]:
    """The prunable tensors of ``model`` under ``cfg.prune`` (bias, first/last, layer list).

    With an ``example`` batch the input and output layers (``exclude_first``, ``exclude_last``
    and a method that protects the classifier) are found from the traced graph, so any
    ``nn.Module`` works; without one, by position (right for the registered models). ``log``, if
    given, gets one line when more than normalisation layers is not prunable (e.g. a ViT's
    attention ``in_proj_weight``): how many parameters, which, and which layers the recipe keeps
    dense.
    """
    p = cfg.prune
    # removing a channel needs its bias zero too, so removal prunes biases with their filters
    include_bias = p.include_bias or p.remove_channels
    exclude_last = p.exclude_last or get_method(p.method).protects_classifier
    # the trace needs the graph only, not the statistics: two samples are enough
    trace = example[:2] if example is not None else None
    targets = prunable_targets(model, include_bias, p.exclude_first, exclude_last, trace)
    if p.layers:
        wanted = {name.removesuffix(".weight") for name in p.layers}
        targets = [t for t in targets if t.path.rsplit(".", 1)[0] in wanted]
        found = {t.path.rsplit(".", 1)[0] for t in targets}
        if wanted - found:
            raise ValueError(
                f"prune.layers {sorted(wanted - found)} are not prunable layers of "
                f"{cfg.model.name}; allowed: {', '.join(sorted(found | _layer_names(model)))}"
            )
    if log is not None and left_out(model).notable:
        log(_left_out_line(model, targets))
    return targets


def _left_out_line(model: nn.Module, targets: list[PruneTarget]) -> str:
    """One line: the parameters outside conv/linear layers, and the conv/linear layers that are
    not targets (kept dense by the recipe: first/last, classifier, layer list)."""
    chosen = {t.path.rsplit(".", 1)[0] for t in targets}
    dense = sorted(_layer_names(model) - chosen)
    line = f"prunable set: {len(chosen)} conv/linear layers; " + left_out(model).message()
    if dense:
        line += f"; kept dense by the recipe: {', '.join(dense)}"
    return line


def _layer_names(model: nn.Module) -> set[str]:
    return {t.path.rsplit(".", 1)[0] for t in prunable_targets(model)}


def method_options(
    cfg: ExperimentConfig, model: nn.Module, example: torch.Tensor, targets: list[PruneTarget]
) -> dict:
    """Keyword options of ``cfg.prune.method``'s mask function: what its entry's
    ``mask_kwargs`` makes of the config, else the method's options by name."""
    entry = get_method(cfg.prune.method)
    if entry.mask_kwargs is not None:
        return entry.mask_kwargs(cfg.prune, model, example, targets)
    return cfg.prune.option_values()


def rewind_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a dense ``state`` into a model under pruning: ``w`` goes to ``w_orig`` where a mask
    exists, so the rewound weights reappear under the current mask (zeros stay zero)."""
    own = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for key, value in state.items():
            target = own.get(key + "_orig" if key + "_orig" in own else key)
            if target is None:
                raise KeyError(f"rewind state has {key!r}, which the model does not")
            target.copy_(value.to(target.device))
        for module in model.modules():  # refresh the masked attribute before any forward
            for hook in module._forward_pre_hooks.values():
                name = getattr(hook, "_tensor_name", None)
                if name is not None:
                    setattr(module, name, hook.apply_mask(module))


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, data: TensorData, batch_size: int) -> None:
    """Re-estimate every batch norm's running mean and variance over one pass of the training set.

    Removing channels changes what reaches each batch norm (a removed channel's constant output
    no longer adds in), so the statistics the dense model gathered no longer fit; without this the
    shrunk model evaluates far below what it trains to.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    model.train()
    for x, _ in data.batches("train", batch_size):
        model(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)


def step_metrics(
    model: nn.Module, data: TensorData, targets: list[PruneTarget], prunable_total: int
) -> dict[str, float]:
    """test_accuracy, sparsity, nonzero_params and total_params of ``model``.

    ``sparsity`` is the fraction of the dense model's ``prunable_total`` weights that are zero
    or physically removed, so it stays comparable after channels are removed.
    """
    total, nonzero = count_parameters(model)
    alive = sum(int((t.tensor() != 0).sum()) for t in targets)
    return {
        "test_accuracy": evaluate(model, data),
        "sparsity": 1.0 - alive / prunable_total,
        "nonzero_params": float(nonzero),
        "total_params": float(total),
    }


def run_pruning(
    cfg: ExperimentConfig,
    data: TensorData,
    dense_state: dict[str, Any],
    report: Reporter | None = None,
    log: Callable[[str], None] | None = None,
    dense_test_accuracy: float | None = None,
    rewind_states: dict[int, dict[str, torch.Tensor]] | None = None,
    measure: bool = False,
    epoch_report: Reporter | None = None,
) -> PruneResult:
    """Prune a copy of the dense model step by step as ``cfg.prune`` says, retraining after each
    step and calling ``report(step, metrics)``; the masks are made permanent at the end.

    ``epoch_report(epoch, metrics)``, for a one-shot recipe (one prune step), is called after
    each retraining epoch but the last (which ``report`` covers), with the same metrics: the
    intermediate points of a recipe that prunes once (early stopping's rungs).

    ``rewind_states`` maps dense epochs to weights (needed for ``retrain="weight_rewind"``).
    With ``measure``, sizes, FLOPs and latency of the dense and final models are measured too.
    """
    p = cfg.prune
    seed_everything(cfg.seed)
    model = model_for(cfg, data)
    model.load_state_dict(dense_state)
    example = data.normalize(data.x_test[:64])  # batch for FLOPs, latency, dependency graphs
    dense = _dense_metrics(model, data, example, dense_test_accuracy, measure)
    rewind_state = _rewind_state(p, rewind_states)
    targets = select_targets(model, cfg, example, log)
    prunable_total = sum(x.numel() for x in targets)
    options = method_options(cfg, model, example, targets)
    generator = torch.Generator().manual_seed(cfg.seed)
    schedule = sparsity_schedule(p.schedule, p.target_sparsity, p.iterations)
    last_epoch = p.epochs_per_step(cfg.train.epochs)  # retraining epochs per step
    history = []
    for step, step_sparsity in enumerate(schedule, 1):
        prune_step(targets, p.method, step_sparsity, generator=generator, **options)
        if p.remove_channels and step == len(schedule):
            model, targets = _remove_channels(model, cfg, data, example)
        on_epoch = None
        if epoch_report is not None and len(schedule) == 1:

            def on_epoch(epoch: int, model=model, targets=targets) -> None:
                if epoch < last_epoch:
                    epoch_report(epoch, step_metrics(model, data, targets, prunable_total))

        label = f"retrain step {step}/{len(schedule)}"
        retrain(model, cfg, data, step, rewind_state, label, log, on_epoch)
        metrics = step_metrics(model, data, targets, prunable_total)
        metrics["step_target_sparsity"] = step_sparsity
        history.append(metrics)
        if report is not None:
            report(step, metrics)
    per_layer = layer_sparsity(targets)
    make_permanent(model)
    permanent_accuracy = evaluate(model, data)
    measurements = {}
    if measure:
        from .measure import measure_all

        measurements = measure_all(model, example)
    return PruneResult(model, dense, history, per_layer, measurements, permanent_accuracy)


def _dense_metrics(
    model: nn.Module,
    data: TensorData,
    example: torch.Tensor,
    test_accuracy: float | None,
    measure: bool,
) -> dict[str, Any]:
    """The dense model's test accuracy (evaluated unless given), parameter counts and, with
    ``measure``, its sizes, FLOPs and latency."""
    total, nonzero = count_parameters(model)
    dense = {
        "test_accuracy": evaluate(model, data) if test_accuracy is None else test_accuracy,
        "nonzero_params": float(nonzero),
        "total_params": float(total),
    }
    if measure:
        from .measure import measure_all

        dense.update(measure_all(model, example))
    return dense


def _rewind_state(
    p: Any, rewind_states: dict[int, dict[str, torch.Tensor]] | None
) -> dict[str, torch.Tensor] | None:
    """The dense weights weight rewinding returns to (None for other retraining modes)."""
    if p.retrain != "weight_rewind":
        return None
    if not rewind_states or p.rewind_epoch not in rewind_states:
        raise ValueError(
            f"prune.rewind_epoch={p.rewind_epoch} has no saved weights; "
            f"allowed: {sorted(rewind_states or {})}"
        )
    return rewind_states[p.rewind_epoch]


def _remove_channels(
    model: nn.Module, cfg: ExperimentConfig, data: TensorData, example: torch.Tensor
) -> tuple[nn.Module, list[PruneTarget]]:
    """Remove the zeroed channels physically; the smaller model is fine-tuned as a dense one
    from here on (its batch norms re-estimated, its targets found again)."""
    from .structured import remove_pruned_channels

    make_permanent(model)
    model = remove_pruned_channels(model, example)
    recalibrate_batch_norm(model, data, cfg.data.batch_size)
    return model, select_targets(model, cfg, example)


def retrain(
    model: nn.Module,
    cfg: ExperimentConfig,
    data: TensorData,
    step: int,
    rewind_state: dict[str, torch.Tensor] | None,
    label: str,
    log: Callable[[str], None] | None,
    on_epoch: Callable[[int], None] | None,
) -> None:
    """Retrain after prune step ``step``: fine-tune at ``prune.lr`` for ``finetune_epochs``, or
    (rewinding) replay the dense schedule from ``rewind_epoch`` to its end, from the rewound
    weights when ``rewind_state`` is given."""
    p, t = cfg.prune, cfg.train
    if p.retrain == "finetune":
        train_epochs(
            model, data, p.finetune_epochs, p.lr, cfg.data.batch_size, t.optimizer,
            t.momentum, t.weight_decay, seed=cfg.seed + step, log=log, label=label,
            compile=t.compile, on_epoch_end=on_epoch,
        )  # fmt: skip
        return
    if rewind_state is not None:
        rewind_weights(model, rewind_state)
    train_epochs(
        model, data, t.epochs - p.rewind_epoch, t.lr, cfg.data.batch_size, t.optimizer,
        t.momentum, t.weight_decay, seed=cfg.seed + step, log=log, label=label,
        schedule_epochs=t.epochs, schedule_offset=p.rewind_epoch, compile=t.compile,
        on_epoch_end=on_epoch,
    )  # fmt: skip
