"""Every pruning method on torchvision architectures (issue 23, must show 4): resnet50,
mobilenet_v3_small and vit_b_16, built with ``weights=None`` for 3x32x32 inputs on the CPU.

Shown, with figures derived by hand from the layer shapes (``derived_*`` recompute them):

- the prunable set is every Conv2d/Linear weight (vit_b_16: 38 layers, the 12 attention
  ``out_proj`` included), its input and output layers found from the traced graph, and what is
  left out is said in one line (vit_b_16: the attention ``in_proj_weight``);
- global magnitude and L1 unstructured at s=0.3 and N:M 2:4 leave exact non-zero counts;
- L2 filter pruning (``ln_structured``, norm 2, couple groups from ``channel_groups``) skips the
  output layer found by the graph, and after ``remove_pruned_channels`` the parameter count
  equals Torch-Pruning's own (its ``MetaPruner`` at the same per-group ratio, and
  ``count_ops_and_params`` on our model); what cannot be removed (vit_b_16's residual stream) is
  one asserted line;
- a model whose classifier comes first in ``named_modules()`` (position would be wrong), an
  ``nn.MultiheadAttention`` whose ``out_proj`` is pruned, and one ``run_pruning`` on
  mobilenet_v3_small (0 fine-tune epochs, synthetic data).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

from prune_core.config import DataConfig, ExperimentConfig, ModelConfig, PruneConfig
from prune_core.data import load_synthetic
from prune_core.experiment import method_options, run_pruning, select_targets
from prune_core.metrics import count_parameters
from prune_core.models import MODELS
from prune_core.pruning import (
    layer_roles,
    left_out,
    make_permanent,
    masked_update,
    prunable_targets,
    prune_step,
)
from prune_core.structured import (
    nm_accelerable_fraction,
    remove_pruned_channels,
    unremovable_channels,
)

NAMES = ("resnet50", "mobilenet_v3_small", "vit_b_16")
INPUT_LAYER = {"resnet50": "conv1", "mobilenet_v3_small": "features.0.0", "vit_b_16": "conv_proj"}
OUTPUT_LAYER = {"resnet50": "fc", "mobilenet_v3_small": "classifier.3", "vit_b_16": "heads.head"}

# Hand-derived figures (10 classes, 3x32x32 inputs); ``derived_*`` below recompute each one from
# the layer shapes alone, so a change of torchvision's architectures shows up as a clear diff.
LAYERS = {"resnet50": 54, "mobilenet_v3_small": 54, "vit_b_16": 38}
WEIGHTS = {"resnet50": 23_475_392, "mobilenet_v3_small": 1_512_072, "vit_b_16": 64_298_496}
TOTAL = {"resnet50": 23_528_522, "mobilenet_v3_small": 1_528_106, "vit_b_16": 85_658_890}
# non-zero weights after one step; global/l1 at s=0.3: N - round(0.3 N), sum of n - round(0.3 n)
NONZERO = {
    "global_magnitude": {
        "resnet50": 16_432_774, "mobilenet_v3_small": 1_058_450, "vit_b_16": 45_008_947,
    },
    "l1_unstructured": {
        "resnet50": 16_432_776, "mobilenet_v3_small": 1_058_450, "vit_b_16": 45_008_945,
    },
    # 2:4 along the input dim: per row of C inputs, 2 * (C // 4) + min(2, C % 4) kept
    "nm": {"resnet50": 11_739_264, "mobilenet_v3_small": 785_400, "vit_b_16": 32_247_552},
    # L2 filters at s=0.5: out - round(0.5 out) filters kept in every layer but the output one
    "ln_structured": {
        "resnet50": 11_747_936, "mobilenet_v3_small": 761_156, "vit_b_16": 32_153_088,
    },
}  # fmt: skip
SPARSITY = {"global_magnitude": 0.3, "l1_unstructured": 0.3, "nm": 0.5, "ln_structured": 0.5}
# parameters after removing the zeroed channels (ln_structured, s=0.5); vit_b_16: only the
# MLP hidden neurons go, 12 * (1536*768 + 1536 + 768*1536) = 28_329_984 fewer parameters
AFTER_REMOVAL = {"resnet50": 5_902_890, "mobilenet_v3_small": 403_354, "vit_b_16": 57_328_906}
VIT_UNREMOVABLE = (
    "channels of conv_proj and 12 more cannot be removed: Torch-Pruning would also cut "
    "encoder.layers.encoder_layer_0.self_attention and 12 more (MultiheadAttention: its raw "
    "in_proj_weight's q/k/v rows are not prunable here)"
)


def build(name: str) -> nn.Module:
    """The torchvision model, seeded, for 3x32x32 inputs and 10 classes (vit_b_16: 2x2 patches
    of 16). Every conv/linear bias gets small non-zero values, vit_b_16's head (zero-initialised
    by torchvision) random weights, and the rare weight drawn as exactly 0.0 (two in resnet50's
    23 M) the value 1e-3, as a trained model would have: then no weight or bias is zero before
    pruning, and every count below is exact."""
    torch.manual_seed(0)
    extra = {"image_size": 32} if name == "vit_b_16" else {}
    model = torchvision.models.get_model(name, weights=None, num_classes=10, **extra).eval()
    with torch.no_grad():
        if name == "vit_b_16":
            nn.init.normal_(model.heads.head.weight, std=0.02)
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight[module.weight == 0] = 1e-3
                if module.bias is not None:
                    nn.init.normal_(module.bias, std=0.01)
    return model


@pytest.fixture(scope="module")
def dense():
    """One built model per name (tests take deep copies)."""
    return {name: build(name) for name in NAMES}


@pytest.fixture(scope="module")
def x():
    """Two 3x32x32 images."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def conv_linear(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv2d/Linear layer by path (the three models have no other conv type)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def nonzero(targets) -> int:
    """Non-zero entries over the (masked) target tensors."""
    return sum(int(t.tensor().count_nonzero()) for t in targets)


# ------------------------------------------------------------------------------------------------
# hand derivations of the figures (from shapes only, none of prune_core)


def derived_nonzero(model: nn.Module, method: str, output_layer: str) -> int:
    """The non-zero weights ``method`` leaves, from the layer shapes (see NONZERO)."""
    s, total = SPARSITY[method], 0
    weights = [(n, m.weight) for n, m in conv_linear(model).items()]
    if method == "global_magnitude":
        n = sum(w.numel() for _, w in weights)
        return n - round(s * n)
    for path, w in weights:
        if method == "l1_unstructured":
            total += w.numel() - round(s * w.numel())
        elif method == "nm":
            c = w.shape[1]  # input channels: rows of c run along them at every kernel position
            total += w.numel() // c * (2 * (c // 4) + min(2, c % 4))
        else:  # ln_structured: the output layer stays whole
            out = w.shape[0]
            kept = out if path == output_layer else out - round(s * out)
            total += kept * (w.numel() // out)
    return total


def test_hand_derivations_match_the_figures(dense):
    for name, model in dense.items():
        layers = conv_linear(model)
        assert len(layers) == LAYERS[name]
        assert sum(m.weight.numel() for m in layers.values()) == WEIGHTS[name]
        assert sum(p.numel() for p in model.parameters()) == TOTAL[name]
        assert nonzero(prunable_targets(model)) == WEIGHTS[name]  # no zero before pruning
        for method, figures in NONZERO.items():
            assert derived_nonzero(model, method, OUTPUT_LAYER[name]) == figures[name], method
    removed_mlp = 12 * (1536 * 768 + 1536 + 768 * 1536)
    assert TOTAL["vit_b_16"] - removed_mlp == AFTER_REMOVAL["vit_b_16"]


# ------------------------------------------------------------------------------------------------
# the prunable set and what is left out


@pytest.mark.parametrize("name", NAMES)
def test_roles_and_prunable_set_from_the_graph(dense, x, name):
    model = dense[name]
    roles = layer_roles(model, x)
    assert roles.inputs == (INPUT_LAYER[name],)
    assert roles.outputs == (OUTPUT_LAYER[name],)
    assert roles.unused == ()
    every = prunable_targets(model)
    assert len(every) == LAYERS[name]
    assert sum(t.numel() for t in every) == WEIGHTS[name]
    inner = prunable_targets(model, exclude_first=True, exclude_last=True, example_input=x)
    missing = {t.path for t in every} - {t.path for t in inner}
    assert missing == {f"{INPUT_LAYER[name]}.weight", f"{OUTPUT_LAYER[name]}.weight"}
    assert model.training is False  # the trace restores the caller's mode


def test_vit_attention_is_said_to_be_left_out(dense):
    """vit_b_16: the 12 ``out_proj`` (NonDynamicallyQuantizableLinear, a Linear) are prunable;
    the raw ``in_proj_weight``/``in_proj_bias``, layer norms, position embedding and class token
    are not, and one line says so."""
    model = dense["vit_b_16"]
    paths = [t.path for t in prunable_targets(model)]
    out_proj = [p for p in paths if p.endswith("self_attention.out_proj.weight")]
    assert len(out_proj) == 12
    gone = left_out(model)
    assert gone.groups["MultiheadAttention in_proj_weight"] == (12 * 3 * 768 * 768, 12)
    assert gone.groups["MultiheadAttention in_proj_bias"] == (12 * 3 * 768, 12)
    assert gone.groups["Encoder pos_embedding"] == (5 * 768, 1)  # 2x2 patches + class token
    assert gone.notable
    assert gone.numel == TOTAL["vit_b_16"] - WEIGHTS["vit_b_16"] - sum(
        m.bias.numel() for m in conv_linear(model).values()
    )
    assert gone.message().startswith(
        "21,304,320 parameters in 76 tensors are not prunable here (not conv/linear weights or "
        "biases): MultiheadAttention in_proj_weight (21,233,664 in 12), MultiheadAttention "
        "in_proj_bias (27,648 in 12), "
    )
    assert not left_out(dense["resnet50"]).notable  # batch norms only: nothing to say at run time


def test_select_targets_logs_what_is_left_out(dense, x):
    lines: list[str] = []
    cfg = ExperimentConfig(prune=PruneConfig(method="ln_structured", options={"norm": 2}))
    targets = select_targets(dense["vit_b_16"], cfg, x, log=lines.append)
    assert len(targets) == LAYERS["vit_b_16"] - 1
    assert len(lines) == 1
    assert lines[0].startswith("prunable set: 37 conv/linear layers; 21,304,320 parameters in 76")
    assert lines[0].endswith("; kept dense by the recipe: heads.head")
    # without an example the position decides (the registered models' behaviour); for
    # torchvision's vit_b_16 it happens to agree, the graph is what makes it right in general
    assert [t.path for t in select_targets(dense["vit_b_16"], cfg)] == [t.path for t in targets]


# ------------------------------------------------------------------------------------------------
# unstructured methods and N:M: exact counts


@pytest.mark.parametrize("method", ["global_magnitude", "l1_unstructured", "nm"])
@pytest.mark.parametrize("name", NAMES)
def test_exact_counts(dense, name, method):
    model = copy.deepcopy(dense[name])
    targets = prunable_targets(model)  # nothing is zero before pruning: see the test above
    options = {"n": 2, "m": 4} if method == "nm" else {}
    prune_step(targets, method, SPARSITY[method], **options)
    expected = NONZERO[method][name]
    assert nonzero(targets) == expected
    zeros = WEIGHTS[name] - expected
    if method == "global_magnitude":
        assert zeros == round(0.3 * WEIGHTS[name])
    if method == "l1_unstructured":
        for t in targets:
            assert t.numel() - int(t.tensor().count_nonzero()) == round(0.3 * t.numel()), t.path
    if method == "nm":  # every group of 4 (tail groups included) holds at most 2 non-zeros
        assert nm_accelerable_fraction(model, 2, 4) == 1.0
    make_permanent(model)
    assert count_parameters(model)[0] == TOTAL[name]
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


# ------------------------------------------------------------------------------------------------
# L2 filter pruning with channel removal

_LN: dict[str, dict] = {}  # name -> results of ln_pruned (computed once per module run)


def ln_pruned(dense: dict, x: torch.Tensor, name: str) -> dict:
    """ln_structured (norm 2, s=0.5, layer scope, remove_channels) through ``select_targets`` and
    ``method_options`` as ``run_pruning`` does, then ``remove_pruned_channels``."""
    if name in _LN:
        return _LN[name]
    model = copy.deepcopy(dense[name])
    cfg = ExperimentConfig(
        prune=PruneConfig(
            method="ln_structured", target_sparsity=0.5, remove_channels=True, options={"norm": 2}
        )
    )
    targets = select_targets(model, cfg, x)
    options = method_options(cfg, model, x, targets)
    prune_step(targets, "ln_structured", 0.5, **options)
    weights = [t for t in targets if t.param_name == "weight"]
    result = {
        "paths": {t.path for t in weights},
        "nonzero": nonzero(weights) + conv_linear(model)[OUTPUT_LAYER[name]].weight.numel(),
        "zero_filters": {
            t.path: int((t.tensor().flatten(1).count_nonzero(1) == 0).sum()) for t in weights
        },
        "biases_follow": all(
            torch.equal(t.tensor().flatten(1).count_nonzero(1) == 0, b.tensor() == 0)
            for t in weights
            for b in targets
            if b.param_name == "bias" and b.module is t.module
        ),
        "couple": options["couple"],
    }
    make_permanent(model)
    with torch.no_grad():
        result["masked_out"] = model(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        remove_pruned_channels(model, x)
    result["warnings"] = [str(w.message) for w in caught if "Torch-Pruning would" in str(w.message)]
    result["model"] = model
    _LN[name] = result
    return result


@pytest.mark.parametrize("name", NAMES)
def test_ln_structured_masks_skip_the_output_layer(dense, x, name):
    r = ln_pruned(dense, x, name)
    every = {f"{p}.weight" for p in conv_linear(dense[name])}
    assert every - r["paths"] == {f"{OUTPUT_LAYER[name]}.weight"}  # found by the graph
    assert r["nonzero"] == NONZERO["ln_structured"][name]
    for path, zero in r["zero_filters"].items():
        out = dense[name].get_submodule(path.removesuffix(".weight")).weight.shape[0]
        assert zero == round(0.5 * out), path
    assert r["biases_follow"]


@pytest.mark.parametrize("name", NAMES)
def test_removal_matches_torch_pruning_count(dense, x, name):
    r = ln_pruned(dense, x, name)
    model = r["model"]
    total, _ = count_parameters(model)
    assert total == AFTER_REMOVAL[name]
    _, params = tp.utils.count_ops_and_params(model, x)
    assert params == total
    with torch.no_grad():
        assert model(x).shape == (2, 10)
    layers = conv_linear(model)
    assert layers[OUTPUT_LAYER[name]].out_features == 10
    removable = {p for group in r["couple"] for p in group}
    for path in removable:  # every coupled layer lost exactly half its channels
        dense_out = dense[name].get_submodule(path).weight.shape[0]
        assert layers[path].weight.shape[0] == dense_out - round(0.5 * dense_out), path


@pytest.mark.parametrize("name", NAMES)
def test_torch_pruning_own_pruner_gives_the_same_count(dense, x, name):
    """Torch-Pruning's MetaPruner, L2 group importance at the same ratio per group (every channel
    count here is even, so its rounding and ours agree), on its own copy: same parameter count.
    For vit_b_16 its residual stream is kept out, as ours is (see ``unremovable_channels``)."""
    model = copy.deepcopy(dense[name])
    ignored = [model.get_submodule(OUTPUT_LAYER[name])]
    if name == "vit_b_16":
        ignored.append(model.conv_proj)
        for layer in model.encoder.layers:
            ignored += [layer.mlp[3], layer.self_attention]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its note on the ViT's unwrapped parameters
        pruner = tp.pruner.MetaPruner(
            model,
            x,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=0.5,
            ignored_layers=ignored,
        )
        pruner.step()
    assert count_parameters(model)[0] == AFTER_REMOVAL[name]


@pytest.mark.parametrize("name", NAMES)
def test_what_cannot_be_removed_is_one_line(dense, x, name):
    r = ln_pruned(dense, x, name)
    expected = [VIT_UNREMOVABLE] if name == "vit_b_16" else []
    assert r["warnings"] == expected
    assert unremovable_channels(dense[name], x) == expected


def test_vit_removal_is_exact(dense, x):
    """vit_b_16 loses only MLP hidden neurons (Linear, GELU(0) = 0, no norm in between): the
    shrunk model computes what the masked one did."""
    r = ln_pruned(dense, x, "vit_b_16")
    with torch.no_grad():
        assert torch.allclose(r["model"](x), r["masked_out"], atol=1e-5)
    mlp = r["model"].encoder.layers.encoder_layer_0.mlp
    assert (mlp[0].out_features, mlp[3].in_features) == (1536, 1536)
    assert r["model"].conv_proj.out_channels == 768  # the residual stream stays whole


class FixedReshape(nn.Module):
    """Keeps its channel count in a plain attribute, as torchvision's ViT keeps ``hidden_dim``:
    Torch-Pruning's graph allows the removal, the forward afterwards does not."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.channels = 8
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.head(y.reshape(y.shape[0], self.channels, -1).mean(2))


def test_a_removal_that_breaks_the_forward_is_one_line_naming_the_layer():
    torch.manual_seed(0)
    model, x = FixedReshape(), torch.randn(2, 3, 6, 6)
    prune_step(
        prunable_targets(model, True, exclude_last=True, example_input=x), "ln_structured", 0.5
    )
    with pytest.raises(ValueError) as err:
        remove_pruned_channels(model, x)
    assert str(err.value) == (
        "after removing channels of conv the model's forward fails: RuntimeError: mat1 and mat2 "
        "shapes cannot be multiplied (2x8 and 4x2)"
    )


# ------------------------------------------------------------------------------------------------
# the graph, not the position


class HeadFirst(nn.Module):
    """The classifier is defined (and listed by ``named_modules()``) first, and two layers read
    the input: position would keep the wrong layers dense."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
        self.side = nn.Conv2d(3, 8, 1)
        self.tail = nn.Linear(8, 8)  # listed last, but in the middle of the graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body(x).mean((2, 3)) + self.side(x).mean((2, 3))
        return self.head(self.tail(features))


def test_input_and_output_layers_come_from_the_graph():
    model, x = HeadFirst(), torch.randn(2, 3, 8, 8)
    roles = layer_roles(model, x)
    assert roles.inputs == ("body.0", "side")
    assert roles.outputs == ("head",)
    paths = [t.path for t in prunable_targets(model, False, True, True, example_input=x)]
    assert paths == ["body.2.weight", "tail.weight"]
    by_position = [t.path for t in prunable_targets(model, False, True, True)]
    assert by_position == ["body.0.weight", "body.2.weight", "side.weight"]  # what was wrong


class Attention(nn.Module):
    """An attention that reads the input itself, then a classifier."""

    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attention(x, x, x, need_weights=False)[0].mean(1))


def test_attention_out_proj_is_pruned_and_used():
    """``out_proj`` is a Linear the attention calls functionally (its own hooks never run): its
    mask still reaches the forward, and the training loop's ``masked_update`` trains it."""
    torch.manual_seed(0)
    model, x = Attention(), torch.randn(4, 5, 16)
    roles = layer_roles(model, x)
    assert roles.inputs == ()  # the raw in_proj reads the input, not out_proj
    assert roles.outputs == ("head",) and roles.unused == ()
    targets = prunable_targets(model, exclude_last=True, example_input=x)
    assert [t.path for t in targets] == ["attention.out_proj.weight"]
    prune_step(targets, "l1_unstructured", 0.5)
    assert int(targets[0].tensor().count_nonzero()) == 128
    reference = copy.deepcopy(model)
    make_permanent(reference)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))  # the masked weight is the one in use
    before = model.attention.out_proj.weight_orig.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with masked_update(model) as update:
        model(x).square().sum().backward()
        optimizer.step()
        update.zero_pruned()
    after = model.attention.out_proj.weight_orig.detach()
    mask = model.attention.out_proj.weight_mask.bool()
    assert not torch.equal(after[mask], before[mask])  # trained
    assert int(model.attention.out_proj.weight.count_nonzero()) == 128  # pruned ones stay zero


# ------------------------------------------------------------------------------------------------
# run_pruning on a torchvision model


def test_run_pruning_on_mobilenet_v3_small():
    """ln_structured with channel removal through ``run_pruning`` (0 fine-tune epochs) on
    synthetic 3x16x16 data with 4 classes (the counts do not depend on the image size): the
    classifier (found by the graph) keeps its 4 outputs (over 512 inputs left of 1024), the rest
    loses half its channels: 6 * (512 + 1) parameters fewer than AFTER_REMOVAL's 10-class model."""
    name = "tv_mobilenet_v3_small"

    def builder(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        return torchvision.models.mobilenet_v3_small(weights=None, num_classes=num_classes)

    MODELS.register(name)(builder)
    try:
        data = load_synthetic(n_train=32, n_test=16, channels=3, size=16, num_classes=4)
        cfg = ExperimentConfig(
            data=DataConfig(dataset="synthetic", batch_size=16),
            model=ModelConfig(name),
            prune=PruneConfig(
                method="ln_structured",
                target_sparsity=0.5,
                finetune_epochs=0,
                remove_channels=True,
                options={"norm": 2},
            ),
        )
        torch.manual_seed(0)
        state = builder(3, 4, 16).state_dict()
        lines: list[str] = []
        result = run_pruning(cfg, data, state, log=lines.append)
    finally:
        MODELS.unregister(name)
    assert result.final["total_params"] == AFTER_REMOVAL["mobilenet_v3_small"] - 6 * (512 + 1)
    assert result.dense["total_params"] == TOTAL["mobilenet_v3_small"] - 6 * (1024 + 1)
    assert (result.model.classifier[3].in_features, result.model.classifier[3].out_features) == (
        512,
        4,
    )
    pruned = {key for key in result.layer_sparsity if key.endswith(".weight")}
    every = {f"{path}.weight" for path in conv_linear(result.model)}
    assert every - pruned == {"classifier.3.weight"}  # the output layer, found by the graph
    assert not [line for line in lines if line.startswith("prunable set")]  # norms only
