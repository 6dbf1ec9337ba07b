"""Deployment measurements of a (pruned) model: checkpoint size, FLOPs and latency.

Units are in the names: ``*_bytes`` are bytes, ``*flops`` are floating-point operations of one
forward pass over the whole example batch (a multiply-add counts as 2), ``*_ms`` milliseconds.

Every function measures the model as it would be saved after ``prune.remove``: a model still under
``torch.nn.utils.prune`` reparametrization (``w_orig`` and ``w_mask``) is measured through its
masked weight ``w = w_orig * w_mask``, so mid-sweep and permanent models give the same figures.

Sparse checkpoint format (``save_sparse_state`` / ``load_sparse_state``), version
``prune_core.sparse_state/bitmask-v1``: a plain dict that ``torch.load(weights_only=True)`` reads::

    {"format": "prune_core.sparse_state/bitmask-v1",
     "order": [key, ...],                      # the state dict's keys, in order
     "dense": {key: tensor or value, ...},     # stored as is
     "sparse": {key: {"shape": (d0, d1, ...),  # original shape (tuple of ints)
                      "bitmask": uint8 tensor, # ceil(numel / 8) bytes, bit i of byte j is
                                               # element 8 * j + i (little-endian), 1 = non-zero
                      "values": tensor}}}      # the non-zero elements in flat order, same dtype

A floating-point tensor is stored sparse only when its sparse record serializes smaller than the
dense tensor: roughly ``numel / 8 + nnz * itemsize < numel * itemsize`` bytes, i.e. more than 1/32
(fp32) or 1/16 (fp16) of it zero, plus about 300 bytes of extra record overhead, so tensors under a
few hundred elements stay dense. Everything else is stored dense. Decoding restores every tensor
exactly (values, dtype, shape; a ``-0.0`` comes back as ``0.0``).
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .checkpoint import load_state, save_state
from .pruning import PRUNABLE_TYPES

SPARSE_FORMAT = "prune_core.sparse_state/bitmask-v1"

_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


# ---------------------------------------------------------------------------------------------
# checkpoint size


def effective_state_dict(model: nn.Module) -> dict[str, Any]:
    """The model's state dict with every ``x_orig``/``x_mask`` pair folded into ``x = orig * mask``.

    For a model without pruning reparametrization this is ``model.state_dict()`` unchanged (an
    OrderedDict with its ``_metadata``, as ``torch.save(model.state_dict())`` would write it).
    """
    state = model.state_dict()
    if not any(key.endswith("_mask") for key in state):
        return state
    out: dict[str, Any] = OrderedDict()
    if hasattr(state, "_metadata"):
        out._metadata = state._metadata  # per-module versions, which torch.save also writes
    for key, value in state.items():
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in state:
            base = key[: -len("_orig")]
            out[base] = (value * state[base + "_mask"]).to(value.dtype)
        elif key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state:
            continue  # folded into its weight above
        else:
            out[key] = value
    return out


def _serialized_bytes(obj: Any) -> int:
    """Bytes that ``torch.save(obj)`` writes."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer().nbytes


def size_bytes(model: nn.Module) -> int:
    """Bytes of the dense checkpoint: ``torch.save`` of the (mask-folded) state dict."""
    return _serialized_bytes(effective_state_dict(model))


def _pack_bits(nonzero: torch.Tensor) -> torch.Tensor:
    """Pack a flat bool tensor into uint8, 8 elements a byte, little-endian within the byte."""
    pad = (-nonzero.numel()) % 8
    bits = torch.nn.functional.pad(nonzero.to(torch.uint8), (0, pad)).view(-1, 8)
    return (bits * _BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of ``_pack_bits``: a flat bool tensor of ``numel`` elements."""
    return (packed.unsqueeze(1) & _BIT_WEIGHTS).ne(0).view(-1)[:numel]


def _sparse_record(tensor: torch.Tensor) -> dict[str, Any]:
    """The bitmask + values encoding of a CPU floating-point tensor."""
    flat = tensor.reshape(-1)
    nonzero = flat != 0
    return {
        "shape": tuple(tensor.shape),
        "bitmask": _pack_bits(nonzero),
        "values": flat[nonzero].clone(),
    }


def _decode_record(record: dict[str, Any]) -> torch.Tensor:
    """Rebuild the dense tensor of a sparse record."""
    shape = tuple(record["shape"])
    values = record["values"]
    numel = 1
    for d in shape:
        numel *= d
    nonzero = _unpack_bits(record["bitmask"], numel)
    out = torch.zeros(numel, dtype=values.dtype)
    out[nonzero] = values
    return out.view(shape)


def encode_sparse_state(state: dict[str, Any]) -> dict[str, Any]:
    """Encode ``state`` in the bitmask sparse format (see the module docstring); tensors go to CPU.

    A floating-point tensor is stored sparse only if that record serializes smaller than the dense
    tensor; the comparison is done only when the payload estimate says sparse can win.
    """
    dense: dict[str, Any] = {}
    sparse: dict[str, Any] = {}
    for key, value in state.items():
        if not (isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel()):
            dense[key] = value.detach().cpu() if isinstance(value, torch.Tensor) else value
            continue
        tensor = value.detach().cpu()
        numel, itemsize = tensor.numel(), tensor.element_size()
        nnz = int(torch.count_nonzero(tensor))
        payload_sparse = (numel + 7) // 8 + nnz * itemsize  # bytes
        if payload_sparse < numel * itemsize:
            record = _sparse_record(tensor)
            if _serialized_bytes(record) < _serialized_bytes(tensor.clone()):
                sparse[key] = record
                continue
        dense[key] = tensor
    return {"format": SPARSE_FORMAT, "order": list(state), "dense": dense, "sparse": sparse}


def decode_sparse_state(encoded: dict[str, Any]) -> dict[str, Any]:
    """Inverse of ``encode_sparse_state``: the original state dict, keys in their original order."""
    if encoded.get("format") != SPARSE_FORMAT:
        raise ValueError(
            f"format={encoded.get('format')!r} is not a sparse state; expected {SPARSE_FORMAT!r}"
        )
    dense, sparse = encoded["dense"], encoded["sparse"]
    return {k: dense[k] if k in dense else _decode_record(sparse[k]) for k in encoded["order"]}


def save_sparse_state(state: dict[str, Any], path: str) -> None:
    """Write ``state`` to ``path`` in the bitmask sparse format, atomically."""
    save_state(encode_sparse_state(state), path)


def load_sparse_state(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a file written by ``save_sparse_state`` (``torch.load(weights_only=True)``)."""
    state = decode_sparse_state(load_state(path, map_location="cpu"))
    if torch.device(map_location).type == "cpu":
        return state
    return {k: v.to(map_location) if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def sparse_size_bytes(model: nn.Module) -> int:
    """Bytes of the compressed sparse checkpoint (``save_sparse_state`` of the folded state)."""
    return _serialized_bytes(encode_sparse_state(effective_state_dict(model)))


# ---------------------------------------------------------------------------------------------
# FLOPs


@contextlib.contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and no_grad for the block; each module's training flag is restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in flags:
            m.training = training


def _model_device(model: nn.Module, example_input: torch.Tensor) -> torch.device:
    """The device of the model's first parameter (or buffer), else that of the input."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return example_input.device


def flops_by_module(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """Dense FLOPs of one forward pass of ``example_input`` (whole batch), per module.

    Keys are ``model.named_modules()`` names (``""`` is the whole model); a container's count
    includes its children's. Counted by ``FlopCounterMode``: convolutions and matrix products only
    (2 FLOPs per multiply-add; bias adds, norms and activations count 0). Modules never called
    are left out.
    """
    counter = FlopCounterMode(display=False)
    starts: dict[str, list[int]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)

    def pre_hook(name: str):
        def hook(module, args):
            starts[name].append(counter.get_total_flops())

        return hook

    def post_hook(name: str):
        def hook(module, args, output):
            counts[name] += counter.get_total_flops() - starts[name].pop()

        return hook

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(pre_hook(name)))
        handles.append(module.register_forward_hook(post_hook(name)))
    x = example_input.to(_model_device(model, example_input))
    try:
        with _inference(model), counter:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    counts[""] = counter.get_total_flops()  # also counts ops outside any module's forward
    return dict(counts)


def flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """Dense FLOPs of one forward pass of ``example_input`` (whole batch); see flops_by_module."""
    return flops_by_module(model, example_input)[""]


def weight_density(module: nn.Module) -> float:
    """Fraction of non-zero elements of ``module``'s (masked) weight."""
    orig = getattr(module, "weight_orig", None)
    mask = getattr(module, "weight_mask", None)
    weight = orig * mask if orig is not None and mask is not None else module.weight
    weight = weight.detach()
    return int(torch.count_nonzero(weight)) / weight.numel() if weight.numel() else 0.0


def _effective_from_counts(model: nn.Module, counts: dict[str, int]) -> int:
    """Total FLOPs with each conv/linear module's own count scaled by its weight density."""
    total = float(counts[""])
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES) and name in counts:
            total -= counts[name] * (1.0 - weight_density(module))
    return round(total)


def effective_flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """FLOPs of one forward pass, each nn.Conv2d/nn.Linear's count scaled by its weight density.

    Approximation: it assumes an ideal sparse kernel that skips exactly the multiply-adds of zero
    weights at no overhead (no index decoding, no load imbalance), and exploits no zeros in the
    activations. Other counted ops (e.g. a bare matmul outside a conv/linear) stay dense. Real
    speed-ups on dense hardware are far smaller unless channels are physically removed.
    """
    return _effective_from_counts(model, flops_by_module(model, example_input))


# ---------------------------------------------------------------------------------------------
# latency


def device_label(device: torch.device) -> str:
    """A readable device: ``"cpu"`` or e.g. ``"cuda:0 (NVIDIA H100 80GB HBM3)"``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def forward_times_ms(
    model: nn.Module, example_input: torch.Tensor, warmup: int = 3, repeats: int = 10
) -> list[float]:
    """Wall-clock milliseconds of each of ``repeats`` forward passes of the batch
    ``example_input``, after ``warmup`` untimed passes.

    Runs on the model's device, in eval mode under no_grad (each module's training flag is
    restored); on CUDA every timed pass ends with ``torch.cuda.synchronize``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(
            f"repeats={repeats!r}, warmup={warmup!r}; allowed: repeats >= 1, warmup >= 0"
        )
    device = _model_device(model, example_input)
    x = example_input.to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times_ms = []
    with _inference(model):
        for _ in range(warmup):
            model(x)
        sync()
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            sync()
            times_ms.append((time.perf_counter() - start) * 1e3)
    return times_ms


def latency_summary(times_ms: list[float]) -> dict[str, float]:
    """``median_ms``, ``p10_ms`` and ``p90_ms`` of timed passes (percentiles interpolated
    linearly between the sorted times; all equal the one time if there is one) and ``spread`` =
    ``p90_ms / p10_ms`` (dimensionless, 1.0 = perfectly steady)."""
    if not times_ms:
        raise ValueError("times_ms is empty; allowed: at least one timed pass")
    if len(times_ms) > 1:
        deciles = statistics.quantiles(times_ms, n=10, method="inclusive")
        p10, p90 = deciles[0], deciles[-1]
    else:
        p10 = p90 = times_ms[0]
    return {
        "median_ms": statistics.median(times_ms),
        "p10_ms": p10,
        "p90_ms": p90,
        "spread": p90 / p10 if p10 > 0 else float("nan"),
    }


def latency_stats(
    model: nn.Module, example_input: torch.Tensor, warmup: int = 3, repeats: int = 10
) -> dict[str, Any]:
    """Wall-clock milliseconds of one forward pass of the batch ``example_input``, with spread.

    Timed by ``forward_times_ms``. Returns ``latency_summary`` of the timed passes (``median_ms``,
    ``p10_ms``, ``p90_ms``: ms per batch; ``spread`` = p90 / p10), ``times_ms`` (every timed
    pass, in order), ``batch_size``, ``device``, ``threads`` (``torch.get_num_threads()``) and
    ``repeats``.
    """
    times_ms = forward_times_ms(model, example_input, warmup=warmup, repeats=repeats)
    device = _model_device(model, example_input)
    return {
        **latency_summary(times_ms),
        "times_ms": times_ms,
        "batch_size": int(example_input.shape[0]) if example_input.dim() else 1,
        "device": device_label(device),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
    }


def latency_ms(
    model: nn.Module, example_input: torch.Tensor, warmup: int = 3, repeats: int = 10
) -> dict[str, Any]:
    """Median wall-clock milliseconds of one forward pass of the batch ``example_input``.

    Timed as ``latency_stats`` does. Returns ``median_ms`` (ms per batch) with ``batch_size``,
    ``device``, ``threads`` (``torch.get_num_threads()``), ``repeats``; ``latency_stats`` also
    gives the spread.
    """
    stats = latency_stats(model, example_input, warmup=warmup, repeats=repeats)
    return {k: stats[k] for k in ("median_ms", "batch_size", "device", "threads", "repeats")}


# ---------------------------------------------------------------------------------------------
# all together


def measure_all(
    model: nn.Module, example_input: torch.Tensor, warmup: int = 3, repeats: int = 10
) -> dict[str, Any]:
    """Every measurement, under the key names logged to MLflow.

    ``size_bytes``, ``sparse_size_bytes`` (bytes), ``flops``, ``effective_flops`` (one forward pass
    of ``example_input``), ``latency_ms`` (median ms per batch), ``latency_batch_size``,
    ``latency_device`` (a string), ``latency_threads``.
    """
    counts = flops_by_module(model, example_input)
    latency = latency_ms(model, example_input, warmup=warmup, repeats=repeats)
    return {
        "size_bytes": size_bytes(model),
        "sparse_size_bytes": sparse_size_bytes(model),
        "flops": counts[""],
        "effective_flops": _effective_from_counts(model, counts),
        "latency_ms": latency["median_ms"],
        "latency_batch_size": latency["batch_size"],
        "latency_device": latency["device"],
        "latency_threads": latency["threads"],
    }
