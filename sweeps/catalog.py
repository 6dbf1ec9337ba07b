"""The one metric catalog: every metric a sweep logs or ranks on, with its unit, readable name,
when it exists (every rung or only at the end), direction, fixed hypervolume reference and axis
scale. The objective lists, hypervolume references and report units of ``sweeps/`` are derived
from it (DESIGN.md, "Extension points"), so a new objective is one ``Metric`` here.

Pure: the standard library only; it imports nothing of ``sweeps/`` and no torch, Ray, MLflow or
Optuna, so the pure analysis (``sweeps.analysis``) can read it.

A plugin (``--plugin``, loaded in the driver and in every trial process) adds a metric measured
once on the final model::

    from sweeps.catalog import Metric, get_metric, register_metric

    def conv_weights(model, example) -> float:  # non-zero conv weights of the final model
        return float(sum(int((m.weight != 0).sum()) for m in model.modules()
                         if isinstance(m, torch.nn.Conv2d)))

    if get_metric("conv_weights") is None:  # a plugin may be imported twice in one process
        register_metric(Metric("conv_weights", "count", "non-zero conv weights",
                               reference="dense", dense_from="conv_params",
                               measure=conv_weights))

(with ``conv_params``, every conv weight, registered the same way; ``tests/catalog_plugin.py``).
Every trial then logs ``conv_weights`` at its last step, and ``--objectives
test_accuracy:max,conv_weights:min`` ranks on it. The derived accessors are functions, computed
at each call, so a metric registered after import counts everywhere. ``python -m sweeps.pareto``
loads no plugin: there a plugin's metric is analysed without its unit and with the
data-dependent reference.

The dense model's value, which a ``"dense"`` reference needs, comes from the runs: the largest
value of the metric named by ``dense_from`` over the analysed runs (the dense model has every
weight: ``nonzero_params``' dense value is the largest ``total_params``). A ``"dense"`` metric with
no ``dense_from`` gets its dense value only where the caller passes it (``analyse``'s
``dense_values``); otherwise its reference falls back to the data-dependent one, and the
analysis says so (``reference_kinds``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# When a metric exists. "step": logged at every prune step (and reported at every rung), so
# early stopping can rank on it; "final": measured once, on the final model, at the last step;
# "extra": logged once at the end from the trial's own result (not a measurement).
STEP, FINAL, EXTRA = "step", "final", "extra"
WHEN = (STEP, FINAL, EXTRA)
# Fixed hypervolume reference kinds. "zero": maximised, no model does worse than 0 (accuracy-like
# fractions); "dense": minimised, the dense model's own value (a pruned model that costs as much
# as the dense one adds nothing). None: no fixed reference (the data-dependent one is used).
REFERENCES = ("zero", "dense")
# Units whose axes are drawn on a log scale when the values span decades (sparsity sweeps span
# decades of non-zero parameters); their values print as integers.
LOG_UNITS = ("count", "bytes", "FLOPs per batch")
# A metric's name is an MLflow metric name and a part of ``--objectives`` (split on , and :).
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


@dataclass(frozen=True)
class Metric:
    """One metric: how it is named, shown and ranked, and (for a user's metric) measured.

    ``measure(model, example)`` returns the metric of the final model (a float), with
    ``example`` the batch prune_core measures FLOPs and latency with (64 normalised test images
    on the trial's device); it must not change the model. ``None`` for the built-in metrics that
    ``prune_core.measure.measure_all`` (or the pruning loop) already measures.
    """

    name: str
    unit: str  # shown in tables and on axes: "fraction", "count", "bytes", "ms per batch", ...
    label: str = ""  # readable name for axes and reports (default: the name with spaces)
    when: str = FINAL  # STEP, FINAL or EXTRA (see above)
    objective: bool = True  # may be a sweep objective (--objectives)
    direction: str | None = None  # "max" or "min": the way the fixed reference applies
    reference: str | None = None  # "zero", "dense" or None: the fixed hypervolume reference
    dense_from: str | None = None  # metric whose largest value over the runs is the dense value
    dense_value: float | None = None  # the dense model's value by definition (sparsity 0)
    log_axis: bool | None = None  # log-scale axis; None: whether ``unit`` is in LOG_UNITS
    measure: Callable[[Any, Any], float] | None = None

    def __post_init__(self) -> None:
        def bad(what: str) -> ValueError:
            return ValueError(f"metric {self.name!r}: {what}")

        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise bad("a name is letters, digits, _ and . (an MLflow metric name)")
        if self.when not in WHEN:
            raise bad(f"when {self.when!r}: choose from {', '.join(WHEN)}")
        if self.reference is not None and self.reference not in REFERENCES:
            raise bad(f"reference {self.reference!r}: choose from zero, dense or None")
        implied = {"zero": "max", "dense": "min", None: self.direction}[self.reference]
        if self.direction not in (None, "max", "min") or (self.direction or implied) != implied:
            raise bad(f"direction {self.direction!r}: a {self.reference} reference is {implied}")
        if self.dense_from is not None and self.reference != "dense":
            raise bad("dense_from gives the value of a dense reference: set reference='dense'")
        if self.measure is not None and not callable(self.measure):
            raise bad("measure must be a function (model, example) -> float")
        # frozen: the defaults that follow from other fields are filled in here
        object.__setattr__(self, "direction", implied)
        object.__setattr__(self, "label", self.label or self.name.replace("_", " "))
        if self.log_axis is None:
            object.__setattr__(self, "log_axis", self.unit in LOG_UNITS)

    @property
    def best(self) -> float | None:
        """The best value any model can have where the reference is fixed: 1 for a maximised
        fraction, 0 for a minimised cost; None where there is no such bound."""
        if self.reference == "zero":
            return 1.0 if self.unit == "fraction" else None
        return 0.0 if self.reference == "dense" else None


# The built-in metrics. Their order is the order of every list derived from them (and of the
# lists these replaced, so that messages and tables read as before).
BUILTIN = (
    # every prune step (prune_core.experiment.step_metrics), in the order they are logged
    Metric("test_accuracy", "fraction", "test accuracy", STEP, reference="zero"),
    # logged once at the end from the trial's result (after prune.remove); analysed, not searched
    Metric("permanent_test_accuracy", "fraction", "test accuracy after prune.remove", EXTRA,
           objective=False, reference="zero"),
    Metric("sparsity", "fraction", "sparsity", STEP, reference="zero", dense_value=0.0),
    Metric("nonzero_params", "count", "non-zero parameters", STEP, reference="dense",
           dense_from="total_params"),
    Metric("total_params", "count", "total parameters", STEP, reference="dense",
           dense_from="total_params"),
    # measured once on the final model (prune_core.measure.measure_all)
    Metric("size_bytes", "bytes", "dense size", reference="dense"),
    Metric("sparse_size_bytes", "bytes", "sparse size", reference="dense"),
    Metric("flops", "FLOPs per batch", "FLOPs", reference="dense"),
    Metric("effective_flops", "FLOPs per batch", "effective FLOPs", reference="dense"),
    Metric("latency_ms", "ms per batch", "latency", reference="dense"),
    # logged once at the end from the trial's result; its fixed reference (minus the dense
    # accuracy) is a rule of sweeps.analysis' own
    Metric("accuracy_change", "fraction", "accuracy change from dense", EXTRA, objective=False,
           direction="max", dense_value=0.0),
)  # fmt: skip

_METRICS: dict[str, Metric] = {m.name: m for m in BUILTIN}


def register_metric(metric: Metric) -> Metric:
    """Add a user's ``metric`` to the catalog and return it. It is measured once on the final
    model, so it needs ``when="final"`` and a ``measure`` function. Raises ``ValueError`` (one
    line) if the name is taken or the entry cannot be measured."""
    if metric.name in _METRICS:
        raise ValueError(f"metric {metric.name!r} is already in the catalog")
    if metric.when != FINAL or metric.measure is None:
        raise ValueError(
            f"metric {metric.name!r}: a registered metric is measured once on the final model; "
            "give when='final' and measure=function(model, example) -> float"
        )
    _METRICS[metric.name] = metric
    return metric


def get_metric(name: str) -> Metric | None:
    """The catalog's entry for ``name``, or None."""
    return _METRICS.get(name)


def metrics() -> tuple[Metric, ...]:
    """Every entry, built-in first, then in the order they were registered."""
    return tuple(_METRICS.values())


def objective_metrics() -> dict[str, str]:
    """``{name: unit}`` of the metrics that may be sweep objectives."""
    return {m.name: m.unit for m in metrics() if m.objective}


def step_metrics() -> tuple[str, ...]:
    """The metrics logged at every prune step and reported at every rung."""
    return tuple(m.name for m in metrics() if m.when == STEP)


def final_metrics() -> tuple[str, ...]:
    """The metrics measured once on the final model (NaN in the reports before it)."""
    return tuple(m.name for m in metrics() if m.when == FINAL)


def extra_metrics() -> tuple[str, ...]:
    """The metrics logged once at the end from the trial's own result."""
    return tuple(m.name for m in metrics() if m.when == EXTRA)


def zero_reference() -> tuple[str, ...]:
    """The metrics whose fixed reference, when maximised, is 0."""
    return tuple(m.name for m in metrics() if m.reference == "zero")


def dense_reference() -> tuple[str, ...]:
    """The metrics whose fixed reference, when minimised, is the dense model's value."""
    return tuple(m.name for m in metrics() if m.reference == "dense")


def dense_fixed() -> dict[str, float]:
    """``{name: value}`` of the dense model's values that follow from its definition."""
    return {m.name: m.dense_value for m in metrics() if m.dense_value is not None}


def dense_sources() -> dict[str, str]:
    """``{name: source}``: the dense model's value of ``name`` is the largest ``source`` value
    over the runs (the dense model has every weight)."""
    return {m.name: m.dense_from for m in metrics() if m.dense_from is not None}


def unit(metric: str) -> str:
    """The unit of ``metric`` (``""`` if it is not in the catalog)."""
    entry = _METRICS.get(metric)
    return entry.unit if entry else ""


def label(metric: str) -> str:
    """Axis label with the unit, e.g. ``"non-zero parameters (count)"``; a metric outside the
    catalog is named by its name with spaces."""
    entry = _METRICS.get(metric)
    name = entry.label if entry else metric.replace("_", " ")
    return f"{name} ({entry.unit})" if entry and entry.unit else name


def is_log_axis(metric: str) -> bool:
    """Whether ``metric``'s axis may be drawn on a log scale (counts, bytes, FLOPs)."""
    entry = _METRICS.get(metric)
    return bool(entry and entry.log_axis)


def measure_final(measurements: Mapping[str, Any], model: Any, example: Any) -> dict[str, float]:
    """The final metrics of ``model``, in catalog order: the built-in ones from
    ``measurements`` (what ``prune_core.measure.measure_all`` returned for it), each registered
    one from its own ``measure(model, example)``."""
    return {
        m.name: float(m.measure(model, example) if m.measure else measurements[m.name])
        for m in metrics()
        if m.when == FINAL
    }
