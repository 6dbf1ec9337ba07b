"""Tests for prune_core.data: real loaders on tiny files, digits, batching, augmentation.

No test downloads anything: the MNIST and CIFAR-10 files are written in their real on-disk formats
(IDX, pickled batches), and the download-failure test points the proxy at a closed local port.
"""

from __future__ import annotations

import inspect
import pickle
import socket
import struct
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from prune_core.data import (
    DATASETS,
    DatasetUnavailable,
    TensorData,
    load_cifar10,
    load_dataset,
    random_crop_flip,
)

# --------------------------------------------------------------------------- MNIST-format files

MNIST_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def _write_idx_images(path: Path, images: np.ndarray) -> None:
    # IDX: magic 0x00000803 (= 2051: unsigned byte, 3 dimensions), then each size as a big-endian
    # int32, then the pixels row-major
    n, rows, cols = images.shape
    path.write_bytes(struct.pack(">iiii", 2051, n, rows, cols) + images.astype(np.uint8).tobytes())


def _write_idx_labels(path: Path, labels: np.ndarray) -> None:
    # magic 0x00000801 (= 2049: unsigned byte, 1 dimension)
    path.write_bytes(struct.pack(">ii", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def _mnist_images(n: int, offset: int) -> np.ndarray:
    """Image k has pixel (r, c) = (28 * r + c + offset + 7 * k) % 256: every pixel is known."""
    k = np.arange(n).reshape(n, 1, 1)
    r = np.arange(28).reshape(1, 28, 1)
    c = np.arange(28).reshape(1, 1, 28)
    return ((28 * r + c + offset + 7 * k) % 256).astype(np.uint8)


MNIST_CONTENT = {
    # (train labels, test labels, pixel offset): different per dataset, so a loader reading the
    # other dataset's folder gives the wrong values
    "mnist": ([3, 1, 4, 1, 5], [9, 2, 6], 0),
    "fashion_mnist": ([0, 9, 8, 7], [6, 5], 100),
}


def _write_mnist_family(root: Path, name: str) -> None:
    train_labels, test_labels, offset = MNIST_CONTENT[name]
    raw = root / MNIST_FOLDERS[name] / "raw"
    raw.mkdir(parents=True)
    _write_idx_images(raw / "train-images-idx3-ubyte", _mnist_images(len(train_labels), offset))
    _write_idx_labels(raw / "train-labels-idx1-ubyte", np.array(train_labels))
    test_images = _mnist_images(len(test_labels), offset + 50)
    _write_idx_images(raw / "t10k-images-idx3-ubyte", test_images)
    _write_idx_labels(raw / "t10k-labels-idx1-ubyte", np.array(test_labels))


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_mnist_family_reads_idx_files_exactly(tmp_path: Path, name: str) -> None:
    # both datasets in one root: each loader must read its own folder
    for n in MNIST_FOLDERS:
        _write_mnist_family(tmp_path, n)
    train_labels, test_labels, offset = MNIST_CONTENT[name]

    data = load_dataset(name, root=str(tmp_path), download=False)

    assert data.name == name
    assert data.x_train.shape == (len(train_labels), 1, 28, 28)
    assert data.x_test.shape == (len(test_labels), 1, 28, 28)
    assert data.x_train.dtype == torch.uint8 and data.y_train.dtype == torch.int64
    assert data.y_test.dtype == torch.int64
    assert data.y_train.tolist() == train_labels
    assert data.y_test.tolist() == test_labels
    expected_train = torch.from_numpy(_mnist_images(len(train_labels), offset)).unsqueeze(1)
    expected_test = torch.from_numpy(_mnist_images(len(test_labels), offset + 50)).unsqueeze(1)
    assert torch.equal(data.x_train, expected_train)
    assert torch.equal(data.x_test, expected_test)
    # hand-checked pixels: image 1, row 2, column 3 = 28*2 + 3 + offset + 7
    assert data.x_train[1, 0, 2, 3].item() == (66 + offset) % 256
    assert data.x_train[0, 0, 0, 0].item() == offset
    assert (data.num_classes, data.pixel_max, data.augment) == (10, 255.0, False)
    assert (data.in_channels, data.image_size) == (1, 28)


def test_mnist_family_normalisation_constants(tmp_path: Path) -> None:
    for n in MNIST_FOLDERS:
        _write_mnist_family(tmp_path, n)
    mnist = load_dataset("mnist", root=str(tmp_path), download=False)
    fashion = load_dataset("fashion_mnist", root=str(tmp_path), download=False)
    assert (mnist.mean, mnist.std) == ((0.1307,), (0.3081,))
    assert (fashion.mean, fashion.std) == ((0.2860,), (0.3530,))
    x, _ = next(mnist.batches("test", batch_size=1))
    # pixel (0, 0) of test image 0 is 50 (offset 0 + 50)
    assert x[0, 0, 0, 0].item() == pytest.approx((50 / 255 - 0.1307) / 0.3081, abs=1e-6)


def test_new_loaders_are_registered_with_the_cifar10_signature() -> None:
    assert {"mnist", "fashion_mnist", "cifar10", "digits"} <= set(DATASETS)
    expected = inspect.signature(load_cifar10)
    for name in ("mnist", "fashion_mnist"):
        sig = inspect.signature(DATASETS.get(name))
        assert [(p.name, p.default) for p in sig.parameters.values()] == [
            (p.name, p.default) for p in expected.parameters.values()
        ]


# --------------------------------------------------------------------------- CIFAR-10 batches


class _Py2Str(bytes):
    """A Python 2 ``str``; pickled the way Python 2 did, as SHORT_BINSTRING."""


class _Py2Pickler(pickle._Pickler):
    """Writes ``_Py2Str`` keys as Python 2 did, so the batch loads like the official files.

    Python 3 decodes such strings with ``pickle.load(..., encoding=...)`` into ``str``.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + bytes(obj))

    dispatch[_Py2Str] = _save_py2_str


def _cifar_rows(n: int, offset: int) -> np.ndarray:
    """Row k is (j + offset + 11 * k) % 256 for j in 0..3071 (R plane, G plane, B plane)."""
    j = np.arange(3072).reshape(1, 3072)
    k = np.arange(n).reshape(n, 1)
    return ((j + offset + 11 * k) % 256).astype(np.uint8)


CIFAR_TRAIN = [
    # (labels, pixel offset) for data_batch_1..5; batches of different sizes on purpose
    ([0, 1], 0),
    ([2], 10),
    ([3, 4, 5], 20),
    ([6, 7], 30),
    ([8, 9], 40),
]
CIFAR_TEST = ([9, 0, 5], 200)


def _write_cifar(root: Path, key_style: str, files: list[str] | None = None) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i + 1}": spec for i, spec in enumerate(CIFAR_TRAIN)}
    batches["test_batch"] = CIFAR_TEST
    for fname, (labels, offset) in batches.items():
        if files is not None and fname not in files:
            continue
        entry = {
            "batch_label": f"{fname} of 5",
            "labels": labels,
            "data": _cifar_rows(len(labels), offset),
            "filenames": [f"img_{i}.png" for i in range(len(labels))],
        }
        with open(folder / fname, "wb") as fh:
            if key_style == "py2":  # like the official files: Python 2 str keys, protocol 2
                _Py2Pickler(fh, protocol=2).dump({_Py2Str(k.encode()): v for k, v in entry.items()})
            else:  # what Python 3 tools write: bytes keys
                pickle.dump({k.encode(): v for k, v in entry.items()}, fh)


@pytest.mark.parametrize("key_style", ["py2", "bytes"])
def test_cifar10_reads_pickled_batches_exactly(tmp_path: Path, key_style: str) -> None:
    _write_cifar(tmp_path, key_style)
    # the two styles really differ on disk: official-style keys load as str, the others as bytes
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as fh:
        keys = set(pickle.load(fh, encoding="latin1"))
    names = {"batch_label", "labels", "data", "filenames"}
    assert keys == (names if key_style == "py2" else {k.encode() for k in names})

    data = load_dataset("cifar10", root=str(tmp_path), download=False)

    assert data.x_train.shape == (10, 3, 32, 32) and data.x_test.shape == (3, 3, 32, 32)
    assert data.x_train.dtype == torch.uint8 and data.y_train.dtype == torch.int64
    assert data.y_train.tolist() == list(range(10))  # batches 1..5 in order
    assert data.y_test.tolist() == [9, 0, 5]
    expected = np.concatenate([_cifar_rows(len(lab), off) for lab, off in CIFAR_TRAIN])
    assert torch.equal(data.x_train, torch.from_numpy(expected.reshape(10, 3, 32, 32)))
    expected_test = _cifar_rows(3, 200).reshape(3, 3, 32, 32)
    assert torch.equal(data.x_test, torch.from_numpy(expected_test))
    # hand-checked layout: the first 1024 values are the red plane, row-major
    row = _cifar_rows(1, 0)[0]
    assert data.x_train[0, 0, 0, 1].item() == row[1] == 1
    assert data.x_train[0, 1, 0, 0].item() == row[1024] == 1024 % 256
    assert data.x_train[0, 2, 1, 0].item() == row[2048 + 32] == (2048 + 32) % 256
    # sample 2 is the first of data_batch_2 (offset 10, k = 0)
    assert data.x_train[2, 0, 0, 0].item() == 10
    assert data.augment is True
    assert (data.num_classes, data.pixel_max) == (10, 255.0)
    assert (data.mean, data.std) == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def test_cifar10_augments_train_batches_only(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "py2")
    data = load_dataset("cifar10", root=str(tmp_path), download=False)
    g = torch.Generator().manual_seed(0)
    x_train, _ = next(data.batches("train", batch_size=10, generator=g))
    x_test, _ = next(data.batches("test", batch_size=3, generator=g))
    assert x_train.shape == (10, 3, 32, 32)
    assert not torch.equal(x_train, data.normalize(data.x_train))
    assert torch.equal(x_test, data.normalize(data.x_test))


# --------------------------------------------------------------------------- missing datasets


def _expected_folder(root: Path, name: str) -> Path:
    if name == "cifar10":
        return root / "cifar-10-batches-py"
    return root / MNIST_FOLDERS[name] / "raw"


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_missing_dataset_without_download_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # a relative root: the message must still give the absolute folder
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset(name, root="nowhere", download=False)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(_expected_folder(tmp_path / "nowhere", name).resolve()) in msg
    assert "download is off" in msg and "turn download on" in msg
    assert "--quick" in msg
    assert not (tmp_path / "nowhere").exists()  # nothing was created or fetched


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_incomplete_dataset_counts_as_missing(tmp_path: Path, name: str) -> None:
    if name == "cifar10":
        _write_cifar(tmp_path, "py2", files=["data_batch_1", "test_batch"])
    else:
        _write_mnist_family(tmp_path, name)
        (_expected_folder(tmp_path, name) / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetUnavailable, match="download is off"):
        load_dataset(name, root=str(tmp_path), download=False)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch):
    """Every HTTP(S) request goes through a proxy on a local port that refuses connections.

    The socket is bound but never listens, so connecting fails at once (ECONNREFUSED) and no
    other process can take the port while the test runs.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    proxy = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, proxy)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    # urlopen caches one opener, with the proxies of its first call, for the whole process: drop
    # it so that the proxy above is read (another test may have called urlopen already)
    monkeypatch.setattr(urllib.request, "_opener", None)
    yield
    sock.close()


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_failed_download_is_one_clear_line(tmp_path: Path, offline: None, name: str) -> None:
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset(name, root=str(tmp_path), download=True)
    msg = str(info.value)
    assert "\n" not in msg  # torchvision's MNIST error spans several lines
    assert str(_expected_folder(tmp_path, name).resolve()) in msg
    assert "download failed" in msg and "Connection refused" in msg
    assert "--quick" in msg
    assert info.value.__cause__ is not None  # the original error stays in the traceback


# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> TensorData:
    return load_dataset("digits")


def test_digits_shapes_and_values(digits: TensorData) -> None:
    assert digits.x_train.shape == (1437, 1, 8, 8)
    assert digits.x_test.shape == (360, 1, 8, 8)
    assert digits.y_train.shape == (1437,) and digits.y_test.shape == (360,)
    assert digits.x_train.dtype == torch.uint8 and digits.y_train.dtype == torch.int64
    assert digits.num_classes == 10 and digits.pixel_max == 16.0
    assert set(digits.y_train.tolist()) == set(range(10)) == set(digits.y_test.tolist())
    for x in (digits.x_train, digits.x_test):
        assert x.min().item() == 0 and x.max().item() == 16
    # the stratified split keeps every class in the test set (each has 35 to 37 of 360)
    counts = torch.bincount(digits.y_test, minlength=10)
    assert counts.min().item() >= 35 and counts.sum().item() == 360


def test_digits_split_does_not_depend_on_seed(digits: TensorData) -> None:
    other = load_dataset("digits", seed=7)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(digits, field), getattr(other, field))
    assert (digits.mean, digits.std) == (other.mean, other.std)


def test_digits_batches_are_normalised_and_cover_the_split_once(digits: TensorData) -> None:
    g = torch.Generator().manual_seed(3)
    batches = list(digits.batches("train", batch_size=100, shuffle=True, generator=g))
    assert [len(y) for _, y in batches] == [100] * 14 + [37]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.dtype == torch.float32
    # mean/std are the training pixels' own, so normalised training pixels are standardised
    assert x.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert x.std().item() == pytest.approx(1.0, abs=1e-3)
    # undo the normalisation and compare (image, label) multisets: each sample exactly once
    pixels = (x * digits.std[0] + digits.mean[0]) * 16
    assert torch.allclose(pixels, pixels.round(), atol=1e-3)
    seen = torch.cat([pixels.round().long().flatten(1), y.view(-1, 1)], dim=1)
    truth = torch.cat([digits.x_train.long().flatten(1), digits.y_train.view(-1, 1)], dim=1)
    seen_u, seen_n = torch.unique(seen, dim=0, return_counts=True)
    truth_u, truth_n = torch.unique(truth, dim=0, return_counts=True)
    assert torch.equal(seen_u, truth_u) and torch.equal(seen_n, truth_n)
    # shuffled: the first batch is not the first 100 samples
    assert not torch.equal(batches[0][1], digits.y_train[:100])


def test_unshuffled_batches_are_in_order_and_exact(digits: TensorData) -> None:
    x, y = next(digits.batches("test", batch_size=50))
    expected = (digits.x_test[:50].float() / 16.0 - digits.mean[0]) / digits.std[0]
    assert torch.allclose(x, expected)
    assert torch.equal(y, digits.y_test[:50])
    assert digits.augment is False  # so train batches are not augmented either
    x_tr, _ = next(digits.batches("train", batch_size=50))
    assert torch.allclose(
        x_tr, (digits.x_train[:50].float() / 16.0 - digits.mean[0]) / digits.std[0]
    )


def test_seeded_shuffle_is_reproducible(digits: TensorData) -> None:
    def epoch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        parts = list(digits.batches("train", batch_size=64, shuffle=True, generator=g))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    x1, y1 = epoch(11)
    x2, y2 = epoch(11)
    _, y3 = epoch(12)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(y1, y3)


def test_batches_rejects_unknown_split(digits: TensorData) -> None:
    with pytest.raises(ValueError, match="split='val'"):
        next(digits.batches("val", batch_size=8))


def test_batches_yield_every_index_once_per_epoch() -> None:
    # pixel value = sample index, so every yielded sample names itself
    n = 23
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    data = TensorData("idx", x, torch.arange(n), x, torch.arange(n), 23, 255.0, (0.0,), (1.0,))
    g = torch.Generator().manual_seed(0)
    for _ in range(2):  # two epochs from one generator: each a full permutation, and different
        xs, ys = zip(*data.batches("train", batch_size=5, shuffle=True, generator=g), strict=True)
        got = (torch.cat(xs) * 255).round().long()
        assert [len(b) for b in ys] == [5, 5, 5, 5, 3]
        assert torch.equal(got[:, 0, 0, 0], torch.cat(ys))  # x and y stay paired
        assert sorted(torch.cat(ys).tolist()) == list(range(n))
    first = torch.cat(
        [b[1] for b in data.batches("train", 5, True, torch.Generator().manual_seed(0))]
    )
    assert not torch.equal(first, torch.arange(n))


# --------------------------------------------------------------------------- augmentation


def test_random_crop_flip_keeps_shape_and_dtype() -> None:
    x = torch.randn(5, 3, 32, 32)
    out = random_crop_flip(x, padding=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.equal(out, x)


def test_random_crop_flip_outputs_are_shifted_or_flipped_copies() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    # padding 1 gives the 4x4 image [[0,0,0,0], [0,1,2,0], [0,3,4,0], [0,0,0,0]]; its 2x2 crops,
    # by hand, keyed by (row offset, column offset)
    crops = {
        (0, 0): [[0, 0], [0, 1]],  # zero offset: the image shifted down and right by 1
        (0, 1): [[0, 0], [1, 2]],
        (0, 2): [[0, 0], [2, 0]],
        (1, 0): [[0, 1], [0, 3]],
        (1, 1): [[1, 2], [3, 4]],  # the image itself
        (1, 2): [[2, 0], [4, 0]],
        (2, 0): [[0, 3], [0, 0]],
        (2, 1): [[3, 4], [0, 0]],
        (2, 2): [[4, 0], [0, 0]],
    }
    # the un-flipped zero-offset crop equals a shifted copy of the image
    shifted = torch.zeros(2, 2)
    shifted[1:, 1:] = x[0, 0, :1, :1]
    assert crops[(0, 0)] == shifted.tolist()
    allowed = {str(c) for c in crops.values()} | {str([r[::-1] for r in c]) for c in crops.values()}
    assert len(allowed) == 18

    out = random_crop_flip(
        x.expand(400, 1, 2, 2), padding=1, generator=torch.Generator().manual_seed(0)
    )
    seen = {str(o[0].tolist()) for o in out.long()}
    assert seen == allowed  # only valid crops (horizontal flips only), and every one of them
    assert str([[3, 4], [1, 2]]) not in seen  # never flipped vertically


def test_random_crop_flip_is_reproducible_and_padding_zero_only_flips() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    a = random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(5))
    b = random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    src = x.repeat(20, 1, 1, 1)
    out = random_crop_flip(src, padding=0, generator=torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, s.flip(2)) for o, s in zip(out, src, strict=True)]
    unflipped = [torch.equal(o, s) for o, s in zip(out, src, strict=True)]
    assert all(f or u for f, u in zip(flipped, unflipped, strict=True))  # no shift without padding
    assert any(flipped) and any(unflipped)


# --------------------------------------------------------------------------- TensorData.to


def test_to_cpu_keeps_contents() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8, generator=g)
    # every field differs from its default, so a field dropped on the way would show
    data = TensorData(
        name="tiny",
        x_train=x,
        y_train=torch.tensor([0, 1, 2, 0, 1, 2]),
        x_test=x[:2].flip(0),
        y_test=torch.tensor([2, 1]),
        num_classes=3,
        pixel_max=255.0,
        mean=(0.1, 0.2, 0.3),
        std=(0.4, 0.5, 0.6),
        augment=True,
    )
    for device in ("cpu", torch.device("cpu")):
        moved = data.to(device)
        assert moved is not data and moved.device == torch.device("cpu")
        for field in ("x_train", "y_train", "x_test", "y_test"):
            assert torch.equal(getattr(moved, field), getattr(data, field))
            assert getattr(moved, field).dtype == getattr(data, field).dtype
        for field in ("name", "num_classes", "pixel_max", "mean", "std", "augment"):
            assert getattr(moved, field) == getattr(data, field)
    # and it really moves: the meta device holds shapes only
    meta = data.to(torch.device("meta"))
    assert meta.device.type == "meta" and meta.x_train.shape == data.x_train.shape
    assert data.device.type == "cpu"  # the original is untouched
