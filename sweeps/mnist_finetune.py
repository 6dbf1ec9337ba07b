"""MNIST MLP and CNN pruned at 0.3/0.5/0.7/0.9/0.99 with fine-tuning; one CSV per model
(``mlp_pruning_results.csv``, ``cnn_pruning_results.csv``).

    python -m sweeps.mnist_finetune --quick --grid
"""

from __future__ import annotations

import sys

from .cli import Study
from .runner import main
from .studies import finetune_tables

STUDY = Study(
    name="mnist_finetune",
    models=("mlp", "cnn"),
    dataset="mnist",
    space="unstructured",
    description="MNIST MLP and CNN, pruning with fine-tuning at five sparsities (study 3).",
    baseline_epochs=5,
    quick_baseline_epochs=15,
    tables=finetune_tables,
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
