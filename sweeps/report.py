"""The Pareto analysis as text and files: the printed summary and front table, and
``pareto.csv``, ``pareto.png`` and ``report.md``.

``format_analysis(analysis) -> str`` is what a sweep and ``python -m sweeps.pareto`` print.
``write_outputs(analysis, out_dir, settings=None, title=None) -> list[str]`` writes the three
files (see ``sweeps.pareto`` for the whole API). The figure is drawn on a
``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot, so it neither needs a
display nor changes the backend of the process that calls it (a sweep driver, a notebook);
matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .analysis import Analysis, label, pareto_mask, unit
from .catalog import LOG_UNITS, is_log_axis

# ---------------------------------------------------------------------------------------------
# Text: the printed summary and tables


def format_value(metric: str, value: Any) -> str:
    """A value for tables: counts and bytes as integers, other numbers to 4 significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "*" if value else ""
    if isinstance(value, (int, float, np.integer, np.floating)):
        if unit(metric) in LOG_UNITS and float(value).is_integer():
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
    hv = f"hypervolume: {analysis.hypervolume:.6g} ({analysis.hypervolume_unit}); "
    if analysis.reference_is_fixed and math.isfinite(analysis.hypervolume_normalised):
        hv += (
            f"{analysis.hypervolume_normalised:.4f} of the box between the reference and the "
            "best possible point (accuracy 1, costs 0)"
        )
    else:
        hv += (
            f"{analysis.hypervolume_share:.1%} of the box between the ideal point and the reference"
        )
    lines.append(hv)
    if len(analysis.stopped):
        lines.append(f"stopped early: {stopped_text(analysis)}; not on the front")
    for base in analysis.baselines.to_dict("records"):
        lines.append(
            f"dense {base['model']}: test accuracy {base['test_accuracy']:.4f}, "
            f"{format_value('total_params', base['total_params'])} parameters"
        )
    return lines


def stopped_text(analysis: Analysis) -> str:
    """The early-stopped trials in words, e.g. ``"3 trial(s) (2 at rung 1, 1 at rung 2)"``."""
    stopped = analysis.stopped
    text = f"{len(stopped)} trial(s)"
    if "stopped_at_rung" in stopped and stopped["stopped_at_rung"].notna().any():
        counts = stopped["stopped_at_rung"].dropna().astype(int).value_counts().sort_index()
        text += " (" + ", ".join(f"{c} at rung {r}" for r, c in counts.items()) + ")"
    return text


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


# ---------------------------------------------------------------------------------------------
# Files: the figure, report.md, pareto.csv

# Marker shapes cycle with the colours, so groups stay apart in greyscale print too.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
LOG_SPAN = 20.0  # a count axis whose values span more than this factor is drawn on a log scale


def _colour_key(analysis: Analysis) -> str | None:
    """The column the points are coloured by: the ``by`` group, else the pruning method."""
    if analysis.by is not None:
        return "group"
    return "method" if "method" in analysis.table else None


def _styles(names: list[str]) -> dict[str, tuple[Any, str]]:
    """A (colour, marker) per group name."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: (cmap(i % cmap.N), MARKERS[i % len(MARKERS)]) for i, n in enumerate(names)}


def _staircase(
    points: np.ndarray, maximize: list[bool], ref: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The attainment boundary of 2-D ``points`` (own units) closed against ``ref``: the step
    line through the front, and the polygon of the region it dominates (the hypervolume)."""
    signs = np.where(maximize, -1.0, 1.0)
    v, r = points * signs, ref * signs
    v = v[(v < r).all(axis=1)]
    v = v[pareto_mask(v, [False, False])]
    if len(v) == 0:
        return np.empty((0, 2)), np.empty((0, 2))
    v = np.unique(v, axis=0)  # sorted by x; on a front, y then falls
    line = [(v[0, 0], r[1])]
    for i, (x, y) in enumerate(v):
        line.append((x, y))
        line.append((v[i + 1, 0] if i + 1 < len(v) else r[0], y))
    line_arr = np.array(line) * signs
    polygon = np.vstack([line_arr, r * signs])
    return line_arr, polygon


def _axis_scale(ax: Any, which: str, metric: str, values: np.ndarray) -> None:
    """Log scale for the catalog's log-axis metrics (counts/bytes/FLOPs) spanning over
    ``LOG_SPAN``x (sparsity sweeps span decades of non-zero parameters); engineering-notation
    tick labels for those metrics."""
    from matplotlib.ticker import EngFormatter, NullFormatter

    values = values[np.isfinite(values)]
    if not is_log_axis(metric) or len(values) == 0:
        return
    axis = ax.xaxis if which == "x" else ax.yaxis
    if values.min() > 0 and values.max() / values.min() > LOG_SPAN:
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")
        axis.set_minor_formatter(NullFormatter())
    axis.set_major_formatter(EngFormatter(sep=""))


def _draw_pair(
    ax: Any,
    analysis: Analysis,
    ix: int,
    iy: int,
    styles: dict[str, tuple[Any, str]],
    key: str | None,
    full_front: bool,
) -> None:
    """One panel: objective ``ix`` on x, ``iy`` on y. ``full_front``: the two objectives are the
    whole problem (draw the front's staircase and the hypervolume region); otherwise the
    panel is a projection and shows this pair's own front, dashed."""
    metrics, maximize = analysis.metrics, analysis.maximize
    mx, my = metrics[ix], metrics[iy]
    runs = analysis.analysed
    ref = np.array([analysis.reference[ix], analysis.reference[iy]])
    xy_all = runs[[mx, my]].to_numpy(dtype=float)

    _draw_fronts(ax, analysis, (mx, my), [maximize[ix], maximize[iy]], ref, styles, full_front)
    _draw_points(ax, runs, (mx, my), styles, key, full_front)
    _draw_dense(ax, analysis, mx, my)
    ax.scatter(
        [ref[0]], [ref[1]], marker="x", s=50, color="0.35", zorder=5, label="reference point"
    )

    ax.set_xlabel(f"{label(mx)}, {'higher' if maximize[ix] else 'lower'} is better")
    ax.set_ylabel(f"{label(my)}, {'higher' if maximize[iy] else 'lower'} is better")
    _axis_scale(ax, "x", mx, np.append(xy_all[:, 0], ref[0]))
    _axis_scale(ax, "y", my, np.append(xy_all[:, 1], ref[1]))
    ax.grid(True, which="major", color="0.88", lw=0.8)
    ax.set_axisbelow(True)


def _draw_fronts(
    ax: Any,
    analysis: Analysis,
    pair: tuple[str, str],
    pair_max: list[bool],
    ref: np.ndarray,
    styles: dict[str, tuple[Any, str]],
    full_front: bool,
) -> None:
    """The front of the metrics ``pair`` (x, y) as a staircase against ``ref``: with
    ``full_front`` the global front, the dominated region shaded and each group's own front in
    its colour; otherwise this pair's own front over every analysed run, dashed."""
    runs = analysis.analysed
    cols = list(pair)
    drawn = runs[runs["pareto"]] if full_front else runs
    line, polygon = _staircase(drawn[cols].to_numpy(dtype=float), pair_max, ref)
    if full_front and len(polygon):
        ax.fill(
            polygon[:, 0],
            polygon[:, 1],
            color="0.85",
            alpha=0.6,
            zorder=0,
            lw=0,
            label=f"dominated region (hypervolume {analysis.hypervolume:.4g})",
        )
    if len(line):
        ax.plot(
            line[:, 0],
            line[:, 1],
            color="black",
            lw=1.6 if full_front else 1.0,
            ls="-" if full_front else "--",
            zorder=2,
            label="Pareto front" if full_front else "front of this pair",
        )
    if full_front and analysis.by is not None:
        # each group's own front, in its colour, to compare groups at a glance
        for name, rows in runs.groupby("group", sort=False):
            gline, _ = _staircase(rows[rows["group_pareto"]][cols].to_numpy(dtype=float),
                                  pair_max, ref)  # fmt: skip
            if len(gline):
                ax.plot(gline[:, 0], gline[:, 1], color=styles[name][0], lw=1.0, ls="--",
                        alpha=0.9, zorder=2)  # fmt: skip


def _draw_points(
    ax: Any,
    runs: pd.DataFrame,
    pair: tuple[str, str],
    styles: dict[str, tuple[Any, str]],
    key: str | None,
    full_front: bool,
) -> None:
    """Every analysed run at the metrics ``pair`` (x, y), in its group's colour and marker
    (groups by ``key``); runs on the front outlined in black."""
    mx, my = pair
    groups = runs[key].map(lambda v: "(unset)" if pd.isna(v) else str(v)) if key else None
    for name, (colour, marker) in styles.items():
        rows = runs if groups is None else runs[groups == name]
        if rows.empty:
            continue
        off, on = rows[~rows["pareto"]], rows[rows["pareto"]]
        # the legend shows each group once, as a plain marker; the outline is explained apart
        ax.scatter([], [], s=40, color=colour, marker=marker, label=name or "trials")
        if len(off):
            ax.scatter(
                off[mx], off[my], s=30, color=colour, marker=marker, alpha=0.55, lw=0, zorder=3
            )
        if len(on):
            ax.scatter(
                on[mx],
                on[my],
                s=70,
                color=colour,
                marker=marker,
                edgecolors="black",
                linewidths=1.2,
                zorder=4,
            )
    ax.scatter(
        [],
        [],
        s=70,
        color="white",
        marker="o",
        edgecolors="black",
        linewidths=1.2,
        label="on the Pareto front" if full_front else "on the 3-objective front",
    )


def _draw_dense(ax: Any, analysis: Analysis, mx: str, my: str) -> None:
    """Mark the dense baselines: a star where both values are known, else a dotted line at the
    known one (e.g. dense accuracy on a latency axis: the dense latency is not logged). Baselines
    at the same place share one mark, named after all their models."""
    marks: dict[tuple[float, float], list[str]] = {}
    for base in analysis.baselines.to_dict("records"):
        key = (float(base.get(mx, math.nan)), float(base.get(my, math.nan)))
        if np.isfinite(key).any():
            marks.setdefault(key, []).append(str(base["model"]))
    text_style = {"textcoords": "offset points", "fontsize": 7, "color": "0.2"}
    for (bx, by_), models in marks.items():
        text = "dense " + ", ".join(m for m in models if m) if any(models) else "dense"
        if np.isfinite(bx) and np.isfinite(by_):
            # one model: the legend names it; several: each star is named beside it
            alone = sum(np.isfinite(k).all() for k in marks) == 1
            ax.scatter(
                [bx], [by_], s=220, marker="*", color="gold", edgecolors="black", linewidths=1.0,
                zorder=5, label=f"{text} baseline" if alone else "dense baseline",
            )  # fmt: skip
            if not alone:
                # the dense model usually sits at an edge of the plot: name it on the inner side
                lo, hi = ax.get_xlim()
                inner = -1 if bx > (lo + hi) / 2 else 1
                ax.annotate(
                    text, (bx, by_), xytext=(9 * inner, -9), ha="right" if inner < 0 else "left",
                    va="top", **text_style,
                )  # fmt: skip
        elif np.isfinite(by_):
            ax.axhline(by_, color="0.3", ls=":", lw=1.2, label="dense baseline (one value known)")
            ax.annotate(
                text, (1.0, by_), xycoords=("axes fraction", "data"), xytext=(-3, 2), ha="right",
                va="bottom", **text_style,
            )  # fmt: skip
        else:
            ax.axvline(bx, color="0.3", ls=":", lw=1.2, label="dense baseline (one value known)")
            ax.annotate(
                text, (bx, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -3), ha="left",
                va="top", rotation=90, **text_style,
            )  # fmt: skip


def plot_front(analysis: Analysis, path: str, title: str | None = None) -> str:
    """Draw the front to ``path`` (PNG). Two objectives: the first on y, the second on x, every
    analysed run coloured by group (``by``, else method), the front as a staircase closed against
    the reference point, the dominated region shaded, the dense baseline starred. Three
    objectives: the three pairwise projections side by side, 3-D front runs outlined in black and
    each pair's own front dashed (colour stays free for the groups, which matter more than a
    third encoding). Returns ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    key = _colour_key(analysis)
    runs = analysis.analysed
    if key is None:
        names = [""]
    elif key == "group":
        names = list(analysis.groups["group"]) if analysis.groups is not None else []
        names = [n for n in names if (runs["group"] == n).any()]
    else:
        names = sorted(runs[key].map(lambda v: "(unset)" if pd.isna(v) else str(v)).unique())
    styles = _styles(names)

    k = len(analysis.objectives)
    pairs = [(1, 0)] if k == 2 else [(1, 0), (2, 0), (2, 1)]
    fig = Figure(figsize=(9.5, 5.4) if k == 2 else (16.5, 6.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(pairs), squeeze=False)[0]
    for ax, (ix, iy) in zip(axes, pairs, strict=True):
        _draw_pair(ax, analysis, ix, iy, styles, key, full_front=k == 2)

    names_text = " vs ".join(
        f"{label(o.metric).split(' (')[0]} ({o.mode})" for o in analysis.objectives
    )
    ref = ", ".join(
        format_value(m, r) for m, r in zip(analysis.metrics, analysis.reference, strict=True)
    )
    sub = (
        f"{len(runs)} runs, {len(analysis.front)} on the front; hypervolume "
        f"{analysis.hypervolume:.4g} against the reference point ({ref})"
    )
    if analysis.excluded:
        sub += f"; {analysis.excluded} run(s) lacking an objective not shown"
    # two lines: experiment names and three objective names would not fit on one
    heading = f"{title}\n" if title else ""
    fig.suptitle(f"{heading}Pareto front of {names_text}", fontsize=11, fontweight="bold")
    axes[0 if k == 2 else 1].set_title(sub, fontsize=9, color="0.25")
    handles, labels = [], []
    for ax in axes:  # every panel may add marks (a dense line where the other value is unknown)
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            if text not in labels:
                handles.append(handle)
                labels.append(text)
    # groups first, then the front and the other marks, in the order a reader needs them
    order = sorted(
        range(len(labels)), key=lambda i: labels[i] not in styles and labels[i] != "trials"
    )
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    legend_title = analysis.by or key
    if analysis.by is not None and k == 2:
        handles.append(Line2D([], [], color="0.4", lw=1.0, ls="--"))
        labels.append(f"front of each {analysis.by}")
    style = dict(title=legend_title, fontsize=8, title_fontsize=8, framealpha=0.95)
    if k == 2:
        # beside the axes, top-aligned with them: never over a point, never over the title
        axes[0].legend(
            handles,
            labels,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0,
            **style,
        )
    else:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), **style)
    fig.savefig(path, dpi=150)
    return path


def _md_table(frame: pd.DataFrame, columns: list[str]) -> str:
    """``frame[columns]`` as a GitHub markdown table (values formatted by ``format_value``)."""
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = [
        "| "
        + " | ".join(
            format_value(c, v).replace("|", "\\|") for c, v in zip(columns, row, strict=True)
        )
        + " |"
        for row in frame[columns].itertuples(index=False, name=None)
    ]
    return "\n".join([head, rule, *body])


def _settings_table(settings: Mapping[str, Any]) -> str:
    """Sweep settings: ``param | value`` for one sweep, ``param | A | B`` for sweeps A and B."""
    nested = bool(settings) and all(isinstance(v, Mapping) for v in settings.values())
    per_sweep = dict(settings) if nested else {"value": settings}
    params = sorted({p for s in per_sweep.values() for p in s})

    def text(value: Any) -> Any:
        # a setting's True/False spelled out (format_value marks a true flag with "*", which
        # reads as a footnote here); an unset one (None) left blank
        if isinstance(value, (bool, np.bool_)):
            return str(bool(value))
        return "" if value is None else value

    frame = pd.DataFrame(
        [{"param": p, **{s: text(per_sweep[s].get(p, "")) for s in per_sweep}} for p in params]
    )
    return _md_table(frame, ["param", *per_sweep]) if params else "(none recorded)"


def render_markdown(
    analysis: Analysis,
    figure: str = "pareto.png",
    settings: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> str:
    """``report.md``: the summary (front size, runs left out, hypervolume, reference point and
    how it was chosen), the figure, the front's table, per-group fronts, the sweep settings."""
    objs = ", ".join(f"{label(o.metric)}, {o.mode}" for o in analysis.objectives)
    lines = [f"# Pareto analysis{': ' + title if title else ''}", "", f"Objectives: {objs}.", ""]
    lines += [f"- {line}" for line in summary_lines(analysis)]
    ref = ", ".join(
        f"{m} = {format_value(m, r)} {unit(m)}".rstrip()
        for m, r in zip(analysis.metrics, analysis.reference, strict=True)
    )
    lines += [
        "",
        f"**Hypervolume** {analysis.hypervolume:.6g} ({analysis.hypervolume_unit}), the volume of "
        "objective space that the front dominates and that dominates the reference point, with "
        "every objective turned into minimisation; larger is better.",
        "",
        f"**Reference point** {ref} ({analysis.reference_text}); exactly: "
        f"`{exact_reference(analysis)}`.",
        "",
        f"![Pareto front]({figure})",
        "",
        f"## The front ({len(analysis.front)} runs)",
        "",
        _md_table(analysis.front, shown_columns(analysis, analysis.front)),
    ]
    if analysis.by is not None and analysis.groups is not None:
        rows = analysis.table[analysis.table["group_pareto"]].sort_values("group", kind="stable")
        cols = shown_columns(analysis, rows)
        lines += [
            "",
            f"## Fronts per {analysis.by}",
            "",
            "`pareto`: on the global front; `group_pareto` (every row here): on its group's front.",
            "Hypervolume of each group against the same reference point.",
            "",
            _md_table(
                analysis.groups.rename(columns={"group": analysis.by}),
                [analysis.by, *analysis.groups.columns[1:]],
            ),
            "",
            _md_table(
                group_view(analysis, rows),
                [cols[0], "pareto", *[analysis.by if c == "group" else c for c in cols[1:]]],
            ),
        ]
    if len(analysis.stopped):
        stopped = analysis.stopped
        cols = ["run_name", "stopped_at_rung"]
        cols += [c for c in ("method", *analysis.metrics) if c in stopped and c not in cols]
        lines += [
            "",
            f"## Stopped early ({stopped_text(analysis)})",
            "",
            "Multi-objective early stopping ended these trials at the rung shown (their MLflow "
            "runs keep the history up to it); their last values are not comparable with "
            "finished runs, so they are never on the front.",
            "",
            _md_table(stopped, [c for c in cols if c in stopped]),
        ]
    if not analysis.baselines.empty:
        lines += [
            "",
            "## Dense baseline",
            "",
            "Test accuracy from the sweep's parent run (`dense_test_accuracy`); parameters: the "
            "largest `total_params` among the model's runs.",
            "",
            _md_table(analysis.baselines, ["model", "test_accuracy", "total_params"]),
        ]
    lines += ["", "## Sweep settings", "", _settings_table(settings or {}), ""]
    return "\n".join(lines)


def exact_reference(analysis: Analysis) -> str:
    """The reference point at full precision (``repr`` of each float), e.g.
    ``test_accuracy=0.0, nonzero_params=109386.0``."""
    return ", ".join(
        f"{m}={float(r)!r}" for m, r in zip(analysis.metrics, analysis.reference, strict=True)
    )


def csv_table(analysis: Analysis) -> pd.DataFrame:
    """``pareto.csv``'s rows: every analysed run, only the columns that hold a value in some row
    (a sweep's child runs share MLflow's union of columns), and the reference point at full
    precision as ``pareto_reference.<metric>`` columns (the same value in every row)."""
    table = analysis.table.dropna(axis=1, how="all").copy()
    for name, value in analysis.reference_metrics.items():
        table[name] = float(value)
    return table


def write_outputs(
    analysis: Analysis,
    out_dir: str,
    settings: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> list[str]:
    """Write ``pareto.csv`` (every analysed run, with ``pareto``, ``missing`` and, with ``by``,
    ``group`` and ``group_pareto``; see ``csv_table``), ``pareto.png`` and ``report.md`` into
    ``out_dir`` (created if needed).
    ``settings``: the parent run's params (``{param: value}``, or ``{sweep: {param: value}}``).
    Returns the three paths, in that order."""
    os.makedirs(out_dir, exist_ok=True)
    csv = os.path.join(out_dir, "pareto.csv")
    png = os.path.join(out_dir, "pareto.png")
    md = os.path.join(out_dir, "report.md")
    # floats written in full (repr) precision: pandas' default without float_format
    csv_table(analysis).to_csv(csv, index=False)
    plot_front(analysis, png, title=title)
    with open(md, "w") as fh:
        fh.write(render_markdown(analysis, os.path.basename(png), settings, title))
    return [csv, png, md]
