"""Search spaces and grids, with Optuna alone (no Ray): every sampled recipe is a valid PruneConfig
whose parameters appear exactly when their condition holds and stay in their documented ranges;
target sparsity is drawn on a log-density scale."""

from __future__ import annotations

import dataclasses
import math
import pickle
import warnings

import optuna
import pytest

import search_spaces
from prune_core.config import RETRAIN_MODES, PruneConfig
from prune_core.models import build_model
from prune_core.pruning import PRUNING_METHODS, prunable_targets
from search_spaces import (
    GRIDS,
    RECIPE_KEYS,
    REWIND_EPOCHS,
    SEARCH_KEYS,
    SPACES,
    get_grid,
    get_space,
    log_density_of,
    target_from_log_density,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

N_SAMPLES = 300
SPACE_NAMES = ("resnet18_iterative", "unstructured", "structured", "full")
NM_M = {2: 4, 1: 4, 4: 8}  # the patterns 2:4, 1:4, 4:8 by their N


def sample(name: str, quick: bool, n: int = N_SAMPLES, sampler=None):
    """(params, constants, recipe) for ``n`` trials of space ``name``."""
    study = optuna.create_study(sampler=sampler or optuna.samplers.RandomSampler(seed=0))
    space = get_space(name, quick=quick)
    out = []
    for _ in range(n):
        trial = study.ask()
        constants = space(trial)
        study.tell(trial, 0.0)
        assert isinstance(constants, dict)
        out.append((dict(trial.params), constants, {**trial.params, **constants}))
    return out


@pytest.fixture(scope="module")
def samples():
    return {(n, q): sample(n, q) for n in SPACE_NAMES for q in (False, True)}


def prune_config(recipe: dict) -> PruneConfig:
    """The recipe's PruneConfig (the sampler's own keys, e.g. log_density, left out)."""
    return PruneConfig.from_recipe(recipe)


def check_target(params: dict, recipe: dict, low: float, high: float) -> None:
    """target_sparsity is the constant that the suggested log_density gives: 1 - density, the
    density rounded to two significant digits, within [low, high]."""
    log_density = params["log_density"]
    assert math.log10(1 - high) - 1e-12 <= log_density <= math.log10(1 - low) + 1e-12
    density = float(f"{10**log_density:.2g}")
    assert recipe["target_sparsity"] == pytest.approx(1 - density, abs=1e-9)
    assert low - 1e-9 <= recipe["target_sparsity"] <= high + 1e-9
    assert "target_sparsity" not in params


# -------------------------------------------------------------------------------------------------
# Expected behaviour of each space, written out from the spec (not read from the module)
# -------------------------------------------------------------------------------------------------


def check_common(recipe: dict, quick: bool) -> None:
    """Rules shared by unstructured, structured and full."""
    it_high = 3 if quick else 5
    ft_high = 2 if quick else 5
    if recipe["method"] == "nm":
        assert recipe["schedule"] == "oneshot" and "iterations" not in recipe
        assert recipe["nm_m"] == NM_M[recipe["nm_n"]]
        assert recipe["target_sparsity"] == pytest.approx(1 - recipe["nm_n"] / recipe["nm_m"])
    else:
        assert "nm_n" not in recipe and "nm_m" not in recipe
        # iterations exactly for iterative and gradual
        assert ("iterations" in recipe) == (recipe["schedule"] in ("iterative", "gradual"))
        if "iterations" in recipe:
            assert 2 <= recipe["iterations"] <= it_high
    if recipe["method"] == "ln_structured":
        assert recipe["norm"] in (1, 2) and recipe["scope"] in ("layer", "global")
        if recipe.get("remove_channels"):
            assert recipe["scope"] == "layer" and recipe["include_bias"] is True
            assert recipe.get("retrain", "finetune") != "weight_rewind"
    else:
        assert not {"norm", "scope", "remove_channels"} & set(recipe)
    if recipe.get("retrain", "finetune") == "finetune":
        assert 1 <= recipe["finetune_epochs"] <= ft_high
        assert 1e-4 <= recipe["lr"] <= 1e-1
        assert "rewind_epoch" not in recipe
    else:  # rewinding replays the dense schedule: fine-tune epochs and lr would be dead params
        assert "finetune_epochs" not in recipe and "lr" not in recipe
        allowed = REWIND_EPOCHS if recipe["retrain"] == "weight_rewind" else (1, 2)
        assert recipe["rewind_epoch"] in allowed


def check_resnet18_iterative(params, constants, recipe, quick):
    check_target(params, recipe, 0.3, 0.99)
    assert 1 <= recipe["finetune_epochs"] <= (2 if quick else 5)
    assert 1e-3 <= recipe["lr"] <= 1e-1
    # iterations is suggested only for the iterative schedule; one-shot is the constant 1
    target = {"target_sparsity": recipe["target_sparsity"]}
    if recipe["schedule"] == "iterative":
        assert set(params) == {"log_density", "schedule", "iterations", "finetune_epochs", "lr"}
        assert 2 <= recipe["iterations"] <= (3 if quick else 5)
        assert constants == {"method": "global_magnitude", **target}
    else:
        assert set(params) == {"log_density", "schedule", "finetune_epochs", "lr"}
        assert constants == {"method": "global_magnitude", "iterations": 1, **target}


def check_unstructured(params, constants, recipe, quick):
    assert recipe["method"] in ("l1_unstructured", "global_magnitude", "random_unstructured")
    check_target(params, recipe, 0.3, 0.99)
    assert recipe["retrain"] in ("finetune", "weight_rewind", "lr_rewind")
    assert isinstance(recipe["include_bias"], bool)
    # no unstructured method protects the classifier itself: the choice is always offered
    assert isinstance(params["exclude_last"], bool)
    assert constants == {"target_sparsity": recipe["target_sparsity"]}
    check_common(recipe, quick)


def check_structured(params, constants, recipe, quick):
    assert recipe["method"] in ("ln_structured", "l1_unstructured", "random_unstructured", "nm")
    assert "retrain" not in recipe  # plain fine-tuning only
    if recipe["method"] != "nm":
        check_target(params, recipe, 0.1, 0.9)
        assert "schedule" in params
    else:  # constants, not suggestions
        assert not {"log_density", "target_sparsity", "schedule", "nm_m"} & set(params)
    # include_bias only as the constant that channel removal needs
    assert ("include_bias" in recipe) == bool(recipe.get("remove_channels"))
    assert "exclude_last" not in recipe  # whole filters: ln_structured keeps the output layer

    if recipe["method"] == "ln_structured":
        assert ("remove_channels" in recipe) == (recipe["scope"] == "layer")
    check_common(recipe, quick)


def check_full(params, constants, recipe, quick):
    assert recipe["method"] in PRUNING_METHODS
    assert recipe["retrain"] in ("finetune", "weight_rewind", "lr_rewind")
    if recipe["method"] == "ln_structured":
        check_target(params, recipe, 0.1, 0.9)
        removable = recipe["scope"] == "layer" and recipe["retrain"] != "weight_rewind"
        assert ("remove_channels" in recipe) == removable
        assert "include_bias" in recipe
    elif recipe["method"] == "nm":
        assert "include_bias" not in recipe  # N:M never prunes biases
    else:
        check_target(params, recipe, 0.3, 0.99)
        assert isinstance(recipe["include_bias"], bool)
    # ln_structured never prunes the classifier, so keeping it dense is no choice there
    assert ("exclude_last" in params) == (recipe["method"] != "ln_structured")
    check_common(recipe, quick)


CHECKS = {
    "resnet18_iterative": check_resnet18_iterative,
    "unstructured": check_unstructured,
    "structured": check_structured,
    "full": check_full,
}

# every value each discrete parameter must take at least once over the samples (full budgets;
# quick caps iterations at 3 and finetune_epochs at 2)
EXPECTED_VALUES = {
    "resnet18_iterative": {
        "iterations": {1, 2, 3, 4, 5},
        "finetune_epochs": {1, 2, 3, 4, 5},
        "schedule": {"oneshot", "iterative"},
    },
    "unstructured": {
        "method": {"l1_unstructured", "global_magnitude", "random_unstructured"},
        "schedule": {"oneshot", "iterative", "gradual"},
        "iterations": {2, 3, 4, 5},
        "finetune_epochs": {1, 2, 3, 4, 5},
        "retrain": {"finetune", "weight_rewind", "lr_rewind"},
        "rewind_epoch": set(REWIND_EPOCHS),
        "include_bias": {False, True},
        "exclude_last": {False, True},
    },
    "structured": {
        "method": {"ln_structured", "l1_unstructured", "random_unstructured", "nm"},
        "schedule": {"oneshot", "iterative", "gradual"},
        "iterations": {2, 3, 4, 5},
        "finetune_epochs": {1, 2, 3, 4, 5},
        "norm": {1, 2},
        "scope": {"layer", "global"},
        "remove_channels": {False, True},
        "nm_n": {1, 2, 4},
        "nm_m": {4, 8},
        "include_bias": {True},
    },
    "full": {
        "method": set(PRUNING_METHODS.names()),
        "schedule": {"oneshot", "iterative", "gradual"},
        "iterations": {2, 3, 4, 5},
        "finetune_epochs": {1, 2, 3, 4, 5},
        "retrain": {"finetune", "weight_rewind", "lr_rewind"},
        "rewind_epoch": set(REWIND_EPOCHS),
        "norm": {1, 2},
        "scope": {"layer", "global"},
        "remove_channels": {False, True},
        "nm_n": {1, 2, 4},
        "include_bias": {False, True},
        "exclude_last": {False, True},
    },
}


def test_registered_spaces():
    assert set(SPACES.names()) == set(SPACE_NAMES)


def test_recipe_keys_are_prune_config_fields_and_method_options():
    fields = {f.name for f in dataclasses.fields(PruneConfig)} - {"options"}
    options = {"norm", "scope", "nm_n", "nm_m"}  # ln_structured's and nm's, from their entries
    # exclude_first stays out (never varied); exclude_last is a recipe key (spaces suggest it)
    assert set(RECIPE_KEYS) == (fields - {"exclude_first"}) | options
    assert len(RECIPE_KEYS) == len(set(RECIPE_KEYS)) == 16


def test_full_space_covers_every_registered_method():
    # a newly registered pruning method must be added to the full space on purpose
    assert set(search_spaces.FULL_METHODS) == set(PRUNING_METHODS.names())


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("name", SPACE_NAMES)
def test_space_samples_are_valid_recipes(samples, name, quick):
    for params, constants, recipe in samples[(name, quick)]:
        assert set(recipe) <= set(RECIPE_KEYS) | set(SEARCH_KEYS), recipe
        assert not set(params) & set(constants), (params, constants)  # no silent override
        CHECKS[name](params, constants, recipe, quick)
        cfg = prune_config(recipe)  # raises if any cross-field rule is broken
        for key, value in recipe.items():
            if key in RECIPE_KEYS:
                assert getattr(cfg, key) == value


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("name", SPACE_NAMES)
def test_space_covers_every_choice(samples, name, quick):
    seen: dict[str, set] = {}
    for _, _, recipe in samples[(name, quick)]:
        for key, value in recipe.items():
            seen.setdefault(key, set()).add(value)
    for key, expected in EXPECTED_VALUES[name].items():
        if quick and key == "iterations":
            expected = {v for v in expected if v <= 3}
        if quick and key == "finetune_epochs":
            expected = {v for v in expected if v <= 2}
        assert seen[key] == expected, key
    if name != "resnet18_iterative":
        rewind = {}
        for _, _, recipe in samples[(name, quick)]:
            if "rewind_epoch" in recipe:
                rewind.setdefault(recipe["retrain"], set()).add(recipe["rewind_epoch"])
        if name == "structured":
            assert rewind == {}
        else:
            assert rewind == {"weight_rewind": set(REWIND_EPOCHS), "lr_rewind": {1, 2}}


def test_quick_narrows_budgets(samples):
    for name in SPACE_NAMES:
        full_max = max(r.get("finetune_epochs", 0) for _, _, r in samples[(name, False)])
        quick_max = max(r.get("finetune_epochs", 0) for _, _, r in samples[(name, True)])
        assert (full_max, quick_max) == (5, 2), name
        assert max(r.get("iterations", 1) for _, _, r in samples[(name, True)]) == 3, name


def test_tpe_sampler_keeps_ranges_across_branches():
    # TPE (OptunaSearch's sampler) models each name over every trial that has it; target_sparsity
    # and rewind_epoch have different ranges per branch, which Optuna must accept and respect
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=10, multivariate=True)
    for params, constants, recipe in sample("full", quick=True, n=80, sampler=sampler):
        check_full(params, constants, recipe, quick=True)
        prune_config(recipe)


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_space_pickles(name):
    space = pickle.loads(pickle.dumps(get_space(name, quick=True)))
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    space(trial)
    assert trial.params  # the unpickled space still suggests
    assert get_space(name, quick=True).keywords == {"quick": True}


@pytest.mark.parametrize("name", ["unstructured", "full"])
def test_space_without_rewinding_only_fine_tunes(name):
    # a checkpoint baseline has no dense training to rewind into (python -m sweeps
    # --init-checkpoint); with rewinding the same sampler proposes all three modes
    for rewinding, modes in ((False, {"finetune"}), (True, set(RETRAIN_MODES))):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        space = get_space(name, quick=True, rewinding=rewinding)
        seen = set()
        for _ in range(60):
            trial = study.ask()
            space(trial)
            seen.add(trial.params["retrain"])
        assert seen == modes
    assert get_space(name, rewinding=False).keywords == {"quick": False, "rewinding": False}


def test_unknown_space_lists_names():
    with pytest.raises(KeyError, match="unstructured"):
        get_space("nope")


# -------------------------------------------------------------------------------------------------
# Grids
# -------------------------------------------------------------------------------------------------

GRID_COUNTS = {
    "mnist_cnn_l1": 1,
    "mnist_magnitude_vs_structured": 8,
    "mnist_finetune": 6,
    "mnist_han": 1,
    "cifar_cnn_structured": 5,
    "resnet18_iterative": 12,
}


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("name", sorted(GRID_COUNTS))
def test_grid_recipes_are_valid(name, quick):
    recipes = get_grid(name, quick=quick)
    assert len(recipes) == GRID_COUNTS[name]
    for recipe in recipes:
        assert set(recipe) <= set(RECIPE_KEYS)
        assert {"method", "target_sparsity", "schedule", "iterations", "finetune_epochs"} <= set(
            recipe
        )
        assert ("lr" in recipe) == (recipe["finetune_epochs"] > 0)
        PruneConfig(**recipe)
    # distinct recipes, and a fresh copy every call
    assert len({tuple(sorted(r.items())) for r in recipes}) == len(recipes)
    recipes[0]["method"] = "changed"
    assert get_grid(name, quick=quick)[0]["method"] != "changed"


def test_registered_grids():
    assert set(GRIDS.names()) == set(GRID_COUNTS)


def test_mnist_cnn_l1_grid():
    assert get_grid("mnist_cnn_l1") == [
        {
            "method": "l1_unstructured",
            "target_sparsity": 0.5,
            "schedule": "oneshot",
            "iterations": 1,
            "finetune_epochs": 0,
            "include_bias": True,
        }
    ]


def test_magnitude_vs_structured_grid():
    recipes = get_grid("mnist_magnitude_vs_structured")
    pairs = {(r["method"], r["target_sparsity"]) for r in recipes}
    assert pairs == {
        (m, a) for m in ("l1_unstructured", "ln_structured") for a in (0.3, 0.5, 0.7, 0.9)
    }
    for r in recipes:
        assert r["schedule"] == "oneshot" and r["finetune_epochs"] == 0
        if r["method"] == "ln_structured":
            assert (r["norm"], r["scope"]) == (2, "layer")


@pytest.mark.parametrize("quick, epochs, lr", [(False, 2, 1e-3), (True, 1, 0.01)])
def test_mnist_finetune_grid(quick, epochs, lr):
    recipes = get_grid("mnist_finetune", quick=quick)
    # the study's five rates prune every layer; the sixth keeps the output layer dense at 99%
    assert [(r["target_sparsity"], r.get("exclude_last", False)) for r in recipes] == [
        (0.3, False), (0.5, False), (0.7, False), (0.9, False), (0.99, False), (0.99, True),
    ]  # fmt: skip
    for r in recipes:
        assert r["method"] == "global_magnitude" and r["schedule"] == "oneshot"
        # Adam at 1e-3 (0.01 undid the dense model in the first fine-tune epoch on real MNIST);
        # --quick's one digits epoch (23 steps) needs 0.01 to recover
        assert r["finetune_epochs"] == epochs and r["lr"] == lr
    # the protected recipe is the 99% protocol recipe plus exclude_last, nothing else
    assert recipes[5] == {**recipes[4], "exclude_last": True}


def _hash(recipe: dict) -> str:
    from prune_core.config import ExperimentConfig

    return ExperimentConfig(prune=PruneConfig.from_recipe(recipe)).short_hash()


def test_exclude_last_as_a_recipe_key_keeps_existing_hashes():
    # recipes written before exclude_last became a recipe key hash as they did (the values
    # were computed by the code before that change), and spelling out the default is the same
    # recipe; only exclude_last=True is a new recipe
    before = {
        "mnist_cnn_l1": "bfa4ca3006",
        "mnist_magnitude_vs_structured": "074c46c451",
        "resnet18_iterative": "b6d005b0dc",
    }
    for name, expected in before.items():
        recipe = get_grid(name)[0]
        assert _hash(recipe) == _hash({**recipe, "exclude_last": False}) == expected, name
        assert _hash({**recipe, "exclude_last": True}) != expected
    fine = get_grid("mnist_finetune")
    assert _hash(fine[4]) != _hash(fine[5])  # the two 99% rows are two configs


def test_protected_and_han_recipes_are_points_of_the_unstructured_space():
    # the search can propose them: each is exactly what some suggestions of the space give
    from search_spaces.grids import HAN_MLP_RECIPE
    from sweeps.search import as_point

    space = get_space("unstructured")
    for recipe in (get_grid("mnist_finetune")[5], HAN_MLP_RECIPE):
        point = as_point(recipe, space)
        assert point is not None, recipe
        assert point["exclude_last"] is recipe.get("exclude_last", False)
        assert (
            target_from_log_density(point["log_density"], (0.3, 0.99))
            == (recipe["target_sparsity"])
        )
    assert HAN_MLP_RECIPE["target_sparsity"] == 0.92


def test_cifar_grid_prunes_the_first_conv():
    for image_size, channels in ((32, 3), (8, 1)):  # CIFAR-10 and the offline digits
        model = build_model("cifar_cnn", channels, 10, image_size)
        first = prunable_targets(model)[0]
        assert first.path == search_spaces.grids.CIFAR_CNN_FIRST_CONV + ".weight"
        assert first.module is next(m for m in model.modules() if hasattr(m, "kernel_size"))
    recipes = get_grid("cifar_cnn_structured")
    assert all(r["target_sparsity"] == 0.4 and r["finetune_epochs"] == 0 for r in recipes)
    study = recipes[0]
    assert (study["method"], study["norm"], study["layers"]) == ("ln_structured", 1, ("0",))
    on_first = [r for r in recipes if r.get("layers") == ("0",)]
    assert {r["method"] for r in on_first} == {
        "ln_structured",
        "l1_unstructured",
        "random_unstructured",
    }
    assert {r["norm"] for r in on_first if r["method"] == "ln_structured"} == {1, 2}
    # global magnitude over every layer (on one tensor it would repeat l1_unstructured)
    assert [r.get("layers", ()) for r in recipes if r["method"] == "global_magnitude"] == [()]


@pytest.mark.parametrize("quick", [False, True])
def test_resnet18_grid_matches_study(quick):
    recipes = get_grid("resnet18_iterative", quick=quick)
    names = set()
    for r in recipes:
        assert (r["method"], r["lr"]) == ("global_magnitude", 0.01)
        suffix = f"{r['schedule']}{r['finetune_epochs']}"
        if r["schedule"] != "oneshot":
            suffix += f"_{r['iterations']}"
        else:
            assert r["iterations"] == 1
        names.add(f"resnet18_prune_{round(100 * r['target_sparsity'])}perc_{suffix}")
    assert names == {
        f"resnet18_prune_{p}perc_{s}"
        for p in (50, 75, 90)
        for s in ("oneshot3", "oneshot5", "iterative3_3", "iterative3_5")
    }
    assert {r["target_sparsity"] for r in recipes} == {0.5, 0.75, 0.9}


# -------------------------------------------------------------------------------------------------
# Target sparsity on a log-density scale
# -------------------------------------------------------------------------------------------------


def test_target_from_log_density_hand_computed():
    bounds = (0.3, 0.99)
    assert target_from_log_density(math.log10(0.0123), bounds) == 0.988  # density 0.012
    assert target_from_log_density(math.log10(0.457), bounds) == 0.54  # density 0.46
    assert target_from_log_density(-2.0, bounds) == 0.99
    assert target_from_log_density(math.log10(0.7), bounds) == 0.3
    # rounding never leaves the bounds
    assert target_from_log_density(-2.5, bounds) == 0.99
    assert target_from_log_density(math.log10(0.7049), (0.3, 0.99)) == 0.3
    # the grids' sparsities come back exactly from their log-density (enqueued recipes)
    for sparsity in (0.3, 0.5, 0.7, 0.75, 0.9, 0.99):
        assert target_from_log_density(log_density_of(sparsity), bounds) == sparsity
    assert target_from_log_density(log_density_of(0.4), (0.1, 0.9)) == 0.4


def test_each_decade_of_density_gets_the_same_share(samples):
    # log_density uniform in [-2, log10(0.7)]: density in [0.01, 0.1] (sparsity 0.9-0.99) is one
    # decade of 1.845, 54% of the trials, where a uniform sparsity in [0.3, 0.99] put 13%
    targets = [r["target_sparsity"] for _, _, r in samples[("unstructured", False)]]
    share = sum(t >= 0.9 for t in targets) / len(targets)
    expected = 1 / (math.log10(0.7) + 2)
    assert expected == pytest.approx(0.542, abs=1e-3)
    assert abs(share - expected) < 0.08  # 300 random draws: 2.8 standard deviations
    assert min(targets) >= 0.3 and max(targets) <= 0.99
    assert any(0.98 < t < 0.99 for t in targets)  # the resolution near 0.99 is 0.001


# -------------------------------------------------------------------------------------------------
# Samplers and the grid as first trials (sweeps.search)
# -------------------------------------------------------------------------------------------------


def test_default_sampler_and_budget_rules():
    from sweeps.search import default_sampler, population_size, startup_trials

    assert [default_sampler(n) for n in (6, 16, 249, 250, 1000)] == [
        "tpe", "tpe", "tpe", "nsga2", "nsga2",
    ]  # fmt: skip
    # a quarter of the budget, 2..10
    assert [startup_trials(n) for n in (1, 6, 16, 40, 100)] == [2, 2, 4, 10, 10]
    # after the study's grid recipes, 2 whatever the budget
    assert [startup_trials(n, 5) for n in (1, 6, 16, 40, 100)] == [2, 2, 2, 2, 2]
    assert startup_trials(40, 0) == 10
    # a fifth of the budget, 4..50
    assert [population_size(n) for n in (6, 16, 100, 1000)] == [4, 4, 20, 50]


def test_make_sampler_types_and_settings():
    from sweeps.search import make_sampler

    tpe = make_sampler("tpe", 0, 16, 2)
    assert isinstance(tpe, optuna.samplers.TPESampler)
    assert (tpe._multivariate, tpe._group, tpe._constant_liar) == (True, True, True)
    assert tpe._n_startup_trials == 4
    # a quarter of the finished trials are TPE's good ones (Optuna's default: a tenth), <= 25
    assert [tpe._gamma(n) for n in (4, 10, 20, 36, 100, 200)] == [1, 3, 5, 9, 25, 25]
    # the study's grid recipes run first and are not random exploration: 5 enqueued + 2 random
    assert make_sampler("tpe", 0, 16, 2, enqueued=5)._n_startup_trials == 7
    assert make_sampler("gp", 0, 36, 2, enqueued=5)._n_startup_trials == 7
    nsga2 = make_sampler("nsga2", 0, 300, 3)
    assert isinstance(nsga2, optuna.samplers.NSGAIISampler) and nsga2._population_size == 50
    gp = make_sampler("gp", 0, 16, 2)  # multi-objective GP: Optuna >= 4.4
    assert isinstance(gp, optuna.samplers.GPSampler) and gp._n_startup_trials == 4
    assert type(make_sampler("random", 0, 16, 2)) is optuna.samplers.RandomSampler


def _first_params(sampler, n=3):
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    space = get_space("unstructured", quick=True)
    out = []
    for i in range(n):
        trial = study.ask()
        space(trial)
        study.tell(trial, [0.5 + 0.1 * i, 100.0 - i])
        out.append(trial.params)
    return out


@pytest.mark.parametrize("name", ["tpe", "random", "nsga2", "gp"])
def test_make_sampler_is_seeded(name):
    from sweeps.search import make_sampler

    first = _first_params(make_sampler(name, 0, 16, 2))
    assert _first_params(make_sampler(name, 0, 16, 2)) == first
    assert _first_params(make_sampler(name, 1, 16, 2)) != first


def test_make_sampler_errors(monkeypatch):
    import sweeps.search
    from sweeps.search import make_sampler

    with pytest.raises(ValueError, match=r"^sampler 'nope' is unknown; choose from: tpe, random, "
                       r"nsga2, gp$"):  # fmt: skip
        make_sampler("nope", 0, 16, 2)
    with pytest.raises(ValueError, match=r"^num_samples 0: must be an integer >= 1$"):
        make_sampler("tpe", 0, 0, 2)
    with pytest.raises(ValueError, match=r"^n_objectives 0: must be an integer >= 1$"):
        make_sampler("tpe", 0, 16, 0)
    # an Optuna whose GPSampler has one objective only
    monkeypatch.setattr(sweeps.search, "_optuna_version", lambda: (4, 3))
    with pytest.raises(ValueError, match=r"^sampler 'gp': Optuna .* one objective only"):
        make_sampler("gp", 0, 16, 2)
    assert isinstance(make_sampler("gp", 0, 16, 1), optuna.samplers.GPSampler)


def test_grid_points_are_the_grid_recipes_the_space_can_propose():
    from sweeps.search import grid_points

    points = grid_points("mnist_finetune", True, "unstructured")
    assert points[0] == {
        "method": "global_magnitude", "log_density": math.log10(0.7), "schedule": "oneshot",
        "retrain": "finetune", "finetune_epochs": 1, "lr": 0.01, "include_bias": False,
        "exclude_last": False,
    }  # fmt: skip
    targets = [target_from_log_density(p["log_density"], (0.3, 0.99)) for p in points]
    assert targets == [0.3, 0.5, 0.7, 0.9, 0.99, 0.99]
    assert [p["exclude_last"] for p in points] == [False] * 5 + [True]
    # the ResNet-18 space suggests fewer keys (method and iterations are its constants) and
    # never keeps the output layer dense: the protected recipe is not one of its points
    resnet = grid_points("mnist_finetune", True, "resnet18_iterative")
    assert resnet[0] == {
        "log_density": math.log10(0.7), "schedule": "oneshot", "finetune_epochs": 1, "lr": 0.01,
    }  # fmt: skip
    assert len(resnet) == 5
    # no fine-tuning (finetune_epochs 0) is outside every space's 1..5: no points
    assert grid_points("mnist_cnn_l1", False, "unstructured") == []
    # the study's 3 and 5 fine-tune epochs exceed --quick's 1..2; the full space holds all 12
    assert grid_points("resnet18_iterative", True, "resnet18_iterative") == []
    full = grid_points("resnet18_iterative", False, "resnet18_iterative")
    assert len(full) == 12
    picked = grid_points("resnet18_iterative", False, "resnet18_iterative", limit=3)
    assert picked == [full[0], full[6], full[11]]  # spread over the grid
    two = grid_points("mnist_finetune", True, "unstructured", models=("mlp", "cnn"))
    assert [p["model"] for p in two[:4]] == ["mlp", "cnn", "mlp", "cnn"] and len(two) == 12


def test_optuna_search_takes_the_sampler_and_runs_the_grid_first():
    # Ray Tune's OptunaSearch with a define-by-run space (no Ray cluster needed to suggest)
    from ray.tune.search.optuna import OptunaSearch

    from sweeps.search import grid_points, make_sampler

    points = grid_points("mnist_finetune", True, "unstructured")
    search = OptunaSearch(
        get_space("unstructured", quick=True),
        metric=["test_accuracy", "nonzero_params"],
        mode=["max", "min"],
        sampler=make_sampler("tpe", 0, 8, 2),
        points_to_evaluate=points,
    )
    configs = [search.suggest(f"t{i}") for i in range(len(points) + 1)]
    grid = get_grid("mnist_finetune", quick=True)
    for config, recipe in zip(configs[:-1], grid, strict=True):
        assert prune_config(config) == prune_config(recipe)
        assert config["target_sparsity"] == recipe["target_sparsity"]
    assert configs[-1]["log_density"] not in [p["log_density"] for p in points]  # sampled
