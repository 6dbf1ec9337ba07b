"""Interrupt storm: quick sweeps stopped by SIGINT or SIGTERM at random moments.

    python benchmarks/bench_interrupts.py --sweeps 40 --seed 0

Each sweep (the small CNN on digits, 3 dense epochs, 3 trials one at a time, its own folder,
store and Ray) gets one signal after a random delay, so the signals land during Ray's start,
dense training, the trials, the final latency pass and the analysis. For every sweep it checks:

- the driver exits 130 (SIGINT) or 143 (SIGTERM) within ``EXIT_WITHIN_S`` seconds of the signal
  (or 0 when the sweep had finished before the signal: counted apart; a signal during the
  interpreter's own start, before any handler exists, kills it with the signal, which a shell
  also reports as 128 + N);
- no MLflow run is left RUNNING, deleted runs included (read from the SQLite store itself);
- no process of the sweep is left: every descendant seen while it ran is gone.

It prints one line per sweep (the moment, from the driver's last progress line before the
signal; "printing" once the sweep has returned and prints its tables, where the default SIGTERM
action ends it, which a shell reports as 143) and a summary; it exits 1 if any sweep failed a
check. ``tests/test_interrupts.py``
runs a handful of these in CI.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Seconds within which a stopped sweep must have exited (the bound).
EXIT_WITHIN_S = 30.0
# Seconds a killed process may take to disappear from /proc.
GONE_WITHIN_S = 10.0


@dataclass
class Outcome:
    """What one interrupted sweep did."""

    index: int
    signum: int
    delay_s: float
    moment: str  # where the sweep was when the signal came
    returncode: int | None
    exit_s: float  # from the signal to the driver's exit
    running_runs: int  # MLflow runs left RUNNING (deleted ones included)
    left_processes: int

    @property
    def ok(self) -> bool:
        """Every check held (a sweep that finished before the signal counts as ok)."""
        # killed by the signal itself (-N, which a shell reports as 128 + N): while Python
        # starts, before the sweep installs its handlers, and after the sweep has returned
        # (printing its tables); both leave nothing RUNNING, which the other checks see
        code_ok = self.returncode in (128 + self.signum, -self.signum, 0)
        return code_ok and self.exit_s <= EXIT_WITHIN_S and not self.running_runs and (
            not self.left_processes
        )  # fmt: skip


def _ppids() -> dict[int, int]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    out[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return out


def descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid``."""
    parents = _ppids()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def running_runs(db: Path) -> int:
    """Runs of the store still RUNNING, whatever their lifecycle (deleted ones too)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            return conn.execute("SELECT count(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0]
    except sqlite3.OperationalError:  # no tables yet: no runs
        return 0


def moment_of(log_text: str) -> str:
    """Where a sweep was, from its progress lines so far."""
    lines = [line for line in log_text.splitlines() if line.startswith("[sweep] ")]
    # Ray starts while the dense baseline trains: the first dense epoch marks the baseline
    dense = any(line.startswith("[sweep] [dense] epoch") for line in lines)
    if not dense and not any(line.startswith("[sweep] sweep ") for line in lines):
        return "start"
    # the sweep's last line (its budget) or its tables: it has returned, and prints
    if "Pareto front over" in log_text or lines[-1].startswith("[sweep] budget: "):
        return "printing"
    last = lines[-1]
    if "latency" in last:
        return "latency"
    if any("Optuna search" in line or "grid:" in line for line in lines):
        return "trials"
    return "baseline"


def sweep_argv(folder: Path, seed: int) -> list[str]:
    """A quick sweep of its own in ``folder``."""
    return [
        sys.executable, "-m", "sweeps.resnet18_iterative", "--quick", "--model", "cnn",
        "--baseline-epochs", "3", "--num-samples", "3", "--max-concurrent", "1",
        "--seed", str(seed), "--tracking-uri", f"sqlite:///{folder}/mlflow.db",
        "--cache-dir", str(folder / "cache"), "--storage-path", str(folder / "ray"),
        "--results-dir", str(folder / "results"),
    ]  # fmt: skip


def interrupt_one(
    index: int, folder: Path, signum: int, delay_s: float, after_line: str = ""
) -> Outcome:
    """Run one sweep in ``folder`` and send ``signum`` ``delay_s`` seconds after its start, or
    after the first driver line holding ``after_line`` (to aim at a moment)."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": tempfile.mkdtemp(dir="/tmp")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    log_path = folder / "driver.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen(
            sweep_argv(folder, index), stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
    seen: set[int] = set()
    while after_line and after_line not in log_path.read_text() and driver.poll() is None:
        seen |= descendants(driver.pid)
        time.sleep(0.1)
    deadline = time.monotonic() + delay_s
    while time.monotonic() < deadline and driver.poll() is None:
        seen |= descendants(driver.pid)
        time.sleep(0.2)
    moment = moment_of(log_path.read_text()) if driver.poll() is None else "finished"
    sent = time.monotonic()
    if driver.poll() is None:
        seen |= descendants(driver.pid)
        os.kill(driver.pid, signum)
    try:
        while driver.poll() is None and time.monotonic() - sent < EXIT_WITHIN_S + 30:
            seen |= descendants(driver.pid)
            time.sleep(0.2)
        returncode = driver.wait(1)
    except subprocess.TimeoutExpired:
        returncode = None
    exit_s = time.monotonic() - sent if moment != "finished" else 0.0
    gone_by = time.monotonic() + GONE_WITHIN_S
    while any(alive(p) for p in seen) and time.monotonic() < gone_by:
        time.sleep(0.2)
    left = [p for p in seen if alive(p)]
    for pid in [driver.pid, *left]:  # clean up whatever is left, then report it
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    runs = running_runs(folder / "mlflow.db")
    return Outcome(index, signum, delay_s, moment, returncode, exit_s, runs, len(left))


def run_storm(
    sweeps: int, seed: int, root: Path, max_delay_s: float = 40.0, say=print
) -> list[Outcome]:
    """``sweeps`` interrupted sweeps under ``root``, signals and delays drawn from ``seed``."""
    rng = random.Random(seed)
    outcomes = []
    for i in range(sweeps):
        signum = rng.choice((signal.SIGINT, signal.SIGTERM))
        delay = round(rng.uniform(0.5, max_delay_s), 1)
        out = interrupt_one(i, root / f"sweep{i}", signum, delay)
        outcomes.append(out)
        say(f"{i:3d} {signal.Signals(signum).name:7s} after {delay:5.1f} s during "
            f"{out.moment:8s}: exit {out.returncode} in {out.exit_s:4.1f} s, RUNNING runs "
            f"{out.running_runs}, processes left {out.left_processes}"
            f"{'' if out.ok else '  FAIL'}")  # fmt: skip
    return outcomes


def main(argv: list[str] | None = None) -> int:
    """Command line: the storm and its summary; 1 if any sweep failed a check."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweeps", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-delay", type=float, default=40.0, help="latest signal (seconds)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="storm") as root:
        outcomes = run_storm(args.sweeps, args.seed, Path(root), args.max_delay)
    moments = {}
    for out in outcomes:
        moments[out.moment] = moments.get(out.moment, 0) + 1
    failed = [o for o in outcomes if not o.ok]
    slowest = max((o.exit_s for o in outcomes), default=0.0)
    print(f"{len(outcomes)} sweeps; moments {moments}; slowest exit {slowest:.1f} s; "
          f"{len(failed)} failed a check")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
