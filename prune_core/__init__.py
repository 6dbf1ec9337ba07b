"""prune_core: a plain PyTorch library for pruning experiments (no Ray, Optuna or MLflow).

Typical use from a notebook::

    from prune_core import ExperimentConfig, PruneConfig, load_dataset, train_dense, run_pruning
    prune = PruneConfig(target_sparsity=0.9, schedule="iterative", iterations=3)
    cfg = ExperimentConfig(prune=prune)
    data = load_dataset("digits")
    dense, acc = train_dense(cfg, data)
    result = run_pruning(cfg, data, dense.state_dict())

The names below are loaded on first use (PEP 562), so importing the package, or one of its
torch-free modules (``cliutils``, ``registry``, ``plugins``, ``methods``, ``config``), does not
import torch: command lines check their flags and fail fast without paying 2-3 s for it, and
``python -m sweeps.server`` never loads it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# exported name -> the submodule that defines it
_EXPORTS = {
    "Baseline": "baseline", "load_or_train_baseline": "baseline",
    "load_state": "checkpoint", "save_state": "checkpoint",
    "DataConfig": "config", "ExperimentConfig": "config", "ModelConfig": "config",
    "PruneConfig": "config", "TrainConfig": "config",
    "DATASETS": "data", "DatasetUnavailable": "data", "TensorData": "data",
    "load_dataset": "data",
    "PruneResult": "experiment", "run_pruning": "experiment", "train_dense": "experiment",
    "count_parameters": "metrics", "layer_sparsity": "metrics", "sparsity": "metrics",
    "MODELS": "models", "build_model": "models",
    # PRUNING_METHODS lives in methods; pruning re-exports it once every built-in method
    # (structured ones included) is registered
    "PRUNING_METHODS": "pruning", "make_permanent": "pruning", "prunable_targets": "pruning",
    "prune_step": "pruning",
    "SCHEDULES": "schedules", "sparsity_schedule": "schedules",
}  # fmt: skip

__all__ = [
    "Baseline", "DATASETS", "DataConfig", "DatasetUnavailable", "ExperimentConfig", "MODELS",
    "ModelConfig", "PRUNING_METHODS", "PruneConfig", "PruneResult", "SCHEDULES", "TensorData",
    "TrainConfig", "build_model", "count_parameters", "layer_sparsity", "load_dataset",
    "load_or_train_baseline", "load_state", "make_permanent", "prunable_targets", "prune_step",
    "run_pruning", "save_state", "sparsity", "sparsity_schedule", "train_dense",
]  # fmt: skip

if TYPE_CHECKING:  # what type checkers and IDEs see; nothing runs at import time
    from .baseline import Baseline, load_or_train_baseline
    from .checkpoint import load_state, save_state
    from .config import DataConfig, ExperimentConfig, ModelConfig, PruneConfig, TrainConfig
    from .data import DATASETS, DatasetUnavailable, TensorData, load_dataset
    from .experiment import PruneResult, run_pruning, train_dense
    from .metrics import count_parameters, layer_sparsity, sparsity
    from .models import MODELS, build_model
    from .pruning import PRUNING_METHODS, make_permanent, prunable_targets, prune_step
    from .schedules import SCHEDULES, sparsity_schedule


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first access and cache the value here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    """The module's own names plus every lazily exported one."""
    return sorted({*globals(), *__all__})
