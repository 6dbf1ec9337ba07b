"""Pareto front: brute-force and Optuna agreement, ties, duplicates, NaN; exact hypervolume
against hand-computed values and a brute-force grid; the fixed and data-dependent reference
points; non-dominated sorting and crowding distance; group fronts; early-stopped trials;
objective parsing."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pandas as pd
import pytest

from sweeps.pareto import (
    Objective,
    analyse,
    crowding_distance,
    default_reference,
    fixed_reference,
    format_analysis,
    hypervolume,
    non_dominated_ranks,
    pareto_mask,
    pareto_table,
    parse_objectives,
    split_objectives,
    write_outputs,
)


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


# --- hypervolume ------------------------------------------------------------------------------


def brute_force_hypervolume(values, maximize, reference):
    """Volume dominated by ``values`` up to ``reference``, by cutting space into the grid of every
    point's coordinates and adding each cell that some point dominates (O(n^(k+1)))."""
    signs = np.where(maximize, -1.0, 1.0)
    v, r = np.asarray(values, dtype=float) * signs, np.asarray(reference, dtype=float) * signs
    v = v[~np.isnan(v).any(axis=1) & (v < r).all(axis=1)]
    edges = [np.unique(np.append(v[:, d], r[d])) for d in range(len(r))]
    total = 0.0
    for cell in itertools.product(*[range(len(e) - 1) for e in edges]):
        low = np.array([edges[d][i] for d, i in enumerate(cell)])
        high = np.array([edges[d][i + 1] for d, i in enumerate(cell)])
        if (v <= low).all(axis=1).any():  # a point at or below the cell's lower corner covers it
            total += float(np.prod(high - low))
    return total


def test_hypervolume_hand_computed_2d():
    # minimise both: staircase (1,3), (2,2), (3,1) under (4,4): 3 + 2 + 1
    assert hypervolume([[1, 3], [2, 2], [3, 1]], [False, False], (4, 4)) == pytest.approx(6.0)
    # accuracy max, params min against (0.7, 150): boxes 0.2*50 and 0.1*100 overlap by 0.1*50
    values = [[0.9, 100], [0.8, 50]]
    assert hypervolume(values, [True, False], (0.7, 150)) == pytest.approx(15.0)
    # dominated points, duplicates and NaN add nothing; neither does a point beyond the reference
    more = [*values, [0.85, 120], [0.9, 100], [np.nan, 10], [0.95, 200], [0.6, 10]]
    assert hypervolume(more, [True, False], (0.7, 150)) == pytest.approx(15.0)
    assert hypervolume([[0.6, 10]], [True, False], (0.7, 150)) == 0.0
    # both maximised: (3, 1) and (1, 3) above (0, 0): 3 + 3 - 1
    assert hypervolume([[3, 1], [1, 3]], [True, True], (0, 0)) == pytest.approx(5.0)


def test_hypervolume_hand_computed_3d():
    assert hypervolume([[1, 1, 1]], [False] * 3, (2, 3, 4)) == pytest.approx(6.0)
    # boxes 2*2*1 and 1*1*2 overlapping in [2,3]^3
    two = [[1, 1, 2], [2, 2, 1]]
    assert hypervolume(two, [False] * 3, (3, 3, 3)) == pytest.approx(5.0)
    # the same geometry with the first objective maximised (values and reference negated)
    flipped = [[-1, 1, 2], [-2, 2, 1]]
    assert hypervolume(flipped, [True, False, False], (-3, 3, 3)) == pytest.approx(5.0)
    # accuracy max, params min, latency min: a = (0.9, 100, 2) box 0.2*100*1 = 20,
    # b = (0.8, 50, 1) box 0.1*150*2 = 30, shared 0.1*100*1 = 10
    three = [[0.9, 100, 2], [0.8, 50, 1], [0.9, 100, 2], [0.75, 150, 2.5]]
    assert hypervolume(three, [True, False, False], (0.7, 200, 3)) == pytest.approx(40.0)
    with pytest.raises(ValueError, match="2 or 3 objectives"):
        hypervolume([[1, 2, 3, 4]], [False] * 4, (5, 5, 5, 5))


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_hypervolume_matches_brute_force_and_optuna(k, seed):
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(seed)
    values = rng.integers(0, 6, size=(14, k)).astype(float) + rng.random((14, k)) * (seed % 2)
    values[rng.integers(0, 14)] = values[0]  # a duplicate
    maximize = list(rng.integers(0, 2, k).astype(bool))
    ref = default_reference(values, maximize)
    expected = brute_force_hypervolume(values, maximize, ref)
    assert expected > 0
    assert hypervolume(values, maximize, ref) == pytest.approx(expected, rel=1e-12)
    signs = np.where(maximize, -1.0, 1.0)
    assert compute_hypervolume(values * signs, np.array(ref) * signs) == pytest.approx(expected)


def test_default_reference_offsets_worst_by_a_tenth_of_the_range():
    values = np.array([[0.9, 100.0], [0.7, 300.0], [np.nan, 1e6]])
    ref = default_reference(values, [True, False])  # the NaN row is not analysed
    assert ref == pytest.approx((0.7 - 0.02, 300 + 20))
    # one value per objective: the offset is a tenth of its magnitude (1 for zero)
    assert default_reference(np.array([[0.5, 0.0]]), [True, False]) == pytest.approx((0.45, 0.1))


# --- agreement with Optuna's own Pareto front -------------------------------------------------


def optuna_front(values, maximize):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        directions=["maximize" if m else "minimize" for m in maximize],
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.add_trials([
        optuna.trial.create_trial(values=list(map(float, row)), distributions={}, params={})
        for row in values
    ])  # fmt: skip
    return {t.number for t in study.best_trials}


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_front_matches_optuna_best_trials(k, seed):
    rng = np.random.default_rng(100 + seed)
    values = rng.integers(0, 4, size=(30, k)).astype(float)  # ties and duplicates galore
    maximize = list(rng.integers(0, 2, k).astype(bool))
    ours = set(np.flatnonzero(pareto_mask(values, maximize)))
    assert ours == optuna_front(values, maximize)


def test_optuna_also_keeps_duplicates_on_the_front():
    values = np.array([[0.9, 100], [0.9, 100], [0.8, 50], [0.8, 60]])
    assert optuna_front(values, [True, False]) == {0, 1, 2}
    assert set(np.flatnonzero(pareto_mask(values, [True, False]))) == {0, 1, 2}


# --- analyse: missing objectives, groups, errors ----------------------------------------------


def runs_frame(seed=0, n=40):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "run_name": [f"r{i:02d}" for i in range(n)],
        "model": "cnn",
        "method": rng.choice(["magnitude", "structured", "random"], n),
        "target_sparsity": rng.choice([0.5, 0.7, 0.9], n),
        "test_accuracy": rng.integers(70, 95, n) / 100,
        "nonzero_params": rng.integers(1, 10, n) * 100.0,
        "total_params": 1000.0,
        "latency_ms": rng.integers(1, 5, n).astype(float),
        "dense_test_accuracy": 0.96,
    })  # fmt: skip
    frame.loc[[3, 7], "latency_ms"] = np.nan
    return frame


def test_analyse_leaves_out_runs_missing_an_objective_and_counts_them():
    runs = runs_frame()
    analysis = analyse(runs, "test_accuracy:max,nonzero_params:min,latency_ms:min")
    assert analysis.excluded == 2
    assert analysis.missing_counts == {"test_accuracy": 0, "nonzero_params": 0, "latency_ms": 2}
    table = analysis.table.set_index("run_name")
    assert (table.loc[["r03", "r07"], "missing"] == "latency_ms").all()
    assert not table.loc[["r03", "r07"], "pareto"].any()
    ok = runs["latency_ms"].notna().to_numpy()
    cols = ["test_accuracy", "nonzero_params", "latency_ms"]
    expected = set(runs["run_name"][ok][brute_force(runs[cols].to_numpy()[ok], [1, 0, 0])])
    assert set(analysis.front["run_name"]) == expected
    assert analysis.hypervolume == pytest.approx(
        brute_force_hypervolume(runs[cols].to_numpy()[ok], [True, False, False], analysis.reference)
    )
    assert analysis.table["test_accuracy"].is_monotonic_decreasing  # best first
    text = format_analysis(analysis)
    assert f"of {len(runs) - 2} analysed runs" in text
    assert "left out: 2 run(s) missing an objective (latency_ms: 2 run(s))" in text


def test_group_fronts_equal_brute_force_per_group():
    runs = runs_frame(seed=1)
    analysis = analyse(runs, parse_objectives("test_accuracy:max,nonzero_params:min"), by="method")
    cols = ["test_accuracy", "nonzero_params"]
    table = analysis.table
    for method, rows in runs.groupby("method"):
        expected = set(rows["run_name"][brute_force(rows[cols].to_numpy(), [True, False])])
        got = set(table.loc[(table["group"] == method) & table["group_pareto"], "run_name"])
        assert got == expected, method
        group = analysis.groups.set_index("group").loc[method]
        assert group["on_group_front"] == len(expected)
        assert group["hypervolume"] == pytest.approx(
            hypervolume(rows[cols].to_numpy(), [True, False], analysis.reference)
        )
    # on the global front implies on its group's front, and some group fronts hold more
    assert (table["group_pareto"] | ~table["pareto"]).all()
    assert table["group_pareto"].sum() > table["pareto"].sum()
    assert analysis.groups["on_global_front"].sum() == table["pareto"].sum()


def test_numeric_groups_are_named_and_ordered_by_value():
    runs = runs_frame(seed=2)
    analysis = analyse(runs, "test_accuracy:max,nonzero_params:min", by="target_sparsity")
    assert list(analysis.groups["group"]) == ["0.5", "0.7", "0.9"]


def test_dense_baseline_from_runs_or_given():
    runs = runs_frame()
    base = analyse(runs, "test_accuracy:max,nonzero_params:min").baselines
    assert base.to_dict("records") == [{
        "model": "cnn", "test_accuracy": 0.96, "nonzero_params": 1000.0, "total_params": 1000.0,
        "sparsity": 0.0, "accuracy_change": 0.0,
    }]  # fmt: skip
    given = analyse(runs, "test_accuracy:max,nonzero_params:min", dense={"cnn": 0.5}).baselines
    assert given["test_accuracy"].tolist() == [0.5]


def test_given_reference_is_used_and_stated():
    runs = pd.DataFrame({"run_name": ["a", "b"], "test_accuracy": [0.9, 0.8],
                         "nonzero_params": [100.0, 50.0]})  # fmt: skip
    analysis = analyse(runs, "test_accuracy:max,nonzero_params:min", reference=(0.7, 150))
    assert analysis.hypervolume == pytest.approx(15.0)
    assert analysis.reference == (0.7, 150.0) and not analysis.reference_is_default
    assert "given with --reference" in format_analysis(analysis)


def test_analyse_errors_name_the_value_and_what_exists():
    runs = runs_frame()
    with pytest.raises(ValueError, match=r"'flops' is in no run; metrics that exist: .*latency_ms"):
        analyse(runs, "test_accuracy:max,flops:min")
    runs["sparsity"] = np.nan
    with pytest.raises(ValueError, match="'sparsity' is in no run"):
        analyse(runs, "test_accuracy:max,sparsity:max")
    with pytest.raises(ValueError, match=r"by 'schedule' is in no run; columns that exist: run"):
        analyse(runs, "test_accuracy:max,nonzero_params:min", by="schedule")
    with pytest.raises(ValueError, match="give 2 finite numbers"):
        analyse(runs, "test_accuracy:max,nonzero_params:min", reference=(0.5,))


def test_split_objectives_checks_syntax_only():
    assert split_objectives("accuracy_change:max,latency_ms:min") == [
        Objective("accuracy_change", "max"),
        Objective("latency_ms", "min"),
    ]
    with pytest.raises(ValueError, match="malformed"):
        split_objectives("accuracy_change:up,latency_ms:min")
    with pytest.raises(ValueError, match="two or three"):
        split_objectives("a:max,b:min,c:max,d:min")


def test_write_outputs_without_mlflow(tmp_path):
    # the runner's path: a runs frame in memory, three objectives, no method column, no dense
    runs = runs_frame().drop(columns=["method", "dense_test_accuracy"])
    analysis = analyse(runs, "test_accuracy:max,nonzero_params:min,latency_ms:min")
    settings = {"seed": 3, "quick": True, "grid": False, "address": None}  # as the runner has them
    paths = write_outputs(analysis, str(tmp_path / "new"), settings=settings, title="unit")
    assert [os.path.basename(p) for p in paths] == ["pareto.csv", "pareto.png", "report.md"]
    csv = pd.read_csv(paths[0], keep_default_na=False)
    assert len(csv) == len(runs) and csv["pareto"].sum() == len(analysis.front)
    assert open(paths[1], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    report = open(paths[2]).read()
    assert report.startswith("# Pareto analysis: unit")
    assert f"**Hypervolume** {analysis.hypervolume:.6g}" in report
    assert "| seed | 3 |" in report and "## Dense baseline" not in report
    assert "| quick | True |" in report and "| grid | False |" in report  # flags spelled out
    assert "| address |  |" in report  # unset: blank, not "None"


# --- fixed reference: comparable hypervolumes across sweeps ----------------------------------


def test_fixed_reference_per_objective():
    dense = {"nonzero_params": 1000.0, "latency_ms": 4.5, "test_accuracy": 0.9}
    objectives = "test_accuracy:max,nonzero_params:min,latency_ms:min"
    assert fixed_reference(objectives, dense) == (0.0, 1000.0, 4.5)
    assert fixed_reference("sparsity:max,permanent_test_accuracy:max", {}) == (0.0, 0.0)
    # a model with no correct prediction changes accuracy by minus the dense accuracy
    assert fixed_reference("accuracy_change:max,nonzero_params:min", dense) == (-0.9, 1000.0)
    with pytest.raises(ValueError, match=r"objective flops:min has no fixed reference.*dense "
                       r"values: nonzero_params, latency_ms, test_accuracy"):  # fmt: skip
        fixed_reference("test_accuracy:max,flops:min", dense)
    with pytest.raises(ValueError, match="objective test_accuracy:min has no fixed reference"):
        fixed_reference("test_accuracy:min,nonzero_params:min", dense)


def test_two_sweeps_share_the_fixed_reference_and_compare():
    # two sweeps of one dense model (1000 parameters) with different trials
    first = pd.DataFrame(
        {
            "run_name": ["a", "b"],
            "model": "cnn",
            "total_params": 1000.0,
            "test_accuracy": [0.9, 0.6],
            "nonzero_params": [500.0, 100.0],
        }
    )
    second = pd.DataFrame({"run_name": ["c", "d", "e"], "model": "cnn", "total_params": 1000.0,
                           "test_accuracy": [0.8, 0.95, 0.5],
                           "nonzero_params": [200.0, 900.0, 600.0]})  # fmt: skip
    objectives = "test_accuracy:max,nonzero_params:min"
    one = analyse(first, objectives, dense={"cnn": 0.97})
    two = analyse(second, objectives, dense={"cnn": 0.97})
    assert one.reference == two.reference == (0.0, 1000.0)
    assert one.reference_kinds == two.reference_kinds == ("fixed", "fixed")
    # minimising (params, -accuracy) against (1000, 0): b 900 * 0.6, then a 500 * (0.9 - 0.6)
    assert one.hypervolume == pytest.approx(900 * 0.6 + 500 * 0.3)  # 690
    # c 800 * 0.8, then d 100 * (0.95 - 0.8); e (600, 0.5) is dominated by c
    assert two.hypervolume == pytest.approx(800 * 0.8 + 100 * 0.15)  # 655
    assert one.hypervolume > two.hypervolume
    # normalised by the box from the reference to (accuracy 1, 0 parameters): 1 * 1000
    assert one.hypervolume_normalised == pytest.approx(0.69)
    assert two.hypervolume_normalised == pytest.approx(0.655)
    # the data-dependent reference moves with the trials: the same runs, another reference
    data = analyse(first, objectives, dense={"cnn": 0.97}, reference="data")
    assert data.reference == pytest.approx((0.6 - 0.03, 500 + 40))
    assert data.reference_kinds == ("data", "data") and "depends on the runs" in (
        data.reference_text
    )
    assert one.reference_metrics == {
        "pareto_reference.test_accuracy": 0.0,
        "pareto_reference.nonzero_params": 1000.0,
    }
    with pytest.raises(ValueError, match="reference 'worst': write fixed, data or one number"):
        analyse(first, objectives, reference="worst")


def test_fixed_reference_falls_back_per_objective_and_says_so():
    runs = runs_frame()  # no dense latency known
    analysis = analyse(runs, "test_accuracy:max,nonzero_params:min,latency_ms:min")
    ok = runs["latency_ms"].notna()
    worst = runs.loc[ok, "latency_ms"].max()
    span = worst - runs.loc[ok, "latency_ms"].min()
    assert analysis.reference == pytest.approx((0.0, 1000.0, worst + 0.1 * span))
    assert analysis.reference_kinds == ("fixed", "fixed", "data")
    assert not analysis.reference_is_fixed
    assert "not comparable" in analysis.reference_text
    # given the dense latency, every objective is fixed
    given = analyse(runs, "test_accuracy:max,nonzero_params:min,latency_ms:min",
                    dense_values={"latency_ms": 6.0})  # fmt: skip
    assert given.reference == (0.0, 1000.0, 6.0) and given.reference_is_fixed


def test_csv_and_report_hold_the_reference_at_full_precision(tmp_path):
    runs = runs_frame().drop(columns=["latency_ms"])
    runs["empty"] = np.nan  # a column no run has a value in (MLflow's union of columns)
    # a reference that short formats would round
    analysis = analyse(runs, "test_accuracy:max,nonzero_params:min", reference=(1 / 7, 2000 / 3))
    ref = analysis.reference
    paths = write_outputs(analysis, str(tmp_path), title="precision")
    csv = pd.read_csv(paths[0])  # pandas 3 parses floats round-trip by default
    assert (csv["pareto_reference.test_accuracy"] == ref[0]).all()  # exact float equality
    assert (csv["pareto_reference.nonzero_params"] == ref[1]).all()
    assert "empty" not in csv
    report = open(paths[2]).read()
    assert f"exactly: `test_accuracy={ref[0]!r}, nonzero_params={ref[1]!r}`" in report


def test_stopped_trials_are_listed_never_on_the_front(tmp_path):
    runs = pd.DataFrame({"run_name": ["a", "b"], "method": "m", "test_accuracy": [0.9, 0.8],
                         "nonzero_params": [100.0, 50.0], "total_params": 1000.0})  # fmt: skip
    stopped = pd.DataFrame({
        "run_name": ["s2", "s1"], "method": "m", "stopped_at_rung": [2, 1],
        "test_accuracy": [0.99, 0.95], "nonzero_params": [10.0, 5.0],
    })  # fmt: skip
    analysis = analyse(runs, "test_accuracy:max,nonzero_params:min", stopped=stopped)
    assert set(analysis.front["run_name"]) == {"a", "b"}  # the better stopped points do not count
    assert list(analysis.stopped["run_name"]) == ["s1", "s2"]  # by rung
    text = format_analysis(analysis)
    assert "stopped early: 2 trial(s) (1 at rung 1, 1 at rung 2); not on the front" in text
    report = open(write_outputs(analysis, str(tmp_path))[2]).read()
    section = report.split("## Stopped early (2 trial(s) (1 at rung 1, 1 at rung 2))")[1]
    assert "| s1 | 1 | m | 0.95 | 5 |" in section and "| s2 | 2 | m | 0.99 | 10 |" in section


# --- non-dominated sorting and crowding distance ---------------------------------------------


def test_non_dominated_ranks_hand_computed():
    # accuracy max, params min
    values = np.array([
        [0.9, 100],  # front 0
        [0.8, 50],  # front 0
        [0.85, 120],  # dominated by (0.9, 100) only: front 1
        [0.7, 60],  # dominated by (0.8, 50): front 1
        [0.6, 130],  # dominated by (0.85, 120), which is in front 1: front 2
        [0.9, 100],  # duplicate of the first: front 0 too
        [np.nan, 10],  # unranked
    ])  # fmt: skip
    assert non_dominated_ranks(values, [True, False]).tolist() == [0, 0, 1, 1, 2, 0, -1]


@pytest.mark.parametrize("seed", range(3))
def test_non_dominated_ranks_peel_fronts(seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 5, size=(30, 3)).astype(float)
    maximize = [True, False, True]
    ranks = non_dominated_ranks(values, maximize)
    remaining = np.ones(len(values), dtype=bool)
    for front in range(ranks.max() + 1):
        expected = np.zeros(len(values), dtype=bool)
        idx = np.flatnonzero(remaining)
        expected[idx[brute_force(values[idx], maximize)]] = True
        assert ((ranks == front) == expected).all()
        remaining &= ~expected


def test_crowding_distance_hand_computed():
    # a 2-D front of four points; ranges 3 (x) and 6 (y)
    front = np.array([[0.0, 6.0], [1.0, 3.0], [2.0, 1.0], [3.0, 0.0]])
    dist = crowding_distance(front)
    assert np.isinf(dist[0]) and np.isinf(dist[3])
    # (2 - 0) / 3 + (6 - 1) / 6, and (3 - 1) / 3 + (3 - 0) / 6
    assert dist[1] == pytest.approx(2 / 3 + 5 / 6)
    assert dist[2] == pytest.approx(2 / 3 + 3 / 6)
    # duplicates share one distance; two distinct points are both extremes
    assert crowding_distance(np.array([[1.0, 2.0], [1.0, 2.0], [3.0, 0.0]])).tolist() == [
        np.inf, np.inf, np.inf,
    ]  # fmt: skip
    dup = crowding_distance(np.vstack([front, front[1]]))
    assert dup[1] == dup[4] == pytest.approx(2 / 3 + 5 / 6)


def test_trial_table_reads_the_stopping_rung_and_tolerates_runs_without_params():
    from sweeps.analysis import trial_table

    search_runs = pd.DataFrame({
        "run_id": ["a", "b", "c"], "tags.mlflow.runName": ["x", "y", "z"],
        "params.model": ["cnn", "cnn", None], "params.target_sparsity": ["0.5", "0.9", None],
        "params.iterations": ["1", "3", None], "params.finetune_epochs": ["2", "1", None],
        "params.lr": ["0.01", "0.01", None], "metrics.test_accuracy": [0.9, 0.8, np.nan],
        "tags.early_stopped": ["rung 2", "1", None],
    })  # fmt: skip
    table = trial_table(search_runs, {"cnn": 0.95})
    assert table["stopped_at_rung"].tolist()[:2] == [2.0, 1.0]
    assert np.isnan(table["stopped_at_rung"].iloc[2])
    assert table["accuracy_change"].iloc[0] == pytest.approx(-0.05)
    assert np.isnan(table["iterations"].iloc[2])  # killed before it logged its params
    # every run with its params: integers, as the study tables print them
    assert trial_table(search_runs.iloc[:2], {"cnn": 0.95})["iterations"].tolist() == [1, 3]
