"""Datasets as tensors on the training device, batched and augmented on whole batches.

Images are kept as uint8 (0..``pixel_max``) so CIFAR-10 fits in 150 MB and travels cheaply through
Ray's object store; ``batches`` turns each batch into normalised float32 on the device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .registry import Registry

DATASETS: Registry = Registry("dataset")


class DatasetUnavailable(RuntimeError):
    """The dataset's files are not on disk and could not be downloaded."""


@dataclass
class TensorData:
    """A classification dataset held as four tensors plus what a model needs to adapt to it."""

    name: str
    x_train: torch.Tensor  # uint8, (N, C, H, W)
    y_train: torch.Tensor  # int64, (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    pixel_max: float  # value of a white pixel in x_*: 255 for images, 16 for sklearn digits
    mean: tuple[float, ...]  # per channel, in [0, 1] units, after dividing by pixel_max
    std: tuple[float, ...]
    augment: bool = False  # random crop (4-pixel padding) + horizontal flip, for CIFAR

    @property
    def in_channels(self) -> int:
        """Number of input channels."""
        return self.x_train.shape[1]

    @property
    def image_size(self) -> int:
        """Height (= width) of the images in pixels."""
        return self.x_train.shape[2]

    @property
    def device(self) -> torch.device:
        """Device the tensors live on."""
        return self.x_train.device

    def to(self, device: torch.device | str) -> TensorData:
        """A copy with every tensor moved to ``device``."""
        moved = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_test", "y_test")}
        return TensorData(**{**self.__dict__, **moved})

    def size(self, split: str) -> int:
        """Number of samples in ``split`` ('train' or 'test')."""
        return (self.y_train if split == "train" else self.y_test).shape[0]

    def example(self, n: int) -> torch.Tensor:
        """The first ``n`` test images, normalised, on the data's device."""
        return self.normalize(self.x_test[:n])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> float32 batch, scaled to [0, 1] and standardised per channel."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float() / self.pixel_max - mean) / std

    def batches(
        self,
        split: str,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield normalised ``(x, y)`` batches of ``split`` ('train' or 'test').

        Training batches are augmented when ``self.augment`` is set; test batches never are.
        """
        if split not in ("train", "test"):
            raise ValueError(f"split={split!r} is invalid; allowed: train, test")
        x_all, y_all = (
            (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        )
        n = x_all.shape[0]
        if shuffle:
            order = torch.randperm(n, generator=generator).to(x_all.device)
        else:
            order = torch.arange(n, device=x_all.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x = self.normalize(x_all[idx])
            if split == "train" and self.augment:
                x = random_crop_flip(x, padding=4, generator=generator)
            yield x, y_all[idx]


def random_crop_flip(
    x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop after zero padding and random horizontal flip, on a whole batch at once."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device).view(1, h)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device).view(1, w)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chan = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    out = padded[batch, chan, rows, cols]
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    return torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)


def load_dataset(
    name: str,
    root: str = "data",
    download: bool = True,
    seed: int = 0,
    image_size: int = 0,
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> TensorData:
    """Load a dataset onto the CPU (move it with ``.to(device)``): a registered name, or a source
    (``imagefolder:DIR``, ``package.module:function``; see ``prune_core.sources``) with its
    images resized to ``image_size`` (0: as they are); a source too large for the memory budget
    comes back as a ``streaming.StreamedData``, which has the same interface. ``normalize`` =
    (mean, std) per channel replaces the training split's statistics (those a checkpoint was
    trained with)."""
    if ":" in name:
        from .sources import load_data_source

        data = load_data_source(name, image_size)
    else:
        data = DATASETS.get(name)(root=root, download=download, seed=seed)
    if normalize is not None:
        mean, std = (tuple(float(v) for v in values) for values in normalize)
        if len(mean) == len(std) == 1:  # one value for every channel
            mean, std = mean * data.in_channels, std * data.in_channels
        if len(mean) != data.in_channels or len(std) != data.in_channels:
            raise ValueError(
                f"normalize {mean}/{std}: give one mean and one std per channel "
                f"({data.in_channels} for dataset {name})"
            )
        data = dataclasses.replace(data, mean=mean, std=std)  # a TensorData or a StreamedData
    return data


@DATASETS.register("digits")
def load_digits(root: str = "data", download: bool = True, seed: int = 0) -> TensorData:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images; no download).

    The train/test split is fixed (seed 0, 20% test, stratified) whatever the training seed, so
    every run is scored on the same 360 images.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = bunch.images.astype("uint8")  # values 0..16
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, bunch.target, test_size=0.2, random_state=0, stratify=bunch.target
    )
    x_train = torch.from_numpy(x_tr).unsqueeze(1)
    # mean/std of the training pixels in [0, 1] units, computed once (the split is fixed)
    scaled = x_train.float() / 16.0
    return TensorData(
        name="digits",
        x_train=x_train,
        y_train=torch.from_numpy(y_tr).long(),
        x_test=torch.from_numpy(x_te).unsqueeze(1),
        y_test=torch.from_numpy(y_te).long(),
        num_classes=10,
        pixel_max=16.0,
        mean=(scaled.mean().item(),),
        std=(scaled.std().item(),),
    )


@DATASETS.register("synthetic")
def load_synthetic(
    root: str = "data",
    download: bool = True,
    seed: int = 0,
    n_train: int = 256,
    n_test: int = 64,
    channels: int = 1,
    size: int = 8,
    num_classes: int = 4,
) -> TensorData:
    """Random learnable data for tests: each class is a fixed random pattern plus noise."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, channels, size, size, generator=g) * 255

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, num_classes, (n,), generator=g)
        noise = torch.randn(n, channels, size, size, generator=g) * 40
        return (prototypes[y] + noise).clamp(0, 255).to(torch.uint8), y

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    return TensorData(
        name="synthetic",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        pixel_max=255.0,
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
    )


CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _unavailable(
    name: str, folder: str, download: bool, err: Exception | None
) -> DatasetUnavailable:
    """The one-line error for a dataset whose files are not in ``folder``.

    ``folder`` is where the files were looked for (not the root), so the message says exactly
    where to put them.
    """
    import os

    where = os.path.abspath(folder)
    if download:
        # torchvision's MNIST joins one error per mirror with newlines; a CLI prints one line
        detail = " ".join(f"{type(err).__name__}: {err}".split()) if err else ""
        if len(detail) > 300:
            detail = detail[:297] + "..."
        why = f"download failed ({detail})" if detail else "download failed"
        return DatasetUnavailable(
            f"dataset {name!r} not found in {where} and {why}; "
            "put the files there, or use the bundled offline digits "
            "(--dataset digits; sweeps: --quick)"
        )
    return DatasetUnavailable(
        f"dataset {name!r} not found in {where} and download is off; "
        "turn download on, or use the bundled offline digits (--dataset digits; sweeps: --quick)"
    )


@DATASETS.register("cifar10")
def load_cifar10(root: str = "data", download: bool = True, seed: int = 0) -> TensorData:
    """CIFAR-10 from ``root/cifar-10-batches-py`` (downloaded and md5-checked by torchvision).

    The pickled batches are read directly rather than through ``torchvision.datasets.CIFAR10``,
    whose md5 check rejects anything but the official files: a real download is still verified
    by torchvision, and small files in the same format (as the tests write) can be read.
    """
    import os
    import pickle

    import numpy as np

    folder = os.path.join(root, "cifar-10-batches-py")
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    if not all(os.path.exists(os.path.join(folder, f)) for f in [*train_files, "test_batch"]):
        if not download:
            raise _unavailable("cifar10", folder, download, None)
        try:
            from torchvision.datasets import CIFAR10

            CIFAR10(root, train=True, download=True)
        except Exception as err:  # offline: URLError, socket errors, ...
            raise _unavailable("cifar10", folder, download, err) from err

    def read(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for f in files:
            with open(os.path.join(folder, f), "rb") as fh:
                entry = pickle.load(fh, encoding="latin1")
            # the official batches are Python 2 pickles whose keys load as str; batches pickled
            # by Python 3 from bytes keys (b"data", as other CIFAR tools write) load as bytes
            entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
            xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
        return torch.from_numpy(np.concatenate(xs)), torch.tensor(ys, dtype=torch.long)

    x_train, y_train = read(train_files)
    x_test, y_test = read(["test_batch"])
    return TensorData(
        name="cifar10",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=10,
        pixel_max=255.0,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        augment=True,
    )


MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _load_mnist_family(
    name: str,
    class_name: str,
    root: str,
    download: bool,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> TensorData:
    """Read an MNIST-format dataset through ``torchvision.datasets.<class_name>``.

    torchvision reads the raw IDX files from ``root/<class_name>/raw`` (and, when downloading,
    checks the archives' md5). Whether the files are there is checked here first, so that a
    missing dataset is told apart from a corrupt one (which torchvision reports as it is).
    """
    import os

    import torchvision.datasets as tvd

    cls = getattr(tvd, class_name)
    folder = os.path.join(root, class_name, "raw")
    if not all(os.path.exists(os.path.join(folder, f)) for f in _IDX_FILES):
        if not download:
            raise _unavailable(name, folder, download, None)
        try:
            cls(root, train=True, download=True)  # fetches both splits
        except Exception as err:  # offline: URLError, RuntimeError listing each mirror, ...
            raise _unavailable(name, folder, download, err) from err
    train = cls(root, train=True, download=False)
    test = cls(root, train=False, download=False)
    return TensorData(
        name=name,
        # torchvision gives (N, 28, 28) uint8 images and int64 labels; add the channel axis
        x_train=train.data.unsqueeze(1).contiguous(),
        y_train=train.targets.long(),
        x_test=test.data.unsqueeze(1).contiguous(),
        y_test=test.targets.long(),
        num_classes=10,
        pixel_max=255.0,
        mean=mean,
        std=std,
    )


@DATASETS.register("mnist")
def load_mnist(root: str = "data", download: bool = True, seed: int = 0) -> TensorData:
    """MNIST (60,000 train / 10,000 test, 1x28x28) from ``root/MNIST/raw`` via torchvision.

    ``seed`` is unused: the split is the official one.
    """
    return _load_mnist_family("mnist", "MNIST", root, download, MNIST_MEAN, MNIST_STD)


@DATASETS.register("fashion_mnist")
def load_fashion_mnist(root: str = "data", download: bool = True, seed: int = 0) -> TensorData:
    """Fashion-MNIST (60,000 / 10,000, 1x28x28) from ``root/FashionMNIST/raw`` via torchvision.

    ``seed`` is unused: the split is the official one.
    """
    return _load_mnist_family(
        "fashion_mnist", "FashionMNIST", root, download, FASHION_MNIST_MEAN, FASHION_MNIST_STD
    )
