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
    # the original: 3 epochs of Adam at a constant 1e-3, batch 64, no weight decay. Here the
    # learning rate decays by a cosine to 0, whose mean is half the peak: a peak of 3e-3 reaches
    # the original's accuracy in its 3 epochs (1e-3 falls short when the budget is short: 0.77
    # against 0.85 over 5 seeds on 1,000 MNIST-format images; tests/test_study_defaults.py)
    baseline_epochs=3,
    batch_size=64,
    baseline_lr=3e-3,
    baseline_optimizer="adam",
    baseline_weight_decay=0.0,
    # digits: 1,437 training images; 15 epochs reach 0.98 (as SGD at 0.05 did)
    quick_baseline_epochs=15,
    tables=cnn_l1_tables,
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
