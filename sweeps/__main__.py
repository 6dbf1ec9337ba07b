"""``python -m sweeps``: sweep pruning recipes on your own model and data.

python -m sweeps --model torchvision:resnet18 --num-classes 3 --dataset imagefolder:DIR \\
    --image-size 16 --init-checkpoint ck.pt --quick --num-samples 2
python -m sweeps --model mypkg.models:build --dataset mypkg.data:load --init-checkpoint ck.pt

Every flag of the study modules, plus the sources (``--model``, ``--dataset`` as
``torchvision:NAME``, ``imagefolder:DIR`` or ``package.module:function``) and the checkpoint that
is the dense baseline (``--init-checkpoint``). ``--quick`` keeps your model and data and only
shrinks the budgets (trials, epochs). Without ``--model`` and ``--dataset`` it sweeps the small
CNN on the bundled digits.
"""

from __future__ import annotations

import sys

from .cli import Study
from .runner import GENERIC_STUDY, main

STUDY = Study(
    name=GENERIC_STUDY,
    models=("cnn",),
    dataset="digits",
    # unstructured masks work on any conv/linear network; --space full adds filters and N:M
    space="unstructured",
    description="Sweep pruning recipes on your own model, checkpoint and data with Ray Tune + "
    "Optuna, tracked in MLflow.",
    baseline_epochs=15,
    quick_baseline_epochs=15,
    num_samples=24,
    quick_num_samples=6,
    quick_batch_size=128,
    prog="python -m sweeps",
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
