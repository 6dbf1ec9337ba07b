"""Storage that refuses a write, and a Ray Tune state that a crash truncated: one line, the
parent run FAILED with ``failure=storage`` and everything logged kept, then ``--resume`` (with a
writable folder, or from what MLflow holds when Tune's state is unreadable) finishes the sweep
without running a finished trial again. The faults are injected where the sweep writes (a disk
cannot be filled or mounted read-only here: CI runs as root on a folder it owns)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

import sweeps.runner
from sweeps.resnet18_iterative import STUDY
from sweeps.runner import main


def args_in(tmp_path: Path, results: str = "results") -> list[str]:
    return [
        "--quick", "--model", "cnn", "--num-samples", "2", "--baseline-epochs", "2",
        "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--experiment", "storage",
        "--cache-dir", str(tmp_path / "cache"), "--storage-path", str(tmp_path / "ray"),
        "--results-dir", str(tmp_path / results), "--max-concurrent", "2",
    ]  # fmt: skip


def runs(tmp_path: Path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    frame = mlflow.search_runs(experiment_names=["storage"])
    child = frame["tags.mlflow.parentRunId"].notna()
    return frame[~child].iloc[0], frame[child]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": error: " in line]


@pytest.mark.slow
def test_full_and_read_only_storage_then_truncated_tune_state(
    tmp_path, ray_tmpdir, monkeypatch, capfd
):
    real_write = sweeps.runner._write_results

    def full(sweep, runs_, stopped, out_dir):
        raise OSError(errno.ENOSPC, "No space left on device", f"{out_dir}/pareto.csv")

    monkeypatch.setattr(sweeps.runner, "_write_results", full)
    assert main(STUDY, args_in(tmp_path)) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err
    [line] = error_lines(err)
    assert "error: storage: " in line and "No space left on device (errno 28)" in line
    assert "pareto.csv" in line and "--resume" in line
    parent, children = runs(tmp_path)
    assert parent["status"] == "FAILED" and parent["tags.failure"] == "storage"
    assert len(children) == 2 and (children["status"] == "FINISHED").all()  # all kept
    ended = dict(zip(children["run_id"], children["end_time"], strict=True))
    name = parent["tags.sweep"]

    def read_only(sweep, runs_, stopped, out_dir):
        raise OSError(errno.EROFS, "Read-only file system", out_dir)

    monkeypatch.setattr(sweeps.runner, "_write_results", read_only)
    resume = ["--resume", name, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    assert main(STUDY, resume) == 1
    [line] = error_lines(capfd.readouterr().err)
    assert "Read-only file system (errno 30)" in line
    assert runs(tmp_path)[0]["tags.failure"] == "storage"

    monkeypatch.setattr(sweeps.runner, "_write_results", real_write)
    assert main(STUDY, [*resume, "--results-dir", str(tmp_path / "elsewhere")]) == 0
    capfd.readouterr()
    parent, children = runs(tmp_path)
    assert parent["status"] == "FINISHED"
    assert (tmp_path / "elsewhere" / name / "pareto.csv").is_file()
    # the finished trials were not run again: the same two runs, ended when they first ended
    assert dict(zip(children["run_id"], children["end_time"], strict=True)) == ended

    # a crash mid-write truncates Ray Tune's experiment state; mark the sweep unfinished again
    MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").set_terminated(parent["run_id"], "KILLED")
    tune_dir = tmp_path / "ray" / name
    state_files = [p for p in tune_dir.iterdir() if p.is_file()]
    assert any(p.name.startswith("experiment_state") for p in state_files)
    for path in state_files:
        path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 3])
    assert main(STUDY, resume) == 0
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert f"Ray Tune's saved state in {tune_dir} is unreadable" in err
    assert any(p.name.startswith(f"{name}.unreadable-") for p in (tmp_path / "ray").iterdir())
    parent, children = runs(tmp_path)
    assert parent["status"] == "FINISHED"
    assert dict(zip(children["run_id"], children["end_time"], strict=True)) == ended
