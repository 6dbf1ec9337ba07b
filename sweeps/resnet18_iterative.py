"""ResNet-18 (CIFAR form): one-shot versus iterative global magnitude pruning.

python -m sweeps.resnet18_iterative --quick     # digits, CPU, a few minutes
python -m sweeps.resnet18_iterative             # CIFAR-10: GPU work (--gpus-per-trial 0.25)
"""

from __future__ import annotations

import sys

from .cli import Study
from .runner import main

STUDY = Study(
    name="resnet18_iterative",
    model="resnet18",
    dataset="cifar10",
    space="resnet18_iterative",
    description=(
        "Sweep global magnitude pruning recipes (target sparsity, one-shot or iterative, "
        "fine-tune epochs, learning rate) on ResNet-18 with Ray Tune + Optuna, tracked in MLflow."
    ),
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
