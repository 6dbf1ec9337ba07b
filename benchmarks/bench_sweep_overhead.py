"""How much a sweep costs beyond its trials: overhead = (wall time - dense baseline time) divided
by (sum of trial durations / concurrency). 1.0 would mean the driver, Ray Tune and MLflow add
nothing to the trials' own time; the rest is start-up, scheduling, tracking and the final report.

    python benchmarks/bench_sweep_overhead.py                       # 100 tiny trials (load run)
    python benchmarks/bench_sweep_overhead.py --model resnet18 --dataset digits --trials 6
                                                                    # the quick ResNet-18 sweep

Everything runs in a temporary folder (MLflow SQLite store, baseline cache, Ray results). Trial
durations are the child runs' MLflow start-to-end times; concurrency is the number of trials
that can run at once (CPUs over --cpus-per-trial, capped by --max-concurrent). The script also
checks the load contract: every child run FINISHED with every contract metric.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import tempfile
import time

import torch

CONTRACT = ("test_accuracy", "sparsity", "nonzero_params", "total_params")


def main() -> int:
    """Run one sweep and print its overhead; exit 1 if the load contract does not hold."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default="resnet18_iterative", help="sweep module under sweeps/")
    ap.add_argument("--model", default="mlp", help="model (default mlp, the smallest)")
    ap.add_argument("--dataset", default="synthetic", help="dataset (default synthetic)")
    ap.add_argument("--trials", type=int, default=100, help="number of trials (default 100)")
    ap.add_argument("--baseline-epochs", type=int, help="dense epochs (default: the study's)")
    ap.add_argument("--max-concurrent", type=int, help="most trials at once")
    ap.add_argument(
        "--early-stop", default="none",
        help="none (default: every trial runs to its end, the load contract) or mo-asha",
    )  # fmt: skip
    ap.add_argument("--seed", type=int, default=0, help="seed of the sweep")
    args = ap.parse_args()

    import mlflow
    from mlflow.tracking import MlflowClient

    from sweeps.cli import resolve_spec
    from sweeps.runner import run_sweep

    study = importlib.import_module(f"sweeps.{args.study}").STUDY
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        argv = [
            "--quick", "--model", args.model, "--dataset", args.dataset,
            "--num-samples", str(args.trials), "--tracking-uri", f"sqlite:///{tmp}/mlflow.db",
            "--experiment", "overhead", "--cache-dir", f"{tmp}/baselines",
            "--storage-path", f"{tmp}/ray", "--results-dir", f"{tmp}/results",
            "--early-stop", args.early_stop, "--seed", str(args.seed),
        ]  # fmt: skip
        if args.baseline_epochs is not None:
            argv += ["--baseline-epochs", str(args.baseline_epochs)]
        if args.max_concurrent is not None:
            argv += ["--max-concurrent", str(args.max_concurrent)]
        spec = resolve_spec(study, argv)
        load = os.getloadavg()
        start = time.perf_counter()
        outcome = run_sweep(spec, study)
        wall = time.perf_counter() - start

        client = MlflowClient(tracking_uri=outcome.tracking_uri)
        parent = client.get_run(outcome.parent_run_id)
        baseline_s = parent.data.metrics.get("baseline_seconds", 0.0)
        mlflow.set_tracking_uri(outcome.tracking_uri)
        runs = mlflow.search_runs(
            experiment_ids=[outcome.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'",
            max_results=10_000,
        )
        durations = (runs["end_time"] - runs["start_time"]).dt.total_seconds()
        concurrency = int(cpus // spec.cpus_per_trial)
        if spec.max_concurrent:
            concurrency = min(concurrency, spec.max_concurrent)
        concurrency = max(1, min(concurrency, len(runs)))
        overhead = (wall - baseline_s) / (durations.sum() / concurrency)
        finished = int((runs["status"] == "FINISHED").sum())
        complete = int(
            runs[[f"metrics.{m}" for m in CONTRACT]]
            .notna()
            .all(axis=1)[runs["status"] == "FINISHED"]
            .sum()
        )

    print(f"bench_sweep_overhead: sweeps.{args.study}, {args.trials} trials of {args.model} "
          f"on {args.dataset}")  # fmt: skip
    print(f"  torch {torch.__version__}, python {platform.python_version()}, {cpus} CPUs, "
          f"{spec.cpus_per_trial:g} CPU per trial, concurrency {concurrency}")  # fmt: skip
    print(f"  load average before: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}")
    print(f"  child runs: {len(runs)}, FINISHED {finished}, with every contract metric {complete}")
    print(f"  wall {wall:.1f} s, dense baseline {baseline_s:.1f} s, trials {durations.sum():.1f} s "
          f"in all (median {durations.median():.2f} s)")  # fmt: skip
    print(f"  overhead (wall - baseline) / (trial time / concurrency) = {overhead:.2f}")
    ok = finished == complete == args.trials == len(runs)
    if args.early_stop == "none":
        print(f"  load contract ({args.trials} FINISHED, every contract metric): "
              f"{'PASS' if ok else 'FAIL'}")  # fmt: skip
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
