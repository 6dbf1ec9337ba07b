"""How much a sweep costs beyond its trials: overhead = (wall time - dense baseline time) divided
by (sum of trial durations / concurrency). 1.0 would mean the driver, Ray Tune and MLflow add
nothing to the trials' own time; the rest is start-up, scheduling, tracking and the final report.
The baseline time is the baseline trained alone in this process first (not cached), or its
training in the sweep where that was shorter (a slow spell of a noisy machine is not the
sweep's): on a machine with the cores for it the sweep trains it while Ray starts and its store
is made, and what it takes longer there counts as overhead.
``--floor`` then runs ``tune_floor.py`` on the same trial durations: bare Ray Tune's overhead on
this machine, under which no sweep on Ray Tune can come.

    python benchmarks/bench_sweep_overhead.py                       # 100 tiny trials (load run)
    python benchmarks/bench_sweep_overhead.py --trial-seconds 1      # 100 trials of about 1 s
    python benchmarks/bench_sweep_overhead.py --model resnet18 --dataset digits --trials 6
                                                                    # the quick ResNet-18 sweep

``--trial-seconds S`` sizes the synthetic training split so that a trial's own work (its
retraining epochs) takes about S seconds: one epoch is timed here first, on one thread as a
trial trains, and the split gets as many images as ``TYPICAL_EPOCHS`` such epochs fit in S s.
The mean and median child-run durations are printed, so the S it reached is visible.

Everything runs in a temporary folder (MLflow SQLite store, baseline cache, Ray results). Trial
durations are the child runs' MLflow start-to-end times; concurrency is the number of trials
that can run at once (CPUs over --cpus-per-trial, capped by --max-concurrent). The script also
checks the load contract: every child run FINISHED with every contract metric.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

CONTRACT = ("test_accuracy", "sparsity", "nonzero_params", "total_params")
# Calibration epochs in a typical trial of the quick space (resnet18_iterative: one-shot or 2-3
# iterations of 1-2 fine-tune epochs, cheap recipes picked more often), its evaluations, and a
# trial epoch's being slower than the calibration's (two trials and the driver share the cores):
# set so that the trials of `--trial-seconds 1` took 1 s on average on the 2-core VM, with two
# trials at once (49,000 images: mean 1.01 s, median 0.76 s; one-shot recipes of one epoch are
# the short ones). With 3.7, the trials ran about 0.6 s.
TYPICAL_EPOCHS = 2.3
# Training images of the calibration epoch (a few tenths of a second of one core for the mlp).
CALIBRATION_IMAGES = 8192


def epoch_seconds_per_image(model: str, seed: int) -> float:
    """Seconds one training epoch takes per image of the synthetic data, on one thread (a
    trial's ``--cpus-per-trial 1``), measured on ``CALIBRATION_IMAGES`` images."""
    from prune_core.data import load_synthetic
    from prune_core.models import build_model
    from prune_core.train import train_epochs

    data = load_synthetic(seed=seed, n_train=CALIBRATION_IMAGES)
    net = build_model(model, data.in_channels, data.num_classes, data.image_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        quiet = lambda msg: None  # noqa: E731
        train_epochs(net, data, epochs=1, lr=0.01, log=quiet)  # warm-up: first-call allocations
        start = time.perf_counter()
        train_epochs(net, data, epochs=1, lr=0.01, log=quiet)
        return (time.perf_counter() - start) / CALIBRATION_IMAGES
    finally:
        torch.set_num_threads(threads)


def sized_synthetic(trial_seconds: float, model: str, seed: int) -> str:
    """Register a synthetic dataset whose training split makes a trial of ``model`` take about
    ``trial_seconds`` of its own work; returns its name (the sweep's ``--dataset``). The driver
    loads the data and sends it to the trials, so the name needs registering here only."""
    from prune_core.data import DATASETS, load_synthetic

    per_image = epoch_seconds_per_image(model, seed)
    # 2 significant digits: runs a few percent apart in their calibration get the same data
    n_train = max(256, int(float(f"{trial_seconds / TYPICAL_EPOCHS / per_image:.2g}")))
    name = f"synthetic_{n_train}"
    if name not in DATASETS.names():
        DATASETS.register(name)(functools.partial(load_synthetic, n_train=n_train))
    print(f"--trial-seconds {trial_seconds:g}: one epoch {per_image * 1e6:.1f} us per image on "
          f"1 thread; {n_train} training images ({TYPICAL_EPOCHS:g} epochs of "
          f"{trial_seconds:g} s)", flush=True)  # fmt: skip
    return name


def baseline_alone_seconds(spec: Any) -> float:
    """Seconds the sweep's dense baseline (of its first model) takes to train in this process
    with nothing beside it, not cached: what the overhead subtracts from the sweep's wall. The
    second of two trainings: the first pays PyTorch's first-call costs (1.2 s of the 1.3 s of
    the mlp on 256 images), which the sweep's own training, later in the same process, does
    not."""
    from prune_core.baseline import load_or_train_baseline
    from prune_core.data import load_dataset
    from prune_core.train import pick_device
    from sweeps.runner import base_config

    data = load_dataset(spec.dataset, root=spec.data_root, download=spec.download, seed=spec.seed,
                        image_size=spec.image_size, normalize=spec.normalize)  # fmt: skip
    cfg = base_config(spec, spec.models[0])
    quiet = lambda msg: None  # noqa: E731
    data = data.to(pick_device(None))
    load_or_train_baseline(cfg, data, None, log=quiet)
    return load_or_train_baseline(cfg, data, None, log=quiet).train_seconds


def tune_floor(durations: list[float], concurrency: int, cpus_per_trial: float, tmp: str) -> dict:
    """``tune_floor.py`` on ``durations`` (seconds, in the order the sweep's trials began), in a
    process of its own (a Ray of its own, after the sweep's): its JSON result."""
    path = os.path.join(tmp, "durations.json")
    with open(path, "w") as fh:
        json.dump(durations, fh)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tune_floor.py")
    out = subprocess.run(
        [sys.executable, script, "--durations", path, "--concurrency", str(concurrency),
         "--cpus-per-trial", str(cpus_per_trial), "--json"],
        check=True, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    ap.add_argument(
        "--floor", action="store_true",
        help="then run bare Ray Tune on the same trial durations (tune_floor.py): the overhead "
        "Ray Tune itself has on this machine, and the sweep's over it",
    )  # fmt: skip
    ap.add_argument(
        "--trial-seconds", type=float,
        help="size the synthetic training split so that a trial's own work takes about this "
        "many seconds (default: the 256 images of `synthetic`, about 0.1 s)",
    )  # fmt: skip
    args = ap.parse_args()
    if args.trial_seconds is not None and args.dataset != "synthetic":
        ap.error("--trial-seconds sizes the synthetic dataset: use it with --dataset synthetic")
    dataset = args.dataset
    if args.trial_seconds is not None:
        dataset = sized_synthetic(args.trial_seconds, args.model, args.seed)

    import mlflow
    from mlflow.tracking import MlflowClient

    from sweeps.cli import resolve_spec
    from sweeps.runner import run_sweep, trials_at_once

    study = importlib.import_module(f"sweeps.{args.study}").STUDY
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        argv = [
            "--quick", "--model", args.model, "--dataset", dataset,
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
        alone_s = baseline_alone_seconds(spec)
        load = os.getloadavg()
        start = time.perf_counter()
        start_epoch_s = time.time()
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
        # where the wall time went: before the first child run, and after the last one ended
        first_start = runs["start_time"].min().timestamp() - start_epoch_s
        last_end = runs["end_time"].max().timestamp() - start_epoch_s
        # the sweep's own count (CPUs over --cpus-per-trial, at most --max-concurrent)
        concurrency = max(1, min(trials_at_once(spec, {"CPU": cpus}), len(runs)))
        # the baseline as it trains with nothing beside it: the sweep trains it while Ray starts
        # and the store is made, and what it takes longer there (cores shared) is overhead. The
        # shorter of its two trainings (alone; in the sweep, where it ran alone on fewer than
        # OVERLAP_MIN_CPUS cores): on this noisy VM one of them sometimes ran in a slow spell
        # (12.1 s alone, 8.2 s in the sweep), and that spell is not the sweep's to subtract
        dense_s = min(alone_s, baseline_s) if baseline_s > 0 else alone_s
        overhead = (wall - dense_s) / (durations.sum() / concurrency)
        finished = int((runs["status"] == "FINISHED").sum())
        complete = int(
            runs[[f"metrics.{m}" for m in CONTRACT]]
            .notna()
            .all(axis=1)[runs["status"] == "FINISHED"]
            .sum()
        )
        floor = None
        if args.floor:
            order = runs.sort_values("start_time")
            seconds = (order["end_time"] - order["start_time"]).dt.total_seconds()
            floor = tune_floor(list(seconds), concurrency, spec.cpus_per_trial, tmp)

    print(f"bench_sweep_overhead: sweeps.{args.study}, {args.trials} trials of {args.model} "
          f"on {dataset}")  # fmt: skip
    print(f"  torch {torch.__version__}, python {platform.python_version()}, {cpus} CPUs, "
          f"{spec.cpus_per_trial:g} CPU per trial, concurrency {concurrency}")  # fmt: skip
    print(f"  load average before: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}")
    print(f"  child runs: {len(runs)}, FINISHED {finished}, with every contract metric {complete}")
    print(f"  wall {wall:.1f} s, dense baseline {alone_s:.1f} s alone ({baseline_s:.1f} s in the "
          f"sweep), trials {durations.sum():.1f} s in all "
          f"(mean {durations.mean():.2f} s, median {durations.median():.2f} s)")  # fmt: skip
    print(f"  first child run started {first_start:.1f} s into the sweep "
          f"({first_start - dense_s:.1f} s more than the dense baseline); the last ended "
          f"{wall - last_end:.1f} s before the sweep's end")  # fmt: skip
    print(f"  overhead (wall - dense baseline {dense_s:.1f} s) / (trial time / concurrency) = "
          f"{overhead:.2f}")  # fmt: skip
    if floor is not None:
        print(
            f"  Ray Tune's floor (tune_floor.py: bare Tune, the same {floor['trials']} durations "
            f"kept busy, torch imported, no search or tracking): wall {floor['wall_s']:.1f} s, "
            f"first trial {floor['first_start_s']:.1f} s in, the last ended "
            f"{floor['end_after_last_s']:.1f} s before the end; overhead "
            f"{floor['overhead']:.2f}; the sweep's over it {overhead / floor['overhead']:.2f}"
        )
    ok = finished == complete == args.trials == len(runs)
    if args.early_stop == "none":
        print(f"  load contract ({args.trials} FINISHED, every contract metric): "
              f"{'PASS' if ok else 'FAIL'}")  # fmt: skip
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
