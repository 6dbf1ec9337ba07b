"""Model registry. Every builder takes ``in_channels``, ``num_classes`` and ``image_size``."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .registry import Registry

MODELS: Registry = Registry("model")


def build_model(
    name: str, in_channels: int, num_classes: int, image_size: int, weights: str = ""
) -> nn.Module:
    """Build the model ``name`` for (in_channels, image_size, image_size) inputs: a registered
    name, or a source (``torchvision:NAME``, ``package.module:function``; ``weights`` goes to
    torchvision), see ``prune_core.sources``.

    Raises KeyError listing the registered names if ``name`` is unknown, ``SourceError`` (one
    line) for a source that cannot be built.
    """
    if ":" in name:
        from .sources import build_model_source

        return build_model_source(name, in_channels, num_classes, image_size, weights)
    return MODELS.get(name)(in_channels=in_channels, num_classes=num_classes, image_size=image_size)


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm and an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two 3x3 convs plus the (identity or 1x1 projection) shortcut, then ReLU."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet in its CIFAR form: 3x3 stem with stride 1 and no max-pool."""

    def __init__(self, blocks: list[int], in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, blocks[0], stride=1)
        self.layer2 = self._make_layer(128, blocks[1], stride=2)
        self.layer3 = self._make_layer(256, blocks[2], stride=2)
        self.layer4 = self._make_layer(512, blocks[3], stride=2)
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (batch x num_classes) of images (batch x in_channels x H x W)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@MODELS.register("resnet18")
def resnet18(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """ResNet-18 (CIFAR form, about 11.2 M parameters); any image size >= 8 works."""
    return ResNet([2, 2, 2, 2], in_channels=in_channels, num_classes=num_classes)


@MODELS.register("mlp")
def mlp(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> nn.Module:
    """LeNet-300-100: flatten, 300, 100, classes."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def _pooled_size(image_size: int, pools: int) -> int:
    """Side length after ``pools`` 2x2 max-pools with stride 2 (floor, as nn.MaxPool2d does)."""
    for _ in range(pools):
        image_size //= 2
    if image_size < 1:
        raise ValueError(f"image_size is too small for {pools} 2x2 pools; allowed: >= {2**pools}")
    return image_size


@MODELS.register("cnn")
def cnn(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> nn.Module:
    """The MNIST study's small CNN: conv in->16 and 16->32 (3x3, pad 1, each followed by ReLU and
    a 2x2 max-pool), then fc 32*(s/4)^2 -> 128 -> classes.

    At 1x28x28 with 10 classes the fc input is 32*7*7 = 1568 and the model has 206,922 parameters;
    at 8x8 the fc input is 32*2*2 = 128.
    """
    side = _pooled_size(image_size, 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * side * side, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


@MODELS.register("simple_cnn")
def simple_cnn(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> nn.Module:
    """SimpleCNN for the magnitude-versus-structured study: exactly 109,224 parameters at 1x28x28
    with 10 classes (about 109k, the size the study names).

    conv in->32 and 32->64 (3x3, pad 1, each with ReLU and a 2x2 max-pool), an adaptive average
    pool to 3x3, then fc 576 -> 154 -> classes. The adaptive pool makes the parameter count
    independent of the image size (28x28 MNIST: 7x7 -> 3x3; 8x8 digits: 2x2 -> 3x3 by overlapping
    windows), so the same model fits MNIST and the offline 8x8 digits. The hidden width 154 is
    what brings the total to about 109k. Counts: 320 + 18,496 + 88,858 + 1,550 = 109,224 (one
    input channel); each extra input channel adds 288.
    """
    _pooled_size(image_size, 2)  # validates that two pools leave at least one pixel
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(3),
        nn.Flatten(),
        nn.Linear(64 * 3 * 3, 154),
        nn.ReLU(),
        nn.Linear(154, num_classes),
    )


@MODELS.register("cifar_cnn")
def cifar_cnn(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """The classic PyTorch-tutorial CIFAR-10 net: conv in->6 (5x5), pool, conv 6->16 (5x5), pool,
    fc -> 120 -> 84 -> classes (62,006 parameters at 3x32x32 with 10 classes, fc input 16*5*5).

    The tutorial's unpadded 5x5 convs need images of at least 16 pixels (16 -> 12 -> 6 -> 2 -> 1);
    for smaller inputs (such as the 8x8 digits) both convs use padding 2, which keeps the size
    (8 -> 8 -> 4 -> 4 -> 2), so the fc input is 16*2*2 = 64 there.
    """
    side = ((image_size - 4) // 2 - 4) // 2  # unpadded: conv -4, pool /2, conv -4, pool /2
    padding = 0
    if side < 1:
        padding = 2  # "same" padding for 5x5 kernels
        side = _pooled_size(image_size, 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=padding),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=padding),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )
