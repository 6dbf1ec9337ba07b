"""The metric catalog (``sweeps.catalog``): the lists derived from it equal the hand-written
ones it replaced; a registered metric is an objective with its unit and fixed reference; and a
real sweep with a plugin's metric, measured by the plugin's own function, ranks on it."""

from __future__ import annotations

import math
import os
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from sweeps import catalog
from sweeps.catalog import Metric, register_metric

PLUGIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "catalog_plugin.py")


@pytest.fixture
def builtin_only(monkeypatch):
    """The catalog as shipped, whatever an earlier test registered; restored afterwards."""
    monkeypatch.setattr(catalog, "_METRICS", {m.name: m for m in catalog.BUILTIN})


def unit_metric(name: str = "my_cost", **kw) -> Metric:
    """A registrable metric (measured on the final model) whose measure returns 7."""
    kw = {"unit": "count", "reference": "dense", "measure": lambda model, example: 7, **kw}
    return Metric(name, **kw)


# ---------------------------------------------------------------------------------------------
# The derived lists are those the catalog replaced


def test_derived_lists_equal_the_hand_written_ones(builtin_only):
    assert list(catalog.objective_metrics().items()) == [
        ("test_accuracy", "fraction"), ("sparsity", "fraction"), ("nonzero_params", "count"),
        ("total_params", "count"), ("size_bytes", "bytes"), ("sparse_size_bytes", "bytes"),
        ("flops", "FLOPs per batch"), ("effective_flops", "FLOPs per batch"),
        ("latency_ms", "ms per batch"),
    ]  # fmt: skip
    assert catalog.step_metrics() == ("test_accuracy", "sparsity", "nonzero_params", "total_params")
    assert catalog.final_metrics() == (
        "size_bytes", "sparse_size_bytes", "flops", "effective_flops", "latency_ms",
    )  # fmt: skip
    assert catalog.extra_metrics() == ("permanent_test_accuracy", "accuracy_change")
    assert catalog.zero_reference() == ("test_accuracy", "permanent_test_accuracy", "sparsity")
    assert catalog.dense_reference() == (
        "nonzero_params", "total_params", "size_bytes", "sparse_size_bytes", "flops",
        "effective_flops", "latency_ms",
    )  # fmt: skip
    assert catalog.dense_fixed() == {"sparsity": 0.0, "accuracy_change": 0.0}
    assert catalog.dense_sources() == {"nonzero_params": "total_params",
                                       "total_params": "total_params"}  # fmt: skip
    assert catalog.LOG_UNITS == ("count", "bytes", "FLOPs per batch")
    log_axes = [m.name for m in catalog.metrics() if catalog.is_log_axis(m.name)]
    assert log_axes == ["nonzero_params", "total_params", "size_bytes", "sparse_size_bytes",
                        "flops", "effective_flops"]  # fmt: skip
    assert not catalog.is_log_axis("latency_ms") and not catalog.is_log_axis("not_a_metric")


def test_module_names_keep_their_values():
    # the names sweeps.analysis, sweeps.report and sweeps.trial had before the catalog
    from sweeps import analysis, report, trial

    assert trial.CONTRACT_METRICS == ("test_accuracy", "sparsity", "nonzero_params", "total_params")
    assert trial.MEASURED_METRICS == (
        "size_bytes", "sparse_size_bytes", "flops", "effective_flops", "latency_ms",
    )  # fmt: skip
    assert trial.FINAL_EXTRA_METRICS == ("permanent_test_accuracy", "accuracy_change")
    assert report.LOG_UNITS == ("count", "bytes", "FLOPs per batch")
    assert analysis.METRIC_NAMES == {
        "test_accuracy": "test accuracy", "permanent_test_accuracy": "test accuracy after "
        "prune.remove", "sparsity": "sparsity", "nonzero_params": "non-zero parameters",
        "total_params": "total parameters", "size_bytes": "dense size",
        "sparse_size_bytes": "sparse size", "flops": "FLOPs", "effective_flops": "effective FLOPs",
        "latency_ms": "latency", "accuracy_change": "accuracy change from dense",
    }  # fmt: skip
    assert analysis.EXTRA_UNITS == {"permanent_test_accuracy": "fraction",
                                    "accuracy_change": "fraction"}  # fmt: skip
    assert analysis.OBJECTIVE_METRICS == {
        "test_accuracy": "fraction", "sparsity": "fraction", "nonzero_params": "count",
        "total_params": "count", "size_bytes": "bytes", "sparse_size_bytes": "bytes",
        "flops": "FLOPs per batch", "effective_flops": "FLOPs per batch",
        "latency_ms": "ms per batch",
    }  # fmt: skip
    assert analysis.DENSE_FIXED == {"sparsity": 0.0, "accuracy_change": 0.0}
    assert analysis.ZERO_REFERENCE == ("test_accuracy", "permanent_test_accuracy", "sparsity")
    assert analysis.DENSE_REFERENCE == ("nonzero_params", "total_params", "size_bytes",
                                        "sparse_size_bytes", "flops", "effective_flops",
                                        "latency_ms")  # fmt: skip


def test_labels_and_units(builtin_only):
    assert catalog.label("nonzero_params") == "non-zero parameters (count)"
    assert catalog.label("latency_ms") == "latency (ms per batch)"
    assert catalog.label("some_new_metric") == "some new metric"  # not in the catalog
    assert catalog.unit("flops") == "FLOPs per batch" and catalog.unit("nope") == ""
    assert Metric("f1_score", "fraction").label == "f1 score"  # default: the name with spaces


def test_measure_final_takes_prune_cores_values_and_each_registered_measure(builtin_only):
    measurements = {"size_bytes": 400, "sparse_size_bytes": 120, "flops": 9000,
                    "effective_flops": 3000, "latency_ms": 1.5, "latency_device": "cpu",
                    "latency_batch_size": 64, "latency_threads": 2}  # fmt: skip
    expected = {"size_bytes": 400.0, "sparse_size_bytes": 120.0, "flops": 9000.0,
                "effective_flops": 3000.0, "latency_ms": 1.5}  # fmt: skip
    got = catalog.measure_final(measurements, model=None, example=None)
    assert got == expected and list(got) == list(expected)
    assert all(type(v) is float for v in got.values())
    seen = []

    def count(model, example):
        seen.append((model, example))
        return 11

    register_metric(unit_metric("my_cost", measure=count))
    got = catalog.measure_final(measurements, model="MODEL", example="BATCH")
    assert got == {**expected, "my_cost": 11.0} and seen == [("MODEL", "BATCH")]


# ---------------------------------------------------------------------------------------------
# Registering a metric


def test_a_registered_metric_is_an_objective_with_its_unit_and_reference(builtin_only):
    from sweeps.analysis import fixed_reference, parse_objectives, partial_fixed_reference

    with pytest.raises(ValueError, match="'my_cost' is unknown"):
        parse_objectives("test_accuracy:max,my_cost:min")
    register_metric(unit_metric("my_cost", label="my cost"))
    objs = parse_objectives("test_accuracy:max,my_cost:min")  # asks the catalog at the call
    assert [str(o) for o in objs] == ["test_accuracy:max", "my_cost:min"]
    assert catalog.objective_metrics()["my_cost"] == "count"
    assert catalog.label("my_cost") == "my cost (count)" and catalog.is_log_axis("my_cost")
    assert "my_cost" in catalog.final_metrics() and "my_cost" in catalog.dense_reference()
    # the "dense" reference: the dense model's value, when minimised
    assert fixed_reference(objs, {"my_cost": 50.0}) == (0.0, 50.0)
    assert math.isnan(partial_fixed_reference(objs, {})[1])  # dense value unknown
    assert math.isnan(partial_fixed_reference("test_accuracy:max,my_cost:max", {"my_cost": 5})[1])
    # a "zero" reference, when maximised; a fraction's best possible value is 1
    register_metric(Metric("f1", "fraction", reference="zero", measure=lambda m, x: 0.5))
    assert fixed_reference("f1:max,my_cost:min", {"my_cost": 50.0}) == (0.0, 50.0)
    assert catalog.get_metric("f1").direction == "max" and catalog.get_metric("f1").best == 1.0


def test_analyse_takes_a_registered_metrics_dense_value_from_its_source_column(builtin_only):
    from sweeps.analysis import analyse

    register_metric(unit_metric("my_total", objective=False, reference=None))
    register_metric(unit_metric("my_cost", dense_from="my_total"))
    register_metric(unit_metric("other_cost"))  # "dense", but no source of its dense value
    runs = pd.DataFrame({
        "model": ["cnn"] * 3, "test_accuracy": [0.9, 0.8, 0.7], "dense_test_accuracy": 0.95,
        "my_cost": [60.0, 30.0, 10.0], "my_total": [100.0, 100.0, 90.0],
        "other_cost": [5.0, 4.0, 3.0], "total_params": 1000.0,
    })  # fmt: skip
    a = analyse(runs, "test_accuracy:max,my_cost:min")
    assert a.reference == (0.0, 100.0) and a.reference_kinds == ("fixed", "fixed")
    assert a.dense_values["my_cost"] == 100.0
    # (0.9 x (100 - 60)) + (0.8 x (60 - 30)) + (0.7 x (30 - 10)), over the box 1 x 100
    assert a.hypervolume == pytest.approx(0.9 * 40 + 0.8 * 30 + 0.7 * 20)
    assert a.hypervolume_normalised == pytest.approx(a.hypervolume / 100.0)
    assert a.baselines["my_cost"].tolist() == [100.0]  # the dense star on its axis
    b = analyse(runs, "test_accuracy:max,other_cost:min")
    assert b.reference_kinds == ("fixed", "data")  # no dense value: the data-dependent one
    assert b.reference[1] == pytest.approx(5.0 + 0.1 * 2.0)
    c = analyse(runs, "test_accuracy:max,other_cost:min", dense_values={"other_cost": 8.0})
    assert c.reference == (0.0, 8.0) and c.reference_kinds == ("fixed", "fixed")


def test_a_maximised_metric_other_than_a_fraction_has_no_best_value(builtin_only):
    from sweeps.analysis import normalised_hypervolume

    register_metric(Metric("throughput", "images per s", reference="zero",
                           measure=lambda m, x: 1.0))  # fmt: skip
    assert catalog.get_metric("throughput").best is None
    assert math.isnan(normalised_hypervolume(3.0, "throughput:max,nonzero_params:min",
                                             (0.0, 10.0)))  # fmt: skip
    assert normalised_hypervolume(3.0, "test_accuracy:max,nonzero_params:min", (0.0, 10.0)) == 0.3


@pytest.mark.parametrize(
    "metric, match",
    [
        (lambda: unit_metric("test_accuracy"), "'test_accuracy' is already in the catalog"),
        (lambda: unit_metric(measure=None), "give when='final' and measure="),
        (lambda: unit_metric(when="step"), "give when='final' and measure="),
        (lambda: unit_metric(name="a:b"), "a name is letters"),
        (lambda: unit_metric(reference="one"), "reference 'one'"),
        (lambda: unit_metric(direction="max"), "a dense reference is min"),
        (lambda: unit_metric(reference=None, dense_from="x"), "set reference='dense'"),
        (lambda: unit_metric(when="sometimes"), "when 'sometimes'"),
        (lambda: unit_metric(measure=3), "measure must be a function"),
    ],
)
def test_register_refuses_what_cannot_work(builtin_only, metric, match):
    with pytest.raises(ValueError, match=match):
        register_metric(metric())
    assert catalog.metrics() == catalog.BUILTIN


def test_the_sweep_command_line_knows_a_plugins_metric(builtin_only, monkeypatch):
    from sweeps.cli import UsageError, resolve_spec
    from sweeps.resnet18_iterative import STUDY

    args = ["--quick", "--objectives", "test_accuracy:max,conv_weights:min"]
    with pytest.raises(UsageError, match="'conv_weights' is unknown; choose from: test_accuracy"):
        resolve_spec(STUDY, args)
    monkeypatch.delitem(sys.modules, "catalog_plugin", raising=False)
    spec = resolve_spec(STUDY, [*args, "--plugin", PLUGIN])
    assert spec.plugins == (PLUGIN,) and "conv_weights" in catalog.objective_metrics()
    assert catalog.get_metric("conv_params").objective is False
    sys.modules.pop("catalog_plugin", None)  # imported again where a later test needs it


# ---------------------------------------------------------------------------------------------
# End to end: a sweep ranks on a plugin's metric


@pytest.fixture
def plugin_metrics(monkeypatch):
    """The catalog as shipped plus what the plugin registers in this process (the sweep's
    driver imports it); afterwards the catalog and the imported modules are as before."""
    monkeypatch.setattr(catalog, "_METRICS", {m.name: m for m in catalog.BUILTIN})
    sys.modules.pop("catalog_plugin", None)
    yield
    sys.modules.pop("catalog_plugin", None)


def nonzero_conv_weights(state: dict) -> tuple[int, int]:
    """(non-zero, all) conv weights of a state dict: its 4-D tensors, counted here, apart from
    the plugin's own function."""
    convs = [v for v in state.values() if getattr(v, "ndim", 0) == 4]
    return sum(int((w != 0).sum()) for w in convs), sum(w.numel() for w in convs)


@pytest.mark.slow
def test_a_sweep_ranks_on_a_metric_a_plugin_registered(tmp_path, ray_tmpdir, plugin_metrics):
    import torch

    from sweeps.analysis import pareto_mask
    from sweeps.resnet18_iterative import STUDY
    from sweeps.runner import main

    uri = f"sqlite:///{tmp_path}/m.db"
    status = main(STUDY, [
        "--quick", "--model", "cnn", "--num-samples", "2", "--baseline-epochs", "2",
        "--objectives", "test_accuracy:max,conv_weights:min", "--plugin", PLUGIN,
        "--tracking-uri", uri, "--experiment", "catalog", "--storage-path", str(tmp_path / "ray"),
        "--cache-dir", str(tmp_path / "baselines"), "--results-dir", str(tmp_path / "results"),
        "--max-concurrent", "2", "--seed", "3",
    ])  # fmt: skip
    assert status == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("catalog")
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_ids=[exp.experiment_id])
    parent = runs[runs["tags.mlflow.parentRunId"].isna()].iloc[0]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(children) == 2 and (children["status"] == "FINISHED").all()

    # each trial measured the plugin's metrics on its final model, logged at its last step:
    # equal to a count of its checkpoint's conv weights
    for _, row in children.iterrows():
        name = row["tags.mlflow.runName"]
        path = client.download_artifacts(row["run_id"], f"checkpoints/{name}.pt", str(tmp_path))
        nonzero, total = nonzero_conv_weights(torch.load(path, weights_only=True))
        assert (nonzero, total) != (0, 0) and nonzero < total
        assert row["metrics.conv_weights"] == nonzero
        assert row["metrics.conv_params"] == total == 1 * 16 * 9 + 16 * 32 * 9  # the CNN's convs
        last = int(row["params.iterations"])
        history = client.get_metric_history(row["run_id"], "conv_weights")
        assert [(m.step, m.value) for m in history] == [(last, float(nonzero))]

    # the fixed reference the catalog gives: accuracy 0, the dense model's conv weights
    (cached,) = [f for f in os.listdir(tmp_path / "baselines") if f.endswith(".pt")]
    dense_state = torch.load(tmp_path / "baselines" / cached, weights_only=True)["state"]
    dense_nonzero, dense_total = nonzero_conv_weights(dense_state)
    assert dense_nonzero == dense_total == 4752  # nothing pruned, no weight exactly 0
    assert parent["metrics.pareto_reference.test_accuracy"] == 0.0
    assert parent["metrics.pareto_reference.conv_weights"] == dense_nonzero
    assert parent["tags.pareto_reference_kinds"] == "fixed,fixed"
    points = sorted(zip(children["metrics.conv_weights"], children["metrics.test_accuracy"],
                        strict=True))  # fmt: skip
    edges = [c for c, _ in points] + [float(dense_nonzero)]
    area = sum((edges[k + 1] - edges[k]) * max(a for _, a in points[: k + 1])
               for k in range(len(points)))  # fmt: skip
    assert parent["metrics.pareto_hypervolume"] == pytest.approx(area, rel=1e-9)

    # pareto.csv ranks on it: its front is the non-dominated set of (accuracy, conv weights)
    sweep = parent["tags.sweep"]
    table = pd.read_csv(tmp_path / "results" / sweep / "pareto.csv")
    assert (table["pareto_reference.conv_weights"] == dense_nonzero).all()
    table = table.set_index("run_id").loc[list(children["run_id"])]
    values = children[["metrics.test_accuracy", "metrics.conv_weights"]].to_numpy(dtype=float)
    assert table["conv_weights"].tolist() == children["metrics.conv_weights"].tolist()
    assert table["pareto"].tolist() == pareto_mask(values, [True, False]).tolist()
    assert np.isfinite(table["conv_weights"]).all()
