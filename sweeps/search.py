"""The sweep's Optuna sampler, chosen for its space and budget, and the study's own grid recipes as
the first trials.

``make_sampler(name, seed, num_samples, n_objectives)`` builds one of ``SAMPLERS``:

- ``tpe``: multivariate TPE (``multivariate=True``: Optuna 5 leaves it off for multi-objective
  studies) with ``group=True`` (a conditional space: the recipe's parameters exist only in some
  branches, and grouped TPE models each branch's parameters jointly) and ``constant_liar=True``
  (trials run in parallel: running trials count as bad so the sampler does not propose the same
  recipe twice). ``n_startup_trials``: the enqueued grid recipes, then
  ``startup_trials(num_samples, enqueued)`` random ones: 2 after grid recipes, else a quarter of
  the budget, 2..10 (Optuna's fixed 10 made a 6-16-trial sweep mostly random). The grid's
  recipes are already points for the model; two random trials add points outside their family,
  and every further random trial only delays the model, in a sweep judged by what it finds with
  its first few dozen epochs (see ``startup_trials`` for the measurement). ``gamma`` =
  ``good_trials``: a quarter of the finished trials make TPE's density of good recipes (Optuna's
  multi-objective default is a tenth).
- ``nsga2``: NSGA-II with ``population_size`` = ``population_size(num_samples)`` = num_samples //
  5 kept within 4..50, so a budget has at least five generations.
- ``gp``: Gaussian-process Bayesian optimisation (``GPSampler``; multi-objective with log-EHVI
  since Optuna 4.4, refused with one line on older ones), same start-up trials as TPE.
- ``random``: ``RandomSampler``, the baseline any search must beat.

``default_sampler(num_samples)`` is OptunaHub AutoSampler's rule for a conditional, categorical
space: TPE below 250 trials, NSGA-II from there on.

``grid_points(study, quick, space)`` returns the study's grid recipes that are points of
``space`` (only the keys the space suggests, ``log_density`` for ``target_sparsity``), for
``OptunaSearch(points_to_evaluate=...)``: the search starts from the known protocol.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

SAMPLERS = ("tpe", "random", "nsga2", "gp")
# AutoSampler's switch from TPE to NSGA-II (trials).
NSGA2_FROM_TRIALS = 250
# TPE's share of good trials (``good_trials``) and the most it takes (Optuna's own cap).
GOOD_SHARE = 0.25
MAX_GOOD_TRIALS = 25
# Optuna's own number of random start-up trials, the most the budget rule asks for.
MAX_STARTUP_TRIALS = 10
# Random start-up trials after the study's enqueued grid recipes (``startup_trials``).
STARTUP_AFTER_GRID = 2
# GPSampler handles several objectives from this Optuna version on.
GP_MULTI_OBJECTIVE_OPTUNA = (4, 4)


def good_trials(n: int) -> int:
    """TPE's ``gamma``: how many of ``n`` finished trials make its density of good recipes, a
    quarter (at most ``MAX_GOOD_TRIALS``). Optuna's multi-objective default, a tenth, leaves 1-4
    trials of a 10-40-trial sweep, fewer than a two-objective front has points, so TPE proposed
    around one or two of them; with a quarter, the quick MNIST search's hypervolume at half of
    random search's epochs rose from 0.914 to 0.934 (``benchmarks/bench_search.py``)."""
    return min(math.ceil(GOOD_SHARE * n), MAX_GOOD_TRIALS)


@functools.cache
def _tpe_accepts_gamma() -> bool:
    """Whether this Optuna's ``TPESampler`` still takes ``gamma`` (deprecated in 4.9, to be
    removed in 6.0; without it TPE keeps its own default)."""
    import inspect

    import optuna

    return "gamma" in inspect.signature(optuna.samplers.TPESampler).parameters


def startup_trials(num_samples: int, enqueued: int = 0) -> int:
    """Random start-up trials of TPE and GP for a budget of ``num_samples`` trials, after
    ``enqueued`` grid recipes: ``STARTUP_AFTER_GRID`` (2) when there are grid recipes, else a
    quarter of the budget, at least 2 (a model needs points) and at most Optuna's default 10.

    Measured with ``benchmarks/bench_search.py --quick`` over seeds 0-14 (36-trial budget, 5
    grid recipes; hypervolume at half of random search's epochs over random search's, mean of
    the seeds): 2 random start-up trials 1.011x (11 of 15 seeds at least 1), 9 (a quarter)
    0.998x (6 of 15), 4 1.002x, 0 1.003x."""
    if enqueued > 0:
        return STARTUP_AFTER_GRID
    return min(MAX_STARTUP_TRIALS, max(2, num_samples // 4))


def population_size(num_samples: int) -> int:
    """NSGA-II's population for ``num_samples`` trials: a fifth (five generations), 4..50."""
    return min(50, max(4, num_samples // 5))


def default_sampler(num_samples: int) -> str:
    """The sampler a sweep of ``num_samples`` trials uses unless told: ``tpe`` below
    ``NSGA2_FROM_TRIALS`` (250) trials, ``nsga2`` from there on (AutoSampler's rule)."""
    return "tpe" if num_samples < NSGA2_FROM_TRIALS else "nsga2"


def _optuna_version() -> tuple[int, int]:
    import optuna

    major, minor = optuna.__version__.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def check_sampler(name: str, n_objectives: int = 2) -> str:
    """``name`` if this Optuna can run it for ``n_objectives`` objectives; else ``ValueError``
    with one line naming the value and what is allowed."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler {name!r} is unknown; choose from: {', '.join(SAMPLERS)}")
    if name == "gp" and n_objectives > 1 and _optuna_version() < GP_MULTI_OBJECTIVE_OPTUNA:
        import optuna

        raise ValueError(
            f"sampler 'gp': Optuna {optuna.__version__}'s GPSampler has one objective only "
            f"(several from Optuna 4.4); choose from: tpe, random, nsga2"
        )
    return name


def make_sampler(
    name: str, seed: int | None, num_samples: int, n_objectives: int, enqueued: int = 0
) -> Any:
    """The ``optuna.samplers.BaseSampler`` ``name`` (one of ``SAMPLERS``) for a sweep of
    ``num_samples`` trials and ``n_objectives`` objectives, seeded with ``seed`` (see the module
    docstring for each choice). ``enqueued``: how many of the trials are the study's grid
    recipes, run first (``grid_points``); TPE and GP start their model only after those and
    ``startup_trials(num_samples, enqueued)`` random ones. Raises ``ValueError`` (one line) for
    an unknown name, a budget or objective count below 1, or ``gp`` on an Optuna without
    multi-objective GP."""
    import optuna

    if num_samples < 1:
        raise ValueError(f"num_samples {num_samples}: must be an integer >= 1")
    if n_objectives < 1:
        raise ValueError(f"n_objectives {n_objectives}: must be an integer >= 1")
    check_sampler(name, n_objectives)
    # Optuna counts every finished trial as a start-up trial, the enqueued grid recipes too; the
    # random ones come on top: a model fit on the grid's one family alone proposes more of it
    enqueued = max(0, int(enqueued))
    n_startup = enqueued + startup_trials(num_samples, enqueued)
    with warnings.catch_warnings():
        # multivariate/group TPE and GPSampler are marked experimental; the choice is deliberate
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            gamma = {"gamma": good_trials} if _tpe_accepts_gamma() else {}
            # Optuna 4.9+ marks gamma deprecated (FutureWarning); the choice is deliberate
            warnings.simplefilter("ignore", FutureWarning)
            return optuna.samplers.TPESampler(
                multivariate=True,
                group=True,
                constant_liar=True,
                n_startup_trials=n_startup,
                seed=seed,
                **gamma,
            )
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(
                population_size=population_size(num_samples), seed=seed
            )
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup)
        return optuna.samplers.RandomSampler(seed=seed)


class _NotAPoint(Exception):
    """A recipe that the space cannot propose (a value outside it, a parameter it lacks)."""


class _PointTrial:
    """A stand-in for ``optuna.Trial`` that answers each suggestion from ``point`` and checks
    that the answer lies in the suggested distribution."""

    def __init__(self, point: dict[str, Any]):
        self.point = point
        self.params: dict[str, Any] = {}

    def _value(self, name: str) -> Any:
        if name not in self.point:
            raise _NotAPoint(name)
        return self.point[name]

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        value = self._value(name)
        matches = [c for c in choices if c == value and type(c) is type(value)]
        if not matches:
            raise _NotAPoint(name)
        self.params[name] = matches[0]
        return matches[0]

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        value = self._value(name)
        if isinstance(value, bool) or int(value) != value or not low <= value <= high:
            raise _NotAPoint(name)
        if (int(value) - low) % step:
            raise _NotAPoint(name)
        self.params[name] = int(value)
        return int(value)

    def suggest_float(
        self, name: str, low: float, high: float, step: float | None = None, log: bool = False
    ) -> float:
        value = float(self._value(name))
        # the log-density of a bound is computed by the same expression as the bound
        if not low - 1e-12 <= value <= high + 1e-12:
            raise _NotAPoint(name)
        value = min(max(value, low), high)
        self.params[name] = value
        return value


def as_point(
    recipe: dict[str, Any], space: Callable[[Any], dict[str, Any]]
) -> dict[str, Any] | None:
    """``recipe`` (a grid entry) as the parameters ``space`` would suggest for it, or None when
    the space cannot propose exactly that recipe (a value outside its ranges, a parameter it
    fixes differently). Keys the space does not suggest take ``PruneConfig``'s defaults (and the
    method's option defaults) on both sides, so the point's recipe and ``recipe`` make the same
    ``PruneConfig``."""
    from prune_core.config import PruneConfig
    from search_spaces import log_density_of

    try:
        candidate = {**PruneConfig.from_recipe(recipe).to_dict(), **recipe}
    except ValueError:
        return None
    if "target_sparsity" in recipe and float(recipe["target_sparsity"]) < 1.0:
        candidate["log_density"] = log_density_of(float(recipe["target_sparsity"]))
    trial = _PointTrial(candidate)
    try:
        constants = space(trial) or {}
    except _NotAPoint:
        return None
    proposed = {**trial.params, **constants}
    try:
        same = PruneConfig.from_recipe(proposed) == PruneConfig.from_recipe(recipe)
    except ValueError:
        return None
    return dict(trial.params) if same else None


def grid_points(
    study: str,
    quick: bool,
    space: str | Callable[[Any], dict[str, Any]],
    models: Sequence[str] = (),
    limit: int | None = None,
    rewinding: bool = True,
) -> list[dict[str, Any]]:
    """The recipes of grid ``study`` (``search_spaces.get_grid(study, quick)``) that are valid
    points of ``space`` (a registered space name, or a space function), each as the parameters
    the space suggests for it (``log_density`` for ``target_sparsity``; no constants), in the
    grid's order, without duplicates. With several ``models`` (the runner then suggests
    ``model`` too) each point comes once per model. ``limit``: at most that many, spread evenly
    over the list. A study without a grid has no points."""
    from search_spaces import GRIDS, get_grid, get_space

    if study not in GRIDS:
        return []
    space_fn = get_space(space, quick, rewinding) if isinstance(space, str) else space
    points: list[dict[str, Any]] = []
    for recipe in get_grid(study, quick):
        point = as_point(recipe, space_fn)
        if point is not None and point not in points:
            points.append(point)
    if len(models) > 1:
        points = [{"model": m, **p} for p in points for m in models]
    if limit is not None and len(points) > limit:
        if limit < 1:
            return []
        picks = sorted({round(i * (len(points) - 1) / max(1, limit - 1)) for i in range(limit)})
        points = [points[i] for i in picks]
    return points


def recipe_epochs(recipe: dict[str, Any], dense_epochs: int) -> int:
    """Fine-tune (or rewound retraining) epochs ``recipe`` runs, known before it runs: prune
    steps x epochs per step (``finetune_epochs``, or ``dense_epochs - rewind_epoch`` when
    rewinding replays the dense schedule). Keys the recipe lacks take ``PruneConfig``'s
    defaults."""
    from prune_core.config import PruneConfig

    p = PruneConfig.from_recipe(recipe)
    return p.iterations * p.epochs_per_step(dense_epochs)


def space_recipe(space: Callable[[Any], dict[str, Any]], trial: Any) -> dict[str, Any]:
    """The recipe ``space`` makes of ``trial`` (an Optuna trial, or a ``FixedTrial`` that replays
    a point): its suggestions and constants, without the keys only the sampler sees
    (``log_density``), so two samples that round to one target sparsity are one recipe."""
    from search_spaces import SEARCH_KEYS

    constants = space(trial) or {}
    return {k: v for k, v in {**trial.params, **constants}.items() if k not in SEARCH_KEYS}


def points_within(
    points: list[dict[str, Any]],
    space: Callable[[Any], dict[str, Any]],
    cost: Callable[[dict[str, Any]], float],
    epochs: float,
) -> list[dict[str, Any]]:
    """The first of ``points`` (``grid_points``: the parameters ``space`` suggests) whose
    recipes' ``cost`` (epochs) add up to at most ``epochs``, in order; a point that costs more
    than what is left is skipped, a cheaper later one may still fit."""
    from optuna.trial import FixedTrial

    kept: list[dict[str, Any]] = []
    left = float(epochs)
    for point in points:
        epochs_of = float(cost(space_recipe(space, FixedTrial(point))))
        if epochs_of <= left:
            kept.append(point)
            left -= epochs_of
    return kept
