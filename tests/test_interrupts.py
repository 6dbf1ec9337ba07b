"""A handful of the interrupt storm (``benchmarks/bench_interrupts.py``) in CI, each signal aimed
at a moment where an exception thrown from the handler used to be at risk: Ray's start, dense
training (where SIGTERMs were swallowed by a garbage-collection callback) and the final latency
pass. Each sweep must exit 130/143 within 30 s with no run RUNNING and no process left."""

from __future__ import annotations

import importlib.util
import signal
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_interrupts.py"
spec = importlib.util.spec_from_file_location("bench_interrupts", BENCH)
bench = importlib.util.module_from_spec(spec)
sys.modules["bench_interrupts"] = bench  # its dataclass looks its module up there
spec.loader.exec_module(bench)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "after_line", "delay_s", "moment"),
    [
        (signal.SIGTERM, "[sweep] dataset", 0.0, "start"),  # Ray starting
        (signal.SIGTERM, "[dense] epoch 1/3", 0.0, "baseline"),
        (signal.SIGINT, "[sweep] latency", 0.0, "latency"),
    ],
    ids=["start-sigterm", "baseline-sigterm", "latency-sigint"],
)
def test_interrupted_sweep_stops_cleanly(tmp_path, signum, after_line, delay_s, moment):
    out = bench.interrupt_one(0, tmp_path / "sweep", signum, delay_s, after_line)
    log = (tmp_path / "sweep" / "driver.log").read_text()
    assert out.moment == moment, log[-3000:]
    assert out.returncode == 128 + signum, log[-3000:]
    assert out.exit_s <= bench.EXIT_WITHIN_S
    assert out.running_runs == 0
    assert out.left_processes == 0
    assert "Traceback" not in log


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_while_the_modules_import_ends_the_command(tmp_path, signum):
    """Half a second in, the command is importing torch, Ray and MLflow: the signal is recorded
    (sweeps/__init__.py), not raised inside an import, and the command ends 128 + N with one
    line before anything exists."""
    import os
    import subprocess
    import time

    env = {**os.environ, "RAY_TMPDIR": str(tmp_path)}
    args = ["--quick", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--storage-path", str(tmp_path / "ray"), "--results-dir", str(tmp_path / "results"),
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeps.mnist_finetune", *args], cwd=bench.REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.5)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-3000:]
    assert err.strip().splitlines() == [
        f"interrupted by {signal.Signals(signum).name} before the sweep started; nothing to resume"
    ]
    assert out == "" and sorted(p.name for p in tmp_path.iterdir()) == []
