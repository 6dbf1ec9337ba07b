"""Frozen, validated experiment configs with a stable short hash for run names and caches.

Every field has a default; ``ExperimentConfig.short_hash()`` hashes only the fields that differ from
those defaults (as open_lth does), so adding a new field with a default keeps old hashes valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def _check(cond: bool, field_name: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ValueError(f"{field_name}={value!r} is invalid; allowed: {allowed}")


RETRAIN_MODES = ("finetune", "weight_rewind", "lr_rewind")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to load and how to batch it."""

    dataset: str = "digits"
    root: str = "data"  # folder torchvision datasets are read from / downloaded into
    download: bool = True
    batch_size: int = 128
    image_size: int = 0  # image sources (imagefolder:DIR ...): resize to this square (0: as is)
    # per-channel (mean, std) replacing the training split's (a checkpoint's statistics)
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def __post_init__(self):
        _check(self.batch_size >= 1, "data.batch_size", self.batch_size, "an integer >= 1")
        _check(self.image_size >= 0, "data.image_size", self.image_size, "an integer >= 1")
        if self.normalize is not None:  # JSON and callers give lists: keep it hashable
            object.__setattr__(self, "normalize", tuple(tuple(v) for v in self.normalize))


@dataclass(frozen=True)
class ModelConfig:
    """Which architecture to build: a registered name or a source (``torchvision:NAME``,
    ``package.module:function``; ``weights`` goes to torchvision)."""

    name: str = "resnet18"
    weights: str = ""


@dataclass(frozen=True)
class TrainConfig:
    """How the dense baseline is trained."""

    epochs: int = 10
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # dense epochs after which the weights are kept for weight rewinding (0 = initialisation)
    rewind_epochs: tuple[int, ...] = ()
    # torch.compile the training forward (CUDA graphs on CUDA); falls back to eager on failure
    compile: bool = False
    # "sha256:<hex>" of a checkpoint that IS the dense baseline (evaluated, not trained): the
    # content names the baseline, wherever the file lies
    init_checkpoint: str = ""

    def __post_init__(self):
        _check(self.epochs >= 0, "train.epochs", self.epochs, "an integer >= 0")
        object.__setattr__(self, "rewind_epochs", tuple(sorted(set(self.rewind_epochs))))
        _check(
            all(0 <= e <= self.epochs for e in self.rewind_epochs),
            "train.rewind_epochs",
            self.rewind_epochs,
            f"epochs between 0 and train.epochs={self.epochs}",
        )
        _check(0 < self.lr < math.inf, "train.lr", self.lr, "a finite float > 0")
        _check(self.optimizer in ("sgd", "adam"), "train.optimizer", self.optimizer, "sgd, adam")
        _check(0 <= self.momentum < 1, "train.momentum", self.momentum, "0 <= momentum < 1")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "a float >= 0")


@dataclass(frozen=True, init=False)
class PruneConfig:
    """The pruning recipe: method, target, schedule and fine-tuning after each prune step.

    A method's own options (``norm`` and ``scope`` of ln_structured, ``nm_n``/``nm_m`` of nm, a
    plugin method's) are given as keywords like the fields (``PruneConfig(method="nm",
    nm_n=1, nm_m=4, ...)``) and held, every option of the method resolved, in ``options``; they
    read as attributes too (``config.nm_n``). Their defaults, checks and meaning live in the
    method's registry entry (``prune_core.methods``).
    """

    method: str = "global_magnitude"
    target_sparsity: float = 0.5  # fraction of prunable weights that are zero at the end
    schedule: str = "oneshot"
    iterations: int = 1  # prune steps; 1 means one-shot
    finetune_epochs: int = 1  # fine-tune epochs after each prune step
    lr: float = 0.01  # fine-tuning learning rate
    include_bias: bool = False
    exclude_first: bool = False
    exclude_last: bool = False
    layers: tuple[str, ...] = ()  # module paths to prune (empty: every conv and linear layer)
    # retraining after each step: plain fine-tuning at ``lr`` for ``finetune_epochs``, or
    # replaying the dense schedule from ``rewind_epoch`` (train.epochs - rewind_epoch epochs),
    # from the rewound weights (weight_rewind, lottery ticket) or the current ones (lr_rewind)
    retrain: str = "finetune"
    rewind_epoch: int = 1
    remove_channels: bool = False  # remove zeroed channels physically at the end
    # the method's options as (name, value) pairs in the entry's order, defaults filled in
    options: tuple[tuple[str, Any], ...] = ()

    def __init__(self, options: Any = (), **values: Any):
        names = {f.name for f in dataclasses.fields(self)} - {"options"}
        given = dict(options)
        for key in list(values):
            if key not in names:
                given[key] = values.pop(key)  # a method option, flat as recipes write it
        for f in dataclasses.fields(self):
            if f.name != "options":
                object.__setattr__(self, f.name, values.get(f.name, f.default))
        object.__setattr__(self, "options", tuple(given.items()))
        self.__post_init__()

    def __getattr__(self, name: str) -> Any:
        if name != "options":  # reached only when no field has the name
            for key, value in self.options:
                if key == name:
                    return value
        raise AttributeError(f"PruneConfig has no field or option {name!r} (method {self.method})")

    def __post_init__(self):
        from .methods import get_method
        from .schedules import SCHEDULES

        object.__setattr__(self, "layers", tuple(self.layers))
        try:
            entry = get_method(self.method)
        except KeyError:
            entry = None
        _check(entry is not None, "prune.method", self.method, ", ".join(_method_names()))
        options = entry.resolve_options(dict(self.options))
        object.__setattr__(self, "options", tuple(options.items()))
        _check(self.schedule in SCHEDULES, "prune.schedule", self.schedule,
               ", ".join(SCHEDULES.names()))  # fmt: skip
        _check(
            self.retrain in RETRAIN_MODES, "prune.retrain", self.retrain, ", ".join(RETRAIN_MODES)
        )
        _check(self.rewind_epoch >= 0, "prune.rewind_epoch", self.rewind_epoch, "an integer >= 0")
        if entry.validate is not None:
            entry.validate(self)
        _check(
            not self.remove_channels or entry.can_remove_channels,
            "prune.remove_channels",
            self.remove_channels,
            f"True only with a method that can remove channels ({', '.join(_removers())})",
        )
        _check(
            not (self.remove_channels and self.retrain == "weight_rewind"),
            "prune.retrain",
            self.retrain,
            "finetune or lr_rewind with remove_channels (rewound weights no longer fit)",
        )
        self._check_budget()

    def _check_budget(self) -> None:
        """Target, steps, epochs and learning rate in range."""
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
        _check(0 < self.lr < math.inf, "prune.lr", self.lr, "a finite float > 0")
        if self.schedule == "oneshot":
            _check(self.iterations == 1, "prune.iterations", self.iterations, "1 for oneshot")

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any]) -> PruneConfig:
        """The config of a recipe (a flat dict from a search space or a grid): its fields and the
        options of its method; other keys (``model``, what only a sampler sees) are ignored and
        missing ones take their defaults."""
        from .methods import get_method

        fields = {f.name for f in dataclasses.fields(cls)} - {"options"}
        method = recipe.get("method", cls.method)
        try:
            own = get_method(method).option_names()
        except KeyError:
            own = ()  # the constructor names the unknown method
        return cls(**{k: v for k, v in recipe.items() if k in fields or k in own})

    def option_values(self) -> dict[str, Any]:
        """The method's options, every one (defaults filled in)."""
        return dict(self.options)

    def to_dict(self) -> dict[str, Any]:
        """Flat plain dict: the fields and the method's options side by side (as a recipe)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update(out.pop("options"))
        return out

    def epochs_per_step(self, dense_epochs: int) -> int:
        """Retraining epochs after each prune step: ``finetune_epochs``, or with rewinding the
        rest of the dense schedule from ``rewind_epoch`` (``dense_epochs - rewind_epoch``)."""
        if self.retrain == "finetune":
            return self.finetune_epochs
        return dense_epochs - self.rewind_epoch


def _method_names() -> list[str]:
    from .methods import PRUNING_METHODS

    return PRUNING_METHODS.names()


def _removers() -> list[str]:
    from .methods import PRUNING_METHODS

    return [n for n in PRUNING_METHODS.names() if PRUNING_METHODS.get(n).can_remove_channels]


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one prune-and-fine-tune run needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    seed: int = 0

    def __post_init__(self):
        p = self.prune
        if p.retrain != "finetune":
            _check(
                p.rewind_epoch < self.train.epochs,
                "prune.rewind_epoch",
                p.rewind_epoch,
                f"an epoch below train.epochs={self.train.epochs} when rewinding",
            )
        if p.retrain == "weight_rewind":
            _check(
                p.rewind_epoch in self.train.rewind_epochs,
                "prune.rewind_epoch",
                p.rewind_epoch,
                f"one of train.rewind_epochs={self.train.rewind_epochs} (kept by the baseline)",
            )

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (JSON-serialisable); the method's options sit flat in ``prune``."""
        out = dataclasses.asdict(self)
        out["prune"] = self.prune.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        """Inverse of ``to_dict``; missing sections and fields take their defaults."""
        return cls(
            data=DataConfig(**_tuples(d.get("data", {}))),
            model=ModelConfig(**d.get("model", {})),
            train=TrainConfig(**_tuples(d.get("train", {}))),
            prune=PruneConfig(**_tuples(d.get("prune", {}))),
            seed=d.get("seed", 0),
        )

    def baseline_key(self) -> dict[str, Any]:
        """The non-default fields that determine the dense baseline (all but the recipe).

        ``data.download`` and ``data.root`` say where the data comes from, not what it is, so they
        are left out: the same baseline is found whichever folder held the files. So is
        ``train.compile``, which changes how fast the model trains, not what it learns.
        """
        key = non_default_fields(
            ExperimentConfig(
                data=dataclasses.replace(
                    self.data, root=DataConfig.root, download=DataConfig.download
                ),
                model=self.model,
                train=dataclasses.replace(self.train, compile=TrainConfig.compile),
                seed=self.seed,
            )
        )
        # the dataset and model always name the baseline, even at their defaults
        key.setdefault("data", {})["dataset"] = self.data.dataset
        key.setdefault("model", {})["name"] = self.model.name
        return key

    def baseline_hash(self) -> str:
        """Short stable hash of ``baseline_key`` (names the dense-baseline cache file)."""
        return stable_hash(self.baseline_key())

    def short_hash(self) -> str:
        """Short stable hash of the non-default fields of the whole config."""
        return stable_hash(non_default_fields(self))


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    """JSON turns tuples into lists; turn them back so configs compare equal after a round trip."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def non_default_fields(obj: Any) -> dict[str, Any]:
    """Nested dict of only those dataclass fields that differ from their defaults. A pruning
    method's options count as fields (flat, as they were before they moved into the method's
    entry) where they differ from the entry's defaults, so hashes stay what they were."""
    out: dict[str, Any] = {}
    default = type(obj)()
    if isinstance(obj, PruneConfig):
        from .methods import get_method

        option_defaults = get_method(obj.method).defaults()
        out.update({k: v for k, v in obj.options if v != option_defaults.get(k)})
    for f in dataclasses.fields(obj):
        if f.name == "options" and isinstance(obj, PruneConfig):
            continue
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
