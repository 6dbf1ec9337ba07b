"""``python -m sweeps.pareto`` on a real MLflow SQLite store built by hand: the printed table,
pareto.csv (fronts worked out by hand below), pareto.png, report.md, the parent run's artifacts,
the fixed reference point, ``--by`` fronts, ``--reference``, three objectives and an
early-stopped trial (bad input: tests/test_bad_inputs.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import matplotlib.image
import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = "pareto-cli"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Sweep A: model cnn, 1000 parameters, dense accuracy 0.95.
# name: (method, target_sparsity, test_accuracy, nonzero_params, latency_ms or None)
SWEEP_A = {
    "a": ("magnitude", 0.5, 0.94, 500, 2.0),
    "b": ("magnitude", 0.7, 0.92, 300, 1.8),
    "h": ("magnitude", 0.7, 0.92, 300, 1.8),  # duplicate of b: both on the front
    "c": ("magnitude", 0.9, 0.85, 100, 1.5),
    "d": ("structured", 0.5, 0.90, 500, 1.0),  # below a (same size, less accurate)
    "e": ("structured", 0.7, 0.88, 300, 0.8),  # below b
    "f": ("structured", 0.9, 0.70, 100, 0.5),  # below c
    "k": ("structured", 0.5, 0.86, 500, 1.2),  # below d as well: off its group's front too
    "g": ("random", 0.4, 0.93, 600, 2.1),  # below a, alone in its group
    "i": ("structured", 0.3, 0.945, 700, None),  # most accurate; never logged latency_ms
}
# accuracy max vs non-zero params min: nothing beats i's accuracy, c's size; a, b, h between
FRONT_2D = {"a", "b", "h", "c", "i"}
# per method: magnitude keeps all four; structured loses only k (below d); random is g alone
GROUP_FRONT = {"a", "b", "h", "c", "d", "e", "f", "i", "g"}
# with latency_ms min as well (i left out: no latency): g is below a everywhere, k below d
FRONT_3D = {"a", "b", "h", "c", "d", "e", "f"}
# default (fixed) reference: accuracy 0, the dense model's 1000 parameters
REF_FIXED = (0.0, 1000.0)
# hypervolume, minimising (params, -accuracy): staircase of c, b, a, i against REF_FIXED
HV_FIXED = 900 * 0.85 + 700 * (0.92 - 0.85) + 500 * (0.94 - 0.92) + 300 * (0.945 - 0.94)  # 825.5
# normalised by the box between the reference and the best possible point (1.0, 0 parameters)
HV_FIXED_SHARE = HV_FIXED / (1.0 * 1000)
# the same against --reference 0.8,800: 700*0.05 + 500*0.07 + 300*0.02 + 100*0.005
HV_REF = 76.5
# Sweep B: model mlp, every run below a; with it the experiment holds two sweeps.
SWEEP_B = {"m1": ("magnitude", 0.5, 0.80, 800, 3.0), "m2": ("magnitude", 0.9, 0.60, 990, 2.5)}


def _run(client, exp_id, name, parent, params, metrics, status="FINISHED", tags=None):
    tags = {"mlflow.parentRunId": parent, **(tags or {})}
    run = client.create_run(exp_id, run_name=name, tags=tags)
    now = int(time.time() * 1000)
    client.log_batch(
        run.info.run_id,
        params=[Param(k, str(v)) for k, v in params.items()],
        metrics=[Metric(k, float(v), now, 1) for k, v in metrics.items()],
    )
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def _sweep(client, exp_id, name, model, dense, total, trials, extra_children=()):
    parent = client.create_run(exp_id, run_name=name, tags={"sweep": name}).info.run_id
    settings = {"study": name, "num_samples": len(trials), "objectives": "x", "seed": 0}
    client.log_batch(parent, params=[Param(k, str(v)) for k, v in settings.items()])
    now = int(time.time() * 1000)
    client.log_batch(
        parent,
        metrics=[
            Metric("dense_test_accuracy", dense, now, 0),
            Metric(f"dense_test_accuracy.{model}", dense, now, 0),
        ],
    )
    for run_name, values in {**trials, **dict(extra_children)}.items():
        tags = {"early_stopped": "rung 1"} if run_name == "stopped" else {}
        method, target, acc, nonzero, latency = values
        params = {
            "dataset": "digits",
            "model": model,
            "method": method,
            "target_sparsity": target,
            "schedule": "oneshot",
            "iterations": 1,
            "finetune_epochs": 1,
            "lr": 0.01,
            "retrain": "finetune",
        }
        metrics = {
            "test_accuracy": acc,
            "nonzero_params": nonzero,
            "total_params": total,
            "sparsity": 1 - nonzero / total,
        }
        if latency is not None:
            metrics["latency_ms"] = latency
        status = {"failed": "FAILED", "stopped": "KILLED"}.get(run_name, "FINISHED")
        _run(client, exp_id, run_name, parent, params, metrics, status, tags)
    client.set_terminated(parent, "FINISHED")
    return parent


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An experiment with two sweeps: A (10 finished, 1 failed and 1 early-stopped child), B (2
    children)."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    client.create_experiment("other-experiment")
    # a failed trial and one stopped early (KILLED, tag early_stopped) that would beat
    # everything, had they counted
    failed = {
        "failed": ("magnitude", 0.99, 0.99, 10, 0.1),
        "stopped": ("magnitude", 0.98, 0.99, 20, 0.1),
    }
    a = _sweep(client, exp_id, "sweep-a", "cnn", 0.95, 1000, SWEEP_A, failed)
    b = _sweep(client, exp_id, "sweep-b", "mlp", 0.90, 1000, SWEEP_B)
    return {"root": root, "uri": uri, "client": client, "a": a, "b": b}


def cli(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "sweeps.pareto", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )


def artifacts(client, run_id):
    return sorted(a.path for a in client.list_artifacts(run_id))


def test_one_sweep_table_csv_png_report_and_parent_artifacts(store, tmp_path):
    out = tmp_path / "out"
    before_b = artifacts(store["client"], store["b"])
    res = cli(
        "--experiment",
        EXPERIMENT,
        "--tracking-uri",
        store["uri"],
        "--sweep",
        store["a"],
        "--out",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    stdout = res.stdout
    assert "5 of 10 analysed runs" in stdout
    assert "1 child run(s) not FINISHED" in stdout  # the failed trial, counted and left out
    assert "stopped early: 1 trial(s) (1 at rung 1); not on the front" in stdout
    # the printed front: exactly the front runs, most accurate first
    table = stdout.split("\n\n")[1].splitlines()
    assert table[0].split()[:4] == ["run_name", "method", "test_accuracy", "nonzero_params"]
    assert [line.split()[0] for line in table[1:]] == ["i", "a", "b", "h", "c"]
    assert "reference point: test_accuracy 0, nonzero_params 1000 (fixed: " in stdout
    assert (
        f"hypervolume: {HV_FIXED:.6g} (fraction x count); {HV_FIXED_SHARE:.4f} of the box" in stdout
    )

    csv = pd.read_csv(out / "pareto.csv")
    assert sorted(csv["run_name"]) == sorted(SWEEP_A)  # every finished run, not failed/stopped
    assert set(csv.loc[csv["pareto"], "run_name"]) == FRONT_2D
    assert csv["test_accuracy"].is_monotonic_decreasing
    assert (csv["dense_test_accuracy"] == 0.95).all() and (csv["sweep"] == "sweep-a").all()
    assert (csv["dataset"] == "digits").all()  # params beyond the recipe come along
    # only columns with a value: not the parent runs' params and metrics that MLflow's union of
    # columns gives every child run (issue 14)
    # (``missing`` is "" where a run has every objective: read back as empty)
    assert not [c for c in csv.columns if csv[c].isna().all() and c != "missing"]
    assert "num_samples" not in csv and "dense_test_accuracy.cnn" not in csv
    assert (csv["pareto_reference.test_accuracy"] == 0.0).all()
    assert (csv["pareto_reference.nonzero_params"] == 1000.0).all()

    png = (out / "pareto.png").read_bytes()
    assert png[:8] == PNG_MAGIC
    height, width, _ = matplotlib.image.imread(out / "pareto.png").shape
    assert width > 1000 and height > 700  # 7.8 x 5.4 in at 150 dpi

    report = (out / "report.md").read_text()
    assert f"**Hypervolume** {HV_FIXED:.6g}" in report
    assert "**Reference point** test_accuracy = 0 fraction, nonzero_params = 1000 count" in report
    assert "exactly: `test_accuracy=0.0, nonzero_params=1000.0`" in report
    assert "comparable across sweeps of the same dense model" in report
    # the early-stopped trial is listed, with its rung, and is not on the front
    stopped = report.split("## Stopped early (1 trial(s) (1 at rung 1))")[1].split("##")[0]
    assert "| stopped | 1 | magnitude | 0.99 | 20 |" in stopped
    assert "![Pareto front](pareto.png)" in report
    assert "| num_samples | 10 |" in report  # the parent run's settings
    assert "## The front (5 runs)" in report

    client = store["client"]
    assert {"pareto.csv", "pareto.png", "report.md"} <= set(artifacts(client, store["a"]))
    assert artifacts(client, store["b"]) == before_b  # the other sweep is untouched
    local = client.download_artifacts(store["a"], "pareto.csv", str(tmp_path))
    assert pd.read_csv(local).equals(csv)


def test_by_method_fronts_and_given_reference(store, tmp_path):
    out = tmp_path / "out"
    res = cli(
        "--experiment",
        EXPERIMENT,
        "--tracking-uri",
        store["uri"],
        "--sweep",
        store["a"],
        "--by",
        "method",
        "--reference",
        "0.8,800",
        "--out",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    csv = pd.read_csv(out / "pareto.csv")
    assert set(csv.loc[csv["pareto"], "run_name"]) == FRONT_2D
    assert set(csv.loc[csv["group_pareto"], "run_name"]) == GROUP_FRONT
    assert (csv["group"] == csv["method"]).all()
    assert f"hypervolume: {HV_REF:.6g}" in res.stdout
    assert "given with --reference" in res.stdout
    # per-group hypervolume against the same reference: magnitude's front is the global one
    # without i (0.945 > 0.8 adds 100 * 0.005); structured: d, e, f, i; f (0.70) is outside
    groups = {line.split()[0]: line.split() for line in res.stdout.splitlines() if line}
    assert float(groups["magnitude"][-1]) == pytest.approx(HV_REF - 0.5)
    # structured, minimising (params, -acc) against (800, -0.8): e (300, -.88), d (500, -.90),
    # i (700, -.945)
    assert float(groups["structured"][-1]) == pytest.approx(500 * 0.08 + 300 * 0.02 + 100 * 0.045)
    assert float(groups["random"][-1]) == pytest.approx(200 * 0.13)
    report = (out / "report.md").read_text()
    assert "## Fronts per method" in report and "given with --reference" in report


def test_whole_experiment_three_objectives_default_out(store, tmp_path):
    client = store["client"]
    before = {p: artifacts(client, store[p]) for p in ("a", "b")}
    res = cli(
        "--experiment",
        EXPERIMENT,
        "--tracking-uri",
        store["uri"],
        "--objectives",
        "test_accuracy:max,nonzero_params:min,latency_ms:min",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    out = tmp_path / "mlruns" / "reports" / EXPERIMENT
    csv = pd.read_csv(out / "pareto.csv")
    assert len(csv) == len(SWEEP_A) + len(SWEEP_B)  # both sweeps
    # sweep B's runs are below a in all three objectives
    assert set(csv.loc[csv["pareto"], "run_name"]) == FRONT_3D
    assert csv.set_index("run_name").loc["i", "missing"] == "latency_ms"
    assert "left out: 1 run(s) missing an objective (latency_ms: 1 run(s))" in res.stdout
    # no dense latency is known: that objective's reference depends on the runs, and says so
    assert "latency_ms worst value over the analysed runs" in res.stdout
    assert "not comparable" in res.stdout
    assert "2 sweep(s)" in res.stdout
    height, width, _ = matplotlib.image.imread(out / "pareto.png").shape
    assert width > 2 * height  # three panels side by side
    # two sweeps analysed: no single parent run to attach the report to
    assert {p: artifacts(client, store[p]) for p in ("a", "b")} == before
    assert "logged" not in res.stdout
