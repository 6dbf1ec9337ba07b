"""The five studies' report tables, in the shape their original scripts printed."""

from __future__ import annotations

import pandas as pd

from .runner import results_table

MB = 2**20  # bytes per MB in the size columns


def cnn_l1_tables(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """MNIST CNN, L1 on weights and biases: accuracy before pruning, after, after prune.remove."""
    table = pd.DataFrame({
        "run_name": runs["run_name"],
        "accuracy_before_pruning": runs["dense_test_accuracy"],
        "accuracy_after_pruning": runs["test_accuracy"],
        "accuracy_after_remove": runs["permanent_test_accuracy"],
        "sparsity": runs["sparsity"],
        "nonzero_params": runs["nonzero_params"].astype("int64"),
        "total_params": runs["total_params"].astype("int64"),
    })  # fmt: skip
    return {"results.csv": table}


def magnitude_vs_structured_tables(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """SimpleCNN: per method and amount, accuracy and its change from dense, sparsity, size in MB,
    non-zero over total parameters (the original's report), sorted by method then amount."""
    table = results_table(runs).sort_values(["method", "target_sparsity"], kind="stable")
    return {"results.csv": table.reset_index(drop=True)}


def finetune_tables(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """MLP and CNN at several sparsities with fine-tuning: one CSV per model, named as the study
    named them (``mlp_pruning_results.csv``, ``cnn_pruning_results.csv``)."""
    tables = {}
    for model, rows in runs.groupby("model", sort=True):
        rows = rows.sort_values("target_sparsity", kind="stable")
        tables[f"{model}_pruning_results.csv"] = pd.DataFrame({
            "model": rows["model"],
            "sparsity": rows["sparsity"],
            "accuracy": rows["test_accuracy"],
            "parameters": rows["nonzero_params"].astype("int64"),
            "size_mb": rows["sparse_size_bytes"] / MB,
            # the grid's 99% recipe twice: the study's, and with the output layer kept dense
            "output_layer": [
                "dense" if str(name).endswith("_keeplast") else "pruned"
                for name in rows["run_name"]
            ],
        }).reset_index(drop=True)  # fmt: skip
    return tables


def cifar_structured_tables(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """CIFAR CNN: per method, parameters removed (zeroed or gone) and the accuracy drop."""
    dense_total = runs["total_params"].max()
    table = pd.DataFrame({
        "run_name": runs["run_name"],
        "method": runs["method"],
        "target_sparsity": runs["target_sparsity"],
        "params_removed": (dense_total - runs["nonzero_params"]).astype("int64"),
        "test_accuracy": runs["test_accuracy"],
        "accuracy_drop": -runs["accuracy_change"],
        "sparsity": runs["sparsity"],
    }).sort_values("method", kind="stable")  # fmt: skip
    return {"results.csv": table.reset_index(drop=True)}


def resnet18_tables(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """ResNet-18 one-shot vs iterative: accuracy, sparsity and inference time per checkpoint."""
    table = results_table(runs)
    table["latency_ms"] = runs["latency_ms"]
    return {"results.csv": table.sort_values("run_name", kind="stable").reset_index(drop=True)}
