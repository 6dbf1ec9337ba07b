"""benchmarks/bench_fidelity.py without real MNIST: the missing-files path says how to get the
files and exits 0; a tiny run on generated MNIST-format files goes through every recipe of the
fine-tuning study's grid and the Han-style recipe as a sweep trial would; the issue's checks
fail where they should."""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))

import bench_fidelity  # noqa: E402

N_TRAIN, N_TEST = 200, 100


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: magic 2051 (images, 3 dims) or 2049 (labels, 1 dim), the sizes as big-endian int32,
    then the unsigned bytes row-major."""
    magic = 2051 if array.ndim == 3 else 2049
    path.write_bytes(struct.pack(f">i{array.ndim}i", magic, *array.shape) + array.tobytes())


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    """ROOT/MNIST/raw with a learnable toy set: class k lights a 6x6 block at position k."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(labels):
            row, col = divmod(int(k), 4)
            images[i, 2 + 6 * row : 8 + 6 * row, 2 + 6 * col : 8 + 6 * col] = 255
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return tmp_path


def test_missing_files_print_how_to_get_them_and_exit_0(tmp_path, capsys):
    assert bench_fidelity.main(["--data-root", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert f"python ../shared/tools/get_real_mnist.py {tmp_path / 'none'}" in out
    assert "train-images-idx3-ubyte" in out and "MNIST" in out


def test_one_missing_file_counts_as_missing(mnist_root, capsys):
    (mnist_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    assert bench_fidelity.missing_files(str(mnist_root)) == ["t10k-labels-idx1-ubyte"]
    assert bench_fidelity.main(["--data-root", str(mnist_root)]) == 0
    assert "get_real_mnist.py" in capsys.readouterr().out


def test_tiny_run_covers_the_grid_and_the_han_recipe(mnist_root, tmp_path, capsys):
    from search_spaces import get_grid
    from search_spaces.grids import HAN_MLP_RECIPE

    out_json = tmp_path / "rows.json"
    argv = ["--data-root", str(mnist_root), "--studies", "mnist_finetune", "--models", "mlp"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--json", str(out_json)]
    assert bench_fidelity.main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads(out_json.read_text())
    rows = result["rows"]
    grid = get_grid("mnist_finetune")
    fine = [r for r in rows if r["study"] == "mnist_finetune"]
    assert [r["recipe"] for r in fine] == grid and {r["model"] for r in fine} == {"mlp"}
    for r in fine:
        # the MLP's output layer is its module "5": pruned unless the recipe protects it
        assert ("5.weight" in r["layer_sparsity"]) is (not r["protected"])
        assert r["sparsity"] == pytest.approx(r["target_sparsity"], abs=1e-3)
        assert 0 <= r["accuracy"] <= 100
    names = [r["run_name"] for r in fine]
    assert names[4] == "mlp_prune_99perc_oneshot2"
    assert names[5] == "mlp_prune_99perc_oneshot2_keeplast"
    (han,) = [r for r in rows if r["study"] == "han"]
    assert han["recipe"] == HAN_MLP_RECIPE and han["sparsity"] == pytest.approx(0.92, abs=1e-3)
    # the printed table: each row beside issue 25's figure, and the Han et al. comparison
    line_99 = next(line for line in printed.splitlines() if line.strip().startswith(names[4]))
    assert line_99.split()[-2:] == ["38.01", "-"]
    assert "Han et al." in printed and "1.59" in printed
    kinds = [text.split()[0] + " " + text.split()[1] for text, _ in result["checks"]]
    assert kinds == ["mlp 0.99", "mlp 0.3..0.9", "han recipe"]


def _row(model, sparsity, accuracy, protected=False, study="mnist_finetune"):
    return {
        "study": study, "model": model, "target_sparsity": sparsity, "accuracy": accuracy,
        "protected": protected,
    }  # fmt: skip


def test_checks_fail_where_the_issue_says():
    def verdicts(rows):
        return [ok for _, ok in bench_fidelity.checks(rows)]

    curve = [_row("mlp", s, a) for s, a in ((0.3, 98.4), (0.5, 98.6), (0.7, 98.3), (0.9, 98.0))]
    assert verdicts(curve) == [True]  # a rise of exactly 0.2 points is allowed
    curve[1]["accuracy"] = 98.61
    assert verdicts(curve) == [False]
    assert verdicts([_row("mlp", 0.99, 90.0, True)]) == [True]
    assert verdicts([_row("mlp", 0.99, 89.9, True)]) == [False]
    assert verdicts([_row("mlp", 0.99, 30.0)]) == []  # the unprotected protocol row: no check
    han = {"study": "han", "accuracy": 98.40}
    assert verdicts([han]) == [True]
    assert verdicts([{**han, "accuracy": 98.39}]) == [False]
