"""The sweep's Ray Tune searcher: ``OptunaSearch`` that tells Optuna the truth about trials that
early stopping ended, and picks the sampler's proposals by their cost.

Ray's ``OptunaSearch`` tells Optuna every trial that ended without an error as COMPLETE, with the
objective values of its last report. A trial that MO-ASHA stopped at rung r < its last rung
reported the values of an unfinished recipe: an iterative recipe aiming at 99% sparsity, stopped
after its first of three prune iterations, reported the parameter count and accuracy of a model
at about 78%. As a COMPLETE trial, those values would teach the sampler that the recipe's
parameters (target 0.99) give that point, which they do not. ``RungAwareOptunaSearch`` tells such
a trial as PRUNED instead, with no values, as Optuna's own pruners do: Optuna's TPE then counts
it among the worse trials (``_split_trials`` puts pruned trials below every complete one), which
is what the stop decided (it was outside the top 1/eta at a rung).

Cost-aware proposals (CArBO's cost cooling: Lee, Perrone, Archambeau and Seeger, "Cost-aware
Bayesian Optimization", 2020). Recipes differ in cost by more than an order of magnitude, and the
cost is known before a recipe runs: its fine-tune epochs (``sweeps.search.recipe_epochs``). In the
quick MNIST space a one-shot fine-tune recipe runs 1-2 epochs, a three-step rewinding one 39-45.
With ``cost`` and ``sampler_factory``, every trial the search proposes itself (after the study's
enqueued grid recipes) is picked from ``candidates`` proposals of the sweep's own sampler, drawn on
a throw-away copy of the study (its running trials included, so TPE's constant liar still sees them;
the study itself records only the trial that runs): candidate i with probability proportional to
cost_i ** -alpha. alpha falls linearly from ``ALPHA_START`` (2) at the search's first own trial to 0
at its last (``cooling_alpha``): early on, with little known, cheap recipes are tried first; as the
budget runs out, the sampler's choice counts alone, and an expensive recipe the sampler prefers
still runs. CArBO starts at 1, but it picks the argmax of EI / cost ** alpha; a pick *drawn* with
probability proportional to cost ** -1 gives every candidate the same expected epochs (p_i x cost_i
is the same for all i). In the quick MNIST search, where 5 or 6 of a pick's 8 proposals were often
rewinding recipes of 13-45 epochs, most of the expected epochs then went to them although a cheap
candidate was picked most often, and one such draw was a third to a half of what the search is
judged at (half of random search's epochs). From 2, a candidate's expected epochs fall as 1 / cost
while alpha is near 2. During the sampler's random start-up the candidates are random recipes, so
that is CArBO's cost-effective initial design. A candidate whose recipe the sweep has run or is
running (the space rounds ``log_density`` to two significant digits, so two samples can make one
recipe) is dropped before the pick, unless every candidate is one: the trial would only reuse that
run's result (``sweeps.trial``). The search then runs more recipes for the same epochs;
``benchmarks/bench_search.py`` compares it with random search at equal epochs. Every trial still
reports its epochs (``COST_METRIC``), but they are not an Optuna objective: the sampler learns where
the front is, the pick weighs what finding it costs.

Under the sweep's budget (``sweeps.budget``), alpha falls with the share of the nearest limit
spent (trials, epochs committed, seconds) instead of the trial count; under an epoch budget only
proposals that fit what is left are candidates, for every sampler (random search and NSGA-II then
pick uniformly among them, alpha 0; up to ``FIT_ROUNDS`` rounds of proposals are drawn while none
fits), and the search waits while none fits and trials run, and is over when none fits and none
runs. ``BudgetedSearch`` is Ray Tune's search generator under that budget.

A diverged trial reports NaN objectives. Optuna 5 refuses NaN values in ``tell``, and
``OptunaSearch`` only logs that refusal, which left the trial RUNNING in the Optuna study for the
rest of the sweep. ``RungAwareOptunaSearch`` tells it as FAILED.
"""

from __future__ import annotations

import copy
import math
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from search_spaces import SEARCH_KEYS

from .budget import active
from .scheduler import LAST_RUNG_KEY, RUNG_KEY
from .search import space_recipe

# Reported by every trial: the fine-tune (or rewound retraining) epochs it ran.
COST_METRIC = "epochs_run"
# Proposals of the sampler among which each cost-aware pick is made.
DEFAULT_CANDIDATES = 8
# Rounds of proposals a pick under an epoch budget draws at most while none fits what is left
# (``_draw``): 8 rounds of 8 are 64 proposals (one TPE fit; about 4 ms each).
FIT_ROUNDS = 8
# The cost-cooling exponent at the search's first own trial (``cooling_alpha``). Measured with
# benchmarks/bench_search.py --quick over seeds 0-14 (hypervolume at half of random search's
# epochs over random search's, mean of the seeds): 1 -> 1.011x (8 of 15 seeds at least 1),
# 2 -> 1.018x (12 of 15), higher on 13 of the 15 seeds.
ALPHA_START = 2.0


def stopped_early(result: dict[str, Any] | None) -> bool:
    """True if ``result`` (a trial's last report) is that of a recipe stopped before its last
    rung: it names both its ``rung`` (>= 1) and its ``last_rung``, and the rung is lower. A
    finished recipe reports ``rung == last_rung``; a diverged one reports rung 0 and no last
    rung (its NaN values make Optuna record it as FAILED)."""
    if not result:
        return False
    rung, last = result.get(RUNG_KEY), result.get(LAST_RUNG_KEY)
    if rung is None or last is None:
        return False
    return 1 <= int(rung) < int(last)


def has_non_finite(result: dict[str, Any] | None, metrics: list[str] | str | None) -> bool:
    """True if ``result`` holds one of ``metrics`` as a value that is not a finite number."""
    if not result or metrics is None:
        return False
    for metric in [metrics] if isinstance(metrics, str) else metrics:
        value = result.get(metric)
        if value is not None and not math.isfinite(float(value)):
            return True
    return False


def cooled_cost_weights(costs: list[float], alpha: float) -> np.ndarray:
    """Probabilities of picking each candidate of cost ``costs`` (epochs, floored at 1):
    proportional to cost ** -alpha, normalised. alpha 1 favours cheap candidates in inverse
    proportion to their cost (each candidate's expected epochs, probability x cost, are then the
    same), alpha 2 in inverse proportion to its square, alpha 0 picks uniformly (CArBO's cost
    cooling)."""
    c = np.maximum(np.asarray(costs, dtype=float), 1.0)
    w = c ** -max(0.0, float(alpha))
    return w / w.sum()


def cooling_alpha(started: int, initial: int, budget: int) -> float:
    """CArBO's cost-cooling exponent after ``started`` trials of a ``budget``, the first
    ``initial`` of which were enqueued: ``ALPHA_START`` (2) for the first trial the search
    proposes itself, falling linearly to 0 at the last trial of the budget."""
    span = budget - initial
    if span <= 0:
        return 0.0
    return ALPHA_START * min(1.0, max(0.0, (budget - started) / span))


class RayOptunaState:
    """The one place that reads Ray's ``OptunaSearch`` internals (Ray 2.x keeps its Optuna study,
    its trial map and its completed set in private attributes, and offers no public access).
    ``READS`` names each attribute read here; tests/test_cost_aware_search.py checks that a real
    ``OptunaSearch`` still has each of them, with the expected type, so a Ray upgrade that renames
    one fails that test instead of a sweep."""

    READS = ("_ot_study", "_ot_trials", "_completed_trials", "_space", "metric")

    def __init__(self, search: OptunaSearch) -> None:
        self._search = search

    @property
    def study(self) -> optuna.Study | None:
        """The Optuna study the search asks and tells (None until it has a space)."""
        return self._search._ot_study

    @property
    def space(self) -> Any:
        """The search space: a define-by-run function, or a dict of Optuna distributions."""
        return self._search._space

    @property
    def metric(self) -> list[str] | str | None:
        """The objective metric(s) the search tells Optuna."""
        return self._search.metric

    def has_trial(self, trial_id: str) -> bool:
        """True once the search has asked the study for ``trial_id``'s Optuna trial."""
        return trial_id in self._search._ot_trials

    def trial(self, trial_id: str) -> optuna.Trial:
        """The Optuna trial the search asked for ``trial_id``."""
        return self._search._ot_trials[trial_id]

    def is_completed(self, trial_id: str) -> bool:
        """True once ``trial_id`` has been told to the study."""
        return trial_id in self._search._completed_trials

    def mark_completed(self, trial_id: str) -> None:
        """Record ``trial_id`` as told, as ``OptunaSearch.on_trial_complete`` does."""
        self._search._completed_trials.add(trial_id)


# No attribute of that name on the instance (``_OneFitPerPick``).
_NOTHING = object()


class _SharedFrozenTrial(optuna.trial.FrozenTrial):
    """A trial of the study as handed to the scratch study's ``add_trials``, which stores a
    deep copy of each trial it is given: this one's deep copy is a shallow copy (a plain
    ``FrozenTrial``), which shares the trial's parameters, distributions, values and
    attributes with the study's trial instead of copying every one of them (most of what
    ``add_trials`` cost, a tenth of a pick).

    Sharing them is safe: Optuna's in-memory storage never changes a stored trial's fields in
    place (every write replaces the trial object with a copy whose changed field is a new
    object), the scratch study writes only to the trials it asks for, and the study is not
    written to while a pick runs. The scratch study's copy gets its own number and id, as a
    deep copy would; it holds the same values."""

    def __deepcopy__(self, memo: dict[int, Any]) -> optuna.trial.FrozenTrial:
        twin = copy.copy(self)
        twin.__class__ = optuna.trial.FrozenTrial
        return twin

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial) -> _SharedFrozenTrial:
        """``trial`` (not changed) as a ``_SharedFrozenTrial``."""
        twin = copy.copy(trial)
        twin.__class__ = cls
        return twin


class _OneFitPerPick:
    """Makes the TPE sampler of one pick's scratch study fit its model once per pick instead of
    once per candidate, with the same proposals.

    A pick asks the scratch study ``candidates`` times and tells each candidate FAILED before
    the next ask. Optuna's ``TPESampler`` (5.x) reads COMPLETE and PRUNED trials, and RUNNING
    ones under its constant liar, never FAILED ones, and leaves out the trial it samples for
    (by number); its start-up count is of COMPLETE and PRUNED trials. So every ask of a pick
    sees the very same trials (the same ``FrozenTrial`` objects: the in-memory storage replaces
    a trial's object on every write, it never changes one), and what TPE derives from them
    alone is the same at every ask:

    - the groups of parameters (``_GroupDecomposedSearchSpace.calculate``): it adds each
      trial's parameters to the groups it keeps, and adding the same trials again splits no
      group and adds none, so it returns the groups of the first ask (a group's parameters may
      come in another order, but TPE sorts them by name wherever it reads them);
    - the split into good and bad trials (``_split_trials``: non-domination ranks, hypervolume
      tie-break);
    - the Parzen estimators of each group (``_build_parzen_estimator``).

    None of them draws a random number: only the samples drawn from the estimators use the
    sampler's random state, and they (and their acquisition values, from which TPE takes the
    best) are still drawn at every ask, in the same order. Memoising the three by the identity
    of their inputs (the trial objects themselves, which the memo keeps alive so that their ids
    stay theirs) thus returns what a new computation would return.

    Installed, for the pick's asks, on the scratch study's own sampler only (made per pick,
    thrown away after it): ``_build_parzen_estimator`` and the groups' ``calculate`` are wrapped
    on the instances, and the sampler gets a copy of ``TPESampler._sample`` (Optuna's own code
    object) whose module globals name the memoised ``_split_trials``; Optuna's modules and
    classes are not touched, and leaving the ``with`` block removes all of it. Any other
    sampler, a subclass, or an Optuna whose TPE lacks one of these names runs as it is.
    tests/test_cost_aware_search.py checks the proposals against a pick without any of this."""

    def __init__(self, sampler: Any) -> None:
        self._sampler = sampler
        # (object, attribute, what the instance had before) for each attribute set on one
        self._patched: list[tuple[Any, str, Any]] = []
        self._splits: dict[tuple, tuple] = {}
        self._estimators: dict[tuple, tuple] = {}
        self._groups: tuple | None = None  # (key, trials, groups) of the last call
        self._split: Callable[..., Any] | None = None
        self._build: Callable[..., Any] | None = None
        self._calculate: Callable[..., Any] | None = None

    def __enter__(self) -> _OneFitPerPick:
        sampler = self._sampler
        if type(sampler) is not optuna.samplers.TPESampler:
            return self
        sample = getattr(type(sampler), "_sample", None)
        code = getattr(sample, "__code__", None)
        self._build = getattr(sampler, "_build_parzen_estimator", None)
        if code is None or self._build is None or "_split_trials" not in code.co_names:
            return self
        self._split = sample.__globals__.get("_split_trials")
        if self._split is None:
            return self
        self._set(sampler, "_build_parzen_estimator", self.build)
        names = {**sample.__globals__, "_split_trials": self.split}
        sampled = types.FunctionType(
            code, names, sample.__name__, sample.__defaults__, sample.__closure__
        )
        sampled.__kwdefaults__ = sample.__kwdefaults__
        self._set(sampler, "_sample", types.MethodType(sampled, sampler))
        groups = getattr(sampler, "_group_decomposed_search_space", None)
        self._calculate = getattr(groups, "calculate", None)  # None unless group=True
        if self._calculate is not None:
            self._set(groups, "calculate", self.calculate)
        return self

    def __exit__(self, *exc: object) -> None:
        """The sampler as it was made (no cycle through the memo keeps it alive)."""
        for owner, name, before in reversed(self._patched):
            if before is _NOTHING:
                vars(owner).pop(name, None)
            else:
                vars(owner)[name] = before
        self._patched.clear()
        self._splits.clear()
        self._estimators.clear()
        self._groups = None

    def _set(self, owner: Any, name: str, value: Any) -> None:
        self._patched.append((owner, name, vars(owner).get(name, _NOTHING)))
        setattr(owner, name, value)

    # The memos key on id(study) too: the scratch study lives for as long as they do (the
    # ``with`` block). Each keeps the trial lists it keys on, so that their ids stay theirs.

    def calculate(self, study: Any, use_cache: bool = False) -> Any:
        """The groups' ``calculate``, again only when the COMPLETE and PRUNED trials are not
        the very ones of the last call (only the last is kept: the groups are state, and the
        argument above holds for the trials that state was made of)."""
        trials = study._get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED), use_cache=use_cache
        )
        key = (id(study), *map(id, trials))
        if self._groups is None or self._groups[0] != key:
            self._groups = (key, trials, self._calculate(study, use_cache))
        return self._groups[2]

    def split(self, study: Any, trials: list[Any], n_below: int) -> tuple[list, list]:
        """``_split_trials``, once per study, trial objects and number of good trials."""
        key = (id(study), n_below, *map(id, trials))
        hit = self._splits.get(key)
        if hit is None:
            hit = self._splits[key] = (list(trials), self._split(study, trials, n_below))
        below, above = hit[1]
        return list(below), list(above)

    def build(
        self, study: Any, search_space: dict[str, Any], trials: list[Any], handle_below: bool
    ) -> Any:
        """``_build_parzen_estimator``, once per study, search space (its distributions in
        their order: the estimator's columns), trial objects and side. The estimator is not
        changed by sampling from it or by evaluating it."""
        key = (id(study), handle_below, tuple(search_space.items()), *map(id, trials))
        hit = self._estimators.get(key)
        if hit is None:
            mpe = self._build(study, search_space, trials, handle_below=handle_below)
            hit = self._estimators[key] = (list(trials), mpe)
        return hit[1]


class RungAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells a trial stopped before its last rung as PRUNED and a trial
    with a NaN or infinite objective as FAILED (see the module docstring); every other trial is
    told as ``OptunaSearch`` tells it. With ``cost`` (a recipe's epochs, known before it runs)
    and ``sampler_factory`` (the study's sampler for a given seed), each trial the search
    proposes itself is the cost-cooled pick of ``candidates`` proposals of that sampler."""

    def __init__(
        self,
        *args: Any,
        cost: Callable[[dict[str, Any]], float] | None = None,
        sampler_factory: Callable[[int | None], Any] | None = None,
        candidates: int = DEFAULT_CANDIDATES,
        budget: int | None = None,
        pick_seed: int | None = None,
        cost_aware: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._cost = cost
        self._sampler_factory = sampler_factory
        self._cost_aware = cost_aware
        # (trials ended, epochs committed) when no proposal fitted the epoch budget: no new
        # draw until that changes (Tune asks for a trial at every step of its loop)
        self._blocked_at: tuple[int, float] | None = None
        self._candidates = candidates
        self._budget = budget
        self._pick_seed = pick_seed
        self._initial = len(kwargs.get("points_to_evaluate") or [])
        # one entry per cost-aware pick: (alpha, the candidates' costs, the index picked)
        self.picks: list[tuple[float, tuple[float, ...], int]] = []
        # trial number -> (its parameters, its recipe): ``_known_recipes``
        self._recipes_by_trial: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}

    @property
    def _internals(self) -> RayOptunaState:
        """Ray's internals of this search (made per use: nothing more to pickle or restore)."""
        return RayOptunaState(self)

    @property
    def study(self) -> optuna.Study | None:
        """The Optuna study of the search: the trials that ran, and how each ended."""
        return self._internals.study

    @property
    def candidates(self) -> int:
        """Proposals of the sampler each cost-aware pick chooses from."""
        return self._candidates

    def suggest(self, trial_id: str) -> dict | str | None:
        """As ``OptunaSearch.suggest``; for a cost-aware search (see the class docstring) the
        proposal is picked first and enqueued, once the study's own points are used up. Under
        an epoch budget (``sweeps.budget``) only a recipe that fits is proposed: None (ask again
        later) while none fits and trials run, ``Searcher.FINISHED`` when none fits and none
        runs."""
        internals, study = self._internals, self.study
        budget = active()
        if budget is not None and budget.time_up():
            return Searcher.FINISHED
        if self._cost is not None and study is not None and not internals.has_trial(trial_id):
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            limited = budget is not None and budget.epochs is not None
            if waiting and limited and not budget.fits(self._waiting_cost(waiting[0])):
                return self._nothing_fits(budget)
            if (
                not waiting
                and self._sampler_factory is not None
                and callable(internals.space)
                and (getattr(self, "_cost_aware", True) or limited)
            ):
                if limited and getattr(self, "_blocked_at", None) == self._account(budget):
                    return None  # nothing fitted, and nothing has ended since
                pick = self._cost_aware_pick()
                if pick is None:
                    self._blocked_at = self._account(budget)
                    return self._nothing_fits(budget)
                study.enqueue_trial(pick)
        config = super().suggest(trial_id)
        if budget is not None and isinstance(config, dict) and self._cost is not None:
            recipe = {k: v for k, v in config.items() if k not in SEARCH_KEYS}
            budget.start(trial_id, float(self._cost(recipe)))
        return config

    @staticmethod
    def _account(budget: Any) -> tuple[int, float]:
        """What changes when a trial ends: the ended trials and the epochs committed."""
        return len(budget.done), budget.committed_epochs()

    @staticmethod
    def _nothing_fits(budget: Any) -> str | None:
        """No recipe fits the epoch budget: wait while trials run (one may stop early and give
        epochs back), else the search is over and the budget is what ended it."""
        if budget.running:
            return None
        budget.exhausted = budget.exhausted or "epochs"
        return Searcher.FINISHED

    def _waiting_cost(self, frozen: Any) -> float:
        """Epochs of an enqueued (grid) recipe, from the parameters it was enqueued with."""
        fixed = dict(frozen.system_attrs.get("fixed_params", {}) or frozen.params)
        try:
            return float(self._cost(self._recipe(optuna.trial.FixedTrial(fixed))))
        except Exception:  # a point the space cannot replay: charge nothing, as before
            return 0.0

    def _cost_aware_pick(self) -> dict[str, Any] | None:
        """Draw ``candidates`` proposals from the sampler on a copy of the study (so that the
        study itself sees only the trial that runs) and pick one with probability
        proportional to cost ** -alpha (``cooled_cost_weights``, ``cooling_alpha``; alpha 0,
        a uniform pick, when the search is not cost-aware). Under an epoch budget only
        proposals that fit are candidates; None when none does.

        It runs on the sweep's driver before every trial the search proposes, so what it costs
        delays each trial. Three things make it cheaper, none changes a proposal (a seeded search
        proposes bit for bit what it did before: tests/test_cost_aware_search.py compares it
        with a copy of the pick as first written): TPE fits its model once per pick instead of
        once per candidate (``_OneFitPerPick``), the scratch study's copies of the study's
        trials are shallow (``_SharedFrozenTrial``), and the recipe of a trial the sweep has run
        is made once per sweep instead of once per pick (``_known_recipes``). What is left is
        mostly TPE drawing each candidate from its model and weighing it, which takes the
        sampler's random numbers in order and is done as before (benchmarks/bench_pick.py)."""
        study = self._internals.study
        trials = [
            t for t in study.get_trials(deepcopy=False)
            if t.state != TrialState.WAITING
        ]  # fmt: skip
        started = len(trials)
        # one seed per pick: the same sweep seed proposes the same recipes
        seed = None if self._pick_seed is None else self._pick_seed * 1_000_003 + started
        budget = active()
        epoch_budget = budget if budget is not None and budget.epochs is not None else None
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per throw-away study
        try:
            # a fresh sampler and scratch study per pick: the sampler starts from the pick's
            # seed, and the study holds the study's trials alone (one kept between picks would
            # also hold the earlier picks' candidates, which take trial numbers and ids, and
            # NSGA-II's caches of generations and parents: not provably the same proposals)
            sampler = self._sampler_factory(seed)
            scratch = optuna.create_study(directions=study.directions, sampler=sampler)
            # copies: the study's own trials are not touched (_SharedFrozenTrial: how)
            scratch.add_trials(_SharedFrozenTrial.of(t) for t in trials)
            with _OneFitPerPick(sampler):
                proposals, costs, recipes = self._draw(scratch, epoch_budget)
            # a recipe the sweep has run or is running gives no new point (the trial would reuse
            # that run's result): such candidates are dropped, unless every candidate is one
            known = self._known_recipes(trials)
            fresh = [i for i, r in enumerate(recipes) if r not in known]
            if fresh and len(fresh) < len(proposals):
                proposals = [proposals[i] for i in fresh]
                costs = [costs[i] for i in fresh]
        finally:
            optuna.logging.set_verbosity(verbosity)
        if epoch_budget is not None:
            fitting = [i for i, c in enumerate(costs) if epoch_budget.fits(c)]
            if not fitting:
                return None
            proposals = [proposals[i] for i in fitting]
            costs = [costs[i] for i in fitting]
        if budget is not None:  # cools as the nearest limit (trials, epochs, time) is spent
            alpha = ALPHA_START * (1.0 - budget.spent_share(started, self._initial))
        elif self._budget:
            alpha = cooling_alpha(started, self._initial, self._budget)
        else:  # no budget: there is no end to cool towards, cheap first throughout
            alpha = ALPHA_START
        if not getattr(self, "_cost_aware", True):
            alpha = 0.0
        rng = np.random.default_rng(seed)
        index = int(rng.choice(len(proposals), p=cooled_cost_weights(costs, alpha)))
        self.picks.append((alpha, tuple(costs), index))
        return proposals[index]

    def _draw(
        self, scratch: optuna.Study, budget: Any
    ) -> tuple[list[dict[str, Any]], list[float], list[dict[str, Any]]]:
        """(params, cost, recipe) of each candidate drawn from ``scratch`` (each told FAIL, so
        the scratch study's sampler moves on): one round of ``candidates``; under an epoch
        ``budget``, more rounds while none fits, up to ``FIT_ROUNDS``. The last epochs of a
        budget fit only the cheap recipes, which 8 proposals of a space whose typical recipe
        costs more can all miss (5 of 10 epochs left, and the sweep ended as if nothing
        fitted); the first round is drawn as before."""
        proposals: list[dict[str, Any]] = []
        costs: list[float] = []
        recipes: list[dict[str, Any]] = []
        for _ in range(FIT_ROUNDS if budget is not None else 1):
            for _ in range(max(1, self._candidates)):
                trial = scratch.ask()
                recipe = self._recipe(trial)
                proposals.append(dict(trial.params))
                recipes.append(recipe)
                costs.append(float(self._cost(recipe)))
                scratch.tell(trial, state=TrialState.FAIL)
            if budget is None or any(budget.fits(c) for c in costs):
                break
        return proposals, costs, recipes

    def _known_recipes(self, trials: list[optuna.trial.FrozenTrial]) -> list[dict[str, Any]]:
        """The recipe of each of ``trials`` (the study's: run, running or ended), made from its
        parameters. A trial's parameters are all set when the search asks for it (the space is
        define-by-run), so each recipe is made once, kept by trial number and remade only if
        that trial's parameters are not those it was made of (a restored or changed study)."""
        made = getattr(self, "_recipes_by_trial", None)
        if made is None:  # a searcher restored from a checkpoint written before this cache
            made = self._recipes_by_trial = {}
        known = []
        for t in trials:
            hit = made.get(t.number)
            if hit is None or hit[0] != t.params:
                hit = (dict(t.params), self._recipe(optuna.trial.FixedTrial(t.params)))
                made[t.number] = hit
            known.append(hit[1])
        return known

    def _recipe(self, trial: Any) -> dict[str, Any]:
        """The recipe the search's space makes of ``trial`` (``sweeps.search.space_recipe``)."""
        return space_recipe(self._internals.space, trial)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """As ``OptunaSearch.on_trial_result``; the budget in force learns the epochs run."""
        budget = active()
        if budget is not None and COST_METRIC in result:
            budget.report(trial_id, float(result[COST_METRIC]))
        super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        """Tell Optuna how ``trial_id`` ended: PRUNED when early stopping ended it, FAILED when
        an objective is not finite (divergence), else as ``OptunaSearch`` does (COMPLETE with
        its values, FAILED on an error)."""
        internals = self._internals
        budget = active()
        if budget is not None:
            budget.end(trial_id, (result or {}).get(COST_METRIC))
        if internals.is_completed(trial_id) or error:
            return super().on_trial_complete(trial_id, result, error)
        if has_non_finite(result, internals.metric):
            state = TrialState.FAIL
        elif stopped_early(result):
            state = TrialState.PRUNED
        else:
            return super().on_trial_complete(trial_id, result, error)
        internals.study.tell(internals.trial(trial_id), state=state)
        internals.mark_completed(trial_id)


class BudgetedSearch(SearchGenerator):
    """Ray Tune's ``SearchGenerator`` under the budget in force:

    - its trial limit and whether the search is over are the budget's, not the saved state's, so
      ``--resume`` of a sweep that a budget ended continues with the new budget;
    - when the deadline stops the trials (Tune then calls ``set_finished``), the trials still
      running are told to the searcher as failed, so Optuna and the concurrency limiter do not
      keep them running for ever, and are named in the budget's ``cut_short``."""

    def set_state(self, state: dict) -> None:
        """Ray Tune's saved state, less its end: the budget in force decides that."""
        super().set_state(state)
        self._finished = False
        budget = active()
        if budget is not None and budget.trials is not None:
            self._total_samples = budget.trials

    def set_finished(self) -> None:
        """As ``SearchGenerator.set_finished``; at the deadline, tell the running trials first."""
        budget = active()
        if budget is not None and budget.time_up_at is not None and budget.running:
            for trial_id in list(budget.running):
                budget.cut_short.add(trial_id)
                self.on_trial_complete(trial_id, result=None, error=True)
                budget.end(trial_id)
        super().set_finished()
