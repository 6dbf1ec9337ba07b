"""Does the sweep's search earn its compute? Hypervolume against the fixed reference as a function
of the fine-tune epochs spent, for three searches of the same quick sweep over several seeds:

- ``default + mo-asha``: the project's default sampler (``sweeps.search.default_sampler``, with
  its cost-cooled picks, ``sweeps.searcher``) with multi-objective early stopping
  (``--early-stop mo-asha --eta 3``);
- ``default``: the same search without early stopping (``--early-stop none``);
- ``random``: random search (``--sampler random --early-stop none``), the reference.

Compared at equal compute, counted in fine-tune epochs, not trials. Random search runs
``--random-trials`` (quick 12, else 16) trials and spends E epochs for a hypervolume HV_r. The
default searches may run up to ``RUN_AHEAD`` (6) times as many trials; their hypervolume is read
off their anytime curve (``anytime_curve``: after each child run ends, the hypervolume of the
runs finished so far against the epochs of every run started so far, runs still going charged
in full) at E/2 and at E of the same seed, and the epochs they needed to reach HV_r are given.
The target: the default with early stopping reaches at least random search's hypervolume with
at most half its epochs, i.e. its mean hypervolume at E/2 is at least random search's mean HV_r.

    python benchmarks/bench_search.py --quick     # 3 seeds; random 12 trials, the others <= 72
    python benchmarks/bench_search.py             # 3 seeds; random 16 trials, the others <= 96
    python benchmarks/bench_search.py --quick --random-trials 24   # a larger budget E

Every sweep is ``sweeps.mnist_finetune --quick --model cnn --space unstructured`` (digits) run
through ``sweeps.runner.run_sweep(resolve_spec(...))`` in a temporary folder (MLflow SQLite
store, Ray results); one baseline cache is shared, so each seed trains its dense CNN once.
Hypervolume is that of the front (FINISHED trials only; early-stopped ones are never on it) of
(test_accuracy max, nonzero_params min) against the fixed reference (accuracy 0, the dense
model's parameter count), normalised by the box up to (accuracy 1, 0 parameters), so 0..1 and
comparable between seeds and searches. Epochs spent: the sum over every child run of the
fine-tune (or rewound retraining) epochs it actually ran: its ``epochs_run`` metric, or where a
run lacks it, computed from the recipe (epochs per prune step x steps, up to the rung at which
early stopping ended it). The dense baseline's epochs are the same for all searches and not
counted.

"perfect stop": the epochs of the same trials under a perfect early stopper, one that knew the
final front: trials on it run in full, every other trial stops at its first rung (one epoch of
a one-shot recipe, one prune step of an iterative one). For random search it bounds what any
early stopping of its trials could save without losing a point of its front.

``--check`` exits 1 unless the target is met.
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
# The default searches' trial budget, in multiples of random search's: enough to run past half
# of random search's epochs with cheap recipes (the curve is read there, not at the end). With
# 3 (36 trials) the cost-aware search had run all its trials before half of E on 2-3 of 15
# seeds (seeds 0-14, --quick): a trial count, not the epochs compared, ended it.
RUN_AHEAD = 6


@dataclass
class Variant:
    """One search: its name, extra sweep flags and number of trials."""

    name: str
    flags: list[str]
    trials: int | None  # None: no --num-samples (a budget alone ends the sweep)


@dataclass
class Result:
    """One sweep's figures."""

    variant: str
    seed: int
    trials: int | None
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
    # (epochs committed, hypervolume) after each child run ended, in order (``anytime_curve``)
    curve: list[tuple[float, float]]
    runs: int = 0  # child runs
    max_trial_epochs: float = 0.0  # the dearest child run's epochs


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
    ``epochs_run`` metric (MLflow's latest value, which is the last epoch count since the trial
    logs it at step = epochs so far; before that a one-shot recipe's read one epoch short), else
    from the recipe (``recipe_steps``): the epochs of the steps it ran (all of them when it
    finished, up to its ``early_stopped`` rung otherwise; rung = prune iteration, or fine-tune
    epoch for a one-shot recipe)."""
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


def anytime_curve(
    rows: list[dict], baseline_epochs: int, reference: tuple[float, ...]
) -> list[tuple[float, float]]:
    """The search's hypervolume against the epochs it had spent, after each child run ended:
    one (epochs, normalised hypervolume) pair per run, in the order the runs ended. Epochs
    count every run that had *started* by then in full (what it ran in the end), so runs still
    going are charged before they finish: the curve never flatters a search that runs trials
    at once. Hypervolume: the front of the runs FINISHED by then, against ``reference``."""
    import numpy as np

    from sweeps.analysis import hypervolume, normalised_hypervolume

    maximize = list(OBJECTIVE_MAXIMIZE)
    ended = sorted((r for r in rows if r.get("end_time") is not None), key=lambda r: r["end_time"])
    curve: list[tuple[float, float]] = []
    for r in ended:
        when = r["end_time"]
        spent = sum(epochs_of_run(q, baseline_epochs) for q in rows if q["start_time"] <= when)
        done = [q for q in ended if q["status"] == "FINISHED" and q["end_time"] <= when]
        values = np.array([[q.get(f"metrics.{m}") for m in OBJECTIVE_METRICS] for q in done], float)
        hv = hypervolume(values, maximize, reference) if len(done) else 0.0
        curve.append((float(spent), normalised_hypervolume(hv, OBJECTIVES, reference)))
    return curve


def hypervolume_at(curve: list[tuple[float, float]], epochs: float) -> float:
    """The hypervolume a search had reached when it had spent at most ``epochs`` (0 before its
    first run ended): the last point of ``curve`` within the budget."""
    within = [hv for spent, hv in curve if spent <= epochs + 1e-9]
    return max(within, default=0.0)


def epochs_to_reach(curve: list[tuple[float, float]], target: float) -> float:
    """The fewest epochs after which the search's hypervolume was at least ``target``; NaN if
    it never got there."""
    return min((spent for spent, hv in curve if hv >= target - 1e-12), default=math.nan)


def run_one(variant: Variant, seed: int, tmp: str, cache: str, args: argparse.Namespace) -> Result:
    """Run one sweep of ``variant`` with ``seed`` in ``tmp``; return its figures."""
    import mlflow

    from sweeps.cli import resolve_spec
    from sweeps.mnist_finetune import STUDY
    from sweeps.runner import run_sweep

    folder = os.path.join(tmp, f"{variant.name.replace(' ', '_').replace('+', '')}-{seed}")
    argv = [
        *STUDY_ARGS, "--seed", str(seed),
        *(["--num-samples", str(variant.trials)] if variant.trials is not None else []),
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
        curve=anytime_curve(rows, spec.baseline_epochs, analysis.reference) if analysis else [],
        runs=len(rows),
        max_trial_epochs=max((epochs_of_run(r, spec.baseline_epochs) for r in rows), default=0),
    )


def hypervolume_at_half(result: Result, budgets: dict[int, float]) -> float:
    """``result``'s hypervolume when it had spent half of random search's epochs of its seed
    (``budgets``: seed -> epochs)."""
    return hypervolume_at(result.curve, budgets[result.seed] / 2)


def summary(
    results: list[Result], name: str, budgets: dict[int, float], targets: dict[int, float]
) -> dict[str, float]:
    """Figures of ``name``'s sweeps over the seeds: hypervolume at half and at all of random
    search's epochs of the same seed (``budgets``: seed -> epochs), the epochs it took to reach
    random search's hypervolume of that seed (``targets``: seed -> hypervolume; mean over the
    seeds that reached it, and how many did), its final hypervolume and the epochs it ran."""
    mine = [r for r in results if r.variant == name]
    half = [hypervolume_at_half(r, budgets) for r in mine if r.seed in budgets]
    full = [hypervolume_at(r.curve, budgets[r.seed]) for r in mine if r.seed in budgets]
    reach = [epochs_to_reach(r.curve, targets[r.seed]) for r in mine if r.seed in targets]
    reached = [e for e in reach if not math.isnan(e)]
    ep = [r.epochs for r in mine]
    nan = math.nan
    return {
        "half_mean": statistics.fmean(half) if half else nan,
        "half_min": min(half, default=nan), "half_max": max(half, default=nan),
        "full_mean": statistics.fmean(full) if full else nan,
        "reach_mean": statistics.fmean(reached) if reached else nan,
        "reached": len(reached), "seeds": len(mine),
        "hv_mean": statistics.fmean(r.hypervolume for r in mine),
        "ep_mean": statistics.fmean(ep), "ep_min": min(ep), "ep_max": max(ep),
        "perfect_mean": statistics.fmean(r.perfect_stop_epochs for r in mine),
    }  # fmt: skip


def parse_seeds(text: str) -> list[int]:
    """Seeds from ``text``: comma-separated integers or inclusive ranges, "0,1,2" or "0-14" or
    "0-2,7". Raises ``ValueError`` on anything else or on a descending range."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        low, sep, high = part.partition("-")
        if sep and low:
            first, last = int(low), int(high)
            if last < first:
                raise ValueError(f"range {part!r} runs backwards")
            seeds.extend(range(first, last + 1))
        else:
            seeds.append(int(part))
    return seeds


def paired_ratios(
    results: list[Result], name: str, budgets: dict[int, float], targets: dict[int, float]
) -> dict[int, float]:
    """Seed -> ``name``'s hypervolume at half of random search's epochs of that seed, divided
    by random search's hypervolume of that seed (the target's ratio, one seed at a time)."""
    return {
        r.seed: hypervolume_at_half(r, budgets) / targets[r.seed]
        for r in results
        if r.variant == name and r.seed in budgets and targets.get(r.seed)
    }


def mean_and_error(values: list[float]) -> tuple[float, float]:
    """The mean of ``values`` and its standard error (sample standard deviation / sqrt(n);
    NaN with fewer than two values)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, statistics.stdev(values) / math.sqrt(len(values))


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
    ap.add_argument("--quick", action="store_true", help="random search 12 trials (default 16)")
    ap.add_argument(
        "--seeds", default="0,1,2", help="comma-separated seeds or ranges: 0,1,2 (default), 0-14"
    )
    ap.add_argument(
        "--trials", type=int, help="most trials of the default searches (6 x --random-trials)"
    )
    ap.add_argument("--random-trials", type=int, help="trials of random search (16; quick 12)")
    ap.add_argument("--eta", type=int, default=3, help="MO-ASHA's eta (default 3)")
    ap.add_argument("--max-concurrent", type=int, help="most trials at once per sweep")
    ap.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    ap.add_argument(
        "--only",
        help="comma-separated searches to run: default+mo-asha, default, random, budget (all; "
        "budget, the default + MO-ASHA given half of random search's epochs through "
        "--epoch-budget, needs random)",
    )
    ap.add_argument(
        "--keep", help="keep every sweep's MLflow store and Ray results under this folder"
    )
    args = ap.parse_args()
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError:
        ap.error(f"--seeds {args.seeds!r}: give comma-separated integers or ranges (0-14)")
    # 12: the smallest budget whose default is MO-ASHA (sweeps.cli.EARLY_STOP_FROM_SAMPLES).
    # The default searches may run RUN_AHEAD times as many trials: they are compared at random
    # search's epochs, not its trial count, and a cost-aware search runs cheaper trials
    random_trials = args.random_trials or (12 if args.quick else 16)
    trials = args.trials or RUN_AHEAD * random_trials
    if not seeds or trials < 1 or random_trials < 1 or args.eta < 2:
        ap.error("--seeds needs a seed, --trials and --random-trials >= 1, --eta >= 2")
    keys = ("default+mo-asha", "default", "random", "budget")
    only = [k.strip() for k in (args.only or ",".join(keys)).split(",") if k.strip()]
    unknown = [k for k in only if k not in keys]
    if unknown or not only or ("budget" in only and "random" not in only):
        ap.error(f"--only {args.only!r}: choose from {', '.join(keys)} (budget needs random)")
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
    variants = [v for key, v in zip(keys[:3], variants, strict=True) if key in only]
    budget_name = f"{default} + mo-asha, E/2"
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
                seed_variants = list(variants)
                for variant in seed_variants:
                    r = run_one(variant, seed, tmp, cache, args)
                    results.append(r)
                    if variant.name == "random" and "budget" in only:
                        # the default search given half of random search's epochs of this seed
                        half = max(1, int(r.epochs // 2))
                        flags = ["--early-stop", "mo-asha", "--eta", str(args.eta),
                                 "--epoch-budget", str(half)]  # fmt: skip
                        seed_variants.append(Variant(budget_name, flags, None))
                    print(
                        f"  seed {seed} {variant.name:<18} trials {r.runs:>3}: finished "
                        f"{r.finished}, stopped {r.stopped}, failed {r.failed}; front {r.front}; "
                        f"hypervolume {r.hypervolume:.4f} ({r.hypervolume_raw:.6g} against "
                        f"{r.reference}); epochs {r.epochs:g} (a perfect stopper: "
                        f"{r.perfect_stop_epochs:g}); {r.seconds:.0f} s",
                        flush=True,
                    )
        finally:
            ray.shutdown()
    print()
    rnd_runs = {r.seed: r for r in results if r.variant == "random"}
    budgets = {seed: r.epochs for seed, r in rnd_runs.items()}
    targets = {seed: r.hypervolume for seed, r in rnd_runs.items()}
    head = f"{'search':<20}{'trials':>7}{'HV at E/2':>10}{'min':>7}{'max':>7}{'HV at E':>9}"
    print(head + f"{'epochs to HV_r':>16}{'final HV':>10}{'epochs run':>12}{'perfect stop':>14}")
    summaries = {v.name: summary(results, v.name, budgets, targets) for v in variants}
    for v in variants:
        t = summaries[v.name]
        reach = (f"{t['reach_mean']:.1f} ({t['reached']}/{t['seeds']})" if t["reached"]
                 else f"never (0/{t['seeds']})")  # fmt: skip
        print(
            f"{v.name:<20}{v.trials:>7}{t['half_mean']:>10.4f}{t['half_min']:>7.4f}"
            f"{t['half_max']:>7.4f}{t['full_mean']:>9.4f}{reach:>16}{t['hv_mean']:>10.4f}"
            f"{t['ep_mean']:>12.1f}{t['perfect_mean']:>14.1f}"
        )
    if budgets:
        print(
            "E: the epochs random search spent on the same seed (mean "
            f"{statistics.fmean(budgets.values()):.1f}); HV_r: its hypervolume (mean "
            f"{statistics.fmean(targets.values()):.4f}); HV at E/2: the search's hypervolume "
            "when it had spent half of E (runs still going charged in full)"
        )
    budget_ok = budget_table(results, budget_name, budgets, targets)
    names = [v.name for v in variants]
    if "random" not in names or not names[0].endswith("mo-asha"):
        return 1 if args.check and not budget_ok else 0
    best, rnd = summaries[variants[0].name], summaries["random"]
    hv_ratio = best["half_mean"] / rnd["hv_mean"] if rnd["hv_mean"] else math.nan
    ok = hv_ratio >= 1.0
    print(
        f"\n{variants[0].name} vs random: at half random search's epochs, hypervolume "
        f"{best['half_mean']:.4f} against random search's {rnd['hv_mean']:.4f} with all of them: "
        f"{hv_ratio:.3f}x (target >= 1): {'PASS' if ok else 'FAIL'}"
    )
    # the same ratio seed by seed: how far one seed's verdict is from another's
    ratios = paired_ratios(results, variants[0].name, budgets, targets)
    if ratios:
        mean, err = mean_and_error(list(ratios.values()))
        n = len(ratios)
        spread = "" if math.isnan(err) else f" +- {err:.3f} (standard error over {n} seeds)"
        print(
            "per seed, HV at E/2 over HV_r: "
            + ", ".join(f"{seed}: {ratio:.3f}" for seed, ratio in sorted(ratios.items()))
            + f"; mean {mean:.3f}"
            + spread
        )
    # what early stopping alone could do: random search's own trials under a perfect stopper
    print(
        f"random search's trials under a perfect stopper (front in full, the rest stopped at "
        f"their first rung): {rnd['perfect_mean'] / rnd['ep_mean']:.3f}x its epochs, at its "
        "hypervolume"
    )
    return 1 if args.check and not (ok and budget_ok) else 0


def budget_table(
    results: list[Result], name: str, budgets: dict[int, float], targets: dict[int, float]
) -> bool:
    """Print the ``--epoch-budget E/2`` search seed by seed against random search with E, and
    its verdict: mean hypervolume at least random search's, and every sweep's epochs within one
    trial's cost of its budget. True when both hold (or when it did not run)."""
    runs = {r.seed: r for r in results if r.variant == name}
    if not runs:
        return True
    print(f"\n{name}: --epoch-budget E/2 (no trial limit) against random search with E")
    print(f"{'seed':>4}{'E':>7}{'budget':>8}{'spent':>7}{'dearest':>9}{'trials':>8}"
          f"{'HV':>8}{'HV_r':>8}{'ratio':>7}")  # fmt: skip
    within = True
    for seed, r in sorted(runs.items()):
        budget = max(1, int(budgets[seed] // 2))
        # within one trial's cost: what is left is less than the dearest trial it ran
        fits = r.epochs <= budget and budget - r.epochs < max(r.max_trial_epochs, 1.0)
        within &= fits
        print(f"{seed:>4}{budgets[seed]:>7g}{budget:>8}{r.epochs:>7g}{r.max_trial_epochs:>9g}"
              f"{r.runs:>8}{r.hypervolume:>8.4f}{targets[seed]:>8.4f}"
              f"{r.hypervolume / targets[seed]:>7.3f}"
              f"{'' if fits else '  (not within one trial of the budget)'}")  # fmt: skip
    hv = statistics.fmean(r.hypervolume for r in runs.values())
    hv_r = statistics.fmean(targets[s] for s in runs)
    ok = hv >= hv_r and within
    print(f"mean hypervolume with E/2 epochs {hv:.4f} against random search's {hv_r:.4f} with E: "
          f"{hv / hv_r:.3f}x; epochs within one trial's cost of the budget on "
          f"{'every' if within else 'not every'} seed: {'PASS' if ok else 'FAIL'}")  # fmt: skip
    return ok


if __name__ == "__main__":
    sys.exit(main())
