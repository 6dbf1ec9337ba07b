"""Exact pruning arithmetic: zero counts after one-shot and k iterative steps, ties, permanence."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prune_core.metrics import count_parameters, layer_sparsity, sparsity
from prune_core.models import build_model
from prune_core.pruning import (
    is_reparametrized,
    keep_mask_exact,
    make_permanent,
    prunable_targets,
    prune_step,
)
from prune_core.schedules import sparsity_schedule


def toy_model() -> nn.Module:
    """Conv 1->2 3x3 (18 weights) and Linear 8->3 (24 weights): 42 prunable weights."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3))


def zeros(t: torch.Tensor) -> int:
    return int((t == 0).sum())


def test_keep_mask_exact_counts_and_ties():
    scores = torch.tensor([3.0, 1.0, 1.0, 1.0, 2.0, 0.5])
    keep = keep_mask_exact(scores, 3)
    # 0.5 is lowest; two of the three tied 1.0s go, the lowest index first
    assert keep.tolist() == [True, False, False, True, True, False]
    assert keep_mask_exact(scores, 0).all()
    assert not keep_mask_exact(scores, 6).any()
    all_tied = keep_mask_exact(torch.zeros(10), 4)
    assert all_tied.tolist() == [False] * 4 + [True] * 6


def test_global_magnitude_hand_computed():
    model = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.1, -0.4, 0.3, -0.2]]))
    targets = prunable_targets(model)
    prune_step(targets, "global_magnitude", 0.5)
    assert model.weight.tolist() == [[0.0, pytest.approx(-0.4), pytest.approx(0.3), 0.0]]
    prune_step(targets, "global_magnitude", 0.75)  # next smallest live weight is 0.3
    assert model.weight.tolist() == [[0.0, pytest.approx(-0.4), 0.0, 0.0]]


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7, 0.9, 0.99])
def test_global_magnitude_oneshot_exact_count(target):
    model = toy_model()
    targets = prunable_targets(model)
    n = sum(t.numel() for t in targets)
    assert n == 42
    prune_step(targets, "global_magnitude", target)
    assert sum(zeros(t.tensor()) for t in targets) == round(target * 42)
    assert sparsity(targets) == round(target * 42) / 42


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7, 0.9, 0.99])
def test_l1_unstructured_per_tensor_exact_count(target):
    model = toy_model()
    targets = prunable_targets(model)
    prune_step(targets, "l1_unstructured", target)
    per_layer = layer_sparsity(targets)
    assert per_layer["0.weight"] == round(target * 18) / 18
    assert per_layer["2.weight"] == round(target * 24) / 24


@pytest.mark.parametrize("k", [2, 3, 5])
def test_iterative_steps_land_exactly_on_target(k):
    model = toy_model()
    targets = prunable_targets(model)
    schedule = sparsity_schedule("iterative", 0.9, k)
    previous = torch.ones(42, dtype=torch.bool)
    for i, s in enumerate(schedule, 1):
        prune_step(targets, "global_magnitude", s)
        alive = torch.cat([t.tensor().reshape(-1) != 0 for t in targets])
        assert int((~alive).sum()) == round(s * 42)
        assert not (alive & ~previous).any(), "a pruned weight came back"
        previous = alive
        if i < k:
            assert s < 0.9
    assert schedule[-1] == 0.9
    assert int((~previous).sum()) == round(0.9 * 42) == 38


def test_iterative_schedule_formula():
    # each step keeps the same fraction of what is left: (1 - 0.875)^(1/3) = 0.5
    assert sparsity_schedule("iterative", 0.875, 3) == pytest.approx([0.5, 0.75, 0.875])
    assert sparsity_schedule("oneshot", 0.6) == [0.6]
    with pytest.raises(ValueError, match="iterations=2"):
        sparsity_schedule("oneshot", 0.6, 2)
    with pytest.raises(ValueError, match="1.2"):
        sparsity_schedule("iterative", 1.2, 3)
    with pytest.raises(KeyError, match="choose from"):
        sparsity_schedule("nope", 0.5, 1)


def test_gradual_schedule_cubic():
    # s_t = s_f (1 - (1 - t/n)^3) with s_i = 0
    got = sparsity_schedule("gradual", 0.8, 4)
    want = [0.8 * (1 - (1 - t / 4) ** 3) for t in range(1, 5)]
    assert got == pytest.approx(want)
    assert got[-1] == pytest.approx(0.8)


def test_resnet18_global_magnitude_oneshot_and_iterative_exact():
    model = build_model("resnet18", in_channels=1, num_classes=10, image_size=8)
    targets = prunable_targets(model)
    n = sum(t.numel() for t in targets)
    # 20 convs + the linear layer; batch norm is not prunable
    assert len(targets) == 21
    for s in sparsity_schedule("iterative", 0.75, 3):
        prune_step(targets, "global_magnitude", s)
        assert sum(zeros(t.tensor()) for t in targets) == round(s * n)
    assert math.isclose(sparsity(targets), round(0.75 * n) / n)


def test_make_permanent_keeps_outputs_and_zeros():
    model = toy_model().eval()
    x = torch.randn(5, 1, 4, 4)
    targets = prunable_targets(model, include_bias=True)
    assert len(targets) == 4
    prune_step(targets, "global_magnitude", 0.5)
    before = model(x)
    total, nonzero = count_parameters(model)
    assert is_reparametrized(model)
    assert make_permanent(model) == 4
    assert not is_reparametrized(model)
    assert torch.allclose(model(x), before)
    assert count_parameters(model) == (total, nonzero)
    # toy model: 18 + 2 + 24 + 3 = 47 parameters, round(0.5 * 47) = 24 pruned
    assert (total, nonzero) == (47, 23)


def test_exclude_first_and_last_layers():
    model = build_model("resnet18", in_channels=1, num_classes=10, image_size=8)
    paths = [t.path for t in prunable_targets(model, exclude_first=True, exclude_last=True)]
    assert "conv1.weight" not in paths and "linear.weight" not in paths
    assert len(paths) == 19


def test_unknown_method_lists_choices():
    with pytest.raises(KeyError, match="global_magnitude"):
        prune_step(prunable_targets(toy_model()), "nope", 0.5)
