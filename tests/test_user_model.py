"""Your model, your weights, your data: a torchvision ResNet-18 trained by the test on an image
folder it writes (three classes of the bundled digits, as 16x16 RGB PNGs), saved as a state
dict, then swept by one command (``python -m sweeps``) from that checkpoint: the dense baseline
is the checkpoint evaluated (the test's own evaluation, exactly), never trained.

The command, the study module and the Python API are the README's own (section "Your own model
and data"), read from it and run here, so the documentation cannot drift from the code."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shlex
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from sklearn.datasets import load_digits

README = Path(__file__).resolve().parent.parent / "README.md"
CLASSES = (0, 1, 2)
SIZE = 16  # pixels; the digits' 8x8 doubled


def readme_examples() -> list[tuple[str, str]]:
    """(language, code) of each fenced block of the README's "Your own model and data"."""
    section = README.read_text().split("## Your own model and data\n", 1)[1].split("\n## ")[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, re.S)


def test_readme_has_the_three_ways():
    assert [lang for lang, _ in readme_examples()] == ["bash", "python", "python"]


def write_image_folder(root) -> None:
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.png``: every digit of CLASSES,
    a fifth of each class in val, as 16x16 RGB (grey repeated) PNGs."""
    digits = load_digits()
    for label in CLASSES:
        images = digits.images[digits.target == label]
        for i, image in enumerate(images):
            split = "val" if i % 5 == 0 else "train"
            folder = root / split / f"digit{label}"
            folder.mkdir(parents=True, exist_ok=True)
            grey = (image * 255 / 16).round().astype(np.uint8).repeat(2, 0).repeat(2, 1)
            Image.fromarray(np.stack([grey] * 3, -1)).save(folder / f"{i}.png")


def read_split(root, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 N x 3 x 16 x 16, labels) of a split, read with PIL, classes in sorted order."""
    xs, ys = [], []
    for label, name in enumerate(sorted(os.listdir(root / split))):
        for file in sorted(os.listdir(root / split / name)):
            xs.append(np.asarray(Image.open(root / split / name / file).convert("RGB")))
            ys.append(label)
    return torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous(), torch.tensor(ys)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The image folder, a ResNet-18 trained on it (inputs standardised by the training split's
    per-channel mean and std) saved as a state dict, and its accuracy on val."""
    root = tmp_path_factory.mktemp("user")
    write_image_folder(root / "digits3")
    x_train, y_train = read_split(root / "digits3", "train")
    x_val, y_val = read_split(root / "digits3", "val")
    scaled = x_train.float() / 255
    mean, std = (
        scaled.mean(dim=(0, 2, 3)).view(1, 3, 1, 1),
        scaled.std(dim=(0, 2, 3)).view(1, 3, 1, 1),
    )

    def standard(x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255 - mean) / std

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=len(CLASSES))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(5):
        model.train()
        order = torch.randperm(len(y_train))
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            loss = torch.nn.functional.cross_entropy(model(standard(x_train[idx])), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = int((model(standard(x_val)).argmax(1) == y_val).sum()) / len(y_val)
    checkpoint = root / "ck.pt"
    torch.save(model.state_dict(), checkpoint)
    return root, checkpoint, accuracy, len(y_train), len(y_val)


def test_image_folder_written_as_the_convention_says(trained):
    root, _, accuracy, n_train, n_val = trained
    assert sorted(os.listdir(root / "digits3" / "train")) == ["digit0", "digit1", "digit2"]
    # 178 + 182 + 177 digits; every fifth (the 0th, 5th, ...) in val: 36 + 37 + 36
    assert (n_train, n_val) == (428, 109)
    assert accuracy > 0.8  # the checkpoint learned something worth pruning (chance: 1/3)


@pytest.mark.slow
def test_sweep_of_a_torchvision_checkpoint_on_an_image_folder(trained, tmp_path, ray_tmpdir):
    from sweeps.__main__ import STUDY
    from sweeps.runner import main

    root, checkpoint, accuracy, _, _ = trained
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    command = shlex.split(readme_examples()[0][1].replace("\\\n", " "))
    assert command[:3] == ["python", "-m", "sweeps"]
    paths = {"imagefolder:digits3": f"imagefolder:{root / 'digits3'}", "ck.pt": str(checkpoint)}
    argv = [paths.get(a, a) for a in command[3:]] + [
        "--tracking-uri", uri, "--experiment", "user", "--cache-dir", str(tmp_path / "cache"),
        "--storage-path", str(tmp_path / "ray"), "--results-dir", str(tmp_path / "results"),
    ]  # fmt: skip
    assert main(STUDY, argv) == 0
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["user"])
    parent = runs[runs["tags.mlflow.parentRunId"].isna()].iloc[0]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    # the dense baseline is the checkpoint, evaluated by the sweep as the test evaluated it
    assert parent["metrics.dense_test_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert parent["tags.baseline_source"] == "checkpoint"
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert parent["tags.baseline_checkpoint"] == f"sha256:{digest}"
    assert parent["metrics.baseline_seconds"] < 30  # evaluated, not trained
    assert parent["params.models"] == "torchvision:resnet18"
    assert len(parent["params.normalize_mean"].split(",")) == 3
    assert len(children) == 2 and (children["status"] == "FINISHED").all()
    for metric in ("test_accuracy", "sparsity", "nonzero_params", "total_params", "size_bytes",
                   "flops", "latency_ms", "permanent_test_accuracy"):  # fmt: skip
        assert children[f"metrics.{metric}"].notna().all(), metric
    assert (children["params.retrain"] == "finetune").all()  # nothing to rewind into
    total = sum(p.numel() for p in torchvision.models.resnet18(num_classes=3).parameters())
    assert (children["metrics.total_params"] == total).all()
    names = sorted(children["tags.mlflow.runName"])
    assert all(n.startswith("resnet18_") for n in names), names  # the source's name, no colon
    cached = [f.name for f in (tmp_path / "cache").glob("*.pt")]  # one file, a plain name
    assert len(cached) == 1 and cached[0].startswith("imagefolder_digits3-torchvision_resnet18-")
    results = tmp_path / "results" / parent["tags.sweep"]
    for name in ("pareto.csv", "pareto.png", "report.md", "results.csv"):
        assert (results / name).is_file(), name


def test_readme_study_module(trained, tmp_path, monkeypatch):
    from sweeps.cli import resolve_spec
    from sweeps.runner import check_model_on_data

    root, _, _, _, _ = trained
    monkeypatch.chdir(root)  # the README's paths are relative: digits3/, ck.pt
    namespace: dict = {"__name__": "mystudy"}
    exec(readme_examples()[1][1], namespace)
    study = namespace["STUDY"]
    spec = resolve_spec(study, ["--init-checkpoint", "ck.pt", "--quick",
                                "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])  # fmt: skip
    assert spec.models == ("torchvision:resnet18",) and spec.dataset == "imagefolder:digits3"
    assert spec.num_samples == 2 and spec.checkpoint_sha256.startswith("sha256:")
    from prune_core.data import load_dataset

    check_model_on_data(spec, load_dataset(spec.dataset))  # builds, answers, takes the weights
    assert study.command == "python mystudy.py"


def test_readme_python_api(trained, monkeypatch):
    root, _, accuracy, _, _ = trained
    monkeypatch.chdir(root)
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(readme_examples()[2][1], namespace)
    result = namespace["result"]
    assert result.dense_test_accuracy == pytest.approx(accuracy, abs=1e-12)
    # global magnitude over every conv and linear weight: round(0.8 * N) of N zeroed
    weights = [m.weight for m in result.model.modules()
               if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]  # fmt: skip
    total = sum(w.numel() for w in weights)
    assert sum(int((w == 0).sum()) for w in weights) == round(0.8 * total)
    assert printed.getvalue().split()[0] == repr(result.dense_test_accuracy)
