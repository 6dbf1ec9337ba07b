"""The search benchmark's bookkeeping: fine-tune epochs per child run and the perfect-stopper
bound, by hand on five runs (``mlflow.search_runs`` rows as dicts)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))

import bench_search  # noqa: E402

BASELINE_EPOCHS = 15


def run(status, schedule, iterations, retrain, acc, params, epochs_run=None, **extra):
    return {
        "status": status, "params.schedule": schedule, "params.iterations": str(iterations),
        "params.retrain": retrain, "metrics.test_accuracy": acc, "metrics.nonzero_params": params,
        "metrics.epochs_run": epochs_run, **extra,
    }  # fmt: skip


ROWS = [
    # on the front (fewest parameters among the good ones): 1 epoch
    run("FINISHED", "oneshot", 1, "finetune", 0.95, 2000, 1.0, **{"params.finetune_epochs": "1"}),
    # dominated by the first: 3 steps x 2 epochs, a perfect stopper stops it after one step
    run("FINISHED", "iterative", 3, "finetune", 0.90, 3000, 6.0,
        **{"params.finetune_epochs": "2"}),
    # on the front (most accurate): 2 steps of 15 - 2 = 13 rewound epochs, run in full
    run("FINISHED", "gradual", 2, "weight_rewind", 0.97, 5000, 26.0,
        **{"params.rewind_epoch": "2"}),
    # dominated: one-shot, 14 epochs of learning-rate rewinding; stoppable after its first epoch
    run("FINISHED", "oneshot", 1, "lr_rewind", 0.50, 2500, 14.0, **{"params.rewind_epoch": "1"}),
    # stopped at rung 1 with no epochs_run metric: 15 - 0 = 15 epochs per step, one step run
    run("KILLED", "iterative", 3, "weight_rewind", None, None, None,
        **{"params.rewind_epoch": "0", "tags.early_stopped": "rung 1"}),
]  # fmt: skip


def test_epochs_of_each_run():
    spent = [bench_search.epochs_of_run(r, BASELINE_EPOCHS) for r in ROWS]
    assert spent == [1.0, 6.0, 26.0, 14.0, 15.0]


def test_first_rung_and_perfect_stopper():
    first = [bench_search.first_rung_epochs(r, BASELINE_EPOCHS) for r in ROWS]
    assert first == [1.0, 2.0, 13.0, 1.0, 15.0]
    # front (rows 0 and 2) in full: 1 + 26; the rest at their first rung: 2 + 1 + 15
    assert bench_search.perfect_stop_epochs(ROWS, BASELINE_EPOCHS) == pytest.approx(45.0)


def test_anytime_curve_charges_started_runs_in_full():
    import math

    def timed(status, start, end, acc, params, epochs):
        return {"status": status, "start_time": start, "end_time": end,
                "metrics.test_accuracy": acc, "metrics.nonzero_params": params,
                "metrics.epochs_run": epochs}  # fmt: skip

    rows = [
        timed("FINISHED", 0, 10, 0.9, 5000.0, 2.0),  # A
        timed("FINISHED", 5, 30, 0.8, 2000.0, 10.0),  # B
        timed("KILLED", 20, 40, 0.95, 9000.0, 4.0),  # C, stopped early: never on the front
    ]
    curve = bench_search.anytime_curve(rows, BASELINE_EPOCHS, (0.0, 10000.0))
    # A ends: A and B have started, B charged in full: 2 + 10; front {A}: 0.9 x 5000 / 10000
    # B ends: C has started too: 16; front {A, B}: 0.8 x 8000 + 0.1 x 5000 = 6900 -> 0.69
    # C ends: still 16 epochs, and a stopped run adds nothing to the front
    assert [e for e, _ in curve] == [12.0, 16.0, 16.0]
    assert [hv for _, hv in curve] == pytest.approx([0.45, 0.69, 0.69])
    assert bench_search.hypervolume_at(curve, 11.0) == 0.0
    assert bench_search.hypervolume_at(curve, 15.9) == pytest.approx(0.45)
    assert bench_search.hypervolume_at(curve, 16.0) == pytest.approx(0.69)
    assert bench_search.epochs_to_reach(curve, 0.45) == 12.0
    assert bench_search.epochs_to_reach(curve, 0.5) == 16.0
    assert math.isnan(bench_search.epochs_to_reach(curve, 0.7))


def test_seeds_parse_as_lists_and_ranges():
    assert bench_search.parse_seeds("0,1,2") == [0, 1, 2]
    assert bench_search.parse_seeds("0-3") == [0, 1, 2, 3]
    assert bench_search.parse_seeds("0-2, 7,") == [0, 1, 2, 7]
    for bad in ("3-1", "a", "1-b"):
        with pytest.raises(ValueError):
            bench_search.parse_seeds(bad)


def test_paired_ratios_and_their_standard_error():
    def result(variant, seed, curve):
        return bench_search.Result(
            variant=variant, seed=seed, trials=3, finished=3, stopped=0, failed=0,
            hypervolume=curve[-1][1], hypervolume_raw=0.0, reference=(), epochs=curve[-1][0],
            perfect_stop_epochs=0.0, front=1, seconds=0.0, curve=curve,
        )  # fmt: skip

    results = [
        result("tpe + mo-asha", 0, [(4.0, 0.80), (10.0, 0.90), (30.0, 0.95)]),
        result("tpe + mo-asha", 1, [(12.0, 0.70), (20.0, 0.99)]),
        result("random", 0, [(20.0, 0.90)]),
        result("random", 1, [(20.0, 0.80)]),
    ]
    budgets, targets = {0: 20.0, 1: 20.0}, {0: 0.90, 1: 0.80}
    ratios = bench_search.paired_ratios(results, "tpe + mo-asha", budgets, targets)
    # at 10 epochs: seed 0 has 0.90 (reached at 10), seed 1 nothing yet (its first run ends at 12)
    assert ratios == pytest.approx({0: 1.0, 1: 0.0})
    mean, err = bench_search.mean_and_error([1.0, 0.0])
    # standard deviation of (1, 0) is sqrt(0.5); over sqrt(2) seeds: 0.5
    assert (mean, err) == pytest.approx((0.5, 0.5))
    one = bench_search.mean_and_error([0.97])
    assert one[0] == 0.97 and one[1] != one[1]  # NaN with one seed
