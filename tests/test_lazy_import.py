"""prune_core loads its submodules on first use: the torch-free modules that command lines import
before checking their flags do not import torch, and the package's names still resolve, with
every pruning method registered however the registry is reached.

Each check runs in a fresh interpreter: this test process may have imported torch long ago.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what the command lines import before their flags are checked; sweeps.server never needs torch
TORCH_FREE = (
    "prune_core", "prune_core.cliutils", "prune_core.registry", "prune_core.plugins",
    "prune_core.methods", "sweeps.server",
)  # fmt: skip


def run_python(code: str) -> str:
    """stdout of ``python -c code`` in a fresh interpreter at the repository root."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("module", TORCH_FREE)
def test_torch_free_modules_do_not_import_torch(module):
    assert run_python(f"import {module}, sys; print('torch' in sys.modules)") == "False"


def test_package_names_resolve_and_see_every_pruning_method():
    out = run_python(
        "from prune_core import run_pruning, PRUNING_METHODS\n"
        "print(callable(run_pruning), ','.join(PRUNING_METHODS.names()))"
    )
    ok, names = out.split()
    assert ok == "True"
    assert {"ln_structured", "nm"} <= set(names.split(","))


@pytest.mark.parametrize(
    "code",
    [
        "from prune_core.pruning import PRUNING_METHODS\nprint(','.join(PRUNING_METHODS.names()))",
        # PruneConfig checks ``method`` against the registry it reaches through prune_core.pruning
        "from prune_core.config import PruneConfig\n"
        "print(PruneConfig(method='ln_structured').method + ',' + PruneConfig(method='nm').method)",
    ],
    ids=["pruning-module", "prune-config"],
)
def test_structured_methods_registered_through_submodules(code):
    assert {"ln_structured", "nm"} <= set(run_python(code).split(","))


def test_every_exported_name_resolves():
    import prune_core

    for name in prune_core.__all__:
        assert getattr(prune_core, name) is not None, name
    assert set(prune_core.__all__) <= set(dir(prune_core))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        prune_core.nope  # noqa: B018
