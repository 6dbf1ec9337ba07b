"""MO-ASHA without training: synthetic trials with scripted rung values are continued or stopped
exactly as non-dominated sorting (then crowding distance) says, worked out by hand below: two
and three objectives, ties, a trial missing a value at a rung, eta 3 and 2, the final rung, and
the Ray Tune scheduler interface with minimal fake trials (no Ray cluster)."""

from __future__ import annotations

import math
import pickle
from types import SimpleNamespace

import pytest

from sweeps.scheduler import MOASHARungs, MOASHAScheduler

ACC_PARAMS = "test_accuracy:max,nonzero_params:min"
THREE = "test_accuracy:max,nonzero_params:min,latency_ms:min"


def point(acc, params, latency=math.nan):
    return {"test_accuracy": acc, "nonzero_params": params, "latency_ms": latency}


def test_two_objectives_eta3_fronts_then_crowding():
    rungs = MOASHARungs(ACC_PARAMS, eta=3)
    # fewer than eta trials at the rung: both continue whatever their values
    assert rungs.decide("t1", 1, point(0.9, 500)) is True
    assert rungs.decide("t2", 1, point(0.8, 600)) is True  # dominated by t1, still in grace
    assert [d.reason for d in rungs.decisions] == ["grace", "grace"]
    # n = 3, keep ceil(3/3) = 1: t1 dominates t2, which dominates t3 -> fronts 0, 1, 2
    assert rungs.decide("t3", 1, point(0.7, 700)) is False
    assert rungs.decisions[-1].ahead == 2 and rungs.decisions[-1].keep == 1
    # n = 4, keep 2: t4 (0.95, 900) and t1 form front 0, both extremes (crowding inf): 0 ahead
    assert rungs.decide("t4", 1, point(0.95, 900)) is True
    # n = 5, keep 2: front 0 is t5 (0.85, 400), t1, t4; t5 is an extreme: 0 ahead
    assert rungs.decide("t5", 1, point(0.85, 400)) is True
    # n = 6, keep 2: t6 (0.88, 450) is on front 0 (t5, t6, t1, t4) but crowded: its distance
    # (0.90 - 0.85) / 0.1 + (500 - 400) / 500 = 0.7 is below t1's (0.95 - 0.88) / 0.1
    # + (900 - 450) / 500 = 1.6 and the two extremes': 3 ahead >= 2
    assert rungs.decide("t6", 1, point(0.88, 450)) is False
    assert rungs.decisions[-1].ahead == 3
    assert rungs.stopped_at == {"t3": 1, "t6": 1}
    assert rungs.used_objectives(1) == ("test_accuracy", "nonzero_params")
    # rung 2 starts its own count: t1 alone there continues
    assert rungs.decide("t1", 2, point(0.91, 300)) is True
    # a stopped trial stays stopped; a repeated report gets the same answer
    assert rungs.decide("t3", 2, point(1.0, 1)) is False
    assert rungs.decide("t4", 1, point(0.0, 10**9)) is True
    assert "t3" not in rungs.recorded[2]


def test_ties_eta2_continue_together():
    rungs = MOASHARungs(ACC_PARAMS, eta=2)
    assert rungs.decide("a", 1, point(0.9, 100)) is True  # grace (n = 1 < 2)
    # n = 2, keep 1: b equals a (same front, same crowding): nobody is strictly ahead
    assert rungs.decide("b", 1, point(0.9, 100)) is True
    assert rungs.decisions[-1].reason == "ranked" and rungs.decisions[-1].ahead == 0
    # n = 3, keep 2: c is dominated by a and b
    assert rungs.decide("c", 1, point(0.8, 200)) is False
    assert rungs.decisions[-1].ahead == 2
    # n = 4, keep 2: another copy of a
    assert rungs.decide("d", 1, point(0.9, 100)) is True
    # n = 5, keep 3: e (0.95, 300) is on the front with the copies; the front's two distinct
    # points are both extremes, so all four are tied and nobody is ahead of e
    assert rungs.decide("e", 1, point(0.95, 300)) is True
    assert rungs.decisions[-1].ahead == 0
    assert rungs.stopped_at == {"c": 1}


def test_three_objectives_a_third_objective_keeps_a_trial():
    rungs = MOASHARungs(THREE, eta=3)
    rungs.decide("t1", 1, point(0.9, 500, 2.0))
    rungs.decide("t2", 1, point(0.8, 400, 3.0))
    # n = 3, keep 1: no point dominates another in 3-D; t3 is the fastest: an extreme (inf)
    assert rungs.decide("t3", 1, point(0.85, 450, 1.0)) is True
    # n = 4, keep 2: t4 is the least accurate and largest, but the fastest: still front 0 and
    # an extreme; t3 (distance 0.5 + 0.5 + 0.6 = 1.6) is the only finite one
    assert rungs.decide("t4", 1, point(0.7, 600, 0.5)) is True
    assert rungs.decisions[-1].ahead == 0
    assert rungs.used_objectives(1) == ("test_accuracy", "nonzero_params", "latency_ms")
    assert rungs.stopped_at == {}


def test_missing_value_leaves_that_objective_out_of_the_rung():
    # the same trials as above, but t3 has no latency at rung 1 (NaN): rung 1 is ranked on
    # accuracy and parameters only
    rungs = MOASHARungs(THREE, eta=3)
    rungs.decide("t1", 1, point(0.9, 500, 2.0))
    rungs.decide("t2", 1, point(0.8, 400, 3.0))
    # n = 3, keep 1: in 2-D t1, t2, t3 are one front; t1 and t2 are its extremes, t3 in between
    # ((0.9 - 0.8) / 0.1 + (500 - 400) / 100 = 2): 2 ahead
    assert rungs.decide("t3", 1, point(0.85, 450)) is False
    assert rungs.decisions[-1].ahead == 2
    assert rungs.used_objectives(1) == ("test_accuracy", "nonzero_params")
    # n = 4, keep 2: t4's best latency no longer counts: t1, t2 and t3 dominate it
    assert rungs.decide("t4", 1, point(0.7, 600, 0.5)) is False
    assert rungs.decisions[-1].ahead == 3
    # a key left out, None and inf count as missing, like NaN
    other = MOASHARungs(THREE, eta=3)
    other.decide("a", 1, {"test_accuracy": 0.9, "nonzero_params": 5, "latency_ms": None})
    other.decide("b", 1, {"test_accuracy": 0.8, "nonzero_params": 4, "latency_ms": math.inf})
    other.decide("c", 1, {"test_accuracy": 0.7, "nonzero_params": 6})
    assert other.used_objectives(1) == ("test_accuracy", "nonzero_params")
    assert other.stopped_at == {"c": 1}  # dominated by a and b in 2-D
    # nothing finite that every trial reported: no ranking, the trial continues
    none = MOASHARungs(ACC_PARAMS, eta=2)
    none.decide("a", 1, {"test_accuracy": 0.9})
    assert none.decide("b", 1, {"nonzero_params": 3}) is True
    assert none.decisions[-1].reason == "no objective"


def test_last_rung_never_stops_and_is_not_ranked_against():
    rungs = MOASHARungs(ACC_PARAMS, eta=2)
    rungs.decide("a", 1, point(0.9, 100))
    # dominated, but its final rung: kept (its budget is spent anyway), recorded apart
    assert rungs.decide("b", 1, point(0.1, 900), last=True) is True
    assert rungs.decisions[-1].reason == "last rung"
    assert "b" in rungs.finished[1] and "b" not in rungs.recorded[1]
    # a finished recipe is not a point on the way to a target: e, a 1-epoch recipe that ended
    # at (0.99, 50), is not counted against the trials passing rung 1 on their way
    assert rungs.decide("e", 1, point(0.99, 50), last=True) is True
    # n = 2 (a, c), keep 1: c is dominated by a, one ahead: stopped
    assert rungs.decide("c", 1, point(0.05, 950)) is False
    assert rungs.decisions[-1].at_rung == 2 and rungs.decisions[-1].ahead == 1
    # n = 3, keep 2: d and a make the front (two points, both extremes): none ahead; e, which
    # dominates both, would have been one ahead of each
    assert rungs.decide("d", 1, point(0.95, 200)) is True
    assert rungs.decisions[-1].at_rung == 3 and rungs.decisions[-1].ahead == 0


@pytest.mark.parametrize("eta", [1, 0, -3, 2.5, "3", True, None])
def test_eta_below_two_or_not_an_integer_is_refused(eta):
    with pytest.raises(ValueError, match=r"eta .*: must be an integer >= 2"):
        MOASHARungs(ACC_PARAMS, eta=eta)
    with pytest.raises(ValueError, match=r"eta .*: must be an integer >= 2"):
        MOASHAScheduler(ACC_PARAMS, eta=eta)


def test_rungs_start_at_one():
    with pytest.raises(ValueError, match="rung 0: rungs are numbered from 1"):
        MOASHARungs(ACC_PARAMS).decide("a", 0, point(0.9, 100))


def test_ray_tune_scheduler_interface_with_fake_trials():
    scheduler = MOASHAScheduler(ACC_PARAMS, eta=3)
    # multi-objective: TuneConfig passes no metric/mode; a single one would contradict ours
    assert scheduler.set_search_properties(None, None) is True
    assert scheduler.set_search_properties("test_accuracy", "max") is False
    trials = {name: SimpleNamespace(trial_id=name) for name in ("t1", "t2", "t3", "t4")}
    nan = math.nan

    def report(name, rung, acc, params, **extra):
        result = {"rung": rung, "test_accuracy": acc, "nonzero_params": params,
                  "latency_ms": nan, "training_iteration": rung, **extra}  # fmt: skip
        return scheduler.on_trial_result(None, trials[name], result)

    scheduler.on_trial_add(None, trials["t1"])
    assert report("t1", 1, 0.9, 500) == "CONTINUE"
    assert report("t2", 1, 0.8, 600) == "CONTINUE"
    assert report("t3", 1, 0.7, 700) == "STOP"  # as in the first test
    # a final rung (last_rung) is never stopped, nor a result without a rung
    assert report("t4", 1, 0.1, 900, last_rung=1) == "CONTINUE"
    assert scheduler.on_trial_result(None, trials["t4"], {"test_accuracy": 0.0}) == "CONTINUE"
    assert report("t4", 0, math.nan, math.nan, diverged=1) == "CONTINUE"  # rung 0: not a rung
    assert scheduler.stopped_at == {"t3": 1}
    assert scheduler.used_objectives(1) == ("test_accuracy", "nonzero_params")
    assert "MO-ASHA (eta=3): 1 stopped" in scheduler.debug_string()
    # Tune pickles its scheduler with the experiment state (resume)
    again = pickle.loads(pickle.dumps(scheduler))
    assert again.stopped_at == {"t3": 1} and again.rungs.recorded == scheduler.rungs.recorded


def test_early_stop_default_and_choices(capsys):
    from sweeps.cli import EARLY_STOP_CHOICES, default_early_stop, resolve_spec
    from sweeps.resnet18_iterative import STUDY

    assert [default_early_stop(n, grid=False) for n in (6, 11, 12, 100)] == [
        "none", "none", "mo-asha", "mo-asha"]  # fmt: skip
    assert default_early_stop(100, grid=True) == "none"  # a study's protocol runs to its end
    assert EARLY_STOP_CHOICES == ("none", "mo-asha")
    assert resolve_spec(STUDY, ["--num-samples", "12"]).early_stop == "mo-asha"
    with pytest.raises(SystemExit):
        resolve_spec(STUDY, ["--early-stop", "nope"])
    assert "argument --early-stop: invalid choice: 'nope'" in capsys.readouterr().err


def test_stopped_trial_is_told_to_optuna_as_pruned_finished_one_as_complete():
    """A trial MO-ASHA stopped at rung 1 of 3 reported an unfinished recipe's values: the sampler
    must see it as PRUNED (no values); a finished trial as COMPLETE with its final values; a
    diverged one (NaN, rung 0) as FAILED."""
    from optuna.trial import TrialState

    from sweeps.searcher import COST_METRIC, RungAwareOptunaSearch, stopped_early

    def space(trial):
        trial.suggest_float("x", 0.0, 1.0)

    # the sweep's objectives; every report also carries the epochs run, which Optuna ignores
    search = RungAwareOptunaSearch(
        space,
        metric=["test_accuracy", "nonzero_params"],
        mode=["max", "min"],
        seed=0,
    )
    for trial_id in ("stopped", "finished", "diverged"):
        assert search.suggest(trial_id) is not None
    stopped = {"test_accuracy": 0.97, "nonzero_params": 5000.0, COST_METRIC: 13.0, "rung": 1,
               "last_rung": 3}  # fmt: skip
    finished = {"test_accuracy": 0.90, "nonzero_params": 400.0, COST_METRIC: 39.0, "rung": 3,
                "last_rung": 3}  # fmt: skip
    diverged = {"test_accuracy": math.nan, "nonzero_params": math.nan, COST_METRIC: math.nan,
                "rung": 0}  # fmt: skip
    assert stopped_early(stopped) and not stopped_early(finished)
    assert not stopped_early(diverged) and not stopped_early(None)
    search.on_trial_complete("stopped", stopped)
    search.on_trial_complete("finished", finished)
    search.on_trial_complete("diverged", diverged)
    trials = search.study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.FAIL]
    assert trials[0].values is None
    assert trials[1].values == [0.90, 400.0]
    search.on_trial_complete("stopped", stopped)  # a repeated completion changes nothing
    assert search.study.get_trials(deepcopy=False)[0].state == TrialState.PRUNED


def test_hypervolume_contributions_by_hand():
    from sweeps.analysis import hypervolume_contributions

    # (accuracy max, params min) against (0, 100): A only dominates acc (0.5, 0.9] x params
    # [10, 100] = 0.4 * 90 = 36, less what D also covers, (0.5, 0.8] x [20, 100] = 0.3 * 80 = 24;
    # B (0.1, 0.5] x [5, 10) = 0.4 * 5; C [0, 0.1] x [1, 5) = 0.1 * 4; D is dominated by A
    values = [[0.9, 10], [0.5, 5], [0.1, 1], [0.8, 20]]
    got = hypervolume_contributions(values, [True, False], (0.0, 100.0))
    assert got == pytest.approx([12.0, 2.0, 0.4, 0.0])
    assert hypervolume_contributions(values[:3], [True, False], (0.0, 100.0)) == pytest.approx(
        [36.0, 2.0, 0.4]
    )


def test_reference_ranks_a_front_by_hypervolume_contribution_not_crowding():
    """Three non-dominated trials at one rung, eta 3 (keep 1): the third to arrive, C (chance
    accuracy at the highest sparsity), is an extreme of the front, so crowding distance keeps it;
    against the fixed reference (accuracy 0, 100 dense parameters) it adds 0.4 of the front's
    38.4 and A and B are ahead of it: stopped."""
    for reference, c_continues, c_ahead in ((None, True, 0), ((0.0, 100.0), False, 2)):
        rungs = MOASHARungs(ACC_PARAMS, eta=3, reference=reference)
        assert rungs.decide("A", 1, point(0.9, 10)) and rungs.decide("B", 1, point(0.5, 5))
        assert rungs.decide("C", 1, point(0.1, 1)) is c_continues
        assert rungs.decisions[-1].ahead == c_ahead
    # an objective with no fixed reference (NaN) falls back to crowding distance for that rung
    rungs = MOASHARungs(THREE, eta=3, reference=(0.0, 100.0, math.nan))
    for name, acc, params in (("A", 0.9, 10), ("B", 0.5, 5), ("C", 0.1, 1)):
        go = rungs.decide(name, 1, point(acc, params, latency=float(params)))
    assert go is True and rungs.decisions[-1].ahead == 0
    with pytest.raises(ValueError, match="one value per objective"):
        MOASHARungs(ACC_PARAMS, eta=3, reference=(0.0,))
