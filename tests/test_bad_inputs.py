"""Every command refuses bad input before any work: exit status 2, one line on stderr that names
the flag, no traceback, no MLflow run, no file written. One table per command, run in-process
(a subprocess costs seconds of imports per row); one runs as a real process, to time it."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

import prune_core.__main__ as prune_core_cli
import sweeps.cli
import sweeps.pareto
import sweeps.runner
import sweeps.server
from sweeps.resnet18_iterative import STUDY

REPO = Path(__file__).resolve().parent.parent
# rows for "the DB driver is missing" only mean that where it is missing
NO_PSYCOPG = importlib.util.find_spec("psycopg") is None
NO_MYSQLDB = importlib.util.find_spec("MySQLdb") is None


def bad_stores(root: Path) -> None:
    """Files in ``root`` that a tracking URI may name but that are no MLflow store: text
    (``a_file``, "not a folder"), random bytes, an SQLite database of something else, and a
    damaged one (the SQLite header, then random bytes)."""
    (root / "a_file").write_text("not a folder")
    noise = random.Random(0).randbytes(4096)
    (root / "random.bin").write_bytes(noise)
    (root / "damaged.db").write_bytes(b"SQLite format 3\x00" + noise)
    with contextlib.closing(sqlite3.connect(root / "foreign.db")) as conn, conn:
        conn.execute("create table notes (body text)")


def tree(root: Path) -> set[str]:
    """Every file and folder under ``root``, as paths relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_count(db: Path) -> int:
    """MLflow runs in the SQLite store ``db`` (0 if it does not exist)."""
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master")}
        return conn.execute("select count(*) from runs").fetchone()[0] if "runs" in tables else 0


def call(main, argv: list[str], capfd) -> tuple[int, str, str]:
    """``main(argv)`` in this process: exit status (argparse's SystemExit included), stdout and
    stderr as the file descriptors saw them."""
    capfd.readouterr()
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    out, err = capfd.readouterr()
    return status, out, err


def assert_refused(status: int, out: str, err: str, needles: list[str]) -> None:
    """Exit 2, nothing on stdout, one line on stderr holding every needle (the flag first)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert "Traceback" not in err + out
    assert len(lines) == 1, err
    assert re.match(r"python -m [\w.]+: error: ", lines[0]), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert out == ""


def fill(args: list[str], **values: str) -> list[str]:
    """``args`` with ``{tmp}``-style placeholders filled in."""
    return [a.format(**values) for a in args]


# --- python -m sweeps.<study> --------------------------------------------------------------
# (args after --quick, needles: the flag first); every row also gets a SQLite tracking URI in
# tmp_path unless it gives its own --tracking-uri (argparse: the last one wins)
SWEEP_ROWS = [
    # budgets (sweeps.budget)
    pytest.param(["--epoch-budget", "0"], ["--epoch-budget 0", "1.."], id="epoch-budget-0"),
    pytest.param(["--epoch-budget", "-5"], ["--epoch-budget -5", "1.."], id="epoch-budget-neg"),
    pytest.param(
        ["--epoch-budget", "abc"], ["--epoch-budget 'abc'", "integer"], id="epoch-budget-text"
    ),  # fmt: skip
    pytest.param(
        ["--epoch-budget", "10", "--grid"],
        ["--epoch-budget 10 with --grid"],
        id="epoch-budget-grid",
    ),  # fmt: skip
    pytest.param(
        ["--time-budget", "0s"], ["--time-budget '0s'", "more than 0 s"], id="time-budget-0"
    ),  # fmt: skip
    pytest.param(
        ["--time-budget", "1x"], ["--time-budget '1x'", "s, m, h or d"], id="time-budget-unit"
    ),  # fmt: skip
    # resources and the cluster, refused before the data loads or Ray starts
    pytest.param(
        ["--gpus-per-trial", "4"],
        ["--gpus-per-trial 4", "GPUs", "--gpus-per-trial 0"],
        id="gpus-without-gpus",
        marks=pytest.mark.skipif(torch.cuda.device_count() >= 4, reason="this machine has 4"),
    ),
    pytest.param(
        ["--address", "127.0.0.1:1"],
        ["--address 127.0.0.1:1", "no Ray cluster"],
        id="address-nothing-listens",
    ),  # fmt: skip
    # early stopping and the sampler
    pytest.param(["--eta", "1"], ["--eta 1", ">= 2"], id="eta-1"),
    pytest.param(["--eta", "x"], ["--eta", "invalid int value"], id="eta-text"),
    pytest.param(["--early-stop", "nope"], ["--early-stop", "'nope'", "mo-asha"], id="early-stop"),
    pytest.param(
        ["--sampler", "nope"], ["--sampler", "'nope'", "tpe, random, nsga2, gp"], id="sampler"
    ),
    pytest.param(["--max-failures", "-1"], ["--max-failures -1", "0..100"], id="max-failures"),
    pytest.param(
        ["--resume", "no-such-sweep"], ["--resume 'no-such-sweep'", "no sweep"], id="resume-unknown"
    ),
    # issue 13's table
    pytest.param(["--seed", "-1"], ["--seed -1", "0..4294967295"], id="seed-negative"),
    pytest.param(["--seed", str(2**40)], [f"--seed {2**40}", "0..4294967295"], id="seed-2**40"),
    pytest.param(["--seed", str(2**32)], [f"--seed {2**32}"], id="seed-2**32"),
    pytest.param(["--experiment", ""], ["--experiment ''", "non-empty"], id="experiment-empty"),
    pytest.param(["--experiment", "  "], ["--experiment '  '"], id="experiment-blank"),
    pytest.param(
        ["--tracking-uri", "postgresql://u:secret@localhost/mlflow"],
        ["--tracking-uri", "psycopg", "pip install 'psycopg[binary]'", "u:***@"],
        id="tracking-postgresql-no-driver",
        marks=pytest.mark.skipif(not NO_PSYCOPG, reason="psycopg is installed"),
    ),
    pytest.param(
        ["--tracking-uri", "mysql://u@localhost/mlflow"],
        ["--tracking-uri", "MySQLdb", "pip install 'mysqlclient'"],
        id="tracking-mysql-no-driver",
        marks=pytest.mark.skipif(not NO_MYSQLDB, reason="mysqlclient is installed"),
    ),
    pytest.param(["--storage-path", "/proc/x"], ["--storage-path /proc/x"], id="storage-proc"),
    pytest.param(["--cache-dir", "/proc/x"], ["--cache-dir /proc/x"], id="cache-proc"),
    pytest.param(["--results-dir", "/proc/x"], ["--results-dir /proc/x"], id="results-proc"),
    # from tests/test_cli.py
    pytest.param(["--num-samples", "0"], ["--num-samples 0", "1..100000"], id="num-samples-0"),
    pytest.param(["--gpus-per-trial", "-1"], ["--gpus-per-trial -1", ">= 0"], id="gpus-negative"),
    pytest.param(["--dataset", "nope"], ["--dataset 'nope'", "digits", "cifar10"], id="dataset"),
    pytest.param(
        ["--tracking-uri", "sqlite:///{tmp}/a_file/mlflow.db"],
        ["--tracking-uri", "cannot write", "a_file"],
        id="tracking-under-a-file",
    ),
    pytest.param(
        ["--tracking-uri", "file:///{tmp}/store"],
        ["--tracking-uri", "'file'", "sqlite"],
        id="tracking-file-store",
    ),  # fmt: skip
    pytest.param(
        ["--objectives", "test_accuracy:up,nonzero_params:min"],
        ["--objectives", "test_accuracy:up", "max"],
        id="objectives-up",
    ),
    pytest.param(
        ["--dataset", "cifar10", "--no-download", "--data-root", "{tmp}/nodata"],
        ["--dataset", "{tmp}/nodata/cifar-10-batches-py", "download"],
        id="dataset-absent-no-download",
    ),
    pytest.param(["--max-concurrent", "0"], ["--max-concurrent 0", ">= 1"], id="max-concurrent-0"),
    pytest.param(["--space", "nope"], ["--space 'nope'"], id="space"),
    # more of the same kinds
    pytest.param(["--num-samples", "-3"], ["--num-samples -3"], id="num-samples-negative"),
    pytest.param(["--num-samples", "1.5"], ["--num-samples", "1.5"], id="num-samples-float"),
    pytest.param(["--cpus-per-trial", "0"], ["--cpus-per-trial 0", "> 0"], id="cpus-0"),
    pytest.param(["--cpus-per-trial", "nan"], ["--cpus-per-trial nan"], id="cpus-nan"),
    pytest.param(["--gpus-per-trial", "nan"], ["--gpus-per-trial nan"], id="gpus-nan"),
    pytest.param(["--max-concurrent", "-2"], ["--max-concurrent -2"], id="max-concurrent-neg"),
    pytest.param(["--baseline-epochs", "-1"], ["--baseline-epochs -1", ">= 1"], id="epochs-neg"),
    # issue 24: empty strings are values, huge and infinite numbers are refused, an untrained
    # baseline is refused before its store and cache exist
    pytest.param(["--model", ""], ["--model ''", "must not be empty"], id="model-empty"),
    pytest.param(["--dataset", ""], ["--dataset ''", "must not be empty"], id="dataset-empty"),
    pytest.param(["--sampler", ""], ["--sampler ''", "must not be empty"], id="sampler-empty"),
    pytest.param(["--address", ""], ["--address ''", "must not be empty"], id="address-empty"),
    pytest.param(["--resume", ""], ["--resume ''", "must not be empty"], id="resume-empty"),
    pytest.param(
        ["--results-dir", ""], ["--results-dir ''", "must not be empty"], id="results-dir-empty"
    ),  # fmt: skip
    pytest.param(
        ["--num-samples", "9" * 23],
        [f"--num-samples {'9' * 23}", "1..100000"],
        id="num-samples-huge",
    ),  # fmt: skip
    pytest.param(
        ["--max-failures", "9" * 23],
        [f"--max-failures {'9' * 23}", "0..100"],
        id="max-failures-huge",
    ),  # fmt: skip
    pytest.param(["--cpus-per-trial", "inf"], ["--cpus-per-trial inf", "> 0"], id="cpus-inf"),
    pytest.param(["--gpus-per-trial", "inf"], ["--gpus-per-trial inf", ">= 0"], id="gpus-inf"),
    pytest.param(
        ["--baseline-epochs", "0"],
        ["--baseline-epochs 0", ">= 1", "--init-checkpoint"],
        id="epochs-0",
    ),  # fmt: skip
    pytest.param(["--model", "nope"], ["--model 'nope'", "resnet18"], id="model"),
    pytest.param(["--model", "cnn,nope"], ["--model 'nope'"], id="model-second-of-two"),
    pytest.param(["--seed", "abc"], ["--seed", "'abc'"], id="seed-not-int"),
    pytest.param(
        ["--objectives", "test_accuracy:max"],
        ["--objectives", "two or three"],
        id="objectives-one",
    ),  # fmt: skip
    pytest.param(
        ["--objectives", "test_accuracy:max,nonzero_params:min,sparsity:max,flops:min"],
        ["--objectives", "two or three"],
        id="objectives-four",
    ),
    pytest.param(
        ["--objectives", "nope:max,nonzero_params:min"],
        ["--objectives", "'nope'"],
        id="objectives-unknown-metric",
    ),  # fmt: skip
    pytest.param(
        ["--storage-path", "{tmp}/a_file"], ["--storage-path", "a_file"], id="storage-file"
    ),
    pytest.param(
        ["--cache-dir", "{tmp}/a_file/sub"],
        ["--cache-dir", "a_file is a file"],
        id="cache-under-a-file",
    ),  # fmt: skip
    pytest.param(["--results-dir", "{tmp}/a_file"], ["--results-dir", "a_file"], id="results-file"),
    pytest.param(
        ["--tracking-uri", "sqlite://"], ["--tracking-uri 'sqlite://'"], id="tracking-sqlite-bare"
    ),
    pytest.param(
        ["--tracking-uri", "http://127.0.0.1:1"],
        ["--tracking-uri", "not reachable"],
        id="tracking-http-nothing-there",
    ),  # fmt: skip
    pytest.param(
        ["--tracking-uri", "postgresql+nope://h/db"],
        ["--tracking-uri", "'postgresql+nope'"],
        id="tracking-unknown-driver",
    ),  # fmt: skip
    pytest.param(["--tracking-uri", "ftp://h/x"], ["--tracking-uri", "'ftp'"], id="tracking-ftp"),
    pytest.param(
        ["--address", "nohost"], ["--address 'nohost'", "HOST:PORT"], id="address-no-port"
    ),
    pytest.param(["--address", "h:99999"], ["--address 'h:99999'", "1..65535"], id="address-port"),
    pytest.param(["--nope"], ["--nope"], id="unknown-flag"),
    # issue 24: a tracking URI naming a file that is not an MLflow store
    pytest.param(
        ["--tracking-uri", "sqlite:///{tmp}/a_file"],
        ["--tracking-uri {tmp}/a_file", "not an SQLite database"],
        id="tracking-text-file",
    ),
    pytest.param(
        ["--tracking-uri", "sqlite:///{tmp}/random.bin"],
        ["--tracking-uri {tmp}/random.bin", "not an SQLite database"],
        id="tracking-random-bytes",
    ),
    pytest.param(
        ["--tracking-uri", "sqlite:///{tmp}/damaged.db"],
        ["--tracking-uri {tmp}/damaged.db", "damaged SQLite database"],
        id="tracking-damaged-sqlite",
    ),
    pytest.param(
        ["--tracking-uri", "sqlite:///{tmp}/foreign.db"],
        ["--tracking-uri {tmp}/foreign.db", "not an MLflow store", "notes"],
        id="tracking-foreign-sqlite",
    ),
    pytest.param(
        ["--tracking-uri", "sqlite:///{tmp}"],
        ["--tracking-uri {tmp}", "is a folder"],
        id="tracking-a-folder",
    ),
    # issue 24: refused after the tracking URI was checked, which made mlruns/ and left it
    pytest.param(
        ["--tracking-uri", "sqlite:///mlruns/mlflow.db", "--resume", "no-such-sweep"],
        ["--resume 'no-such-sweep'", "no sweep"],
        id="resume-unknown-default-store",
    ),
    pytest.param(
        [
            "--tracking-uri",
            "sqlite:///mlruns/mlflow.db",
            "--dataset",
            "cifar10",
            "--no-download",
            "--data-root",
            "{tmp}/nodata",
        ],
        ["--dataset", "{tmp}/nodata/cifar-10-batches-py", "download"],
        id="dataset-absent-default-store",
    ),  # fmt: skip
]


@pytest.fixture
def sweep_sandbox(tmp_path, monkeypatch):
    """tmp_path as the working folder (the default mlruns/ paths land there) with a file named
    a_file and the other ``bad_stores`` in it; Ray refuses to start, so a row that got past the
    checks fails fast."""
    bad_stores(tmp_path)
    monkeypatch.chdir(tmp_path)
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("bad input reached ray.init")

    monkeypatch.setattr(ray, "init", no_ray)
    return tmp_path


@pytest.mark.parametrize("args, needles", SWEEP_ROWS)
def test_sweep_refuses_bad_input(sweep_sandbox, capfd, args, needles):
    tmp = sweep_sandbox
    db = tmp / "mlflow.db"
    before = tree(tmp)
    argv = ["--quick", "--tracking-uri", f"sqlite:///{db}", *fill(args, tmp=tmp)]
    status, out, err = call(lambda a: sweeps.runner.main(STUDY, a), argv, capfd)
    assert_refused(status, out, err, fill(needles, tmp=tmp))
    assert run_count(db) == 0
    assert tree(tmp) == before  # no store, baseline, Ray folder, results folder or probe left


# --- python -m prune_core ------------------------------------------------------------------
PRUNE_CORE_ROWS = [
    # issue 13's table
    pytest.param(
        ["--device", "cuda"],
        ["--device 'cuda'", "devices: cpu"],
        id="device-cuda-without-gpu",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
    ),  # fmt: skip
    pytest.param(["--device", "foo"], ["--device 'foo'", "devices: cpu"], id="device-foo"),
    pytest.param(["--save", "/proc/x.pt"], ["--save /proc/x.pt", "/proc"], id="save-proc"),
    pytest.param(
        ["--json", "/proc/nonexistent/x.json"],
        ["--json /proc/nonexistent/x.json"],
        id="json-folder-cannot-be-created",
    ),  # fmt: skip
    pytest.param(["--seed", "-1"], ["--seed -1", "0..4294967295"], id="seed-negative"),
    pytest.param(["--seed", str(2**40)], [f"--seed {2**40}"], id="seed-2**40"),
    # from tests/test_prune_core_cli.py
    pytest.param(["--sparsity", "1.2"], ["--sparsity 1.2", "0 <= s < 1"], id="sparsity-1.2"),
    pytest.param(["--method", "nope"], ["--method 'nope'", "l1_unstructured"], id="method"),
    pytest.param(["--iterations", "0"], ["--iterations 0", ">= 1"], id="iterations-0"),
    pytest.param(["--nm", "5:4", "--method", "nm"], ["--nm 5:4", "1 <= N < M"], id="nm-5:4"),
    pytest.param(["--model", "nope"], ["--model 'nope'", "cnn", "resnet18"], id="model"),
    pytest.param(
        ["--dataset", "cifar10", "--no-download", "--data-root", "{tmp}/nd"],
        ["--dataset", "{tmp}/nd", "download"],
        id="dataset-absent-no-download",
    ),
    # more
    pytest.param(["--device", "cuda:99"], ["--device 'cuda:99'"], id="device-cuda-99"),
    pytest.param(["--device", "cuda:x"], ["--device 'cuda:x'"], id="device-cuda-x"),
    pytest.param(["--device", "cpu:1"], ["--device 'cpu:1'"], id="device-cpu-1"),
    pytest.param(["--save", "{tmp}"], ["--save", "is a folder"], id="save-a-folder"),
    pytest.param(
        ["--save", "{tmp}/a_file/m.pt"],
        ["--save", "a_file (is a file, not a folder)"],
        id="save-under-file",
    ),
    pytest.param(["--json", "/proc/x.json"], ["--json /proc/x.json"], id="json-proc"),
    pytest.param(["--cache-dir", "/proc/x"], ["--cache-dir /proc/x"], id="cache-proc"),
    pytest.param(["--cache-dir", "{tmp}/a_file"], ["--cache-dir", "a_file"], id="cache-a-file"),
    pytest.param(["--seed", "abc"], ["--seed", "'abc'"], id="seed-not-int"),
    pytest.param(["--sparsity", "-0.1"], ["--sparsity -0.1"], id="sparsity-negative"),
    pytest.param(["--sparsity", "nan"], ["--sparsity nan"], id="sparsity-nan"),
    pytest.param(["--nm", "abc", "--method", "nm"], ["--nm 'abc'", "N:M"], id="nm-malformed"),
    pytest.param(["--dataset", "nope"], ["--dataset 'nope'", "digits"], id="dataset"),
    pytest.param(["--retrain", "nope"], ["--retrain 'nope'", "finetune"], id="retrain"),
    pytest.param(["--schedule", "nope"], ["--schedule 'nope'", "oneshot"], id="schedule"),
    pytest.param(["--scope", "nope"], ["--scope 'nope'", "layer, global"], id="scope"),
    pytest.param(["--norm", "3"], ["--norm 3", "1, 2"], id="norm-3"),
    pytest.param(["--lr", "-1"], ["--lr -1.0", "> 0"], id="lr-negative"),
    pytest.param(["--baseline-lr", "0"], ["--baseline-lr 0.0", "> 0"], id="baseline-lr-0"),
    pytest.param(["--lr", "inf"], ["--lr inf", "finite float > 0"], id="lr-inf"),
    pytest.param(["--baseline-lr", "inf"], ["--baseline-lr inf", "finite"], id="baseline-lr-inf"),
    pytest.param(["--batch-size", "0"], ["--batch-size 0", ">= 1"], id="batch-size-0"),
    pytest.param(["--finetune-epochs", "-1"], ["--finetune-epochs -1"], id="finetune-epochs-neg"),
    pytest.param(["--baseline-epochs", "-1"], ["--baseline-epochs -1"], id="epochs-negative"),
    pytest.param(
        ["--retrain", "weight_rewind", "--rewind-epoch", "9"],
        ["--rewind-epoch 9", "below"],
        id="rewind-after-training",
    ),  # fmt: skip
    pytest.param(
        ["--retrain", "weight_rewind", "--rewind-epoch", "-1"],
        ["--rewind-epoch -1", ">= 0"],
        id="rewind-negative",
    ),  # fmt: skip
    pytest.param(
        ["--iterations", "3", "--schedule", "oneshot"],
        ["--iterations 3", "1 for oneshot"],
        id="iterations-with-oneshot",
    ),  # fmt: skip
    pytest.param(["--method", "nm", "--sparsity", "0.3"], ["--sparsity 0.3"], id="nm-sparsity"),
    pytest.param(
        ["--remove-channels"], ["--remove-channels", "ln_structured"], id="remove-channels"
    ),
    pytest.param(["--iterations", "abc"], ["--iterations", "'abc'"], id="iterations-not-int"),
    pytest.param(["--nope"], ["--nope"], id="unknown-flag"),
    # a layer the model does not have: refused before the dense model is trained
    pytest.param(["--layers", "nope"], ["--layers ['nope']", "allowed: "], id="layers-unknown"),
]


@pytest.mark.parametrize("args, needles", PRUNE_CORE_ROWS)
def test_prune_core_refuses_bad_input(tmp_path, monkeypatch, capfd, args, needles):
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.chdir(tmp_path)  # the default data root and relative outputs land here
    before = tree(tmp_path)
    argv = ["--baseline-epochs", "1", *fill(args, tmp=tmp_path)]
    status, out, err = call(prune_core_cli.main, argv, capfd)
    assert_refused(status, out, err, fill(needles, tmp=tmp_path))
    assert tree(tmp_path) == before
    assert "[dense]" not in err  # refused before training


# --- python -m sweeps.pareto ---------------------------------------------------------------
EXPERIMENT = "bad-inputs"
RECIPE = {
    "model": "cnn", "method": "magnitude", "target_sparsity": 0.5, "schedule": "oneshot",
    "iterations": 1, "finetune_epochs": 1, "lr": 0.01, "retrain": "finetune",
}  # fmt: skip


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made: a copy saves each test MLflow's schema
    migrations (seconds)."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("empty") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture(scope="module")
def pareto_store(tmp_path_factory, empty_store):
    """A SQLite store with one sweep of two finished trials (and a second, empty experiment)."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("store")
    shutil.copy(empty_store, root / "mlflow.db")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    client.create_experiment("other-experiment")
    parent = client.create_run(exp_id, run_name="sweep-a", tags={"sweep": "sweep-a"}).info.run_id
    now = int(time.time() * 1000)
    for name, acc, nonzero in (("t1", 0.9, 500), ("t2", 0.8, 300)):
        run = client.create_run(exp_id, run_name=name, tags={"mlflow.parentRunId": parent})
        client.log_batch(
            run.info.run_id,
            params=[Param(k, str(v)) for k, v in RECIPE.items()],
            metrics=[
                Metric("test_accuracy", acc, now, 1),
                Metric("nonzero_params", nonzero, now, 1),
            ],
        )
        client.set_terminated(run.info.run_id, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return root, uri


PARETO_ROWS = [
    # issue 13's table
    pytest.param(["--out", "/proc/x"], ["--out /proc/x", "/proc/x"], id="out-proc"),
    # from tests/test_pareto_cli.py
    pytest.param(
        ["--experiment", "nope"],
        ["--experiment 'nope'", EXPERIMENT, "other-experiment"],
        id="unknown-experiment",
    ),  # fmt: skip
    pytest.param(
        ["--objectives", "test_accuracy:max,flops:min"],
        ["--objectives", "'flops'", "nonzero_params, test_accuracy"],
        id="objective-no-run-has",
    ),
    pytest.param(
        ["--objectives", "test_accuracy,nonzero_params:min"],
        ["--objectives", "'test_accuracy'", "METRIC:max or METRIC:min"],
        id="objectives-malformed",
    ),
    pytest.param(["--sweep", "0123abc"], ["--sweep '0123abc'", "(sweep-a)"], id="unknown-sweep"),
    pytest.param(["--by", "optimizer"], ["--by 'optimizer'", "method, model"], id="by-unknown"),
    pytest.param(["--reference", "0.5"], ["--reference '0.5'", "2 comma-separated"], id="ref-one"),
    pytest.param(
        ["--tracking-uri", "sqlite:///{tmp}/absent.db"],
        ["--tracking-uri", "no MLflow store at {tmp}/absent.db"],
        id="store-absent",
    ),
    # more
    pytest.param(["--experiment", ""], ["--experiment ''"], id="experiment-empty"),
    pytest.param(["--experiment", "   "], ["--experiment ''"], id="experiment-blank"),
    pytest.param(["--reference", "a,b"], ["--reference 'a,b'"], id="reference-not-numbers"),
    pytest.param(["--reference=nan,1"], ["--reference 'nan,1'"], id="reference-nan"),
    pytest.param(["--objectives", "test_accuracy:max"], ["--objectives"], id="objectives-one"),
    pytest.param(["--by", ""], ["--by ''"], id="by-empty"),
    pytest.param(["--out", "{tmp}/a_file"], ["--out", "a_file"], id="out-a-file"),
    pytest.param(["--out", "{tmp}/a_file/sub"], ["--out", "a_file is a file"], id="out-under-file"),
    pytest.param(
        ["--tracking-uri", "file:///{tmp}/x"], ["--tracking-uri", "'file'"], id="store-file"
    ),
    pytest.param(
        ["--tracking-uri", "http://127.0.0.1:1"],
        ["--tracking-uri", "not reachable"],
        id="store-http-nothing-there",
    ),  # fmt: skip
    pytest.param(
        ["--tracking-uri", "postgresql://u:pw@localhost/db"],
        ["--tracking-uri", "pip install"],
        id="store-postgresql-no-driver",
        marks=pytest.mark.skipif(not NO_PSYCOPG, reason="psycopg is installed"),
    ),  # fmt: skip
    pytest.param(["--sweep"], ["--sweep"], id="sweep-without-id"),
    pytest.param(["--nope"], ["--nope"], id="unknown-flag"),
    # issue 24: a store that is not an MLflow store
    pytest.param(
        ["--tracking-uri", "sqlite:///{tmp}/a_file"],
        ["--tracking-uri {tmp}/a_file", "not an SQLite database"],
        id="store-text-file",
    ),
    pytest.param(
        ["--tracking-uri", "sqlite:///{tmp}/random.bin"],
        ["--tracking-uri {tmp}/random.bin", "not an SQLite database"],
        id="store-random-bytes",
    ),
    pytest.param(
        ["--tracking-uri", "sqlite:///{tmp}/damaged.db"],
        ["--tracking-uri {tmp}/damaged.db", "damaged SQLite database"],
        id="store-damaged-sqlite",
    ),
    pytest.param(
        ["--tracking-uri", "sqlite:///{tmp}/foreign.db"],
        ["--tracking-uri {tmp}/foreign.db", "not an MLflow store"],
        id="store-foreign-sqlite",
    ),
]


@pytest.mark.parametrize("args, needles", PARETO_ROWS)
def test_pareto_refuses_bad_input(pareto_store, tmp_path, monkeypatch, capfd, args, needles):
    root, uri = pareto_store
    bad_stores(tmp_path)
    monkeypatch.chdir(tmp_path)  # the default --out (mlruns/reports/...) lands here
    before, store_before, runs_before = tree(tmp_path), tree(root), run_count(root / "mlflow.db")
    argv = ["--experiment", EXPERIMENT, "--tracking-uri", uri, *fill(args, tmp=tmp_path)]
    status, out, err = call(sweeps.pareto.main, argv, capfd)
    assert_refused(status, out, err, fill(needles, tmp=tmp_path))
    assert tree(tmp_path) == before
    assert tree(root) == store_before  # no artifact logged to the sweep
    assert run_count(root / "mlflow.db") == runs_before == 3


def test_pareto_default_out_is_checked(pareto_store, tmp_path, monkeypatch, capfd):
    """Without --out the report goes to mlruns/reports/<experiment> under the working folder:
    under a file there, the command stops before reading the store."""
    root, uri = pareto_store
    (tmp_path / "mlruns").write_text("a file where the folder would go")
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    status, out, err = call(
        sweeps.pareto.main, ["--experiment", EXPERIMENT, "--tracking-uri", uri], capfd
    )
    assert_refused(status, out, err, ["--out mlruns/reports/bad-inputs", "mlruns is a file"])
    assert tree(tmp_path) == before


# --- python -m sweeps.server ---------------------------------------------------------------
SERVER_ROWS = [
    # issue 13's table
    pytest.param(["--port", "-1"], ["--port -1", "0..65535"], id="port-negative"),
    pytest.param(["--port", "70000"], ["--port 70000", "0..65535"], id="port-70000"),
    pytest.param(["--host", "999.1.1.1"], ["--host '999.1.1.1'", "does not resolve"], id="host"),
    pytest.param(
        ["--artifacts-destination", "/proc/x"],
        ["--artifacts-destination /proc/x"],
        id="artifacts-proc",
    ),  # fmt: skip
    pytest.param(
        ["--backend-store-uri", "sqlite:////proc/x.db"],
        ["--backend-store-uri", "/proc"],
        id="store-proc",
    ),  # fmt: skip
    # already refused before
    pytest.param(["--workers", "0"], ["--workers 0", "must be 1.."], id="workers-0"),
    pytest.param(
        ["--backend-store-uri", "file:///{tmp}/mlruns"],
        ["--backend-store-uri", "database URI"],
        id="store-file",
    ),  # fmt: skip
    pytest.param(
        ["--backend-store-uri", "sqlite:///:memory:"],
        ["--backend-store-uri", "in-memory"],
        id="store-in-memory",
    ),  # fmt: skip
    pytest.param(["--port", "{busy}"], ["--port {busy}", "another --port"], id="port-busy"),
    # more
    pytest.param(["--port", "abc"], ["--port", "'abc'"], id="port-not-int"),
    pytest.param(
        ["--host", "192.0.2.1"], ["--host 192.0.2.1", "cannot listen"], id="host-not-ours"
    ),
    pytest.param(
        ["--artifacts-destination", "{tmp}/a_file"],
        ["--artifacts-destination", "a_file"],
        id="artifacts-a-file",
    ),  # fmt: skip
    pytest.param(
        ["--backend-store-uri", "sqlite:///{tmp}/a_file/m.db"],
        ["--backend-store-uri", "a_file (is a file, not a folder)"],
        id="store-under-a-file",
    ),
    pytest.param(
        ["--backend-store-uri", "sqlite://"],
        ["--backend-store-uri 'sqlite://'"],
        id="store-sqlite-bare",
    ),  # fmt: skip
    pytest.param(
        ["--backend-store-uri", "postgresql://u:secret@localhost/mlflow"],
        ["--backend-store-uri", "u:***@", "pip install 'psycopg[binary]'"],
        id="store-postgresql-no-driver",
        marks=pytest.mark.skipif(not NO_PSYCOPG, reason="psycopg is installed"),
    ),
    pytest.param(
        ["--backend-store-uri", "mysql://u@localhost/mlflow"],
        ["--backend-store-uri", "pip install 'mysqlclient'"],
        id="store-mysql-no-driver",
        marks=pytest.mark.skipif(not NO_MYSQLDB, reason="mysqlclient is installed"),
    ),
    pytest.param(
        ["--backend-store-uri", "postgresql+nope://h/db"],
        ["--backend-store-uri", "'postgresql+nope'"],
        id="store-unknown-driver",
    ),
    pytest.param(["--workers", "-1"], ["--workers -1"], id="workers-negative"),
    pytest.param(["--timeout", "0"], ["--timeout 0", "> 0"], id="timeout-0"),
    pytest.param(["--timeout", "-5"], ["--timeout -5"], id="timeout-negative"),
    pytest.param(["--timeout", "nan"], ["--timeout nan"], id="timeout-nan"),
    pytest.param(["--nope"], ["--nope"], id="unknown-flag"),
    # issue 24: no door left open by accident, no worker storm, no store that is not one
    pytest.param(["--host", ""], ["--host ''", "127.0.0.1", "no login"], id="host-empty"),
    pytest.param(["--host", " "], ["--host ' '", "127.0.0.1"], id="host-blank"),
    pytest.param(["--host", "0"], ["--host '0'", "every interface", "--host 0.0.0.0"], id="host-0"),
    pytest.param(["--host", "::0"], ["--host '::0'", "write --host ::"], id="host-ipv6-zero"),
    pytest.param(
        ["--workers", "100000"],
        ["--workers 100000", f"1..{sweeps.server.max_workers()}", "per CPU"],
        id="workers-100000",
    ),
    pytest.param(
        ["--workers", str(sweeps.server.max_workers() + 1)],
        [f"--workers {sweeps.server.max_workers() + 1}"],
        id="workers-one-above-bound",
    ),
    pytest.param(
        ["--backend-store-uri", "sqlite:///{tmp}/a_file"],
        ["--backend-store-uri {tmp}/a_file", "not an SQLite database"],
        id="store-text-file",
    ),
    pytest.param(
        ["--backend-store-uri", "sqlite:///{tmp}/random.bin"],
        ["--backend-store-uri {tmp}/random.bin", "not an SQLite database"],
        id="store-random-bytes",
    ),
    pytest.param(
        ["--backend-store-uri", "sqlite:///{tmp}/foreign.db"],
        ["--backend-store-uri {tmp}/foreign.db", "not an MLflow store"],
        id="store-foreign-sqlite",
    ),
]


@pytest.mark.parametrize("args, needles", SERVER_ROWS)
def test_server_refuses_bad_input(tmp_path, monkeypatch, capfd, args, needles):
    bad_stores(tmp_path)
    monkeypatch.chdir(tmp_path)  # the default stores (mlruns/server/...) land here

    def no_server(*args, **kwargs):
        raise AssertionError("bad input started a process")

    monkeypatch.setattr(sweeps.server.subprocess, "Popen", no_server)
    handlers = {
        sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        values = {"tmp": str(tmp_path), "busy": str(busy.getsockname()[1])}
        before = tree(tmp_path)
        status, out, err = call(sweeps.server.main, fill(args, **values), capfd)
    assert_refused(status, out, err, fill(needles, **values))
    assert tree(tmp_path) == before  # no mlruns/server/mlflow.db, no artifacts folder
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers  # this process untouched


# --- real processes ------------------------------------------------------------------------


def test_server_refuses_an_unwritable_store_in_seconds(tmp_path):
    """The issue's case: this took the whole 120 s start timeout and ~30 lines of retries."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "sweeps.server", "--backend-store-uri", "sqlite:////proc/x.db"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    elapsed_s = time.monotonic() - start
    assert_refused(proc.returncode, proc.stdout, proc.stderr, ["--backend-store-uri", "/proc"])
    assert elapsed_s < 5, elapsed_s
    assert tree(tmp_path) == set()


# --- sweep names ---------------------------------------------------------------------------


def frozen_clock(monkeypatch) -> None:
    """Every sweep name made from now on says the same second."""
    clock = types.SimpleNamespace(strftime=lambda fmt: "20260101-120000")
    monkeypatch.setattr(sweeps.cli, "time", clock)


def test_sweep_names_differ_within_one_second(monkeypatch):
    frozen_clock(monkeypatch)
    names = [sweeps.cli.new_sweep_name("mnist_cnn_l1") for _ in range(2)]
    for name in names:
        assert re.fullmatch(r"mnist_cnn_l1-20260101-120000-[0-9a-f]{4}", name), name
    # 4 random hex digits: two names collide with probability 1/65536
    assert names[0] != names[1]


def test_two_sweeps_in_one_second_get_their_own_folders(tmp_path, monkeypatch, empty_store):
    """The runner names the Ray Tune folder (storage_path/<name>) and the results folder
    (results_dir/<name>) after the sweep; Ray Tune itself is replaced by a recorder here."""
    import ray
    import ray._private.worker
    from ray import tune

    frozen_clock(monkeypatch)
    run_configs = []

    class RecordingTuner:
        def __init__(self, trainable, *, param_space=None, tune_config=None, run_config=None):
            run_configs.append(run_config)

        def fit(self):
            return []  # no trial ran

    monkeypatch.setattr(tune, "Tuner", RecordingTuner)
    monkeypatch.setattr(sweeps.runner, "_init_ray", lambda spec, target: (False, spec))
    # tune.with_parameters registers a hook for the next ray.init: keep it out of later tests
    monkeypatch.setattr(
        ray._private.worker, "_post_init_hooks", list(ray._private.worker._post_init_hooks)
    )
    monkeypatch.chdir(tmp_path)
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    spec = sweeps.cli.resolve_spec(STUDY, [
        "--quick", "--model", "mlp", "--baseline-epochs", "1", "--num-samples", "1",
        "--gpus-per-trial", "0", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
        "--storage-path", str(tmp_path / "ray"), "--results-dir", str(tmp_path / "results"),
        "--cache-dir", str(tmp_path / "cache"),
    ])  # fmt: skip
    first = sweeps.runner.run_sweep(spec, STUDY)
    second = sweeps.runner.run_sweep(spec, STUDY)

    assert first.sweep_name != second.sweep_name
    for outcome, run_config in zip((first, second), run_configs, strict=True):
        assert outcome.sweep_name.startswith("resnet18_iterative-20260101-120000-")
        assert (run_config.name, run_config.storage_path) == (outcome.sweep_name, spec.storage_path)
        assert outcome.results_dir == str(tmp_path / "results" / outcome.sweep_name)
        assert os.path.isdir(outcome.results_dir)
    assert sorted(os.listdir(tmp_path / "results")) == sorted([first.sweep_name, second.sweep_name])
