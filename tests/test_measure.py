"""prune_core.measure against hand-computed sizes, FLOPs and the sparse checkpoint round trip."""

from __future__ import annotations

import torch
from torch import nn

from prune_core import measure
from prune_core.pruning import make_permanent, prunable_targets, prune_step


def _sparse_linear(in_features: int, out_features: int, sparsity: float) -> nn.Linear:
    """A Linear layer whose weight has exactly round(sparsity * numel) zeros."""
    torch.manual_seed(0)
    layer = nn.Linear(in_features, out_features)
    with torch.no_grad():
        flat = layer.weight.view(-1)
        flat.copy_(torch.rand(flat.numel()) + 0.5)  # no accidental zeros
        flat[torch.randperm(flat.numel())[: round(sparsity * flat.numel())]] = 0.0
    return layer


# --- FLOPs ----------------------------------------------------------------------------------------


def test_flops_of_linear_is_2_times_batch_in_out():
    layer = nn.Linear(10, 5)
    assert measure.flops(layer, torch.randn(3, 10)) == 2 * 3 * 10 * 5  # 300


def test_flops_of_conv_counts_every_output_element():
    conv = nn.Conv2d(2, 4, kernel_size=3, padding=1)
    # output 1 x 4 x 5 x 5 = 100 elements, each 2 * 3 * 3 = 18 multiply-adds -> 2 * 100 * 18
    assert measure.flops(conv, torch.randn(1, 2, 5, 5)) == 3600


def test_flops_by_module_splits_a_model_and_sums_to_the_total():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    counts = measure.flops_by_module(model, torch.randn(2, 1, 6, 6))
    conv = 2 * (2 * 2 * 4 * 4) * (1 * 3 * 3)  # batch 2, out 2x4x4, kernel 1x3x3 -> 1152
    linear = 2 * 2 * 32 * 3  # 384
    assert counts["0"] == conv
    assert counts["3"] == linear
    assert counts["1"] == 0  # ReLU counts nothing
    assert counts[""] == conv + linear


def test_effective_flops_halves_when_half_the_weights_are_zero():
    layer = _sparse_linear(10, 5, 0.5)
    x = torch.randn(3, 10)
    assert measure.flops(layer, x) == 300
    assert measure.effective_flops(layer, x) == 150


def test_effective_flops_scales_each_layer_by_its_own_density():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    prune_step(prunable_targets(model)[1:], "l1_unstructured", 0.75)  # only the second layer
    x = torch.randn(2, 8)
    first, second = 2 * 2 * 8 * 8, 2 * 2 * 8 * 4  # 256, 128
    assert measure.flops(model, x) == first + second  # dense count ignores the masks
    assert measure.effective_flops(model, x) == first + second // 4  # masked weight is used


def test_flops_leaves_the_model_in_training_mode_and_adds_no_hooks():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    model.train()
    model[1].eval()  # a per-module flag that a plain model.train() would overwrite
    measure.flops(model, torch.randn(3, 4))
    assert model.training and model[0].training and not model[1].training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# --- checkpoint sizes -----------------------------------------------------------------------------


def test_size_bytes_is_the_length_of_torch_save(tmp_path):
    layer = nn.Linear(20, 10)
    path = tmp_path / "dense.pt"
    with open(path, "wb") as f:  # a file object: same archive name as an in-memory save
        torch.save(layer.state_dict(), f)
    assert measure.size_bytes(layer) == path.stat().st_size
    assert measure.size_bytes(nn.Linear(40, 10)) > measure.size_bytes(layer) + 700  # +800 B weights


def test_sparse_size_is_much_smaller_at_90_percent_sparsity():
    layer = _sparse_linear(200, 100, 0.9)  # 80 kB of fp32 weights, 8 kB non-zero
    dense, sparse = measure.size_bytes(layer), measure.sparse_size_bytes(layer)
    # payload: 2500 B bitmask + 8000 B values + 400 B bias against 80400 B, plus container bytes
    assert sparse < 0.25 * dense


def test_dense_tensors_stay_dense():
    encoded = measure.encode_sparse_state(nn.Linear(30, 30).state_dict())
    assert encoded["sparse"] == {}
    assert set(encoded["dense"]) == {"weight", "bias"}


def test_sparse_checkpoint_round_trips_exactly_with_weights_only_load(tmp_path):
    torch.manual_seed(0)
    sparse_fp32 = torch.randn(41, 13)  # 533 elements: not a multiple of 8
    sparse_fp32[torch.rand(41, 13) < 0.9] = 0.0
    sparse_fp16 = torch.randn(16, 8, 3, 3).half()
    sparse_fp16[torch.rand(16, 8, 3, 3) < 0.95] = 0.0
    state = {
        "conv.weight": sparse_fp16,
        "fc.weight": sparse_fp32,
        "fc.bias": torch.randn(41),  # no zeros: stays dense
        "tiny": torch.tensor([0.0, 0.0, 1.5]),  # sparse record would be larger: stays dense
        "bn.num_batches_tracked": torch.tensor(7),  # integer: stays dense
        "all_zero": torch.zeros(64),
        "scalar": torch.tensor(0.0),
        "empty": torch.zeros(0, 3),
    }
    path = str(tmp_path / "sparse.pt")
    measure.save_sparse_state(state, path)

    raw = torch.load(path, weights_only=True)  # a plain, safe-to-load file
    assert {"conv.weight", "fc.weight", "all_zero"} <= set(raw["sparse"])
    assert {"fc.bias", "tiny", "bn.num_batches_tracked", "scalar", "empty"} <= set(raw["dense"])

    back = measure.load_sparse_state(path)
    assert list(back) == list(state)
    for key, tensor in state.items():
        assert back[key].dtype == tensor.dtype, key
        assert back[key].shape == tensor.shape, key
        assert torch.equal(back[key], tensor), key


def test_pruned_model_round_trips_and_matches_the_permanent_size(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 10))
    dense_size = measure.size_bytes(model)
    prune_step(prunable_targets(model), "global_magnitude", 0.9)
    # still reparametrized (weight_orig + weight_mask): measured through the masked weight
    masked_size, masked_sparse = measure.size_bytes(model), measure.sparse_size_bytes(model)
    assert masked_size < 1.1 * dense_size  # the mask buffers are not counted
    assert masked_sparse < 0.3 * dense_size

    make_permanent(model)
    assert abs(measure.size_bytes(model) - masked_size) < 256
    state = model.state_dict()
    path = str(tmp_path / "model.pt")
    measure.save_sparse_state(state, path)
    back = measure.load_sparse_state(path)
    assert all(torch.equal(back[k], v) for k, v in state.items())
    fresh = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 10))
    fresh.load_state_dict(back)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(fresh(x), model(x))


# --- latency and the MLflow contract --------------------------------------------------------------


def test_latency_dict_has_the_documented_keys():
    model = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.5))
    model.train()
    result = measure.latency_ms(model, torch.randn(5, 16), warmup=1, repeats=3)
    assert set(result) == {"median_ms", "batch_size", "device", "threads", "repeats"}
    assert result["median_ms"] > 0
    assert result["batch_size"] == 5
    assert result["device"] == "cpu"
    assert result["threads"] == torch.get_num_threads()
    assert result["repeats"] == 3
    assert model.training  # restored after the eval-mode timing


def test_measure_all_uses_the_mlflow_key_names():
    layer = _sparse_linear(10, 5, 0.5)
    result = measure.measure_all(layer, torch.randn(3, 10), warmup=0, repeats=2)
    assert set(result) == {
        "size_bytes",
        "sparse_size_bytes",
        "flops",
        "effective_flops",
        "latency_ms",
        "latency_batch_size",
        "latency_device",
        "latency_threads",
    }
    assert result["flops"] == 300 and result["effective_flops"] == 150
    assert result["size_bytes"] == measure.size_bytes(layer)
    assert result["sparse_size_bytes"] == measure.sparse_size_bytes(layer)
    assert result["latency_ms"] > 0 and result["latency_batch_size"] == 3
    assert result["latency_device"] == "cpu"
