"""Configs: validation messages, round trips and hashes that stay stable across versions."""

from __future__ import annotations

import hashlib
import json

import pytest

from prune_core.config import (
    DataConfig,
    ExperimentConfig,
    PruneConfig,
    TrainConfig,
    non_default_fields,
    stable_hash,
)


def test_round_trip_through_dict_and_json():
    cfg = ExperimentConfig(
        data=DataConfig(dataset="cifar10", batch_size=64),
        prune=PruneConfig(target_sparsity=0.75, schedule="iterative", iterations=3),
        seed=7,
    )
    assert ExperimentConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_default_hash_is_hash_of_empty_dict():
    # only non-default fields are hashed, so defaults hash like {}: adding a field with a default
    # keeps every earlier hash (and cache file name) valid
    assert non_default_fields(ExperimentConfig()) == {}
    assert ExperimentConfig().short_hash() == hashlib.sha256(b"{}").hexdigest()[:10]


def test_hash_pinned_and_sensitive():
    cfg = ExperimentConfig(prune=PruneConfig(target_sparsity=0.9))
    assert non_default_fields(cfg) == {"prune": {"target_sparsity": 0.9}}
    expected = hashlib.sha256(b'{"prune":{"target_sparsity":0.9}}').hexdigest()[:10]
    assert cfg.short_hash() == expected
    assert cfg.short_hash() != ExperimentConfig().short_hash()


def test_baseline_hash_ignores_recipe_and_data_location():
    a = ExperimentConfig(data=DataConfig(root="/a", download=True))
    b = ExperimentConfig(
        data=DataConfig(root="/b", download=False),
        prune=PruneConfig(target_sparsity=0.9, schedule="iterative", iterations=4),
    )
    assert a.baseline_hash() == b.baseline_hash()
    assert a.baseline_hash() != ExperimentConfig(train=TrainConfig(epochs=3)).baseline_hash()
    assert a.baseline_hash() != ExperimentConfig(seed=1).baseline_hash()
    assert a.baseline_hash() == stable_hash(a.baseline_key())


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda: PruneConfig(target_sparsity=1.2), "prune.target_sparsity=1.2"),
        (lambda: PruneConfig(iterations=0, schedule="iterative"), "prune.iterations=0"),
        (lambda: PruneConfig(iterations=3, schedule="oneshot"), "1 for oneshot"),
        (lambda: PruneConfig(lr=0), "prune.lr=0"),
        (lambda: TrainConfig(optimizer="rmsprop"), "sgd, adam"),
        (lambda: DataConfig(batch_size=0), "data.batch_size=0"),
    ],
)
def test_validation_names_field_and_allowed(make, needle):
    with pytest.raises(ValueError, match="allowed") as err:
        make()
    assert needle in str(err.value)
    assert "\n" not in str(err.value)
