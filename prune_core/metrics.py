"""Metrics of a (pruned) model: parameter counts and sparsity over an explicit prunable set."""

from __future__ import annotations

from torch import nn

from .pruning import PruneTarget


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, non-zero) over every parameter of ``model``, masks applied.

    For a model under reparametrization, ``w_orig`` is counted through its masked value ``w``.
    """
    total = nonzero = 0
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if name.endswith("_orig"):
                value = getattr(module, name[: -len("_orig")])
            else:
                value = param
            total += value.numel()
            nonzero += int((value.detach() != 0).sum())
    return total, nonzero


def sparsity(targets: list[PruneTarget]) -> float:
    """Fraction of the elements of ``targets`` (the prunable set) that are zero."""
    total = sum(t.numel() for t in targets)
    zeros = sum(int((t.tensor() == 0).sum()) for t in targets)
    return zeros / total if total else 0.0


def layer_sparsity(targets: list[PruneTarget]) -> dict[str, float]:
    """Per prunable tensor, the fraction of its elements that are zero (keyed by path)."""
    return {t.path: int((t.tensor() == 0).sum()) / t.numel() for t in targets}
