"""Time global magnitude pruning of ResNet-18 (CIFAR form, 11.2 M conv/linear weights).

Compares, in one process and interleaved repeat by repeat:
  (a) ours:    prune_core.pruning.global_magnitude_masks(prunable_targets(model), sparsity)
  (b) kthvalue: one torch.kthvalue over the (precomputed) concatenated |w| of the same weights,
               the floor for any exact global threshold
  (c) torch:   torch.nn.utils.prune.global_unstructured(L1Unstructured) on a fresh copy
  (d) both exact threshold paths of ``keep_mask_exact`` on the same concatenated |w|:
      mask_kthvalue (what a CPU uses) and mask_sorted (stable sort: what CUDA uses)
and prints the medians and the ratios ours/kthvalue (target <= 2.0, set for the CPU) and
torch/ours, with the device, threads, versions and repeats. It also checks that (a) and (c) prune
the same weights and that both paths of (d) give identical masks.

    python benchmarks/bench_global_magnitude.py            # 9 repeats
    python benchmarks/bench_global_magnitude.py --quick    # 3 repeats
    python benchmarks/bench_global_magnitude.py --device cuda
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.nn.utils import prune

from prune_core.models import build_model
from prune_core.pruning import (
    global_magnitude_masks,
    keep_mask_kthvalue,
    keep_mask_sorted,
    prunable_targets,
)

TARGET_RATIO = 2.0  # ours / kthvalue


def _device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        name = models[0] if models else name
    except OSError:
        pass
    return f"cpu ({name}, {os.cpu_count()} logical cores)"


def _machine_load() -> str:
    """Load average and CPU pressure (Linux PSI): other processes distort CPU timings."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        with open("/proc/pressure/cpu") as f:
            some = f.readline().split()  # "some avg10=.. avg60=.. avg300=.. total=.."
        return f"load average {load}; cpu pressure {some[1]} {some[2]}"
    except OSError:
        return f"load average {load}"


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds that ``fn()`` takes, synchronizing CUDA before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its report; returns the exit status (1 on a failed --check)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats, 1 warm-up")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 9)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--check", action="store_true", help="exit 1 if ours/kthvalue > 2.0")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 9)
    warmup = 1 if args.quick else 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--device {args.device}: no CUDA device here; allowed: cpu", file=sys.stderr)
        return 2

    torch.manual_seed(0)
    model = build_model("resnet18", 3, 10, 32).to(device)
    targets = prunable_targets(model)
    n_weights = sum(t.numel() for t in targets)
    n_prune = round(args.sparsity * n_weights)
    magnitudes = torch.cat([t.tensor().abs().reshape(-1) for t in targets])

    def ours() -> list[torch.Tensor]:
        return global_magnitude_masks(targets, args.sparsity)

    def kthvalue() -> torch.Tensor:
        return torch.kthvalue(magnitudes, n_prune).values

    def torch_global(fresh: torch.nn.Module) -> None:
        params = [(t.module, t.param_name) for t in prunable_targets(fresh)]
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=args.sparsity)

    load_before = _machine_load()
    times: dict[str, list[float]] = {
        "ours": [],
        "kthvalue": [],
        "global_unstructured": [],
        "mask_kthvalue": [],
        "mask_sorted": [],
    }
    for i in range(warmup + repeats):
        fresh = copy.deepcopy(model)  # copied outside the timed region
        runs = {
            "ours": ours,
            "kthvalue": kthvalue,
            "global_unstructured": lambda f=fresh: torch_global(f),
            "mask_kthvalue": lambda: keep_mask_kthvalue(magnitudes, n_prune),
            "mask_sorted": lambda: keep_mask_sorted(magnitudes, n_prune),
        }
        names = list(runs)
        shift = i % len(names)
        names = names[shift:] + names[:shift]  # rotate the order: no method always runs first
        sample = {name: _timed(runs[name], device) for name in names}
        if i >= warmup:
            for name, seconds in sample.items():
                times[name].append(seconds)

    # correctness: exact count, and the same weights as torch's global_unstructured
    keep = torch.cat([m.reshape(-1) for m in ours()])
    torch_keep = torch.cat([t.mask().reshape(-1).bool() for t in prunable_targets(fresh)])
    pruned_ours, pruned_torch = int((~keep).sum()), int((~torch_keep).sum())
    same = int((keep == torch_keep).sum())
    paths_agree = torch.equal(
        keep_mask_kthvalue(magnitudes, n_prune), keep_mask_sorted(magnitudes, n_prune)
    )

    med = {name: statistics.median(ts) for name, ts in times.items()}
    ratio_kth = med["ours"] / med["kthvalue"]
    ratio_torch = med["global_unstructured"] / med["ours"]
    print("bench_global_magnitude: ResNet-18 (CIFAR form), global magnitude pruning")
    print(f"  torch {torch.__version__}, python {platform.python_version()}")
    print(f"  device {_device_label(device)}, threads {torch.get_num_threads()}")
    print(f"  weights {n_weights:,} (conv+linear), sparsity {args.sparsity}, pruned {n_prune:,}")
    print(f"  before: {load_before}")
    print(f"  after:  {_machine_load()}")
    print(f"  repeats {repeats} (after {warmup} warm-up), interleaved, order rotated")
    print(f"  {'':<20} {'median':>10}  {'min':>10}")
    for name, ts in times.items():
        print(f"  {name:<20} {med[name]:8.4f} s  {min(ts):8.4f} s")
    verdict = "PASS" if ratio_kth <= TARGET_RATIO else "FAIL"
    print(f"  ours / kthvalue            {ratio_kth:6.2f}x  (target <= {TARGET_RATIO}: {verdict})")
    print(f"  global_unstructured / ours {ratio_torch:6.2f}x")
    ratio_paths = med["mask_kthvalue"] / med["mask_sorted"]
    print(
        f"  mask_kthvalue / mask_sorted {ratio_paths:6.2f}x  (keep_mask_exact uses "
        f"{'sorted' if device.type == 'cuda' else 'kthvalue'} on {device.type}); "
        f"identical masks: {paths_agree}"
    )
    print(
        f"  check: ours pruned {pruned_ours:,}, torch pruned {pruned_torch:,}, "
        f"masks agree on {same:,} / {n_weights:,}"
    )
    if pruned_ours != n_prune:
        print("  ERROR: ours did not prune the exact count", file=sys.stderr)
        return 1
    if not paths_agree:
        print("  ERROR: the two threshold paths gave different masks", file=sys.stderr)
        return 1
    return 1 if args.check and verdict == "FAIL" else 0


if __name__ == "__main__":
    sys.exit(main())
