"""``python -m prune_core``: one recipe end to end as a subprocess, its JSON report and its saved
model (bad input: tests/test_bad_inputs.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from prune_core.data import load_dataset
from prune_core.models import build_model
from prune_core.pruning import prunable_targets
from prune_core.train import evaluate

FAST = ["--baseline-epochs", "1", "--finetune-epochs", "1"]
RECIPE = [
    "--dataset",
    "digits",
    "--model",
    "cnn",
    "--method",
    "l1_unstructured",
    "--sparsity",
    "0.5",
]
# cnn on 8x8 digits: prunable weights per tensor, and every parameter
WEIGHTS = {"0.weight": 16 * 9, "3.weight": 32 * 16 * 9, "7.weight": 128 * 128, "9.weight": 10 * 128}
TOTAL_PARAMS = sum(WEIGHTS.values()) + 16 + 32 + 128 + 10  # 22,602
TIMING_KEYS = {"seconds", "latency_ms"}


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prune_core", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=str(cwd),
        stdin=subprocess.DEVNULL,
    )


def without_timings(obj):
    """The report minus wall-clock figures, which differ from run to run."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def stdout_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("stdout")
    proc = run_cli(*RECIPE, *FAST, "--json", "-", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def file_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("file")
    proc = run_cli(*RECIPE, *FAST, "--json", "report.json", "--save", "out/model.pt", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc, cwd


def test_json_report_on_stdout(stdout_run):
    report = json.loads(stdout_run.stdout)  # stdout holds the JSON and nothing else
    assert sum(WEIGHTS.values()) == 22_416 and TOTAL_PARAMS == 22_602
    final, dense = report["final"], report["dense"]
    for key in (
        "test_accuracy", "sparsity", "nonzero_params", "total_params", "dense_test_accuracy",
        "size_bytes", "sparse_size_bytes", "flops", "effective_flops", "latency_ms",
    ):  # fmt: skip
        assert key in final, key
    n = sum(WEIGHTS.values())
    # l1_unstructured: round(0.5 * n_i) per tensor, so within one weight per tensor of 0.5
    assert abs(final["sparsity"] - 0.5) <= len(WEIGHTS) / n
    zeros = sum(round(0.5 * n_i) for n_i in WEIGHTS.values())
    assert final["sparsity"] == pytest.approx(zeros / n, abs=1e-12)
    assert final["total_params"] == TOTAL_PARAMS
    assert final["nonzero_params"] == TOTAL_PARAMS - zeros  # biases are not pruned
    assert 0 <= final["test_accuracy"] <= 1
    assert final["dense_test_accuracy"] == dense["test_accuracy"]
    assert dense["total_params"] == dense["nonzero_params"] == TOTAL_PARAMS
    assert final["effective_flops"] < final["flops"] == dense["flops"]
    assert final["sparse_size_bytes"] < dense["sparse_size_bytes"]
    assert final["latency_ms"] > 0

    steps = report["per_iteration"]
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1)) == [1]
    assert steps[-1]["sparsity"] == final["sparsity"]
    assert steps[-1]["step_target_sparsity"] == 0.5

    assert set(report["layer_sparsity"]) == set(WEIGHTS)
    for path, value in report["layer_sparsity"].items():
        assert abs(value - 0.5) <= 1 / WEIGHTS[path], path
    assert report["config"]["prune"]["method"] == "l1_unstructured"
    assert report["config"]["train"]["epochs"] == 1


def test_progress_goes_to_stderr(stdout_run):
    epochs = [line for line in stdout_run.stderr.splitlines() if "epoch" in line]
    assert any(line.startswith("[dense] epoch 1/1") for line in epochs)
    assert any(line.startswith("[retrain step 1/1] epoch 1/1") for line in epochs)
    assert "] epoch" not in stdout_run.stdout  # no progress mixed into the JSON


def test_json_file_and_saved_state_dict(stdout_run, file_run):
    proc, cwd = file_run
    assert proc.stdout == ""  # the report went to the file
    from_file = json.loads((cwd / "report.json").read_text())
    from_stdout = json.loads(stdout_run.stdout)
    assert set(from_file) == set(from_stdout)
    assert without_timings(from_file) == without_timings(from_stdout)  # same seed: same report

    state = torch.load(cwd / "out" / "model.pt", weights_only=True)
    assert not any(k.endswith(("_orig", "_mask")) for k in state)  # pruning made permanent
    data = load_dataset("digits")
    model = build_model("cnn", data.in_channels, data.num_classes, data.image_size)
    model.load_state_dict(state)  # strict: the same architecture, nothing missing
    for target in prunable_targets(model):
        assert int((target.tensor() == 0).sum()) == WEIGHTS[target.path] // 2, target.path
    assert evaluate(model, data) == from_file["final"]["test_accuracy"]
