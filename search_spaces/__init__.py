"""Optuna define-by-run search spaces over pruning recipes, one function per sweep family, and the
fixed grids of the five seed protocols (``GRIDS``, see ``search_spaces.grids``).

A space function takes an ``optuna.Trial`` (and ``quick``), calls ``trial.suggest_*`` and returns
a dict of constants derived from the suggestions (no computation, as in optuna-examples). Ray
Tune's ``OptunaSearch`` merges the suggestions (``trial.params``) with the returned constants into
the trial's config; that merged dict is a *recipe*: its keys are all in ``RECIPE_KEYS`` (the
``PruneConfig`` fields a sweep varies), keys left out take ``PruneConfig``'s defaults, and
``PruneConfig(**recipe)`` is always valid.

Conditional parameters are suggested only where they mean something, so the sampler never learns
from a parameter that had no effect:

- ``iterations`` only for the ``iterative`` and ``gradual`` schedules (one-shot is 1 step);
- ``finetune_epochs`` and ``lr`` only for ``retrain="finetune"`` (rewinding replays the dense
  schedule from ``rewind_epoch``: ``train.epochs - rewind_epoch`` epochs at the dense learning
  rates, so neither is used); ``rewind_epoch`` only when rewinding;
- ``norm``, ``scope`` and ``remove_channels`` only for ``ln_structured`` (``remove_channels``
  only with ``scope="layer"``, and never with ``weight_rewind``, whose dense weights no longer
  fit a model whose channels were removed); ``remove_channels=True`` comes with the constant
  ``include_bias=True``, because a channel is removable only when its bias is zero too;
- ``nm_n`` only for ``nm``; it picks the N:M pattern of ``NM_PATTERNS`` (N determines M there),
  and ``nm_m``, ``schedule="oneshot"`` and ``target_sparsity = 1 - N/M`` are returned as constants.

A parameter name keeps one distribution *kind* across a space (Optuna refuses e.g. a categorical
whose choices change between trials); integer and float ranges may differ between branches.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from prune_core.registry import Registry

from .grids import GRIDS, get_grid

SPACES: Registry = Registry("search space")

# Keys a recipe (the merged suggestions and constants of a space, or a grid entry) may hold: all
# are fields of prune_core.config.PruneConfig, and missing ones take its defaults.
RECIPE_KEYS = (
    "method",
    "target_sparsity",
    "schedule",
    "iterations",
    "finetune_epochs",
    "lr",
    "retrain",
    "rewind_epoch",
    "remove_channels",
    "norm",
    "scope",
    "nm_n",
    "nm_m",
    "include_bias",
    "layers",
)

# Dense epochs whose weights weight rewinding may return to (0 = initialisation). The runner asks
# the dense baseline to keep exactly these (``TrainConfig(rewind_epochs=REWIND_EPOCHS)``); the
# baseline then needs at least max(REWIND_EPOCHS) + 1 epochs, since rewind_epoch < train.epochs.
REWIND_EPOCHS = (0, 1, 2)
# Epochs learning-rate rewinding may return to (rewinding to 0 would be a full dense schedule).
LR_REWIND_EPOCHS = (1, 2)
# rewind_epoch is one integer range per retraining mode; both must be contiguous to be one
assert REWIND_EPOCHS == tuple(range(REWIND_EPOCHS[0], REWIND_EPOCHS[-1] + 1))
assert LR_REWIND_EPOCHS == tuple(range(LR_REWIND_EPOCHS[0], LR_REWIND_EPOCHS[-1] + 1))

UNSTRUCTURED_METHODS = ("l1_unstructured", "global_magnitude", "random_unstructured")
STRUCTURED_METHODS = ("ln_structured", "l1_unstructured", "random_unstructured", "nm")
FULL_METHODS = ("global_magnitude", "l1_unstructured", "random_unstructured", "ln_structured", "nm")
SCHEDULE_CHOICES = ("oneshot", "iterative", "gradual")
RETRAIN_CHOICES = ("finetune", "weight_rewind", "lr_rewind")
NORM_CHOICES = (1, 2)
SCOPE_CHOICES = ("layer", "global")
# N:M patterns (N kept of every M); N alone names the pattern, so ``nm_n`` is the choice
NM_PATTERNS = ((2, 4), (1, 4), (4, 8))
_NM_M = dict(NM_PATTERNS)
assert len(_NM_M) == len(NM_PATTERNS), "each N must name one N:M pattern"

# (low, high, step) of target_sparsity: unstructured masks go up to 0.99 (the MNIST fine-tuning
# study's highest); whole filters only up to 0.9 (beyond that most layers keep 0-1 filters)
UNSTRUCTURED_TARGET = (0.3, 0.99, 0.01)
STRUCTURED_TARGET = (0.1, 0.9, 0.05)
# fine-tuning learning rate: log-uniform, wide enough for SGD (~1e-2) and Adam (~1e-3) baselines
LR_RANGE = (1e-4, 1e-1)


def _iterations_high(quick: bool) -> int:
    return 3 if quick else 5


def _finetune_epochs_high(quick: bool) -> int:
    return 2 if quick else 5


def get_space(name: str, quick: bool = False) -> Callable[[Any], dict[str, Any]]:
    """The registered space ``name`` as a one-argument function of an Optuna trial.

    ``quick`` narrows the budgets (fine-tune epochs, iterations) to CPU-sized ranges.
    """
    # a partial of a module-level function pickles, which Ray Tune needs to checkpoint the searcher
    return functools.partial(SPACES.get(name), quick=quick)


# ------------------------------------------------------------------------------------------------
# Shared branches (each suggests a group of parameters and returns the constants it implies)
# ------------------------------------------------------------------------------------------------


def _schedule(trial: Any, quick: bool) -> None:
    """schedule in SCHEDULE_CHOICES; iterations 2..5 (quick 2..3) unless one-shot."""
    schedule = trial.suggest_categorical("schedule", SCHEDULE_CHOICES)
    if schedule != "oneshot":
        trial.suggest_int("iterations", 2, _iterations_high(quick))


def _target(trial: Any, bounds: tuple[float, float, float]) -> None:
    low, high, step = bounds
    trial.suggest_float("target_sparsity", low, high, step=step)


def _finetune(trial: Any, quick: bool) -> None:
    """finetune_epochs 1..5 (quick 1..2) per prune step; lr log-uniform in LR_RANGE."""
    trial.suggest_int("finetune_epochs", 1, _finetune_epochs_high(quick))
    trial.suggest_float("lr", *LR_RANGE, log=True)


def _retrain(trial: Any, quick: bool) -> str:
    """retrain in RETRAIN_CHOICES with its own parameters; returns the mode."""
    retrain = trial.suggest_categorical("retrain", RETRAIN_CHOICES)
    if retrain == "finetune":
        _finetune(trial, quick)
    elif retrain == "weight_rewind":
        trial.suggest_int("rewind_epoch", REWIND_EPOCHS[0], REWIND_EPOCHS[-1])
    else:
        trial.suggest_int("rewind_epoch", LR_REWIND_EPOCHS[0], LR_REWIND_EPOCHS[-1])
    return retrain


def _nm(trial: Any) -> dict[str, Any]:
    """An N:M pattern: nm_n chosen, the rest follows (N:M fixes the sparsity, one-shot)."""
    n = trial.suggest_categorical("nm_n", tuple(n for n, _ in NM_PATTERNS))
    m = _NM_M[n]
    return {"nm_m": m, "schedule": "oneshot", "target_sparsity": 1 - n / m}


def _ln_structured(trial: Any, allow_removal: bool, suggest_bias: bool) -> dict[str, Any]:
    """norm, scope, and remove_channels (layer scope, where removal is allowed)."""
    trial.suggest_categorical("norm", NORM_CHOICES)
    scope = trial.suggest_categorical("scope", SCOPE_CHOICES)
    if allow_removal and scope == "layer":
        if trial.suggest_categorical("remove_channels", (False, True)):
            # zeroed filters keep their bias unless biases are pruned too; removal needs both zero
            return {"include_bias": True}
    if suggest_bias:
        trial.suggest_categorical("include_bias", (False, True))
    return {}


# ------------------------------------------------------------------------------------------------
# The spaces
# ------------------------------------------------------------------------------------------------


@SPACES.register("resnet18_iterative")
def resnet18_iterative(trial: Any, quick: bool = False) -> dict[str, Any]:
    """Global magnitude pruning, one-shot or iterative: the study's question.

    schedule oneshot or iterative (an explicit choice, so both get half the trials);
    iterations 2..5 (quick: 2..3) only when iterative (one-shot returns the constant 1);
    target_sparsity in [0.3, 0.99] (step 0.01: the study's 50/75/90% and the 0.9-0.99 region
    where an over-parameterised ResNet-18 starts to lose accuracy, which is where the front is);
    fine-tune epochs per iteration 1..5 (quick: 1..2); fine-tune learning rate log-uniform in
    [1e-3, 1e-1].
    """
    _target(trial, UNSTRUCTURED_TARGET)
    schedule = trial.suggest_categorical("schedule", ["oneshot", "iterative"])
    constants: dict[str, Any] = {"method": "global_magnitude"}
    if schedule == "iterative":
        trial.suggest_int("iterations", 2, 3 if quick else 5)
    else:
        constants["iterations"] = 1
    trial.suggest_int("finetune_epochs", 1, 2 if quick else 5)
    trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    return constants


@SPACES.register("unstructured")
def unstructured(trial: Any, quick: bool = False) -> dict[str, Any]:
    """Unstructured masks for the MNIST studies.

    method in UNSTRUCTURED_METHODS; target_sparsity in [0.3, 0.99] (step 0.01); schedule one-shot,
    iterative or gradual, with iterations 2..5 (quick 2..3) for the last two; retrain:
    finetune (finetune_epochs 1..5, quick 1..2; lr log-uniform in [1e-4, 1e-1]), weight_rewind
    (rewind_epoch in REWIND_EPOCHS) or lr_rewind (rewind_epoch in LR_REWIND_EPOCHS); include_bias.
    """
    trial.suggest_categorical("method", UNSTRUCTURED_METHODS)
    _target(trial, UNSTRUCTURED_TARGET)
    _schedule(trial, quick)
    _retrain(trial, quick)
    trial.suggest_categorical("include_bias", (False, True))
    return {}


@SPACES.register("structured")
def structured(trial: Any, quick: bool = False) -> dict[str, Any]:
    """Structured (whole filters, N:M) against unstructured masks at the same sparsity.

    method in STRUCTURED_METHODS. nm: nm_n in {2, 1, 4} (patterns 2:4, 1:4, 4:8), one-shot at
    1 - N/M. Otherwise target_sparsity in [0.1, 0.9] (step 0.05) and the schedule as in
    ``unstructured``; ln_structured adds norm {1, 2}, scope {layer, global} and, for layer
    scope, remove_channels. Always plain fine-tuning: finetune_epochs 1..5 (quick 1..2), lr
    log-uniform in [1e-4, 1e-1].
    """
    method = trial.suggest_categorical("method", STRUCTURED_METHODS)
    if method == "nm":
        out = _nm(trial)
    else:
        _target(trial, STRUCTURED_TARGET)
        _schedule(trial, quick)
        out = {}
    if method == "ln_structured":
        out |= _ln_structured(trial, allow_removal=True, suggest_bias=False)
    _finetune(trial, quick)
    return out


@SPACES.register("full")
def full(trial: Any, quick: bool = False) -> dict[str, Any]:
    """Every method, schedule and retraining mode, with all their conditional parameters.

    method in FULL_METHODS (every registered pruning method). target_sparsity as in the family
    spaces: [0.3, 0.99] step 0.01 for unstructured masks, [0.1, 0.9] step 0.05 for ln_structured,
    fixed by the pattern for nm. Schedule and retraining as in ``unstructured``; ln_structured
    options as in ``structured`` (no channel removal with weight_rewind); include_bias for every
    method except nm (N:M never prunes biases).
    """
    method = trial.suggest_categorical("method", FULL_METHODS)
    if method == "nm":
        out = _nm(trial)
    else:
        _target(trial, STRUCTURED_TARGET if method == "ln_structured" else UNSTRUCTURED_TARGET)
        _schedule(trial, quick)
        out = {}
    retrain = _retrain(trial, quick)
    if method == "ln_structured":
        out |= _ln_structured(trial, allow_removal=retrain != "weight_rewind", suggest_bias=True)
    elif method != "nm":
        trial.suggest_categorical("include_bias", (False, True))
    return out


__all__ = [
    "FULL_METHODS",
    "GRIDS",
    "LR_REWIND_EPOCHS",
    "NM_PATTERNS",
    "RECIPE_KEYS",
    "REWIND_EPOCHS",
    "SPACES",
    "STRUCTURED_METHODS",
    "UNSTRUCTURED_METHODS",
    "get_grid",
    "get_space",
]
