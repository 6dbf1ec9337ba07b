"""What a cost-aware pick costs the sweep's driver: ms per pick of the searcher against the pick as
first written (``_ReferencePick``), over the same scripted 100-trial TPE sweep, in lockstep (each
step runs one suggestion of each searcher, so load on the machine weighs on both alike).

    python benchmarks/bench_pick.py [trials] [rounds]    # prints ms per pick

The searcher's pick fits TPE's model once per pick instead of once per candidate, copies the
study's trials shallowly and keeps the recipes of the trials run (``sweeps.searcher``); what is
left is mostly TPE drawing each candidate from its model and weighing it, as the reference does:
those draws take the sampler's random numbers in order and must stay as they are for the
proposals to stay bit for bit the same.
"""

from __future__ import annotations

import os
import sys
import time

# the reference pick and the scripted sweep live with the equivalence test
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

from test_cost_aware_search import _ReferencePick, scripted_steps, sweep_search  # noqa: E402

from sweeps.searcher import RungAwareOptunaSearch  # noqa: E402


def lockstep(trials: int = 100, sampler: str = "tpe") -> dict[str, list[float]]:
    """Seconds of each pick of the reference and of the searcher over the same scripted sweep
    (``scripted_steps``), run a suggestion of each in turn; both must propose the same."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    times: dict[str, list[float]] = {"reference": [], "searcher": []}
    steps = {}
    for name, cls in (("reference", _ReferencePick), ("searcher", RungAwareOptunaSearch)):
        search = sweep_search(sampler, trials, cls)
        search._cost_aware_pick = _timed(search._cost_aware_pick, times[name])
        steps[name] = scripted_steps(search, trials)
    ends = {}
    while len(ends) < len(steps):
        for name, step in steps.items():
            if name not in ends:
                try:
                    next(step)
                except StopIteration as end:
                    ends[name] = end.value
    assert ends["searcher"]["candidates"] == ends["reference"]["candidates"]
    assert ends["searcher"]["picks"] == ends["reference"]["picks"]
    return times


def _timed(pick, spent: list[float]):
    def timed():
        start = time.perf_counter()
        try:
            return pick()
        finally:
            spent.append(time.perf_counter() - start)

    return timed


if __name__ == "__main__":
    import statistics

    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    total: dict[str, list[float]] = {"reference": [], "searcher": []}
    for _ in range(rounds):
        for name, spent in lockstep(trials).items():
            total[name] += spent
    for name, spent in total.items():
        ms = sorted(1000 * t for t in spent)
        print(
            f"{name:9s} {len(ms)} picks: ms per pick mean {statistics.fmean(ms):.1f}, "
            f"median {statistics.median(ms):.1f}, p90 {ms[int(0.9 * len(ms))]:.1f}"
        )
    share = sum(total["searcher"]) / sum(total["reference"])
    print(f"searcher / reference: {share:.2f} of the time ({1 / share:.2f}x faster)")
