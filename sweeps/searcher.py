"""The sweep's Ray Tune searcher: ``OptunaSearch`` that tells Optuna the truth about trials that
early stopping ended.

Ray's ``OptunaSearch`` tells Optuna every trial that ended without an error as COMPLETE, with the
objective values of its last report. A trial that MO-ASHA stopped at rung r < its last rung
reported the values of an unfinished recipe: an iterative recipe aiming at 99% sparsity, stopped
after its first of three prune iterations, reported the parameter count and accuracy of a model
at about 78%. As a COMPLETE trial, those values would teach the sampler that the recipe's
parameters (target 0.99) give that point, which they do not. ``RungAwareOptunaSearch`` tells such
a trial as PRUNED instead, with no values, as Optuna's own pruners do: Optuna's TPE then counts
it among the worse trials (``_split_trials`` puts pruned trials below every complete one), which
is what the stop decided (it was outside the top 1/eta at a rung).

The Optuna study has one objective more than the sweep: ``COST_METRIC``, the fine-tune epochs the
trial ran (minimised). The sampler then prefers, of two recipes that reach the same point of the
front, the cheaper one: in the quick MNIST space a one-shot recipe with learning-rate rewinding
(13 epochs) reaches 96% sparsity at 0.97 accuracy as a gradual one (26-39 epochs) does. Only the
sampler sees it; the front, the hypervolume and early stopping use the sweep's objectives.
Measured with ``benchmarks/bench_search.py --quick`` (the same 3 seeds, no early stopping):
167 fine-tune epochs and hypervolume 0.9353 without it, 124 epochs and 0.9345 with it.

A diverged trial reports NaN objectives. Optuna 5 refuses NaN values in ``tell``, and
``OptunaSearch`` only logs that refusal, which left the trial RUNNING in the Optuna study for the
rest of the sweep. ``RungAwareOptunaSearch`` tells it as FAILED.
"""

from __future__ import annotations

import math
from typing import Any

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from .scheduler import LAST_RUNG_KEY, RUNG_KEY

# Reported by every trial: the fine-tune (or rewound retraining) epochs it ran. The sampler's
# extra objective (minimised), never one of the sweep's.
COST_METRIC = "epochs_run"


def stopped_early(result: dict[str, Any] | None) -> bool:
    """True if ``result`` (a trial's last report) is that of a recipe stopped before its last
    rung: it names both its ``rung`` (>= 1) and its ``last_rung``, and the rung is lower. A
    finished recipe reports ``rung == last_rung``; a diverged one reports rung 0 and no last
    rung (its NaN values make Optuna record it as FAILED)."""
    if not result:
        return False
    rung, last = result.get(RUNG_KEY), result.get(LAST_RUNG_KEY)
    if rung is None or last is None:
        return False
    return 1 <= int(rung) < int(last)


def has_non_finite(result: dict[str, Any] | None, metrics: list[str] | str | None) -> bool:
    """True if ``result`` holds one of ``metrics`` as a value that is not a finite number."""
    if not result or metrics is None:
        return False
    for metric in [metrics] if isinstance(metrics, str) else metrics:
        value = result.get(metric)
        if value is not None and not math.isfinite(float(value)):
            return True
    return False


class RungAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells a trial stopped before its last rung as PRUNED and a trial
    with a NaN or infinite objective as FAILED (see the module docstring); every other trial is
    told as ``OptunaSearch`` tells it."""

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        """Tell Optuna how ``trial_id`` ended: PRUNED when early stopping ended it, FAILED when
        an objective is not finite (divergence), else as ``OptunaSearch`` does (COMPLETE with
        its values, FAILED on an error)."""
        if trial_id in self._completed_trials or error:
            return super().on_trial_complete(trial_id, result, error)
        if has_non_finite(result, self.metric):
            state = TrialState.FAIL
        elif stopped_early(result):
            state = TrialState.PRUNED
        else:
            return super().on_trial_complete(trial_id, result, error)
        self._ot_study.tell(self._ot_trials[trial_id], state=state)
        self._completed_trials.add(trial_id)
