"""What a sweep may spend: trials, fine-tune epochs and wall-clock time, and what it has spent.

``--num-samples`` caps trials; ``--epoch-budget N`` caps the fine-tune (or rewound retraining)
epochs of every trial together, the unit the cost-aware search already counts
(``sweeps.search.recipe_epochs``); ``--time-budget DURATION`` caps the driver's wall clock. The
first limit reached ends the sweep.

- Epochs: a trial starts only if its recipe's epochs fit in what is left once the running trials
  are charged in full (``Budget.fits``), so the sweep never spends more than the budget, and it
  ends when no proposal fits (it is then within one trial's cost of the budget) and nothing runs.
  Trials are never cut short for epochs: each one that starts fits. Early stopping gives back
  what a stopped trial did not run, and the search spends it on further trials.
- Time: at the deadline the running trials are stopped at once (their child runs KILLED with
  tag ``budget_exhausted=time``): a trial's remaining time is not known before it ends, and
  letting it finish could overrun the budget by a whole trial. The search then tells Optuna
  those trials FAILED (a recipe cut short by the clock says nothing about the recipe).
- Cost cooling (``sweeps.searcher``) follows the share of the budget spent, not the trial count.

Across ``--resume``: epochs are the sweep's total (the child runs' ``epochs_run`` in MLflow are
the spent part; a budget given with --resume must exceed it); time is per command: a time budget
given with --resume is this command's, else the previous command's remainder.

The budget in force lives in this module (``in_force``, ``active``), in the driver: Ray Tune
pickles its searcher, search generator and stoppers (``sweeps.searcher.BudgetedSearch``,
``sweeps.callbacks.BudgetStopper``) with the experiment state and ``--resume`` restores those
objects, so they read the budget of the command that runs now rather than carrying their own.
This module imports no Ray: the command line checks budgets before Ray is loaded.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# The parent run's tag when a budget ended the sweep: "epochs" or "time".
EXHAUSTED_TAG = "budget_exhausted"
# Units of --time-budget and their seconds.
TIME_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# The longest time budget taken (30 days, in seconds): beyond, a typo.
MAX_TIME_BUDGET_S = 30 * 86400.0
# The largest epoch budget taken: beyond, a typo.
MAX_EPOCH_BUDGET = 10_000_000

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> float:
    """Seconds of a duration such as ``90m``, ``2h``, ``45s``, ``1.5h`` or ``600`` (seconds);
    ``ValueError`` (one line: the value and what is allowed) for anything else, zero included."""
    match = _DURATION.match(str(text))
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration; write a number with s, m, h or d (e.g. 90m, 2h, 45s)"
        )
    seconds = float(match.group(1)) * TIME_UNITS[match.group(2) or "s"]
    if not 0 < seconds <= MAX_TIME_BUDGET_S:
        raise ValueError(f"{text!r}: must be more than 0 s and at most 30d")
    return seconds


def parse_epoch_budget(text: str) -> int:
    """An epoch budget: an integer 1..``MAX_EPOCH_BUDGET``; ``ValueError`` (one line) else."""
    try:
        epochs = int(str(text).strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an integer; give fine-tune epochs >= 1") from None
    if not 1 <= epochs <= MAX_EPOCH_BUDGET:
        raise ValueError(f"{epochs}: must be an integer 1..{MAX_EPOCH_BUDGET}")
    return epochs


def format_seconds(seconds: float) -> str:
    """``seconds`` as people read a duration: 42.0 s, 3 min 05 s, 1 h 02 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def process_age_s() -> float:
    """Seconds since this process started (its imports included); 0 where it cannot be told."""
    try:
        import psutil  # a dependency of Ray's

        return max(0.0, time.time() - psutil.Process().create_time())
    except Exception:  # no psutil, or no process table to read
        return 0.0


@dataclass
class Budget:
    """The limits of one command's sweep and its running account.

    ``trials``: at most that many trials (None: no limit); ``epochs``: the sweep's total
    fine-tune epochs, ``epochs_before`` of which earlier commands spent (``--resume``);
    ``seconds``: this command's wall clock from ``started`` (``time.monotonic()``)."""

    trials: int | None = None
    epochs: float | None = None
    seconds: float | None = None
    epochs_before: float = 0.0
    started: float = field(default_factory=time.monotonic)
    # this command's trials: epochs reported so far by each finished / running trial, and the
    # planned epochs of each running one (charged in full until it ends)
    done: dict[str, float] = field(default_factory=dict)
    running: dict[str, float] = field(default_factory=dict)
    reported: dict[str, float] = field(default_factory=dict)
    exhausted: str = ""  # "epochs" or "time" once that limit ended the sweep
    cut_short: set[str] = field(default_factory=set)  # trials stopped by the deadline
    time_up_at: float | None = None  # time.monotonic() when the deadline stopped the trials
    # seconds before the deadline at which the trials stop, so that the command has exited by
    # the deadline plus its final analysis (``EXIT_RESERVE_S``)
    reserve_s: float = 0.0

    # --- the account ---

    def start(self, trial_id: str, planned_epochs: float) -> None:
        """A trial starts that will run at most ``planned_epochs``."""
        self.running[trial_id] = float(planned_epochs)

    def report(self, trial_id: str, epochs_run: float) -> None:
        """A running trial says it has run ``epochs_run`` epochs so far."""
        if epochs_run == epochs_run:  # not NaN (a diverged trial reports NaN)
            self.reported[trial_id] = float(epochs_run)

    def end(self, trial_id: str, epochs_run: float | None = None) -> None:
        """A trial ended having run ``epochs_run`` epochs (None: what it last reported)."""
        self.running.pop(trial_id, None)
        if epochs_run is not None and epochs_run == epochs_run:
            self.reported[trial_id] = float(epochs_run)
        self.done[trial_id] = self.reported.get(trial_id, 0.0)

    def spent_epochs(self) -> float:
        """Epochs run by the sweep so far: earlier commands', ended trials', running trials' so
        far."""
        running = sum(self.reported.get(t, 0.0) for t in self.running)
        return self.epochs_before + sum(self.done.values()) + running

    def committed_epochs(self) -> float:
        """Epochs spent or promised: ended trials' as run, running trials' in full."""
        return self.epochs_before + sum(self.done.values()) + sum(self.running.values())

    def elapsed(self) -> float:
        """Seconds since this command started."""
        return time.monotonic() - self.started

    # --- the limits ---

    def fits(self, planned_epochs: float) -> bool:
        """True if a trial of ``planned_epochs`` may start now (epochs and time)."""
        if self.time_up():
            return False
        if self.epochs is None:
            return True
        return self.committed_epochs() + float(planned_epochs) <= self.epochs + 1e-9

    def time_up(self) -> bool:
        """True once this command's time budget, less its exit reserve, is spent."""
        return self.seconds is not None and self.elapsed() >= self.seconds - self.reserve_s

    def spent_share(self, started_trials: int = 0, initial: int = 0) -> float:
        """The share 0..1 of the nearest limit spent: trials started past the ``initial``
        (enqueued) ones, epochs committed, seconds elapsed. Cost cooling falls with it."""
        shares = [0.0]
        if self.trials is not None and self.trials < MAX_TRIALS_WITHOUT_LIMIT:
            span = self.trials - initial
            shares.append(1.0 if span <= 0 else (started_trials - initial) / span)
        if self.epochs:
            shares.append(self.committed_epochs() / self.epochs)
        if self.seconds:
            shares.append(self.elapsed() / self.seconds)
        return min(1.0, max(0.0, max(shares)))

    def limits(self) -> str:
        """The limits in words, e.g. ``300 fine-tune epochs, 1 h 00 min``."""
        parts = []
        if self.trials is not None and self.trials < MAX_TRIALS_WITHOUT_LIMIT:
            parts.append(f"{self.trials} trials")
        if self.epochs is not None:
            parts.append(f"{self.epochs:g} fine-tune epochs")
        if self.seconds is not None:
            parts.append(format_seconds(self.seconds))
        return ", ".join(parts) or "no limit"


# Seconds a command that started its own Ray takes from its last line to its exit (Ray's
# shutdown, 1.4 s of it, and the interpreter's): measured 3.6-4.5 s on the 2-core VM
# (benchmarks/bench_time_budget.py). Its trials stop that much before the deadline (at most a
# quarter of the budget), so the command ends by the budget plus the final analysis.
EXIT_RESERVE_S = 4.0

# A trial count at or above this is not a limit the user set (a budget alone runs the search
# until epochs or time end; Ray Tune still wants a number): sweeps.cli.MAX_SAMPLES.
MAX_TRIALS_WITHOUT_LIMIT = 100_000

_active: Budget | None = None


def active() -> Budget | None:
    """The budget of the sweep this driver runs now, or None."""
    return _active


@contextlib.contextmanager
def in_force(budget: Budget) -> Iterator[Budget]:
    """Make ``budget`` the one ``active()`` returns while the sweep runs."""
    global _active
    previous, _active = _active, budget
    try:
        yield budget
    finally:
        _active = previous


def epochs_of_runs(children: Any) -> float:
    """Epochs the child runs in ``children`` (an ``mlflow.search_runs`` frame) spent: the sum
    of their ``epochs_run`` (latest value = epochs run; a run without one ran none)."""
    column = "metrics.epochs_run"
    if children is None or len(children) == 0 or column not in children:
        return 0.0
    values = children[column].dropna()
    return float(sum(v for v in values if math.isfinite(v)))
