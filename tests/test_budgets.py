"""Epoch and time budgets (``sweeps.budget``): the values taken and refused, the account and
the cost-cooled search under a budget (a real ``OptunaSearch`` and Ray Tune search generator,
no Ray cluster), and real quick sweeps that a budget ends and ``--resume`` continues."""

from __future__ import annotations

import functools
import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from ray.tune.search import Searcher, SearchGenerator

import sweeps.searcher
from sweeps.budget import EXIT_RESERVE_S, Budget, in_force, parse_duration, parse_epoch_budget
from sweeps.callbacks import BudgetStopper
from sweeps.search import make_sampler
from sweeps.searcher import ALPHA_START, BudgetedSearch, RungAwareOptunaSearch


@pytest.mark.parametrize(
    "text, seconds",
    [("90m", 5400.0), ("2h", 7200.0), ("45s", 45.0), ("600", 600.0), ("1.5h", 5400.0),
     ("1d", 86400.0), (" 30s ", 30.0)],
)  # fmt: skip
def test_durations_by_hand(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0s", "0", "1x", "", "abc", "-5m", "5 min", "31d"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="duration|more than 0"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["0", "-5", "abc", "2.5", "", "10000001"])
def test_bad_epoch_budgets_are_refused(text):
    with pytest.raises(ValueError, match="integer"):
        parse_epoch_budget(text)


def test_the_account_by_hand():
    budget = Budget(epochs=10)
    budget.start("a", 4)
    budget.start("b", 4)
    # running trials are charged in full: 8 of 10 committed
    assert budget.committed_epochs() == 8
    assert budget.fits(2) and not budget.fits(3)
    budget.report("a", 1)
    assert budget.spent_epochs() == 1 and budget.committed_epochs() == 8
    budget.end("a", 2)  # early stopping ended it after 2 of its 4 epochs: 2 come back
    assert budget.committed_epochs() == 6 and budget.fits(4) and not budget.fits(5)
    budget.report("b", 3)
    assert budget.spent_epochs() == 5
    budget.end("b")  # no count given: what it reported last
    assert budget.done == {"a": 2.0, "b": 3.0} and budget.committed_epochs() == 5
    # a resumed sweep's earlier epochs count too
    assert Budget(epochs=10, epochs_before=7).fits(3) and not Budget(
        epochs=10, epochs_before=8
    ).fits(3)
    # the share spent is the nearest limit's: trials past the 2 enqueued, epochs, seconds
    assert Budget(trials=12).spent_share(7, 2) == 0.5
    shares = Budget(trials=12, epochs=20, epochs_before=15)
    assert shares.spent_share(7, 2) == 0.75
    assert Budget(seconds=100, started=time.monotonic() - 50).spent_share() == pytest.approx(
        0.5, abs=0.01
    )


def _space(trial):
    """Recipes of 4 epochs each, whatever the sampler picks."""
    trial.suggest_float("x", 0.0, 1.0)
    return {"epochs": 4}


def _cheap_or_dear(trial):
    """A tenth of the recipes cost 1 epoch, the others 10."""
    x = trial.suggest_float("x", 0.0, 1.0)
    return {"epochs": 1 if x < 0.1 else 10}


def _search(
    sampler: str = "tpe", cost_aware: bool = True, space=_space, seed: int = 0
) -> RungAwareOptunaSearch:
    factory = functools.partial(make_sampler, sampler, num_samples=100_000, n_objectives=2)
    return RungAwareOptunaSearch(
        space, metric=["acc", "params"], mode=["max", "min"], sampler=factory(seed),
        cost=lambda recipe: recipe["epochs"], cost_aware=cost_aware, sampler_factory=factory,
        budget=100_000, pick_seed=seed,
    )  # fmt: skip


@pytest.mark.parametrize("sampler, cost_aware", [("tpe", True), ("random", False)])
def test_a_trial_starts_only_if_it_fits(sampler, cost_aware):
    search = _search(sampler, cost_aware)
    with in_force(Budget(epochs=6)) as budget:
        assert isinstance(search.suggest("t0"), dict)  # 4 of 6 committed
        assert budget.running == {"t0": 4.0}
        # another 4 would make 8: wait (None) while t0 runs, it may give epochs back
        assert search.suggest("t1") is None
        search.on_trial_result("t0", {"epochs_run": 1.0, "acc": 0.5, "params": 1.0})
        search.on_trial_complete("t0", {"epochs_run": 1.0, "acc": 0.5, "params": 1.0})
        # stopped after 1 epoch: 1 + 4 fit in 6
        assert isinstance(search.suggest("t1"), dict)
        assert budget.committed_epochs() == 5
        assert search.suggest("t2") is None  # 9 > 6 while t1 runs
        search.on_trial_complete("t1", {"epochs_run": 4.0, "acc": 0.6, "params": 1.0})
        # nothing fits (5 + 4 > 6) and nothing runs: the search is over, ended by epochs
        assert search.suggest("t3") == Searcher.FINISHED
        assert budget.exhausted == "epochs" and budget.spent_epochs() == 5
    # the study holds only the two trials that ran
    assert len(search.study.get_trials(deepcopy=False)) == 2


@pytest.mark.parametrize("seed", [0, 4, 5])
def test_the_last_epochs_go_to_a_cheap_recipe_the_first_proposals_missed(seed, monkeypatch):
    # these seeds' first 8 proposals all cost 10 epochs: with one round of proposals (as the
    # pick was) the search ended with the 3 epochs of the budget unspent
    monkeypatch.setattr(sweeps.searcher, "FIT_ROUNDS", 1)
    with in_force(Budget(epochs=3)) as budget:
        assert _search(space=_cheap_or_dear, seed=seed).suggest("t0") == Searcher.FINISHED
        assert budget.exhausted == "epochs"
    monkeypatch.undo()
    # more rounds while none fits: a recipe of 1 epoch is found and starts
    with in_force(Budget(epochs=3)) as budget:
        config = _search(space=_cheap_or_dear, seed=seed).suggest("t0")
        assert isinstance(config, dict) and config["x"] < 0.1
        assert budget.running == {"t0": 1.0} and not budget.exhausted


def test_cost_cooling_follows_the_epochs_committed():
    search = _search()
    with in_force(Budget(epochs=100)):
        for i in range(5):
            search.suggest(f"t{i}")
            search.on_trial_complete(f"t{i}", {"epochs_run": 4.0, "acc": 0.5, "params": 1.0})
    # the pick before trial i saw 4 * i of 100 epochs committed: alpha = 2 * (1 - 4i/100)
    assert [a for a, _, _ in search.picks] == pytest.approx(
        [ALPHA_START * (1 - 4 * i / 100) for i in range(5)]
    )


def test_the_deadline_ends_the_search_and_fails_the_running_trials():
    search = _search()
    generator = BudgetedSearch(search)
    with in_force(Budget(seconds=3600)) as budget:
        config = generator.searcher.suggest("t0")
        assert isinstance(config, dict) and budget.running == {"t0": 4.0}
        stopper = BudgetStopper()
        assert not stopper.stop_all()
        budget.started -= 3600  # the hour is up
        assert stopper.stop_all() and budget.exhausted == "time"
        generator.set_finished()  # what Ray Tune calls when a stopper stops everything
        assert budget.cut_short == {"t0"} and not budget.running
        assert generator.searcher.suggest("t1") == Searcher.FINISHED
    # Optuna learns nothing from a recipe the clock cut short: FAILED, not COMPLETE
    states = [t.state.name for t in search.study.get_trials(deepcopy=False)]
    assert states == ["FAIL"]
    assert generator.is_finished()


def test_a_resumed_search_takes_the_new_budget_not_the_saved_end():
    generator = BudgetedSearch(_search())
    saved = {"counter": 7, "total_samples": 7, "finished": True, "experiment": None}
    with in_force(Budget(trials=12)):
        generator.set_state(saved)
        assert not generator.is_finished() and generator.total_samples == 12
    plain = SearchGenerator(_search())
    plain.set_state(saved)
    assert plain.is_finished()  # Ray Tune's own would stay over


# --- real sweeps --------------------------------------------------------------------------------


def _argv(tmp_path, *extra: str) -> list[str]:
    return [
        "--quick", "--model", "cnn", "--baseline-epochs", "2",
        "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--experiment", "budget",
        "--cache-dir", str(tmp_path / "baselines"), "--storage-path", str(tmp_path / "ray"),
        "--results-dir", str(tmp_path / "results"), "--seed", "0", *extra,
    ]  # fmt: skip


def _sweep(tmp_path):
    """(parent run, child runs frame) of the one sweep in the test's store."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["budget"])
    if "tags.mlflow.parentRunId" not in runs:  # no child run at all
        runs["tags.mlflow.parentRunId"] = None
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    assert len(parents) == 1
    parent = MlflowClient(uri).get_run(parents.iloc[0]["run_id"])
    return parent, runs[runs["tags.mlflow.parentRunId"].notna()]


@pytest.mark.slow
def test_an_epoch_budget_ends_the_sweep_and_resume_continues_it(tmp_path, ray_tmpdir, capsys):
    from sweeps.mnist_finetune import STUDY
    from sweeps.runner import main

    assert main(STUDY, _argv(tmp_path, "--epoch-budget", "10")) == 0
    parent, children = _sweep(tmp_path)
    spent = children["metrics.epochs_run"].fillna(0).sum()
    assert parent.data.tags["budget_exhausted"] == "epochs"
    assert parent.data.metrics["epochs_spent"] == spent
    # never more than the budget, and within one trial's cost of it
    assert spent <= 10
    assert 10 - spent < max(4.0, children["metrics.epochs_run"].max())
    assert (children["status"] != "RUNNING").all()
    name = parent.data.tags["sweep"]
    capsys.readouterr()

    # a budget below what was spent: one line, exit 2, nothing run
    assert main(STUDY, ["--resume", name, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                        "--epoch-budget", "5"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--epoch-budget 5" in err[0] and f"spent {spent:g}" in err[0]
    again, same = _sweep(tmp_path)
    assert again.info.status == "FINISHED" and len(same) == len(children)

    # a larger one continues the search up to the new total
    assert main(STUDY, ["--resume", name, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                        "--epoch-budget", "16"]) == 0  # fmt: skip
    parent, more = _sweep(tmp_path)
    assert len(more) > len(children)
    assert spent < more["metrics.epochs_run"].fillna(0).sum() <= 16
    assert parent.info.status == "FINISHED"


@pytest.mark.slow
def test_a_time_budget_stops_the_trials_and_a_resume_gets_its_own(tmp_path, ray_tmpdir, capsys):
    from sweeps.mnist_finetune import STUDY
    from sweeps.runner import main

    started = time.monotonic()
    assert main(STUDY, _argv(tmp_path, "--time-budget", "25s")) == 0
    parent, children = _sweep(tmp_path)
    assert parent.data.tags["budget_exhausted"] == "time"
    assert parent.data.metrics["time_budget_left_s"] == 0
    # nothing left RUNNING; what the deadline cut short is KILLED and says why
    assert set(children["status"]) <= {"FINISHED", "KILLED"}
    cut = children[children["tags.budget_exhausted"].notna()]
    assert (cut["status"] == "KILLED").all()
    assert (children["status"] == "FINISHED").sum() >= 1
    # the trials ran until the deadline, less the exit reserve of a command that starts its Ray
    assert time.monotonic() - started >= 25 - EXIT_RESERVE_S
    name = parent.data.tags["sweep"]
    capsys.readouterr()

    # the budget is spent: --resume needs a new one
    uri = ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    assert main(STUDY, ["--resume", name, *uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "spent its time budget" in err[0]

    resumed = time.monotonic()
    assert main(STUDY, ["--resume", name, *uri, "--time-budget", "25s"]) == 0
    parent, more = _sweep(tmp_path)
    assert len(more) > len(children)
    assert set(more["status"]) <= {"FINISHED", "KILLED"}
    # this command's trials stopped at its own 25 s: what it spent is that and the analysis
    assert parent.data.metrics["seconds_spent"] <= time.monotonic() - resumed
    assert parent.data.tags["budget_exhausted"] == "time"


@pytest.mark.slow
def test_a_time_budget_spent_before_the_first_trial_says_so(tmp_path, ray_tmpdir, capsys):
    from sweeps.mnist_finetune import STUDY
    from sweeps.runner import main

    # the imports are not this in-process command's, but Ray's start and the data are: 1 s is
    # spent before Ray Tune would start, so it is not started (it raced its own first save)
    assert main(STUDY, _argv(tmp_path, "--time-budget", "1s")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "ERROR" not in err
    assert err.strip().splitlines()[-1].startswith("no trial finished within the time budget")
    parent, children = _sweep(tmp_path)
    assert parent.data.tags["budget_exhausted"] == "time" and len(children) == 0
    assert not (tmp_path / "ray" / parent.data.tags["sweep"]).exists()
