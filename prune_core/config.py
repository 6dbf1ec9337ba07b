"""Frozen, validated experiment configs with a stable short hash for run names and caches.

Every field has a default; ``ExperimentConfig.short_hash()`` hashes only the fields that differ from
those defaults (as open_lth does), so adding a new field with a default keeps old hashes valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


def _check(cond: bool, field_name: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ValueError(f"{field_name}={value!r} is invalid; allowed: {allowed}")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to load and how to batch it."""

    dataset: str = "digits"
    root: str = "data"  # folder torchvision datasets are read from / downloaded into
    download: bool = True
    batch_size: int = 128

    def __post_init__(self):
        _check(self.batch_size >= 1, "data.batch_size", self.batch_size, "an integer >= 1")


@dataclass(frozen=True)
class ModelConfig:
    """Which architecture to build (from the model registry)."""

    name: str = "resnet18"


@dataclass(frozen=True)
class TrainConfig:
    """How the dense baseline is trained."""

    epochs: int = 10
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def __post_init__(self):
        _check(self.epochs >= 0, "train.epochs", self.epochs, "an integer >= 0")
        _check(self.lr > 0, "train.lr", self.lr, "a float > 0")
        _check(self.optimizer in ("sgd", "adam"), "train.optimizer", self.optimizer, "sgd, adam")
        _check(0 <= self.momentum < 1, "train.momentum", self.momentum, "0 <= momentum < 1")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "a float >= 0")


@dataclass(frozen=True)
class PruneConfig:
    """The pruning recipe: method, target, schedule and fine-tuning after each prune step."""

    method: str = "global_magnitude"
    target_sparsity: float = 0.5  # fraction of prunable weights that are zero at the end
    schedule: str = "oneshot"
    iterations: int = 1  # prune steps; 1 means one-shot
    finetune_epochs: int = 1  # fine-tune epochs after each prune step
    lr: float = 0.01  # fine-tuning learning rate
    include_bias: bool = False
    exclude_first: bool = False
    exclude_last: bool = False

    def __post_init__(self):
        _check(
            0.0 <= self.target_sparsity < 1.0,
            "prune.target_sparsity",
            self.target_sparsity,
            "a fraction 0 <= s < 1",
        )
        _check(self.iterations >= 1, "prune.iterations", self.iterations, "an integer >= 1")
        _check(
            self.finetune_epochs >= 0,
            "prune.finetune_epochs",
            self.finetune_epochs,
            "an integer >= 0",
        )
        _check(self.lr > 0, "prune.lr", self.lr, "a float > 0")
        if self.schedule == "oneshot":
            _check(self.iterations == 1, "prune.iterations", self.iterations, "1 for oneshot")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one prune-and-fine-tune run needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        """Inverse of ``to_dict``; missing sections and fields take their defaults."""
        return cls(
            data=DataConfig(**d.get("data", {})),
            model=ModelConfig(**d.get("model", {})),
            train=TrainConfig(**d.get("train", {})),
            prune=PruneConfig(**d.get("prune", {})),
            seed=d.get("seed", 0),
        )

    def baseline_key(self) -> dict[str, Any]:
        """The fields that determine the dense baseline (everything except the pruning recipe).

        ``data.download`` and ``data.root`` say where the data comes from, not what it is, so they
        are left out: the same baseline is found whichever folder held the files.
        """
        data = {
            k: v for k, v in dataclasses.asdict(self.data).items() if k not in ("root", "download")
        }
        return {
            "data": data,
            "model": dataclasses.asdict(self.model),
            "train": dataclasses.asdict(self.train),
            "seed": self.seed,
        }

    def baseline_hash(self) -> str:
        """Short stable hash of ``baseline_key`` (names the dense-baseline cache file)."""
        return stable_hash(self.baseline_key())

    def short_hash(self) -> str:
        """Short stable hash of the non-default fields of the whole config."""
        return stable_hash(non_default_fields(self))


def non_default_fields(obj: Any) -> dict[str, Any]:
    """Nested dict of only those dataclass fields that differ from their defaults."""
    out: dict[str, Any] = {}
    default = type(obj)()
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            sub = non_default_fields(value)
            if sub:
                out[f.name] = sub
        elif value != getattr(default, f.name):
            out[f.name] = value
    return out


def stable_hash(obj: Any, length: int = 10) -> str:
    """Hex digest of the canonical JSON of ``obj`` (sorted keys), cut to ``length`` characters."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
