"""Every pruning method on every model: exact counts, mask shapes, iterative steps, permanence,
and physical channel removal (Torch-Pruning) with a weights_only save/load round trip."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prune_core import structured
from prune_core.models import MODELS, build_model
from prune_core.pruning import (
    PRUNING_METHODS,
    is_reparametrized,
    make_permanent,
    prunable_targets,
    prune_step,
)
from prune_core.structured import (
    channel_groups,
    load_pruned_model,
    nm_keep_mask,
    remove_pruned_channels,
    save_pruned_model,
)

SPARSITIES = [0.3, 0.5, 0.7, 0.9, 0.99]
# N:M fixes the sparsity at 1 - n/m; one pattern per study sparsity.
NM_FOR = {0.3: (7, 10), 0.5: (2, 4), 0.7: (3, 10), 0.9: (1, 10), 0.99: (1, 100)}
PER_TENSOR = {"l1_unstructured", "random_unstructured"}
SIZE = 8  # 1x8x8 inputs keep every model small and fast
# ResNet-18 has 11 M weights; the grid prunes a representative subset of its layers (3x3 stem,
# 3x3 block conv, 1x1 shortcut, the linear classifier) and the full model is pruned below.
RESNET_SUBSET = {"conv1", "layer1.0.conv1", "layer2.0.shortcut.0", "linear"}


def options_for(method: str, sparsity: float) -> dict:
    """Method options that make ``sparsity`` valid (N:M needs a matching pattern)."""
    if method == "nm":
        n, m = NM_FOR[sparsity]
        return {"n": n, "m": m}
    return {}


@pytest.fixture(scope="module")
def built():
    """One seeded model per registered name at 1x8x8; tests take deep copies."""
    models = {}
    for name in MODELS.names():
        torch.manual_seed(0)
        models[name] = build_model(name, 1, 10, SIZE).eval()
    return models


@pytest.fixture(scope="module")
def x():
    """A fixed input batch."""
    return torch.randn(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def targets_of(model: nn.Module, name: str):
    """Weights and biases of every conv/linear layer (a fixed subset for ResNet-18)."""
    targets = prunable_targets(model, include_bias=True)
    if name == "resnet18":
        targets = [t for t in targets if t.path.rsplit(".", 1)[0] in RESNET_SUBSET]
    return targets


def zeros_of_mask(target) -> int:
    """Entries the keep-mask prunes."""
    return int((target.mask() == 0).sum())


def check_counts(method: str, targets, sparsity: float, options: dict) -> None:
    """The exact number (and shape) of zeros each method promises."""
    for t in targets:  # a pruned entry is zero in the effective tensor
        assert (t.tensor()[t.mask() == 0] == 0).all()
    if method == "global_magnitude":
        total = sum(t.numel() for t in targets)
        assert sum(zeros_of_mask(t) for t in targets) == round(sparsity * total)
    elif method in PER_TENSOR:
        for t in targets:
            assert zeros_of_mask(t) == round(sparsity * t.numel()), t.path
    elif method == "ln_structured":
        weights = {t.path[: -len(".weight")]: t for t in targets if t.param_name == "weight"}
        for t in targets:
            keep = t.mask().bool()
            if t.param_name == "weight":
                rows = keep.flatten(1)
                whole = rows.all(1) | ~rows.any(1)
                assert whole.all(), f"{t.path}: a filter is only partly pruned"
                assert int((~rows.any(1)).sum()) == round(sparsity * rows.shape[0]), t.path
            else:  # the bias follows its weight's filters
                weight_keep = weights[t.path[: -len(".bias")]].mask().bool().flatten(1).any(1)
                assert torch.equal(keep, weight_keep), t.path
    elif method == "nm":
        n, m = options["n"], options["m"]
        for t in targets:
            keep = t.mask().bool()
            if keep.dim() == 1:  # rows of one weight: biases are never pruned
                assert keep.all()
                continue
            # groups run along the input channels at each kernel position (out x kh x kw x C)
            rows = keep.permute(0, 2, 3, 1).reshape(-1, keep.shape[1]) if keep.dim() == 4 else keep
            length = rows.shape[1]
            for start in range(0, length, m):
                group = rows[:, start : start + m]
                assert (group.sum(1) == min(n, group.shape[1])).all(), (t.path, start)
    else:  # pragma: no cover - a new method needs its own expectation here
        raise AssertionError(f"no expectation for method {method!r}")


def test_all_methods_are_covered():
    """The grid below has an expectation for every registered method."""
    assert set(PRUNING_METHODS.names()) == {
        "global_magnitude",
        "l1_unstructured",
        "random_unstructured",
        "ln_structured",
        "nm",
    }


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("method", PRUNING_METHODS.names())
@pytest.mark.parametrize("name", MODELS.names())
def test_method_exact_counts_and_permanence(built, x, name, method, sparsity):
    """Exact zero counts per method; make_permanent keeps the outputs and the zeros, and leaves no
    reparametrization behind."""
    model = copy.deepcopy(built[name])
    targets = targets_of(model, name)
    options = options_for(method, sparsity)
    prune_step(targets, method, sparsity, generator=torch.Generator().manual_seed(0), **options)
    check_counts(method, targets, sparsity, options)
    masks = [t.mask().clone() for t in targets]
    with torch.no_grad():
        before = model(x)
        assert make_permanent(model) == len(targets)
        after = model(x)
    assert not is_reparametrized(model)
    assert torch.allclose(before, after, atol=1e-6)
    for t, mask in zip(targets, masks, strict=True):  # the zeros survive the folding
        assert (getattr(t.module, t.param_name)[mask == 0] == 0).all(), t.path


ITERATIVE = {
    "global_magnitude": [({}, 0.5), ({}, 0.75)],
    "l1_unstructured": [({}, 0.5), ({}, 0.75)],
    "random_unstructured": [({}, 0.5), ({}, 0.75)],
    "ln_structured": [({}, 0.5), ({}, 0.75)],
    "nm": [({"n": 2, "m": 4}, 0.5), ({"n": 1, "m": 4}, 0.75)],  # 2:4, then 1:4
}


@pytest.mark.parametrize("method", PRUNING_METHODS.names())
@pytest.mark.parametrize("name", ["cnn", "mlp", "cifar_cnn", "simple_cnn"])
def test_iterative_steps_keep_earlier_zeros(built, name, method):
    """0.5 then 0.75: every zero of step 1 is still zero, and step 2 lands on its own count."""
    model = copy.deepcopy(built[name])
    targets = targets_of(model, name)
    generator = torch.Generator().manual_seed(0)
    (opts1, s1), (opts2, s2) = ITERATIVE[method]
    prune_step(targets, method, s1, generator=generator, **opts1)
    first = [t.mask().clone() for t in targets]
    prune_step(targets, method, s2, generator=generator, **opts2)
    for t, earlier in zip(targets, first, strict=True):
        assert (t.mask()[earlier == 0] == 0).all(), t.path
        assert zeros_of_mask(t) >= int((earlier == 0).sum())
    check_counts(method, targets, s2, opts2)


def test_full_resnet18_global_magnitude(built, x):
    """Study 5's setting on the whole ResNet-18: round(0.9 * N) zeros over all 11 M weights."""
    model = copy.deepcopy(built["resnet18"])
    targets = prunable_targets(model)
    prune_step(targets, "global_magnitude", 0.9)
    check_counts("global_magnitude", targets, 0.9, {})
    with torch.no_grad():
        before = model(x)
        make_permanent(model)
        assert torch.allclose(before, model(x), atol=1e-6)


# --------------------------------------------------------------------------------------------
# ln_structured: hand-computed rankings and options
# --------------------------------------------------------------------------------------------


def two_linears(rows_a, rows_b) -> nn.Sequential:
    """Two bias-free linear layers with the given weight rows (hand-made rankings)."""
    a = torch.tensor(rows_a, dtype=torch.float32)
    b = torch.tensor(rows_b, dtype=torch.float32)
    model = nn.Sequential(nn.Linear(a.shape[1], a.shape[0], bias=False))
    model.append(nn.Linear(b.shape[1], b.shape[0], bias=False))
    with torch.no_grad():
        model[0].weight.copy_(a)
        model[1].weight.copy_(b)
    return model


def pruned_rows(model: nn.Module) -> list[list[int]]:
    """Indices of fully pruned rows, per linear layer."""
    return [
        torch.nonzero(~m.weight_mask.bool().any(1)).flatten().tolist()
        for m in model
        if hasattr(m, "weight_mask")
    ]


def test_ln_structured_norm_changes_the_ranking():
    """Rows [3,0,0,0] (L1 3, L2 3) and [1,1,1,1] (L1 4, L2 2): L1 prunes row 0, L2 row 1."""
    rows = [[3.0, 0, 0, 0], [1.0, 1, 1, 1]]
    for norm, expected in [(1, [0]), (2, [1])]:
        model = two_linears(rows, [[1.0, 1.0]])
        prune_step(prunable_targets(model)[:1], "ln_structured", 0.5, norm=norm)
        assert pruned_rows(model)[0] == expected


def test_ln_structured_global_normalises_by_filter_size():
    """Layer A rows of 1 weight: |1|, |4|; layer B rows of 16: all 0.5 (L1 8, mean 0.5), all 3
    (L1 48, mean 3). Normalised L1 (mean |w|) ranks 0.5 < 1 < 3 < 4: 50% prunes B row 0 and A
    row 0; raw L1 would have pruned both rows of A (1 and 4 < 8)."""
    model = two_linears([[1.0], [4.0]], [[0.5] * 16, [3.0] * 16])
    prune_step(prunable_targets(model), "ln_structured", 0.5, scope="global")
    assert pruned_rows(model) == [[0], [0]]


def test_ln_structured_global_count(built):
    """Global scope prunes round(s * all filters) whole filters in total."""
    model = copy.deepcopy(built["cnn"])
    targets = prunable_targets(model, include_bias=True)
    prune_step(targets, "ln_structured", 0.7, scope="global", norm=2)
    weights = [t for t in targets if t.param_name == "weight"]
    filters = sum(t.tensor().shape[0] for t in weights)  # 16 + 32 + 128 + 10 = 186
    dead = sum(int((~t.mask().bool().flatten(1).any(1)).sum()) for t in weights)
    assert filters == 186 and dead == round(0.7 * 186)
    for t in weights:  # whole filters only
        rows = t.mask().bool().flatten(1)
        assert (rows.all(1) | ~rows.any(1)).all()


def test_ln_structured_first_conv_only(built):
    """CIFAR study: 40% of the first conv's 6 filters (round(2.4) = 2) and nothing else."""
    model = copy.deepcopy(built["cifar_cnn"])
    targets = prunable_targets(model, include_bias=True)
    first = model[0].weight.detach().abs().sum((1, 2, 3))
    prune_step(targets, "ln_structured", 0.4, layers=["0"])
    dead = torch.nonzero(~model[0].weight_mask.bool().flatten(1).any(1)).flatten()
    assert sorted(dead.tolist()) == sorted(first.argsort()[:2].tolist())  # the 2 lowest L1
    assert torch.equal(model[0].bias_mask.bool(), model[0].weight_mask.bool().flatten(1).any(1))
    for t in targets[2:]:
        assert t.mask().bool().all(), t.path


def test_ln_structured_couple_prunes_the_same_channels(built, x):
    """Coupled layers lose identical channels, ranked by their summed normalised norms."""
    model = copy.deepcopy(built["resnet18"])
    group = ["conv1", "layer1.0.conv2", "layer1.1.conv2"]
    targets = [t for t in prunable_targets(model) if t.path[: -len(".weight")] in group]
    prune_step(targets, "ln_structured", 0.5, couple=[group])
    keeps = [t.mask().bool().flatten(1).any(1) for t in targets]
    assert int((~keeps[0]).sum()) == 32
    assert all(torch.equal(keeps[0], k) for k in keeps[1:])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"norm": 3}, "norm=3"),
        ({"scope": "model"}, "scope='model'"),
        ({"layers": ["nope"]}, "nope"),
        ({"couple": [["0", "3"]], "scope": "global"}, "couple"),
        ({"couple": [["0", "3"]]}, "filter counts"),
    ],
)
def test_ln_structured_rejects_bad_options(built, options, message):
    """Bad options raise a ValueError naming the value."""
    model = copy.deepcopy(built["cnn"])
    with pytest.raises(ValueError, match=message):
        prune_step(prunable_targets(model), "ln_structured", 0.5, **options)


# --------------------------------------------------------------------------------------------
# N:M: hand-computed groups
# --------------------------------------------------------------------------------------------


def test_nm_keeps_the_two_largest_of_four():
    """Row [0.1, -4, 3, 0.2 | 5, 6, -7, 8] -> keep -4, 3 | -7, 8."""
    scores = torch.tensor([[0.1, -4, 3, 0.2, 5, 6, -7, 8]]).abs()
    expected = torch.tensor([[0, 1, 1, 0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(nm_keep_mask(scores, 2, 4), expected)


def test_nm_tail_group_keeps_min_n_r():
    """A linear row of 9 with 2:4: groups of 4, 4 and a tail of 1, kept whole; a row of 7 with
    2:4: the tail of 3 keeps its 2 largest."""
    nine = nm_keep_mask(torch.arange(1.0, 10.0).view(1, 9), 2, 4)
    assert nine.tolist() == [[0, 0, 1, 1, 0, 0, 1, 1, 1]]
    seven = nm_keep_mask(torch.tensor([[4.0, 3, 2, 1, 1, 3, 2]]), 2, 4)
    assert seven.tolist() == [[1, 1, 0, 0, 0, 1, 1]]


def test_nm_conv_groups_run_along_input_channels():
    """A 1 x 6 x 1 x 2 conv weight with 2:4: at each of the 2 kernel positions the 6 input
    channels form a group of 4 and a tail of 2 (kept whole), not the flattened row of 12.

    Scores w[0, c, 0, k] = 10 * c + k at position k = 0 are 0, 10, 20, 30 | 40, 50 -> keep
    channels 2, 3 | 4, 5; at k = 1 the scores are reversed (60 - ...), so keep 0, 1 | 4, 5."""
    channels = torch.arange(6.0).view(1, 6, 1, 1)
    scores = torch.cat([10 * channels, 60 - 10 * channels], dim=3)  # (1, 6, 1, 2)
    keep = nm_keep_mask(scores, 2, 4)
    assert keep.shape == scores.shape
    assert keep[0, :, 0, 0].tolist() == [False, False, True, True, True, True]
    assert keep[0, :, 0, 1].tolist() == [True, True, False, False, True, True]
    # a 1 x 1 x 3 x 3 conv has one input channel: every group is a tail of 1, nothing is pruned
    assert nm_keep_mask(torch.arange(1.0, 10.0).view(1, 1, 3, 3), 2, 4).all()


def test_nm_ties_keep_the_earlier_entry():
    """Equal scores (e.g. zeros): position breaks ties, so the count is still exactly N."""
    assert nm_keep_mask(torch.zeros(1, 4), 2, 4).tolist() == [[True, True, False, False]]


@pytest.mark.parametrize(
    "n, m, message",
    [(0, 4, "n=0"), (4, 4, "n=4"), (5, 4, "n=5"), (1, 1, "m=1"), (2.5, 4, "n=2.5"), (2, "4", "m")],
)
def test_nm_rejects_bad_n_m(built, n, m, message):
    """One-line ValueError naming the value and the allowed range."""
    model = copy.deepcopy(built["mlp"])
    with pytest.raises(ValueError, match=message) as info:
        prune_step(prunable_targets(model), "nm", 0.5, n=n, m=m)
    assert "allowed" in str(info.value) and "\n" not in str(info.value)


def test_nm_rejects_inconsistent_sparsity(built):
    """2:4 is 50% sparse; asking for 0.7 would mislabel the run."""
    model = copy.deepcopy(built["mlp"])
    with pytest.raises(ValueError, match=r"sparsity=0.7 .*allowed: 0.5"):
        prune_step(prunable_targets(model), "nm", 0.7, n=2, m=4)


# --------------------------------------------------------------------------------------------
# Physical removal (Torch-Pruning) and weights_only checkpoints
# --------------------------------------------------------------------------------------------


def n_params(model: nn.Module) -> int:
    """Total parameter elements."""
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["cnn", "simple_cnn", "cifar_cnn", "mlp"])
def test_removal_is_exact_without_batch_norm(built, x, name):
    """Filters and biases zeroed together carry only zeros: removing them keeps the outputs,
    shrinks the model, and never removes the classifier's outputs."""
    model = copy.deepcopy(built[name])
    prune_step(prunable_targets(model, include_bias=True), "ln_structured", 0.5)
    make_permanent(model)
    with torch.no_grad():
        before = model(x)
    dense = n_params(model)
    remove_pruned_channels(model, x)
    with torch.no_grad():
        after = model(x)
    assert n_params(model) < dense
    assert torch.allclose(before, after, atol=1e-5)
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert classifier.out_features == 10


def test_removal_cnn_hand_computed(built, x):
    """cnn at 8x8, 50% of every layer's filters: conv 1->8 (80), conv 8->16 (1,168), fc 64->64
    (4,160; 16 channels x 2x2 in), fc 64->10 (650; its 5 zeroed logits stay) = 6,058."""
    model = copy.deepcopy(built["cnn"])
    prune_step(prunable_targets(model, include_bias=True), "ln_structured", 0.5)
    remove_pruned_channels(model, x)  # masks still installed: made permanent first
    assert not is_reparametrized(model)
    assert n_params(model) == 80 + 1_168 + 4_160 + 650 == 6_058


def test_removal_keeps_train_mode_and_batch_norm_statistics(built, x):
    """Tracing runs in eval mode: BN running statistics do not move and the mode is restored."""
    model = copy.deepcopy(built["resnet18"]).train()
    stats = model.bn1.running_mean.clone()
    remove_pruned_channels(model, x)  # nothing is zero: nothing is removed
    assert model.training
    assert torch.equal(model.bn1.running_mean, stats)
    assert n_params(model) == n_params(built["resnet18"])


def test_removal_needs_every_coupled_layer_to_agree(built, x):
    """Channel 5 zero only in the stem conv stays (layer1's convs still write into it); channel 7
    zero in all three convs of that residual stream goes: 64 -> 63 channels."""
    model = copy.deepcopy(built["resnet18"])
    with torch.no_grad():
        model.conv1.weight[5] = 0
        for conv in (model.conv1, model.layer1[0].conv2, model.layer1[1].conv2):
            conv.weight[7] = 0
    remove_pruned_channels(model, x)
    assert model.conv1.out_channels == 63
    assert model.layer1[0].conv2.out_channels == 63 and model.layer1[1].conv1.in_channels == 63
    assert model(x).shape == (4, 10)


@pytest.fixture(scope="module")
def resnet_half(built, x):
    """ResNet-18 with 50% of the filters of every independently removable layer (each block's
    first conv) pruned by L1 norm, made permanent, then physically removed."""
    model = copy.deepcopy(built["resnet18"])
    groups = channel_groups(model, x)
    independent = [g[0] for g in groups if len(g) == 1]
    prune_step(prunable_targets(model), "ln_structured", 0.5, layers=independent)
    make_permanent(model)
    remove_pruned_channels(model, x)
    return model, groups


def test_channel_groups_of_resnet18(resnet_half):
    """8 block-internal convs stand alone; the stem and layer1 share one residual stream; the
    classifier is in no group."""
    _, groups = resnet_half
    assert sorted(g[0] for g in groups if len(g) == 1) == sorted(
        f"layer{i}.{j}.conv1" for i in range(1, 5) for j in range(2)
    )
    assert sorted(next(g for g in groups if "conv1" in g)) == [
        "conv1",
        "layer1.0.conv2",
        "layer1.1.conv2",
    ]
    assert all("linear" not in g for g in groups)


def test_resnet18_half_channels_removed(built, resnet_half, x):
    """Each block's first conv keeps half its filters, the next conv half its inputs; the
    residual streams and the classifier are untouched; fewer parameters, same output shape."""
    model, _ = resnet_half
    for i, width in enumerate([64, 128, 256, 512], 1):
        for j in range(2):
            block = getattr(model, f"layer{i}")[j]
            assert block.conv1.out_channels == width // 2
            assert block.bn1.num_features == width // 2
            assert block.conv2.in_channels == width // 2
            assert block.conv2.out_channels == width
    assert model.linear.in_features == 512 and model.linear.out_features == 10
    assert n_params(model) < 0.6 * n_params(built["resnet18"])
    assert model.eval()(x).shape == (4, 10)


def test_pruned_model_round_trip_weights_only(resnet_half, x, tmp_path):
    """save_pruned_model stores plain data only: torch.load(weights_only=True) reads it, and the
    rebuilt model gives identical outputs."""
    model, _ = resnet_half
    path = str(tmp_path / "half.pt")
    save_pruned_model(model, path, "resnet18", 1, 10, SIZE, metadata={"sparsity": 0.5})
    raw = torch.load(path, weights_only=True)
    assert raw["layer_shapes"]["layer1.0.conv1"]["out_channels"] == 32
    assert raw["metadata"] == {"sparsity": 0.5}
    loaded = load_pruned_model(path).eval()
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))
    assert n_params(loaded) == n_params(model)


def test_resnet18_all_channel_groups_coupled(built, x, tmp_path):
    """couple=channel_groups prunes 50% of every channel (residual streams too): every conv has
    half its filters and the model about a quarter of its parameters."""
    model = copy.deepcopy(built["resnet18"])
    groups = channel_groups(model, x)
    prune_step(prunable_targets(model), "ln_structured", 0.5, couple=groups)
    remove_pruned_channels(model, x)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    dense_convs = {n: m for n, m in built["resnet18"].named_modules() if isinstance(m, nn.Conv2d)}
    assert all(convs[n].out_channels == dense_convs[n].out_channels // 2 for n in convs)
    assert model.linear.in_features == 256 and model.linear.out_features == 10
    assert 0.2 < n_params(model) / n_params(built["resnet18"]) < 0.3


def test_save_pruned_model_refuses_masks(built, tmp_path):
    """A reparametrized model would save *_orig/*_mask tensors that no model loads."""
    model = copy.deepcopy(built["mlp"])
    prune_step(prunable_targets(model), "l1_unstructured", 0.5)
    with pytest.raises(ValueError, match="make_permanent"):
        save_pruned_model(model, str(tmp_path / "m.pt"), "mlp", 1, 10, SIZE)


def test_load_pruned_model_rejects_other_files(tmp_path):
    """A plain state dict is not a pruned-model file."""
    path = tmp_path / "state.pt"
    torch.save({"weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a pruned model file"):
        load_pruned_model(str(path))


def test_shrink_to_checks_layer_paths(built):
    """Shapes from another architecture are rejected, not half-applied."""
    with pytest.raises(ValueError, match="layer paths differ"):
        structured.shrink_to(copy.deepcopy(built["mlp"]), structured.layer_shapes(built["cnn"]))
