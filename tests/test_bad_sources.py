"""The user's model, checkpoint and data refused before any run or file, as every bad input is
(``tests/test_bad_inputs.py``): exit 2, one line naming the value and what is allowed, no MLflow
store, no cache, no Ray. One table, run in-process through ``python -m sweeps``'s main."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_bad_inputs import assert_refused, call, fill, run_count, tree

import sweeps.runner
from prune_core.models import build_model
from sweeps.__main__ import STUDY

USER_PACKAGE = """
import torch
from torch import nn


def broken(num_classes):
    raise RuntimeError("no weights here")


def wide(num_classes):  # expects 3x32x32 inputs, not the digits' 1x8x8
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))


def seven(in_channels, image_size):  # ignores num_classes
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, 7))


def not_a_model():
    return "a string"
"""


def png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """A user package, checkpoints and image folders, each broken in one way, outside the
    folder whose tree a row checks."""
    root = tmp_path_factory.mktemp("sources")
    (root / "userpkg").mkdir()
    (root / "userpkg" / "__init__.py").write_text("")
    (root / "userpkg" / "models.py").write_text(USER_PACKAGE)
    (root / "corrupt.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save(build_model("mlp", 1, 10, 8).state_dict(), root / "mlp.pt")
    torch.save({"weights": [1, 2, 3]}, root / "list.pt")
    png(root / "noval" / "train" / "a" / "0.png")
    png(root / "emptyclass" / "train" / "a" / "0.png")
    (root / "emptyclass" / "train" / "b").mkdir()
    png(root / "emptyclass" / "val" / "a" / "0.png")
    png(root / "emptyclass" / "val" / "b" / "0.png")
    png(root / "otherclasses" / "train" / "a" / "0.png")
    png(root / "otherclasses" / "val" / "b" / "0.png")
    (root / "noclasses" / "train").mkdir(parents=True)
    (root / "noclasses" / "val").mkdir()
    return root


SOURCE_ROWS = [
    pytest.param(["--model", "nosuchpkg_xyz.models:build"],
                 ["--model", "'nosuchpkg_xyz.models:build'", "cannot import nosuchpkg_xyz.models"],
                 id="unknown-module"),
    pytest.param(["--model", "userpkg.models:nope"],
                 ["--model", "userpkg.models has no function 'nope'"], id="missing-function"),
    pytest.param(["--model", "userpkg.models:broken"],
                 ["--model", "'userpkg.models:broken' raised RuntimeError: no weights here"],
                 id="builder-raises"),
    pytest.param(["--model", "userpkg.models:not_a_model"],
                 ["--model", "returned str, not a torch nn.Module"], id="builder-returns-str"),
    pytest.param(["--model", "userpkg.models:wide"],
                 ["--model userpkg.models:wide rejects the data", "(1, 8, 8)"],
                 id="model-rejects-shape"),
    pytest.param(["--model", "userpkg.models:seven"],
                 ["--model userpkg.models:seven", "(2, 7)", "must answer (2, 10)"],
                 id="model-wrong-classes"),
    pytest.param(["--model", "torchvision:nosuchnet"],
                 ["--model", "torchvision has no model 'nosuchnet'"], id="torchvision-unknown"),
    pytest.param(["--model", "mlp", "--init-checkpoint", "{src}/none.pt"],
                 ["--init-checkpoint", "{src}/none.pt: no such file"], id="checkpoint-missing"),
    pytest.param(["--model", "mlp", "--init-checkpoint", "{src}/corrupt.pt"],
                 ["--init-checkpoint", "corrupt.pt: not a readable PyTorch state dict"],
                 id="checkpoint-corrupt"),
    pytest.param(["--model", "mlp", "--init-checkpoint", "{src}/list.pt"],
                 ["--init-checkpoint", "not a state dict of tensors"], id="checkpoint-not-state"),
    pytest.param(["--model", "cnn", "--init-checkpoint", "{src}/mlp.pt"],
                 ["--init-checkpoint", "does not fit the model: missing ", "unexpected"],
                 id="checkpoint-mismatched"),
    pytest.param(["--dataset", "imagefolder:{src}/noval"],
                 ["--dataset", "no folder {src}/noval/val", "DIR/train/<class>/"],
                 id="imagefolder-no-val"),
    pytest.param(["--dataset", "imagefolder:{src}/nothere"],
                 ["--dataset", "no folder {src}/nothere/train"], id="imagefolder-missing"),
    pytest.param(["--dataset", "imagefolder:{src}/emptyclass"],
                 ["--dataset", "class folder(s) ['b'] of {src}/emptyclass/train are empty"],
                 id="imagefolder-empty-class"),
    pytest.param(["--dataset", "imagefolder:{src}/noclasses"],
                 ["--dataset", "{src}/noclasses/train has no class folders"],
                 id="imagefolder-no-classes"),
    pytest.param(["--dataset", "imagefolder:{src}/otherclasses"],
                 ["--dataset", "different classes (['a'] against ['b'])"],
                 id="imagefolder-different-classes"),
    pytest.param(["--image-size", "0"], ["--image-size 0", ">= 1"], id="image-size-0"),
    pytest.param(["--num-classes", "5"], ["--num-classes 5", "digits has 10 classes"],
                 id="num-classes-disagree"),
    pytest.param(["--num-classes", "1"], ["--num-classes 1", ">= 2"], id="num-classes-1"),
    pytest.param(["--normalize", "0.5"], ["--normalize '0.5'", "MEAN,STD"], id="normalize-one"),
    pytest.param(["--normalize", "0.5,0"], ["--normalize '0.5,0'", "std > 0"],
                 id="normalize-zero-std"),
    pytest.param(["--normalize", "0.5,0.5,0.5/0.2,0.2,0.2"],
                 ["--normalize", "one mean and one std per channel (1 for dataset digits)"],
                 id="normalize-3-channels-on-1"),
]  # fmt: skip


@pytest.fixture
def sandbox(tmp_path, monkeypatch, sources):
    """tmp_path as the working folder, the user package importable, Ray refusing to start."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(sources))
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("bad input reached ray.init")

    monkeypatch.setattr(ray, "init", no_ray)
    yield tmp_path
    sys.modules.pop("userpkg.models", None)
    sys.modules.pop("userpkg", None)


@pytest.mark.parametrize("args, needles", SOURCE_ROWS)
def test_sweep_refuses_bad_sources(sandbox, sources, capfd, args, needles):
    db = sandbox / "mlflow.db"
    before = tree(sandbox)
    argv = ["--quick", "--tracking-uri", f"sqlite:///{db}", *fill(args, src=sources)]
    status, out, err = call(lambda a: sweeps.runner.main(STUDY, a), argv, capfd)
    assert_refused(status, out, err, fill(needles, src=sources))
    assert run_count(db) == 0
    assert tree(sandbox) == before  # no store, baseline, Ray folder or results folder left
