"""The sweep command line resolved into a spec (bad input: tests/test_bad_inputs.py)."""

from __future__ import annotations

import os

import pytest

from sweeps.cli import UsageError, resolve_spec
from sweeps.resnet18_iterative import STUDY


def test_resolve_spec_defaults_and_quick():
    spec = resolve_spec(STUDY, ["--quick"])
    assert (spec.dataset, spec.models, spec.num_samples) == ("digits", ("resnet18",), 6)
    assert spec.experiment == "resnet18_iterative-quick"
    assert os.path.isabs(spec.storage_path) and os.path.isabs(spec.cache_dir)
    full = resolve_spec(STUDY, ["--gpus-per-trial", "0.25", "--num-samples", "3"])
    assert (full.dataset, full.gpus_per_trial, full.num_samples) == ("cifar10", 0.25, 3)
    with pytest.raises(UsageError, match="--max-concurrent 0"):
        resolve_spec(STUDY, ["--max-concurrent", "0"])
    with pytest.raises(UsageError, match="--space 'nope'"):
        resolve_spec(STUDY, ["--space", "nope"])
