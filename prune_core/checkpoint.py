"""Save and load model weights as plain state dicts (loaded with ``weights_only=True``)."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn


def save_state(state: dict[str, Any], path: str) -> None:
    """Write ``state`` (tensors and plain values) to ``path`` atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)  # readers never see a half-written file


def load_state(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a file written by ``save_state``; never unpickles code (``weights_only=True``)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every tensor copied to the CPU (safe to share or pickle)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as a model's weights; the message is one line."""


def file_sha256(path: str) -> str:
    """``sha256:<hex>`` of the file's content (read in 1 MiB chunks)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A model's state dict from ``path`` (``weights_only=True``; a ``{"state_dict": ...}`` or
    ``{"model": ...}`` wrapper is opened); ``CheckpointError`` (one line) if it is missing,
    unreadable or not a state dict."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        blob = load_state(path)
    except Exception as err:  # zip, pickle and weights_only errors: all mean "not a checkpoint"
        kind = type(err).__name__
        raise CheckpointError(
            f"checkpoint {path}: not a readable PyTorch state dict ({kind}); save it with "
            "torch.save(model.state_dict(), path)"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(blob, dict) and isinstance(blob.get(wrapper), dict):
            blob = blob[wrapper]
    if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise CheckpointError(
            f"checkpoint {path}: holds a {type(blob).__name__}, not a state dict of tensors; "
            "save it with torch.save(model.state_dict(), path)"
        )
    return blob


def load_into(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """Load ``state`` into ``model`` exactly: missing or unexpected keys and shape mismatches
    are one ``CheckpointError`` line naming the first few."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{what} {', '.join(keys[:3])}{more}")
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {'; '.join(problems)}")
    model.load_state_dict(state)
