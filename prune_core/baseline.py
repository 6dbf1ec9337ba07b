"""Dense baselines cached on disk by the hash of (data, model, training config, seed)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .checkpoint import cpu_state_dict, load_state, save_state
from .config import ExperimentConfig
from .data import TensorData
from .experiment import train_dense


@dataclass
class Baseline:
    """A trained dense model's weights (on the CPU) and its test accuracy."""

    state: dict[str, Any]
    test_accuracy: float
    key: str  # ExperimentConfig.baseline_hash()
    path: str | None  # cache file, if cached
    reused: bool  # True when read from the cache instead of trained
    rewind_states: dict[int, dict[str, Any]] = field(default_factory=dict)  # epoch -> weights


def baseline_path(cache_dir: str, cfg: ExperimentConfig) -> str:
    """Cache file of the baseline of ``cfg``: ``<cache_dir>/<dataset>-<model>-<hash>.pt``."""
    return os.path.join(cache_dir, f"{cfg.data.dataset}-{cfg.model.name}-{cfg.baseline_hash()}.pt")


def load_or_train_baseline(
    cfg: ExperimentConfig,
    data: TensorData,
    cache_dir: str | None,
    log: Callable[[str], None] | None = None,
) -> Baseline:
    """Read the baseline of ``cfg`` from ``cache_dir``, or train it and write it there."""
    key = cfg.baseline_hash()
    path = baseline_path(cache_dir, cfg) if cache_dir else None
    if path and os.path.exists(path):
        blob = load_state(path)
        rewind = {int(k): v for k, v in blob.get("rewind_states", {}).items()}
        return Baseline(blob["state"], float(blob["test_accuracy"]), key, path, True, rewind)
    rewind: dict[int, dict[str, Any]] = {}
    model, acc = train_dense(cfg, data, log=log, snapshots=rewind)
    state = cpu_state_dict(model)
    if path:
        blob = {"state": state, "test_accuracy": acc, "key": cfg.baseline_key()}
        blob["rewind_states"] = {str(k): v for k, v in rewind.items()}
        save_state(blob, path)
    return Baseline(state, acc, key, path, False, rewind)
