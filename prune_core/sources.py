"""The user's own models and data, named by short strings (as DESIGN.md's "Sources" says).

A model is a registered name (``resnet18``), ``torchvision:<name>`` (built by
``torchvision.models.get_model`` with the data's number of classes, and ``weights`` passed
through), or ``package.module:function``, the user's builder, called with those of
``in_channels``, ``num_classes`` and ``image_size`` that it takes as parameters.

A dataset is a registered name (``digits``), ``imagefolder:DIR`` (torchvision's ``ImageFolder``
convention: ``DIR/train/<class>/*.png`` and ``DIR/val/<class>/*.png``, images resized to
``image_size`` square), or ``package.module:function``, called with no arguments and returning a
``TensorData`` or a pair ``(train, val)`` of torch ``Dataset``s of ``(image, label)`` (an image a
float tensor in [0, 1] or a uint8 tensor of shape C x H x W, or a PIL image). Either way the
images are standardised by the training split's per-channel mean and std, as the built-in
datasets are, unless ``normalize`` gives the statistics the user's checkpoint was trained with.
A pair of Datasets (an image folder is one) is held as uint8 tensors (a ``TensorData``) when it
fits the memory budget (``streaming.memory_budget()``: ``PRUNE_DATA_MEMORY_BYTES``, else the
smaller of 2 GiB and a quarter of the RAM), judged from the first image's shape times the
number of samples, and streamed through a ``DataLoader`` (a ``streaming.StreamedData``)
otherwise; a streamed pair must pickle, since Ray ships it to the trials.

Every error is a ``SourceError``: one line naming the value and what is allowed.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from typing import Any

TORCHVISION = "torchvision:"
IMAGEFOLDER = "imagefolder:"


class SourceError(ValueError):
    """A model or data source that cannot be resolved or used; one line."""


def is_source(name: str) -> bool:
    """True for a source string (``kind:value``) rather than a registered name."""
    return ":" in name


def _function(spec: str, what: str) -> Callable[..., Any]:
    """The function ``package.module:function`` names (importing the module)."""
    module_name, _, function = spec.rpartition(":")
    if not module_name or not function.isidentifier():
        raise SourceError(
            f"{what} {spec!r} is malformed; write a registered name, {TORCHVISION}NAME "
            "(models), imagefolder:DIR (data) or package.module:function"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise SourceError(
            f"{what} {spec!r}: cannot import {module_name} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise SourceError(f"{what} {spec!r}: {module_name} has no function {function!r}")
    return fn


def _call(fn: Callable[..., Any], spec: str, what: str, **offered: Any) -> Any:
    """Call ``fn`` with the ``offered`` keywords it declares; its errors as one line."""
    try:
        params = inspect.signature(fn).parameters
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        kwargs = {k: v for k, v in offered.items() if takes_all or k in params}
        return fn(**kwargs)
    except SourceError:
        raise
    except Exception as err:
        text = str(err).strip().splitlines()
        raise SourceError(
            f"{what} {spec!r} raised {type(err).__name__}: {text[0] if text else ''}".rstrip(": ")
        ) from None


def check_model_source(spec: str) -> None:
    """What can be checked of a model source without data: torchvision has the name, or the
    module imports and has the function. ``SourceError`` (one line) otherwise."""
    if spec.startswith(TORCHVISION):
        import torchvision

        name = spec[len(TORCHVISION) :]
        if name not in torchvision.models.list_models():
            raise SourceError(
                f"model {spec!r}: torchvision has no model {name!r}; see "
                "torchvision.models.list_models()"
            )
        return
    _function(spec, "model")


def check_data_source(spec: str) -> None:
    """What can be checked of a data source before loading it: an image folder's layout (train/
    and val/ with the same non-empty class folders), or the module and function."""
    if spec.startswith(IMAGEFOLDER):
        folder = spec[len(IMAGEFOLDER) :]
        train = _class_folders(os.path.join(folder, "train"), spec)
        val = _class_folders(os.path.join(folder, "val"), spec)
        _same_classes(spec, train, val)
        return
    _function(spec, "dataset")


def _same_classes(spec: str, train: list[str], val: list[str]) -> None:
    if train != val:
        raise SourceError(
            f"dataset {spec!r}: train/ and val/ have different classes ({train} against {val}); "
            "both need the same class folders"
        )


def build_model_source(
    spec: str, in_channels: int, num_classes: int, image_size: int, weights: str = ""
) -> Any:
    """The model of source ``spec`` (see the module docstring) for the data's shape."""
    if spec.startswith(TORCHVISION):
        import torchvision

        check_model_source(spec)
        name = spec[len(TORCHVISION) :]
        kwargs: dict[str, Any] = {"num_classes": num_classes}
        if weights:
            kwargs["weights"] = weights
        try:
            return torchvision.models.get_model(name, **kwargs)
        except Exception as err:  # a weights download offline, a head of the wrong size, ...
            text = " ".join(str(err).split())[:300]
            raise SourceError(f"model {spec!r}: {type(err).__name__}: {text}") from None
    builder = _function(spec, "model")
    model = _call(builder, spec, "model", in_channels=in_channels, num_classes=num_classes,
                  image_size=image_size)  # fmt: skip
    import torch

    if not isinstance(model, torch.nn.Module):
        raise SourceError(f"model {spec!r} returned {type(model).__name__}, not a torch nn.Module")
    return model


def load_data_source(spec: str, image_size: int = 0) -> Any:
    """The ``TensorData`` (or ``StreamedData``) of source ``spec`` (see the module docstring),
    on the CPU."""
    if spec.startswith(IMAGEFOLDER):
        return load_image_folder(spec[len(IMAGEFOLDER) :], image_size)
    fn = _function(spec, "dataset")
    out = _call(fn, spec, "dataset")
    from .data import TensorData

    if isinstance(out, TensorData):
        return out
    if isinstance(out, tuple) and len(out) == 2:
        return tensor_data_from(spec, out[0], out[1], image_size)
    raise SourceError(
        f"dataset {spec!r} returned {type(out).__name__}; allowed: a TensorData or a pair "
        "(train, val) of torch Datasets"
    )


def _class_folders(split_dir: str, spec: str) -> list[str]:
    """The class folders of one split, each checked to hold at least one file."""
    if not os.path.isdir(split_dir):
        raise SourceError(
            f"dataset {spec!r}: no folder {split_dir}; an image folder needs "
            "DIR/train/<class>/... and DIR/val/<class>/..."
        )
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not classes:
        raise SourceError(f"dataset {spec!r}: {split_dir} has no class folders")
    empty = [c for c in classes if not any(e.is_file() for e in os.scandir(f"{split_dir}/{c}"))]
    if empty:
        raise SourceError(f"dataset {spec!r}: class folder(s) {empty} of {split_dir} are empty")
    return classes


def load_image_folder(folder: str, image_size: int) -> Any:
    """``folder``'s ``train/`` and ``val/`` splits (torchvision ``ImageFolder``), resized to
    ``image_size`` square (0: the images' own size, which must then be one square size)."""
    from torchvision import datasets, transforms

    spec = IMAGEFOLDER + folder
    train_dir, val_dir = os.path.join(folder, "train"), os.path.join(folder, "val")
    train_classes = _class_folders(train_dir, spec)
    _same_classes(spec, train_classes, _class_folders(val_dir, spec))
    steps = [transforms.Resize((image_size, image_size))] if image_size else []
    tf = transforms.Compose([*steps, transforms.PILToTensor()])
    try:
        train = datasets.ImageFolder(train_dir, transform=tf)
        val = datasets.ImageFolder(val_dir, transform=tf)
    except Exception as err:
        raise SourceError(f"dataset {spec!r}: {type(err).__name__}: {err}") from None
    return tensor_data_from(spec, train, val, image_size, classes=len(train_classes))


def _as_uint8(image: Any) -> Any:
    """One dataset image as a uint8 C x H x W tensor (floats taken as [0, 1])."""
    import torch
    from torchvision.transforms.functional import pil_to_tensor

    if not isinstance(image, torch.Tensor):
        image = pil_to_tensor(image)
    if image.dtype != torch.uint8:
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return image if image.dim() == 3 else image.unsqueeze(0)


def _stack(spec: str, dataset: Any, split: str) -> tuple[Any, Any]:
    """All of ``dataset`` as (uint8 images, int64 labels), read by index into one tensor sized
    from the first image: the images are held once, not also as one small tensor per image
    until a final stack (which, for 100,000 1x28x28 images, 78 MB, took 284 MB against 161 MB
    now; measured with benchmarks/bench_streaming.py's Dataset)."""
    import torch

    if len(dataset) == 0:
        raise SourceError(f"dataset {spec!r}: its {split} split is empty")
    first, label = dataset[0]
    first = _as_uint8(first)
    images = torch.empty((len(dataset), *first.shape), dtype=torch.uint8)
    images[0] = first
    labels = [int(label)]
    for i in range(1, len(dataset)):
        image, label = dataset[i]
        image = _as_uint8(image)
        if image.shape != first.shape:
            raise SourceError(
                f"dataset {spec!r}: {split} images have several shapes "
                f"{sorted({tuple(first.shape), tuple(image.shape)})} (images 0 and {i}); give "
                "--image-size to resize them to one square size"
            )
        images[i] = image
        labels.append(int(label))
    return images, torch.tensor(labels, dtype=torch.long)


def tensor_data_from(
    spec: str, train: Any, val: Any, image_size: int = 0, classes: int | None = None
) -> Any:
    """Two torch Datasets as a ``TensorData`` (uint8 images, standardised by the training
    split's per-channel mean and std) when their images fit ``streaming.memory_budget()``, else
    as a ``streaming.StreamedData`` over them (same statistics, read batch by batch). The size is
    estimated from the first image of each split times the number of samples; nothing else is
    read to decide."""
    from .data import TensorData
    from .streaming import StreamedData, estimated_bytes, memory_budget

    count = 0
    for split, dataset in (("train", train), ("val", val)):
        if len(dataset) == 0:
            raise SourceError(f"dataset {spec!r}: its {split} split is empty")
        count += len(dataset)
    if estimated_bytes(tuple(_as_uint8(train[0][0]).shape), count) > memory_budget():
        return StreamedData.from_datasets(spec, train, val, classes=classes)
    x_train, y_train = _stack(spec, train, "train")
    x_test, y_test = _stack(spec, val, "val")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise SourceError(
            f"dataset {spec!r}: train images are {tuple(x_train.shape[1:])}, val images "
            f"{tuple(x_test.shape[1:])}; both splits need one shape"
        )
    if x_train.shape[2] != x_train.shape[3]:
        raise SourceError(f"dataset {spec!r}: images are {tuple(x_train.shape[2:])}, not square; "
                          "give --image-size")  # fmt: skip
    num_classes = classes or int(max(y_train.max(), y_test.max())) + 1
    scaled = x_train.float() / 255.0
    mean = tuple(scaled.mean(dim=(0, 2, 3)).tolist())
    std = tuple(max(s, 1e-6) for s in scaled.std(dim=(0, 2, 3)).tolist())
    return TensorData(spec, x_train, y_train, x_test, y_test, num_classes, 255.0, mean, std)
