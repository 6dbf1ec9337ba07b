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


def test_last_rung_never_stops():
    rungs = MOASHARungs(ACC_PARAMS, eta=2)
    rungs.decide("a", 1, point(0.9, 100))
    # dominated, but its final rung: recorded and kept (its budget is spent anyway)
    assert rungs.decide("b", 1, point(0.1, 900), last=True) is True
    assert rungs.decisions[-1].reason == "last rung" and "b" in rungs.recorded[1]
    # the recorded final value still counts against later arrivals: n = 3, keep 2
    assert rungs.decide("c", 1, point(0.05, 950)) is False


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
