"""Shared fixtures: Ray gets a private temp folder and is always shut down; CPU-only."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def ray_tmpdir(monkeypatch):
    """A short private RAY_TMPDIR (Ray's socket paths must stay under ~107 characters); Ray is
    shut down and the folder removed after the test, also when it fails."""
    folder = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", folder)
    yield folder
    import ray

    ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)
