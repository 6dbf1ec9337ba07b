"""A trial's MLflow params and run name say what it ran: the retraining epochs and learning rate of
rewinding recipes, not the fine-tuning defaults they ignore."""

from __future__ import annotations

import math
import os

import pytest

from prune_core.config import DataConfig, ExperimentConfig, ModelConfig, PruneConfig, TrainConfig
from prune_core.data import load_dataset
from prune_core.experiment import run_pruning, train_dense
from sweeps.trial import recipe_run_name, retraining, trial_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rewind_cfg(retrain: str, epochs: int = 4, rewind_epoch: int = 1) -> ExperimentConfig:
    return ExperimentConfig(
        data=DataConfig(dataset="digits", batch_size=64),
        model=ModelConfig(name="mlp"),
        train=TrainConfig(epochs=epochs, lr=0.05, rewind_epochs=(rewind_epoch,)),
        # finetune_epochs and lr are the PruneConfig defaults: rewinding does not use them
        prune=PruneConfig(target_sparsity=0.5, retrain=retrain, rewind_epoch=rewind_epoch),
    )


@pytest.mark.parametrize("retrain", ["weight_rewind", "lr_rewind"])
def test_rewinding_params_are_the_retraining_it_runs(retrain):
    cfg = rewind_cfg(retrain)
    params = trial_params(cfg, "cpu")
    # the dense schedule's tail: 4 - 1 = 3 epochs, starting where the dense cosine was at
    # epoch 1 of 4: 0.05 * 0.5 * (1 + cos(pi / 4)) = 0.0426776695...
    assert params["finetune_epochs"] == 3
    assert params["lr"] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-12)
    assert params["lr"] == pytest.approx(0.04267766952966369, rel=1e-12)
    assert params["rewind_epoch"] == 1 and params["retrain"] == retrain
    recipe = {"target_sparsity": 0.5, "retrain": retrain, "rewind_epoch": 1}
    assert (
        recipe_run_name("mlp", recipe, cfg.train.epochs) == f"mlp_prune_50perc_oneshot3_{retrain}1"
    )


def test_finetune_params_unchanged():
    cfg = ExperimentConfig(prune=PruneConfig(finetune_epochs=2, lr=0.003))
    params = trial_params(cfg, "cpu")
    assert (params["finetune_epochs"], params["lr"]) == (2, 0.003)
    assert "rewind_epoch" not in params
    assert retraining(cfg) == (2, 0.003)


def test_weight_rewind_trains_the_logged_epochs():
    cfg = rewind_cfg("weight_rewind", epochs=3, rewind_epoch=1)
    data = load_dataset("digits")
    snapshots: dict = {}
    dense, _ = train_dense(cfg, data, log=lambda _: None, snapshots=snapshots)
    lines: list[str] = []
    run_pruning(cfg, data, dense.state_dict(), log=lines.append, rewind_states=snapshots)
    retrain_lines = [line for line in lines if line.startswith("[retrain step 1/1] epoch")]
    epochs, lr = retraining(cfg)
    assert len(retrain_lines) == epochs == 2
    assert retrain_lines[-1].startswith(f"[retrain step 1/1] epoch {epochs}/{epochs}")
    assert trial_params(cfg, "cpu")["finetune_epochs"] == epochs
    assert lr == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi / 3)))  # 0.0375


def test_a_dense_output_layer_is_named_and_logged():
    recipe = {"target_sparsity": 0.99, "finetune_epochs": 2, "exclude_last": True}
    assert recipe_run_name("mlp", recipe) == "mlp_prune_99perc_oneshot2_keeplast"
    assert recipe_run_name("mlp", {**recipe, "exclude_last": False}) == "mlp_prune_99perc_oneshot2"
    cfg = ExperimentConfig(prune=PruneConfig(target_sparsity=0.99, exclude_last=True))
    assert trial_params(cfg, "cpu")["exclude_last"] is True
    assert "exclude_last" not in trial_params(ExperimentConfig(), "cpu")
    # ln_structured never prunes the output layer: nothing to tell apart, nothing added
    structured = {"method": "ln_structured", "target_sparsity": 0.5, "exclude_last": True}
    assert recipe_run_name("cnn", structured) == "cnn_l1_structured_50perc_oneshot1"


def test_the_finetune_table_tells_the_two_99_percent_rows_apart():
    import pandas as pd

    from sweeps.studies import finetune_tables

    names = ["mlp_prune_99perc_oneshot2", "mlp_prune_99perc_oneshot2_keeplast"]
    runs = pd.DataFrame({
        "model": ["mlp", "mlp"], "target_sparsity": [0.99, 0.99], "sparsity": [0.99, 0.985],
        "test_accuracy": [0.26, 0.93], "nonzero_params": [3072, 4062],
        "sparse_size_bytes": [1e5, 1.1e5], "run_name": names,
    })  # fmt: skip
    table = finetune_tables(runs)["mlp_pruning_results.csv"]
    assert list(table["output_layer"]) == ["pruned", "dense"]
    assert list(table["accuracy"]) == [0.26, 0.93]


def test_a_worker_leaving_in_a_finalizer_says_nothing(tmp_path):
    """A SystemExit raised inside a weakref callback (where Ray's SIGTERM handler can fire) is
    dropped by ``QuietWorkerExit`` instead of printed as "Exception ignored" with a traceback;
    any other unraisable error still reaches the previous hook. Real finalizers, in a fresh
    interpreter."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import sys, weakref
        from sweeps.trial import QuietWorkerExit
        class Thing: pass
        def leave(ref): raise SystemExit(1)
        def fail(ref): raise ValueError("a real bug")
        if sys.argv[1] == "quiet":
            QuietWorkerExit.install()
            QuietWorkerExit.install()  # once only
            assert not isinstance(sys.unraisablehook.previous, QuietWorkerExit)
        a, b = Thing(), Thing()
        r1, r2 = weakref.ref(a, leave), weakref.ref(b, fail)
        del a, b
        print("still here")
        """
    )
    runs = {
        mode: subprocess.run(
            [sys.executable, "-c", script, mode],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": REPO},
        )  # fmt: skip
        for mode in ("plain", "quiet")
    }
    plain, quiet = runs["plain"], runs["quiet"]
    assert plain.returncode == quiet.returncode == 0 and "still here" in quiet.stdout
    assert "SystemExit" in plain.stderr  # what the worker printed before
    assert "SystemExit" not in quiet.stderr and "Traceback" in quiet.stderr
    assert "ValueError: a real bug" in quiet.stderr
