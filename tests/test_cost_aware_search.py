"""The cost-aware search: a recipe's epochs known before it runs, CArBO's cost-cooled pick of the
sampler's proposals, and that the Optuna study records only the trials that run."""

from __future__ import annotations

import functools

import pytest

from sweeps.search import make_sampler, recipe_epochs
from sweeps.searcher import (
    RayOptunaState,
    RungAwareOptunaSearch,
    cooled_cost_weights,
    cooling_alpha,
)

DENSE_EPOCHS = 15


@pytest.mark.parametrize(
    "recipe, epochs",
    [
        # one-shot, 2 fine-tune epochs
        ({"schedule": "oneshot", "iterations": 1, "finetune_epochs": 2}, 2),
        # 3 prune steps x 2 fine-tune epochs
        ({"schedule": "iterative", "iterations": 3, "finetune_epochs": 2}, 6),
        # weight rewinding to epoch 2 replays 15 - 2 = 13 epochs per step, 2 steps
        ({"schedule": "gradual", "iterations": 2, "retrain": "weight_rewind",
          "rewind_epoch": 2}, 26),
        # learning-rate rewinding to epoch 1, one shot: 14; a search-only key is ignored
        ({"retrain": "lr_rewind", "rewind_epoch": 1, "log_density": -1.0, "model": "cnn"}, 14),
    ],
)  # fmt: skip
def test_recipe_epochs_by_hand(recipe, epochs):
    assert recipe_epochs({"method": "global_magnitude", **recipe}, DENSE_EPOCHS) == epochs


def test_cooled_cost_weights_by_hand():
    # alpha 1: inversely proportional to cost, 1 : 1/2 : 1/4 -> 4/7, 2/7, 1/7
    assert cooled_cost_weights([1, 2, 4], 1.0) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    # ... so each candidate's expected epochs (probability x cost) are the same, 4/7
    assert cooled_cost_weights([1, 2, 4], 1.0) * [1, 2, 4] == pytest.approx([4 / 7] * 3)
    # alpha 2 (the start of the cooling): 1 : 1/4 : 1/16 -> 16/21, 4/21, 1/21; expected epochs
    # 16/21, 8/21, 4/21: the dearer a candidate, the fewer epochs it takes in expectation
    assert cooled_cost_weights([1, 2, 4], 2.0) == pytest.approx([16 / 21, 4 / 21, 1 / 21])
    # alpha 0.5: 1 : 1/2 (sqrt 4 = 2) -> 2/3, 1/3
    assert cooled_cost_weights([1, 4], 0.5) == pytest.approx([2 / 3, 1 / 3])
    # alpha 0: uniform; costs below one epoch count as one (a recipe with no fine-tuning)
    assert cooled_cost_weights([1, 40, 3], 0.0) == pytest.approx([1 / 3] * 3)
    assert cooled_cost_weights([0, 1], 1.0) == pytest.approx([0.5, 0.5])


def test_cooling_alpha_by_hand():
    # 12 trials, 4 enqueued: 2 at the search's first own trial, then down by 2/8 per trial
    assert cooling_alpha(4, 4, 12) == 2.0
    assert cooling_alpha(8, 4, 12) == 1.0
    assert cooling_alpha(11, 4, 12) == 0.25
    assert cooling_alpha(12, 4, 12) == 0.0
    assert cooling_alpha(20, 4, 12) == 0.0  # past the budget (a resumed sweep): no preference
    assert cooling_alpha(0, 4, 4) == 0.0  # every trial enqueued: nothing to pick


def _space(trial):
    """A cheap and a dear branch with the same parameter, as pruning recipes have."""
    kind = trial.suggest_categorical("kind", ["cheap", "dear"])
    trial.suggest_float("x", 0.0, 1.0)
    return {"epochs": 1 if kind == "cheap" else 10**6}


def _cost(recipe):
    return recipe["epochs"]


def _search(cost_aware: bool, budget: int, points=None) -> RungAwareOptunaSearch:
    factory = functools.partial(make_sampler, "tpe", num_samples=budget, n_objectives=2,
                                enqueued=len(points or []))  # fmt: skip
    return RungAwareOptunaSearch(
        _space,
        metric=["acc", "params"],
        mode=["max", "min"],
        points_to_evaluate=points,
        sampler=factory(0),
        cost=_cost if cost_aware else None,
        sampler_factory=factory if cost_aware else None,
        budget=budget,
        pick_seed=0,
    )


def _run(search: RungAwareOptunaSearch, n: int) -> list[dict]:
    configs = []
    for i in range(n):
        config = search.suggest(f"t{i}")
        configs.append(config)
        # the dear branch is no better, so nothing teaches the sampler to prefer it
        search.on_trial_complete(f"t{i}", {"acc": config["x"], "params": 1.0})
    return configs


def test_cost_aware_picks_cheap_recipes_while_alpha_is_high():
    budget = 16
    points = [{"kind": "dear", "x": 0.5}]
    search = _search(True, budget, points)
    configs = _run(search, budget)
    # the enqueued grid recipe runs first, as given, whatever it costs
    assert configs[0]["kind"] == "dear" and configs[0]["x"] == 0.5
    # every own trial was a pick among 8 proposals, with alpha from 2 down by 2/15 per trial
    assert len(search.picks) == budget - 1
    assert [a for a, _, _ in search.picks] == pytest.approx(
        [2 * (16 - s) / 15 for s in range(1, 16)]
    )
    assert all(len(costs) == 8 for _, costs, _ in search.picks)
    # while alpha >= 0.5 a dear proposal weighs <= 1e6 ** -0.5 = 1e-3 against a cheap one: the
    # pick is cheap whenever one proposal was; only an all-dear choice runs a dear recipe
    mixed = 0
    for (alpha, costs, index), config in zip(search.picks, configs[1:], strict=True):
        assert config["epochs"] == costs[index]
        if alpha >= 0.5 and min(costs) == 1:
            mixed += max(costs) > 1
            assert config["kind"] == "cheap"
    assert mixed >= 3  # the rule was put to the test, not only met by all-cheap proposals
    # the sampler itself kept proposing the dear branch (at least once per pick on average; a
    # uniform pick would have run it in some of those trials): the cost kept it out
    early = [costs for alpha, costs, _ in search.picks if alpha >= 0.5]
    assert sum(c > 1 for costs in early for c in costs) >= len(early)


def test_the_study_records_only_the_trials_that_run():
    search = _search(True, 6)
    configs = _run(search, 6)
    trials = search.study.get_trials(deepcopy=False)
    # one trial per suggestion (the 8 candidates per pick lived on a throw-away copy)
    assert len(trials) == 6
    assert [t.params["x"] for t in trials] == [c["x"] for c in configs]
    assert all(t.state.name == "COMPLETE" for t in trials)


def _four_recipes(trial):
    """Four recipes: the density bucket a sampled ``log_density`` rounds to, as the sweep's
    spaces round it to two significant digits."""
    bucket = trial.suggest_categorical("bucket", [0, 1, 2, 3])
    trial.suggest_float("log_density", 0.0, 1.0)  # search-only: not part of the recipe
    return {"target_sparsity": 0.9 + bucket / 100}


def test_picks_skip_recipes_the_sweep_has_run():
    factory = functools.partial(make_sampler, "random", num_samples=6, n_objectives=2)
    search = RungAwareOptunaSearch(
        _four_recipes, metric=["acc", "params"], mode=["max", "min"], sampler=factory(0),
        cost=lambda recipe: 1.0, sampler_factory=factory, budget=6, pick_seed=0,
        candidates=32,  # all 32 repeat one of 3 recipes run: (3/4)^32 ~ 1e-4
    )  # fmt: skip
    buckets = []
    for i in range(6):
        config = search.suggest(f"t{i}")
        buckets.append(config["bucket"])
        search.on_trial_complete(f"t{i}", {"acc": 0.5, "params": 1.0})
    # each of the first four trials is a recipe not run yet (4 random trials without that
    # rule cover all four recipes 4!/4^4 = 9% of the time; log_density differs every time)
    assert sorted(buckets[:4]) == [0, 1, 2, 3]
    # then every candidate repeats one: the search still proposes (the trial reuses its run)
    assert set(buckets[4:]) <= {0, 1, 2, 3} and len(buckets) == 6


def test_ray_optuna_search_still_has_what_the_adapter_reads(tmp_path):
    """``RayOptunaState`` reads private attributes of Ray's ``OptunaSearch``: each must still
    exist on a real one, with the type and meaning the adapter assumes. A Ray upgrade that
    renames or retypes one fails here, not in the middle of a sweep."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    # a define-by-run space and objective lists, as the sweep builds its search
    search = OptunaSearch(_space, metric=["acc", "params"], mode=["max", "min"], seed=0)
    for name in RayOptunaState.READS:
        assert hasattr(search, name), f"OptunaSearch has no {name} any more"
    state = RayOptunaState(search)
    assert isinstance(state.study, optuna.Study)
    assert state.space is _space
    assert state.metric == ["acc", "params"]
    assert isinstance(search._ot_trials, dict) and isinstance(search._completed_trials, set)
    assert not state.has_trial("t0") and not state.is_completed("t0")
    config = search.suggest("t0")
    assert state.has_trial("t0")
    assert isinstance(state.trial("t0"), optuna.Trial)
    assert state.trial("t0").params == {"kind": config["kind"], "x": config["x"]}
    search.on_trial_complete("t0", {"acc": 0.5, "params": 1.0})
    assert state.is_completed("t0")
    assert state.study.get_trials(deepcopy=False)[0].values == [0.5, 1.0]
    # what mark_completed records is what OptunaSearch checks: a later completion is ignored
    search.suggest("t1")
    state.mark_completed("t1")
    search.on_trial_complete("t1", {"acc": 0.9, "params": 1.0})
    assert state.study.get_trials(deepcopy=False)[1].state == optuna.trial.TrialState.RUNNING

    # a space Ray Tune hands over later (a Tuner's param_space): no study until then
    later = OptunaSearch(metric="acc", mode="max", seed=0)
    assert RayOptunaState(later).study is None
    assert later.set_search_properties(None, None, {"x": tune.uniform(0.0, 1.0)})
    state = RayOptunaState(later)
    assert isinstance(state.study, optuna.Study) and isinstance(state.space, dict)
    assert state.metric == "acc"
    later.suggest("t0")
    assert state.trial("t0").params.keys() == {"x"}

    # the searcher's checkpoint (what --resume restores) brings the same state back
    ours = _search(True, 4)
    _run(ours, 2)
    ours.save(str(tmp_path / "searcher.pkl"))
    restored = _search(True, 4)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert len(restored.study.get_trials(deepcopy=False)) == 2
    assert all(RayOptunaState(restored).is_completed(f"t{i}") for i in range(2))


# --- the pick's proposals stay those of the pick as it was first written ------------------------


class _ReferencePick(RungAwareOptunaSearch):
    """``RungAwareOptunaSearch`` with ``_cost_aware_pick`` as it was before it cached anything
    (commit 59a6c4b), kept verbatim: a fresh throw-away study per pick, 8 plain asks, every
    known recipe replayed. The searcher's pick must propose exactly what this one proposes."""

    def _cost_aware_pick(self):
        import numpy as np
        import optuna
        from optuna.trial import TrialState

        from sweeps.budget import active
        from sweeps.searcher import ALPHA_START

        study = self._internals.study
        trials = [
            t for t in study.get_trials(deepcopy=False)
            if t.state != TrialState.WAITING
        ]  # fmt: skip
        started = len(trials)
        seed = None if self._pick_seed is None else self._pick_seed * 1_000_003 + started
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            scratch = optuna.create_study(
                directions=study.directions, sampler=self._sampler_factory(seed)
            )
            scratch.add_trials(trials)
            proposals, costs, recipes = [], [], []
            for _ in range(max(1, self._candidates)):
                trial = scratch.ask()
                recipe = self._recipe(trial)
                proposals.append(dict(trial.params))
                recipes.append(recipe)
                costs.append(float(self._cost(recipe)))
                scratch.tell(trial, state=TrialState.FAIL)
            known = [self._recipe(optuna.trial.FixedTrial(t.params)) for t in trials]
            fresh = [i for i, r in enumerate(recipes) if r not in known]
            if fresh and len(fresh) < len(proposals):
                proposals = [proposals[i] for i in fresh]
                costs = [costs[i] for i in fresh]
        finally:
            optuna.logging.set_verbosity(verbosity)
        budget = active()
        if budget is not None and budget.epochs is not None:
            fitting = [i for i, c in enumerate(costs) if budget.fits(c)]
            if not fitting:
                return None
            proposals = [proposals[i] for i in fitting]
            costs = [costs[i] for i in fitting]
        if budget is not None:
            alpha = ALPHA_START * (1.0 - budget.spent_share(started, self._initial))
        elif self._budget:
            alpha = cooling_alpha(started, self._initial, self._budget)
        else:
            alpha = ALPHA_START
        if not getattr(self, "_cost_aware", True):
            alpha = 0.0
        rng = np.random.default_rng(seed)
        index = int(rng.choice(len(proposals), p=cooled_cost_weights(costs, alpha)))
        self.picks.append((alpha, tuple(costs), index))
        return proposals[index]


def sweep_search(sampler: str, trials: int, cls=RungAwareOptunaSearch, seed: int = 0):
    """A search as the runner builds it for ``sweeps.mnist_finetune --quick --space
    unstructured``: the quick unstructured space, the study's grid recipes enqueued first, the
    recipe's epochs as its cost, two objectives. Every sampler's proposals are picked (the
    runner picks random and NSGA-II proposals only under an epoch budget; the pick is the same)."""
    from search_spaces import get_space
    from sweeps.search import grid_points

    space = get_space("unstructured", quick=True)
    points = grid_points("mnist_finetune", True, "unstructured", limit=max(1, trials // 3))
    factory = functools.partial(make_sampler, sampler, num_samples=trials, n_objectives=2,
                                enqueued=len(points))  # fmt: skip
    return cls(
        space, metric=["test_accuracy", "nonzero_params"], mode=["max", "min"],
        points_to_evaluate=points, sampler=factory(seed),
        cost=functools.partial(recipe_epochs, dense_epochs=DENSE_EPOCHS),
        sampler_factory=factory, budget=trials, pick_seed=seed,
    )  # fmt: skip


def scripted_sweep(search: RungAwareOptunaSearch, trials: int) -> dict:
    """``scripted_steps`` run to the end: what it returns."""
    steps = scripted_steps(search, trials)
    while True:
        try:
            next(steps)
        except StopIteration as end:
            return end.value


def scripted_steps(search: RungAwareOptunaSearch, trials: int):
    """Drive ``search`` as Ray Tune does with 2 (now and then 3) trials at a time, by a fixed
    script: after each suggestion, running trials end (which, and how, drawn from the script's
    own seed) until at most 2 run (sometimes 3, sometimes fewer), so most picks see trials
    still RUNNING. An ending trial is COMPLETE with 2 values (55%), stopped early, so PRUNED
    (25%), diverged, so FAILED by a NaN (10%), or errored (10%). Returns every suggestion's
    config, every ``picks`` entry, every candidate the picks drew (its parameters, in draw
    order), the trials running at each suggestion and the study's trial states at the end. A
    generator: it yields after each suggestion and the ends that follow it."""
    import numpy as np
    import optuna

    script = np.random.default_rng(7)  # the script only: which trial ends when, and how
    candidates: list[dict] = []
    recipe = search._recipe

    def spy(trial):  # each candidate is an optuna.Trial the pick asked for
        made = recipe(trial)
        if isinstance(trial, optuna.trial.Trial):
            candidates.append(dict(trial.params))
        return made

    search._recipe = spy
    running: list[str] = []
    configs, concurrent = [], []
    for i in range(trials):
        concurrent.append(len(running))
        configs.append(search.suggest(f"t{i}"))
        running.append(f"t{i}")
        cap = 3 if script.random() < 0.2 else 2
        while len(running) > cap or (running and script.random() < 0.3):
            ended = running.pop(int(script.integers(len(running))))
            how, acc, params = script.random(), script.random(), float(script.integers(10**5))
            if how < 0.55:
                result = {"test_accuracy": acc, "nonzero_params": params, "rung": 3,
                          "last_rung": 3}  # fmt: skip
            elif how < 0.8:
                result = {"test_accuracy": acc, "nonzero_params": params, "rung": 1,
                          "last_rung": 3}  # fmt: skip
            elif how < 0.9:
                result = {"test_accuracy": float("nan"), "nonzero_params": params, "rung": 0}
            else:
                search.on_trial_complete(ended, None, error=True)
                continue
            search.on_trial_complete(ended, result)
        yield
    del search._recipe
    states = [t.state.name for t in search.study.get_trials(deepcopy=False)]
    return {"configs": configs, "picks": list(search.picks), "candidates": candidates,
            "concurrent": concurrent, "states": states}  # fmt: skip


@pytest.mark.parametrize("sampler, trials", [("tpe", 100), ("nsga2", 40), ("random", 30)])
def test_picks_propose_what_the_reference_pick_proposes(sampler, trials):
    """Bit for bit, pick by pick: the recorded benchmark figures of the search depend on which
    recipes a seeded search proposes. The same scripted sweep (trials COMPLETE, PRUNED, FAILED
    and still RUNNING at the picks) through the searcher and through ``_ReferencePick``."""
    expected = scripted_sweep(sweep_search(sampler, trials, _ReferencePick), trials)
    got = scripted_sweep(sweep_search(sampler, trials), trials)
    # the script put every case to the test: the three ends, and picks beside running trials
    assert {"COMPLETE", "PRUNED", "FAIL"} <= set(expected["states"])
    assert sum(n >= 1 for n in expected["concurrent"]) > trials // 2
    assert max(expected["concurrent"]) >= 2
    assert len(expected["picks"]) >= trials - 8  # every trial but the grid's few is a pick
    assert len(expected["candidates"]) == 8 * len(expected["picks"])
    for i, (want, have) in enumerate(zip(expected["picks"], got["picks"], strict=True)):
        assert have == want, f"pick {i}: (alpha, costs, index) {have} != {want}"
    for i, (want, have) in enumerate(zip(expected["candidates"], got["candidates"], strict=True)):
        assert have == want, f"pick {i // 8}, candidate {i % 8}: {have} != {want}"
    assert got["configs"] == expected["configs"]
    assert got["states"] == expected["states"]
