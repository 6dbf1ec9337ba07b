"""A user's own package, written by tests into a folder of theirs (not this repository): a model
builder and a dataset function, for the sweeps that take ``package.module:function`` sources.
Not a test module (pytest does not collect it)."""

from __future__ import annotations

from pathlib import Path

MODELS = '''
from torch import nn


def build(in_channels, num_classes, image_size):
    """A small MLP of the user's own, for any image size."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_channels * image_size * image_size, 64), nn.ReLU(),
        nn.Linear(64, num_classes),
    )
'''

DATA = '''
import torch
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset


def load():
    """The bundled digits as two torch Datasets of (1 x 8 x 8 float image in [0, 1], label)."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(digits.target)
    return TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])
'''


def write_user_package(root: Path, name: str = "userpkg") -> Path:
    """``root/<name>/`` with ``models.py`` (``build``) and ``data.py`` (``load``); returns root."""
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(MODELS)
    (package / "data.py").write_text(DATA)
    return root
