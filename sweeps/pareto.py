"""Pareto analysis of sweep results: objectives, the non-dominated set, hypervolume, group fronts.

Two ways in:

* From Python, e.g. at the end of a sweep (the runner holds ``runs``, the frame that
  ``sweeps.runner.trial_table`` builds, and the dense accuracy per model)::

      from sweeps.pareto import analyse, format_analysis, write_outputs

      analysis = analyse(runs, "test_accuracy:max,nonzero_params:min", by=None, dense=accuracies)
      print(format_analysis(analysis))
      paths = write_outputs(analysis, out_dir, settings=parent_params, title=experiment_name)
      for path in paths:
          client.log_artifact(parent_run_id, path)

  ``analyse(runs, objectives, by=None, dense=None, reference=None) -> Analysis`` never writes
  anything. ``runs`` has one row per trial, with a column per objective metric (NaN where a run
  lacks it: such runs are kept in the table but left out of the front, and counted), ``model``
  and ``total_params`` for the dense baseline, and ``dense_test_accuracy`` unless ``dense`` (the
  dense test accuracy per model) is given. ``by`` names a column (a recipe param such as method,
  model, schedule) whose values form groups with their own fronts. ``reference`` is the
  hypervolume's reference point in the objectives' own units; by default it is each objective's
  worst value over the analysed runs, moved away from the front by 10% of that objective's range
  (see ``default_reference``). Bad input (an objective or ``by`` column no run has, a reference of
  the wrong length) raises ``ValueError`` with one line naming the value and what exists.

  ``Analysis.table`` is every run with the columns ``pareto`` (on the global front), ``missing``
  (the objectives the run lacks, ``""`` if none) and, with ``by``, ``group`` and
  ``group_pareto`` (on its group's front); sorted by the first objective, best first.

  ``write_outputs(analysis, out_dir, settings=None, title=None) -> list[str]`` writes
  ``pareto.csv`` (that table), ``pareto.png`` (the figure) and ``report.md`` (front table,
  figure, hypervolume and reference point, dense baseline, sweep settings) into ``out_dir`` and
  returns their paths; ``settings`` is the sweep's parent-run params, ``{param: value}``, or
  ``{sweep name: {param: value}}`` for several sweeps. It lives in ``sweeps.report`` (it imports
  matplotlib) and is re-exported here.

* From MLflow alone: ``python -m sweeps.pareto --experiment NAME [--sweep RUN_ID ...]
  [--objectives test_accuracy:max,nonzero_params:min] [--by method] [--reference A,B]
  [--out DIR] [--tracking-uri URI]`` reads the FINISHED child runs of one sweep, several, or the
  whole experiment, prints the front, writes the three files to ``--out`` (default
  ``mlruns/reports/<experiment>``) and, when exactly one sweep is analysed, logs them as
  artifacts of its parent run. Bad input ends with one line on stderr and exit status 2, before
  anything is written. From a notebook, ``load_runs(uri, experiment, sweeps)`` and
  ``trial_frame(loaded.finished, loaded.parents)`` give the same runs table.

Hypervolume is exact for two and three objectives (all turned into minimisation): a sweep over
the front sorted by one axis in 2-D, and in 3-D slices along the third axis, each slice the 2-D
hypervolume of the points below it; O(n^2 log n), fine for hundreds of trials.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
import pandas as pd

# Metrics a trial logs that can serve as objectives, with the unit shown in tables and plots.
OBJECTIVE_METRICS = {
    "test_accuracy": "fraction",
    "sparsity": "fraction",
    "nonzero_params": "count",
    "total_params": "count",
    "size_bytes": "bytes",
    "sparse_size_bytes": "bytes",
    "flops": "FLOPs per batch",
    "effective_flops": "FLOPs per batch",
    "latency_ms": "ms per batch",
}
# Readable names for axes and reports. Metrics that are not sweep objectives (the runner's
# OptunaSearch cannot optimise them) can still be analysed here, so they get a name and unit too.
METRIC_NAMES = {
    "test_accuracy": "test accuracy",
    "sparsity": "sparsity",
    "nonzero_params": "non-zero parameters",
    "total_params": "total parameters",
    "size_bytes": "dense size",
    "sparse_size_bytes": "sparse size",
    "flops": "FLOPs",
    "effective_flops": "effective FLOPs",
    "latency_ms": "latency",
    "permanent_test_accuracy": "test accuracy after prune.remove",
    "accuracy_change": "accuracy change from dense",
}
EXTRA_UNITS = {"permanent_test_accuracy": "fraction", "accuracy_change": "fraction"}
# Values of the dense model where they follow from its definition (nothing pruned).
DENSE_FIXED = {"sparsity": 0.0, "accuracy_change": 0.0}
# How far the default reference point lies beyond the worst value, as a share of the range.
REFERENCE_OFFSET = 0.1
DEFAULT_OBJECTIVES = "test_accuracy:max,nonzero_params:min"
# Columns of the runs table computed from other values (sweeps.runner.trial_table), not logged.
DERIVED_METRICS = ("accuracy_change",)


@dataclass(frozen=True)
class Objective:
    """One metric to maximise or minimise."""

    metric: str
    mode: str  # "max" or "min"

    def __str__(self) -> str:
        return f"{self.metric}:{self.mode}"


def unit(metric: str) -> str:
    """The unit of ``metric`` (``""`` if unknown)."""
    return OBJECTIVE_METRICS.get(metric, EXTRA_UNITS.get(metric, ""))


def label(metric: str) -> str:
    """Axis label with the unit, e.g. ``"non-zero parameters (count)"``."""
    name = METRIC_NAMES.get(metric, metric.replace("_", " "))
    return f"{name} ({unit(metric)})" if unit(metric) else name


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


def parse_objectives(text: str, known: dict[str, str] | None = None) -> list[Objective]:
    """Parse ``"test_accuracy:max,nonzero_params:min"``; two or three distinct objectives, each a
    metric of ``known`` (default ``OBJECTIVE_METRICS``).

    Raises ``ValueError`` with one line naming the bad part and what is allowed.
    """
    known = OBJECTIVE_METRICS if known is None else known
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        metric, sep, mode = part.partition(":")
        if sep and mode.strip() in ("max", "min") and metric.strip() not in known:
            raise ValueError(
                f"objective metric {metric.strip()!r} is unknown; choose from: {', '.join(known)}"
            )
    return split_objectives(text)


def _as_minimisation(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """``values`` with maximised columns negated, so that lower is better everywhere."""
    return np.asarray(values, dtype=float) * np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0)


def pareto_mask(values: np.ndarray, maximize: list[bool]) -> np.ndarray:
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


def pareto_table(df: pd.DataFrame, objectives: list[Objective]) -> pd.DataFrame:
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
    """The default reference point, in the objectives' own units: per objective, the worst value
    over ``values`` moved further from the front by ``REFERENCE_OFFSET`` (10%) of the range of
    that objective, so that the extreme points of the front add volume too. Where every run has
    the same value, the offset is 10% of that value's magnitude (1 if it is 0)."""
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


@dataclass
class Analysis:
    """The result of ``analyse``: the runs with their front flags, hypervolume and groups."""

    objectives: list[Objective]
    table: pd.DataFrame  # every run; pareto, missing[, group, group_pareto]; best first
    reference: tuple[float, ...]  # objectives' own units
    reference_is_default: bool
    hypervolume: float
    by: str | None = None
    groups: pd.DataFrame | None = None  # with ``by``: one row per group
    baselines: pd.DataFrame = field(default_factory=pd.DataFrame)  # one dense point per model
    missing_counts: dict[str, int] = field(default_factory=dict)  # objective -> runs without it
    notes: list[str] = field(default_factory=list)  # e.g. runs the loader left out, and why

    @property
    def metrics(self) -> list[str]:
        """The objective metric names, in order."""
        return [o.metric for o in self.objectives]

    @property
    def maximize(self) -> list[bool]:
        """Per objective, whether higher is better."""
        return [o.mode == "max" for o in self.objectives]

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
    def reference_text(self) -> str:
        """How the reference point was chosen, in words."""
        if not self.reference_is_default:
            return "given with --reference"
        return (
            "default: each objective's worst value over the analysed runs, moved away from the "
            f"front by {REFERENCE_OFFSET:.0%} of that objective's range"
        )

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


def _numeric_columns(runs: pd.DataFrame) -> list[str]:
    """Columns of ``runs`` that hold numbers in at least one row (candidate objective metrics)."""
    out = []
    for col in runs.columns:
        values = pd.to_numeric(runs[col], errors="coerce")
        if values.notna().any() and not pd.api.types.is_bool_dtype(runs[col]):
            out.append(col)
    return out


def dense_baselines(runs: pd.DataFrame, dense: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per dense model: ``model``, ``test_accuracy`` (``dense`` or the runs'
    ``dense_test_accuracy``), ``nonzero_params`` = ``total_params`` = the largest ``total_params``
    among that model's runs (structured runs that remove channels report fewer, the others the
    dense count), ``sparsity`` 0. Empty if the dense accuracy is unknown."""
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
        total = float(sub["total_params"].max()) if "total_params" in sub else float("nan")
        for acc in accs:
            rows.append({
                "model": model, "test_accuracy": acc, "nonzero_params": total,
                "total_params": total, **DENSE_FIXED,
            })  # fmt: skip
    return pd.DataFrame(rows)


def analyse(
    runs: pd.DataFrame,
    objectives: str | Sequence[Objective],
    by: str | None = None,
    dense: Mapping[str, float] | None = None,
    reference: Sequence[float] | None = None,
) -> Analysis:
    """Compute the global front, hypervolume and (with ``by``) per-group fronts of ``runs``.

    ``objectives``: ``Objective``s or text such as ``"test_accuracy:max,nonzero_params:min"``
    (any numeric column of ``runs`` may be an objective). See the module docstring for the rest.
    Raises ``ValueError`` (one line) for an objective or ``by`` that no run has, a malformed
    reference, or no run that has every objective.
    """
    objs = split_objectives(objectives) if isinstance(objectives, str) else list(objectives)
    metrics = [o.metric for o in objs]
    maximize = [o.mode == "max" for o in objs]
    for metric in metrics:
        if metric not in runs or pd.to_numeric(runs[metric], errors="coerce").isna().all():
            raise ValueError(
                f"objective metric {metric!r} is in no run; metrics that exist: "
                f"{', '.join(_numeric_columns(runs)) or '(none)'}"
            )
    if by is not None and (by not in runs or runs[by].isna().all()):
        raise ValueError(
            f"by {by!r} is in no run; columns that exist: {', '.join(map(str, runs.columns))}"
        )
    table = runs.copy()
    for metric in metrics:
        table[metric] = pd.to_numeric(table[metric], errors="coerce")
    values = table[metrics].to_numpy(dtype=float)
    lacking = np.isnan(values)
    table["missing"] = [
        ",".join(m for m, gone in zip(metrics, row, strict=True) if gone) for row in lacking
    ]
    ok = ~lacking.any(axis=1)
    if not ok.any():
        raise ValueError(f"no run has all of the objectives {', '.join(metrics)}")
    if reference is None:
        ref = default_reference(values[ok], maximize)
    else:
        ref = tuple(float(r) for r in reference)
        if len(ref) != len(objs) or not all(math.isfinite(r) for r in ref):
            raise ValueError(
                f"reference {','.join(map(str, reference))}: give {len(objs)} finite numbers, "
                f"one per objective ({', '.join(metrics)}), in the objectives' own units"
            )
    table["pareto"] = pareto_mask(values, maximize)
    groups = None
    if by is not None:
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
        groups = pd.DataFrame(rows)
    first = objs[0]
    table = table.sort_values(first.metric, ascending=first.mode == "min", kind="stable")
    return Analysis(
        objectives=objs,
        table=table.reset_index(drop=True),
        reference=ref,
        reference_is_default=reference is None,
        hypervolume=hypervolume(values[ok], maximize, ref),
        by=by,
        groups=groups,
        baselines=dense_baselines(runs, dense),
        missing_counts={m: int(lacking[:, i].sum()) for i, m in enumerate(metrics)},
    )


def format_value(metric: str, value: Any) -> str:
    """A value for tables: counts and bytes as integers, other numbers to 4 significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "*" if value else ""
    if isinstance(value, (int, float, np.integer, np.floating)):
        if unit(metric) in ("count", "bytes", "FLOPs per batch") and float(value).is_integer():
            return f"{int(value)}"
        return f"{float(value):.4g}"
    return str(value)


def shown_columns(analysis: Analysis, frame: pd.DataFrame) -> list[str]:
    """The columns the printed and markdown front tables show, in order."""
    cols = ["run_name"]
    if analysis.by is not None:
        cols.append("group")
    elif "method" in frame:
        cols.append("method")
    cols += analysis.metrics
    for extra in ("test_accuracy", "accuracy_change", "sparsity", "nonzero_params"):
        if extra not in cols:
            cols.append(extra)
    return [c for c in cols if c in frame]


def group_view(analysis: Analysis, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the ``group`` column (text) shown under the ``by`` param's own name."""
    assert analysis.by is not None
    return frame.drop(columns=[analysis.by]).rename(columns={"group": analysis.by})


def format_table(frame: pd.DataFrame, columns: list[str]) -> str:
    """``frame[columns]`` as aligned plain text, values formatted by ``format_value``."""
    cells = [[format_value(c, v) for c, v in zip(columns, row, strict=True)]
             for row in frame[columns].itertuples(index=False, name=None)]  # fmt: skip
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [all(_is_number(r[i]) for r in cells) for i in range(len(columns))]
    lines = [
        "  ".join(
            (cell.rjust(w) if num else cell.ljust(w))
            for cell, w, num in zip(row, widths, numeric, strict=True)
        ).rstrip()
        for row in [list(columns), *cells]
    ]
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    """Whether a formatted cell is numeric (or blank), so its column is right-aligned."""
    try:
        float(text)
    except ValueError:
        return text in ("", "*")
    return True


def summary_lines(analysis: Analysis) -> list[str]:
    """The analysis in a few sentences: front size, runs left out, reference point, hypervolume."""
    n = len(analysis.analysed)
    lines = [
        f"Pareto front over {', '.join(map(str, analysis.objectives))}: "
        f"{len(analysis.front)} of {n} analysed runs"
    ]
    if analysis.excluded:
        lacking = ", ".join(f"{m}: {c}" for m, c in analysis.missing_counts.items() if c)
        lines.append(
            f"left out: {analysis.excluded} run(s) missing an objective ({lacking} run(s))"
        )
    lines.extend(analysis.notes)
    ref = ", ".join(
        f"{m} {format_value(m, r)}"
        for m, r in zip(analysis.metrics, analysis.reference, strict=True)
    )
    lines.append(f"reference point: {ref} ({analysis.reference_text})")
    lines.append(
        f"hypervolume: {analysis.hypervolume:.6g} ({analysis.hypervolume_unit}); "
        f"{analysis.hypervolume_share:.1%} of the box between the ideal point and the reference"
    )
    for base in analysis.baselines.to_dict("records"):
        lines.append(
            f"dense {base['model']}: test accuracy {base['test_accuracy']:.4f}, "
            f"{format_value('total_params', base['total_params'])} parameters"
        )
    return lines


def format_analysis(analysis: Analysis) -> str:
    """The printed result: summary, the front (and with ``by`` every group's front), per-group
    hypervolumes. Every run, on the front or not, is in ``pareto.csv``."""
    out = summary_lines(analysis)
    if analysis.by is None:
        rows = analysis.front
        cols = shown_columns(analysis, rows)
        out += ["", format_table(rows, cols)]
    else:
        rows = analysis.table[analysis.table["pareto"] | analysis.table["group_pareto"]]
        rows = rows.sort_values("group", kind="stable")
        cols = shown_columns(analysis, rows)
        # the group shown under the param's own name (``group`` is its text form)
        rows = group_view(analysis, rows)
        cols = [cols[0], "pareto", "group_pareto", *[analysis.by if c == "group" else c
                                                      for c in cols[1:]]]  # fmt: skip
        out += [
            "",
            f"fronts per {analysis.by} (pareto: on the global front, group_pareto: on the "
            "group's front)",
            format_table(rows, cols),
            "",
            format_table(_groups_for_print(analysis), list(_groups_for_print(analysis).columns)),
        ]
    return "\n".join(out)


def _groups_for_print(analysis: Analysis) -> pd.DataFrame:
    assert analysis.groups is not None
    return analysis.groups.rename(columns={"group": analysis.by or "group"})


def write_outputs(
    analysis: Analysis,
    out_dir: str,
    settings: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> list[str]:
    """Write ``pareto.csv``, ``pareto.png`` and ``report.md`` to ``out_dir``; returns the paths.

    See ``sweeps.report.write_outputs`` (imported here on first use: it loads matplotlib).
    """
    from .report import write_outputs as _write

    return _write(analysis, out_dir, settings=settings, title=title)


# ---------------------------------------------------------------------------------------------
# The command line: python -m sweeps.pareto

PROG = "python -m sweeps.pareto"


class UsageError(ValueError):
    """Bad command-line input; the message is the one line shown on stderr (exit status 2)."""


def _fail(message: str) -> NoReturn:
    raise UsageError(message)  # one place, so every check reads as a single line


def _parser() -> Any:
    """The command line's flags; errors raise ``UsageError`` instead of printing the usage."""
    import argparse

    from .tracking import DEFAULT_TRACKING_URI

    class OneLineParser(argparse.ArgumentParser):
        # argparse prints the whole usage on an error; one line is easier to read in a log
        def error(self, message: str) -> NoReturn:
            _fail(message)

    p = OneLineParser(
        prog=PROG,
        description="Pareto front, hypervolume and report of a sweep, from MLflow alone.",
    )
    p.add_argument("--experiment", required=True, help="MLflow experiment name")
    p.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI, help="MLflow tracking URI")
    p.add_argument(
        "--sweep", nargs="+", action="extend", metavar="RUN_ID",
        help="parent run id(s) of the sweep(s) to analyse (default: the whole experiment)",
    )  # fmt: skip
    p.add_argument(
        "--objectives", default=DEFAULT_OBJECTIVES,
        help=f"two or three METRIC:max|min, comma-separated (default {DEFAULT_OBJECTIVES})",
    )  # fmt: skip
    p.add_argument("--by", help="a param (method, model, schedule, ...): one front per value")
    p.add_argument(
        "--reference",
        help="hypervolume reference point, comma-separated, in the objectives' own units "
        "(default: worst value of each objective, offset by 10%% of its range); write "
        "--reference=A,B when A is negative",
    )
    p.add_argument("--out", help="output folder (default mlruns/reports/<experiment>)")
    return p


def _parse_reference(text: str, n: int) -> tuple[float, ...]:
    """``--reference`` as ``n`` finite numbers."""
    try:
        ref = tuple(float(x) for x in text.split(","))
    except ValueError:
        ref = ()
    if len(ref) != n or not all(math.isfinite(r) for r in ref):
        _fail(f"--reference {text!r}: give {n} comma-separated numbers, one per objective")
    return ref


def _open_store(uri: str) -> str:
    """The tracking URI to read, checked without creating anything: a SQLite file must exist
    (MLflow would otherwise create an empty store), a server must answer."""
    from .tracking import TrackingError, resolve_tracking_uri

    if uri.startswith("sqlite:///"):
        path = os.path.abspath(os.path.expanduser(uri[len("sqlite:///") :]))
        if not os.path.isfile(path):
            _fail(f"--tracking-uri {uri!r}: no MLflow store at {path}")
        return f"sqlite:///{path}"
    try:
        return resolve_tracking_uri(uri).uri
    except TrackingError as err:
        _fail(str(err))


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """``frame[name]``, or a column of None where MLflow left it out (no run has it)."""
    return frame[name] if name in frame else pd.Series([None] * len(frame), index=frame.index)


def _present(frame: pd.DataFrame, prefix: str) -> list[str]:
    """Names under ``prefix`` (``params.``, ``metrics.``) that some row of ``frame`` holds."""
    return sorted(
        c[len(prefix) :] for c in frame.columns if c.startswith(prefix) and frame[c].notna().any()
    )


def _folder_name(name: str) -> str:
    """An experiment name made safe as one folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "experiment"


@dataclass
class Loaded:
    """What the command line read from MLflow."""

    finished: pd.DataFrame  # the FINISHED child runs (mlflow.search_runs shape)
    parents: pd.DataFrame  # the analysed sweeps' parent runs (mlflow.search_runs shape)
    not_finished: int  # child runs of the analysed sweeps that did not finish
    experiment_id: str
    metrics: list[str]  # metric names some analysed run logged
    params: list[str]  # param names some analysed run logged


def load_runs(tracking_uri: str, experiment: str, sweeps: Sequence[str] | None = None) -> Loaded:
    """The FINISHED child runs of ``sweeps`` (parent run ids; default: every sweep of
    ``experiment``) and their parent runs, as ``mlflow.search_runs`` returns them; ``trial_frame``
    turns them into the runs table.

    Raises ``UsageError`` (one line) for an unknown experiment or sweep id.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        names = sorted(e.name for e in client.search_experiments())
        _fail(
            f"--experiment {experiment!r} is not in {tracking_uri}; experiments there: "
            f"{', '.join(names) or '(none)'}"
        )
    mlflow.set_tracking_uri(tracking_uri)
    everything = mlflow.search_runs(experiment_ids=[exp.experiment_id], max_results=100_000)
    parent_of = _column(everything, "tags.mlflow.parentRunId")
    parents = everything[parent_of.isna()]
    children = everything[parent_of.notna()]
    if sweeps:
        for run_id in sweeps:
            if run_id not in set(parents["run_id"]):
                known = [
                    f"{r} ({n})"
                    for r, n in zip(
                        parents["run_id"], _column(parents, "tags.mlflow.runName"), strict=True
                    )
                ]
                _fail(
                    f"--sweep {run_id!r} is not a sweep (parent run) of experiment "
                    f"{experiment!r}; sweeps there: {', '.join(known) or '(none)'}"
                )
        children = children[children["tags.mlflow.parentRunId"].isin(list(sweeps))]
    finished = children[children["status"] == "FINISHED"]
    if sweeps is None:
        parents = parents[parents["run_id"].isin(set(finished["tags.mlflow.parentRunId"]))]
    else:
        parents = parents[parents["run_id"].isin(list(sweeps))]
    return Loaded(
        finished=finished,
        parents=parents,
        not_finished=len(children) - len(finished),
        experiment_id=exp.experiment_id,
        metrics=_present(finished, "metrics."),
        params=_present(finished, "params."),
    )


def trial_frame(finished: pd.DataFrame, parents: pd.DataFrame) -> pd.DataFrame:
    """The runs table of child runs read from MLflow: ``sweeps.runner.trial_table`` per sweep
    (each sweep has its own dense accuracy per model, from its parent run's
    ``dense_test_accuracy.<model>`` or ``dense_test_accuracy`` metric), joined, plus ``sweep``
    (the parent run's name), ``parent_run_id`` and any other param the runs logged (e.g.
    ``dataset``)."""
    from .runner import trial_table  # imports torch: only once the input is known to be good

    frames = []
    for parent_id, rows in finished.groupby("tags.mlflow.parentRunId", sort=False):
        parent = parents[parents["run_id"] == parent_id]
        dense: dict[str, float] = {}
        if len(parent):
            p = parent.iloc[0]
            models = pd.unique(_column(rows, "params.model").dropna())
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


def _settings(parents: pd.DataFrame) -> dict[str, Any]:
    """The parent runs' params: flat for one sweep, per sweep name for several."""
    per_sweep = {}
    for _, row in parents.iterrows():
        params = {
            c[len("params.") :]: row[c]
            for c in parents.columns
            if c.startswith("params.") and pd.notna(row[c])
        }
        per_sweep[str(row.get("tags.mlflow.runName") or row["run_id"])] = params
    if len(per_sweep) == 1:
        return next(iter(per_sweep.values()))
    return per_sweep


def main(argv: list[str] | None = None) -> int:
    """``python -m sweeps.pareto``: returns the exit status (2 for bad input, 1 for nothing to
    analyse)."""
    try:
        args = _parser().parse_args(argv)
        try:
            objectives = split_objectives(args.objectives)
        except ValueError as err:
            _fail(f"--objectives: {err}")
        reference = _parse_reference(args.reference, len(objectives)) if args.reference else None
        if not args.experiment.strip():
            _fail("--experiment '': give the name of an MLflow experiment")
        uri = _open_store(args.tracking_uri)
        loaded = load_runs(uri, args.experiment, args.sweep)
        if loaded.finished.empty:
            where = "the given sweep(s)" if args.sweep else f"experiment {args.experiment!r}"
            print(
                f"{PROG}: {where} has no FINISHED child runs ({loaded.not_finished} not "
                "finished); nothing to analyse",
                file=sys.stderr,
            )
            return 1
        if args.by is not None and args.by not in loaded.params:
            _fail(
                f"--by {args.by!r} is a param of no analysed run; "
                f"params: {', '.join(loaded.params)}"
            )
        runs = trial_frame(loaded.finished, loaded.parents)
        # the logged metrics, and accuracy_change, which trial_table derives where not logged
        metrics = sorted({*loaded.metrics, *[c for c in DERIVED_METRICS if c in runs]})
        for o in objectives:
            if o.metric not in metrics or runs[o.metric].isna().all():
                _fail(
                    f"--objectives: metric {o.metric!r} is in no analysed run; metrics that "
                    f"exist: {', '.join(metrics)}"
                )
        try:
            analysis = analyse(runs, objectives, by=args.by, reference=reference)
        except ValueError as err:  # e.g. every run lacks one objective or another
            _fail(str(err))
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    if loaded.not_finished:
        analysis.notes.append(f"left out: {loaded.not_finished} child run(s) not FINISHED")
    named = runs.drop_duplicates("parent_run_id")
    sweeps = list(named["parent_run_id"])
    analysis.notes.append(
        f"experiment {args.experiment!r}, {len(sweeps)} sweep(s): "
        + ", ".join(f"{s} ({i})" for s, i in zip(named["sweep"], sweeps, strict=True))
    )
    out_dir = args.out or os.path.join("mlruns", "reports", _folder_name(args.experiment))
    title = f"{args.experiment}" + (f" ({runs['sweep'].iloc[0]})" if len(sweeps) == 1 else "")
    paths = write_outputs(analysis, out_dir, settings=_settings(loaded.parents), title=title)
    print(format_analysis(analysis))
    print()
    for path in paths:
        print(f"wrote {path}")
    if len(sweeps) == 1:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        for path in paths:
            client.log_artifact(sweeps[0], path)
        print(f"logged {', '.join(os.path.basename(p) for p in paths)} to parent run {sweeps[0]}")
    return 0


if __name__ == "__main__":
    # run the importable module's main, so that sweeps.report (which imports sweeps.pareto) and
    # this entry point share one set of classes rather than a __main__ copy
    from sweeps.pareto import main as _main

    sys.exit(_main())
