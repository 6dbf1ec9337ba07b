"""Pruning methods over an explicit set of prunable tensors, with masks via torch.nn.utils.prune.

A method computes boolean keep-masks for a cumulative target sparsity (fraction of the prunable
weights that are zero after this step). Weights already pruned score below every live weight, so
each step only adds zeros and a mask never revives a weight. Counts are exact: pruning ``n``
weights at sparsity ``s`` zeroes ``round(s * n)`` of them, ties broken by position.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from .registry import Registry

PRUNING_METHODS: Registry = Registry("pruning method")

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class PruneTarget:
    """One prunable tensor: ``getattr(module, param_name)`` inside the model, at ``path``."""

    path: str  # e.g. "layer1.0.conv1.weight"
    module: nn.Module
    param_name: str  # "weight" or "bias"

    def tensor(self) -> torch.Tensor:
        """The effective tensor (original times mask when pruned), detached."""
        orig = getattr(self.module, self.param_name + "_orig", None)
        if orig is None:
            return getattr(self.module, self.param_name).detach()
        return (orig * getattr(self.module, self.param_name + "_mask")).detach()

    def mask(self) -> torch.Tensor | None:
        """The current keep-mask, or None if this tensor is not pruned yet."""
        return getattr(self.module, self.param_name + "_mask", None)

    def numel(self) -> int:
        """Number of elements in the tensor."""
        return self.tensor().numel()


def prunable_targets(
    model: nn.Module,
    include_bias: bool = False,
    exclude_first: bool = False,
    exclude_last: bool = False,
) -> list[PruneTarget]:
    """The conv and linear weights of ``model`` (and biases if asked), in module order.

    ``exclude_first``/``exclude_last`` leave out the first/last conv-or-linear layer, which many
    papers keep dense because they are small and sensitive.
    """
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    if exclude_first and layers:
        layers = layers[1:]
    if exclude_last and layers:
        layers = layers[:-1]
    targets = []
    for name, m in layers:
        prefix = f"{name}." if name else ""
        targets.append(PruneTarget(prefix + "weight", m, "weight"))
        has_bias = getattr(m, "bias_orig", None) is not None or m.bias is not None
        if include_bias and has_bias:
            targets.append(PruneTarget(prefix + "bias", m, "bias"))
    return targets


def keep_mask_exact(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Boolean mask (same shape as ``scores``) that is False for exactly the ``n_prune`` lowest.

    Ties at the threshold are broken by position (lowest flat index pruned first), so the count is
    exact even when many scores are equal (e.g. zeros from an earlier step).
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    if n_prune <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if n_prune >= n:
        return torch.zeros_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(flat, n_prune).values
    keep = flat > threshold
    n_pruned = n - int(torch.count_nonzero(keep))  # count_nonzero: ~7x faster than bool .sum()
    if n_pruned > n_prune:  # ties at the threshold: give back the surplus, highest index first
        at_threshold = flat == threshold
        rank = torch.cumsum(at_threshold, 0)  # 1-based rank among the tied entries
        tied_needed = n_prune - int(torch.count_nonzero(flat < threshold))
        keep |= at_threshold & (rank > tied_needed)
    return keep.view_as(scores)


def _magnitude_scores(target: PruneTarget) -> torch.Tensor:
    """|w|, with already-pruned entries set to -1 so they are always pruned first."""
    scores = target.tensor().abs().float()
    mask = target.mask()
    if mask is not None:
        scores = torch.where(mask.bool(), scores, torch.full_like(scores, -1.0))
    return scores


def apply_masks(targets: list[PruneTarget], masks: list[torch.Tensor]) -> None:
    """Install ``masks`` through torch.nn.utils.prune (replacing any earlier mask of a target)."""
    for target, mask in zip(targets, masks, strict=True):
        existing = target.mask()
        if existing is None:
            prune.custom_from_mask(target.module, target.param_name, mask)
        else:
            existing.copy_(mask.to(existing.dtype))
            orig = getattr(target.module, target.param_name + "_orig")
            setattr(target.module, target.param_name, orig * existing)


@PRUNING_METHODS.register("global_magnitude")
def global_magnitude_masks(
    targets: list[PruneTarget], sparsity: float, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """One magnitude threshold over all targets: the round(s*N) smallest |w| overall are pruned.

    The scores (as in ``_magnitude_scores``: float32 |w|, already-pruned entries -1) are written
    straight into one flat buffer, without per-tensor copies and a concatenation. On the CPU they
    are written by NumPy, single-threaded: torch's multi-threaded first touch of the fresh buffer
    was 5-10x slower on a busy 2-core machine (see benchmarks/README.md).
    """
    import numpy as np  # local: only this function uses it

    if not targets:
        return []
    weights = []  # the unmasked tensors; the masks are applied below
    for t in targets:
        orig = getattr(t.module, t.param_name + "_orig", None)
        weights.append(orig if orig is not None else getattr(t.module, t.param_name))
    sizes = [w.numel() for w in weights]
    flat = torch.empty(sum(sizes), dtype=torch.float32, device=weights[0].device)
    numpy_dtypes = (torch.float16, torch.float32, torch.float64)
    for target, weight, chunk in zip(targets, weights, flat.split(sizes), strict=True):
        chunk, weight = chunk.view(weight.shape), weight.detach()
        if weight.device.type == "cpu" and weight.dtype in numpy_dtypes:
            np.abs(weight.numpy(), out=chunk.numpy())
        elif weight.dtype == chunk.dtype:
            torch.abs(weight, out=chunk)
        else:
            chunk.copy_(weight).abs_()
        mask = target.mask()
        if mask is not None:
            chunk.masked_fill_(mask == 0, -1.0)
    keep = keep_mask_exact(flat, round(sparsity * flat.numel()))
    return [k.view(w.shape) for k, w in zip(keep.split(sizes), weights, strict=True)]


@PRUNING_METHODS.register("l1_unstructured")
def l1_unstructured_masks(
    targets: list[PruneTarget], sparsity: float, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Per tensor, the round(s*n) smallest |w| are pruned (every layer at the same sparsity)."""
    scores = [_magnitude_scores(t) for t in targets]
    return [keep_mask_exact(s, round(sparsity * s.numel())) for s in scores]


@PRUNING_METHODS.register("random_unstructured")
def random_unstructured_masks(
    targets: list[PruneTarget], sparsity: float, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Per tensor, round(s*n) weights chosen uniformly at random (already-pruned ones first)."""
    masks = []
    for t in targets:
        scores = torch.rand(t.tensor().shape, generator=generator).to(t.tensor().device)
        mask = t.mask()
        if mask is not None:
            scores = torch.where(mask.bool(), scores, torch.full_like(scores, -1.0))
        masks.append(keep_mask_exact(scores, round(sparsity * scores.numel())))
    return masks


MaskFn = Callable[..., list[torch.Tensor]]


def prune_step(
    targets: list[PruneTarget],
    method: str,
    sparsity: float,
    generator: torch.Generator | None = None,
    **options,
) -> None:
    """Prune ``targets`` with the registered ``method`` up to cumulative ``sparsity``.

    ``options`` go to the method (e.g. ``n``/``m`` for N:M, ``norm`` for structured pruning).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity!r} is invalid; allowed: a fraction 0 <= s < 1")
    mask_fn: MaskFn = PRUNING_METHODS.get(method)
    with torch.no_grad():
        apply_masks(targets, mask_fn(targets, sparsity, generator=generator, **options))


def make_permanent(model: nn.Module) -> int:
    """Fold every mask into its weight (``prune.remove``); zeros stay. Returns tensors folded."""
    folded = 0
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
                folded += 1
    return folded


def is_reparametrized(model: nn.Module) -> bool:
    """True if any ``*_orig`` parameter or ``*_mask`` buffer is left in ``model``."""
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    return any(n.endswith("_orig") or n.endswith("_mask") for n in names)
