"""MO-ASHA: asynchronous successive halving that promotes by non-dominated sorting, so a
multi-objective sweep stops its unpromising recipes early (Schmucker et al. 2021, "Multi-objective
Asynchronous Successive Halving"; Syne Tune's MO-ASHA). Ray Tune's own ASHA ranks on one metric,
and Optuna's pruners refuse multi-objective studies.

Rungs. Every ``tune.report`` of a trial carries ``rung`` (int, 1-based) and the objective values
measured at that rung, and may carry ``last_rung`` (the trial's final rung):

- an iterative recipe (schedule ``iterative`` or ``gradual``): rung = prune iteration. Each
  iteration ends with a pruned, fine-tuned and evaluated model, a measured (accuracy, sparsity)
  point on the way to the target; later iterations cost as much again.
- a one-shot recipe: rung = fine-tune epoch. It prunes once, so its only intermediate points are
  the evaluations after each fine-tuning epoch; they show early whether the recipe recovers.

Rule at rung r (``MOASHARungs.decide``). The values a trial reports at rung r on its way (not its
last rung) are recorded; let n be the number of trials recorded at rung r, this one included.

1. Grace: with n < eta, the trial continues (too few trials to rank; the first eta - 1 trials to
   reach a rung always continue). Ray's ASHA instead compares against the trials so far from
   the second on, which with 6-16 trials stops recipes on one comparison.
2. Otherwise the trial continues iff fewer than ceil(n / eta) of the trials recorded at rung r
   are strictly ahead of it: in a lower non-dominated front, or in the same front with a larger
   exclusive hypervolume contribution against the sweep's fixed reference (accuracy 0, the
   dense model's parameter count; ``sweeps.analysis.ahead_counts``). The sweep is judged by
   that hypervolume, and NSGA-II's crowding distance would keep the extreme points of a front
   whatever their worth: at rung 1 the grid's 99%-sparse model at chance accuracy is an extreme
   and held one of the few places. Where an objective ranked has no fixed reference, or none is
   given, the tie-break is the larger crowding distance. That keeps the top 1/eta as ASHA's
   percentile cutoff does (the same count for distinct values), and trials tied with the cut
   all continue.
3. Ranking uses only the objectives that every trial recorded at rung r reported as a finite
   number: values that exist only at the end (latency, sizes: NaN before) and a value one trial
   lacks are left out for that decision; ``used_objectives(r)`` says which were used. With none
   usable, the trial continues.
4. A trial's final rung (``last_rung``) never stops it (its budget is spent), and its values
   are kept apart (``finished``), not ranked against: a recipe that ended at rung r is not a
   point on the way to a target. Recipes here have different budgets (a one-shot recipe with
   one fine-tune epoch ends at rung 1, a three-iteration one passes rung 1 at a third of its
   sparsity), and in ASHA, where every trial has the same budget, a finished trial is only
   ever at the top rung, where nothing is decided. Ranked against the grid's finished
   one-shot models, iterative recipes were stopped at rung 1 for being less sparse, which they
   are by construction.
5. Decisions are final and asynchronous: a trial is judged once per rung, against the trials
   recorded there so far; later arrivals do not revive a stopped trial or stop a promoted one.

A stopped trial gets ``STOP`` from the scheduler; ``stopped_at[trial_id]`` holds its rung.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler

from .analysis import Objective, ahead_counts, as_objectives

# Keys of a trial's report that the scheduler reads (besides the objective metrics).
RUNG_KEY = "rung"
LAST_RUNG_KEY = "last_rung"
# The default eta: each rung keeps the top third.
DEFAULT_ETA = 3


@dataclass(frozen=True)
class RungDecision:
    """One decision: whether ``trial_id`` continues past ``rung``, and on what evidence."""

    trial_id: str
    rung: int
    continues: bool
    at_rung: int  # trials recorded at the rung when deciding, this one included
    keep: int  # how many may be ahead of a trial that continues: ceil(at_rung / eta)
    ahead: int  # trials strictly ahead of this one (front, then crowding distance)
    objectives: tuple[str, ...]  # the objectives ranked on
    reason: str  # "grace", "ranked", "last rung", "no objective", "repeat"


def check_eta(eta: Any) -> int:
    """``eta`` as an int >= 2; raises ``ValueError`` (one line) otherwise."""
    if isinstance(eta, bool) or not isinstance(eta, (int, np.integer)) or eta < 2:
        raise ValueError(f"eta {eta!r}: must be an integer >= 2 (keep the top 1/eta per rung)")
    return int(eta)


class MOASHARungs:
    """The pure MO-ASHA bookkeeping and decision (no Ray): ``decide(trial_id, rung, values)``.

    ``objectives``: the sweep's objectives (``Objective``s or ``"metric:max,metric:min"``);
    ``eta`` (>= 2): keep the top 1/eta of the trials at each rung. See the module docstring for
    the exact rule.
    """

    def __init__(
        self,
        objectives: str | Sequence[Objective],
        eta: int = DEFAULT_ETA,
        reference: Sequence[float] | None = None,
    ):
        self.objectives = as_objectives(objectives)
        self.eta = check_eta(eta)
        if reference is not None and len(reference) != len(self.objectives):
            raise ValueError(
                f"reference {tuple(reference)}: needs one value per objective "
                f"({len(self.objectives)})"
            )
        # the sweep's fixed hypervolume reference (NaN where an objective has none): within a
        # front, trials are ranked by their contribution to the hypervolume against it
        self.reference = tuple(float(r) for r in reference) if reference is not None else None
        # rung -> trial id -> {metric: value}, in arrival order
        self.recorded: dict[int, dict[str, dict[str, float]]] = {}
        self.stopped_at: dict[str, int] = {}  # trial id -> the rung it was stopped at
        # rung -> trial id -> {metric: value} of the trials that ended at that rung
        self.finished: dict[int, dict[str, dict[str, float]]] = {}
        self.decisions: list[RungDecision] = []
        self._used: dict[int, tuple[str, ...]] = {}  # rung -> objectives of its last ranking
        self._decided: dict[tuple[str, int], RungDecision] = {}

    def used_objectives(self, rung: int) -> tuple[str, ...]:
        """The objectives the last ranking at ``rung`` used (``()`` before any ranking)."""
        return self._used.get(rung, ())

    @staticmethod
    def _finite(value: Any) -> float:
        """``value`` as a float, NaN where it is missing or not a finite number."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            return math.nan
        return number if math.isfinite(number) else math.nan

    def decide(
        self, trial_id: str, rung: int, values: Mapping[str, Any], last: bool = False
    ) -> bool:
        """Record ``values`` (metric -> value) of ``trial_id`` at ``rung`` and return whether the
        trial continues. ``last``: this is the trial's final rung (kept in ``finished``, never
        stopped, not ranked against)."""
        rung = int(rung)
        if rung < 1:
            raise ValueError(f"rung {rung}: rungs are numbered from 1")
        if trial_id in self.stopped_at:
            return False
        earlier = self._decided.get((trial_id, rung))
        if earlier is not None:  # a repeated report of a rung already judged
            return earlier.continues
        point = {o.metric: self._finite(values.get(o.metric)) for o in self.objectives}
        n = keep = ahead = 0
        used: tuple[str, ...] = ()
        if last:
            # a finished recipe: not a point on the way to a target, so kept apart and not
            # ranked against the trials that are on their way there
            self.finished.setdefault(rung, {})[trial_id] = point
            continues, reason = True, "last rung"
        else:
            at_rung = self.recorded.setdefault(rung, {})
            at_rung[trial_id] = point
            n = len(at_rung)
            keep = math.ceil(n / self.eta)
            ids = list(at_rung)
            matrix = np.array([[at_rung[t][o.metric] for o in self.objectives] for t in ids])
            usable = [i for i in range(len(self.objectives)) if np.isfinite(matrix[:, i]).all()]
            used = tuple(self.objectives[i].metric for i in usable)
            if n < self.eta:
                continues, reason = True, "grace"
            elif not usable:
                continues, reason = True, "no objective"
            else:
                maximize = [self.objectives[i].mode == "max" for i in usable]
                ref = [self.reference[i] for i in usable] if self.reference is not None else None
                if ref is not None and not all(math.isfinite(r) for r in ref):
                    ref = None  # no fixed reference for an objective ranked here: crowding
                ahead = int(ahead_counts(matrix[:, usable], maximize, ref)[ids.index(trial_id)])
                continues, reason = ahead < keep, "ranked"
                self._used[rung] = used
        decision = RungDecision(trial_id, rung, continues, n, keep, ahead, used, reason)
        self.decisions.append(decision)
        self._decided[(trial_id, rung)] = decision
        if not continues:
            self.stopped_at[trial_id] = rung
        return continues


class MOASHAScheduler(FIFOScheduler):
    """Ray Tune ``TrialScheduler`` running MO-ASHA over the sweep's objectives.

    Give it to ``tune.TuneConfig(scheduler=...)`` with no ``metric``/``mode`` there (a
    multi-objective sweep passes those to ``OptunaSearch`` only). Each result must carry ``rung``
    and the objective metrics (NaN where not measured yet), and may carry ``last_rung``; a result
    without ``rung``, or with a rung below 1 (e.g. a trial reporting that it diverged), is not
    judged. Trials run in submission order (FIFO). ``stopped_at`` maps a
    stopped trial's id to its rung; ``used_objectives(rung)`` names what a rung was ranked on.
    """

    def __init__(
        self,
        objectives: str | Sequence[Objective],
        eta: int = DEFAULT_ETA,
        reference: Sequence[float] | None = None,
    ):
        super().__init__()
        self.rungs = MOASHARungs(objectives, eta, reference)

    @property
    def stopped_at(self) -> dict[str, int]:
        """Trial id -> the rung at which it was stopped."""
        return self.rungs.stopped_at

    @property
    def decisions(self) -> list[RungDecision]:
        """Every decision so far, in order."""
        return self.rungs.decisions

    def used_objectives(self, rung: int) -> tuple[str, ...]:
        """The objectives the last ranking at ``rung`` used."""
        return self.rungs.used_objectives(rung)

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """The objectives are fixed when the scheduler is made; a single ``metric``/``mode``
        from ``TuneConfig`` would contradict them, so it is refused."""
        return metric is None and mode is None

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """``STOP`` when MO-ASHA drops the trial at the rung this result reports, else
        ``CONTINUE``."""
        rung = result.get(RUNG_KEY)
        if rung is None or not rung >= 1:
            return self.CONTINUE
        last = result.get(LAST_RUNG_KEY)
        is_last = bool(result.get("done")) or (last is not None and int(rung) >= int(last))
        go = self.rungs.decide(trial.trial_id, int(rung), result, last=is_last)
        return self.CONTINUE if go else self.STOP

    def debug_string(self) -> str:
        """One line for Tune's progress output."""
        per_rung = ", ".join(
            f"rung {r}: {len(t)}" for r, t in sorted(self.rungs.recorded.items())
        )  # fmt: skip
        return (
            f"Using MO-ASHA (eta={self.rungs.eta}): {len(self.stopped_at)} stopped; trials "
            f"recorded per rung: {per_rung or 'none yet'}"
        )
