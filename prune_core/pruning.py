"""Pruning methods over an explicit set of prunable tensors, with masks via torch.nn.utils.prune.

A method computes boolean keep-masks for a cumulative target sparsity (fraction of the prunable
weights that are zero after this step). Weights already pruned score below every live weight, so
each step only adds zeros and a mask never revives a weight. Counts are exact: pruning ``n``
weights at sparsity ``s`` zeroes ``round(s * n)`` of them, ties broken by position.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from .methods import PRUNING_METHODS, MaskFn, register_method

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
    exact even when many scores are equal (e.g. zeros from an earlier step). The method is the
    fastest exact one for the device, with identical masks: ``keep_mask_kthvalue`` on the CPU,
    ``keep_mask_sorted`` on CUDA (where ``torch.kthvalue`` was 10x slower than a topk-based
    selection on an H200).
    """
    if scores.device.type == "cuda":
        return keep_mask_sorted(scores, n_prune)
    return keep_mask_kthvalue(scores, n_prune)


def keep_mask_kthvalue(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """``keep_mask_exact`` through ``torch.kthvalue`` plus a tie fix-up: the fast path on a CPU."""
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


def keep_mask_sorted(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """``keep_mask_exact`` through one stable sort: the fast path on CUDA (no host sync).

    A stable sort orders equal scores by flat index, so its first ``n_prune`` indices are exactly
    the entries ``keep_mask_kthvalue`` prunes. Adding 0.0 turns -0.0 into +0.0 first, so a radix
    sort that orders by bit pattern cannot split zeros that compare equal.
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    if n_prune <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if n_prune >= n:
        return torch.zeros_like(scores, dtype=torch.bool)
    order = torch.sort(flat + 0.0, stable=True).indices
    keep = torch.ones(n, dtype=torch.bool, device=flat.device)
    keep[order[:n_prune]] = False
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


@register_method("global_magnitude", run_name=lambda options: "prune")
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


@register_method("l1_unstructured")
def l1_unstructured_masks(
    targets: list[PruneTarget], sparsity: float, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Per tensor, the round(s*n) smallest |w| are pruned (every layer at the same sparsity)."""
    scores = [_magnitude_scores(t) for t in targets]
    return [keep_mask_exact(s, round(sparsity * s.numel())) for s in scores]


@register_method("random_unstructured")
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


def prune_step(
    targets: list[PruneTarget],
    method: str,
    sparsity: float,
    generator: torch.Generator | None = None,
    **options,
) -> None:
    """Prune ``targets`` with the registered ``method`` up to cumulative ``sparsity``.

    ``options`` go to the method's mask function (e.g. ``n``/``m`` for N:M, ``norm`` for
    structured pruning: what its entry's ``mask_kwargs`` makes of a config).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity!r} is invalid; allowed: a fraction 0 <= s < 1")
    mask_fn: MaskFn = PRUNING_METHODS.get(method).masks
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


class MaskedUpdate:
    """The (original, mask) pairs of a model under ``masked_update``; ``zero_pruned`` re-zeroes."""

    def __init__(self, origs: list[torch.Tensor], masks: list[torch.Tensor]):
        self.origs = origs  # the ``*_orig`` Parameters, trained directly
        self.masks = masks  # their masks, 1 = keep, in the dtype of the parameter

    def __len__(self) -> int:
        return len(self.origs)

    @torch.no_grad()
    def zero_pruned(self) -> None:
        """Zero every pruned entry again (after an optimizer step), in one fused call."""
        if self.origs:
            torch._foreach_mul_(self.origs, self.masks)


@contextlib.contextmanager
def masked_update(model: nn.Module) -> Iterator[MaskedUpdate]:
    """Train the ``*_orig`` parameters of a pruned model directly, without per-forward masking.

    Inside the block, the forward pre-hooks of torch.nn.utils.prune are taken off, each pruned
    attribute (e.g. ``module.weight``) is the ``weight_orig`` Parameter itself, and its pruned
    entries are zeroed once. Call ``zero_pruned()`` after every optimizer step: the effective
    weights (``orig * mask``) then follow the same trajectory as training through the hooks, whose
    gradient at a pruned entry reaches only ``orig`` values that the mask hides. The pruned
    entries of ``*_orig`` end the block at zero instead of carrying stale values; a mask never
    revives a weight, so nothing reads them. On exit (also on an exception) the hooks are back in
    their original order and ``module.weight = weight_orig * weight_mask`` again, so state dicts
    (``weight_orig``/``weight_mask``), ``prune.remove`` and rewinding work unchanged.
    """
    suspended: list[tuple[nn.Module, int, prune.BasePruningMethod]] = []
    for module in model.modules():
        for key, hook in module._forward_pre_hooks.items():
            if isinstance(hook, prune.BasePruningMethod):
                suspended.append((module, key, hook))
    origs, masks = [], []
    try:
        for module, key, hook in suspended:
            name = hook._tensor_name
            orig = module._parameters[name + "_orig"]
            mask = module._buffers[name + "_mask"]
            del module._forward_pre_hooks[key]
            # the Parameter itself, not registered again (Module.__setattr__ would register it)
            module.__dict__[name] = orig
            origs.append(orig)
            masks.append(mask if mask.dtype == orig.dtype else mask.to(orig.dtype))
        update = MaskedUpdate(origs, masks)
        update.zero_pruned()
        yield update
    finally:
        for module, key, hook in suspended:
            if key not in module._forward_pre_hooks:
                module._forward_pre_hooks[key] = hook
                # handle ids grow with registration: sorting restores the original hook order
                ordered = sorted(module._forward_pre_hooks.items(), key=lambda item: item[0])
                module._forward_pre_hooks.clear()
                module._forward_pre_hooks.update(ordered)
            setattr(module, hook._tensor_name, hook.apply_mask(module))


def is_reparametrized(model: nn.Module) -> bool:
    """True if any ``*_orig`` parameter or ``*_mask`` buffer is left in ``model``."""
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    return any(n.endswith("_orig") or n.endswith("_mask") for n in names)


# the structured methods register themselves beside their mask functions; importing them here
# means that whoever reads PRUNING_METHODS through this module sees every built-in method
from . import structured  # noqa: E402, F401
