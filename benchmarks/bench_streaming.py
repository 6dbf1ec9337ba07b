"""Streamed against in-memory data: one training epoch on the same images, time and peak RSS.

The images (``--n-train`` + ``--n-test`` synthetic 1x28x28 uint8 images by default: a random
pattern per class plus noise) are written once to .npy files; a torch ``Dataset`` reads them by
index from a memory map, as a user's Dataset reads files from disk. The pair goes through
``prune_core.sources.tensor_data_from`` twice, in separate child processes so that each has its
own peak RSS:

- **memory**: the budget (``PRUNE_DATA_MEMORY_BYTES``) above the data: held as uint8 tensors
  (``TensorData``; loading reads every image and stacks them);
- **streamed**: the budget 0: a ``StreamedData`` (loading is one pass over each split for the
  statistics; batches come through a ``DataLoader`` with ``--workers`` processes).

Each child builds the model (``--model``, default ``cnn``), loads the data (timed; its peak RSS
is read right after), trains
``--epochs`` epochs with ``prune_core.train.train_epochs`` (each epoch timed; the first streamed
epoch includes starting the workers) and evaluates once (timed). Peak RSS is the child's VmHWM
(/proc/self/status): the training process; the loader workers are separate processes whose
peaks are printed beside it (most of a forked worker's resident pages are shared with its
parent, so the two are not added). The children run ``--rounds`` times, alternating, and the
median of each figure is reported; the ratios are streamed over memory: epoch wall time, epoch
CPU seconds (the training process and its loader workers, user + system, from /proc: on a shared
machine the wall time also measures how much CPU other jobs left, and the streamed run, having
more processes, is given a larger share), and peak RSS.

Run: ``python benchmarks/bench_streaming.py [--n-train 20000 --workers 2 --threads 1]``
(``--device cuda`` on a GPU machine)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import Dataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prune_core.models import build_model  # noqa: E402
from prune_core.sources import tensor_data_from  # noqa: E402
from prune_core.streaming import (  # noqa: E402
    MEMORY_BUDGET_ENV,
    WORKERS_ENV,
    StreamedData,
    default_workers,
)
from prune_core.train import evaluate, train_epochs  # noqa: E402

CLASSES = 10


class NpyImages(Dataset):
    """Images and labels in two .npy files, read one index at a time from a memory map (opened
    on first read, so a pickled or forked copy opens its own)."""

    def __init__(self, images: str, labels: str):
        self.images, self.labels = images, labels
        self._x: np.ndarray | None = None
        self._y: np.ndarray | None = None
        self.n = len(np.load(labels, mmap_mode="r"))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._x is None:
            self._x = np.load(self.images, mmap_mode="r")
            self._y = np.load(self.labels, mmap_mode="r")
        return torch.from_numpy(np.array(self._x[index])), int(self._y[index])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_x": None, "_y": None}


def write_data(folder: str, n_train: int, n_test: int, shape: tuple[int, ...]) -> None:
    """Synthetic learnable images (class pattern + Gaussian noise of sd 40 grey levels)."""
    rng = np.random.default_rng(0)
    patterns = rng.uniform(0, 255, size=(CLASSES, *shape))
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, CLASSES, size=n)
        x = np.clip(patterns[y] + rng.normal(0, 40, size=(n, *shape)), 0, 255).astype(np.uint8)
        np.save(os.path.join(folder, f"{split}_x.npy"), x)
        np.save(os.path.join(folder, f"{split}_y.npy"), y.astype(np.int64))


def status_kib(pid: int | str, field: str) -> int:
    """A field of /proc/<pid>/status in KiB (0 when the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def child_pids() -> list[int]:
    """This process's live children (the loader workers), from /proc/self/task/*/children."""
    pids = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return pids


def cpu_s(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) each of ``pids`` has used (/proc/<pid>/stat)."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return out


def child(args: argparse.Namespace) -> None:
    """One measurement: load, train, evaluate; print one JSON line."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    folder = args.folder
    train = NpyImages(f"{folder}/train_x.npy", f"{folder}/train_y.npy")
    test = NpyImages(f"{folder}/test_x.npy", f"{folder}/test_y.npy")
    shape = tuple(np.load(f"{folder}/train_x.npy", mmap_mode="r").shape[1:])
    torch.manual_seed(0)  # the same initial weights in both modes: the accuracies agree
    model = build_model(args.model, shape[0], CLASSES, shape[1]).to(device)
    rss_before = status_kib("self", "VmRSS")
    start = time.perf_counter()
    data = tensor_data_from("bench:data", train, test).to(device)
    load_s = time.perf_counter() - start
    load_peak = status_kib("self", "VmHWM")  # the loading's own peak, before any training
    assert isinstance(data, StreamedData) == (args.child == "streamed"), type(data).__name__
    epochs, epochs_cpu = [], []
    for epoch in range(args.epochs):
        start, cpu_start = time.perf_counter(), time.process_time()
        workers_before = cpu_s(child_pids())
        train_epochs(model, data, 1, lr=0.05, batch_size=args.batch_size, seed=epoch,
                     log=lambda _msg: None)  # fmt: skip
        if device.type == "cuda":
            torch.cuda.synchronize()
        epochs.append(time.perf_counter() - start)
        # CPU seconds of the epoch, this process and its loader workers: on a shared machine
        # less distorted by other jobs than the wall time (more processes get more CPU share)
        workers_after = cpu_s(child_pids())
        spent = sum(t - workers_before.get(pid, 0.0) for pid, t in workers_after.items())
        epochs_cpu.append(time.process_time() - cpu_start + spent)
    start = time.perf_counter()
    accuracy = evaluate(model, data)
    eval_s = time.perf_counter() - start
    workers = [status_kib(pid, "VmHWM") for pid in child_pids()]
    print(json.dumps({
        "mode": args.child, "load_s": load_s, "epoch_s": epochs, "eval_s": eval_s,
        "epoch_cpu_s": epochs_cpu,
        "accuracy": accuracy, "rss_before_mib": rss_before / 1024,
        "load_peak_mib": load_peak / 1024,
        "peak_rss_mib": status_kib("self", "VmHWM") / 1024,
        "workers": len(workers), "worker_peak_mib": max(workers, default=0) / 1024,
    }))  # fmt: skip


def run_child(args: argparse.Namespace, mode: str, folder: str) -> dict:
    env = dict(os.environ)
    env[MEMORY_BUDGET_ENV] = str(2**40) if mode == "memory" else "0"
    env.pop(WORKERS_ENV, None)
    if args.workers is not None:
        env[WORKERS_ENV] = str(args.workers)
    command = [sys.executable, os.path.abspath(__file__), "--child", mode, "--folder", folder,
               "--model", args.model, "--epochs", str(args.epochs), "--device", args.device,
               "--batch-size", str(args.batch_size), "--threads", str(args.threads)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{mode} child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def pressure() -> str:
    """Load average and CPU pressure (Linux PSI): other processes distort CPU timings."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        with open("/proc/pressure/cpu") as f:
            some = f.readline().split()
        return f"load average {load}; cpu pressure {some[1]} {some[2]}"
    except OSError:
        return f"load average {load}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--n-test", type=int, default=4_000)
    parser.add_argument("--shape", default="1,28,28", help="C,H,W of the images")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=None,
                        help="loader workers per split (default: default_workers)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each mode")
    parser.add_argument("--child", choices=["memory", "streamed"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    shape = tuple(int(v) for v in args.shape.split(","))
    torch.set_num_threads(args.threads)  # as the children do: default_workers counts them
    workers = default_workers(torch.device(args.device)) if args.workers is None else args.workers
    print("bench_streaming: one training epoch, streamed (DataLoader) against in-memory (uint8)")
    print(f"  torch {torch.__version__}, python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, device {args.device}, torch threads {args.threads}")  # fmt: skip
    if args.device.startswith("cuda"):
        print(f"  gpu {torch.cuda.get_device_name(0)}")
    data_mib = (np.prod(shape) * (args.n_train + args.n_test)) / 2**20
    print(f"  data: {args.n_train} train + {args.n_test} test images {shape} uint8 "
          f"({data_mib:.1f} MiB); model {args.model}, batch {args.batch_size}, "
          f"workers {workers}, epochs {args.epochs}, rounds {args.rounds}")  # fmt: skip
    print(f"  before: {pressure()}")
    results: dict[str, list[dict]] = {"memory": [], "streamed": []}
    with tempfile.TemporaryDirectory() as folder:
        write_data(folder, args.n_train, args.n_test, shape)
        for round_ in range(args.rounds):
            order = ["memory", "streamed"] if round_ % 2 == 0 else ["streamed", "memory"]
            for mode in order:
                results[mode].append(run_child(args, mode, folder))
    print(f"  after:  {pressure()}")

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    def epoch(mode: str, which: int) -> float:
        return statistics.median(r["epoch_s"][which] for r in results[mode])

    print(f"  {'':10}{'load s':>9}{'epoch 1 s':>11}{'last epoch s':>14}{'eval s':>8}"
          f"{'acc':>7}{'RSS before':>12}{'load peak':>11}{'peak RSS':>10}"
          f"{'worker peak':>13}")  # fmt: skip
    for mode in results:
        print(f"  {mode:10}{median(mode, 'load_s'):9.2f}{epoch(mode, 0):11.2f}"
              f"{epoch(mode, -1):14.2f}{median(mode, 'eval_s'):8.2f}"
              f"{median(mode, 'accuracy'):7.3f}{median(mode, 'rss_before_mib'):10.0f} M"
              f"{median(mode, 'load_peak_mib'):9.0f} M"
              f"{median(mode, 'peak_rss_mib'):8.0f} M"
              f"{median(mode, 'worker_peak_mib'):11.0f} M x{results[mode][0]['workers']}"
              )  # fmt: skip
    ratio = statistics.median(
        s["epoch_s"][-1] / m["epoch_s"][-1]
        for s, m in zip(results["streamed"], results["memory"], strict=True)
    )
    first = statistics.median(
        s["epoch_s"][0] / m["epoch_s"][0]
        for s, m in zip(results["streamed"], results["memory"], strict=True)
    )
    cpu = statistics.median(
        s["epoch_cpu_s"][-1] / m["epoch_cpu_s"][-1]
        for s, m in zip(results["streamed"], results["memory"], strict=True)
    )
    for mode in results:
        print(f"  {mode}: CPU seconds of the last epoch (process + workers) "
              f"{statistics.median(r['epoch_cpu_s'][-1] for r in results[mode]):.2f}")  # fmt: skip
    peak = median("streamed", "peak_rss_mib") / median("memory", "peak_rss_mib")
    print(f"  streamed / memory epoch time: {ratio:.2f}x (last epoch), {first:.2f}x (first epoch)")
    print(f"  streamed / memory CPU seconds of the last epoch: {cpu:.2f}x")
    print(f"  streamed / memory peak RSS of the training process: {peak:.2f}x")


if __name__ == "__main__":
    main()
