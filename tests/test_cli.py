"""Bad command-line input: one line naming the value and what is allowed, exit 2, no MLflow run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sweeps.cli import UsageError, resolve_spec
from sweeps.resnet18_iterative import STUDY


def run_cli(*args: str, cwd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "sweeps.resnet18_iterative", "--quick", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--num-samples", "0"], ["--num-samples 0", ">= 1"]),
        (["--gpus-per-trial", "-1"], ["--gpus-per-trial -1", ">= 0"]),
        (["--dataset", "nope"], ["'nope'", "digits", "cifar10"]),
        (["--tracking-uri", "sqlite:///{tmp}/a_file/mlflow.db"], ["cannot be written", "a_file"]),
        (["--tracking-uri", "file:///{tmp}/store"], ["'file'", "sqlite"]),
        (["--objectives", "test_accuracy:up,nonzero_params:min"], ["test_accuracy:up", "max"]),
        (["--dataset", "cifar10", "--no-download", "--data-root", "{tmp}/nodata"],
         ["cifar-10-batches-py", "--quick", "download"]),
    ],
)  # fmt: skip
def test_bad_input_one_line_nonzero_exit_no_run(tmp_path, args, needles):
    (tmp_path / "a_file").write_text("not a folder")
    db = tmp_path / "mlflow.db"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--tracking-uri" not in args:
        args += ["--tracking-uri", f"sqlite:///{db}"]
    proc = run_cli(*args, "--cache-dir", str(tmp_path / "cache"), cwd=str(tmp_path))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0]
    assert proc.stdout == ""
    # nothing half-written: no tracking store, no baseline, no Ray results, no mlruns folder
    assert not db.exists()
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "mlruns").exists()
    assert not (tmp_path / "nodata" / "cifar-10-batches-py").exists()


def test_resolve_spec_defaults_and_quick():
    spec = resolve_spec(STUDY, ["--quick"])
    assert (spec.dataset, spec.models, spec.num_samples) == ("digits", ("resnet18",), 6)
    assert spec.experiment == "resnet18_iterative-quick"
    assert os.path.isabs(spec.storage_path) and os.path.isabs(spec.cache_dir)
    full = resolve_spec(STUDY, ["--gpus-per-trial", "0.25", "--num-samples", "3"])
    assert (full.dataset, full.gpus_per_trial, full.num_samples) == ("cifar10", 0.25, 3)
    with pytest.raises(UsageError, match="--max-concurrent 0"):
        resolve_spec(STUDY, ["--max-concurrent", "0"])
    with pytest.raises(UsageError, match="--space 'nope'"):
        resolve_spec(STUDY, ["--space", "nope"])
