"""MNIST CNN: L1 unstructured pruning of weights and biases at 50%, accuracy before pruning, after
pruning and after making it permanent (``--grid``); Optuna over unstructured recipes otherwise.

    python -m sweeps.mnist_cnn_l1 --quick --grid
"""

from __future__ import annotations

import sys

from .cli import Study
from .runner import main
from .studies import cnn_l1_tables

STUDY = Study(
    name="mnist_cnn_l1",
    models=("cnn",),
    dataset="mnist",
    space="unstructured",
    description="MNIST CNN, L1 unstructured pruning of weights and biases (study 1).",
    baseline_epochs=5,
    baseline_lr=0.05,
    quick_baseline_epochs=15,
    tables=cnn_l1_tables,
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
