"""A plugin that adds two metrics to the catalog, each with its own measurement; the end-to-end
test of ``tests/test_metric_catalog.py`` passes this file to a sweep with ``--plugin``, so the
driver and every trial process import it. Not a test module (pytest does not collect it), so
the metrics exist only in the processes of that test, not in the rest of a test session.

- ``conv_weights``: non-zero conv weights of the final model (count), minimised; its fixed
  hypervolume reference is the dense model's value, the largest ``conv_params`` over the runs
  (the dense model has every weight, as ``nonzero_params``' dense value is ``total_params``);
- ``conv_params``: every conv weight of the final model, zero or not (count); not an objective.
"""

from __future__ import annotations

from torch import nn

from sweeps.catalog import Metric, get_metric, register_metric


def _conv_weights(model: nn.Module) -> list:
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]


def conv_weights(model: nn.Module, example: object) -> float:
    """Non-zero conv weights of ``model`` (count); ``example`` is not needed."""
    return float(sum(int((w != 0).sum()) for w in _conv_weights(model)))


def conv_params(model: nn.Module, example: object) -> float:
    """Every conv weight of ``model``, zero or not (count)."""
    return float(sum(w.numel() for w in _conv_weights(model)))


METRICS = (
    Metric("conv_weights", "count", "non-zero conv weights", reference="dense",
           dense_from="conv_params", measure=conv_weights),
    Metric("conv_params", "count", "conv weights", objective=False, measure=conv_params),
)  # fmt: skip

for metric in METRICS:
    # a plugin may be imported twice in one process (as a module and by its path)
    if get_metric(metric.name) is None:
        register_metric(metric)
