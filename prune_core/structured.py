"""Structured pruning (whole filters, N:M groups) and physical removal of pruned channels.

Two mask methods are registered in ``PRUNING_METHODS`` (``prune_core.methods``: each entry, with
its options, run-name part and params, sits above its mask function) (they follow the contract of
``prune_core.pruning``: keep-masks for a cumulative sparsity, already-pruned entries stay pruned):

- ``ln_structured``: whole output filters/neurons (dim 0) ranked by their Ln norm.
- ``nm``: N:M sparsity, N kept weights in every group of M consecutive weights along the input
  dimension (for a conv: the input channels at each kernel position, as 2:4 kernels need).

Masks only zero weights; the tensors keep their shapes. ``remove_pruned_channels`` then removes
the zeroed output channels physically with Torch-Pruning's DependencyGraph, so the model really
gets smaller and faster, and ``save_pruned_model``/``load_pruned_model`` store such a shrunk model
as plain data (loadable with ``torch.load(weights_only=True)``).

Typical use::

    targets = prunable_targets(model)
    prune_step(targets, "ln_structured", 0.5, layers=[g[0] for g in channel_groups(model, x)
                                                       if len(g) == 1])
    make_permanent(model)
    small = remove_pruned_channels(model, x)
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from .checkpoint import cpu_state_dict, load_state, save_state
from .cliutils import first_line
from .methods import MethodFlag, MethodOption, int_at_least, one_of, register_method
from .models import build_model
from .pruning import (
    PRUNABLE_TYPES,
    PruneTarget,
    _magnitude_scores,
    is_reparametrized,
    keep_mask_exact,
    make_permanent,
)

PRUNED_MODEL_FORMAT = "prune_core.pruned_model/1"


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _module_path(target: PruneTarget) -> str:
    """The module's path inside the model ("" for a model that is itself a conv/linear)."""
    return target.path[: -len(target.param_name)].rstrip(".")


def _previous_keep(target: PruneTarget) -> torch.Tensor:
    """The target's current keep-mask as bool, or all-True if it is not pruned yet."""
    mask = target.mask()
    if mask is None:
        return torch.ones_like(target.tensor(), dtype=torch.bool)
    return mask.bool()


# --------------------------------------------------------------------------------------------
# Ln structured (whole filters / neurons)
# --------------------------------------------------------------------------------------------


def _filter_scores(target: PruneTarget, norm: int, normalise: bool) -> torch.Tensor:
    """Ln norm of every output filter (dim 0) of a weight; -1 for filters already fully pruned.

    With ``normalise`` the norm is divided by ``filter_numel ** (1/n)`` (the power mean of |w|:
    mean |w| for n=1, RMS for n=2), so filters of different sizes (a 1x1 shortcut conv versus a
    3x3 conv, a conv versus a linear layer) compete on equal terms in one ranking.
    """
    rows = target.tensor().float().flatten(1)
    scores = torch.linalg.vector_norm(rows, ord=norm, dim=1)
    if normalise:
        scores = scores / rows.shape[1] ** (1.0 / norm)
    mask = target.mask()
    if mask is not None:
        dead = ~mask.bool().flatten(1).any(1)  # every weight of the filter already pruned
        scores = torch.where(dead, torch.full_like(scores, -1.0), scores)
    return scores


def _validate_structured_options(norm: Any, scope: Any) -> None:
    """One-line ValueErrors naming the bad option and its allowed values."""
    if isinstance(norm, bool) or norm not in (1, 2):
        raise ValueError(f"norm={norm!r} is invalid; allowed: 1 or 2")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope={scope!r} is invalid; allowed: 'layer' or 'global'")


def _strip_param(path: str) -> str:
    """Accept "conv1" as well as "conv1.weight" for a layer name."""
    for suffix in (".weight", ".bias"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def _ranking_units(
    weights: dict[str, PruneTarget], selected: list[str], couple: list[list[str]] | None
) -> list[list[str]]:
    """Units ranked together: one per coupled group (checked: selected layers, one filter count,
    no layer in two groups), one per remaining selected layer."""
    units: list[list[str]] = []
    seen: set[str] = set()
    for group in couple or []:
        group = [_strip_param(p) for p in group]
        members = [p for p in group if p in selected]
        if len(members) != len(group):
            missing = [p for p in group if p not in selected]
            raise ValueError(
                f"couple group {group!r} names unselected or unknown layers {missing!r}"
            )
        counts = {weights[p].tensor().shape[0] for p in members}
        if len(counts) != 1:
            raise ValueError(f"couple group {group!r} mixes filter counts {sorted(counts)}")
        if seen.intersection(members):
            raise ValueError(f"couple group {group!r} repeats a layer of another group")
        seen.update(members)
        units.append(members)
    units += [[p] for p in selected if p not in seen]
    return units


def _keep_per_unit(
    weights: dict[str, PruneTarget], units: list[list[str]], norm: int, sparsity: float
) -> dict[str, torch.Tensor]:
    """Layer scope: module path -> bool keep per filter, ``round(s * filters)`` pruned per unit."""
    filter_keep: dict[str, torch.Tensor] = {}
    for members in units:
        normalise = len(members) > 1  # a single layer's ranking is unaffected by scaling
        per_member = [_filter_scores(weights[p], norm, normalise) for p in members]
        scores = torch.stack(per_member).sum(0)
        # A channel already pruned in any member ranks first, so coupled layers converge.
        dead = torch.stack([s < 0 for s in per_member]).any(0)
        scores = torch.where(dead, torch.full_like(scores, -1.0), scores)
        keep = keep_mask_exact(scores, round(sparsity * scores.numel()))
        for p in members:
            filter_keep[p] = keep
    return filter_keep


def _keep_global(
    weights: dict[str, PruneTarget], selected: list[str], norm: int, sparsity: float
) -> dict[str, torch.Tensor]:
    """Global scope: one ranking of the normalised filter norms of every selected layer."""
    if not selected:
        return {}
    per_layer = [_filter_scores(weights[p], norm, normalise=True) for p in selected]
    flat = torch.cat([s.to(per_layer[0].device) for s in per_layer])
    keep = keep_mask_exact(flat, round(sparsity * flat.numel()))
    sizes = [s.numel() for s in per_layer]
    return {
        p: k.to(s.device) for p, k, s in zip(selected, keep.split(sizes), per_layer, strict=True)
    }


def ln_structured_kwargs(
    config: Any, model: nn.Module, example: torch.Tensor, targets: list
) -> dict:
    """The mask function's keywords for ``config``: norm and scope, and with channel removal at
    layer scope the groups of layers whose output channels are tied (a residual stream), so
    whole channels can be removed; only groups made entirely of selected layers are pruned
    together."""
    kwargs: dict[str, Any] = {"norm": config.norm, "scope": config.scope}
    if config.remove_channels and config.scope == "layer":
        selected = {t.path.rsplit(".", 1)[0] for t in targets}
        kwargs["couple"] = [g for g in channel_groups(model, example) if set(g) <= selected]
    return kwargs


@register_method(
    "ln_structured",
    options=(
        MethodOption("norm", 1, one_of(1, 2), "Ln norm of a filter", search=(1, 2)),
        MethodOption(
            "scope", "layer", one_of("layer", "global"), "rank filters per layer or globally",
            search=("layer", "global"),
        ),
    ),
    mask_kwargs=ln_structured_kwargs,
    run_name=lambda options: f"l{options['norm']}_structured",
    # a structured cut of the classifier's output neurons would delete classes
    protects_classifier=True,
    can_remove_channels=True,
)  # fmt: skip
def ln_structured_masks(
    targets: list[PruneTarget],
    sparsity: float,
    generator: torch.Generator | None = None,
    norm: int = 1,
    scope: str = "layer",
    layers: list[str] | None = None,
    couple: list[list[str]] | None = None,
) -> list[torch.Tensor]:
    """Prune whole output filters (conv) or neurons (linear), ranked by their Ln norm (dim 0).

    - ``norm``: 1 or 2, the n of the Ln norm over each filter's effective (masked) weights.
    - ``scope="layer"``: every weight tensor loses ``round(s * filters)`` whole filters.
      ``scope="global"``: one ranking over all filters of all selected weights, with each norm
      divided by ``filter_numel ** (1/n)`` (mean |w| for n=1, RMS for n=2) so layers with larger
      filters are not favoured; ``round(s * total filters)`` filters are pruned overall.
    - ``layers``: optional module paths (e.g. ``["0"]`` or ``["conv1"]``; a ``.weight`` suffix is
      accepted) that restrict pruning to those layers; ``sparsity`` is then the fraction of *their*
      filters, and every other target keeps its current mask.
    - ``couple``: optional groups of module paths whose output channels are tied (e.g. the convs
      that write into one ResNet residual stream, see ``channel_groups``). A group is ranked as one
      unit (the sum of its members' normalised filter norms) and the same channels are pruned in
      every member, so ``remove_pruned_channels`` can remove them. Layer scope only.

    Biases follow their weight: bias entry ``i`` is pruned exactly when filter ``i`` of the same
    module is, so a pruned filter outputs exactly zero (before any batch norm). A bias whose
    weight is not among the ranked targets keeps its current mask. Bias targets never enter the
    ranking or the filter count.

    Already-pruned entries stay pruned: fully pruned filters score -1 (pruned first) and every new
    mask is ANDed with the current one. With masks from this method alone, step k at sparsity s
    leaves exactly ``round(s * filters)`` zero filters per tensor (layer scope).
    """
    _validate_structured_options(norm, scope)
    if couple and scope != "layer":
        raise ValueError(f"couple is only supported with scope='layer'; got scope={scope!r}")

    weights = {
        _module_path(t): t for t in targets if t.param_name == "weight" and t.tensor().dim() >= 2
    }
    selected = list(weights)
    if layers is not None:
        wanted = [_strip_param(p) for p in layers]
        unknown = [p for p in wanted if p not in weights]
        if unknown:
            raise ValueError(
                f"layers={unknown!r} are not prunable weights of these targets; "
                f"allowed: {', '.join(repr(p) for p in weights)}"
            )
        selected = [p for p in selected if p in set(wanted)]

    units = _ranking_units(weights, selected, couple)

    if scope == "layer":
        filter_keep = _keep_per_unit(weights, units, norm, sparsity)
    else:
        filter_keep = _keep_global(weights, selected, norm, sparsity)

    masks = []
    for t in targets:
        previous = _previous_keep(t)
        keep = filter_keep.get(_module_path(t))
        if keep is None:
            masks.append(previous)
            continue
        shape = (-1,) + (1,) * (previous.dim() - 1)  # broadcast the per-filter decision
        masks.append(previous & keep.view(shape).to(previous.device))
    return masks


# --------------------------------------------------------------------------------------------
# N:M sparsity
# --------------------------------------------------------------------------------------------


def _validate_nm(n: Any, m: Any) -> None:
    """One-line ValueErrors naming the bad value and the allowed range."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 2:
        raise ValueError(f"m={m!r} is invalid; allowed: an integer >= 2")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < m:
        raise ValueError(f"n={n!r} is invalid; allowed: an integer with 1 <= n < m (m={m})")


def _nm_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """``tensor`` as 2-D rows whose consecutive entries form the N:M groups, and a function that
    puts a tensor of those rows back into ``tensor``'s shape.

    The layout is the one 2:4 sparse kernels read (``torch.sparse.to_sparse_semi_structured``,
    NVIDIA ASP): a linear weight (out x in) is its own rows; a conv weight (out x C x kh x kw) is
    viewed as out x kh x kw x C (``w.permute(0, 2, 3, 1)``), one row of C input channels per
    output channel and kernel position. A 1-D tensor (a bias) is one row per element.
    """
    if tensor.dim() >= 3:
        # move the input-channel dim (1) last: rows are (out, kernel position), columns channels
        order = (0, *range(2, tensor.dim()), 1)
        permuted = tensor.permute(order)
        inverse = [order.index(d) for d in range(tensor.dim())]

        def restore(rows: torch.Tensor) -> torch.Tensor:
            return rows.reshape(permuted.shape).permute(inverse).contiguous()

        return permuted.reshape(-1, tensor.shape[1]), restore
    shape = tensor.shape

    def restore_flat(rows: torch.Tensor) -> torch.Tensor:
        return rows.reshape(shape)

    if tensor.dim() == 2:
        return tensor, restore_flat
    return tensor.reshape(-1, 1), restore_flat


def _nm_row_keep(rows: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest of every ``m`` consecutive entries of each row (2-D ``rows``); a
    tail group of ``r < m`` entries keeps ``min(n, r)``. Ties keep the earlier entry."""
    out, length = rows.shape
    rows = rows.float()
    groups = math.ceil(length / m)
    pad = groups * m - length
    if pad:  # missing entries score -inf, below every real (or already-pruned, -1) entry
        rows = torch.cat([rows, rows.new_full((out, pad), -math.inf)], dim=1)
    padded = rows.view(out, groups, m)
    order = torch.argsort(padded, dim=-1, descending=True, stable=True)
    keep = torch.zeros_like(padded, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return keep.view(out, groups * m)[:, :length]


def nm_keep_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest scores in every group of ``m`` consecutive entries of the N:M layout
    (see ``_nm_rows``): along the input dimension of a linear weight, and along the input
    channels at each kernel position of a conv weight (out x kh x kw x C); a 1-D tensor is one
    row per element (so nothing in it is pruned).

    A row whose length is not a multiple of ``m`` (a conv with C input channels, C not a multiple
    of ``m``) ends in a tail group of ``r < m`` entries, which is treated as padded with missing
    entries that are pruned first: it keeps ``min(n, r)``. So every group, tail included, has at
    most ``n`` kept entries, as a 2:4 kernel needs after zero-padding C to a multiple of 4. Ties
    are broken by position (the earlier entry is kept).
    """
    _validate_nm(n, m)
    rows, restore = _nm_rows(scores)
    return restore(_nm_row_keep(rows, n, m))


def _nm_group_counts(weight: torch.Tensor, n: int, m: int) -> tuple[int, int]:
    """(groups with at most ``n`` non-zeros, all groups) of ``weight`` in the N:M layout, each
    row zero-padded to a multiple of ``m``."""
    _validate_nm(n, m)
    rows, _ = _nm_rows(weight.detach() != 0)
    out, length = rows.shape
    if not rows.numel():
        return 0, 0
    pad = (-length) % m
    nonzero = torch.nn.functional.pad(rows.to(torch.int32), (0, pad))  # padding counts as zero
    per_group = nonzero.view(out, -1, m).sum(-1)
    return int((per_group <= n).sum()), per_group.numel()


def nm_layout_fraction(weight: torch.Tensor, n: int, m: int) -> float:
    """Fraction of ``weight``'s N:M groups (the kernel layout of ``nm_keep_mask``: input channels
    at each kernel position for a conv) holding at most ``n`` non-zeros; 1.0 for an empty tensor.

    With n=2, m=4 this is the fraction of groups that a 2:4 sparse kernel can store exactly.
    """
    ok, total = _nm_group_counts(weight, n, m)
    return ok / total if total else 1.0


def nm_accelerable_fraction(model: nn.Module, n: int = 2, m: int = 4) -> float:
    """Fraction of all N:M groups of ``model``'s nn.Conv2d/nn.Linear weights (masked weights for a
    model still under pruning masks) with at most ``n`` non-zeros, counted over every group of
    every layer together; 1.0 for a model without such layers. 2:4 by default: the pattern that
    sparse tensor cores accelerate."""
    ok = total = 0
    for module in model.modules():
        if isinstance(module, PRUNABLE_TYPES):
            good, groups = _nm_group_counts(module.weight, n, m)
            ok, total = ok + good, total + groups
    return ok / total if total else 1.0


def parse_nm(text: str) -> dict[str, int]:
    """``"2:4"`` as the nm options ``{"nm_n": 2, "nm_m": 4}``; ``ValueError`` (one line) if the
    text is not N:M with integers 1 <= N < M."""
    n_text, sep, m_text = text.partition(":")
    if not sep or not n_text.isdigit() or not m_text.isdigit():
        raise ValueError(f"--nm {text!r} is malformed; write N:M with integers, e.g. 2:4")
    n, m = int(n_text), int(m_text)
    if not 1 <= n < m:
        raise ValueError(f"--nm {text}: N:M needs 1 <= N < M (e.g. 2:4)")
    return {"nm_n": n, "nm_m": m}


def check_nm_config(config: Any) -> None:
    """N:M's checks across a recipe: 1 <= N < M, one-shot, and a target of exactly 1 - N/M (the
    pattern fixes the sparsity of every pruned tensor)."""
    n, m = config.nm_n, config.nm_m
    if not 1 <= n < m:
        raise ValueError(f"prune.nm='{n}:{m}' is invalid; allowed: N:M with 1 <= N < M (e.g. 2:4)")
    if config.schedule != "oneshot":
        raise ValueError(f"prune.schedule={config.schedule!r} is invalid; allowed: oneshot for nm")
    if abs(config.target_sparsity - (1 - n / m)) >= 1e-9:
        raise ValueError(
            f"prune.target_sparsity={config.target_sparsity!r} is invalid; allowed: "
            f"1 - N/M = {1 - n / m:g} for nm {n}:{m}"
        )


@register_method(
    "nm",
    options=(
        MethodOption("nm_n", 2, int_at_least(1), "keep N of every M weights", flag=""),
        MethodOption("nm_m", 4, int_at_least(2), "group size M", flag=""),
    ),
    validate=check_nm_config,
    mask_kwargs=lambda config, *_: {"n": config.nm_n, "m": config.nm_m},
    run_name=lambda options: f"nm{options['nm_n']}of{options['nm_m']}",
    params=lambda options: {"nm": f"{options['nm_n']}:{options['nm_m']}"},
    fixed_sparsity=lambda options: 1 - options["nm_n"] / options["nm_m"],
    flags=(MethodFlag("--nm", "2:4", parse_nm, "nm: N:M pattern, e.g. 2:4"),),
)
def nm_masks(
    targets: list[PruneTarget],
    sparsity: float,
    generator: torch.Generator | None = None,
    n: int = 2,
    m: int = 4,
) -> list[torch.Tensor]:
    """N:M sparsity: in every group of ``m`` consecutive weights along the input dimension, keep
    the ``n`` largest |w| and prune the rest. For a linear weight the groups run along each row;
    for a conv they run along the input channels at each kernel position (the weight viewed as
    out x kh x kw x C), the layout that 2:4 sparse kernels (``to_sparse_semi_structured``,
    NVIDIA ASP) accept.

    The pattern fixes the sparsity at ``1 - n/m``; ``sparsity`` does not change the masks and
    must equal ``1 - n/m`` (within 1e-6), so a run is never labelled with a sparsity it does not
    have (e.g. 0.5 for 2:4, 0.75 for 1:4). Rows that are not a multiple of ``m`` (a conv whose
    input channels are not) keep ``min(n, r)`` of their tail group of ``r`` weights (see
    ``nm_keep_mask``), so the achieved sparsity can be a little below ``1 - n/m``; 1-D tensors
    (biases) are rows of one weight and are never pruned.

    Already-pruned weights score -1 and the new mask is ANDed with the current one, so applying a
    sparser pattern later (2:4, then 1:4 at sparsity 0.75) keeps every earlier zero.
    """
    _validate_nm(n, m)
    nominal = 1.0 - n / m
    if abs(sparsity - nominal) > 1e-6:
        raise ValueError(
            f"sparsity={sparsity!r} is invalid for nm with n={n}, m={m}; allowed: {nominal:g} "
            "(= 1 - n/m)"
        )
    masks = []
    for t in targets:
        previous = _previous_keep(t)
        masks.append(previous & nm_keep_mask(_magnitude_scores(t), n, m).to(previous.device))
    return masks


# --------------------------------------------------------------------------------------------
# Physical removal with Torch-Pruning
# --------------------------------------------------------------------------------------------


def _torch_pruning():
    """Import Torch-Pruning on first use (masks work without it; removal needs it)."""
    try:
        import torch_pruning
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise ImportError("physical channel removal needs torch-pruning (pip install "
                          "torch-pruning)") from exc  # fmt: skip
    return torch_pruning


def _dependency_graph(model: nn.Module, example_input: torch.Tensor):
    """Trace ``model`` on ``example_input`` (in eval mode, so batch-norm statistics do not move;
    the caller's train/eval mode is restored)."""
    tp = _torch_pruning()
    was_training = model.training
    try:
        with torch.enable_grad():  # the tracer follows autograd's graph
            model.eval()
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, verbose=False
            )
    finally:
        model.train(was_training)
    return graph


def _output_layers(graph) -> list[nn.Module]:
    """Conv/linear layers whose output channels reach the model's output without passing through
    another conv/linear (the classifier, and anything added to its output): never pruned. An
    ``nn.MultiheadAttention`` counts as a layer here too (its ``out_proj`` is a Linear), as in
    ``pruning.layer_roles``."""
    layers = PRUNABLE_TYPES + (nn.MultiheadAttention,)
    found = []
    for module, node in graph.module2node.items():
        if not isinstance(module, layers):
            continue
        stack, visited = list(node.outputs), set()
        reaches_output = not node.outputs
        while stack and not reaches_output:
            nxt = stack.pop()
            if id(nxt) in visited or isinstance(nxt.module, layers):
                continue
            visited.add(id(nxt))
            reaches_output = not nxt.outputs
            stack.extend(nxt.outputs)
        if reaches_output:
            found.append(module)
    return found


# Members a removable group may have besides conv/linear layers (whose rows are checked dead):
# per-channel layers whose parameters go with the channel, and Torch-Pruning's parameter-free ops.
_PER_CHANNEL = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.PReLU,
)
_TP_OPS = ("_ConcatOp", "_ElementWiseOp", "_ExpandOp", "_OutputOp", "_ReshapeOp", "_SliceOp",
           "_SplitOp", "_UnbindOp")  # fmt: skip


def _names(graph) -> dict[Any, str]:
    """Path of every module and parameter of the traced model (parameters keyed by identity)."""
    names: dict[Any, str] = {m: n for n, m in graph.model.named_modules()}
    names.update({p: n for n, p in graph.model.named_parameters()})
    return names


def _blockers(group) -> list[Any]:
    """The members of a Torch-Pruning group that make its channels unremovable here: modules
    that are neither conv/linear nor per-channel (an ``nn.MultiheadAttention``, whose raw
    ``in_proj_weight`` would lose q/k/v rows that are not known to be zero; an embedding; an
    LSTM), and raw Parameters with more than one non-singleton dim (Torch-Pruning would guess
    which dim is the channel)."""
    ops = tuple(getattr(_torch_pruning().ops, name) for name in _TP_OPS)
    found = []
    for item in group:
        member = item.dep.target.module
        if isinstance(member, nn.Parameter):
            if sum(size > 1 for size in member.shape) > 1:
                found.append(member)
        elif not isinstance(member, PRUNABLE_TYPES + _PER_CHANNEL + ops):
            found.append(member)
    return found


def _blocked_message(graph, group, blockers: list[Any]) -> str:
    """One line naming the group's conv/linear layers and the first member (in module order)
    that blocks their removal."""
    names = _names(graph)
    order = {name: i for i, name in enumerate(names.values())}

    def first(paths: list[str]) -> str:
        paths = sorted(set(paths), key=lambda p: order.get(p, len(order)))
        more = len(paths) - 1
        return paths[0] + (f" and {more} more" if more else "")

    layers = [names[item.dep.target.module] for item in _out_pruned_layers(graph, group)]
    blocker = min(blockers, key=lambda b: order.get(names.get(b, ""), len(order)))
    if isinstance(blocker, nn.MultiheadAttention):
        why = "MultiheadAttention: its raw in_proj_weight's q/k/v rows are not prunable here"
    elif isinstance(blocker, nn.Parameter):
        why = f"a raw Parameter of shape {tuple(blocker.shape)}, its channel dim ambiguous"
    else:
        why = f"{type(blocker).__name__}, not a conv/linear or per-channel layer"
    return (
        f"channels of {first(layers or ['?'])} cannot be removed: Torch-Pruning would also cut "
        f"{first([names.get(b, '?') for b in blockers])} ({why})"
    )


def _all_groups(graph) -> list:
    """Full-index pruning groups rooted at a conv/linear, excluding output-facing layers."""
    return list(graph.get_all_groups(ignored_layers=_output_layers(graph),
                                     root_module_types=PRUNABLE_TYPES))  # fmt: skip


def _groups(graph) -> list:
    """The groups of ``_all_groups`` whose channels can be removed (no ``_blockers``)."""
    return [group for group in _all_groups(graph) if not _blockers(group)]


def _out_pruned_layers(graph, group) -> list:
    """The group's items that remove output channels of a conv/linear layer."""
    return [
        item
        for item in group
        if graph.is_out_channel_pruning_fn(item.dep.handler)
        and isinstance(item.dep.target.module, PRUNABLE_TYPES)
    ]


def channel_groups(model: nn.Module, example_input: torch.Tensor) -> list[list[str]]:
    """Module paths of the conv/linear layers whose output channels are tied, one list per group.

    A layer alone in its group (e.g. ``layer1.0.conv1`` in ResNet-18) can lose channels by itself;
    a group of several (e.g. ``conv1``, ``layer1.0.conv2``, ``layer1.1.conv2``: one residual
    stream) only where all members agree, so prune it with ``ln_structured(couple=groups)``.
    The classifier (any layer whose outputs are the model's outputs) is left out, and so is every
    group whose channels cannot be removed (see ``unremovable_channels``: e.g. a ViT's residual
    stream, tied to its attention's raw ``in_proj_weight``).
    """
    graph = _dependency_graph(model, example_input)
    names = _names(graph)
    return [
        [names[item.dep.target.module] for item in _out_pruned_layers(graph, group)]
        for group in _groups(graph)
    ]


def unremovable_channels(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """One line per group of tied channels that ``remove_pruned_channels`` will not remove,
    naming its layers and the member that blocks it (e.g. in ``vit_b_16``: the residual stream
    of ``conv_proj`` and the MLPs' ``mlp.3``, tied to every ``self_attention``); empty when every
    group is removable (ResNet, MobileNet)."""
    graph = _dependency_graph(model, example_input)
    lines = []
    for group in _all_groups(graph):
        blockers = _blockers(group)
        if blockers:
            lines.append(_blocked_message(graph, group, blockers))
    return lines


def _dead_rows(layer: nn.Module) -> torch.Tensor:
    """True for output channels whose weights (and bias, if any) are all exactly zero."""
    dead = ~layer.weight.detach().flatten(1).ne(0).any(1)
    if getattr(layer, "bias", None) is not None:
        dead &= layer.bias.detach().eq(0)
    return dead


@torch.no_grad()
def _removal_plan(graph) -> list[tuple[nn.Module, Any, list[int]]]:
    """(root layer, pruning function, channel indices) for every group with removable channels."""
    plan = []
    for group in _groups(graph):
        root = group[0].dep.target.module
        n_channels = graph.get_out_channels(root)
        alive: set[int] = set()
        for item in _out_pruned_layers(graph, group):
            dead = _dead_rows(item.dep.target.module)
            alive.update(r for i, r in zip(item.idxs, item.root_idxs, strict=True) if not dead[i])
        removable = [c for c in range(n_channels) if c not in alive]
        if len(removable) >= n_channels:
            removable = removable[1:]  # keep one channel so every layer keeps a valid shape
        if removable:
            plan.append((root, group[0].dep.handler, removable))
    return plan


def remove_pruned_channels(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """Physically remove the output channels whose weights are entirely zero; returns ``model``,
    changed in place into a smaller dense model (``copy.deepcopy`` first to keep the original).

    Masks still installed are made permanent first (``make_permanent``). Torch-Pruning 1.6's
    DependencyGraph, traced on ``example_input``, finds the layers whose channels are coupled
    (batch norm, the next layer's inputs, ResNet residual additions, flatten into a linear).
    Rule: a channel is removed only if it is zero in *every* conv/linear of its group (weights and
    bias), i.e. all coupled layers agree; a channel alive in any of them is kept everywhere. If a
    whole group is dead, its first channel is kept so shapes stay valid. Layers whose outputs are
    the model's outputs (the classifier) never lose outputs. A group that also holds a member whose
    part of the channels is not known to be zero (a ViT's residual stream runs through every
    ``nn.MultiheadAttention``, whose raw ``in_proj_weight`` would lose q/k/v rows) is left whole,
    with one warning line per group naming that member (``unremovable_channels``). A failure of
    Torch-Pruning, or a forward that fails afterwards, is a ValueError naming the layer.

    Exactness: with no batch norm after the zeroed layers (mlp, cnn, simple_cnn, cifar_cnn, with
    biases pruned alongside their filters as ``ln_structured`` does), a removed channel carried
    only zeros, so outputs are unchanged. A batch norm after a zeroed filter emits its constant
    shift (``beta - gamma * mean / sqrt(var + eps)``), which removal drops, and a layer norm over
    a stream with a zero channel normalises over one channel more: on ResNet-18 outputs change,
    so measure accuracy (or fine-tune) again after removal.
    """
    if is_reparametrized(model):
        make_permanent(model)
    graph = _dependency_graph(model, example_input)
    names = _names(graph)
    for group in _all_groups(graph):
        blockers = _blockers(group)
        if blockers:
            warnings.warn(_blocked_message(graph, group, blockers), stacklevel=2)
    plan = _removal_plan(graph)
    for root, handler, idxs in plan:
        try:
            graph.get_pruning_group(root, handler, idxs).prune()
        except Exception as err:  # Torch-Pruning's checks are assertions and shape errors
            raise ValueError(
                f"Torch-Pruning cannot remove {len(idxs)} channels of {names[root]}: "
                f"{first_line(err)}"
            ) from err
    _check_forward(model, example_input, [names[root] for root, _, _ in plan])
    return model


def _check_forward(model: nn.Module, example_input: torch.Tensor, changed: list[str]) -> None:
    """One forward of the shrunk model (eval mode, two samples); a failure (e.g. a size kept in
    a plain attribute that Torch-Pruning cannot see) is one ValueError line."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example_input[:2])
    except Exception as err:
        raise ValueError(
            f"after removing channels of {', '.join(changed[:3]) or 'no layer'}"
            f"{' and more' if len(changed) > 3 else ''} the model's forward fails: "
            f"{first_line(err)}"
        ) from err
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# Saving and loading physically shrunk models (weights_only-safe)
# --------------------------------------------------------------------------------------------


def layer_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Plain-data architecture of the resizable layers: per module path, its type and sizes."""
    shapes: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            shapes[name] = {
                "type": "Conv2d",
                "in_channels": module.in_channels,
                "out_channels": module.out_channels,
                "groups": module.groups,
            }
        elif isinstance(module, nn.Linear):
            shapes[name] = {
                "type": "Linear",
                "in_features": module.in_features,
                "out_features": module.out_features,
            }
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            shapes[name] = {"type": type(module).__name__, "num_features": module.num_features}
    return shapes


def _resize(module: nn.Module, name: str, shape: tuple[int, ...]) -> None:
    """Replace parameter or buffer ``name`` of ``module`` by an uninitialised tensor of ``shape``
    (its values come from the state dict loaded right after)."""
    old = getattr(module, name, None)
    if old is None or tuple(old.shape) == shape:
        return
    new = torch.empty(shape, dtype=old.dtype, device=old.device)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        setattr(module, name, new)  # a registered buffer stays a buffer


def shrink_to(model: nn.Module, shapes: dict[str, dict[str, Any]]) -> nn.Module:
    """Resize ``model``'s conv, linear and batch-norm layers (in place) to ``shapes`` as written
    by ``layer_shapes``; raises ValueError if the layers do not match by path and type."""
    current = layer_shapes(model)
    if set(current) != set(shapes):
        raise ValueError(
            f"layer paths differ: missing {sorted(set(shapes) - set(current))}, "
            f"unexpected {sorted(set(current) - set(shapes))}"
        )
    modules = dict(model.named_modules())
    for name, spec in shapes.items():
        module = modules[name]
        if current[name]["type"] != spec["type"]:
            raise ValueError(f"layer {name!r} is {current[name]['type']}, file has {spec['type']}")
        if isinstance(module, nn.Conv2d):
            module.in_channels, module.out_channels = spec["in_channels"], spec["out_channels"]
            module.groups = spec["groups"]
            per_group = spec["in_channels"] // spec["groups"]
            _resize(module, "weight", (spec["out_channels"], per_group, *module.kernel_size))
            _resize(module, "bias", (spec["out_channels"],))
        elif isinstance(module, nn.Linear):
            module.in_features, module.out_features = spec["in_features"], spec["out_features"]
            _resize(module, "weight", (spec["out_features"], spec["in_features"]))
            _resize(module, "bias", (spec["out_features"],))
        else:
            module.num_features = spec["num_features"]
            for tensor_name in ("weight", "bias", "running_mean", "running_var"):
                _resize(module, tensor_name, (spec["num_features"],))
    return model


def save_pruned_model(
    model: nn.Module,
    path: str,
    name: str,
    in_channels: int,
    num_classes: int,
    image_size: int,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Save a (physically shrunk) model built from the registered model ``name`` as plain data:
    the builder's arguments, per-layer shapes (``layer_shapes``) and the CPU state dict; nothing
    is pickled, so ``torch.load(path, weights_only=True)`` reads it. ``metadata`` must be plain
    values (numbers, strings, lists, dicts). Masks must be made permanent first."""
    if is_reparametrized(model):
        raise ValueError("model still has pruning masks; call make_permanent(model) first")
    save_state(
        {
            "format": PRUNED_MODEL_FORMAT,
            "model": {
                "name": name,
                "in_channels": in_channels,
                "num_classes": num_classes,
                "image_size": image_size,
            },
            "layer_shapes": layer_shapes(model),
            "state_dict": cpu_state_dict(model),
            "metadata": metadata or {},
        },
        path,
    )


def load_pruned_model(path: str, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model written by ``save_pruned_model``: build the registered model, shrink it to
    the stored layer shapes, load the weights (strictly). Read with ``weights_only=True``."""
    state = load_state(path, map_location=map_location)
    if state.get("format") != PRUNED_MODEL_FORMAT:
        raise ValueError(f"{path!r} is not a pruned model file (format={state.get('format')!r})")
    model = build_model(**state["model"]).to(map_location)
    shrink_to(model, state["layer_shapes"])
    model.load_state_dict(state["state_dict"])
    return model
