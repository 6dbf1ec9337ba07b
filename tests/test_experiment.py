"""The prune-and-fine-tune experiment: schedules through run_pruning, rewinding, measurements,
channel removal, layer restriction and the dense-baseline cache, against hand-computed values.

Small models (mlp, cnn, cifar_cnn) on the bundled 8x8 digits or synthetic data, 1-2 epochs.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

import prune_core.train as train_module
from prune_core.baseline import baseline_path, load_or_train_baseline
from prune_core.checkpoint import cpu_state_dict
from prune_core.config import DataConfig, ExperimentConfig, ModelConfig, PruneConfig, TrainConfig
from prune_core.data import load_dataset
from prune_core.experiment import (
    model_for,
    recalibrate_batch_norm,
    rewind_weights,
    run_pruning,
    seed_everything,
    train_dense,
)
from prune_core.models import build_model
from prune_core.pruning import is_reparametrized, make_permanent, prunable_targets, prune_step
from prune_core.schedules import sparsity_schedule
from prune_core.train import evaluate, train_epochs

# mlp on 8x8 digits: 64*300 + 300*100 + 100*10 prunable weights
MLP_DIGITS_WEIGHTS = 19_200 + 30_000 + 1_000


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic")


def init_state(cfg: ExperimentConfig, data) -> dict[str, torch.Tensor]:
    """The seeded, untrained weights of ``cfg``'s model (a dense state without training)."""
    seed_everything(cfg.seed)
    return cpu_state_dict(model_for(cfg, data))


def collect_reports(cfg, data, state, **kwargs):
    reports: list[tuple[int, dict[str, float]]] = []
    result = run_pruning(
        cfg, data, state, report=lambda s, m: reports.append((s, dict(m))), log=quiet, **kwargs
    )
    return result, reports


# ------------------------------------------------------------------------------------------------
# schedules through run_pruning


def test_iterative_lands_on_target_exactly_at_step_k_and_not_before(digits):
    target, k = 0.875, 3
    cfg = ExperimentConfig(
        model=ModelConfig("mlp"),
        prune=PruneConfig(
            method="global_magnitude", target_sparsity=target, schedule="iterative", iterations=k
        ),
    )
    # each step removes half of the remaining weights: 1 - 0.125^(i/3)
    expected = [0.5, 0.75, 0.875]
    assert sparsity_schedule("iterative", target, k) == pytest.approx(expected, abs=1e-12)
    n = sum(t.numel() for t in prunable_targets(model_for(cfg, digits)))
    assert n == MLP_DIGITS_WEIGHTS

    result, reports = collect_reports(cfg, digits, init_state(cfg, digits))

    assert [step for step, _ in reports] == [1, 2, 3]
    for (_, metrics), s in zip(reports, expected, strict=True):
        assert metrics["step_target_sparsity"] == pytest.approx(s, abs=1e-12)
        assert metrics["sparsity"] == pytest.approx(round(s * n) / n, abs=1e-12)
    assert reports[-1][1]["step_target_sparsity"] == target  # exactly, no rounding drift
    assert reports[-1][1]["sparsity"] == pytest.approx(target, abs=1e-12)
    for _, metrics in reports[:-1]:
        assert metrics["sparsity"] < target - 1 / n  # the target is not reached before step k
    assert [h["sparsity"] for h in result.history] == [m["sparsity"] for _, m in reports]
    assert result.final["sparsity"] == reports[-1][1]["sparsity"]


def test_gradual_follows_the_cubic_schedule_at_every_step(digits):
    target, n_steps = 0.8, 5
    cfg = ExperimentConfig(
        model=ModelConfig("mlp"),
        prune=PruneConfig(
            method="global_magnitude",
            target_sparsity=target,
            schedule="gradual",
            iterations=n_steps,
        ),
    )
    # s_t = 0.8 * (1 - (1 - t/5)^3) = 0.8 * (1 - 0.512), (1 - 0.216), (1 - 0.064), (1 - 0.008), 1
    expected = [0.3904, 0.6272, 0.7488, 0.7936, 0.8]
    for t, s in enumerate(expected, 1):
        assert s == pytest.approx(target * (1 - (1 - t / n_steps) ** 3), abs=1e-12)
    n = MLP_DIGITS_WEIGHTS

    _, reports = collect_reports(cfg, digits, init_state(cfg, digits))

    assert [step for step, _ in reports] == [1, 2, 3, 4, 5]
    for (_, metrics), s in zip(reports, expected, strict=True):
        assert metrics["step_target_sparsity"] == pytest.approx(s, abs=1e-12)
        assert metrics["sparsity"] == pytest.approx(round(s * n) / n, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# weight rewinding


def rewind_cfg(retrain: str = "weight_rewind") -> ExperimentConfig:
    return ExperimentConfig(
        model=ModelConfig("cnn"),
        train=TrainConfig(epochs=2, rewind_epochs=(1,)),
        prune=PruneConfig(
            method="global_magnitude", target_sparsity=0.6, retrain=retrain, rewind_epoch=1
        ),
    )


@pytest.fixture(scope="module")
def rewind_baseline(digits):
    return load_or_train_baseline(rewind_cfg(), digits, cache_dir=None, log=quiet)


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_baseline_keeps_the_epoch_1_weights(digits, rewind_baseline):
    cfg = rewind_cfg()
    assert sorted(rewind_baseline.rewind_states) == [1]
    snapshot = rewind_baseline.rewind_states[1]
    # independently: the first epoch of the same 2-epoch cosine schedule, same seeds
    seed_everything(cfg.seed)
    model = model_for(cfg, digits)
    init = cpu_state_dict(model)
    t = cfg.train
    train_epochs(
        model, digits, 1, t.lr, cfg.data.batch_size, t.optimizer, t.momentum, t.weight_decay,
        seed=cfg.seed, log=quiet, schedule_epochs=t.epochs,
    )  # fmt: skip
    assert_same_state(snapshot, cpu_state_dict(model))
    # neither the initialisation nor the final weights
    assert not torch.equal(snapshot["0.weight"], init["0.weight"])
    assert not torch.equal(snapshot["0.weight"], rewind_baseline.state["0.weight"])


def test_rewind_weights_restores_the_snapshot_under_the_mask(digits, rewind_baseline):
    cfg = rewind_cfg()
    snapshot = rewind_baseline.rewind_states[1]
    model = model_for(cfg, digits)
    model.load_state_dict(rewind_baseline.state)
    targets = prunable_targets(model)
    prune_step(targets, "global_magnitude", 0.6)
    masks = {t.path: t.mask().clone() for t in targets}

    rewind_weights(model, snapshot)

    for t in targets:
        mask = masks[t.path]
        assert torch.equal(t.mask(), mask)  # the mask is untouched
        weight = getattr(t.module, t.param_name)  # the attribute the forward uses
        assert torch.equal(getattr(t.module, t.param_name + "_orig"), snapshot[t.path])
        assert torch.equal(weight[mask == 0], torch.zeros(int((mask == 0).sum())))
        assert torch.equal(weight[mask == 1], snapshot[t.path][mask == 1])
    for name, param in model.named_parameters():
        if not name.endswith("_orig"):
            assert torch.equal(param, snapshot[name]), name  # biases
    # the forward sees the rewound, masked weights
    reference = model_for(cfg, digits)
    masked = dict(snapshot)
    for t in targets:
        masked[t.path] = snapshot[t.path] * masks[t.path]
    reference.load_state_dict(masked)
    x = digits.normalize(digits.x_test[:32])
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-6)


def test_rewind_weights_restores_batch_norm_buffers():
    def net() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)
        )

    torch.manual_seed(0)
    early = net()
    with torch.no_grad():
        early[1].running_mean.uniform_(-1, 1)
        early[1].running_var.uniform_(0.5, 2)
        early[1].num_batches_tracked.fill_(7)
        early[1].weight.uniform_(0.5, 2)
    snapshot = cpu_state_dict(early)

    model = net()  # different weights and fresh BN statistics
    targets = prunable_targets(model)
    prune_step(targets, "l1_unstructured", 0.5)
    model.train()
    model(torch.randn(8, 1, 8, 8))  # moves the running statistics and the batch counter
    assert not torch.equal(model[1].running_mean, snapshot["1.running_mean"])

    rewind_weights(model, snapshot)

    for key in ("running_mean", "running_var", "num_batches_tracked", "weight", "bias"):
        assert torch.equal(getattr(model[1], key), snapshot[f"1.{key}"]), key
    for t in targets:
        mask = t.mask()
        assert int((mask == 0).sum()) == t.numel() // 2
        assert torch.equal(getattr(t.module, t.param_name), snapshot[t.path] * mask)


def test_weight_rewind_run_prunes_rewinds_then_replays_the_dense_tail(digits, rewind_baseline):
    cfg = rewind_cfg()
    result = run_pruning(
        cfg, digits, rewind_baseline.state, log=quiet, rewind_states=rewind_baseline.rewind_states
    )
    # by hand: prune the trained dense model, rewind to epoch 1, replay epoch 2 of 2
    model = model_for(cfg, digits)
    model.load_state_dict(rewind_baseline.state)
    prune_step(prunable_targets(model), "global_magnitude", 0.6)
    rewind_weights(model, rewind_baseline.rewind_states[1])
    t = cfg.train
    train_epochs(
        model, digits, 1, t.lr, cfg.data.batch_size, t.optimizer, t.momentum, t.weight_decay,
        seed=cfg.seed + 1, log=quiet, schedule_epochs=2, schedule_offset=1,
    )  # fmt: skip
    make_permanent(model)
    assert_same_state(cpu_state_dict(result.model), cpu_state_dict(model))
    assert result.final["sparsity"] == pytest.approx(0.6, abs=1e-4)


def test_weight_rewind_without_the_snapshot_names_the_allowed_epochs(digits, rewind_baseline):
    cfg = rewind_cfg()
    with pytest.raises(ValueError, match=r"rewind_epoch=1.*allowed: \[0\]"):
        run_pruning(
            cfg, digits, rewind_baseline.state, log=quiet,
            rewind_states={0: rewind_baseline.rewind_states[1]},
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"allowed: \[\]"):
        run_pruning(cfg, digits, rewind_baseline.state, log=quiet)


def test_config_rejects_a_rewind_epoch_the_baseline_does_not_keep():
    with pytest.raises(ValueError, match=r"prune\.rewind_epoch=2.*rewind_epochs=\(1,\)"):
        ExperimentConfig(
            train=TrainConfig(epochs=3, rewind_epochs=(1,)),
            prune=PruneConfig(retrain="weight_rewind", rewind_epoch=2),
        )
    # kept epoch: accepted
    ExperimentConfig(
        train=TrainConfig(epochs=3, rewind_epochs=(1, 2)),
        prune=PruneConfig(retrain="weight_rewind", rewind_epoch=2),
    )


def test_weight_rewind_with_channel_removal_is_rejected():
    # rewound dense weights no longer fit a model whose channels were removed: PruneConfig refuses
    # the pair, naming the field (prune.retrain), the value and the alternatives
    refused = r"^prune\.retrain='weight_rewind' is invalid; allowed: finetune or lr_rewind with "
    with pytest.raises(ValueError, match=refused + "remove_channels"):
        PruneConfig(
            method="ln_structured", target_sparsity=0.5, remove_channels=True, include_bias=True,
            retrain="weight_rewind", rewind_epoch=1,
        )  # fmt: skip


# ------------------------------------------------------------------------------------------------
# learning-rate rewinding


def test_lr_rewind_replays_the_tail_of_the_dense_cosine(synthetic, monkeypatch):
    lrs: list[float] = []
    make_optimizer = train_module.make_optimizer

    def recording_optimizer(*args, **kwargs):
        opt = make_optimizer(*args, **kwargs)
        opt.register_step_pre_hook(lambda o, a, kw: lrs.append(o.param_groups[0]["lr"]))
        return opt

    monkeypatch.setattr(train_module, "make_optimizer", recording_optimizer)
    lr, total, offset = 0.1, 4, 1
    steps_per_epoch = 2  # 256 synthetic training images, batch 128
    lines: list[str] = []
    torch.manual_seed(0)
    model = build_model("mlp", 1, 4, 8)
    train_epochs(
        model, synthetic, total - offset, lr, 128, log=lines.append,
        schedule_epochs=total, schedule_offset=offset,
    )  # fmt: skip

    # first step: the dense schedule's lr at epoch ``offset``
    assert lrs[0] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * offset / total)), rel=1e-12)
    assert lrs[0] == pytest.approx(0.1 * (0.5 + 0.5 * math.sqrt(0.5)), rel=1e-12)
    span = total * steps_per_epoch
    expected = [
        lr * 0.5 * (1 + math.cos(math.pi * (offset * steps_per_epoch + j) / span))
        for j in range((total - offset) * steps_per_epoch)
    ]
    assert lrs == pytest.approx(expected, rel=1e-12)
    # the logged lr after epoch e of the replay (2 decimals in scientific notation)
    logged = [float(re.search(r"lr (\S+)", line).group(1)) for line in lines]
    assert len(logged) == total - offset
    for e, value in enumerate(logged, 1):
        want = lr * 0.5 * (1 + math.cos(math.pi * (offset + e) / total))
        assert value == pytest.approx(want, rel=5e-3, abs=1e-12)


def test_lr_rewind_in_run_pruning_replays_the_dense_schedule(digits):
    cfg = ExperimentConfig(
        model=ModelConfig("mlp"),
        train=TrainConfig(epochs=3, lr=0.05),
        prune=PruneConfig(target_sparsity=0.5, retrain="lr_rewind", rewind_epoch=1, lr=0.5),
    )
    lines: list[str] = []
    run_pruning(cfg, digits, init_state(cfg, digits), log=lines.append)
    # epochs 2 and 3 of the dense 3-epoch cosine at train.lr (not prune.lr)
    assert [re.search(r"epoch \d+/\d+", line).group(0) for line in lines] == [
        "epoch 1/2",
        "epoch 2/2",
    ]
    logged = [float(re.search(r"lr (\S+)", line).group(1)) for line in lines]
    assert logged[0] == pytest.approx(0.05 * 0.5 * (1 + math.cos(2 * math.pi / 3)), rel=5e-3)
    assert logged[0] == pytest.approx(0.0125, rel=5e-3)
    assert logged[1] == 0.0


# ------------------------------------------------------------------------------------------------
# measurements


def test_measure_reports_dense_and_final_deployment_metrics(digits):
    cfg = ExperimentConfig(
        model=ModelConfig("cnn"), prune=PruneConfig(method="global_magnitude", target_sparsity=0.8)
    )
    result = run_pruning(cfg, digits, init_state(cfg, digits), log=quiet, measure=True)
    keys = {
        "size_bytes", "sparse_size_bytes", "flops", "effective_flops", "latency_ms",
        "latency_batch_size", "latency_device", "latency_threads",
    }  # fmt: skip
    assert keys <= set(result.dense)
    assert set(result.measurements) == keys
    final, dense = result.measurements, result.dense
    # cnn on 8x8 digits, batch 64, 2 FLOPs per multiply-add:
    # conv1 16*8*8*9, conv2 32*4*4*144, fc 128*128, fc 128*10 multiply-adds per image
    hand_flops = 2 * 64 * (16 * 64 * 9 + 32 * 16 * 144 + 128 * 128 + 128 * 10)
    assert dense["flops"] == final["flops"] == hand_flops == 12_877_824
    assert dense["effective_flops"] == hand_flops
    per_layer_macs = {"0.weight": 9216, "3.weight": 73728, "7.weight": 16384, "9.weight": 1280}
    density = {k: 1 - v for k, v in result.layer_sparsity.items()}
    assert set(density) == set(per_layer_macs)
    hand_effective = 2 * 64 * sum(per_layer_macs[k] * density[k] for k in per_layer_macs)
    assert final["effective_flops"] == pytest.approx(hand_effective, abs=1)
    assert final["effective_flops"] < final["flops"]
    assert final["sparse_size_bytes"] < dense["sparse_size_bytes"]
    assert final["sparse_size_bytes"] < final["size_bytes"]
    for m in (dense, final):
        assert m["latency_ms"] > 0
        assert m["latency_batch_size"] == 64
        assert m["latency_device"] == "cpu"
        assert m["latency_threads"] == torch.get_num_threads()
        assert m["size_bytes"] > 4 * 22_602  # at least the float32 parameters


# ------------------------------------------------------------------------------------------------
# physical channel removal


def test_remove_channels_shrinks_the_model_and_leaves_no_reparametrization(digits):
    cfg = ExperimentConfig(
        model=ModelConfig("cnn"),
        prune=PruneConfig(
            method="ln_structured", target_sparsity=0.5, remove_channels=True, include_bias=True
        ),
    )
    result = run_pruning(cfg, digits, init_state(cfg, digits), log=quiet)
    assert not is_reparametrized(result.model)
    assert result.dense["total_params"] == 22_602
    # half of every hidden layer's outputs go: 1->8 conv, 8->16 conv, 64->64 fc, 64->10 fc
    hand = (8 * 9 + 8) + (16 * 8 * 9 + 16) + (64 * 64 + 64) + (10 * 64 + 10)
    assert result.final["total_params"] == hand == 6_058
    assert sum(p.numel() for p in result.model.parameters()) == hand
    assert result.model(digits.normalize(digits.x_test[:4])).shape == (4, 10)


def test_remove_channels_with_default_bias_setting_shrinks_the_model(digits):
    cfg = ExperimentConfig(
        model=ModelConfig("cnn"),
        prune=PruneConfig(method="ln_structured", target_sparsity=0.5, remove_channels=True),
    )
    result = run_pruning(cfg, digits, init_state(cfg, digits), log=quiet)
    assert not is_reparametrized(result.model)
    assert result.final["total_params"] < result.dense["total_params"]
    assert result.final["sparsity"] >= 0.5


# ------------------------------------------------------------------------------------------------
# restricting pruning to some layers


def test_layers_restricts_ln_structured_to_the_first_conv_of_cifar_cnn(digits):
    base = ExperimentConfig(model=ModelConfig("cifar_cnn"))
    paths = [t.path for t in prunable_targets(model_for(base, digits))]
    assert paths == ["0.weight", "3.weight", "7.weight", "9.weight", "11.weight"]
    first = paths[0].rsplit(".", 1)[0]
    cfg = ExperimentConfig(
        model=ModelConfig("cifar_cnn"),
        prune=PruneConfig(method="ln_structured", target_sparsity=0.4, layers=(first,)),
    )
    result = run_pruning(cfg, digits, init_state(cfg, digits), log=quiet)
    modules = dict(result.model.named_modules())
    conv = modules[first]
    zero_filters = int((~conv.weight.flatten(1).ne(0).any(1)).sum())
    assert zero_filters == round(0.4 * 6) == 2
    for path in paths[1:]:
        w = modules[path.rsplit(".", 1)[0]].weight
        assert int(torch.count_nonzero(w)) == w.numel(), path
    assert set(result.layer_sparsity) == {"0.weight"}
    assert result.final["sparsity"] == pytest.approx(2 * 25 / 150, abs=1e-12)  # of layer 0


def test_unknown_layer_is_rejected_with_the_allowed_names(digits):
    cfg = ExperimentConfig(
        model=ModelConfig("cifar_cnn"),
        prune=PruneConfig(method="ln_structured", target_sparsity=0.4, layers=("0", "conv9")),
    )
    with pytest.raises(ValueError) as info:
        run_pruning(cfg, digits, init_state(cfg, digits), log=quiet)
    message = str(info.value)
    assert "conv9" in message and "allowed" in message
    for name in ("0", "3", "7", "9", "11"):
        assert re.search(rf"\b{name}\b", message.split("allowed")[1]), name


# ------------------------------------------------------------------------------------------------
# the dense-baseline cache


def test_baseline_cache_trains_once_then_reuses(digits, tmp_path):
    cfg = ExperimentConfig(
        data=DataConfig(dataset="digits"),
        model=ModelConfig("mlp"),
        train=TrainConfig(epochs=1, rewind_epochs=(0, 1)),
    )
    lines: list[str] = []
    first = load_or_train_baseline(cfg, digits, str(tmp_path), log=lines.append)
    assert not first.reused
    assert first.path == baseline_path(str(tmp_path), cfg)
    assert first.path.endswith(f"digits-mlp-{cfg.baseline_hash()}.pt")
    assert (tmp_path / f"digits-mlp-{cfg.baseline_hash()}.pt").is_file()
    assert len(lines) == 1  # one dense epoch trained
    assert sorted(first.rewind_states) == [0, 1]

    lines.clear()
    # another recipe on the same baseline: read from the cache, nothing trained
    other_recipe = ExperimentConfig(
        data=cfg.data, model=cfg.model, train=cfg.train, prune=PruneConfig(target_sparsity=0.9)
    )
    second = load_or_train_baseline(other_recipe, digits, str(tmp_path), log=lines.append)
    assert second.reused and lines == []
    assert second.path == first.path and second.key == first.key
    assert second.test_accuracy == first.test_accuracy
    assert_same_state(second.state, first.state)
    assert sorted(second.rewind_states) == [0, 1]
    for epoch in (0, 1):
        assert_same_state(second.rewind_states[epoch], first.rewind_states[epoch])
    assert not torch.equal(second.rewind_states[0]["1.weight"], second.rewind_states[1]["1.weight"])
    # the cached state really is the trained model
    model = model_for(cfg, digits)
    model.load_state_dict(second.state)
    assert evaluate(model, digits) == second.test_accuracy


def test_train_dense_snapshots_at_initialisation(digits):
    cfg = ExperimentConfig(
        model=ModelConfig("mlp"), train=TrainConfig(epochs=1, rewind_epochs=(0,))
    )
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    model, _ = train_dense(cfg, digits, log=quiet, snapshots=snapshots)
    assert sorted(snapshots) == [0]
    assert_same_state(snapshots[0], init_state(cfg, digits))
    assert not torch.equal(snapshots[0]["1.weight"], cpu_state_dict(model)["1.weight"])


# ------------------------------------------------------------------------------------------------
# batch norm statistics after channel removal


def test_recalibrate_batch_norm_sets_the_training_set_statistics(synthetic):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Flatten())
    bn = model[1]
    bn.running_mean.fill_(5.0)  # stale statistics, as after removing channels upstream
    bn.running_var.fill_(9.0)
    model.eval()
    recalibrate_batch_norm(model, synthetic, batch_size=50)
    with torch.no_grad():  # what the batch norm sees over the whole training split
        seen = torch.cat([model[0](x) for x, _ in synthetic.batches("train", 50)])
    # a cumulative average over the pass: the mean of the per-batch means and unbiased variances
    # (256 images: five batches of 50 and a tail of 6)
    chunks = [c.transpose(0, 1).reshape(3, -1) for c in seen.split([50] * 5 + [6])]
    means = torch.stack([c.mean(1) for c in chunks]).mean(0)
    variances = torch.stack([c.var(1) for c in chunks]).mean(0)
    assert torch.allclose(bn.running_mean, means, atol=1e-5)
    assert torch.allclose(bn.running_var, variances, atol=1e-4)
    assert bn.momentum == 0.1 and not model.training  # settings put back
