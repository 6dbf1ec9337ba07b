"""The GPU-speed paths, checked on the CPU: the CUDA threshold gives the CPU's masks, the masked
update trains like torch.nn.utils.prune's hooks, divergence stops before the bad step, a failed
compiled step falls back to eager, and the default GPU share per trial.

Tiny models on synthetic 8x8 data, float32, one or two epochs: well under a second each.
"""

from __future__ import annotations

import copy
import importlib.util
import pickle
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import prune_core.train as train_module
from prune_core.config import DataConfig, ExperimentConfig, ModelConfig, PruneConfig, TrainConfig
from prune_core.data import load_synthetic
from prune_core.experiment import rewind_weights, run_pruning, train_dense
from prune_core.models import build_model
from prune_core.pruning import (
    keep_mask_exact,
    keep_mask_kthvalue,
    keep_mask_sorted,
    make_permanent,
    masked_update,
    prunable_targets,
    prune_step,
)
from prune_core.train import TrainingDiverged, train_epochs
from sweeps.cli import Study, UsageError, build_parser, default_gpus_per_trial, resolve_spec


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def data20():
    """320 synthetic 1x8x8 images, 4 classes: 20 optimizer steps per epoch at batch 16."""
    return load_synthetic(n_train=320)


# ---------------------------------------------------------------- threshold: CPU and CUDA paths


def test_sorted_path_hand_computed():
    scores = torch.tensor([3.0, 1.0, 1.0, 1.0, 2.0, 0.5])
    # 0.5 is lowest; two of the three tied 1.0s go, the lowest index first
    assert keep_mask_sorted(scores, 3).tolist() == [True, False, False, True, True, False]
    assert keep_mask_sorted(torch.zeros(10), 4).tolist() == [False] * 4 + [True] * 6
    # -0.0 and 0.0 are equal scores: position decides, not the sign bit
    signed_zeros = torch.tensor([0.0, -0.0, 0.0, -0.0])
    assert keep_mask_sorted(signed_zeros, 2).tolist() == [False, False, True, True]


def _score_cases() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    random = torch.rand(3, 5, 7, generator=g)
    ties = torch.randint(0, 4, (1000,), generator=g).float()  # 4 values, ~250 copies each
    pruned_before = random.clone().reshape(-1)
    pruned_before[::3] = -1.0  # already-pruned weights score -1, as in iterative pruning
    zeros = torch.randn(500, generator=g).clamp(min=0)  # about half are exactly 0
    zeros[::7] = -0.0
    return {
        "random": random,
        "ties": ties,
        "pruned_before": pruned_before,
        "zeros": zeros,
        "all_equal": torch.full((64,), 0.25),
    }


@pytest.mark.parametrize("case", list(_score_cases()))
def test_cuda_path_gives_the_cpu_masks(case):
    scores = _score_cases()[case]
    n = scores.numel()
    for n_prune in sorted({-1, 0, 1, n // 3, n // 2, n - 1, n, n + 5}):
        cpu = keep_mask_kthvalue(scores, n_prune)
        cuda_path = keep_mask_sorted(scores, n_prune)
        assert cuda_path.shape == scores.shape and cuda_path.dtype == torch.bool
        assert torch.equal(cuda_path, cpu), (case, n_prune)
        assert int((~cpu).sum()) == min(max(n_prune, 0), n)
    # on a CPU tensor, keep_mask_exact is the kthvalue path
    assert torch.equal(keep_mask_exact(scores, n // 2), keep_mask_kthvalue(scores, n // 2))


# ---------------------------------------------------------------- masked update


def pruned_cnn(sparsity: float = 0.5) -> nn.Module:
    """The study's small CNN at 1x8x8, 4 classes, all conv/linear weights and biases pruned
    except the last layer (so one layer trains dense)."""
    torch.manual_seed(0)
    model = build_model("cnn", 1, 4, 8)
    targets = prunable_targets(model, include_bias=True, exclude_last=True)
    prune_step(targets, "global_magnitude", sparsity)
    return model


def effective_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``orig * mask`` for pruned tensors, the plain tensor otherwise, keyed by the plain name."""
    state = model.state_dict()
    out = {}
    for key, value in state.items():
        if key.endswith("_orig"):
            base = key[: -len("_orig")]
            out[base] = value * state[base + "_mask"]
        elif not key.endswith("_mask"):
            out[key] = value
    return out


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_masked_update_trains_like_prune_hooks(data20, optimizer):
    model = pruned_cnn()
    before = effective_state(model)
    masks_before = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("_mask")}
    hooks, masked = copy.deepcopy(model), copy.deepcopy(model)
    # 20 steps at batch 16; SGD has Nesterov momentum 0.9 and weight decay 5e-4 by default
    kwargs = dict(epochs=1, lr=0.05, batch_size=16, optimizer=optimizer, log=quiet)
    train_epochs(hooks, data20, masked_update=False, **kwargs)
    train_epochs(masked, data20, masked_update=True, **kwargs)

    hooks_state, masked_state = hooks.state_dict(), masked.state_dict()
    assert list(masked_state) == list(hooks_state)  # same checkpoint keys, same order
    for key, mask in masks_before.items():
        assert torch.equal(masked_state[key], mask) and torch.equal(hooks_state[key], mask)
    after_hooks, after_masked = effective_state(hooks), effective_state(masked)
    for key in after_hooks:
        torch.testing.assert_close(after_masked[key], after_hooks[key], atol=1e-5, rtol=0)
        assert not torch.equal(after_hooks[key], before[key]), f"{key} did not train"
    # the module attribute is the masked product again, and the pruned entries are zero
    for module in masked.modules():
        if hasattr(module, "weight_mask"):
            assert torch.equal(module.weight, module.weight_orig * module.weight_mask)
            assert not module.weight[module.weight_mask == 0].any()

    # prune.remove gives the same plain checkpoint from both
    assert make_permanent(hooks) == make_permanent(masked) == 6  # 3 layers x (weight, bias)
    hooks_state, masked_state = hooks.state_dict(), masked.state_dict()
    assert list(masked_state) == list(hooks_state) == list(build_model("cnn", 1, 4, 8).state_dict())
    for key in hooks_state:
        torch.testing.assert_close(masked_state[key], hooks_state[key], atol=1e-5, rtol=0)


def test_masked_update_block_swaps_hooks_and_restores_them_on_error():
    torch.manual_seed(0)
    model = build_model("cnn", 1, 4, 8)
    conv = model[0]
    conv.register_forward_pre_hook(lambda m, a: None)  # user hooks before and after pruning
    prune_step(
        prunable_targets(model, include_bias=True, exclude_last=True), "global_magnitude", 0.5
    )
    conv.register_forward_pre_hook(lambda m, a: None)
    order = list(conv._forward_pre_hooks.values())  # user, weight, bias, user
    assert [isinstance(h, prune.BasePruningMethod) for h in order] == [False, True, True, False]

    with pytest.raises(RuntimeError, match="boom"), masked_update(model) as update:
        assert len(update) == 6
        assert not prune.is_pruned(model)  # prune hooks off inside
        assert conv.weight is conv.weight_orig  # trained directly
        assert not conv.weight_orig[conv.weight_mask == 0].any()  # zeroed once on entry
        assert list(model.state_dict()) == list(pruned_cnn().state_dict())
        kept = conv.weight_orig.detach().clone()
        with torch.no_grad():
            conv.weight_orig.add_(1.0)  # as if an optimizer step had revived pruned entries
        update.zero_pruned()
        assert torch.equal(conv.weight_orig, (kept + 1.0) * conv.weight_mask)
        raise RuntimeError("boom")

    assert list(conv._forward_pre_hooks.values()) == order  # same hooks, same order
    assert conv.weight is not conv.weight_orig
    assert torch.equal(conv.weight, conv.weight_orig * conv.weight_mask)
    prune.remove(conv, "weight")  # still a normal torch.nn.utils.prune reparametrization
    assert "weight" in dict(conv.named_parameters())


def test_epoch_callbacks_and_rewinding_see_the_usual_prune_state(data20):
    model = pruned_cnn()
    rewind_to = {k: v.clone() for k, v in effective_state(pruned_cnn(0.0)).items()}
    seen = []

    def check(epoch: int) -> None:
        seen.append((epoch, prune.is_pruned(model), model[0].weight is model[0].weight_orig))

    train_epochs(model, data20, 2, 0.05, 64, log=quiet, on_epoch_end=check)
    assert seen == [(1, True, False), (2, True, False)]
    rewind_weights(model, rewind_to)
    conv = model[0]
    assert torch.equal(conv.weight, rewind_to["0.weight"] * conv.weight_mask)


# ---------------------------------------------------------------- divergence


class NanAtCall(nn.Module):
    """Passes logits through, but returns NaN on the ``k``-th call (1-based), keeping a copy of
    the model's weights at that moment."""

    def __init__(self, k: int):
        super().__init__()
        self.k, self.calls, self.weights_then = k, 0, None

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.k:
            self.weights_then = {n: p.detach().clone() for n, p in self.owner.named_parameters()}
            return logits * float("nan")
        return logits


def test_divergence_raises_before_the_bad_step(data20):
    torch.manual_seed(0)
    probe = NanAtCall(k=25)  # 20 steps per epoch at batch 16: epoch 2, step 25 of the run
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), probe)
    object.__setattr__(probe, "owner", model)  # not registered as a submodule: no cycle
    with pytest.raises(TrainingDiverged) as caught:
        train_epochs(model, data20, 3, 0.05, 16, log=quiet, label="retrain step 1/1")
    err = caught.value
    assert str(err) == "[retrain step 1/1] loss nan at epoch 2 step 25: training diverged"
    assert (err.label, err.epoch, err.step) == ("retrain step 1/1", 2, 25)
    assert err.loss != err.loss  # nan
    assert probe.calls == 25  # no further forward
    for name, param in model.named_parameters():  # the bad step was not applied
        assert torch.equal(param, probe.weights_then[name]), name
    again = pickle.loads(pickle.dumps(err))  # Ray sends exceptions between processes
    assert type(again) is TrainingDiverged and str(again) == str(err) and again.step == 25


def test_huge_learning_rate_diverges_at_step_two(data20):
    # step 1 starts from small weights: finite loss. It moves each of the MLP's three layers by
    # about lr * |grad| ~ 1e29; the logits of step 2 are a product of three such layers, ~1e87,
    # past float32's 3.4e38: inf - inf = nan.
    torch.manual_seed(0)
    model = build_model("mlp", 1, 4, 8)
    with pytest.raises(TrainingDiverged) as caught:
        train_epochs(model, data20, 2, 1e30, 64, log=quiet, label="dense")
    assert (caught.value.epoch, caught.value.step) == (1, 2)
    assert str(caught.value).startswith("[dense] loss ")
    # a step taken with a nan loss would have made every weight nan
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---------------------------------------------------------------- compile and its fallback


class BackwardFails(torch.autograd.Function):
    """Identity forward whose backward raises, like a compiled backward that fails lazily."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("backward capture failed")


def compile_raises(model, cuda):
    raise RuntimeError("inductor unavailable\nlong traceback")


def forward_raises(model, cuda):
    def step(x):
        raise RuntimeError("no graph\nmore")

    return step


def backward_raises(model, cuda):
    return lambda x: BackwardFails.apply(model(x))


@pytest.mark.parametrize(
    "fake_compile, expected_line",
    [
        (compile_raises, "compile failed (RuntimeError: inductor unavailable); training eagerly"),
        (forward_raises, "compiled step failed (RuntimeError: no graph); continuing eagerly"),
        (
            backward_raises,
            "compiled step failed (RuntimeError: backward capture failed); continuing eagerly",
        ),
    ],
    ids=["compile", "forward", "backward"],
)
def test_failed_compile_falls_back_to_eager(data20, monkeypatch, fake_compile, expected_line):
    eager = pruned_cnn()
    train_epochs(eager, data20, 1, 0.05, 64, log=quiet, label="dense")
    monkeypatch.setattr(train_module, "_compile_model", fake_compile)
    lines: list[str] = []
    model = pruned_cnn()
    train_epochs(model, data20, 1, 0.05, 64, log=lines.append, label="dense", compile=True)
    assert [line for line in lines if "compile" in line] == [f"[dense] {expected_line}"]
    assert list(model.state_dict()) == list(eager.state_dict())
    for key, value in eager.state_dict().items():  # the failed step was redone, not skipped
        assert torch.equal(model.state_dict()[key], value), key


def test_config_compile_reaches_train_epochs(monkeypatch):
    calls = []
    monkeypatch.setattr(train_module, "_compile_model", lambda m, cuda: calls.append(cuda) or m)
    data = load_synthetic()
    cfg = ExperimentConfig(
        data=DataConfig(dataset="synthetic", batch_size=128),
        model=ModelConfig(name="mlp"),
        train=TrainConfig(epochs=1, compile=True),
        prune=PruneConfig(target_sparsity=0.5, finetune_epochs=1),
    )
    model, _ = train_dense(cfg, data, log=quiet)
    run_pruning(cfg, data, model.state_dict(), log=quiet)
    assert calls == [False, False]  # dense training and one retraining, on the CPU
    # a default that changes nothing: earlier baseline names stay valid
    assert ExperimentConfig().baseline_hash() == "44e4ffe48e"
    assert TrainConfig(compile=True) != TrainConfig()


# ---------------------------------------------------------------- GPUs per trial


def test_default_gpus_per_trial():
    assert default_gpus_per_trial(("cnn",), 0.0) == 0.0
    assert default_gpus_per_trial(("resnet18", "cnn"), 0) == 0.0
    assert default_gpus_per_trial(("cnn",), 1.0) == 0.25  # four trials per GPU
    assert default_gpus_per_trial(("resnet18",), 8.0) == 0.25
    assert default_gpus_per_trial(("mlp", "simple_cnn", "cifar_cnn"), 0.5) == 0.25


def test_gpus_per_trial_flag_defaults_to_none():
    study = Study("probe", ("mlp",), "digits", "unstructured", "probe study")
    assert build_parser(study).parse_args([]).gpus_per_trial is None
    assert resolve_spec(study, ["--quick"]).gpus_per_trial is None
    assert resolve_spec(study, ["--quick", "--gpus-per-trial", "0.5"]).gpus_per_trial == 0.5
    with pytest.raises(UsageError, match=r"^--gpus-per-trial -1: must be >= 0"):
        resolve_spec(study, ["--quick", "--gpus-per-trial", "-1"])


# ---------------------------------------------------------------- bench_gpu without CUDA


def test_bench_gpu_without_cuda_says_so_and_exits_0(monkeypatch, capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_gpu", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main([]) == 0
    assert capsys.readouterr().out == "bench_gpu: no CUDA device; nothing to measure\n"
