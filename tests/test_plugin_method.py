"""A pruning method in one place: this file alone registers a new method with an option of its
own (``blockwise``: whole blocks of ``block_size`` consecutive weights, ranked by their L1 norm)
and a search space that proposes it, and the project's own code runs it: ``run_pruning``, a real
quick sweep (through ``--plugin``, in every trial process), and the one-line refusal of a bad
option value. Nothing under prune_core/, sweeps/ or search_spaces/ names it.

The registration happens in ``register()``, not at import, so collecting this file leaves the
registries as they were for the other tests; the fixture registers for a test and removes it
after, and a sweep's trials call it through ``--plugin FILE:register``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import mlflow
import pytest
import torch

from prune_core.config import ExperimentConfig, ModelConfig, PruneConfig, TrainConfig
from prune_core.data import load_dataset
from prune_core.experiment import model_for, run_pruning, seed_everything
from prune_core.methods import PRUNING_METHODS, MethodOption, int_at_least, register_method
from prune_core.pruning import keep_mask_exact
from search_spaces import SPACES, suggest_method_options

METHOD = "blockwise"
SPACE = "blockwise_space"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# conv and linear weights of the CNN on 8x8 digits: 1*16*9, 16*32*9, 128*128, 128*10
CNN_WEIGHTS = (144, 4_608, 16_384, 1_280)


def blockwise_masks(targets, sparsity, generator=None, block_size=4):
    """Per tensor, the round(s * blocks) blocks of ``block_size`` consecutive weights (flat
    order) with the lowest L1 norm are pruned; already-pruned blocks score lowest."""
    masks = []
    for t in targets:
        flat = t.tensor().abs().reshape(-1)
        pad = (-flat.numel()) % block_size
        blocks = torch.nn.functional.pad(flat, (0, pad)).view(-1, block_size).sum(1)
        keep = keep_mask_exact(blocks, round(sparsity * blocks.numel()))
        masks.append(keep.repeat_interleave(block_size)[: flat.numel()].view_as(t.tensor()))
    return masks


def blockwise_space(trial, quick=False):
    """Two target sparsities, the method's own option from its entry's domain, 1 epoch."""
    trial.suggest_categorical("target_sparsity", (0.5, 0.75))
    suggest_method_options(trial, METHOD)
    return {"method": METHOD, "finetune_epochs": 1, "lr": 0.01}


def register() -> None:
    """Register the method and its space (idempotent: every trial process calls it)."""
    if METHOD not in PRUNING_METHODS:
        option = MethodOption("block_size", 4, int_at_least(1), "weights per block", search=(4, 8))
        register_method(METHOD, options=(option,))(blockwise_masks)
    if SPACE not in SPACES:
        SPACES.register(SPACE)(blockwise_space)


@pytest.fixture
def plugin():
    register()
    yield
    PRUNING_METHODS.unregister(METHOD)
    SPACES.unregister(SPACE)


def zero_blocks(block_size: int, target: float) -> int:
    """Weights the method zeroes in the CNN: whole blocks, round(s * blocks) per tensor."""
    return sum(block_size * round(target * math.ceil(n / block_size)) for n in CNN_WEIGHTS)


def test_zero_blocks_by_hand():
    # block 8: 18, 576, 2048, 160 blocks -> 14 (13.5 rounds to even), 432, 1536, 120 pruned
    assert zero_blocks(8, 0.75) == 8 * (14 + 432 + 1536 + 120) == 16_816
    # block 4: 36, 1152, 4096, 320 blocks -> 27, 864, 3072, 240
    assert zero_blocks(4, 0.75) == 4 * (27 + 864 + 3072 + 240) == 16_812


def test_run_pruning_applies_the_method_with_its_option(plugin):
    data = load_dataset("digits", seed=0)
    cfg = ExperimentConfig(
        model=ModelConfig("cnn"),
        train=TrainConfig(epochs=1),
        prune=PruneConfig(method=METHOD, target_sparsity=0.75, block_size=8, finetune_epochs=0),
    )
    seed_everything(0)
    dense = model_for(cfg, data).state_dict()
    result = run_pruning(cfg, data, dense, log=lambda _: None)
    weights = [
        m.weight for m in result.model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == zero_blocks(8, 0.75) == 16_816  # block 4 would zero 16,812
    assert result.final["sparsity"] == pytest.approx(16_816 / sum(CNN_WEIGHTS), abs=1e-12)
    for w in weights:  # every aligned block of 8 is all zero or has no zero at all
        rows = (w.reshape(-1, 8) == 0).sum(1)
        assert set(rows.tolist()) <= {0, 8}


def test_bad_option_value_is_refused_in_one_line(plugin, tmp_path):
    with pytest.raises(ValueError, match=r"prune.block_size=0 is invalid .*an integer >= 1"):
        PruneConfig(method=METHOD, block_size=0)
    cmd = [sys.executable, "-m", "prune_core", "--plugin", f"{__file__}:register", "--method",
           METHOD, "--block-size", "0", "--cache-dir", str(tmp_path / "c")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "python -m prune_core: error: --block-size 0 is invalid for method blockwise; "
        "allowed: an integer >= 1"
    ]
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_quick_sweep_runs_the_method_end_to_end(plugin, tmp_path, ray_tmpdir):
    from sweeps.resnet18_iterative import STUDY
    from sweeps.runner import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = [
        "--quick", "--model", "cnn", "--num-samples", "2", "--baseline-epochs", "2",
        "--space", SPACE, "--plugin", f"{__file__}:register", "--tracking-uri", uri,
        "--experiment", "plugin", "--cache-dir", str(tmp_path / "baselines"),
        "--storage-path", str(tmp_path / "ray"), "--results-dir", str(tmp_path / "results"),
        "--max-concurrent", "2",
    ]  # fmt: skip
    assert main(STUDY, argv) == 0
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["plugin"])
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(children) == 2 and (children["status"] == "FINISHED").all()
    for _, row in children.iterrows():
        assert row["params.method"] == METHOD
        block, target = int(row["params.block_size"]), float(row["params.target_sparsity"])
        assert block in (4, 8) and target in (0.5, 0.75)
        name = f"cnn_blockwise_block_size{block}_{round(100 * target)}perc_oneshot1"
        assert row["tags.mlflow.runName"] == name
        expected = zero_blocks(block, target) / sum(CNN_WEIGHTS)
        assert row["metrics.sparsity"] == pytest.approx(expected, abs=1e-12)
    parent = runs[runs["tags.mlflow.parentRunId"].isna()].iloc[0]
    assert parent["params.plugins"] == f"{__file__}:register"


def test_no_project_file_names_the_method():
    for folder in ("prune_core", "sweeps", "search_spaces"):
        for name in os.listdir(os.path.join(REPO, folder)):
            if name.endswith(".py"):
                with open(os.path.join(REPO, folder, name)) as fh:
                    assert METHOD not in fh.read(), (folder, name)
