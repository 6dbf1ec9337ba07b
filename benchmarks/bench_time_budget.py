"""Does a time budget hold? Runs ``sweeps.mnist_finetune --quick --model cnn --time-budget B``
as a user would (a subprocess, wall clock from its start to its exit), then ``--resume`` of the
same sweep with ``--time-budget R``, and prints for each command: its wall time, the budget, when
the trials were stopped, how long the final analysis took, the child runs it added and their
states (none may be RUNNING).

    python benchmarks/bench_time_budget.py                      # 60 s, then --resume with 30 s
    python benchmarks/bench_time_budget.py --budget 90s --resume-budget 45s

Everything runs in a temporary folder (MLflow SQLite store, baseline cache, Ray results).
Exit 1 if a command failed, finished no trial, left a run RUNNING, or ran its trials past its
budget.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

SWEEP = ["-m", "sweeps.mnist_finetune", "--quick", "--model", "cnn"]
# "... (trials stopped at 1 min 00 s, then the final analysis took 2.3 s) ..." (sweeps.runner)
STOPPED = re.compile(r"trials stopped at ([^,]+), then the final analysis took ([^)]+)\)")


def seconds(text: str) -> float:
    """``42.0 s`` / ``1 min 05 s`` / ``1 h 02 min`` (sweeps.budget.format_seconds) in seconds."""
    total = 0.0
    for value, unit in re.findall(r"([\d.]+) (h|min|s)\b", text):
        total += float(value) * {"h": 3600, "min": 60, "s": 1}[unit]
    return total


def run(argv: list[str], env: dict[str, str]) -> tuple[int, float, str]:
    """(exit status, wall seconds, stderr) of ``python argv``."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    return done.returncode, time.monotonic() - start, done.stderr


def children(uri: str) -> list[tuple[str, str]]:
    """(run id, status) of every child run in the store."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True)
    runs = runs[runs["tags.mlflow.parentRunId"].notna()]
    return list(zip(runs["run_id"], runs["status"], strict=True))


def main() -> int:
    """Run both commands and print their figures; exit 1 if the budget did not hold."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", default="60s", help="the first command's --time-budget (60s)")
    ap.add_argument("--resume-budget", default="30s", help="--resume's --time-budget (30s)")
    args = ap.parse_args()
    from sweeps.budget import parse_duration

    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-time-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray", dir="/tmp")}
        common = ["--tracking-uri", uri, "--cache-dir", f"{tmp}/baselines",
                  "--storage-path", f"{tmp}/ray", "--results-dir", f"{tmp}/results"]  # fmt: skip
        # the dense baseline is cached first, so both commands spend their budget on trials
        status, wall, err = run([*SWEEP, *common, "--num-samples", "1"], env)
        if status != 0:
            print(f"bench_time_budget: the warm-up sweep exited {status}:\n{err[-2000:]}")
            return 1
        before = {r for r, _ in children(uri)}
        print(f"bench_time_budget: python {' '.join(SWEEP)}; {os.cpu_count()} CPUs, load "
              f"average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
        name = None
        for label, budget in (("first", args.budget), ("--resume", args.resume_budget)):
            argv = [*SWEEP, *common, "--time-budget", budget]
            if name is not None:
                argv = ["-m", "sweeps.mnist_finetune", "--resume", name, "--tracking-uri", uri,
                        "--time-budget", budget]  # fmt: skip
            status, wall, err = run(argv, env)
            if name is None:
                found = re.search(r"--resume (\S+)", err)
                name = found.group(1) if found else None
            runs = [(r, s) for r, s in children(uri) if r not in before]
            before |= {r for r, _ in runs}
            states = {s: sum(1 for _, x in runs if x == s) for s in {s for _, s in runs}}
            stop = STOPPED.search(err)
            stopped_at, analysis = (seconds(stop.group(1)), seconds(stop.group(2))) if stop \
                else (float("nan"), float("nan"))  # fmt: skip
            limit = parse_duration(budget)
            # each command adds finished trials, leaves none RUNNING, and stops its trials by
            # its budget (1 s for Tune's loop to notice)
            held = (status == 0 and "RUNNING" not in states and states.get("FINISHED", 0) > 0
                    and stopped_at <= limit + 1.0)  # fmt: skip
            ok &= held
            print(f"  {label:<9} --time-budget {budget}: exit {status}, wall {wall:.1f} s; trials "
                  f"stopped at {stopped_at:.1f} s, final analysis {analysis:.1f} s; wall - budget "
                  f"- analysis = {wall - limit - analysis:+.1f} s (Ray's shutdown and the "
                  f"interpreter's exit); child runs added {len(runs)} {states}: "
                  f"{'OK' if held else 'FAIL'}")  # fmt: skip
            if status != 0:
                print(err[-2000:])
                break
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
