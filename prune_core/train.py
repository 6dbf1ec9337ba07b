"""Training and evaluation loops over a ``TensorData`` (already on the training device)."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from . import pruning
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


class TrainingDiverged(RuntimeError):
    """The training loss became non-finite (nan or inf): the run cannot recover.

    ``epoch`` is 1-based within the ``train_epochs`` call, ``step`` the 1-based optimizer step
    within that call (counted across its epochs), ``loss`` the non-finite loss of that step.
    """

    def __init__(self, label: str, epoch: int, step: int, loss: float):
        self.label, self.epoch, self.step, self.loss = label, epoch, step, float(loss)
        super().__init__(
            f"[{label}] loss {self.loss:g} at epoch {epoch} step {step}: training diverged"
        )

    def __reduce__(self):  # pickles with its fields (Ray sends exceptions between processes)
        return type(self), (self.label, self.epoch, self.step, self.loss)


# On CUDA, reading the loss forces a host-device sync, which stalls a launch-bound loop; the
# losses are kept on the device and checked together every this many optimizer steps (and at the
# end of each epoch). The first non-finite step is still reported exactly, but up to this many
# minus one later steps may already have been applied. On a CPU every step is checked before its
# update is applied.
CUDA_DIVERGENCE_CHECK_STEPS = 8


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
    compile: bool = False,
    masked_update: bool = True,
) -> None:
    """Train ``model`` for ``epochs`` under a cosine learning-rate decay from ``lr`` to 0.

    The cosine spans ``schedule_epochs`` (default: ``epochs``) and starts ``schedule_offset``
    epochs in, so learning-rate rewinding can replay the tail of the dense schedule.
    ``on_epoch_end(epoch)`` is called after each epoch (1-based, counted from the offset).

    Pruned tensors (torch.nn.utils.prune masks) are trained as a masked update: within each epoch
    the ``*_orig`` parameters are trained directly and their pruned entries are zeroed after every
    optimizer step in one fused call (``pruning.masked_update``), instead of multiplying every
    weight by its mask on every forward; the effective weights are the same.
    ``masked_update=False`` trains through the prune hooks instead. Between epochs (and so in
    ``on_epoch_end``) the model is in its usual torch.nn.utils.prune state.

    ``compile=True`` runs the forward through ``torch.compile`` (``mode="reduce-overhead"`` on
    CUDA, which captures it in CUDA graphs against the kernel-launch overhead; the default mode on
    a CPU, where the first step takes tens of seconds to compile). If compiling or a compiled step
    fails, one line is logged and training continues eagerly from that step.

    Raises ``TrainingDiverged`` at the first non-finite loss, before that step's update on a CPU
    (see ``CUDA_DIVERGENCE_CHECK_STEPS`` for CUDA). On CUDA the forward runs in bfloat16 autocast
    with channels_last images; on a CPU everything is float32.
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
    forward = _compiled(model, cuda, log, label) if compile else model

    def fall_back(err: Exception) -> nn.Module:
        """Eager model after a failed compiled step; re-raises when already eager."""
        if forward is model:
            raise err
        log(f"[{label}] compiled step failed ({_one_line(err)}); continuing eagerly")
        return model

    def step_loss(net: Callable[[torch.Tensor], torch.Tensor], x, y) -> torch.Tensor:
        with torch.autocast(device_type=data.device.type, dtype=torch.bfloat16, enabled=cuda):
            return F.cross_entropy(net(x), y)

    model.train()
    step = 0  # optimizer steps so far in this call
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        total_loss = torch.zeros((), device=data.device)  # summed on the device: no sync per step
        seen = 0
        pending: list[tuple[int, torch.Tensor]] = []  # CUDA: (step, loss) not checked yet
        masking = pruning.masked_update(model) if masked_update else contextlib.nullcontext()
        with masking as pruned:
            for x, y in data.batches("train", batch_size, shuffle=True, generator=generator):
                step += 1
                if cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                try:
                    loss = step_loss(forward, x, y)
                except Exception as err:  # any failure of a compiled step
                    forward = fall_back(err)
                    loss = step_loss(forward, x, y)
                if not cuda:
                    value = loss.item()  # no sync to avoid on a CPU
                    if not math.isfinite(value):
                        raise TrainingDiverged(label, epoch, step, value)
                else:
                    pending.append((step, loss.detach()))
                    if len(pending) >= CUDA_DIVERGENCE_CHECK_STEPS:
                        _check_finite(pending, label, epoch)
                opt.zero_grad(set_to_none=True)
                try:
                    loss.backward()
                except Exception as err:  # e.g. a lazily compiled backward
                    forward = fall_back(err)
                    opt.zero_grad(set_to_none=True)
                    loss = step_loss(forward, x, y)
                    loss.backward()
                opt.step()
                if pruned is not None:
                    pruned.zero_pruned()
                sched.step()
                total_loss += loss.detach().float() * y.shape[0]
                seen += y.shape[0]
            _check_finite(pending, label, epoch)
        log(
            f"[{label}] epoch {epoch}/{epochs} loss {float(total_loss) / max(seen, 1):.4f} "
            f"lr {opt.param_groups[0]['lr']:.2e} ({time.perf_counter() - start:.1f} s)"
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch)


def _check_finite(pending: list[tuple[int, torch.Tensor]], label: str, epoch: int) -> None:
    """Raise ``TrainingDiverged`` for the first non-finite loss in ``pending`` (one sync), then
    empty it."""
    if not pending:
        return
    losses = torch.stack([loss.float() for _, loss in pending])
    if not bool(torch.isfinite(losses).all()):
        for (step, _), value in zip(pending, losses.tolist(), strict=True):
            if not math.isfinite(value):
                raise TrainingDiverged(label, epoch, step, value)
    pending.clear()


def _compile_model(model: nn.Module, cuda: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile`` of the model; CUDA graphs (reduce-overhead) on CUDA. One graph per
    batch shape (``dynamic=False``): an epoch has at most two, the full and the last batch."""
    return torch.compile(model, mode="reduce-overhead" if cuda else "default", dynamic=False)


def _compiled(
    model: nn.Module, cuda: bool, log: Callable[[str], None], label: str
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The compiled forward, or ``model`` itself (one line logged) if compiling fails."""
    try:
        return _compile_model(model, cuda)
    except Exception as err:  # any failure means: train eagerly
        log(f"[{label}] compile failed ({_one_line(err)}); training eagerly")
        return model


def _one_line(err: BaseException) -> str:
    """``Type: first line of the message``, for a one-line log."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


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
