"""Every registered model builds for the study input shapes and has the documented size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prune_core.models import MODELS, build_model

SHAPES = [(1, 8, 8, 10), (1, 28, 28, 10), (3, 32, 32, 10)]  # (channels, height, width, classes)


def n_params(model: nn.Module) -> int:
    """Total number of parameter elements."""
    return sum(p.numel() for p in model.parameters())


def test_study_models_are_registered():
    """The five studies need these names; a missing registration fails here first."""
    assert {"mlp", "cnn", "simple_cnn", "cifar_cnn", "resnet18"} <= set(MODELS.names())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", MODELS.names())
def test_model_gives_logits_per_class(name, shape):
    """(batch, C, H, W) in -> (batch, classes) logits out, for every model and input shape."""
    channels, height, width, classes = shape
    torch.manual_seed(0)
    model = build_model(name, channels, classes, height).eval()
    with torch.no_grad():
        out = model(torch.randn(3, channels, height, width))
    assert out.shape == (3, classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS.names())
def test_model_adapts_to_number_of_classes(name):
    """The classifier follows ``num_classes`` (7 is no study's default)."""
    model = build_model(name, 1, 7, 8).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 7)


def test_cnn_parameter_count_at_28x28():
    """MNIST study CNN, hand-computed (weights + biases):
    conv 1->16 3x3: 1*16*9 + 16 = 160; conv 16->32 3x3: 16*32*9 + 32 = 4,640;
    fc 1568->128: 1568*128 + 128 = 200,832; fc 128->10: 128*10 + 10 = 1,290; total 206,922."""
    model = build_model("cnn", 1, 10, 28)
    assert n_params(model) == 160 + 4_640 + 200_832 + 1_290 == 206_922
    assert [m.in_features for m in model.modules() if isinstance(m, nn.Linear)] == [1568, 128]


def test_cnn_fc_input_follows_image_size():
    """fc input is 32 * (s/4)^2: 32*2*2 = 128 at 8x8."""
    model = build_model("cnn", 1, 10, 8)
    assert next(m for m in model.modules() if isinstance(m, nn.Linear)).in_features == 128


def test_mlp_parameter_count_at_28x28():
    """LeNet-300-100: 784*300 + 300 = 235,500; 300*100 + 100 = 30,100; 100*10 + 10 = 1,010."""
    assert n_params(build_model("mlp", 1, 10, 28)) == 235_500 + 30_100 + 1_010 == 266_610


def test_simple_cnn_has_its_documented_count():
    """Docstring: 320 + 18,496 + 88,858 + 1,550 = 109,224, about 109k, at any image size."""
    assert n_params(build_model("simple_cnn", 1, 10, 28)) == 109_224
    assert abs(109_224 - 109_000) < 1_000  # "about 109k" as the study says
    assert n_params(build_model("simple_cnn", 1, 10, 8)) == 109_224  # adaptive pool
    assert "109,224" in MODELS.get("simple_cnn").__doc__


def test_cifar_cnn_is_the_tutorial_net_at_32x32():
    """456 + 2,416 + 48,120 + 10,164 + 850 = 62,006 (conv 3->6 5x5, conv 6->16 5x5, fc 400->120
    ->84->10), unpadded convs as in the PyTorch tutorial."""
    model = build_model("cifar_cnn", 3, 10, 32)
    assert n_params(model) == 456 + 2_416 + 48_120 + 10_164 + 850 == 62_006
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.padding for c in convs] == [(0, 0), (0, 0)]


def test_cifar_cnn_pads_small_inputs():
    """At 8x8 both 5x5 convs use padding 2 (8 -> 8 -> 4 -> 4 -> 2), so fc input is 16*2*2."""
    model = build_model("cifar_cnn", 1, 10, 8)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.padding for c in convs] == [(2, 2), (2, 2)]
    assert next(m for m in model.modules() if isinstance(m, nn.Linear)).in_features == 64


def test_resnet18_parameter_count_cifar_form():
    """The CIFAR ResNet-18 has 11,173,962 parameters at 3x32x32 with 10 classes."""
    assert n_params(build_model("resnet18", 3, 10, 32)) == 11_173_962


@pytest.mark.parametrize("name", ["cnn", "simple_cnn"])
def test_too_small_images_are_rejected(name):
    """Two 2x2 pools need at least 4 pixels; smaller inputs fail at build time, not in forward."""
    with pytest.raises(ValueError, match="image_size"):
        build_model(name, 1, 10, 3)
