"""Does physically removing pruned channels make ResNet-18 smaller and faster on a CPU?

ResNet-18 (CIFAR form, 3x32x32, 10 classes), dense versus 50% of the output channels pruned by
L1 norm (``ln_structured``) and physically removed with Torch-Pruning
(``prune_core.structured.remove_pruned_channels``). Two pruned variants:

- ``block-conv1 50%``: only the first conv of every residual block (the layers that can lose
  channels on their own); the residual streams keep their width.
- ``all channels 50%``: every channel group, residual streams included (``couple=channel_groups``),
  the usual meaning of "50% of ResNet-18's channels".

Reported per model: parameters, FLOPs per image (``torch.utils.flop_counter.FlopCounterMode``;
FLOPs = 2 x multiply-accumulates), CPU latency of one batch (median and interquartile range of
``--repeats`` timed batches after ``--warmup`` untimed ones, the models taking turns in every
round so that load from other processes hits them alike; the latency ratio is the median of the
per-round ratios; the minimum is the least disturbed run), and a reload check: the model saved
with ``save_pruned_model`` and read back with ``load_pruned_model`` (``weights_only=True``) gives
identical outputs. Weights are random (seeded): latency and FLOPs do not depend on their values.

Run: ``python benchmarks/bench_physical_removal.py [--batch-size 32 --repeats 20 --threads N]``
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prune_core.metrics import count_parameters  # noqa: E402
from prune_core.models import build_model  # noqa: E402
from prune_core.pruning import make_permanent, prunable_targets, prune_step  # noqa: E402
from prune_core.structured import (  # noqa: E402
    channel_groups,
    load_pruned_model,
    remove_pruned_channels,
    save_pruned_model,
)

SHAPE = (3, 32, 32)  # CIFAR-10 images
CLASSES = 10


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for the record."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def flops_per_image(model: nn.Module) -> int:
    """FLOPs of one forward pass on one image (FlopCounterMode counts 2 per multiply-add)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, *SHAPE))
    return counter.get_total_flops()


def latencies_s(
    models: dict[str, nn.Module], batch: torch.Tensor, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Wall-clock seconds of ``repeats`` forward passes of ``batch`` per model, after ``warmup``
    untimed ones. The models take turns within each round, so a burst of load from other
    processes on a shared machine hits all of them alike and per-round ratios stay fair."""
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():  # first calls pay for allocation and kernel selection
            for _ in range(warmup):
                model(batch)
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(batch)
                times[name].append(time.perf_counter() - start)
    return times


def pruned_variant(dense: nn.Module, sparsity: float, all_channels: bool) -> nn.Module:
    """A copy of ``dense`` with ``sparsity`` of its channels pruned (L1) and removed."""
    model = copy.deepcopy(dense)
    example = torch.zeros(1, *SHAPE)
    groups = channel_groups(model, example)
    targets = prunable_targets(model)
    if all_channels:
        prune_step(targets, "ln_structured", sparsity, couple=groups)
    else:
        independent = [g[0] for g in groups if len(g) == 1]
        prune_step(targets, "ln_structured", sparsity, layers=independent)
    make_permanent(model)
    return remove_pruned_channels(model, example).eval()


def reload_matches(model: nn.Module, batch: torch.Tensor) -> tuple[bool, float]:
    """Save, reload with weights_only and compare outputs; returns (identical, file MB)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.pt")
        save_pruned_model(model, path, "resnet18", SHAPE[0], CLASSES, SHAPE[1])
        size_mb = os.path.getsize(path) / 1e6
        loaded = load_pruned_model(path).eval()
    with torch.inference_mode():
        return bool(torch.equal(model(batch), loaded(batch))), size_mb


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sparsity", type=float, default=0.5, help="fraction of channels")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    dense = build_model("resnet18", SHAPE[0], CLASSES, SHAPE[1]).eval()
    pct = f"{args.sparsity:.0%}"
    models = {
        "dense": dense,
        f"block-conv1 {pct}": pruned_variant(dense, args.sparsity, all_channels=False),
        f"all channels {pct}": pruned_variant(dense, args.sparsity, all_channels=True),
    }
    batch = torch.randn(args.batch_size, *SHAPE, generator=torch.Generator().manual_seed(1))

    load_before = os.getloadavg()[0]
    times = latencies_s(models, batch, args.warmup, args.repeats)
    load_after = os.getloadavg()[0]
    print(
        f"torch {torch.__version__}, device cpu ({cpu_name()}, {os.cpu_count()} cores), "
        f"threads {torch.get_num_threads()}, batch {args.batch_size}, warmup {args.warmup}, "
        f"repeats {args.repeats} (interleaved), input {'x'.join(map(str, SHAPE))}, "
        f"1-min load average {load_before:.2f} before / {load_after:.2f} after timing"
    )
    print(
        f"{'model':<20} {'params':>11} {'GFLOPs/img':>10} {'median ms':>10} {'IQR ms':>13}"
        f" {'min ms':>7} {'file MB':>8} {'reload':>7}"
    )
    stats = {}
    for name, model in models.items():
        params, _ = count_parameters(model)
        flops = flops_per_image(model)
        q1, median, q3 = statistics.quantiles(times[name], n=4)
        same, size_mb = reload_matches(model, batch)
        stats[name] = (params, flops)
        print(
            f"{name:<20} {params:>11,} {flops / 1e9:>10.3f} {median * 1e3:>10.1f}"
            f" {q1 * 1e3:>6.1f}-{q3 * 1e3:<6.1f} {min(times[name]) * 1e3:>7.1f}"
            f" {size_mb:>8.1f} {'same' if same else 'DIFF':>7}"
        )
    for name, (params, flops) in stats.items():
        if name == "dense":
            continue
        paired = [d / p for d, p in zip(times["dense"], times[name], strict=True)]
        print(
            f"dense / {name}: params {stats['dense'][0] / params:.2f}x, "
            f"FLOPs {stats['dense'][1] / flops:.2f}x, latency {statistics.median(paired):.2f}x "
            f"(median of per-round ratios; ratio of minimums "
            f"{min(times['dense']) / min(times[name]):.2f}x)"
        )


if __name__ == "__main__":
    main()
