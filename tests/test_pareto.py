"""Pareto front: brute-force agreement, ties, duplicates, NaN; objective parsing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sweeps.pareto import Objective, pareto_mask, pareto_table, parse_objectives


def brute_force(values: np.ndarray, maximize: list[bool]) -> np.ndarray:
    signs = np.where(maximize, -1.0, 1.0)
    v = values * signs
    out = []
    for i, a in enumerate(v):
        if np.isnan(a).any():
            out.append(False)
            continue
        dominated = False
        for j, b in enumerate(v):
            if j != i and not np.isnan(b).any() and (b <= a).all() and (b < a).any():
                dominated = True
        out.append(not dominated)
    return np.array(out)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force(k, seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 5, size=(40, k)).astype(float)  # small ints: many ties/duplicates
    values[rng.integers(0, 40, 3), rng.integers(0, k, 3)] = np.nan
    maximize = list(rng.integers(0, 2, k).astype(bool))
    assert (pareto_mask(values, maximize) == brute_force(values, maximize)).all()


def test_hand_computed_front():
    # accuracy (max) vs non-zero params (min)
    values = np.array([[0.9, 100], [0.8, 50], [0.85, 120], [0.9, 100], [0.7, 50], [np.nan, 1]])
    mask = pareto_mask(values, [True, False])
    # (0.85,120) dominated by (0.9,100); (0.7,50) by (0.8,50); duplicates both kept; NaN left out
    assert mask.tolist() == [True, True, False, True, False, False]


def test_pareto_table_sorts_and_flags():
    df = pd.DataFrame({"test_accuracy": [0.8, 0.9, 0.85], "nonzero_params": [10, 30, 40]})
    objectives = parse_objectives("test_accuracy:max,nonzero_params:min")
    table = pareto_table(df, objectives)
    assert table["test_accuracy"].tolist() == [0.9, 0.85, 0.8]
    assert table["pareto"].tolist() == [True, False, True]


def test_parse_objectives():
    assert parse_objectives("test_accuracy:max, nonzero_params:min") == [
        Objective("test_accuracy", "max"),
        Objective("nonzero_params", "min"),
    ]
    with pytest.raises(ValueError, match="malformed"):
        parse_objectives("test_accuracy,nonzero_params:min")
    with pytest.raises(ValueError, match="'latency' is unknown; choose from: test_accuracy"):
        parse_objectives("latency:min,test_accuracy:max")
    with pytest.raises(ValueError, match="two or three"):
        parse_objectives("test_accuracy:max")
    with pytest.raises(ValueError, match="two or three"):
        parse_objectives("test_accuracy:max,test_accuracy:min")
