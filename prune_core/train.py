"""Training and evaluation loops over a ``TensorData`` (already on the training device)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .data import TensorData


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` if given, else CUDA when available, else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_optimizer(
    model: nn.Module, name: str, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4
) -> torch.optim.Optimizer:
    """SGD with (Nesterov) momentum or Adam over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay
        )
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer={name!r} is invalid; allowed: sgd, adam")


def train_epochs(
    model: nn.Module,
    data: TensorData,
    epochs: int,
    lr: float,
    batch_size: int = 128,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    label: str = "train",
    schedule_epochs: int | None = None,
    schedule_offset: int = 0,
    on_epoch_end: Callable[[int], None] | None = None,
) -> None:
    """Train ``model`` for ``epochs`` under a cosine learning-rate decay from ``lr`` to 0.

    The cosine spans ``schedule_epochs`` (default: ``epochs``) and starts ``schedule_offset``
    epochs in, so learning-rate rewinding can replay the tail of the dense schedule.
    ``on_epoch_end(epoch)`` is called after each epoch (1-based, counted from the offset).
    Masks installed by torch.nn.utils.prune are re-applied on every forward, so pruned weights stay
    zero while their ``_orig`` values receive gradients that never reach the output. On CUDA the
    forward runs in bfloat16 autocast with channels_last images; on a CPU everything is float32.
    """
    if epochs <= 0:
        return
    if log is None:
        log = _stderr
    cuda = data.device.type == "cuda"
    if cuda:
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, optimizer, lr, momentum, weight_decay)
    steps_per_epoch = math.ceil(data.x_train.shape[0] / batch_size)
    total_steps = (schedule_epochs or epochs) * steps_per_epoch
    start_step = schedule_offset * steps_per_epoch

    def cosine(step: int) -> float:  # multiplier of lr at optimizer step ``step``
        t = min(start_step + step, total_steps)
        return 0.5 * (1.0 + math.cos(math.pi * t / total_steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        total_loss = torch.zeros((), device=data.device)  # summed on the device: no sync per step
        seen = 0
        for x, y in data.batches("train", batch_size, shuffle=True, generator=generator):
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=data.device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.detach().float() * y.shape[0]
            seen += y.shape[0]
        log(
            f"[{label}] epoch {epoch}/{epochs} loss {float(total_loss) / max(seen, 1):.4f} "
            f"lr {opt.param_groups[0]['lr']:.2e} ({time.perf_counter() - start:.1f} s)"
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch)


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorData, batch_size: int = 1000) -> float:
    """Top-1 accuracy on the test split, as a fraction in [0, 1]."""
    was_training = model.training
    model.eval()
    cuda = data.device.type == "cuda"
    correct = torch.zeros((), dtype=torch.long, device=data.device)
    for x, y in data.batches("test", batch_size):
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=data.device.type, dtype=torch.bfloat16, enabled=cuda):
            correct += (model(x).argmax(1) == y).sum()
    model.train(was_training)
    return int(correct) / data.y_test.shape[0]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
