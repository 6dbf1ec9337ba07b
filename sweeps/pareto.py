"""Pareto analysis of sweep results: objectives, the non-dominated set, the front as a table."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Objective:
    """One metric to maximise or minimise."""

    metric: str
    mode: str  # "max" or "min"

    def __str__(self) -> str:
        return f"{self.metric}:{self.mode}"


def parse_objectives(text: str, known: dict[str, str] | None = None) -> list[Objective]:
    """Parse ``"test_accuracy:max,nonzero_params:min"``; two or three distinct objectives.

    Raises ``ValueError`` with one line naming the bad part and what is allowed.
    """
    known = OBJECTIVE_METRICS if known is None else known
    objectives = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        metric, sep, mode = part.partition(":")
        if not sep or mode not in ("max", "min"):
            raise ValueError(f"objective {part!r} is malformed; write METRIC:max or METRIC:min")
        if metric not in known:
            raise ValueError(
                f"objective metric {metric!r} is unknown; choose from: {', '.join(known)}"
            )
        objectives.append(Objective(metric, mode))
    metrics = [o.metric for o in objectives]
    if not 2 <= len(objectives) <= 3 or len(set(metrics)) != len(metrics):
        raise ValueError(
            f"objectives {text!r}: give two or three distinct METRIC:max|min, comma-separated"
        )
    return objectives


def pareto_mask(values: np.ndarray, maximize: list[bool]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values`` (n points x k objectives).

    Row a dominates row b when a is at least as good in every objective and strictly better in one.
    Duplicates do not dominate each other, so equal points are all on the front. Rows with a NaN
    are never on the front and never dominate.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(maximize):
        raise ValueError(f"values of shape {values.shape} do not match {len(maximize)} objectives")
    signs = np.where(np.asarray(maximize), -1.0, 1.0)  # turn every objective into "lower is better"
    v = values * signs
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
