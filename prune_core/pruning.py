"""Pruning methods over an explicit set of prunable tensors, with masks via torch.nn.utils.prune.

A method computes boolean keep-masks for a cumulative target sparsity (fraction of the prunable
weights that are zero after this step). Weights already pruned score below every live weight, so
each step only adds zeros and a mask never revives a weight. Counts are exact: pruning ``n``
weights at sparsity ``s`` zeroes ``round(s * n)`` of them, ties broken by position.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from .methods import PRUNING_METHODS, MaskFn, register_method

# ConvTranspose is left out on purpose: its weight is (in, out, ...), so "filter = dim 0" and the
# N:M layout would both be wrong for it.
PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


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
    example_input: torch.Tensor | None = None,
) -> list[PruneTarget]:
    """The conv (1d/2d/3d) and linear weights of ``model`` (and biases if asked), in module order.

    ``exclude_first``/``exclude_last`` leave out the input/output layers, which many papers keep
    dense because they are small and sensitive. With ``example_input`` they are found from the
    graph (``layer_roles``: every conv/linear that reads the model input, every one whose output
    reaches the model output with no other conv/linear in between), so any ``nn.Module`` works;
    without it, by position (the first/last conv-or-linear in ``named_modules()``), which is
    right for the project's own models only. Not prunable here: parameters outside conv/linear
    layers, such as ``nn.MultiheadAttention``'s raw ``in_proj_weight``, embeddings and
    normalisation layers (see ``left_out``). The attention's ``out_proj`` is a Linear and is
    prunable; the attention reads ``out_proj.weight`` without calling ``out_proj``, so its mask
    holds in the forward and in ``masked_update`` training (the project's loop), while a loop
    that trains through prune's forward hooks would leave it frozen (its hook never runs).
    """
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    if example_input is not None and (exclude_first or exclude_last):
        roles = layer_roles(model, example_input)
        dropped = set(roles.inputs if exclude_first else ()) | set(
            roles.outputs if exclude_last else ()
        )
        layers = [(name, m) for name, m in layers if name not in dropped]
    else:
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


@dataclass(frozen=True)
class LayerRoles:
    """Module paths of a model's conv/linear layers by their place in the traced graph."""

    inputs: tuple[str, ...]  # read the model input (through parameter-free ops, norms, pools)
    outputs: tuple[str, ...]  # their output reaches the model output without another layer
    unused: tuple[str, ...]  # never reached by the trace (not called, or called functionally)


def _tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in a (nested) model output: tuples, lists, dicts, dataclasses."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = [getattr(value, f.name) for f in dataclasses.fields(value)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _walk_back(starts: list[Any], is_stop: Callable[[Any], bool]) -> list[Any]:
    """The autograd nodes that ``is_stop`` accepts and that are reachable from ``starts`` through
    ``next_functions`` without passing another accepted node."""
    met, stack, seen = [], [n for n in starts if n is not None], set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if is_stop(node):
            met.append(node)
            continue
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return met


def layer_roles(model: nn.Module, example_input: torch.Tensor) -> LayerRoles:
    """Input and output conv/linear layers of ``model``, from one traced forward on
    ``example_input`` (in eval mode, gradients on, the caller's mode restored).

    Forward hooks record the autograd node of every layer call's output; the model input is made
    a leaf that requires grad, so the autograd graph shows what reads it. A layer is an input
    layer if its input's history reaches the model input without passing another layer's output,
    and an output layer if the walk back from the model's outputs meets it before any other
    layer. An ``nn.MultiheadAttention`` counts as a layer whose output is its ``out_proj``'s
    (which it calls functionally, so ``out_proj``'s own hooks never run) and which never reads
    the input directly (its raw ``in_proj_weight`` comes first). Conv/linear layers the trace
    never meets are ``unused``. An integer input (token ids) cannot require grad: no conv/linear
    reads it directly then, and ``inputs`` is empty.
    """
    names = {m: n for n, m in model.named_modules()}
    calls: list[tuple[nn.Module, tuple, Any]] = []  # (layer, its inputs, its output's node)

    def record(module: nn.Module, args: tuple, output: Any) -> None:
        outs = _tensors(output)
        node = outs[0].grad_fn if outs else None
        attention = isinstance(module, nn.MultiheadAttention)
        # an attention's out_proj reads the attention, not the call's inputs: no inputs for it
        calls.append((module.out_proj if attention else module, () if attention else args, node))

    hooked = PRUNABLE_TYPES + (nn.MultiheadAttention,)
    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, hooked)]
    was_training = model.training
    leaf = example_input.detach().clone().requires_grad_(example_input.is_floating_point())
    try:
        model.eval()
        with torch.enable_grad():
            # a clone, so a model that edits its input in place does not edit a leaf
            outputs = _tensors(model(leaf.clone()))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    layer_of = {node: module for module, _, node in calls if node is not None}

    def is_leaf(node: Any) -> bool:
        return getattr(node, "variable", None) is leaf

    inputs = set()
    for module, args, _ in calls:
        starts = [t.grad_fn for t in _tensors(args)]
        met = _walk_back(starts, lambda n: n in layer_of or is_leaf(n))
        if any(is_leaf(n) for n in met):
            inputs.add(names[module])
    met = _walk_back([t.grad_fn for t in outputs], lambda n: n in layer_of)
    found = {names[layer_of[n]] for n in met}
    called = {names[module] for module, _, _ in calls}
    layers = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    return LayerRoles(
        tuple(n for n in layers if n in inputs),
        tuple(n for n in layers if n in found),
        tuple(n for n in layers if n not in called),
    )


# Per-channel normalisation layers: their few parameters are never pruned by convention, so
# leaving them out is not worth a word at run time (``LeftOut.notable``).
NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
)


@dataclass(frozen=True)
class LeftOut:
    """Parameters outside the prunable set's layers, grouped by owner type and name."""

    groups: dict[str, tuple[int, int]]  # "MultiheadAttention in_proj_weight" -> (numel, tensors)
    norms: frozenset[str] = frozenset()  # the keys of ``groups`` owned by normalisation layers

    @property
    def numel(self) -> int:
        """Parameters left out, in all."""
        return sum(n for n, _ in self.groups.values())

    @property
    def tensors(self) -> int:
        """Tensors left out, in all."""
        return sum(k for _, k in self.groups.values())

    @property
    def notable(self) -> bool:
        """True if anything besides normalisation layers is left out (an attention's
        ``in_proj_weight``, an embedding, a raw ``nn.Parameter``)."""
        return any(key not in self.norms for key in self.groups)

    def message(self) -> str:
        """One line: how many parameters are not prunable here, and which (largest first)."""
        if not self.groups:
            return "every parameter is in a conv/linear layer"
        parts = ", ".join(
            f"{key} ({numel:,} in {count})"
            for key, (numel, count) in sorted(self.groups.items(), key=lambda kv: -kv[1][0])
        )
        return (
            f"{self.numel:,} parameters in {self.tensors} tensors are not prunable here "
            f"(not conv/linear weights or biases): {parts}"
        )


def left_out(model: nn.Module) -> LeftOut:
    """The parameters no target of ``prunable_targets`` can cover: those not owned by a
    conv/linear layer (e.g. ``nn.MultiheadAttention.in_proj_weight``, normalisation layers,
    embeddings, a ViT's ``class_token``), grouped as ``"<owner type> <parameter name>"``."""
    groups: dict[str, tuple[int, int]] = {}
    norms = set()
    for module in model.modules():
        if isinstance(module, PRUNABLE_TYPES):
            continue
        for name, param in module.named_parameters(recurse=False):
            key = f"{type(module).__name__} {name}"
            numel, count = groups.get(key, (0, 0))
            groups[key] = (numel + param.numel(), count + 1)
            if isinstance(module, NORM_TYPES):
                norms.add(key)
    return LeftOut(groups, frozenset(norms))


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
