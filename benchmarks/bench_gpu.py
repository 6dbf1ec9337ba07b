"""Time training on one CUDA GPU: ResNet-18 on CIFAR-10-shaped and the small CNN on MNIST-shaped
data, made in memory on the device (random class patterns plus noise: learnable, no download).

For each model it prints the seconds of one training epoch (batch 128, bfloat16 autocast and
channels_last, as a trial trains):
  dense             the dense model, eager
  masks, hooks      90% global magnitude masks, multiplied in on every forward (the old way)
  masks             the same masks as a masked update (the default: zeroed after each step)
  dense, compiled   compile=True: torch.compile(mode="reduce-overhead"), CUDA graphs
  masks, compiled   masked update and compile=True
  1 / N processes   N spawned trial processes sharing the GPU, each one masked epoch at once:
                    per-process epoch time and the throughput against one process alone
and then the global magnitude threshold on ResNet-18's 11.2 M weights by both exact paths
(kthvalue: the CPU's; stable sort: CUDA's) against torch.nn.utils.prune.global_unstructured.

Every timed epoch follows a short warm-up call (cuDNN autotuning, lazy CUDA init, and the
compilation, whose time is printed separately) on a subset ending in a batch of the same size.
The whole run takes a few minutes on one GPU; --quick uses a fifth of the images.

    python benchmarks/bench_gpu.py            # 50,000 CIFAR-shaped, 60,000 MNIST-shaped images
    python benchmarks/bench_gpu.py --quick    # 10,000 and 12,000 images

Without CUDA it prints one line and exits 0. ``--device cpu --images 256 --no-compile`` checks
the script itself on a CPU (those figures say nothing about a GPU).
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import platform
import queue
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.utils import prune

from prune_core.data import TensorData
from prune_core.models import build_model
from prune_core.pruning import (
    keep_mask_kthvalue,
    keep_mask_sorted,
    prunable_targets,
    prune_step,
)
from prune_core.train import train_epochs

NO_CUDA = "bench_gpu: no CUDA device; nothing to measure"
SPARSITY = 0.9  # global magnitude masks for the masked rows
WARMUP_FULL_BATCHES = 10  # warm-up subset: this many full batches plus the epoch's last batch


@dataclass(frozen=True)
class Case:
    """One model on one data shape."""

    title: str
    model: str
    channels: int
    size: int
    n_train: int
    augment: bool  # random crop + flip on the device, as the CIFAR-10 study trains


def make_data(case: Case, device: torch.device, seed: int = 0) -> TensorData:
    """``case.n_train`` uint8 images (plus 1,000 test images) on ``device``: each of 10 classes
    is a fixed random pattern plus Gaussian noise, so a model can learn it."""
    g = torch.Generator(device=device).manual_seed(seed)
    shape = (case.channels, case.size, case.size)
    prototypes = torch.rand(10, *shape, generator=g, device=device) * 255

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 10, (n,), generator=g, device=device)
        x = torch.empty(n, *shape, dtype=torch.uint8, device=device)
        for start in range(0, n, 10_000):  # in chunks: the float noise of 50,000 images is 600 MB
            yy = y[start : start + 10_000]
            noise = torch.randn(yy.shape[0], *shape, generator=g, device=device) * 40
            x[start : start + 10_000] = (prototypes[yy] + noise).clamp(0, 255).to(torch.uint8)
        return x, y

    x_train, y_train = make(case.n_train)
    x_test, y_test = make(1_000)
    return TensorData(
        name=f"{case.model}-shaped",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=10,
        pixel_max=255.0,
        mean=(0.5,) * case.channels,
        std=(0.25,) * case.channels,
        augment=case.augment,
    )


def subset(data: TensorData, batch_size: int) -> TensorData:
    """The first images of ``data``: a few full batches and a last batch of the same size as the
    full epoch's, so a compiled step meets every batch shape during the warm-up."""
    n = data.x_train.shape[0]
    keep = min(n, WARMUP_FULL_BATCHES * batch_size + n % batch_size)
    return TensorData(
        **{**data.__dict__, "x_train": data.x_train[:keep], "y_train": data.y_train[:keep]}
    )


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def epoch_seconds(
    model: torch.nn.Module, data: TensorData, batch_size: int, compile: bool, masked: bool
) -> tuple[float, float]:
    """(warm-up seconds, seconds of one full epoch) of ``train_epochs`` on ``model``."""

    def run(d: TensorData) -> float:
        sync(data.device)
        start = time.perf_counter()
        train_epochs(
            model, d, 1, 0.01, batch_size, log=_quiet, compile=compile, masked_update=masked
        )
        sync(data.device)
        return time.perf_counter() - start

    warmup = run(subset(data, batch_size))
    return warmup, run(data)


def pruned(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` under 90% global magnitude masks."""
    model = copy.deepcopy(model)
    prune_step(prunable_targets(model), "global_magnitude", SPARSITY)
    return model


def _quiet(_msg: str) -> None:
    pass


def _worker(case: Case, device: str, batch_size: int, barrier, results) -> None:
    """One trial process: its own data and masked model, a warm-up, then one epoch started
    together with the other processes (``barrier``); puts its epoch seconds on ``results``."""
    dev = torch.device(device)
    torch.manual_seed(0)
    data = make_data(case, dev)
    model = pruned(build_model(case.model, case.channels, 10, case.size).to(dev))
    train_epochs(model, subset(data, batch_size), 1, 0.01, batch_size, log=_quiet)
    sync(dev)
    barrier.wait()
    start = time.perf_counter()
    train_epochs(model, data, 1, 0.01, batch_size, log=_quiet)
    sync(dev)
    results.put(time.perf_counter() - start)


def concurrent_epochs(case: Case, device: torch.device, batch_size: int, procs: int) -> list[float]:
    """Epoch seconds of each of ``procs`` spawned trial processes training at the same time."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(case, str(device), batch_size, barrier, results))
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    seconds: list[float] = []
    while len(seconds) < procs:
        try:
            seconds.append(results.get(timeout=5))
        except queue.Empty:
            failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            if failed:
                for w in workers:
                    if w.is_alive():
                        w.terminate()
                raise RuntimeError(f"a trial process exited with status {failed[0]}") from None
    for w in workers:
        w.join()
    return seconds


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up."""
    times = []
    for i in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def threshold_rows(device: torch.device, repeats: int) -> list[str]:
    """Global magnitude threshold on ResNet-18 (CIFAR form) by both exact paths."""
    torch.manual_seed(0)
    model = build_model("resnet18", 3, 10, 32).to(device)
    targets = prunable_targets(model)
    scores = torch.cat([t.tensor().abs().reshape(-1) for t in targets])
    n_prune = round(SPARSITY * scores.numel())
    same = torch.equal(keep_mask_kthvalue(scores, n_prune), keep_mask_sorted(scores, n_prune))

    def torch_global() -> None:
        fresh = copy.deepcopy(model)
        params = [(t.module, t.param_name) for t in prunable_targets(fresh)]
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=SPARSITY)

    kth = median_seconds(lambda: keep_mask_kthvalue(scores, n_prune), device, repeats)
    srt = median_seconds(lambda: keep_mask_sorted(scores, n_prune), device, repeats)
    ref = median_seconds(torch_global, device, repeats)  # includes a model copy
    return [
        f"global magnitude threshold, ResNet-18, {scores.numel():,} weights, "
        f"sparsity {SPARSITY}, median of {repeats}:",
        f"  keep_mask_kthvalue (CPU path)     {kth * 1e3:9.2f} ms",
        f"  keep_mask_sorted (CUDA path)      {srt * 1e3:9.2f} ms   kthvalue / sorted "
        f"{kth / srt:.2f}x",
        f"  prune.global_unstructured         {ref * 1e3:9.2f} ms   (incl. a model copy)",
        f"  identical masks: {same}",
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table; 0 without CUDA (nothing to measure)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the images")
    parser.add_argument("--images", type=int, help="training images per data set (overrides)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--procs", type=int, default=4, help="concurrent trial processes")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled rows")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (script check)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    for flag, value in (("--images", args.images), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            print(f"bench_gpu: {flag} {value}: must be an integer >= 1", file=sys.stderr)
            return 2
    if args.procs < 2:
        print(f"bench_gpu: --procs {args.procs}: must be an integer >= 2", file=sys.stderr)
        return 2
    scale = 5 if args.quick else 1
    cases = [
        Case("ResNet-18, CIFAR-10-shaped 3x32x32", "resnet18", 3, 32, 50_000 // scale, True),
        Case("small CNN (cnn), MNIST-shaped 1x28x28", "cnn", 1, 28, 60_000 // scale, False),
    ]
    if args.images:
        cases = [Case(c.title, c.model, c.channels, c.size, args.images, c.augment) for c in cases]

    print("bench_gpu: one training epoch per row, seconds")
    print(
        f"  torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"python {platform.python_version()}"
    )
    if device.type == "cuda":
        print(f"  device {device} ({torch.cuda.get_device_name(device)})")
    else:
        print(f"  device {device}: checks the script only; these are not GPU figures")
    print(f"  batch {args.batch_size}, masks: {SPARSITY:.0%} global magnitude")
    bench_start = time.perf_counter()
    for case in cases:
        torch.manual_seed(0)
        data = make_data(case, device)
        dense = build_model(case.model, case.channels, 10, case.size).to(device)
        masked = pruned(dense)
        # (row, model, compile, masked update)
        rows = [
            ("dense", dense, False, True),
            ("masks, hooks", masked, False, False),
            ("masks", masked, False, True),
        ]
        if not args.no_compile:
            rows += [
                ("dense, compiled", dense, True, True),
                ("masks, compiled", masked, True, True),
            ]
        print(f"\n{case.title}, {case.n_train:,} training images")
        print(f"  {'':<22}{'epoch':>9}  {'images/s':>9}  {'warm-up':>9}")
        results = {}
        for name, model, compile_step, masked_update in rows:
            warmup, seconds = epoch_seconds(
                copy.deepcopy(model), data, args.batch_size, compile_step, masked_update
            )
            results[name] = seconds
            print(f"  {name:<22}{seconds:8.2f}s  {case.n_train / seconds:9.0f}  {warmup:8.2f}s")
        del data, dense, masked
        if device.type == "cuda":
            torch.cuda.empty_cache()
        one = concurrent_epochs(case, device, args.batch_size, 1)[0]
        many = concurrent_epochs(case, device, args.batch_size, args.procs)
        ratio = args.procs * one / max(many)
        print(f"  {'masks, 1 process':<22}{one:8.2f}s  {case.n_train / one:9.0f}")
        print(
            f"  {f'masks, {args.procs} processes':<22}{statistics.median(many):8.2f}s  "
            f"{args.procs * case.n_train / max(many):9.0f}   each: "
            + ", ".join(f"{s:.2f}" for s in many)
            + f" s; throughput {ratio:.2f}x one process"
        )
        base = results["dense"]
        summary = ", ".join(f"{k} {v / base:.2f}x" for k, v in results.items() if k != "dense")
        print(f"  relative to dense: {summary}")
    print()
    for line in threshold_rows(device, repeats=5):
        print(line)
    print(f"\ntotal {time.perf_counter() - bench_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
