"""MNIST SimpleCNN: magnitude (unstructured) against structured pruning at 30/50/70/90%, with
accuracy, sparsity, size in MB and parameter counts; every pruned model is saved as a checkpoint
artifact (the study kept the 50% one).

    python -m sweeps.mnist_magnitude_vs_structured --quick --grid
"""

from __future__ import annotations

import sys

from .cli import Study
from .runner import main
from .studies import magnitude_vs_structured_tables

STUDY = Study(
    name="mnist_magnitude_vs_structured",
    models=("simple_cnn",),
    dataset="mnist",
    space="structured",
    description="MNIST SimpleCNN, unstructured versus structured pruning (study 2).",
    # the original trained with Adam: Adam at a cosine-decayed peak of 3e-3, batch 64, no weight
    # decay, as the first study (sweeps.mnist_cnn_l1), for the 5 epochs this study always had
    baseline_epochs=5,
    batch_size=64,
    baseline_lr=3e-3,
    baseline_optimizer="adam",
    baseline_weight_decay=0.0,
    quick_baseline_epochs=15,
    tables=magnitude_vs_structured_tables,
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
