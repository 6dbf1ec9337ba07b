"""Datasets too large for memory: streamed through a ``DataLoader`` with ``TensorData``'s interface.

``sources.tensor_data_from`` holds a pair of torch Datasets in memory as uint8 tensors when their
images fit ``memory_budget()`` (the fast path: a batch is one index into a tensor) and builds a
``StreamedData`` over them otherwise. A ``StreamedData`` keeps only the two Datasets; each batch is
read by index through a ``DataLoader`` (worker processes, pinned memory towards CUDA, workers kept
alive between epochs), turned into uint8 in the workers, then into normalised float on the target
device in this process, and augmented there on the whole batch with the same ``random_crop_flip``
as ``TensorData``. Shuffles and crops are drawn from the caller's generator exactly as
``TensorData.batches`` draws them, so the two paths yield the same batches from the same seed.

The budget: ``PRUNE_DATA_MEMORY_BYTES`` (bytes) when set, else the smaller of 2 GiB and a quarter of
the machine's RAM. It caps what one process holds; Ray copies the data into its object store and
every concurrent trial process holds its own copy, hence a cap well below the RAM.

``StreamedData`` pickles (Ray ships it to the trials through its object store) by pickling the
user's two Datasets: they must pickle, and their module must import where the trials run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader

from .data import TensorData, random_crop_flip
from .sources import SourceError, _as_uint8

MEMORY_BUDGET_ENV = "PRUNE_DATA_MEMORY_BYTES"
MEMORY_BUDGET_CAP = 2 * 1024**3  # bytes; see the module docstring for why a cap
WORKERS_ENV = "PRUNE_DATA_WORKERS"
MAX_WORKERS = 4  # loader processes per StreamedData split: decoding small images rarely needs more
SCAN_BATCH = 256  # images per batch of the loading pass (statistics, labels, shapes)


def memory_budget() -> int:
    """Bytes of uint8 images and int64 labels a dataset may take to be held in memory.

    ``PRUNE_DATA_MEMORY_BYTES`` when set (an integer number of bytes; 0 streams everything), else
    ``min(2 GiB, a quarter of the physical RAM)`` (2 GiB where the RAM cannot be read).
    """
    value = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    if value:
        try:
            budget = int(value)
        except ValueError:
            budget = -1
        if budget < 0:
            raise ValueError(
                f"{MEMORY_BUDGET_ENV}={value!r} is invalid; allowed: a number of bytes >= 0"
            )
        return budget
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return MEMORY_BUDGET_CAP
    return min(MEMORY_BUDGET_CAP, ram // 4)


def default_workers(device: torch.device | None = None) -> int:
    """Loader worker processes: ``PRUNE_DATA_WORKERS`` when set (0 reads in this process), else
    ``min(4, the CPU count)`` for a pass that trains nothing (``device`` None) or feeds a GPU,
    and for CPU training ``min(4, the cores torch's threads leave)``: workers that compete with
    the training threads for the same cores make an epoch slower, not faster (on 2 cores with
    2 torch threads an MLP epoch over 100,000 28x28 images took 1.8x the in-memory time with
    no worker and 6-10x with 2; benchmarks/README.md)."""
    value = os.environ.get(WORKERS_ENV, "").strip()
    if value:
        if not value.isdigit():
            raise ValueError(f"{WORKERS_ENV}={value!r} is invalid; allowed: an integer >= 0")
        return int(value)
    cores = os.cpu_count() or 1
    if device is not None and device.type == "cpu":
        cores -= torch.get_num_threads()
    return max(0, min(MAX_WORKERS, cores))


def estimated_bytes(image_shape: tuple[int, ...], count: int) -> int:
    """Bytes ``count`` samples take held in memory: uint8 images of ``image_shape`` plus an int64
    label each (estimated from one sample; nothing else is read)."""
    return (math.prod(image_shape) + 8) * count


class Uint8Images:
    """A user's Dataset of ``(image, label)`` seen as ``(uint8 C x H x W tensor, int label)``.

    Runs in the loader's workers: the conversion (``sources._as_uint8``) and the shape check
    happen there, off the training process. Every image must have ``shape``; another shape is a
    ``SourceError`` naming the index (the loader collates one shape only).
    """

    def __init__(self, dataset: Any, shape: tuple[int, int, int], spec: str, split: str):
        self.dataset, self.shape, self.spec, self.split = dataset, shape, spec, split

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[index]
        image = _as_uint8(image)
        if tuple(image.shape) != self.shape:
            raise SourceError(
                f"dataset {self.spec!r}: {self.split} image {index} is {tuple(image.shape)}, "
                f"image 0 is {self.shape}; give --image-size to resize them to one square size"
            )
        return image, int(label)


class SplitView:
    """One split's images (``part="x"``) or labels (``"y"``), read by index on demand.

    Answers what code written for ``TensorData``'s tensors asks of them (``len``, ``.shape``,
    ``[:n]``: the first n items stacked, on the data's device) without ever holding the split;
    iterating over it is refused, since that would read the whole split one item at a time.
    """

    def __init__(self, images: Uint8Images, part: str, device: torch.device):
        self.images, self.part, self.device = images, part, device

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> torch.Size:
        """(N, C, H, W) for images, (N,) for labels, as the tensor would have."""
        n = len(self.images)
        return torch.Size((n, *self.images.shape) if self.part == "x" else (n,))

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8 if self.part == "x" else torch.int64

    def __getitem__(self, key: int | slice) -> torch.Tensor:
        if not isinstance(key, int | slice):
            raise TypeError(
                f"a streamed split takes an int or a slice, not {type(key).__name__}; "
                "stream it with batches()"
            )
        positions = range(len(self.images))[key]  # negative and out-of-range ints as a list's
        if isinstance(positions, int):
            x, y = self.images[positions]
            return (x if self.part == "x" else torch.tensor(y)).to(self.device)
        items = [self.images[i] for i in positions]
        if self.part == "y":
            return torch.tensor([y for _, y in items], dtype=torch.int64).to(self.device)
        if not items:
            return torch.empty((0, *self.images.shape), dtype=torch.uint8, device=self.device)
        return torch.stack([x for x, _ in items]).to(self.device)

    def __iter__(self) -> Iterator[Any]:
        raise TypeError("a streamed split is not iterated item by item; stream it with batches()")


class _Order:
    """The sampler of a kept loader: the epoch's index order, replaced before each epoch."""

    def __init__(self) -> None:
        self.indices: list[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclasses.dataclass
class StreamedData:
    """A classification dataset read from two torch Datasets batch by batch (see the module
    docstring); the same interface as ``TensorData``, the same batches from the same generator.

    ``train``/``test`` are the user's Datasets of ``(image, label)``; ``image_shape`` is
    (C, H, W); ``workers`` the loader processes per split (None: ``default_workers(device)``
    where the batches are drawn, so a trial on another node counts its own CPUs and threads).
    """

    name: str
    train: Any
    test: Any
    num_classes: int
    pixel_max: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_shape: tuple[int, int, int]
    augment: bool = False
    device: torch.device = torch.device("cpu")
    workers: int | None = None
    # (split, batch_size) -> a DataLoader kept with its worker processes between epochs
    _loaders: dict[tuple[str, int], DataLoader] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _busy: set[tuple[str, int]] = dataclasses.field(
        default_factory=set, init=False, repr=False, compare=False
    )

    normalize = TensorData.normalize  # the same arithmetic, so both paths give the same floats

    @classmethod
    def from_datasets(
        cls,
        spec: str,
        train: Any,
        test: Any,
        classes: int | None = None,
        workers: int | None = None,
    ) -> StreamedData:
        """Stream ``train``/``test`` (torch Datasets of ``(image, label)``, images as
        ``sources`` allows): one pass over each split through the loader checks every image's
        shape and reads the labels (``classes`` when not given: the largest label + 1), and the
        training pass computes the per-channel mean and std (exact integer sums of the uint8
        pixels, in [0, 1] units; std with Bessel's correction like ``torch.std``, at least
        1e-6). Nothing is kept but the Datasets. Errors are one-line ``SourceError``s."""
        shapes = {}
        for split, dataset in (("train", train), ("val", test)):
            if len(dataset) == 0:
                raise SourceError(f"dataset {spec!r}: its {split} split is empty")
            shapes[split] = tuple(_as_uint8(dataset[0][0]).shape)
        if shapes["train"] != shapes["val"]:
            raise SourceError(
                f"dataset {spec!r}: train images are {shapes['train']}, val images "
                f"{shapes['val']}; both splits need one shape"
            )
        shape = shapes["train"]
        if shape[1] != shape[2]:
            raise SourceError(f"dataset {spec!r}: images are {shape[1:]}, not square; "
                              "give --image-size")  # fmt: skip
        n_workers = default_workers() if workers is None else workers
        sums, squares, top_train = _scan(Uint8Images(train, shape, spec, "train"), n_workers, spec)
        _, _, top_test = _scan(Uint8Images(test, shape, spec, "val"), n_workers, spec)
        count = len(train) * shape[1] * shape[2]  # pixels per channel
        mean, std = [], []
        for total, square in zip(sums, squares, strict=True):
            mean.append(total / count / 255.0)
            # sum of squared deviations = square - total^2 / count, kept exact in integers
            deviations = square * count - total * total  # = count * (sum of squared deviations)
            std.append(max(math.sqrt(deviations / (count * (count - 1))) / 255.0, 1e-6))
        num_classes = classes or max(top_train, top_test) + 1
        return cls(
            spec, train, test, num_classes, 255.0, tuple(mean), tuple(std), shape, workers=workers
        )

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the kept loaders (their worker processes stay in this process)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_loaders", "_busy")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _loaders={}, _busy=set())

    def close(self) -> None:
        """End the kept loaders' worker processes now (they otherwise last as long as this
        object); the next ``batches`` starts new ones."""
        self._loaders.clear()  # a DataLoader's iterator shuts its workers down when dropped

    @property
    def in_channels(self) -> int:
        """Number of input channels."""
        return self.image_shape[0]

    @property
    def image_size(self) -> int:
        """Height (= width) of the images in pixels."""
        return self.image_shape[1]

    def _images(self, split: str) -> Uint8Images:
        dataset = self.train if split == "train" else self.test
        return Uint8Images(dataset, self.image_shape, self.name, split)

    @property
    def x_train(self) -> SplitView:
        return SplitView(self._images("train"), "x", self.device)

    @property
    def y_train(self) -> SplitView:
        return SplitView(self._images("train"), "y", self.device)

    @property
    def x_test(self) -> SplitView:
        return SplitView(self._images("test"), "x", self.device)

    @property
    def y_test(self) -> SplitView:
        return SplitView(self._images("test"), "y", self.device)

    def size(self, split: str) -> int:
        """Number of samples in ``split`` ('train' or 'test')."""
        return len(self.train if split == "train" else self.test)

    def example(self, n: int) -> torch.Tensor:
        """The first ``n`` test images, normalised, on the data's device."""
        return self.normalize(self.x_test[:n])

    def to(self, device: torch.device | str) -> StreamedData:
        """A copy that yields its batches on ``device`` (the Datasets are shared, not copied)."""
        return dataclasses.replace(self, device=torch.device(device))

    def batches(
        self,
        split: str,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield normalised ``(x, y)`` batches of ``split`` ('train' or 'test') on the device.

        As ``TensorData.batches``: the order is ``torch.randperm(n, generator=generator)`` when
        shuffling, training batches are augmented when ``self.augment`` is set (drawing from
        ``generator`` after each batch), test batches never are.
        """
        if split not in ("train", "test"):
            raise ValueError(f"split={split!r} is invalid; allowed: train, test")
        n = self.size(split)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        pinned = self.device.type == "cuda"
        with self._loader(split, batch_size, generator) as loader:
            loader.batch_sampler.sampler.indices = order.tolist()
            for x, y in loader:
                # from pinned memory the copies overlap with the previous batch's compute
                x = self.normalize(x.to(self.device, non_blocking=pinned))
                if split == "train" and self.augment:
                    x = random_crop_flip(x, padding=4, generator=generator)
                yield x, y.to(self.device, non_blocking=pinned)

    @contextlib.contextmanager
    def _loader(
        self, split: str, batch_size: int, generator: torch.Generator | None
    ) -> Iterator[DataLoader]:
        """The kept loader of (split, batch_size), made on first use; a fresh one (not kept) when
        that one is in use (a pass nested in another pass of the same split and batch size)."""
        key = (split, batch_size)
        loader = self._loaders.get(key)
        kept = key not in self._busy
        if loader is None or not kept:
            workers = default_workers(self.device) if self.workers is None else self.workers
            # the loader draws its workers' base seed from its own generator at every epoch, so
            # neither the caller's generator nor the global one is advanced (the in-memory path
            # draws nothing there): seeded from the caller's seed, not from its stream
            seed = generator.initial_seed() if generator is not None else 0
            loader = DataLoader(
                self._images(split),
                batch_sampler=BatchSampler(_Order(), batch_size, drop_last=False),
                num_workers=workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=workers > 0 and kept,
                generator=torch.Generator().manual_seed(seed),
            )
            if kept:
                self._loaders[key] = loader
        if not kept:
            yield loader
            return
        self._busy.add(key)
        try:
            yield loader
        finally:
            self._busy.discard(key)


def _scan(images: Uint8Images, workers: int, spec: str) -> tuple[list[int], list[int], int]:
    """One pass over a split through a loader: per channel the sum and the sum of squares of
    the uint8 pixels (Python ints, exact), and the largest label."""
    loader = DataLoader(images, batch_size=SCAN_BATCH, num_workers=workers)
    sums = [0] * images.shape[0]
    squares = [0] * images.shape[0]
    top = -1
    try:
        for x, y in loader:
            wide = x.to(torch.int64)  # 255^2 x pixels stays far below 2^63
            sums = [a + b for a, b in zip(sums, wide.sum(dim=(0, 2, 3)).tolist(), strict=True)]
            per = (wide * wide).sum(dim=(0, 2, 3)).tolist()
            squares = [a + b for a, b in zip(squares, per, strict=True)]
            top = max(top, int(y.max()))
    except Exception as err:
        # a worker's error arrives as "Caught X in DataLoader worker ..." plus its traceback,
        # whose last line is the original "module.X: message"
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        last = lines[-1] if lines else type(err).__name__
        prefix = f"dataset {spec!r}: "
        text = last.split("SourceError: ", 1)[1] if "SourceError: " in last else last
        if not text.startswith(prefix):
            text = f"{prefix}reading its {images.split} split: {type(err).__name__}: {text}"
        raise SourceError(text) from None
    return sums, squares, top
