"""The floor of ``bench_sweep_overhead.py``'s measure on this machine: a bare Ray Tune run of
trials that only keep one core busy for given durations, then report once. No search, no
scheduler, no tracking, no data, no baseline; each trial imports torch (as any PyTorch trial
must). Its overhead, wall time (from ``ray.init`` to the end of ``ray.shutdown``) divided by
(sum of trial durations / concurrency), is what Ray Tune itself costs here: no sweep built on
Ray Tune can come in under it on the same machine.

    python benchmarks/tune_floor.py --seconds 1 --trials 100            # 100 trials of 1 s
    python benchmarks/tune_floor.py --durations durations.json --json   # given durations

``bench_sweep_overhead.py --floor`` runs it on the durations its sweep's trials took.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback


def busy_trial(config: dict[str, Any]) -> None:
    """Keep one core busy for ``config["seconds"]``, then report when that began and ended."""
    import torch  # noqa: F401  (what every PyTorch trial's process pays once)

    start = time.time()
    end = time.perf_counter() + float(config["seconds"])
    while time.perf_counter() < end:
        pass
    tune.report({"began": start, "ended": time.time()})


def measure_floor(durations: list[float], concurrency: int, cpus_per_trial: float) -> dict:
    """Run one bare Tune sweep of ``durations`` (seconds, in this order), ``concurrency`` at
    once; returns its wall time, the trials' sum and the overhead, in seconds."""
    with tempfile.TemporaryDirectory(prefix="tune-floor-") as storage:
        start = time.perf_counter()
        start_epoch_s = time.time()
        ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        trainable = tune.with_resources(busy_trial, {"cpu": cpus_per_trial})
        tuner = tune.Tuner(
            trainable,
            param_space={"seconds": tune.grid_search(list(durations))},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True),
            # Tune's loggers as the sweep has them: each trial's result.json, the others off
            run_config=tune.RunConfig(
                storage_path=storage, verbose=0, callbacks=[JsonLoggerCallback()]
            ),
        )
        try:
            # the results as Tune holds them (no result files needed: a caller may turn them off)
            results = [r.metrics for r in tuner.fit()]
        finally:
            ray.shutdown()  # no Ray process left behind, whatever happened
        wall = time.perf_counter() - start
    trials = sum(r["ended"] - r["began"] for r in results)
    return {
        "trials": len(results),
        "wall_s": wall,
        "trial_s": trials,
        "first_start_s": min(r["began"] for r in results) - start_epoch_s,
        "end_after_last_s": start_epoch_s + wall - max(r["ended"] for r in results),
        "overhead": wall / (trials / concurrency),
    }


def main() -> int:
    """Measure the floor and print it (one JSON line with ``--json``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="each trial's duration (s)")
    ap.add_argument("--trials", type=int, default=100, help="number of trials (default 100)")
    ap.add_argument("--durations", help="JSON file of a list of trial durations (s) instead")
    ap.add_argument("--concurrency", type=int, default=0, help="trials at once (default: CPUs)")
    ap.add_argument("--cpus-per-trial", type=float, default=1.0)
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args()
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # as the sweep runs Tune
    if args.durations:
        with open(args.durations) as fh:
            durations = [float(s) for s in json.load(fh)]
    else:
        durations = [args.seconds] * args.trials
    concurrency = args.concurrency or max(1, int((os.cpu_count() or 1) / args.cpus_per_trial))
    floor = measure_floor(durations, concurrency, args.cpus_per_trial)
    if args.json:
        print(json.dumps(floor))
    else:
        print(f"tune_floor: {floor['trials']} trials, {concurrency} at once: wall "
              f"{floor['wall_s']:.1f} s, trials {floor['trial_s']:.1f} s in all, first began "
              f"{floor['first_start_s']:.1f} s in, the last ended {floor['end_after_last_s']:.1f}"
              f" s before the end; overhead {floor['overhead']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
