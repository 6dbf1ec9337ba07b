"""The command line shared by every sweep module (``python -m sweeps.<study>``)."""

from __future__ import annotations

import argparse
import math
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prune_core.cliutils import OneLineArgumentParser, check_seed, check_writable_dir
from prune_core.data import DATASETS
from prune_core.models import MODELS
from prune_core.plugins import PluginError, load_plugins
from prune_core.sources import is_source
from search_spaces import SPACES

from .analysis import parse_objectives
from .budget import MAX_TRIALS_WITHOUT_LIMIT, parse_duration, parse_epoch_budget
from .search import NSGA2_FROM_TRIALS, SAMPLERS, check_sampler, default_sampler
from .tracking import DEFAULT_TRACKING_URI

# Early stopping: its choices, and the budget (trials) from which a search uses it by default
# (with fewer, each rung holds too few trials to rank).
EARLY_STOP_CHOICES = ("none", "mo-asha")
EARLY_STOP_FROM_SAMPLES = 12
# The largest trial budget and retry count taken: beyond them a typo (an extra digit run) would
# start a sweep that never ends.
MAX_SAMPLES = MAX_TRIALS_WITHOUT_LIMIT
MAX_FAILURES = 100


def default_early_stop(num_samples: int, grid: bool) -> str:
    """``mo-asha`` for a search of at least ``EARLY_STOP_FROM_SAMPLES`` trials, else ``none``
    (a grid is a study's protocol: every recipe runs to its end)."""
    return "mo-asha" if num_samples >= EARLY_STOP_FROM_SAMPLES and not grid else "none"


class UsageError(ValueError):
    """Bad command-line input; the message is the one line shown to the user."""


@dataclass(frozen=True)
class Study:
    """What a sweep module fixes: its model, full-size dataset and budgets, and its space."""

    name: str
    models: tuple[str, ...]  # a study may compare several architectures (one baseline each)
    dataset: str
    space: str
    description: str
    baseline_epochs: int = 30
    num_samples: int = 24
    batch_size: int = 128
    baseline_lr: float = 0.05  # peak learning rate of the cosine decay (to 0 at the end)
    # dense optimizer (prune_core's TrainConfig), also used to fine-tune the study's trials;
    # Adam's weight decay is an L2 term added to the gradient, as torch.optim.Adam applies it
    baseline_optimizer: str = "sgd"
    baseline_weight_decay: float = 5e-4
    # --quick: digits, CPU-sized budgets (same optimizer and learning rate)
    quick_baseline_epochs: int = 5
    quick_num_samples: int = 6
    quick_batch_size: int = 64
    # the study's report: runs table -> {CSV name: table}; default: one results.csv
    tables: Callable[[Any], dict[str, Any]] | None = None
    prog: str = ""  # its command (default ``python -m sweeps.<name>``)

    @property
    def command(self) -> str:
        """The command that runs the study, as its messages name it."""
        return self.prog or f"python -m sweeps.{self.name}"


@dataclass(frozen=True)
class SweepSpec:
    """A fully resolved sweep: everything the runner needs, validated."""

    study: str
    quick: bool
    grid: bool
    dataset: str
    models: tuple[str, ...]
    space: str
    data_root: str
    num_samples: int
    cpus_per_trial: float
    gpus_per_trial: float | None  # None: default_gpus_per_trial for the cluster
    max_concurrent: int | None
    address: str | None
    tracking_uri: str
    experiment: str
    storage_path: str
    seed: int
    baseline_epochs: int
    baseline_lr: float
    batch_size: int
    baseline_optimizer: str
    baseline_weight_decay: float
    objectives: str
    cache_dir: str
    results_dir: str
    download: bool = True
    max_failures: int = 1  # retries of a trial that raised, each on a fresh worker
    resume: str | None = None  # the sweep (name or parent run id) this run continues
    argv: tuple[str, ...] = ()  # the arguments it was started with (for --resume)
    early_stop: str = "none"  # "none" or "mo-asha"
    eta: int = 3  # MO-ASHA keeps the top 1/eta of the trials at each rung
    sampler: str = "tpe"  # one of sweeps.search.SAMPLERS
    plugins: tuple[str, ...] = ()  # modules or .py files loaded in the driver and every trial
    init_checkpoint: str | None = None  # a state dict that is the dense baseline (absolute path)
    checkpoint_sha256: str = ""  # "sha256:<hex>" of its content (names the baseline)
    weights: str = ""  # torchvision:NAME models: weights passed to get_model
    num_classes: int | None = None  # classes the model must output (checked against the data)
    image_size: int = 0  # image sources: resize to this square (0: as they are)
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # (means, stds)
    epoch_budget: int | None = None  # fine-tune epochs of all trials together (sweeps.budget)
    time_budget_s: float | None = None  # this command's wall clock, seconds


# GPU share per trial by model. One H200 (torch 2.11, batch 128) ran four trials at once at 2.5x
# the throughput of one for ResNet-18 on CIFAR-10 (7.0-7.4 s an epoch each, 4.4-5.8 s alone) and
# at 2.7x for the small CNN on MNIST (2.1 s against 1.4 s): one trial leaves the GPU waiting on
# kernel launches. The other models are smaller than ResNet-18 and get the same quarter.
GPUS_PER_TRIAL = {"resnet18": 0.25, "cnn": 0.25}
DEFAULT_GPUS_PER_TRIAL = 0.25


def default_gpus_per_trial(models: tuple[str, ...], cluster_gpus: float) -> float:
    """GPU share per trial when ``--gpus-per-trial`` is not given: 0 on a cluster without GPUs,
    else the largest share any of ``models`` needs (0.25 for every model: four trials per GPU)."""
    if cluster_gpus <= 0:
        return 0.0
    return max((GPUS_PER_TRIAL.get(m, DEFAULT_GPUS_PER_TRIAL) for m in models), default=0.25)


def build_parser(study: Study) -> argparse.ArgumentParser:
    """The flags every sweep shares."""
    p = OneLineArgumentParser(prog=study.command, description=study.description)
    # in three parts, in the order --help lists them
    _add_data_flags(p, study)
    _add_cluster_flags(p)
    _add_search_flags(p, study)
    return p


def _add_data_flags(p: argparse.ArgumentParser, study: Study) -> None:
    """--quick, --grid, the model, the dataset and the number of trials."""
    p.add_argument("--quick", action="store_true", help="digits, small budgets: minutes on a CPU")
    p.add_argument("--grid", action="store_true", help="run the study's exact protocol (no search)")
    p.add_argument(
        "--model",
        help=f"architecture(s), comma-separated: a registered name ({', '.join(MODELS.names())}), "
        f"torchvision:NAME or package.module:function (default {','.join(study.models)})",
    )
    p.add_argument(
        "--dataset",
        help=f"a registered name ({', '.join(DATASETS.names())}), imagefolder:DIR (DIR/train/"
        f"<class>/, DIR/val/<class>/) or package.module:function (default {study.dataset})",
    )
    p.add_argument("--data-root", default="data", help="folder for torchvision datasets")
    p.add_argument("--no-download", action="store_true", help="never download datasets")
    p.add_argument(
        "--num-samples", type=int,
        help="number of trials (recipes); with a budget, at most that many (default: the "
        "study's, or with --epoch-budget/--time-budget no trial limit)",
    )  # fmt: skip
    p.add_argument(
        "--epoch-budget", metavar="N",
        help="at most N fine-tune epochs over all trials (the sweep's total, across --resume); "
        "a trial starts only if its epochs fit",
    )  # fmt: skip
    p.add_argument(
        "--time-budget", metavar="DURATION",
        help="stop this command's trials after DURATION of wall clock (e.g. 90m, 2h, 45s), "
        "then analyse what finished",
    )  # fmt: skip
    _add_source_flags(p)


def _add_source_flags(p: argparse.ArgumentParser) -> None:
    """What the user's own model and data need: weights, classes, image size, statistics."""
    p.add_argument(
        "--init-checkpoint", metavar="PATH",
        help="a state dict that IS the dense baseline (loaded with weights_only=True, evaluated, "
        "not trained); recipes then fine-tune only (no rewinding)",
    )  # fmt: skip
    p.add_argument("--weights", help="torchvision:NAME models: weights passed to get_model")
    p.add_argument("--num-classes", type=int, help="classes the model must output (checked)")
    p.add_argument(
        "--image-size", type=int, help="image sources: resize images to this square size"
    )
    p.add_argument(
        "--normalize", metavar="MEAN,STD",
        help="per-channel statistics the checkpoint was trained with, MEAN,STD for every "
        "channel or M1,M2,M3/S1,S2,S3 (default: the training split's)",
    )  # fmt: skip


def _add_cluster_flags(p: argparse.ArgumentParser) -> None:
    """Resources per trial, the Ray cluster, MLflow and Ray Tune's storage."""
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        default=None,
        help="GPU share per trial, e.g. 0.25 (default: 0.25 on a cluster with GPUs, else 0)",
    )
    p.add_argument(
        "--max-concurrent", type=int, help="most trials at once (default: as resources allow)"
    )
    p.add_argument(
        "--address", help="Ray cluster address (auto, host:port); default: start a local Ray"
    )
    p.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI, help="MLflow tracking URI")
    p.add_argument("--experiment", help="MLflow experiment name (default: the study's name)")
    p.add_argument("--storage-path", default="mlruns/ray_results", help="Ray Tune results folder")


def _add_search_flags(p: argparse.ArgumentParser, study: Study) -> None:
    """Seed, baseline, space, objectives, output folders, failures, early stopping, sampler,
    plugins and --resume."""
    p.add_argument("--seed", type=int, default=0, help="seed of the baseline, trials and sampler")
    p.add_argument("--baseline-epochs", type=int, help="epochs of dense training")
    p.add_argument(
        "--space", default=study.space, help=f"search space ({', '.join(SPACES.names())})"
    )
    p.add_argument(
        "--objectives",
        default="test_accuracy:max,nonzero_params:min",
        help="two or three METRIC:max|min, comma-separated",
    )
    p.add_argument("--cache-dir", default="mlruns/baselines", help="dense-baseline cache folder")
    p.add_argument(
        "--results-dir",
        default="mlruns/results",
        help="the sweep's CSV tables go to RESULTS_DIR/<sweep name>/ (and to the parent run)",
    )
    p.add_argument(
        "--max-failures", type=int, default=1,
        help="retries of a trial that raised or whose worker died, each on a fresh worker "
        "(default 1); then it is FAILED and the others go on",
    )  # fmt: skip
    p.add_argument(
        "--early-stop", choices=EARLY_STOP_CHOICES, metavar="{none,mo-asha}",
        help="multi-objective early stopping of recipes (default: mo-asha from "
        f"{EARLY_STOP_FROM_SAMPLES} trials on, else none; none with --grid)",
    )  # fmt: skip
    p.add_argument(
        "--eta", type=int, default=3,
        help="mo-asha: keep the top 1/ETA of the trials at each rung (default 3, at least 2)",
    )  # fmt: skip
    p.add_argument(
        "--sampler",
        help=f"Optuna sampler: {', '.join(SAMPLERS)} (default: tpe below "
        f"{NSGA2_FROM_TRIALS} trials, nsga2 from there on)",
    )
    p.add_argument(
        "--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
        help="import this module (mypkg.methods) or .py file first, in the driver and in every "
        "trial: what it registers (pruning methods, models, datasets, spaces, metrics) can be "
        "named in the other flags; repeatable",
    )  # fmt: skip
    p.add_argument(
        "--resume", metavar="SWEEP",
        help="continue an interrupted sweep (its name, printed at its start, or its parent run "
        "id) with the settings it was started with; finished trials are not run again",
    )  # fmt: skip


def _without_resume(argv: list[str]) -> list[str]:
    """``argv`` less ``--resume SWEEP`` / ``--resume=SWEEP`` (what a resumed sweep re-reads)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            out.append(arg)
    return out


def check_empty_values(args: argparse.Namespace) -> None:
    """An empty value is a value, not "use the default": ``--sampler ''``, ``--address ''``,
    ``--results-dir ''`` and the like are refused (one line) instead of silently replaced."""
    for flag in ("--model", "--dataset", "--sampler", "--address", "--resume", "--results-dir",
                 "--cache-dir", "--storage-path", "--tracking-uri", "--space", "--data-root",
                 "--objectives", "--init-checkpoint", "--weights"):  # fmt: skip
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None and not value.strip():
            raise UsageError(f"{flag} {value!r}: must not be empty (leave the flag out for the "
                             "default)")  # fmt: skip


def parse_address(address: str | None) -> tuple[str, int] | None:
    """``(host, port)`` of ``--address HOST:PORT``; None for no address, ``auto`` or a Ray client
    URI (``ray://...``). Raises ``UsageError`` for anything else."""
    if address is None or address == "auto" or "://" in address:
        return None
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(
            f"--address {address!r}: write auto or HOST:PORT with a port 1..65535 "
            "(e.g. 10.0.0.5:6379)"
        )
    return host, int(port)


def resolve_spec(study: Study, argv: list[str] | None = None) -> SweepSpec:
    """Parse and validate ``argv``; raises ``UsageError`` (one line) on bad input."""
    import os
    import sys

    raw_argv = _without_resume(list(sys.argv[1:] if argv is None else argv))
    args = build_parser(study).parse_args(argv)
    try:  # first: what the plugins register counts in every check below
        plugins = load_plugins(args.plugin)
    except PluginError as err:
        raise UsageError(f"--plugin: {err}") from None
    check_empty_values(args)
    if not 0 <= args.max_failures <= MAX_FAILURES:
        raise UsageError(
            f"--max-failures {args.max_failures}: must be an integer 0..{MAX_FAILURES}"
        )
    if args.eta < 2:
        raise UsageError(f"--eta {args.eta}: must be an integer >= 2 (keep the top 1/eta per rung)")
    dataset, models = _resolve_names(study, args)
    sources = resolve_sources(args, dataset, models)
    num_samples, epochs = _resolve_budgets(study, args)
    epoch_budget, time_budget_s = resolve_compute_budgets(args)
    sampler = _resolve_sampler(args, num_samples)
    check_seed("--seed", args.seed, UsageError)
    parse_address(args.address)
    experiment = _resolve_experiment(study, args)
    # every folder the sweep writes, tried now rather than after its runs exist (URIs such as
    # s3://bucket/path are Ray Tune's to check)
    if "://" not in args.storage_path:
        check_writable_dir("--storage-path", args.storage_path, UsageError)
    check_writable_dir("--cache-dir", args.cache_dir, UsageError)
    check_writable_dir("--results-dir", args.results_dir, UsageError)
    return SweepSpec(
        study=study.name,
        quick=args.quick,
        grid=args.grid,
        dataset=dataset,
        models=models,
        space=args.space,
        data_root=args.data_root,
        num_samples=num_samples,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent,
        address=args.address,
        tracking_uri=args.tracking_uri,
        experiment=experiment,
        # keep URIs (s3://, gs://) as they are: abspath would turn s3://b/x into ./s3:/b/x
        storage_path=(
            args.storage_path if "://" in args.storage_path else os.path.abspath(args.storage_path)
        ),
        seed=args.seed,
        baseline_epochs=epochs,
        baseline_lr=study.baseline_lr,
        batch_size=study.quick_batch_size if args.quick else study.batch_size,
        baseline_optimizer=study.baseline_optimizer,
        baseline_weight_decay=study.baseline_weight_decay,
        objectives=args.objectives,
        cache_dir=os.path.abspath(args.cache_dir),
        results_dir=os.path.abspath(args.results_dir),
        download=not args.no_download,
        max_failures=args.max_failures,
        early_stop=args.early_stop or default_early_stop(num_samples, args.grid),
        eta=args.eta,
        sampler=sampler,
        plugins=plugins,
        **sources,
        epoch_budget=epoch_budget,
        time_budget_s=time_budget_s,
        resume=args.resume,
        argv=tuple(a for a in raw_argv if a is not None),
    )


def _resolve_names(study: Study, args: argparse.Namespace) -> tuple[str, tuple[str, ...]]:
    """The dataset and models (the study's unless given); ``UsageError`` for a dataset, model or
    space no registry holds."""
    dataset = study.dataset if args.dataset is None else args.dataset
    if args.dataset is None and args.quick and not is_source(study.dataset):
        dataset = "digits"  # the studies' downloads; a study of the user's own data keeps it
    if dataset not in DATASETS and not is_source(dataset):
        raise UsageError(
            f"--dataset {dataset!r} is unknown; choose from: {', '.join(DATASETS.names())}, "
            "imagefolder:DIR, package.module:function"
        )
    models = tuple(args.model.split(",")) if args.model is not None else study.models
    for model in models:
        if model not in MODELS and not is_source(model):
            raise UsageError(
                f"--model {model!r} is unknown; choose from: {', '.join(MODELS.names())}, "
                "torchvision:NAME, package.module:function"
            )
    if args.space not in SPACES:
        raise UsageError(
            f"--space {args.space!r} is unknown; choose from: {', '.join(SPACES.names())}"
        )
    return dataset, models


def parse_normalize(text: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``--normalize``: ``MEAN,STD`` (one value each, for every channel, given as 1-tuples) or
    ``M1,M2,M3/S1,S2,S3``; ``UsageError`` unless the stds are > 0 and the lists match."""
    try:
        if "/" in text:
            mean_text, _, std_text = text.partition("/")
            mean = tuple(float(v) for v in mean_text.split(","))
            std = tuple(float(v) for v in std_text.split(","))
        else:
            mean_value, std_value = (float(v) for v in text.split(","))
            mean, std = (mean_value,), (std_value,)
    except ValueError:
        mean, std = (), ()
    if not mean or len(mean) != len(std) or not all(s > 0 and s < math.inf for s in std):
        raise UsageError(
            f"--normalize {text!r}: write MEAN,STD (e.g. 0.5,0.25) or M1,M2,M3/S1,S2,S3, "
            "with every std > 0"
        )
    return mean, std


def resolve_sources(args: argparse.Namespace, dataset: str, models: tuple[str, ...]) -> dict:
    """The SweepSpec fields of the user's model, weights and data, checked as far as they can
    be without the data (a checkpoint's file, a source's module and function, an image folder's
    layout); the checks that need the data run when it is loaded (``sweeps.runner``)."""
    from prune_core.checkpoint import file_sha256
    from prune_core.sources import SourceError, check_data_source, check_model_source

    if args.image_size is not None and args.image_size < 1:
        raise UsageError(f"--image-size {args.image_size}: must be an integer >= 1")
    if args.num_classes is not None and args.num_classes < 2:
        raise UsageError(f"--num-classes {args.num_classes}: must be an integer >= 2")
    normalize = parse_normalize(args.normalize) if args.normalize is not None else None
    checks = [("--model", check_model_source, m) for m in models if is_source(m)]
    if is_source(dataset):
        checks.append(("--dataset", check_data_source, dataset))
    for flag, check, value in checks:
        try:
            check(value)
        except SourceError as err:
            raise UsageError(f"{flag}: {err}") from None
    checkpoint, digest = None, ""
    if args.init_checkpoint is not None:
        # only that it exists: its content is read once, against the model, when the data is
        # loaded (sweeps.runner.check_model_on_data), before any run either
        checkpoint = os.path.abspath(os.path.expanduser(args.init_checkpoint))
        if not os.path.isfile(checkpoint):
            raise UsageError(f"--init-checkpoint: checkpoint {checkpoint}: no such file")
        digest = file_sha256(checkpoint)
    if checkpoint and len(models) > 1:
        raise UsageError(f"--init-checkpoint: one checkpoint is one model; got {len(models)} "
                         f"models ({', '.join(models)})")  # fmt: skip
    return {
        "init_checkpoint": checkpoint, "checkpoint_sha256": digest, "weights": args.weights or "",
        "num_classes": args.num_classes, "image_size": args.image_size or 0,
        "normalize": normalize,
    }  # fmt: skip


def _resolve_budgets(study: Study, args: argparse.Namespace) -> tuple[int, int]:
    """(trials, dense epochs), the study's (quick) values unless given, after checking them and
    the resources per trial."""
    num_samples = args.num_samples
    if num_samples is None and (args.epoch_budget is not None or args.time_budget is not None):
        num_samples = MAX_SAMPLES  # the budget alone ends the sweep
    if num_samples is None:
        num_samples = study.quick_num_samples if args.quick else study.num_samples
    if not 1 <= num_samples <= MAX_SAMPLES:
        raise UsageError(f"--num-samples {num_samples}: must be an integer 1..{MAX_SAMPLES}")
    if not 0 < args.cpus_per_trial < math.inf:
        raise UsageError(
            f"--cpus-per-trial {args.cpus_per_trial:g}: must be > 0 and finite (fractions allowed)"
        )
    if args.gpus_per_trial is not None and not 0 <= args.gpus_per_trial < math.inf:
        raise UsageError(
            f"--gpus-per-trial {args.gpus_per_trial:g}: must be >= 0 and finite (fractions "
            "allowed, e.g. 0.25)"
        )
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UsageError(f"--max-concurrent {args.max_concurrent}: must be an integer >= 1")
    epochs = args.baseline_epochs
    if epochs is None:
        epochs = study.quick_baseline_epochs if args.quick else study.baseline_epochs
    if epochs < 1 and args.init_checkpoint is None:  # an untrained baseline prunes noise
        raise UsageError(f"--baseline-epochs {epochs}: must be an integer >= 1 (or give "
                         "--init-checkpoint, whose weights are the baseline)")  # fmt: skip
    return num_samples, epochs


def resolve_compute_budgets(args: argparse.Namespace) -> tuple[int | None, float | None]:
    """(``--epoch-budget`` in epochs, ``--time-budget`` in seconds), None where not given;
    ``UsageError`` (one line) for a bad value, or an epoch budget with ``--grid`` (a grid runs
    its protocol's recipes, every one; a budget sizes a search)."""
    epochs = seconds = None
    if args.epoch_budget is not None:
        try:
            epochs = parse_epoch_budget(args.epoch_budget)
        except ValueError as err:
            raise UsageError(f"--epoch-budget {err}") from None
        if args.grid:
            raise UsageError(
                f"--epoch-budget {epochs} with --grid: a grid runs every recipe of the study's "
                "protocol; leave out --grid to search within the budget, or use --time-budget"
            )
    if args.time_budget is not None:
        try:
            seconds = parse_duration(args.time_budget)
        except ValueError as err:
            raise UsageError(f"--time-budget {err}") from None
    return epochs, seconds


def _resolve_sampler(args: argparse.Namespace, num_samples: int) -> str:
    """The sampler (the default for ``num_samples`` unless given), after checking the
    objectives and that the sampler takes that many. A sweep sized by a budget alone uses the
    default of a search below ``NSGA2_FROM_TRIALS`` trials (the cost-aware TPE)."""
    try:
        parse_objectives(args.objectives)
    except ValueError as err:
        raise UsageError(f"--objectives: {err}") from None
    if num_samples >= MAX_SAMPLES and args.num_samples is None:
        num_samples = 1  # no trial count: the budget's search is the cost-aware one
    sampler = default_sampler(num_samples) if args.sampler is None else args.sampler
    try:
        check_sampler(sampler, len(parse_objectives(args.objectives)))
    except ValueError as err:
        raise UsageError(f"--sampler: {err}") from None
    return sampler


def _resolve_experiment(study: Study, args: argparse.Namespace) -> str:
    """The MLflow experiment: the study's name (``-quick`` with --quick) unless given."""
    experiment = args.experiment
    if experiment is None:
        experiment = f"{study.name}-quick" if args.quick else study.name
    if not experiment.strip():
        raise UsageError(f"--experiment {experiment!r}: must be a non-empty name")
    return experiment


def new_sweep_name(study: str) -> str:
    """A new sweep's name: the study, the local start time to the second and 4 random hex digits,
    so two sweeps started in the same second still get their own parent run, Ray Tune folder
    (``storage_path/<name>``) and results folder (``results_dir/<name>``)."""
    return f"{study}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
