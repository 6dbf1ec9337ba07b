"""The one place that ranks sweep results: objectives, the non-dominated set, non-dominated
sorting with crowding distance, hypervolume and its reference point, and the runs table.

Pure: numpy, pandas and the metric catalog (``sweeps.catalog``, the standard library only); no
MLflow, no files, no plotting. The final front of a sweep (``sweeps.runner``), the ``python -m
sweeps.pareto`` command, the report (``sweeps.report``) and multi-objective early stopping
(``sweeps.scheduler``) all rank points here, so they agree. Units, names and fixed references of
the metrics come from the catalog.

Main entry points:

* ``analyse(runs, objectives, by=None, dense=None, reference=None, dense_values=None,
  stopped=None) -> Analysis``: the global front, hypervolume and (with ``by``) per-group fronts
  of ``runs`` (one row per trial, the frame ``trial_table`` builds). ``reference`` is the
  hypervolume's reference point: ``None`` or ``"fixed"`` (default; per objective, independent of
  the runs, see ``fixed_reference``), ``"data"`` (each objective's worst value over the runs,
  moved away by 10% of its range, see ``default_reference``), or numbers in the objectives' own
  units. ``stopped`` holds early-stopped trials: listed, never on the front.
* ``non_dominated_ranks`` (fronts 0, 1, 2, ...) and ``crowding_distance``: the order in which
  MO-ASHA promotes trials at a rung.
* ``hypervolume``: exact for two and three objectives (all turned into minimisation): a sweep
  over the front sorted by one axis in 2-D, and in 3-D slices along the third axis, each slice
  the 2-D hypervolume of the points below it; O(n^2 log n), fine for hundreds of trials.
* ``trial_table`` / ``trial_frame``: the runs table from ``mlflow.search_runs``-shaped frames
  (``params.*``, ``metrics.*``, ``tags.*`` columns); reading MLflow itself is
  ``sweeps.tracking``'s job.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from . import catalog
from .catalog import label, unit  # noqa: F401  (label: re-exported, report and pareto use it)

# The catalog's built-in entries under the names this module has always had (what a plugin
# registers later is not in them: the code here asks ``sweeps.catalog`` at each call).
# Metrics a trial logs that can serve as objectives, with the unit shown in tables and plots.
OBJECTIVE_METRICS = catalog.objective_metrics()
# Readable names for axes and reports. Metrics that are not sweep objectives (the runner's
# OptunaSearch cannot optimise them) can still be analysed here, so they get a name and unit too.
METRIC_NAMES = {m.name: m.label for m in catalog.metrics()}
EXTRA_UNITS = {m.name: m.unit for m in catalog.metrics() if not m.objective}
# Values of the dense model where they follow from its definition (nothing pruned).
DENSE_FIXED = catalog.dense_fixed()
# How far the data-dependent reference point lies beyond the worst value, as a share of the range.
REFERENCE_OFFSET = 0.1
DEFAULT_OBJECTIVES = "test_accuracy:max,nonzero_params:min"
# Columns of the runs table computed from other values (``trial_table``), not logged.
DERIVED_METRICS = ("accuracy_change",)
# Recipe params of a child run that the runs table always has, under their plain names.
RECIPE_COLUMNS = ["model", "method", "target_sparsity", "schedule", "iterations",
                  "finetune_epochs", "lr", "retrain"]  # fmt: skip

# Fixed hypervolume references, per objective, independent of the runs (so that two sweeps of
# the same dense model are comparable). Fractions where 0 is the worst any model can do, when
# maximised: reference 0, best possible 1.
ZERO_REFERENCE = catalog.zero_reference()
# Costs (counts, bytes, FLOPs, milliseconds), when minimised: reference the dense model's own
# value (a pruned model that costs as much as the dense one adds nothing), best possible 0.
DENSE_REFERENCE = catalog.dense_reference()
# MLflow tag of a child run that early stopping ended: the rung it stopped at (``"2"``).
STOPPED_TAG = "early_stopped"


@dataclass(frozen=True)
class Objective:
    """One metric to maximise or minimise."""

    metric: str
    mode: str  # "max" or "min"

    def __str__(self) -> str:
        return f"{self.metric}:{self.mode}"


def split_objectives(text: str) -> list[Objective]:
    """Parse the syntax of ``"METRIC:max,METRIC:min[,METRIC:max|min]"`` without checking that the
    metrics exist (the caller checks them against what the runs hold).

    Raises ``ValueError`` with one line naming the bad part and what is allowed.
    """
    objectives = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        metric, sep, mode = part.partition(":")
        if not sep or not metric.strip() or mode.strip() not in ("max", "min"):
            raise ValueError(f"objective {part!r} is malformed; write METRIC:max or METRIC:min")
        objectives.append(Objective(metric.strip(), mode.strip()))
    metrics = [o.metric for o in objectives]
    if not 2 <= len(objectives) <= 3 or len(set(metrics)) != len(metrics):
        raise ValueError(
            f"objectives {text!r}: give two or three distinct METRIC:max|min, comma-separated"
        )
    return objectives


def parse_objectives(text: str, known: Mapping[str, str] | None = None) -> list[Objective]:
    """Parse ``"test_accuracy:max,nonzero_params:min"``; two or three distinct objectives, each a
    metric of ``known`` (default: the catalog's objective metrics now, a plugin's included).

    Raises ``ValueError`` with one line naming the bad part and what is allowed.
    """
    known = catalog.objective_metrics() if known is None else known
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        metric, sep, mode = part.partition(":")
        if sep and mode.strip() in ("max", "min") and metric.strip() not in known:
            raise ValueError(
                f"objective metric {metric.strip()!r} is unknown; choose from: {', '.join(known)}"
            )
    return split_objectives(text)


def as_objectives(objectives: str | Sequence[Objective]) -> list[Objective]:
    """``Objective``s from text (syntax checked only) or a sequence of them."""
    return split_objectives(objectives) if isinstance(objectives, str) else list(objectives)


# ---------------------------------------------------------------------------------------------
# Dominance: the front, non-dominated sorting, crowding distance


def _as_minimisation(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """``values`` with maximised columns negated, so that lower is better everywhere."""
    return np.asarray(values, dtype=float) * np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0)


def pareto_mask(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values`` (n points x k objectives).

    Row a dominates row b when a is at least as good in every objective and strictly better in one.
    Duplicates do not dominate each other, so equal points are all on the front. Rows with a NaN
    are never on the front and never dominate.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(maximize):
        raise ValueError(f"values of shape {values.shape} do not match {len(maximize)} objectives")
    v = _as_minimisation(values, maximize)
    valid = ~np.isnan(v).any(axis=1)
    mask = np.zeros(len(v), dtype=bool)
    w = v[valid]
    # le[i, j]: point i is <= point j everywhere; lt[i, j]: strictly < somewhere
    le = (w[:, None, :] <= w[None, :, :]).all(axis=2)
    lt = (w[:, None, :] < w[None, :, :]).any(axis=2)
    dominated = (le & lt).any(axis=0)
    mask[np.flatnonzero(valid)] = ~dominated
    return mask


def non_dominated_ranks(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Non-dominated sorting: per row of ``values`` (n x k), the index of its front (0 = the
    Pareto front, 1 = the front once front 0 is removed, ...); -1 for rows with a NaN.

    Duplicates share a front. O(n^2) per front, fine for the trials of one rung.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(maximize):
        raise ValueError(f"values of shape {values.shape} do not match {len(maximize)} objectives")
    ranks = np.full(len(values), -1, dtype=int)
    remaining = np.flatnonzero(~np.isnan(values).any(axis=1))
    front = 0
    while len(remaining):
        on_front = pareto_mask(values[remaining], maximize)
        ranks[remaining[on_front]] = front
        remaining = remaining[~on_front]
        front += 1
    return ranks


def crowding_distance(values: np.ndarray, maximize: Sequence[bool] | None = None) -> np.ndarray:
    """NSGA-II crowding distance of the points of one front (n x k, no NaN): per objective,
    the gap between a point's two neighbours along that objective over the objective's range,
    summed; the extreme points of each objective get ``inf`` (they bound the front), and so does
    a front of one or two distinct points. Objectives where every point is equal add nothing.

    Duplicates get the same distance (it is computed over the distinct points), so equal points
    are always tied. ``maximize`` does not change the result (the gaps are symmetric); it is
    accepted so that calls read like the other functions here.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"values of shape {values.shape}: give n points x k objectives")
    if len(values) == 0:
        return np.zeros(0)
    if np.isnan(values).any():
        raise ValueError("crowding distance of points with NaN: rank on finite objectives only")
    distinct, inverse = np.unique(values, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    n = len(distinct)
    dist = np.zeros(n)
    if n <= 2:
        dist[:] = np.inf
        return dist[inverse]
    for col in distinct.T:
        span = float(col.max() - col.min())
        if span == 0.0:
            continue
        order = np.argsort(col, kind="stable")
        dist[order[0]] = dist[order[-1]] = np.inf
        gaps = (col[order[2:]] - col[order[:-2]]) / span
        dist[order[1:-1]] += gaps
    return dist[inverse]


def _ranks_and_tie_break(
    values: np.ndarray,
    maximize: Sequence[bool],
    within_front: Callable[[np.ndarray], np.ndarray],
    caller: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``values`` (n x k, no NaN): its front (``non_dominated_ranks``) and
    ``within_front(rows of that front)``, its tie-break value there (larger is ahead).
    ``caller`` names the function in the error for a row with a NaN."""
    values = np.asarray(values, dtype=float)
    ranks = non_dominated_ranks(values, maximize)
    if (ranks < 0).any():
        raise ValueError(f"{caller} needs finite values in every row")
    tie = np.zeros(len(values))
    for front in np.unique(ranks):
        idx = np.flatnonzero(ranks == front)
        tie[idx] = within_front(values[idx])
    return ranks, tie


def rank_and_crowding(
    values: np.ndarray, maximize: Sequence[bool]
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``values`` (n x k, no NaN): its front (``non_dominated_ranks``) and its
    crowding distance within that front. A row is ahead of another when its front is lower, or
    the front is the same and its crowding distance larger (it covers a sparser part of the
    front); equal pairs are tied."""
    return _ranks_and_tie_break(values, maximize, crowding_distance, "rank_and_crowding")


def hypervolume_contributions(
    values: np.ndarray, maximize: Sequence[bool], reference: Sequence[float]
) -> np.ndarray:
    """Per row of ``values`` (n x k, k = 2 or 3, no NaN): its exclusive hypervolume
    contribution against ``reference``, the volume that only it dominates (the hypervolume of
    all rows minus that of the others). Dominated rows, duplicates of another row and rows not
    strictly better than the reference in every objective contribute 0."""
    values = np.asarray(values, dtype=float)
    total = hypervolume(values, maximize, reference)
    out = np.zeros(len(values))
    for i in range(len(values)):
        out[i] = total - hypervolume(np.delete(values, i, axis=0), maximize, reference)
    return np.clip(out, 0.0, None)


def ahead_counts(
    values: np.ndarray, maximize: Sequence[bool], reference: Sequence[float] | None = None
) -> np.ndarray:
    """Per row of ``values`` (n x k, no NaN): how many other rows are strictly ahead of it by
    (front, then the tie-break within the front). Tied rows do not count each other, so 0 means
    "among the best"; a top-m cut that keeps rows with fewer than m ahead keeps ties together.

    Tie-break: with ``reference`` (in the objectives' units, 2 or 3 objectives), the larger
    exclusive hypervolume contribution within the front (``hypervolume_contributions``): a point
    ahead adds more of what the sweep is measured by, and an extreme point of little worth (a
    model at 99% sparsity with chance accuracy) does not hold a place. Without one, NSGA-II's
    larger crowding distance."""
    if reference is None or len(reference) not in (2, 3):
        ranks, tie = rank_and_crowding(values, maximize)
    else:
        ranks, tie = _ranks_and_tie_break(
            values, maximize,
            lambda front: hypervolume_contributions(front, maximize, reference), "ahead_counts",
        )  # fmt: skip
    ahead = (ranks[None, :] < ranks[:, None]) | (
        (ranks[None, :] == ranks[:, None]) & (tie[None, :] > tie[:, None])
    )
    return ahead.sum(axis=1)


def pareto_table(df: pd.DataFrame, objectives: Sequence[Objective]) -> pd.DataFrame:
    """``df`` with a boolean ``pareto`` column, sorted by the first objective (best first)."""
    cols = [o.metric for o in objectives]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"objective metric(s) {missing} not in the runs; have: {list(df.columns)}")
    out = df.copy()
    out["pareto"] = pareto_mask(
        out[cols].to_numpy(dtype=float), [o.mode == "max" for o in objectives]
    )
    first = objectives[0]
    return out.sort_values(first.metric, ascending=first.mode == "min", kind="stable")


# ---------------------------------------------------------------------------------------------
# Hypervolume and its reference point


def _hypervolume_2d(points: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated by ``points`` (minimisation, every point strictly inside ``ref``)."""
    if len(points) == 0:
        return 0.0
    order = np.lexsort((points[:, 1], points[:, 0]))  # by x, then y
    x, y = points[order, 0], points[order, 1]
    # Walking right, a point adds the band between its y and the best y seen so far, from its x
    # to the reference; points that do not improve y add nothing.
    best_before = np.minimum.accumulate(np.concatenate(([ref[1]], y)))[:-1]
    return float(np.sum((ref[0] - x) * np.clip(best_before - y, 0.0, None)))


def hypervolume(values: np.ndarray, maximize: Sequence[bool], reference: Sequence[float]) -> float:
    """Exact hypervolume of ``values`` (n points x k objectives, k = 2 or 3, in the objectives' own
    units) against ``reference`` (same units): the volume of the region that some point dominates
    and that dominates the reference. Points with a NaN or not strictly better than the reference
    in every objective add nothing.
    """
    values = np.asarray(values, dtype=float).reshape(-1, len(maximize))
    k = values.shape[1]
    if k not in (2, 3) or len(reference) != k:
        raise ValueError(
            f"hypervolume is exact for 2 or 3 objectives; got {k} objectives, "
            f"a reference of {len(reference)} values"
        )
    v = _as_minimisation(values, maximize)
    ref = _as_minimisation(np.asarray(reference, dtype=float)[None, :], maximize)[0]
    v = v[~np.isnan(v).any(axis=1) & (v < ref).all(axis=1)]
    if len(v) == 0:
        return 0.0
    v = v[pareto_mask(v, [False] * k)]  # dominated points add no volume: fewer slices
    if k == 2:
        return _hypervolume_2d(v, ref)
    v = v[np.argsort(v[:, 2], kind="stable")]
    z_next = np.append(v[1:, 2], ref[2])
    # Between consecutive z values, the dominated cross-section is the 2-D hypervolume of every
    # point at or below that z.
    return float(
        sum(
            _hypervolume_2d(v[: i + 1, :2], ref[:2]) * (z_next[i] - v[i, 2])
            for i in range(len(v))
            if z_next[i] > v[i, 2]
        )
    )


def default_reference(values: np.ndarray, maximize: Sequence[bool]) -> tuple[float, ...]:
    """The data-dependent reference point, in the objectives' own units: per objective, the worst
    value over ``values`` moved further from the front by ``REFERENCE_OFFSET`` (10%) of the range
    of that objective, so that the extreme points of the front add volume too. Where every run
    has the same value, the offset is 10% of that value's magnitude (1 if it is 0). It moves with
    the runs: hypervolumes against it compare only runs of one analysis."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values).any(axis=1)]
    ref = []
    for col, is_max in zip(values.T, maximize, strict=True):
        span = float(col.max() - col.min())
        if span == 0.0:
            span = abs(float(col[0])) or 1.0
        offset = REFERENCE_OFFSET * span
        ref.append(float(col.min() - offset) if is_max else float(col.max() + offset))
    return tuple(ref)


def _fixed_bounds(objective: Objective, dense: Mapping[str, float]) -> tuple[float, float] | None:
    """(fixed reference, best possible value) of ``objective`` from its catalog entry, or None
    where no fixed rule applies or the dense value it needs is unknown. The best possible value
    is NaN where the catalog knows none (a maximised metric other than a fraction)."""
    metric = objective.metric
    entry = catalog.get_metric(metric)
    acc = dense.get("test_accuracy")
    if objective.mode == "max" and metric == "accuracy_change" and acc is not None:
        # a model with no correct prediction changes accuracy by -dense accuracy
        return -float(acc), 1.0 - float(acc)
    if entry is None or entry.reference is None or objective.mode != entry.direction:
        return None
    best = math.nan if entry.best is None else entry.best
    if entry.reference == "zero":
        return 0.0, best
    value = dense.get(metric)
    if value is not None and math.isfinite(float(value)):
        return float(value), best
    return None


def fixed_reference(
    objectives: str | Sequence[Objective], dense: Mapping[str, float]
) -> tuple[float, ...]:
    """The fixed reference point of ``objectives``, independent of the runs, as the catalog
    (``sweeps.catalog``) gives it: accuracy-like fractions that are maximised (test_accuracy,
    sparsity, permanent_test_accuracy: reference ``"zero"``) at 0; costs that are minimised
    (parameter counts, sizes, FLOPs, latency, a plugin's ``"dense"`` metric) at the dense
    model's value, ``dense[metric]``; accuracy_change (max) at ``-dense["test_accuracy"]``.

    ``dense`` carries the dense model's values, e.g. ``{"nonzero_params": 109386,
    "total_params": 109386, "test_accuracy": 0.97}``. Two sweeps of the same dense model get
    the same reference, so their hypervolumes compare. Raises ``ValueError`` (one line) for an
    objective with no fixed rule or whose dense value is missing.
    """
    objs = as_objectives(objectives)
    ref = partial_fixed_reference(objs, dense)
    for o, r in zip(objs, ref, strict=True):
        if math.isnan(r):
            raise ValueError(
                f"objective {o} has no fixed reference: maximise one of "
                f"{', '.join(catalog.zero_reference())}, or minimise one of "
                f"{', '.join(catalog.dense_reference())} "
                f"with its dense value given (dense values: {', '.join(dense) or '(none)'})"
            )
    return ref


def partial_fixed_reference(
    objectives: str | Sequence[Objective], dense: Mapping[str, float]
) -> tuple[float, ...]:
    """``fixed_reference`` where each objective has one, NaN where it has none (an objective
    with no fixed rule, or whose dense value is not known yet: latency before it is timed)."""
    out = []
    for o in as_objectives(objectives):
        bounds = _fixed_bounds(o, dense)
        out.append(bounds[0] if bounds is not None else math.nan)
    return tuple(out)


def normalised_hypervolume(
    hv: float, objectives: str | Sequence[Objective], reference: Sequence[float],
    dense: Mapping[str, float] | None = None,
) -> float:  # fmt: skip
    """``hv`` over the volume of the box between ``reference`` and the best possible point
    (accuracy-like fractions 1, costs 0): 1 would be a model with every objective perfect,
    0 nothing better than the reference. NaN where an objective has no best possible value."""
    box = 1.0
    for o, r in zip(as_objectives(objectives), reference, strict=True):
        bounds = _fixed_bounds(o, {**(dense or {}), o.metric: r})
        if bounds is None:
            return float("nan")
        box *= abs(bounds[1] - float(r))
    return hv / box if box > 0 else float("nan")


# ---------------------------------------------------------------------------------------------
# The analysis of a runs table

REFERENCE_KINDS = {
    "fixed": "fixed, independent of the runs",
    "data": "worst value over the analysed runs moved away by 10% of its range",
    "given": "given",
}


@dataclass
class Analysis:
    """The result of ``analyse``: the runs with their front flags, hypervolume and groups."""

    objectives: list[Objective]
    table: pd.DataFrame  # every run; pareto, missing[, group, group_pareto]; best first
    reference: tuple[float, ...]  # objectives' own units
    reference_kinds: tuple[str, ...]  # per objective: "fixed", "data" or "given"
    hypervolume: float
    by: str | None = None
    groups: pd.DataFrame | None = None  # with ``by``: one row per group
    baselines: pd.DataFrame = field(default_factory=pd.DataFrame)  # one dense point per model
    missing_counts: dict[str, int] = field(default_factory=dict)  # objective -> runs without it
    notes: list[str] = field(default_factory=list)  # e.g. runs the loader left out, and why
    stopped: pd.DataFrame = field(default_factory=pd.DataFrame)  # early-stopped trials
    dense_values: dict[str, float] = field(default_factory=dict)  # for the fixed reference

    @property
    def metrics(self) -> list[str]:
        """The objective metric names, in order."""
        return [o.metric for o in self.objectives]

    @property
    def maximize(self) -> list[bool]:
        """Per objective, whether higher is better."""
        return [o.mode == "max" for o in self.objectives]

    @property
    def reference_is_default(self) -> bool:
        """Whether the reference point was chosen here rather than given."""
        return "given" not in self.reference_kinds

    @property
    def reference_is_fixed(self) -> bool:
        """Whether every objective's reference is fixed (comparable across sweeps)."""
        return all(k == "fixed" for k in self.reference_kinds)

    @property
    def analysed(self) -> pd.DataFrame:
        """The runs that have every objective."""
        return self.table[self.table["missing"] == ""]

    @property
    def excluded(self) -> int:
        """How many runs were left out for a missing objective."""
        return int((self.table["missing"] != "").sum())

    @property
    def front(self) -> pd.DataFrame:
        """The runs on the global front, best first in the first objective."""
        return self.table[self.table["pareto"]]

    @property
    def ideal(self) -> tuple[float, ...]:
        """The best value of each objective over the analysed runs."""
        vals = self.analysed[self.metrics].to_numpy(dtype=float)
        return tuple(
            float(c.max() if m else c.min()) for c, m in zip(vals.T, self.maximize, strict=True)
        )

    @property
    def hypervolume_share(self) -> float:
        """Hypervolume over the volume of the box between the ideal point and the reference
        (1 would be a single run best in everything); scale-free, for reading, not comparing
        across different reference points."""
        box = math.prod(abs(r - i) for r, i in zip(self.reference, self.ideal, strict=True))
        return self.hypervolume / box if box > 0 else float("nan")

    @property
    def hypervolume_normalised(self) -> float:
        """Hypervolume over the box between the reference and the best possible point
        (accuracy 1, costs 0): comparable across sweeps when the reference is fixed; NaN where
        an objective has no best possible value."""
        return normalised_hypervolume(
            self.hypervolume, self.objectives, self.reference, self.dense_values
        )

    @property
    def reference_text(self) -> str:
        """How the reference point was chosen, in words."""
        kinds = set(self.reference_kinds)
        if kinds == {"given"}:
            return "given with --reference"
        if kinds == {"data"}:
            return (
                "data: each objective's worst value over the analysed runs, moved away from the "
                f"front by {REFERENCE_OFFSET:.0%} of that objective's range (depends on the runs)"
            )
        parts = []
        for o, kind in zip(self.objectives, self.reference_kinds, strict=True):
            if kind == "fixed" and o.metric in catalog.zero_reference():
                parts.append(f"{o.metric} 0")
            elif kind == "fixed" and o.metric == "accuracy_change":
                parts.append(f"{o.metric} minus the dense accuracy")
            elif kind == "fixed":
                parts.append(f"{o.metric} the dense model's value")
            else:
                parts.append(f"{o.metric} {REFERENCE_KINDS[kind]}")
        if kinds == {"fixed"}:
            return f"fixed: {', '.join(parts)}; comparable across sweeps of the same dense model"
        return f"{', '.join(parts)} (no fixed value for every objective: not comparable)"

    @property
    def reference_metrics(self) -> dict[str, float]:
        """The reference point as parent-run metrics, ``{"pareto_reference.<metric>": value}``,
        logged beside ``pareto_hypervolume`` so sweeps compare in the MLflow UI."""
        return {
            f"pareto_reference.{m}": r for m, r in zip(self.metrics, self.reference, strict=True)
        }

    @property
    def hypervolume_unit(self) -> str:
        """The unit of the hypervolume: the product of the objectives' units."""
        return " x ".join(unit(m) or m for m in self.metrics)


def _group_label(value: Any) -> str:
    """A group's name from a param value (floats without trailing zeros, missing as "(unset)")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "(unset)"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    return str(value)


def numeric_columns(runs: pd.DataFrame) -> list[str]:
    """Columns of ``runs`` that hold numbers in at least one row (candidate objective metrics)."""
    out = []
    for col in runs.columns:
        values = pd.to_numeric(runs[col], errors="coerce")
        if values.notna().any() and not pd.api.types.is_bool_dtype(runs[col]):
            out.append(col)
    return out


def _largest(frame: pd.DataFrame, column: str) -> float:
    """The largest number in ``frame[column]``; NaN where the column is absent or has none."""
    if column not in frame:
        return float("nan")
    return float(pd.to_numeric(frame[column], errors="coerce").max())


def dense_baselines(runs: pd.DataFrame, dense: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per dense model: ``model``, ``test_accuracy`` (``dense`` or the runs'
    ``dense_test_accuracy``), each metric the catalog finds from a column of the runs
    (``sweeps.catalog.dense_sources``: ``nonzero_params`` = ``total_params`` = the largest
    ``total_params`` among that model's runs; structured runs that remove channels report
    fewer, the others the dense count), and the values fixed by definition (``sparsity`` 0).
    Empty if the dense accuracy is unknown."""
    rows = []
    models = runs["model"] if "model" in runs else pd.Series([""] * len(runs), index=runs.index)
    for model in pd.unique(models.dropna()):
        sub = runs[models == model]
        accs: list[float] = []
        if dense is not None and model in dense:
            accs = [float(dense[model])]
        elif "dense_test_accuracy" in sub:
            # several sweeps of one model may have several baselines
            accs = sorted(set(pd.to_numeric(sub["dense_test_accuracy"], errors="coerce").dropna()))
        found = {m: _largest(sub, source) for m, source in catalog.dense_sources().items()}
        for acc in accs:
            rows.append({"model": model, "test_accuracy": acc, **found, **catalog.dense_fixed()})
    return pd.DataFrame(rows)


def dense_values_of(
    runs: pd.DataFrame, dense: Mapping[str, float] | None = None
) -> dict[str, float]:
    """The dense model's values that the fixed reference needs, as far as ``runs`` tell them:
    each metric of ``sweeps.catalog.dense_sources`` at the largest value of its source column
    over the runs (``nonzero_params`` = ``total_params`` = the largest ``total_params`` of any
    run; with several models the largest model, so every model's runs fit inside the
    reference) and ``test_accuracy``, the largest dense accuracy (``dense`` per model, else the
    runs' ``dense_test_accuracy``). Sizes, FLOPs and latency of the dense model are not in the
    runs table: pass them to ``analyse`` as ``dense_values``."""
    out: dict[str, float] = {}
    for metric, source in catalog.dense_sources().items():
        value = _largest(runs, source)
        if pd.notna(value):
            out[metric] = value
    accs = list(dense.values()) if dense else []
    if not accs and "dense_test_accuracy" in runs:
        accs = list(pd.to_numeric(runs["dense_test_accuracy"], errors="coerce").dropna())
    if accs:
        out["test_accuracy"] = float(max(accs))
    return out


def _reference(
    objs: list[Objective],
    values: np.ndarray,
    reference: Sequence[float] | str | None,
    dense_values: Mapping[str, float],
) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """The reference point and, per objective, how it was chosen (see ``analyse``)."""
    maximize = [o.mode == "max" for o in objs]
    if reference is None or isinstance(reference, str):
        kind = reference or "fixed"
        if kind not in ("fixed", "data"):
            raise ValueError(f"reference {kind!r}: write fixed, data or one number per objective")
        data = default_reference(values, maximize)
        if kind == "data":
            return data, ("data",) * len(objs)
        bounds = [_fixed_bounds(o, dense_values) for o in objs]
        ref = tuple(b[0] if b else d for b, d in zip(bounds, data, strict=True))
        return ref, tuple("fixed" if b else "data" for b in bounds)
    ref = tuple(float(r) for r in reference)
    if len(ref) != len(objs) or not all(math.isfinite(r) for r in ref):
        raise ValueError(
            f"reference {','.join(map(str, reference))}: give {len(objs)} finite numbers, "
            f"one per objective ({', '.join(o.metric for o in objs)}), in the objectives' own units"
        )
    return ref, ("given",) * len(objs)


def analyse(
    runs: pd.DataFrame,
    objectives: str | Sequence[Objective],
    by: str | None = None,
    dense: Mapping[str, float] | None = None,
    reference: Sequence[float] | str | None = None,
    dense_values: Mapping[str, float] | None = None,
    stopped: pd.DataFrame | None = None,
) -> Analysis:
    """Compute the global front, hypervolume and (with ``by``) per-group fronts of ``runs``.

    ``runs`` has one row per finished trial, with a column per objective metric (NaN where a run
    lacks it: such runs are kept in the table but left out of the front, and counted), ``model``
    and ``total_params`` for the dense baseline, and ``dense_test_accuracy`` unless ``dense``
    (the dense test accuracy per model) is given. ``objectives``: ``Objective``s or text such as
    ``"test_accuracy:max,nonzero_params:min"`` (any numeric column may be an objective). ``by``
    names a column (method, model, schedule, ...) whose values form groups with their own fronts.

    ``reference``: ``None``/``"fixed"`` (default): per objective the fixed value of
    ``fixed_reference``, with the dense model's values from ``dense_values_of(runs, dense)``
    updated by ``dense_values``; an objective with no fixed value (e.g. latency with no dense
    latency given) falls back to the data-dependent value, and ``reference_kinds`` and the
    report say so. ``"data"``: ``default_reference`` for every objective. Numbers: used as given.

    ``stopped``: early-stopped trials (rows of ``trial_table``, with ``stopped_at_rung``); they
    are listed (``Analysis.stopped``) and never on the front.

    Raises ``ValueError`` (one line) for an objective or ``by`` that no run has, a malformed
    reference, or no run that has every objective.
    """
    objs = as_objectives(objectives)
    metrics = [o.metric for o in objs]
    maximize = [o.mode == "max" for o in objs]
    _check_columns(runs, metrics, by)
    table, values = _objective_table(runs, metrics)
    lacking = np.isnan(values)
    ok = ~lacking.any(axis=1)
    if not ok.any():
        raise ValueError(f"no run has all of the objectives {', '.join(metrics)}")
    known = {**dense_values_of(runs, dense), **(dense_values or {})}
    ref, kinds = _reference(objs, values[ok], reference, known)
    table["pareto"] = pareto_mask(values, maximize)
    groups = _group_fronts(table, values, ok, maximize, ref, by) if by is not None else None
    first = objs[0]
    table = table.sort_values(first.metric, ascending=first.mode == "min", kind="stable")
    return Analysis(
        objectives=objs,
        table=table.reset_index(drop=True),
        reference=ref,
        reference_kinds=kinds,
        hypervolume=hypervolume(values[ok], maximize, ref),
        by=by,
        groups=groups,
        baselines=dense_baselines(runs, dense),
        missing_counts={m: int(lacking[:, i].sum()) for i, m in enumerate(metrics)},
        stopped=_stopped_rows(stopped),
        dense_values=known,
    )


def _check_columns(runs: pd.DataFrame, metrics: list[str], by: str | None) -> None:
    """Raise ``ValueError`` (one line) for an objective or ``by`` column that no run has."""
    for metric in metrics:
        if metric not in runs or pd.to_numeric(runs[metric], errors="coerce").isna().all():
            raise ValueError(
                f"objective metric {metric!r} is in no run; metrics that exist: "
                f"{', '.join(numeric_columns(runs)) or '(none)'}"
            )
    if by is not None and (by not in runs or runs[by].isna().all()):
        raise ValueError(
            f"by {by!r} is in no run; columns that exist: {', '.join(map(str, runs.columns))}"
        )


def _objective_table(runs: pd.DataFrame, metrics: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """A copy of ``runs`` with the objective columns as numbers and ``missing`` (the objectives
    a run lacks, comma-separated), and the objective values (n runs x k, NaN where lacking)."""
    table = runs.copy()
    for metric in metrics:
        table[metric] = pd.to_numeric(table[metric], errors="coerce")
    values = table[metrics].to_numpy(dtype=float)
    table["missing"] = [
        ",".join(m for m, gone in zip(metrics, row, strict=True) if gone)
        for row in np.isnan(values)
    ]
    return table, values


def _group_fronts(
    table: pd.DataFrame,
    values: np.ndarray,
    ok: np.ndarray,
    maximize: list[bool],
    ref: tuple[float, ...],
    by: str,
) -> pd.DataFrame:
    """Per value of ``by``: its own front (``table`` gains ``group`` and ``group_pareto``, in
    place) and one row of counts and hypervolume against ``ref``. ``ok``: the rows that have
    every objective; ``table["pareto"]`` must be set."""
    table["group"] = table[by].map(_group_label)
    table["group_pareto"] = False
    rows = []
    # groups in the order of their values (numeric params sort as numbers)
    order = table.sort_values(by, kind="stable", na_position="last")["group"]
    for name in pd.unique(order):
        in_group = (table["group"] == name).to_numpy()
        idx = np.flatnonzero(in_group & ok)
        table.loc[table.index[idx], "group_pareto"] = pareto_mask(values[idx], maximize)
        rows.append({
            "group": name,
            "runs": int(in_group.sum()),
            "analysed": len(idx),
            "on_group_front": int(table["group_pareto"].to_numpy()[idx].sum()),
            "on_global_front": int(table["pareto"].to_numpy()[idx].sum()),
            "hypervolume": hypervolume(values[idx], maximize, ref),
        })  # fmt: skip
    return pd.DataFrame(rows)


def _stopped_rows(stopped: pd.DataFrame | None) -> pd.DataFrame:
    """The early-stopped trials, by the rung they stopped at (empty if none)."""
    rows = pd.DataFrame() if stopped is None else stopped.copy()
    if len(rows) and "stopped_at_rung" in rows:
        rows = rows.sort_values("stopped_at_rung", kind="stable")
    return rows.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# The runs table, from frames shaped like mlflow.search_runs' (no MLflow import here)


def column(frame: pd.DataFrame, name: str) -> pd.Series:
    """``frame[name]``, or a column of None where MLflow left it out (no run has it)."""
    return frame[name] if name in frame else pd.Series([None] * len(frame), index=frame.index)


def _rung(value: Any) -> float:
    """The rung number in an ``early_stopped`` tag (``"2"`` or ``"rung 2"``); NaN if none."""
    match = re.search(r"\d+", str(value)) if value is not None and not pd.isna(value) else None
    return float(match.group()) if match else float("nan")


def trial_table(df: pd.DataFrame, dense_accuracy: Mapping[str, float]) -> pd.DataFrame:
    """One row per child run (``df`` as ``mlflow.search_runs`` returns it): name, recipe and
    final metrics, under plain column names, with ``accuracy_change`` against the dense model of
    the same architecture, and ``stopped_at_rung`` where a run carries the ``early_stopped``
    tag."""
    if df.empty:
        return pd.DataFrame(columns=["run_id", "run_name", *RECIPE_COLUMNS])
    out = pd.DataFrame({"run_id": df["run_id"], "run_name": df["tags.mlflow.runName"]})
    for col in RECIPE_COLUMNS:
        out[col] = df.get(f"params.{col}")
    for col in [c for c in df.columns if c.startswith("metrics.")]:
        out[col[len("metrics.") :]] = df[col]
    for col in ("target_sparsity", "lr"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    for col in ("iterations", "finetune_epochs"):
        values = pd.to_numeric(out[col], errors="coerce")
        # integers where every run logged them (a run killed before its params has none)
        out[col] = values.astype(int) if values.notna().all() else values
    out["dense_test_accuracy"] = out["model"].map(dense_accuracy)
    out["accuracy_change"] = out["test_accuracy"] - out["dense_test_accuracy"]
    if f"tags.{STOPPED_TAG}" in df:
        out["stopped_at_rung"] = df[f"tags.{STOPPED_TAG}"].map(_rung)
    return out.sort_values("run_name", kind="stable").reset_index(drop=True)


def trial_frame(finished: pd.DataFrame, parents: pd.DataFrame) -> pd.DataFrame:
    """The runs table of child runs read from MLflow (``mlflow.search_runs`` frames): the
    ``trial_table`` of each sweep (each sweep has its own dense accuracy per model, from its
    parent run's ``dense_test_accuracy.<model>`` or ``dense_test_accuracy`` metric), joined,
    plus ``sweep`` (the parent run's name), ``parent_run_id`` and any other param the runs
    logged (e.g. ``dataset``)."""
    frames = []
    for parent_id, rows in finished.groupby("tags.mlflow.parentRunId", sort=False):
        parent = parents[parents["run_id"] == parent_id]
        dense: dict[str, float] = {}
        if len(parent):
            p = parent.iloc[0]
            models = pd.unique(column(rows, "params.model").dropna())
            for model in models:
                for key in (f"metrics.dense_test_accuracy.{model}", "metrics.dense_test_accuracy"):
                    if key in p and pd.notna(p[key]):
                        dense[model] = float(p[key])
                        break
        table = trial_table(rows.reset_index(drop=True), dense)
        table["sweep"] = (
            parent["tags.mlflow.runName"].iloc[0]
            if len(parent) and "tags.mlflow.runName" in parent
            else parent_id
        )
        table["parent_run_id"] = parent_id
        extra = [c for c in rows.columns if c.startswith("params.")]
        extra = [c for c in extra if c[len("params.") :] not in table.columns]
        if extra:
            more = rows[["run_id", *extra]].rename(columns=lambda c: c.removeprefix("params."))
            table = table.merge(more, on="run_id", how="left")
        frames.append(table)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
