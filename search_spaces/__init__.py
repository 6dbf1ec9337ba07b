"""Optuna define-by-run search spaces over pruning recipes, one function per sweep family.

A space function takes an ``optuna.Trial``, calls ``trial.suggest_*`` and returns a dict of
constants derived from the suggestions (no computation, as in optuna-examples). The names it
suggests and returns are the recipe keys a trial understands (see ``RECIPE_KEYS``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from prune_core.registry import Registry

SPACES: Registry = Registry("search space")

# Keys a recipe (the merged suggestions and constants of a space) may hold.
RECIPE_KEYS = ("method", "target_sparsity", "schedule", "iterations", "finetune_epochs", "lr")

SpaceFn = Callable[..., dict[str, Any] | None]


def get_space(name: str, quick: bool = False) -> Callable[[Any], dict[str, Any]]:
    """The registered space ``name`` as a one-argument function of an Optuna trial.

    ``quick`` narrows the budgets (fine-tune epochs, iterations) to CPU-sized ranges.
    """
    # a partial of a module-level function pickles, which Ray Tune needs to checkpoint the searcher
    return functools.partial(SPACES.get(name), quick=quick)


@SPACES.register("resnet18_iterative")
def resnet18_iterative(trial: Any, quick: bool = False) -> dict[str, Any]:
    """Global magnitude pruning, one-shot (iterations = 1) or iterative (2..5 steps).

    target_sparsity in [0.3, 0.95] (step 0.05), iterations 1..5 (quick: 1..3), fine-tune epochs
    per iteration 1..5 (quick: 1..2), fine-tune learning rate log-uniform in [1e-3, 1e-1].
    """
    trial.suggest_float("target_sparsity", 0.3, 0.95, step=0.05)
    iterations = trial.suggest_int("iterations", 1, 3 if quick else 5)
    trial.suggest_int("finetune_epochs", 1, 2 if quick else 5)
    trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    schedule = "oneshot" if iterations == 1 else "iterative"
    return {"method": "global_magnitude", "schedule": schedule}
