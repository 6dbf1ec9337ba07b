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
