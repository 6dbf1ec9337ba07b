"""Dense baselines cached on disk by the hash of (data, model, training config, seed).

Several sweeps may share one cache folder (on one machine, or on a shared file system): the entry
of one key is trained by exactly one process, under an exclusive lock on ``<entry>.lock``, and the
others wait for the lock and then read what it wrote. A cache file that cannot be read (truncated,
corrupt, written by something else) is reported in one line and trained again.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .checkpoint import cpu_state_dict, load_into, load_state, read_state_dict, save_state
from .config import ExperimentConfig
from .data import TensorData
from .experiment import model_for, train_dense
from .train import evaluate

# How often a process waiting for another one's baseline says that it is still waiting (seconds).
WAIT_NOTICE_S = 30.0


@dataclass
class Baseline:
    """A trained dense model's weights (on the CPU) and its test accuracy."""

    state: dict[str, Any]
    test_accuracy: float
    key: str  # ExperimentConfig.baseline_hash()
    path: str | None  # cache file, if cached
    reused: bool  # True when read from the cache instead of trained
    rewind_states: dict[int, dict[str, Any]] = field(default_factory=dict)  # epoch -> weights
    train_seconds: float = 0.0  # wall time spent training it here (0 when read from the cache)


def baseline_path(cache_dir: str, cfg: ExperimentConfig) -> str:
    """Cache file of the baseline of ``cfg``: ``<cache_dir>/<dataset>-<model>-<hash>.pt``, a
    source's name shortened to its last part (``imagefolder:/data/pets`` -> ``imagefolder_pets``,
    ``torchvision:resnet50`` -> ``torchvision_resnet50``): the hash alone tells entries apart."""
    dataset, model = _file_part(cfg.data.dataset), _file_part(cfg.model.name)
    return os.path.join(cache_dir, f"{dataset}-{model}-{cfg.baseline_hash()}.pt")


def _file_part(name: str) -> str:
    """``name`` as a file-name part: a source's kind and the last part of its value."""
    kind, sep, value = name.partition(":")
    if sep:
        name = f"{kind}_{os.path.basename(value.rstrip('/')) or 'root'}"
    return "".join(c if c.isalnum() or c in "._" else "_" for c in name)


@contextlib.contextmanager
def exclusive_lock(path: str, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    The lock dies with its process, so a crashed trainer never leaves the entry locked. While
    another process holds it, ``log`` hears once every ``WAIT_NOTICE_S`` that this one waits.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log is not None:
                log(f"another process is training this baseline; waiting for {path}")
            waited = 0.0
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(0.5)
                    waited += 0.5
                    if log is not None and waited % WAIT_NOTICE_S == 0:
                        log(f"still waiting for {path} ({waited:.0f} s)")
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class UnreadableCache(ValueError):
    """A baseline cache file that exists but cannot be used; the message says why, in one line."""


def read_cached(path: str, cfg: ExperimentConfig) -> Baseline:
    """The baseline stored at ``path``; raises ``UnreadableCache`` if the file is truncated,
    corrupt, or holds another key's baseline."""
    try:
        blob = load_state(path)
    except Exception as err:  # torch raises RuntimeError, EOFError, pickle/zip errors, ...
        # torch's own text for random bytes advises weights_only=False, wrong for a cache file
        # (and runs to many lines): say what it is, in one line
        raise UnreadableCache(
            f"{type(err).__name__}: not a complete PyTorch file (truncated or overwritten)"
        ) from None
    if not isinstance(blob, dict) or not {"state", "test_accuracy"} <= set(blob):
        raise UnreadableCache("not a baseline file (no state or test_accuracy)")
    if blob.get("key", cfg.baseline_key()) != cfg.baseline_key():
        raise UnreadableCache("it holds the baseline of another configuration")
    rewind = {int(k): v for k, v in blob.get("rewind_states", {}).items()}
    key = cfg.baseline_hash()
    return Baseline(blob["state"], float(blob["test_accuracy"]), key, path, True, rewind)


def load_or_train_baseline(
    cfg: ExperimentConfig,
    data: TensorData,
    cache_dir: str | None,
    log: Callable[[str], None] | None = None,
    checkpoint: str | None = None,
) -> Baseline:
    """Read the baseline of ``cfg`` from ``cache_dir``, or make it and write it there: train it,
    or, with ``checkpoint`` (a state dict whose ``file_sha256`` is ``cfg.train.init_checkpoint``),
    load and evaluate those weights (no training).

    With a cache, the check-make-write sequence runs under the entry's lock, so two sweeps that
    start together make it once; an unreadable entry is reported through ``log`` and made again.
    """
    path = baseline_path(cache_dir, cfg) if cache_dir else None
    if checkpoint is not None:
        make = functools.partial(_from_checkpoint, checkpoint=checkpoint)
    else:
        make = _train
    if path is None:
        return make(cfg, data, None, log)
    with exclusive_lock(path + ".lock", log):
        if os.path.exists(path):
            try:
                return read_cached(path, cfg)
            except UnreadableCache as err:
                if log is not None:
                    log(f"cached baseline {path} is unreadable ({err}); making it again")
        return make(cfg, data, path, log)


def _from_checkpoint(
    cfg: ExperimentConfig,
    data: TensorData,
    path: str | None,
    log: Callable[[str], None] | None,
    checkpoint: str,
) -> Baseline:
    """The baseline of ``cfg`` from the weights in ``checkpoint``, evaluated on ``data``."""
    start = time.perf_counter()
    model = model_for(cfg, data)
    load_into(model, read_state_dict(checkpoint), checkpoint)
    acc = evaluate(model, data)
    if log is not None:
        log(f"dense baseline from checkpoint {checkpoint}: test accuracy {acc:.4f} (not trained)")
    state = cpu_state_dict(model)
    if path:
        save_state({"state": state, "test_accuracy": acc, "key": cfg.baseline_key()}, path)
    return Baseline(state, acc, cfg.baseline_hash(), path, False, {}, time.perf_counter() - start)


def _train(
    cfg: ExperimentConfig, data: TensorData, path: str | None, log: Callable[[str], None] | None
) -> Baseline:
    """Train the baseline of ``cfg`` and, with ``path``, write it there atomically."""
    start = time.perf_counter()
    rewind: dict[int, dict[str, Any]] = {}
    model, acc = train_dense(cfg, data, log=log, snapshots=rewind)
    state = cpu_state_dict(model)
    if path:
        blob = {"state": state, "test_accuracy": acc, "key": cfg.baseline_key()}
        blob["rewind_states"] = {str(k): v for k, v in rewind.items()}
        save_state(blob, path)
    seconds = time.perf_counter() - start
    return Baseline(state, acc, cfg.baseline_hash(), path, False, rewind, seconds)
