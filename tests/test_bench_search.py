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
