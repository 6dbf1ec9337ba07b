"""Training and evaluation loops over a ``TensorData`` or a ``StreamedData`` (already on the
training device)."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from . import pruning
from .cliutils import first_line
from .data import TensorData

if TYPE_CHECKING:
    from .streaming import StreamedData


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
    data: TensorData | StreamedData,
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
    steps_per_epoch = math.ceil(data.size("train") / batch_size)
    total_steps = (schedule_epochs or epochs) * steps_per_epoch
    start_step = schedule_offset * steps_per_epoch

    def cosine(step: int) -> float:  # multiplier of lr at optimizer step ``step`` of this call
        return cosine_lr(1.0, start_step + step, total_steps)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    generator = torch.Generator().manual_seed(seed)
    forward = _compiled(model, cuda, log, label) if compile else model
    loop = _TrainLoop(model, forward, opt, sched, data.device.type, label, log)
    model.train()
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        total_loss, seen = loop.run_epoch(data, epoch, batch_size, generator, masked_update)
        log(
            f"[{label}] epoch {epoch}/{epochs} loss {float(total_loss) / max(seen, 1):.4f} "
            f"lr {opt.param_groups[0]['lr']:.2e} ({time.perf_counter() - start:.1f} s)"
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch)


def cosine_lr(base_lr: float, epoch: float, total_epochs: int) -> float:
    """The cosine-decayed learning rate ``base_lr * 0.5 * (1 + cos(pi * epoch / total_epochs))``:
    ``base_lr`` at 0, half of it at ``total_epochs / 2``, 0 at ``total_epochs`` and after it.

    Any unit serves if both agree: ``train_epochs`` passes optimizer steps (its multiplier at a
    step is ``cosine_lr(1.0, step, total_steps)``), the rewinding recipes whole epochs.
    """
    progress = min(epoch, total_epochs)  # the schedule ends at 0; it never climbs back
    return base_lr * (0.5 * (1.0 + math.cos(math.pi * progress / total_epochs)))


class _TrainLoop:
    """The optimizer steps of one ``train_epochs`` call: the forward in use (compiled until a
    compiled step fails, then the eager model), the optimizer and its schedule, and how many
    steps it has taken (1-based in ``TrainingDiverged``, counted across epochs)."""

    def __init__(
        self,
        model: nn.Module,
        forward: Callable[[torch.Tensor], torch.Tensor],
        opt: torch.optim.Optimizer,
        sched: torch.optim.lr_scheduler.LRScheduler,
        device_type: str,
        label: str,
        log: Callable[[str], None],
    ):
        self.model, self.forward, self.opt, self.sched = model, forward, opt, sched
        self.device_type, self.cuda = device_type, device_type == "cuda"
        self.label, self.log = label, log
        self.step = 0  # optimizer steps so far in this call

    def fall_back(self, err: Exception) -> None:
        """Switch to the eager model after a failed compiled step; re-raise when already eager."""
        if self.forward is self.model:
            raise err
        self.log(f"[{self.label}] compiled step failed ({first_line(err)}); continuing eagerly")
        self.forward = self.model

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the current forward (bfloat16 autocast on CUDA)."""
        with torch.autocast(device_type=self.device_type, dtype=torch.bfloat16, enabled=self.cuda):
            return F.cross_entropy(self.forward(x), y)

    def run_epoch(
        self,
        data: TensorData | StreamedData,
        epoch: int,
        batch_size: int,
        generator: torch.Generator,
        masked_update: bool,
    ) -> tuple[torch.Tensor, int]:
        """One shuffled pass over the training split; returns (the summed loss, on the device so
        no step syncs, and the number of samples seen)."""
        total_loss = torch.zeros((), device=data.device)
        seen = 0
        pending: list[tuple[int, torch.Tensor]] = []  # CUDA: (step, loss) not checked yet
        masking = pruning.masked_update(self.model) if masked_update else contextlib.nullcontext()
        with masking as pruned:
            for x, y in data.batches("train", batch_size, shuffle=True, generator=generator):
                loss = self.train_step(x, y, epoch, pending, pruned)
                total_loss += loss.detach().float() * y.shape[0]
                seen += y.shape[0]
            _check_finite(pending, self.label, epoch)
        return total_loss, seen

    def train_step(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        epoch: int,
        pending: list[tuple[int, torch.Tensor]],
        pruned: Any,
    ) -> torch.Tensor:
        """One optimizer step on the batch ``(x, y)``; returns its loss. A non-finite loss raises
        ``TrainingDiverged`` before the update on a CPU; on CUDA it joins ``pending`` (checked
        every ``CUDA_DIVERGENCE_CHECK_STEPS``). A failed compiled step is redone eagerly."""
        self.step += 1
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        try:
            loss = self.loss(x, y)
        except Exception as err:  # any failure of a compiled step
            self.fall_back(err)
            loss = self.loss(x, y)
        if not self.cuda:
            value = loss.item()  # no sync to avoid on a CPU
            if not math.isfinite(value):
                raise TrainingDiverged(self.label, epoch, self.step, value)
        else:
            pending.append((self.step, loss.detach()))
            if len(pending) >= CUDA_DIVERGENCE_CHECK_STEPS:
                _check_finite(pending, self.label, epoch)
        self.opt.zero_grad(set_to_none=True)
        try:
            loss.backward()
        except Exception as err:  # e.g. a lazily compiled backward
            self.fall_back(err)
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss(x, y)
            loss.backward()
        self.opt.step()
        if pruned is not None:  # the masked update: zero the pruned entries of *_orig again
            pruned.zero_pruned()
        self.sched.step()
        return loss


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
        log(f"[{label}] compile failed ({first_line(err)}); training eagerly")
        return model


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorData | StreamedData, batch_size: int = 1000) -> float:
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
    return int(correct) / data.size("test")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
