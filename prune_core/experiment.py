"""The prune-and-fine-tune experiment: dense model -> (prune, fine-tune, evaluate, report)* ->
make permanent. Reporting is a callback so the same loop serves a notebook, a test and a Ray trial.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import ExperimentConfig
from .data import TensorData
from .metrics import count_parameters, layer_sparsity, sparsity
from .models import build_model
from .pruning import make_permanent, prunable_targets, prune_step
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
    model = build_model(cfg.model.name, data.in_channels, data.num_classes, data.image_size)
    return model.to(data.device)


def train_dense(
    cfg: ExperimentConfig, data: TensorData, log: Callable[[str], None] | None = None
) -> tuple[nn.Module, float]:
    """Train the dense baseline described by ``cfg`` (data, model, train, seed); returns it and
    its test accuracy."""
    seed_everything(cfg.seed)
    model = model_for(cfg, data)
    t = cfg.train
    train_epochs(
        model, data, t.epochs, t.lr, cfg.data.batch_size, t.optimizer, t.momentum,
        t.weight_decay, seed=cfg.seed, log=log, label="dense",
    )  # fmt: skip
    return model, evaluate(model, data)


@dataclass
class PruneResult:
    """Outcome of one recipe: the permanent pruned model and its metrics."""

    model: nn.Module
    dense_test_accuracy: float
    history: list[dict[str, float]]  # one entry per prune step, step = 1..k
    layer_sparsity: dict[str, float] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, float]:
        """Metrics after the last step."""
        return self.history[-1]


def step_metrics(model: nn.Module, data: TensorData, targets) -> dict[str, float]:
    """test_accuracy, sparsity (over the prunable set), nonzero_params and total_params."""
    total, nonzero = count_parameters(model)
    return {
        "test_accuracy": evaluate(model, data),
        "sparsity": sparsity(targets),
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
) -> PruneResult:
    """Prune a copy of the dense model step by step as ``cfg.prune`` says, fine-tuning after each
    step and calling ``report(step, metrics)``; the masks are made permanent at the end."""
    p = cfg.prune
    seed_everything(cfg.seed)
    model = model_for(cfg, data)
    model.load_state_dict(dense_state)
    if dense_test_accuracy is None:
        dense_test_accuracy = evaluate(model, data)
    targets = prunable_targets(model, p.include_bias, p.exclude_first, p.exclude_last)
    generator = torch.Generator().manual_seed(cfg.seed)
    history = []
    for step, step_sparsity in enumerate(
        sparsity_schedule(p.schedule, p.target_sparsity, p.iterations), 1
    ):
        prune_step(targets, p.method, step_sparsity, generator=generator)
        train_epochs(
            model, data, p.finetune_epochs, p.lr, cfg.data.batch_size, cfg.train.optimizer,
            cfg.train.momentum, cfg.train.weight_decay, seed=cfg.seed + step, log=log,
            label=f"finetune step {step}/{p.iterations}",
        )  # fmt: skip
        metrics = step_metrics(model, data, targets)
        metrics["step_target_sparsity"] = step_sparsity
        history.append(metrics)
        if report is not None:
            report(step, metrics)
    per_layer = layer_sparsity(targets)
    make_permanent(model)
    return PruneResult(model, dense_test_accuracy, history, per_layer)
