"""prune_core: a plain PyTorch library for pruning experiments (no Ray, Optuna or MLflow).

Typical use from a notebook::

    from prune_core import ExperimentConfig, PruneConfig, load_dataset, train_dense, run_pruning
    prune = PruneConfig(target_sparsity=0.9, schedule="iterative", iterations=3)
    cfg = ExperimentConfig(prune=prune)
    data = load_dataset("digits")
    dense, acc = train_dense(cfg, data)
    result = run_pruning(cfg, data, dense.state_dict())
"""

from . import structured  # noqa: F401  (registers structured methods)
from .baseline import Baseline, load_or_train_baseline
from .checkpoint import load_state, save_state
from .config import DataConfig, ExperimentConfig, ModelConfig, PruneConfig, TrainConfig
from .data import DATASETS, DatasetUnavailable, TensorData, load_dataset
from .experiment import PruneResult, run_pruning, train_dense
from .metrics import count_parameters, layer_sparsity, sparsity
from .models import MODELS, build_model
from .pruning import PRUNING_METHODS, make_permanent, prunable_targets, prune_step
from .schedules import SCHEDULES, sparsity_schedule

__all__ = [
    "Baseline", "DATASETS", "DataConfig", "DatasetUnavailable", "ExperimentConfig", "MODELS",
    "ModelConfig", "PRUNING_METHODS", "PruneConfig", "PruneResult", "SCHEDULES", "TensorData",
    "TrainConfig", "build_model", "count_parameters", "layer_sparsity", "load_dataset",
    "load_or_train_baseline", "load_state", "make_permanent", "prunable_targets", "prune_step",
    "run_pruning", "save_state", "sparsity", "sparsity_schedule", "train_dense",
]  # fmt: skip
