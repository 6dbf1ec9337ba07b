"""The sweep driver's Ray Tune callback: it keeps MLflow true to how each trial ended.

A module-level class (not one made inside a function) so that Ray Tune pickles it by reference
with its experiment state and ``--resume`` restores it from the same code.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ray.tune import Callback, Stopper

from .budget import active
from .tracking import tagged_child_runs
from .trial import TrialContext, recipe_run_name

# What a FAILED child run's tag ``error`` says when Ray Tune wrote no error file.
NO_ERROR_FILE = "the trial's worker failed"


def error_file_line(path: str | None) -> str:
    """The last non-empty line of a Ray Tune error file (the error itself), or ''."""
    try:
        with open(path or "") as fh:
            lines = [line.strip() for line in fh if line.strip()]
    except OSError:
        return ""
    return lines[-1][:500] if lines else ""


def ended_by_itself(result: dict[str, Any] | None) -> bool:
    """Whether ``result`` is a trial's final report, which ``sweeps.trial`` sends only after it
    ended the trial's child run (FINISHED, or FAILED for a diverged loss): the last rung
    (``rung == last_rung``: the finished recipe, or a FINISHED run's result replayed), or a
    divergence (``diverged``). Anything else (no result, an intermediate rung) may have left a
    RUNNING run."""
    if not result:
        return False
    if result.get("diverged"):
        return True
    rung, last = result.get("rung"), result.get("last_rung")
    return rung is not None and last is not None and rung == last


def trial_run_name(ctx: TrialContext, trial: Any) -> str:
    """The child-run name of a Tune trial's recipe (``sweeps.trial.recipe_run_name``)."""
    recipe = dict(trial.config.get("recipe", trial.config))
    return recipe_run_name(recipe.get("model", ctx.model), recipe, ctx.train.epochs)


class TrialEndCallback(Callback):
    """A Ray Tune callback, in the driver, that keeps MLflow true to how each trial ended: a trial
    that failed for good (retries spent, or its worker process died) is FAILED with tag ``error``
    (a child run is made for it if it died before making one); a trial Tune stopped early is KILLED
    with tag ``early_stopped=rung N`` and keeps its partial history. It holds no client, only
    ``ctx``: Ray Tune pickles it with the experiment state, and ``--resume`` restores it."""

    def __init__(self, ctx: TrialContext) -> None:
        self.ctx = ctx

    def _client(self) -> Any:
        """A client of the sweep's tracking URI, made per event (none is kept: see above)."""
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.ctx.tracking_uri)

    def _runs(self, client: Any, trial: Any) -> list[Any]:
        """The child runs of the sweep tagged with ``trial``'s Tune trial id."""
        ctx = self.ctx
        return tagged_child_runs(
            client, ctx.experiment_id, ctx.parent_run_id, "trial_id", trial.trial_id
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Mark ``trial``'s child run FAILED with the error's last line (making the run if the
        trial died before it made one)."""
        ctx, client = self.ctx, self._client()
        line = error_file_line(trial.error_file) or NO_ERROR_FILE
        runs = self._runs(client, trial)
        if not runs:
            name = trial_run_name(ctx, trial)
            tags = {"mlflow.parentRunId": ctx.parent_run_id, "sweep": ctx.sweep_name,
                    "trial_id": trial.trial_id}  # fmt: skip
            runs = [client.create_run(ctx.experiment_id, run_name=name, tags=tags)]
        for run in runs:
            if run.info.status in ("RUNNING", "KILLED", "SCHEDULED") or (
                run.info.status == "FAILED" and "error" not in run.data.tags
            ):
                client.set_tag(run.info.run_id, "failure", "error")
                client.set_tag(run.info.run_id, "error", line)
                client.set_terminated(run.info.run_id, "FAILED")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Mark a child run Tune stopped before its last rung KILLED, tag ``early_stopped``.

        A trial whose last report is its final one (``ended_by_itself``) has ended its run
        already: the search for its runs (about 15 ms of the driver per trial on a SQLite
        store, while the driver's loop holds up the next trial) is skipped."""
        if ended_by_itself(trial.last_result):
            return
        client = self._client()
        rung = (trial.last_result or {}).get("rung")
        for run in self._runs(client, trial):
            if run.info.status == "RUNNING":  # Tune stopped it before its end
                client.set_tag(run.info.run_id, "early_stopped", f"rung {rung}")
                client.set_terminated(run.info.run_id, "KILLED")


class TrialProgress(Callback):
    """One progress line per trial that ends, in place of Ray Tune's own reporter (``verbose=1``
    printed a 13-line table at each trial's start and end: 340 KB of output for 100 one-second
    trials, and the driver's time between trials): the trial's recipe, how it ended, its
    accuracy and sparsity, its seconds, and the sweep's counts so far."""

    def __init__(self, ctx: TrialContext, total: int | None) -> None:
        self.ctx = ctx
        self.total = total  # trials the sweep runs at most, if it is a number
        self.ended = 0

    def _line(self, trials: list, trial: Any, outcome: str) -> None:
        self.ended += 1
        # Tune calls this before it marks ``trial`` ended: it is not counted as running
        running = sum(t.status == "RUNNING" and t is not trial for t in trials)
        count = f"{self.ended}/{self.total}" if self.total else str(self.ended)
        print(f"[sweep] trial {count} {trial_run_name(self.ctx, trial)}: {outcome}; "
              f"{running} running", file=sys.stderr, flush=True)  # fmt: skip

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """The line of a trial that ended without an error (finished, or stopped early)."""
        result = trial.last_result or {}
        if result.get("diverged"):
            outcome = "diverged (FAILED)"
        elif ended_by_itself(result):
            outcome = "finished"
        else:
            outcome = f"stopped at rung {result.get('rung', 0)}"
        figures = [f"{key} {result[key]:.4g}" for key in ("test_accuracy", "sparsity")
                   if isinstance(result.get(key), int | float)]  # fmt: skip
        seconds = result.get("time_total_s")
        if isinstance(seconds, int | float):
            figures.append(f"{seconds:.1f} s")
        self._line(trials, trial, ", ".join([outcome, *figures]))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """The line of a trial that failed for good."""
        line = error_file_line(trial.error_file) or NO_ERROR_FILE
        self._line(trials, trial, f"FAILED: {line[:200]}")


class BudgetStopper(Stopper):
    """Stops every trial once the time budget in force is spent (Ray Tune's ``stop_all``); it
    holds nothing, so the pickled copy a --resume restores reads that command's budget."""

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        """No single trial is stopped here (``stop_all`` stops them together)."""
        return False

    def stop_all(self) -> bool:
        """True once the time budget in force is spent."""
        budget = active()
        if budget is None or not budget.time_up():
            return False
        if budget.time_up_at is None:
            budget.time_up_at = time.monotonic()
            budget.exhausted = budget.exhausted or "time"
        return True
