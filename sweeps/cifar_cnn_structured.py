"""CIFAR-10 small CNN: L1 structured pruning of 40% of the first conv layer's filters, beside
PyTorch's other built-in methods on the same layer; parameters removed and accuracy drop.

    python -m sweeps.cifar_cnn_structured --quick --grid
"""

from __future__ import annotations

import sys

from .cli import Study
from .runner import main
from .studies import cifar_structured_tables

STUDY = Study(
    name="cifar_cnn_structured",
    models=("cifar_cnn",),
    dataset="cifar10",
    space="structured",
    description="CIFAR-10 tutorial CNN, structured pruning of the first conv layer (study 4).",
    # SGD with momentum, like the PyTorch tutorial this study comes from (Study's defaults:
    # peak lr 0.05 with a cosine decay, batch 128, weight decay 5e-4)
    baseline_epochs=10,
    quick_baseline_epochs=15,
    tables=cifar_structured_tables,
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
