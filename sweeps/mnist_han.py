"""Han et al. 2015's LeNet-300-100 point on the MNIST MLP: global magnitude pruning to 92% in 5
steps, each retraining from the weights of dense epoch 1 (Han et al.: 1.59% test error at 92%,
dense 1.64%). The dense MLP is ``mnist_finetune``'s, with the same training.

    python -m sweeps.mnist_han --grid --dataset mnist --data-root ROOT --no-download
    python -m sweeps.mnist_han --quick --grid
"""

from __future__ import annotations

import dataclasses
import sys

from .mnist_finetune import STUDY as FINETUNE
from .runner import main

STUDY = dataclasses.replace(
    FINETUNE,
    name="mnist_han",
    models=("mlp",),
    description="MNIST MLP (LeNet-300-100) pruned to 92% as Han et al. 2015 report it.",
    tables=None,
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
