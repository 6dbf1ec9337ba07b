"""Optuna define-by-run search spaces over pruning recipes, one function per sweep family, and the
fixed grids of the five seed protocols (``GRIDS``, see ``search_spaces.grids``).

A space function takes an ``optuna.Trial`` (and ``quick``), calls ``trial.suggest_*`` and returns
a dict of constants derived from the suggestions (no computation, as in optuna-examples). Ray
Tune's ``OptunaSearch`` merges the suggestions (``trial.params``) with the returned constants into
the trial's config; that merged dict is a *recipe*: its keys are in ``RECIPE_KEYS`` (the
``PruneConfig`` fields a sweep varies and the built-in methods' options) or ``SEARCH_KEYS``
(what the sampler sees instead of a field, ignored by the trial), keys left out take
``PruneConfig``'s defaults, and ``PruneConfig.from_recipe(recipe)`` is always valid. A method's
own options are suggested from the domains its registry entry gives them
(``suggest_method_options``), so a space for a plugin's method needs no list of its own.

Target sparsity on a log-density scale. The sampler draws ``log_density`` = log10(1 - sparsity)
uniformly, so every decade of density gets the same share of the trials: 0.9 -> 0.99 sparsity
(density 0.1 -> 0.01) as much as 0 -> 0.9 (1 -> 0.1), where a uniform sparsity would put a
tenth of them there, although that is where accuracy starts to fall and the front lies. The
space returns ``target_sparsity`` as a constant (so it stays the recipe's, and MLflow's, value):
1 - density with the density rounded to two significant digits (0.0123 -> 0.988, 0.457 ->
0.54), always within the space's bounds (``target_from_log_density``).

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
  and ``nm_m``, ``schedule="oneshot"`` and ``target_sparsity = 1 - N/M`` are returned as constants;
- ``exclude_last`` (keep the output layer dense) only in ``unstructured`` and ``full``, and only
  for a method whose registry entry does not protect the classifier already (ln_structured
  always does). Under one global threshold at 99% the MNIST MLP's 1,000 output weights keep 9
  and it ends at 26-38% test accuracy on real MNIST after 2 fine-tune epochs; with the output
  layer kept dense, at 93-96% (``search_spaces.grids.mnist_finetune`` has the figures).

A parameter name keeps one distribution *kind* across a space (Optuna refuses e.g. a categorical
whose choices change between trials); integer and float ranges may differ between branches.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

from prune_core.config import PruneConfig
from prune_core.methods import get_method, option_keys
from prune_core.registry import Registry

from .grids import GRIDS, get_grid

SPACES: Registry = Registry("search space")

# Keys a recipe (the merged suggestions and constants of a space, or a grid entry) may hold: the
# fields of prune_core.config.PruneConfig and the options of the methods registered when this
# package was imported (a plugin's method adds its own; PruneConfig.from_recipe knows them all).
# fields that no space or grid sets: keeping the *first* layer dense was never measured to help
# here, while keeping the last one dense is what global pruning at 99% needs (exclude_last)
_NOT_VARIED = ("exclude_first",)
RECIPE_KEYS = tuple(k for k in PruneConfig().to_dict() if k not in _NOT_VARIED) + option_keys()

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
# N:M patterns (N kept of every M); N alone names the pattern, so ``nm_n`` is the choice
NM_PATTERNS = ((2, 4), (1, 4), (4, 8))
_NM_M = dict(NM_PATTERNS)
assert len(_NM_M) == len(NM_PATTERNS), "each N must name one N:M pattern"

# (low, high) of target_sparsity: unstructured masks go up to 0.99 (the MNIST fine-tuning
# study's highest); whole filters only up to 0.9 (beyond that most layers keep 0-1 filters).
# Sampled as log10 of the density, see the module docstring.
UNSTRUCTURED_TARGET = (0.3, 0.99)
STRUCTURED_TARGET = (0.1, 0.9)
# Suggested parameters that are not PruneConfig fields (the trial ignores them; the recipe holds
# the value they imply, e.g. target_sparsity).
SEARCH_KEYS = ("log_density",)
# Significant digits the sampled density is rounded to (two: 0.0123 -> 0.012, 0.457 -> 0.46).
DENSITY_DIGITS = 2
# fine-tuning learning rate: log-uniform, wide enough for SGD (~1e-2) and Adam (~1e-3) baselines
LR_RANGE = (1e-4, 1e-1)


def _iterations_high(quick: bool) -> int:
    return 3 if quick else 5


def _finetune_epochs_high(quick: bool) -> int:
    return 2 if quick else 5


def get_space(
    name: str, quick: bool = False, rewinding: bool = True
) -> Callable[[Any], dict[str, Any]]:
    """The registered space ``name`` as a one-argument function of an Optuna trial.

    ``quick`` narrows the budgets (fine-tune epochs, iterations) to CPU-sized ranges.
    ``rewinding=False`` keeps a space that can propose weight or learning-rate rewinding to plain
    fine-tuning: a baseline given as a checkpoint has no dense training to rewind into.
    """
    space = SPACES.get(name)
    options: dict[str, Any] = {"quick": quick}
    if not rewinding and "rewinding" in inspect.signature(space).parameters:
        options["rewinding"] = False
    # a partial of a module-level function pickles, which Ray Tune needs to checkpoint the searcher
    return functools.partial(space, **options)


# ------------------------------------------------------------------------------------------------
# Shared branches (each suggests a group of parameters and returns the constants it implies)
# ------------------------------------------------------------------------------------------------


def _schedule(trial: Any, quick: bool) -> None:
    """schedule in SCHEDULE_CHOICES; iterations 2..5 (quick 2..3) unless one-shot."""
    schedule = trial.suggest_categorical("schedule", SCHEDULE_CHOICES)
    if schedule != "oneshot":
        trial.suggest_int("iterations", 2, _iterations_high(quick))


def log_density_range(bounds: tuple[float, float]) -> tuple[float, float]:
    """The ``log_density`` range of target sparsities ``bounds`` = (low, high):
    (log10(1 - high), log10(1 - low)), e.g. (-2, log10(0.7)) for (0.3, 0.99)."""
    low, high = bounds
    return math.log10(1.0 - high), math.log10(1.0 - low)


def target_from_log_density(log_density: float, bounds: tuple[float, float]) -> float:
    """The target sparsity of ``log_density`` (log10 of the density): 1 - density, with the
    density rounded to ``DENSITY_DIGITS`` significant digits and kept within ``bounds``, and
    the result rounded to 4 decimals so that it prints as the clean number it is (0.988)."""
    low, high = bounds
    density = float(f"{10.0**log_density:.{DENSITY_DIGITS}g}")
    density = min(max(density, 1.0 - high), 1.0 - low)
    return round(1.0 - density, 4)


def log_density_of(target_sparsity: float) -> float:
    """The ``log_density`` that gives ``target_sparsity`` (for enqueuing known recipes)."""
    return math.log10(1.0 - target_sparsity)


def _target(trial: Any, bounds: tuple[float, float]) -> dict[str, Any]:
    """Suggest ``log_density`` (uniform in ``log_density_range(bounds)``); returns the constant
    ``target_sparsity`` it gives."""
    log_density = trial.suggest_float("log_density", *log_density_range(bounds))
    return {"target_sparsity": target_from_log_density(log_density, bounds)}


def _finetune(trial: Any, quick: bool) -> None:
    """finetune_epochs 1..5 (quick 1..2) per prune step; lr log-uniform in LR_RANGE."""
    trial.suggest_int("finetune_epochs", 1, _finetune_epochs_high(quick))
    trial.suggest_float("lr", *LR_RANGE, log=True)


def _retrain(trial: Any, quick: bool, rewinding: bool = True) -> str:
    """retrain in RETRAIN_CHOICES (only finetune without ``rewinding``) with its own
    parameters; returns the mode."""
    retrain = trial.suggest_categorical("retrain", RETRAIN_CHOICES if rewinding else ("finetune",))
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


def suggest_method_options(trial: Any, method: str) -> dict[str, Any]:
    """Suggest each option of ``method`` that its registry entry gives a search domain (a tuple:
    categorical; a ``range``: integers), in the entry's order; returns the values."""
    values = {}
    for option in get_method(method).options:
        if isinstance(option.search, range):
            r = option.search
            values[option.name] = trial.suggest_int(option.name, r.start, r[-1], step=r.step)
        elif option.search is not None:
            values[option.name] = trial.suggest_categorical(option.name, option.search)
    return values


def _classifier(trial: Any, method: str) -> None:
    """exclude_last {False, True}, unless ``method``'s entry always keeps the output layer dense
    (then the choice would change nothing, and the sampler would learn from noise)."""
    if not get_method(method).protects_classifier:
        trial.suggest_categorical("exclude_last", (False, True))


def _ln_structured(trial: Any, allow_removal: bool, suggest_bias: bool) -> dict[str, Any]:
    """norm and scope (the entry's domains), and remove_channels (layer scope, where removal is
    allowed)."""
    scope = suggest_method_options(trial, "ln_structured")["scope"]
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
    target_sparsity in [0.3, 0.99] on a log-density scale (the study's 50/75/90% and, with as
    many trials, the 0.9-0.99 region where an over-parameterised ResNet-18 starts to lose
    accuracy, which is where the front is); fine-tune epochs per iteration 1..5 (quick: 1..2);
    fine-tune learning rate log-uniform in [1e-3, 1e-1].
    """
    constants: dict[str, Any] = {"method": "global_magnitude"}
    constants |= _target(trial, UNSTRUCTURED_TARGET)
    schedule = trial.suggest_categorical("schedule", ["oneshot", "iterative"])
    if schedule == "iterative":
        trial.suggest_int("iterations", 2, 3 if quick else 5)
    else:
        constants["iterations"] = 1
    trial.suggest_int("finetune_epochs", 1, 2 if quick else 5)
    trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    return constants


@SPACES.register("unstructured")
def unstructured(trial: Any, quick: bool = False, rewinding: bool = True) -> dict[str, Any]:
    """Unstructured masks for the MNIST studies.

    method in UNSTRUCTURED_METHODS; target_sparsity in [0.3, 0.99] (log-density scale); schedule
    one-shot, iterative or gradual, with iterations 2..5 (quick 2..3) for the last two; retrain:
    finetune (finetune_epochs 1..5, quick 1..2; lr log-uniform in [1e-4, 1e-1]), weight_rewind
    (rewind_epoch in REWIND_EPOCHS) or lr_rewind (rewind_epoch in LR_REWIND_EPOCHS); include_bias;
    exclude_last (keep the output layer dense).
    """
    method = trial.suggest_categorical("method", UNSTRUCTURED_METHODS)
    out = _target(trial, UNSTRUCTURED_TARGET)
    _schedule(trial, quick)
    _retrain(trial, quick, rewinding)
    trial.suggest_categorical("include_bias", (False, True))
    _classifier(trial, method)
    return out


@SPACES.register("structured")
def structured(trial: Any, quick: bool = False) -> dict[str, Any]:
    """Structured (whole filters, N:M) against unstructured masks at the same sparsity.

    method in STRUCTURED_METHODS. nm: nm_n in {2, 1, 4} (patterns 2:4, 1:4, 4:8), one-shot at
    1 - N/M. Otherwise target_sparsity in [0.1, 0.9] (log-density scale) and the schedule as in
    ``unstructured``; ln_structured adds norm {1, 2}, scope {layer, global} and, for layer
    scope, remove_channels. Always plain fine-tuning: finetune_epochs 1..5 (quick 1..2), lr
    log-uniform in [1e-4, 1e-1].
    """
    method = trial.suggest_categorical("method", STRUCTURED_METHODS)
    if method == "nm":
        out = _nm(trial)
    else:
        out = _target(trial, STRUCTURED_TARGET)
        _schedule(trial, quick)
    if method == "ln_structured":
        out |= _ln_structured(trial, allow_removal=True, suggest_bias=False)
    _finetune(trial, quick)
    return out


@SPACES.register("full")
def full(trial: Any, quick: bool = False, rewinding: bool = True) -> dict[str, Any]:
    """Every method, schedule and retraining mode, with all their conditional parameters.

    method in FULL_METHODS (every registered pruning method). target_sparsity as in the family
    spaces (log-density scale): [0.3, 0.99] for unstructured masks, [0.1, 0.9] for
    ln_structured, fixed by the pattern for nm. Schedule and retraining as in ``unstructured``;
    ln_structured options as in ``structured`` (no channel removal with weight_rewind);
    include_bias for every method except nm (N:M never prunes biases); exclude_last for every
    method except ln_structured (which never prunes the classifier).
    """
    method = trial.suggest_categorical("method", FULL_METHODS)
    if method == "nm":
        out = _nm(trial)
    else:
        out = _target(
            trial, STRUCTURED_TARGET if method == "ln_structured" else UNSTRUCTURED_TARGET
        )
        _schedule(trial, quick)
    retrain = _retrain(trial, quick, rewinding)
    if method == "ln_structured":
        out |= _ln_structured(trial, allow_removal=retrain != "weight_rewind", suggest_bias=True)
    elif method != "nm":
        trial.suggest_categorical("include_bias", (False, True))
    _classifier(trial, method)
    return out


__all__ = [
    "FULL_METHODS",
    "GRIDS",
    "LR_REWIND_EPOCHS",
    "NM_PATTERNS",
    "RECIPE_KEYS",
    "REWIND_EPOCHS",
    "SEARCH_KEYS",
    "SPACES",
    "STRUCTURED_METHODS",
    "UNSTRUCTURED_METHODS",
    "get_grid",
    "get_space",
    "suggest_method_options",
    "log_density_of",
    "log_density_range",
    "target_from_log_density",
]
