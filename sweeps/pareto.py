"""Pareto analysis of sweep results from MLflow alone: the ``python -m sweeps.pareto`` command.

The analysis itself lives in ``sweeps.analysis`` (pure: objectives, fronts, hypervolume), its
text and files in ``sweeps.report``, the MLflow reading in ``sweeps.tracking``; this module is
the command line and re-exports the documented names, so both ways in keep working:

* From Python, e.g. at the end of a sweep (the runner holds ``runs``, the frame that
  ``sweeps.analysis.trial_table`` builds, and the dense accuracy per model)::

      from sweeps.pareto import analyse, format_analysis, write_outputs

      analysis = analyse(runs, "test_accuracy:max,nonzero_params:min", by=None, dense=accuracies)
      print(format_analysis(analysis))
      paths = write_outputs(analysis, out_dir, settings=parent_params, title=experiment_name)
      for path in paths:
          client.log_artifact(parent_run_id, path)

  ``analyse(runs, objectives, by=None, dense=None, reference=None, dense_values=None,
  stopped=None) -> Analysis`` never writes anything. ``runs`` has one row per trial, with a
  column per objective metric (NaN where a run lacks it: such runs are kept in the table but
  left out of the front, and counted), ``model`` and ``total_params`` for the dense baseline,
  and ``dense_test_accuracy`` unless ``dense`` (the dense test accuracy per model) is given.
  ``by`` names a column (a recipe param such as method, model, schedule) whose values form
  groups with their own fronts. ``reference`` is the hypervolume's reference point: by default
  (``"fixed"``) per objective and independent of the runs, so two sweeps of the same dense
  model compare: accuracy-like fractions at 0, parameter counts, sizes, FLOPs and latency at
  the dense model's value (``fixed_reference``; an objective without a known dense value falls
  back to the data-dependent value, and the report says so); ``"data"`` for each objective's
  worst value over the analysed runs moved away by 10% of its range (``default_reference``); or
  numbers in the objectives' own units. Bad input (an objective or ``by`` column no run has, a
  reference of the wrong length) raises ``ValueError`` with one line naming the value and what
  exists.

  ``Analysis.table`` is every run with the columns ``pareto`` (on the global front), ``missing``
  (the objectives the run lacks, ``""`` if none) and, with ``by``, ``group`` and
  ``group_pareto`` (on its group's front); sorted by the first objective, best first.
  ``Analysis.stopped`` lists early-stopped trials (never on the front).

  ``write_outputs(analysis, out_dir, settings=None, title=None) -> list[str]`` writes
  ``pareto.csv`` (that table, only columns with a value, and the reference point at full
  precision), ``pareto.png`` (the figure) and ``report.md`` (front table, figure, hypervolume
  and reference point, early-stopped trials, dense baseline, sweep settings) into ``out_dir``
  and returns their paths; ``settings`` is the sweep's parent-run params, ``{param: value}``,
  or ``{sweep name: {param: value}}`` for several sweeps.

* From MLflow alone: ``python -m sweeps.pareto --experiment NAME [--sweep RUN_ID ...]
  [--objectives test_accuracy:max,nonzero_params:min] [--by method]
  [--reference fixed|data|A,B] [--out DIR] [--tracking-uri URI]`` reads the FINISHED child
  runs of one sweep, several, or the whole experiment (and lists the early-stopped ones),
  prints the front, writes the three files to ``--out`` (default
  ``mlruns/reports/<experiment>``) and, when exactly one sweep is analysed, logs them as
  artifacts of its parent run. Bad input ends with one line on stderr and exit status 2,
  before anything is written. From a notebook, ``load_runs(uri, experiment, sweeps)`` and
  ``trial_frame(loaded.finished, loaded.parents)`` give the same runs table.
"""

from __future__ import annotations

import math
import os
import re
import sys
from typing import Any, NoReturn

import pandas as pd

from prune_core.cliutils import check_writable_dir

from .analysis import (  # noqa: F401  (re-exported: the documented API of sweeps.pareto)
    DEFAULT_OBJECTIVES,
    DENSE_FIXED,
    DERIVED_METRICS,
    EXTRA_UNITS,
    METRIC_NAMES,
    OBJECTIVE_METRICS,
    REFERENCE_OFFSET,
    Analysis,
    Objective,
    analyse,
    crowding_distance,
    default_reference,
    dense_baselines,
    fixed_reference,
    hypervolume,
    label,
    non_dominated_ranks,
    pareto_mask,
    pareto_table,
    parse_objectives,
    split_objectives,
    trial_frame,
    unit,
)
from .report import (  # noqa: F401  (re-exported)
    format_analysis,
    format_table,
    format_value,
    group_view,
    shown_columns,
    summary_lines,
    write_outputs,
)
from .tracking import Loaded, TrackingError, load_runs  # noqa: F401  (re-exported)

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
        help="hypervolume reference point: fixed (default: accuracy-like objectives at 0, "
        "counts, sizes, FLOPs and latency at the dense model's value; comparable across "
        "sweeps), data (each objective's worst value, offset by 10%% of its range), or "
        "numbers A,B in the objectives' own units (write --reference=A,B when A is negative)",
    )
    p.add_argument("--out", help="output folder (default mlruns/reports/<experiment>)")
    return p


def _parse_reference(text: str, n: int) -> tuple[float, ...] | str:
    """``--reference``: ``"fixed"``, ``"data"`` or ``n`` finite numbers."""
    if text.strip() in ("fixed", "data"):
        return text.strip()
    try:
        ref = tuple(float(x) for x in text.split(","))
    except ValueError:
        ref = ()
    if len(ref) != n or not all(math.isfinite(r) for r in ref):
        _fail(
            f"--reference {text!r}: write fixed, data or {n} comma-separated numbers, one per "
            "objective"
        )
    return ref


def _open_store(uri: str) -> str:
    """The tracking URI to read, checked without creating anything: a SQLite file must exist
    (MLflow would otherwise create an empty store) and be an SQLite database, a server must
    answer."""
    from .tracking import TrackingError, check_sqlite_file, resolve_tracking_uri

    if uri.startswith("sqlite:///"):
        path = os.path.abspath(os.path.expanduser(uri[len("sqlite:///") :]))
        if not os.path.isfile(path):
            _fail(f"--tracking-uri {uri!r}: no MLflow store at {path}")
        # random bytes or text would otherwise end in a long SQLAlchemy traceback
        check_sqlite_file("--tracking-uri", path, UsageError)
        return f"sqlite:///{path}"
    try:
        return resolve_tracking_uri(uri).uri
    except TrackingError as err:
        _fail(str(err))


def _folder_name(name: str) -> str:
    """An experiment name made safe as one folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "experiment"


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
        out_dir = args.out or os.path.join("mlruns", "reports", _folder_name(args.experiment))
        # tried (and left as it was) before anything is read
        check_writable_dir("--out", out_dir, UsageError)
        try:
            objectives = split_objectives(args.objectives)
        except ValueError as err:
            _fail(f"--objectives: {err}")
        reference = _parse_reference(args.reference, len(objectives)) if args.reference else None
        if not args.experiment.strip():
            _fail("--experiment '': give the name of an MLflow experiment")
        uri = _open_store(args.tracking_uri)
        try:
            loaded = load_runs(uri, args.experiment, args.sweep)
        except TrackingError as err:  # an unknown experiment or sweep
            _fail(str(err))
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
            stopped = trial_frame(loaded.stopped, loaded.parents)
            analysis = analyse(runs, objectives, by=args.by, reference=reference, stopped=stopped)
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
    # run the importable module's main, so that this entry point and the modules that import
    # sweeps.pareto share one set of classes rather than a __main__ copy
    from sweeps.pareto import main as _main

    sys.exit(_main())
