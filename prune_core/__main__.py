"""``python -m prune_core``: one pruning recipe, no Ray, no MLflow.

    python -m prune_core --dataset digits --model cnn --method l1_unstructured \
        --sparsity 0.5 --json -

Trains (or reads from ``--cache-dir``) the dense baseline, prunes and retrains as asked, makes the
pruning permanent, measures, and writes the metrics as JSON. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any

import torch

from .baseline import load_or_train_baseline
from .checkpoint import save_state
from .cliutils import (
    OneLineArgumentParser,
    check_seed,
    check_writable_dir,
    check_writable_file,
)
from .config import (
    RETRAIN_MODES,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    PruneConfig,
    TrainConfig,
)
from .data import DATASETS, DatasetUnavailable, load_dataset
from .experiment import run_pruning, select_targets
from .methods import PRUNING_METHODS, MethodFlag
from .models import MODELS, build_model
from .plugins import PluginError, load_plugins
from .pruning import prunable_targets  # noqa: F401  (registers the built-in methods)
from .schedules import SCHEDULES
from .structured import nm_accelerable_fraction
from .train import pick_device


def build_parser() -> argparse.ArgumentParser:
    """The command line of one recipe."""
    p = OneLineArgumentParser(prog="python -m prune_core", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits", help=", ".join(DATASETS.names()))
    p.add_argument("--data-root", default="data", help="folder of torchvision datasets")
    p.add_argument("--no-download", action="store_true", help="never download datasets")
    p.add_argument("--model", default="cnn", help=", ".join(MODELS.names()))
    p.add_argument("--method", default="global_magnitude", help=", ".join(PRUNING_METHODS.names()))
    p.add_argument("--sparsity", type=float, help="target sparsity 0..1 (nm: 1 - N/M)")
    p.add_argument("--schedule", help=f"{', '.join(SCHEDULES.names())} (default: by iterations)")
    p.add_argument("--iterations", type=int, default=1, help="prune steps (1 = one-shot)")
    p.add_argument("--finetune-epochs", type=int, default=1, help="fine-tune epochs per step")
    p.add_argument("--retrain", default="finetune", help=", ".join(RETRAIN_MODES))
    p.add_argument("--rewind-epoch", type=int, default=1, help="dense epoch to rewind to")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate")
    _add_method_flags(p)
    p.add_argument("--layers", nargs="+", default=(), help="only these layers (module paths)")
    p.add_argument("--include-bias", action="store_true", help="prune biases too")
    p.add_argument("--exclude-first", action="store_true", help="keep the first layer dense")
    p.add_argument("--exclude-last", action="store_true", help="keep the last layer dense")
    p.add_argument(
        "--remove-channels", action="store_true",
        help=f"shrink the model ({', '.join(_removers())})",
    )  # fmt: skip
    p.add_argument("--baseline-epochs", type=int, default=5, help="dense training epochs")
    p.add_argument("--baseline-lr", type=float, default=0.05, help="dense learning rate")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size")
    p.add_argument("--seed", type=int, default=0, help="seed of training and pruning")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--cache-dir", help="cache the dense baseline in this folder")
    p.add_argument("--save", metavar="PATH", help="write the pruned model's state dict here")
    p.add_argument("--json", metavar="PATH", help="write the metrics as JSON ('-' for stdout)")
    p.add_argument(
        "--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
        help="import this module or .py file first (its methods, models, datasets); repeatable",
    )  # fmt: skip
    return p


def _method_flags() -> dict[str, tuple[str, Any]]:
    """Every flag that sets a pruning method's option: flag -> (method name, MethodOption or
    MethodFlag), from the registered entries (the first method to use a flag owns it)."""
    flags: dict[str, tuple[str, Any]] = {}
    for name in PRUNING_METHODS.names():
        entry = PRUNING_METHODS.get(name)
        for option in entry.options:
            if option.cli_flag:
                flags.setdefault(option.cli_flag, (name, option))
        for flag in entry.flags:
            flags.setdefault(flag.flag, (name, flag))
    return flags


def _add_method_flags(p: argparse.ArgumentParser) -> None:
    """One flag per method option (``--norm``, ``--scope``, ``--nm``), named after the method."""
    for flag, (method, spec) in _method_flags().items():
        if isinstance(spec, MethodFlag):
            p.add_argument(flag, help=f"{method}: {spec.help} (default {spec.default})")
        else:
            parse = spec.parse or type(spec.default)
            p.add_argument(flag, type=parse, help=f"{method}: {spec.help} (default {spec.default})")


def _removers() -> list[str]:
    return [n for n in PRUNING_METHODS.names() if PRUNING_METHODS.get(n).can_remove_channels]


def method_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``args.method`` that its flags set; every option flag given is checked
    against its own option, whichever method it belongs to (``ValueError``, one line)."""
    values: dict[str, Any] = {}
    for flag, (method, spec) in _method_flags().items():
        text = getattr(args, flag.lstrip("-").replace("-", "_"))
        if isinstance(spec, MethodFlag):
            values.update(spec.to_options(spec.default if text is None else text))
        elif text is not None:
            spec.validate(text, method)
            values[spec.name] = text
    own = PRUNING_METHODS.get(args.method).option_names()
    return {k: v for k, v in values.items() if k in own}


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The experiment config of the parsed flags; raises ``ValueError`` (one line) if invalid."""
    try:
        options = method_options_from_args(args)
    except ValueError as err:
        raise ValueError(in_flags(str(err))) from None
    entry = PRUNING_METHODS.get(args.method)
    sparsity = args.sparsity
    if sparsity is None:
        fixed = entry.fixed_sparsity
        sparsity = fixed(entry.resolve_options(options)) if fixed else 0.5
    elif not 0 <= sparsity < 1:
        raise ValueError(f"--sparsity {sparsity:g}: must be a fraction 0 <= s < 1")
    if args.iterations < 1:
        raise ValueError(f"--iterations {args.iterations}: must be an integer >= 1")
    schedule = args.schedule or ("oneshot" if args.iterations == 1 else "iterative")
    rewind_epochs = (args.rewind_epoch,) if args.retrain == "weight_rewind" else ()
    if args.rewind_epoch > args.baseline_epochs and args.retrain == "weight_rewind":
        raise ValueError(
            f"--rewind-epoch {args.rewind_epoch}: must be below --baseline-epochs "
            f"{args.baseline_epochs}"
        )
    if args.rewind_epoch < 0:
        raise ValueError(f"--rewind-epoch {args.rewind_epoch}: must be an integer >= 0")
    check_seed("--seed", args.seed)
    try:
        return ExperimentConfig(
            data=DataConfig(
                dataset=args.dataset, root=args.data_root, download=not args.no_download,
                batch_size=args.batch_size,
            ),
            model=ModelConfig(name=args.model),
            train=TrainConfig(
                epochs=args.baseline_epochs, lr=args.baseline_lr, rewind_epochs=rewind_epochs
            ),
            prune=PruneConfig(
                method=args.method, target_sparsity=sparsity, schedule=schedule,
                iterations=args.iterations, finetune_epochs=args.finetune_epochs, lr=args.lr,
                include_bias=args.include_bias, exclude_first=args.exclude_first,
                exclude_last=args.exclude_last, layers=tuple(args.layers), retrain=args.retrain,
                rewind_epoch=args.rewind_epoch, remove_channels=args.remove_channels, **options,
            ),
            seed=args.seed,
        )  # fmt: skip
    except ValueError as err:  # the configs name their fields (prune.lr=0 ...): name the flags
        raise ValueError(in_flags(str(err))) from None


# the flag behind each config field, for the errors of the configs' own checks
CONFIG_FLAGS = {
    "data.batch_size": "--batch-size", "train.epochs": "--baseline-epochs",
    "train.lr": "--baseline-lr", "train.rewind_epochs": "--rewind-epoch",
    "prune.method": "--method", "prune.target_sparsity": "--sparsity",
    "prune.schedule": "--schedule", "prune.iterations": "--iterations",
    "prune.finetune_epochs": "--finetune-epochs", "prune.lr": "--lr", "prune.layers": "--layers",
    "prune.retrain": "--retrain", "prune.rewind_epoch": "--rewind-epoch",
    "prune.include_bias": "--include-bias", "prune.remove_channels": "--remove-channels",
}  # fmt: skip
# a field as the configs write it: ``prune.lr=0.0 is invalid``, ``and train.epochs=1``
_FIELD = re.compile(r"\b(prune\.[a-z_]+|data\.[a-z_]+|train\.[a-z_]+)=")


def in_flags(message: str) -> str:
    """``message`` with each config field it names (``prune.lr=``) written as its flag."""
    flags = config_flags()
    return _FIELD.sub(lambda f: flags[f[1]] + " " if f[1] in flags else f[0], message)


def config_flags() -> dict[str, str]:
    """``CONFIG_FLAGS`` plus the flag of every method option (``prune.norm`` -> ``--norm``; the
    options a multi-option flag sets, and its own name, -> that flag: ``prune.nm`` -> ``--nm``)."""
    flags = dict(CONFIG_FLAGS)
    for flag, (method, spec) in _method_flags().items():
        if isinstance(spec, MethodFlag):
            flags[f"prune.{flag.lstrip('-')}"] = flag
            for option in PRUNING_METHODS.get(method).options:
                if not option.cli_flag:
                    flags.setdefault(f"prune.{option.name}", flag)
        else:
            flags[f"prune.{spec.name}"] = flag
    return flags


def _check_names(args: argparse.Namespace) -> None:
    for flag, value, registry in (
        ("--dataset", args.dataset, DATASETS),
        ("--model", args.model, MODELS),
        ("--method", args.method, PRUNING_METHODS),
    ):
        if value not in registry:
            raise ValueError(f"{flag} {value!r} is unknown; choose from: {', '.join(registry)}")


def available_devices() -> list[str]:
    """The ``--device`` values this machine has: cpu, cuda and cuda:N per GPU, mps."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def _check_device(name: str | None) -> None:
    """Raise ``ValueError`` (one line) unless ``--device`` names a device that exists here."""
    if name is None:
        return
    devices = available_devices()
    try:
        known = str(torch.device(name)) in devices
    except (RuntimeError, ValueError):  # not a device string at all ("foo", "cuda:x")
        known = False
    if not known:
        raise ValueError(f"--device {name!r} does not exist here; devices: {', '.join(devices)}")


def _check_outputs(args: argparse.Namespace) -> None:
    """Every path the run will write, checked (and left untouched) before any training."""
    if args.cache_dir:
        check_writable_dir("--cache-dir", args.cache_dir)
    if args.save:
        check_writable_file("--save", args.save)
    if args.json and args.json != "-":
        check_writable_file("--json", args.json)


def run(cfg: ExperimentConfig, device: torch.device, cache_dir: str | None) -> dict[str, Any]:
    """Run one recipe and return the JSON-ready report (dense, final, per-iteration, per-layer)."""
    start = time.perf_counter()
    data = load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.download, cfg.seed).to(device)
    if cfg.prune.layers:  # checked on the untrained model, before the dense training
        model = build_model(cfg.model.name, data.in_channels, data.num_classes, data.image_size)
        try:
            select_targets(model, cfg)
        except ValueError as err:
            raise ValueError(
                str(err).replace("prune.layers", CONFIG_FLAGS["prune.layers"])
            ) from None
    baseline = load_or_train_baseline(cfg, data, cache_dir)
    result = run_pruning(
        cfg, data, baseline.state, dense_test_accuracy=baseline.test_accuracy,
        rewind_states=baseline.rewind_states, measure=True,
    )  # fmt: skip
    history = [{"step": i, **h} for i, h in enumerate(result.history, 1)]
    final = {k: v for k, v in result.final.items() if k != "step_target_sparsity"}
    final.update(result.measurements)
    final["dense_test_accuracy"] = result.dense_test_accuracy
    # share of conv/linear weight groups a 2:4 sparse kernel can store (any method, not only nm)
    final["nm_accelerable_fraction"] = nm_accelerable_fraction(result.model, 2, 4)
    return {
        "config": cfg.to_dict(),
        "config_hash": cfg.short_hash(),
        "device": device.type,
        "dense": result.dense,
        "final": final,
        "per_iteration": history,
        "layer_sparsity": result.layer_sparsity,
        "seconds": round(time.perf_counter() - start, 2),
        "_model": result.model,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--plugin", action="append", default=[])
    try:  # before the parser exists: a plugin's methods add flags of their own
        load_plugins(early.parse_known_args(argv)[0].plugin)
    except PluginError as err:
        print(f"python -m prune_core: error: --plugin: {err}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        _check_names(args)
        cfg = config_from_args(args)
        _check_device(args.device)
        _check_outputs(args)
        device = pick_device(args.device)
        report = run(cfg, device, args.cache_dir)
    except (ValueError, KeyError, DatasetUnavailable) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"python -m prune_core: error: {msg}", file=sys.stderr)
        return 2
    model = report.pop("_model")
    if args.save:
        save_state({k: v.cpu() for k, v in model.state_dict().items()}, args.save)
    final = report["final"]
    print(
        f"dense accuracy {final['dense_test_accuracy']:.4f} -> {final['test_accuracy']:.4f} at "
        f"sparsity {final['sparsity']:.4f} ({int(final['nonzero_params'])} of "
        f"{int(final['total_params'])} parameters non-zero)",
        file=sys.stderr,
    )
    if args.json:
        text = json.dumps(report, indent=1, default=str)
        if args.json == "-":
            print(text)
        else:
            # its folder may not exist yet (_check_outputs made sure it can be created)
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as fh:
                fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
