"""Does the sweep's search earn its compute? Hypervolume against the fixed reference and fine-tune
epochs spent, for three searches of the same quick sweep over several seeds:

- ``default + mo-asha``: the project's default sampler (``sweeps.search.default_sampler``) with
  multi-objective early stopping (``--early-stop mo-asha --eta 3``);
- ``default``: the same sampler without early stopping (``--early-stop none``);
- ``random``: random search (``--sampler random --early-stop none``).

Each search gets the same number of trials; what they cost is counted in fine-tune epochs, not
trials, and compared: the target is that the default with early stopping reaches at least random
search's hypervolume with at most half its epochs.

    python benchmarks/bench_search.py --quick     # 3 seeds x 3 searches x 12 trials
    python benchmarks/bench_search.py             # 3 seeds x 3 searches x 16 trials
    python benchmarks/bench_search.py --random-trials 32    # random search with twice the trials

Every sweep is ``sweeps.mnist_finetune --quick --model cnn --space unstructured`` (digits) run
through ``sweeps.runner.run_sweep(resolve_spec(...))`` in a temporary folder (MLflow SQLite
store, Ray results); one baseline cache is shared, so each seed trains its dense CNN once.
Hypervolume is that of the sweep's final front (FINISHED trials only; early-stopped ones are
never on it) of (test_accuracy max, nonzero_params min) against the fixed reference (accuracy 0,
the dense model's parameter count), normalised by the box up to (accuracy 1, 0 parameters), so
0..1 and comparable between seeds and searches. Epochs spent: the sum over every child run of
the fine-tune (or rewound retraining) epochs it actually ran: its ``epochs_run`` metric, or where
a run lacks it, computed from the recipe (epochs per prune step x steps, up to the rung at which
early stopping ended it). The dense baseline's epochs are the same for all searches and not
counted.

"perfect stop": the epochs of the same trials under a perfect early stopper, one that knew the
final front: trials on it run in full, every other trial stops at its first rung (one epoch of
a one-shot recipe, one prune step of an iterative one). For random search it bounds what any
early stopping of its trials could save without losing a point of its front.

``--check`` exits 1 unless default + mo-asha reaches at least random search's mean hypervolume
with at most half its mean epochs (issue 11's target).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STUDY_ARGS = ["--quick", "--model", "cnn", "--space", "unstructured"]
OBJECTIVES = "test_accuracy:max,nonzero_params:min"
OBJECTIVE_METRICS = ("test_accuracy", "nonzero_params")
OBJECTIVE_MAXIMIZE = (True, False)
# Runner flags this benchmark needs (the sweep command line's names).
NEEDED_FLAGS = ("--early-stop", "--eta", "--sampler")


@dataclass
class Variant:
    """One search: its name, extra sweep flags and number of trials."""

    name: str
    flags: list[str]
    trials: int


@dataclass
class Result:
    """One sweep's figures."""

    variant: str
    seed: int
    trials: int
    finished: int
    stopped: int
    failed: int
    hypervolume: float  # normalised, 0..1
    hypervolume_raw: float  # fraction x count
    reference: tuple[float, ...]
    epochs: float
    perfect_stop_epochs: float  # the same trials under a perfect early stopper (a bound)
    front: int
    seconds: float


def recipe_steps(row: dict, baseline_epochs: int) -> tuple[str, int, int]:
    """(schedule, prune steps, retraining epochs per step) of a child run's recipe: per step
    ``finetune_epochs``, or with rewinding ``baseline_epochs - rewind_epoch``."""
    schedule = row.get("params.schedule") or "oneshot"
    steps = 1 if schedule == "oneshot" else int(float(row.get("params.iterations") or 1))
    retrain = row.get("params.retrain") or "finetune"
    if retrain == "finetune":
        per_step = int(float(row.get("params.finetune_epochs") or 0))
    else:
        per_step = baseline_epochs - int(float(row.get("params.rewind_epoch") or 1))
    return schedule, steps, per_step


def epochs_of_run(row: dict, baseline_epochs: int) -> float:
    """Fine-tune epochs one child run spent (``mlflow.search_runs`` row as a dict): its
    ``epochs_run`` metric, else from the recipe (``recipe_steps``): the epochs of the steps it
    ran (all of them when it finished, up to its ``early_stopped`` rung otherwise; rung = prune
    iteration, or fine-tune epoch for a one-shot recipe)."""
    logged = row.get("metrics.epochs_run")
    if logged is not None and not (isinstance(logged, float) and math.isnan(logged)):
        return float(logged)
    schedule, steps, per_step = recipe_steps(row, baseline_epochs)
    total = steps * per_step
    tag = row.get("tags.early_stopped")
    if row.get("status") != "FINISHED" and isinstance(tag, str):
        digits = "".join(c for c in tag if c.isdigit())
        if digits:
            rung = int(digits)
            # one-shot: a rung is one fine-tune epoch; iterative: one prune step's epochs
            total = min(total, rung if schedule == "oneshot" else rung * per_step)
    return float(total)


def first_rung_epochs(row: dict, baseline_epochs: int) -> float:
    """Epochs a child run had spent when it reached its first rung, the earliest point at which
    any early stopper could stop it: one fine-tune epoch for a one-shot recipe, one prune step's
    retraining for an iterative one; its whole cost when that is less."""
    schedule, _, per_step = recipe_steps(row, baseline_epochs)
    first = 1.0 if schedule == "oneshot" else float(per_step)
    return min(epochs_of_run(row, baseline_epochs), first)


def perfect_stop_epochs(rows: list[dict], baseline_epochs: int) -> float:
    """The epochs of the same trials under a perfect early stopper, one that knew the final
    front: trials on it run in full, every other trial stops at its first rung. A bound: no
    stopper saves more on these trials without losing a point of the front."""
    import numpy as np

    from sweeps.analysis import pareto_mask

    done = [r for r in rows if r.get("status") == "FINISHED"]
    values = np.array([[r.get(f"metrics.{m}") for m in OBJECTIVE_METRICS] for r in done], float)
    front = pareto_mask(values, OBJECTIVE_MAXIMIZE) if len(done) else np.zeros(0, bool)
    on_front = {id(r) for r, f in zip(done, front, strict=True) if f}
    return sum(
        epochs_of_run(r, baseline_epochs) if id(r) in on_front
        else first_rung_epochs(r, baseline_epochs)
        for r in rows
    )  # fmt: skip


def run_one(variant: Variant, seed: int, tmp: str, cache: str, args: argparse.Namespace) -> Result:
    """Run one sweep of ``variant`` with ``seed`` in ``tmp``; return its figures."""
    import mlflow

    from sweeps.cli import resolve_spec
    from sweeps.mnist_finetune import STUDY
    from sweeps.runner import run_sweep

    folder = os.path.join(tmp, f"{variant.name.replace(' ', '_').replace('+', '')}-{seed}")
    argv = [
        *STUDY_ARGS, "--seed", str(seed), "--num-samples", str(variant.trials),
        "--objectives", OBJECTIVES, "--tracking-uri", f"sqlite:///{folder}/mlflow.db",
        "--experiment", "bench-search", "--cache-dir", cache,
        "--storage-path", f"{folder}/ray", "--results-dir", f"{folder}/results", *variant.flags,
    ]  # fmt: skip
    if args.max_concurrent:
        argv += ["--max-concurrent", str(args.max_concurrent)]
    spec = resolve_spec(STUDY, argv)
    start = time.perf_counter()
    outcome = run_sweep(spec, STUDY)
    seconds = time.perf_counter() - start
    mlflow.set_tracking_uri(outcome.tracking_uri)
    children = mlflow.search_runs(
        experiment_ids=[outcome.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'",
        max_results=10_000,
    )
    rows = children.to_dict("records")
    epochs = sum(epochs_of_run(r, spec.baseline_epochs) for r in rows)
    status = children["status"] if len(children) else []
    tag = children.get("tags.early_stopped")
    stopped = int(((status != "FINISHED") & tag.notna()).sum()) if tag is not None else 0
    analysis = outcome.analysis
    return Result(
        variant=variant.name,
        seed=seed,
        trials=variant.trials,
        finished=int((status == "FINISHED").sum()) if len(children) else 0,
        stopped=stopped,
        failed=int((status == "FAILED").sum()) if len(children) else 0,
        hypervolume=analysis.hypervolume_normalised if analysis else 0.0,
        hypervolume_raw=analysis.hypervolume if analysis else 0.0,
        reference=analysis.reference if analysis else (),
        epochs=epochs,
        perfect_stop_epochs=perfect_stop_epochs(rows, spec.baseline_epochs),
        front=len(analysis.front) if analysis else 0,
        seconds=seconds,
    )


def summary(results: list[Result], name: str) -> dict[str, float]:
    """Mean, min and max of hypervolume and epochs of ``name``'s sweeps."""
    hv = [r.hypervolume for r in results if r.variant == name]
    ep = [r.epochs for r in results if r.variant == name]
    perfect = [r.perfect_stop_epochs for r in results if r.variant == name]
    return {
        "perfect_mean": statistics.fmean(perfect),
        "hv_mean": statistics.fmean(hv), "hv_min": min(hv), "hv_max": max(hv),
        "ep_mean": statistics.fmean(ep), "ep_min": min(ep), "ep_max": max(ep),
    }  # fmt: skip


def missing_flags() -> list[str]:
    """The runner flags this benchmark needs that the sweep command line does not have."""
    from sweeps.cli import build_parser
    from sweeps.mnist_finetune import STUDY

    known = set(build_parser(STUDY)._option_string_actions)
    return [f for f in NEEDED_FLAGS if f not in known]


def main() -> int:
    """Run every search for every seed and print the table; with ``--check``, exit 1 if the
    target is missed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="12 trials per sweep (default 16)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--trials", type=int, help="trials of the default searches (16; quick 12)")
    ap.add_argument("--random-trials", type=int, help="trials of random search (--trials)")
    ap.add_argument("--eta", type=int, default=3, help="MO-ASHA's eta (default 3)")
    ap.add_argument("--max-concurrent", type=int, help="most trials at once per sweep")
    ap.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    ap.add_argument(
        "--only", help="comma-separated searches to run: default+mo-asha, default, random (all)"
    )
    ap.add_argument(
        "--keep", help="keep every sweep's MLflow store and Ray results under this folder"
    )
    args = ap.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds {args.seeds!r}: give comma-separated integers")
    # 12: the smallest budget whose default is MO-ASHA (sweeps.cli.EARLY_STOP_FROM_SAMPLES)
    trials = args.trials or (12 if args.quick else 16)
    random_trials = args.random_trials or trials
    if not seeds or trials < 1 or random_trials < 1 or args.eta < 2:
        ap.error("--seeds needs a seed, --trials and --random-trials >= 1, --eta >= 2")
    keys = ("default+mo-asha", "default", "random")
    only = [k.strip() for k in (args.only or ",".join(keys)).split(",") if k.strip()]
    unknown = [k for k in only if k not in keys]
    if unknown or not only:
        ap.error(f"--only {args.only!r}: choose from {', '.join(keys)}")
    if args.keep:
        from prune_core.cliutils import check_writable_dir

        try:
            check_writable_dir("--keep", args.keep)
        except ValueError as err:
            ap.error(str(err))

    absent = missing_flags()
    if absent:
        print(
            f"bench_search: the sweep command line has no {', '.join(absent)} yet (the runner "
            "wiring of early stopping and samplers); nothing run",
            file=sys.stderr,
        )
        return 2

    import ray
    import torch

    from sweeps.search import default_sampler

    default = default_sampler(trials)
    variants = [
        Variant(f"{default} + mo-asha", ["--early-stop", "mo-asha", "--eta", str(args.eta)],
                trials),
        Variant(default, ["--early-stop", "none"], trials),
        Variant("random", ["--sampler", "random", "--early-stop", "none"], random_trials),
    ]  # fmt: skip
    variants = [v for key, v in zip(keys, variants, strict=True) if key in only]
    print("bench_search: sweeps.mnist_finetune " + " ".join(STUDY_ARGS))
    print(f"  torch {torch.__version__}, ray {ray.__version__}, python {platform.python_version()}")
    print(f"  {os.cpu_count()} CPUs, load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"  objectives {OBJECTIVES}; seeds {seeds}; eta {args.eta}")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-search-") as scratch:
        tmp = os.path.abspath(args.keep) if args.keep else scratch
        os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        cache = os.path.join(tmp, "baselines")
        # one Ray for every sweep: the runner uses a running Ray and leaves it running
        ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        try:
            for seed in seeds:
                for variant in variants:
                    r = run_one(variant, seed, tmp, cache, args)
                    results.append(r)
                    print(
                        f"  seed {seed} {variant.name:<18} trials {r.trials:>3}: finished "
                        f"{r.finished}, stopped {r.stopped}, failed {r.failed}; front {r.front}; "
                        f"hypervolume {r.hypervolume:.4f} ({r.hypervolume_raw:.6g} against "
                        f"{r.reference}); epochs {r.epochs:g} (a perfect stopper: "
                        f"{r.perfect_stop_epochs:g}); {r.seconds:.0f} s",
                        flush=True,
                    )
        finally:
            ray.shutdown()
    print()
    head = f"{'search':<20}{'trials':>7}{'HV mean':>9}{'HV min':>8}{'HV max':>8}"
    print(head + f"{'epochs mean':>13}{'min':>6}{'max':>6}{'perfect stop':>14}")
    for v in variants:
        s = summary(results, v.name)
        print(
            f"{v.name:<20}{v.trials:>7}{s['hv_mean']:>9.4f}{s['hv_min']:>8.4f}{s['hv_max']:>8.4f}"
            f"{s['ep_mean']:>13.1f}{s['ep_min']:>6g}{s['ep_max']:>6g}{s['perfect_mean']:>14.1f}"
        )
    names = [v.name for v in variants]
    if "random" not in names or not names[0].endswith("mo-asha"):
        return 0  # the target compares the default with early stopping against random search
    best, rnd = summary(results, variants[0].name), summary(results, "random")
    hv_ratio = best["hv_mean"] / rnd["hv_mean"] if rnd["hv_mean"] else math.nan
    ep_ratio = best["ep_mean"] / rnd["ep_mean"] if rnd["ep_mean"] else math.nan
    ok = hv_ratio >= 1.0 and ep_ratio <= 0.5
    print(
        f"\n{variants[0].name} vs random: hypervolume {hv_ratio:.3f}x (target >= 1), epochs "
        f"{ep_ratio:.3f}x (target <= 0.5): {'PASS' if ok else 'FAIL'}"
    )
    # what early stopping alone could do: random search's own trials under a perfect stopper
    print(
        f"random search's trials under a perfect stopper (front in full, the rest stopped at "
        f"their first rung): {rnd['perfect_mean'] / rnd['ep_mean']:.3f}x its epochs, at its "
        "hypervolume"
    )
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
