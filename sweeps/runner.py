"""Run a sweep: checks, dense baselines, Ray Tune trials (Optuna search or a fixed grid), MLflow
runs, the Pareto front and the study's results tables."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import glob
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from prune_core.baseline import load_or_train_baseline
from prune_core.cliutils import first_line
from prune_core.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from prune_core.data import DatasetUnavailable, load_dataset
from prune_core.metrics import count_parameters
from prune_core.models import build_model
from prune_core.plugins import split_plugin
from prune_core.sources import SourceError, is_source
from prune_core.train import pick_device

from . import early_signal, note_signal, restore_failure_env
from .analysis import (
    Objective,
    analyse,
    parse_objectives,
    partial_fixed_reference,
    trial_table,
)
from .budget import (
    EXHAUSTED_TAG,
    EXIT_RESERVE_S,
    Budget,
    epochs_of_runs,
    format_seconds,
    in_force,
    process_age_s,
)
from .callbacks import BudgetStopper, TrialEndCallback, TrialProgress, error_file_line
from .catalog import step_metrics
from .cli import (
    MAX_SAMPLES,
    Study,
    SweepSpec,
    UsageError,
    build_parser,
    check_empty_values,
    default_gpus_per_trial,
    new_sweep_name,
    parse_address,
    resolve_spec,
)
from .latency import DRIVER_METRICS, remeasure_latency
from .report import format_analysis, write_outputs
from .scheduler import MOASHAScheduler
from .search import grid_points, make_sampler, points_within, recipe_epochs
from .tracking import (
    DEFAULT_TRACKING_URI,
    TrackingError,
    TrackingTarget,
    child_runs,
    end_unfinished_children,
    find_sweep,
    get_or_create_experiment,
    log_params,
    prepare_sqlite_store,
    resolve_tracking_uri,
)
from .trial import (
    REUSED_BY_TAG,
    TrialContext,
    prune_trial,
)

# One search trial in this many starts from a recipe of the study's grid.
GRID_POINTS_SHARE = 3
# Samplers whose proposals the search picks by cost (``sweeps.searcher``, cost cooling).
COST_AWARE_SAMPLERS = ("tpe", "gp")
# Images per latency batch (the trials' own measurement uses the same).
LATENCY_BATCH = 64
# A dense baseline at most this far above chance accuracy (fraction) stops the sweep.
CHANCE_MARGIN = 0.02
# OSError numbers that mean "the storage refused the write" (full, read-only, no permission,
# quota): the sweep then ends FAILED with failure=storage, in one line, and can be resumed.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM)
# Seconds after the first SIGINT/SIGTERM by which the sweep has stopped, or is stopped by force
# (the run states written first): within the 30 s a supervisor usually waits before SIGKILL.
STOP_GRACE_S = 20.0
# CPUs from which the dense baseline trains while Ray starts (overlaps_start_up)
OVERLAP_MIN_CPUS = 4
# Ray Tune writes its experiment state (what --resume restores) at least this often (seconds).
TUNE_CHECKPOINT_S = 5
# Spaces that may choose weight rewinding: their baselines keep the early weights it needs.
REWINDING_SPACES = ("unstructured", "full")
# SweepSpec fields of the user's own model and data, logged as params only where given.
SOURCE_SETTINGS = ("init_checkpoint", "checkpoint_sha256", "weights", "num_classes",
                   "image_size", "normalize")  # fmt: skip
# The study name of ``python -m sweeps`` (the generic sweep of the user's model and data).
GENERIC_STUDY = "sweep"
# How long a local Ray may take to start (seconds) unless RAY_START_WAIT_ENV says otherwise.
# Ray 2.60 waits 30 s for its GCS and 30 s for its raylet to register; on a loaded 2-core
# machine that ran out and four sweep starts died (issue 25). 120 s covers a loaded machine.
RAY_START_WAIT_S = 120
# Ray's own setting of its start-up wait (the GCS's port file and connection, seconds); the
# sweep applies the same budget to the raylet's registration, which Ray fixes at 30 s.
RAY_START_WAIT_ENV = "RAY_gcs_server_port_wait_time_s"
# Ray's setting of its worker processes' niceness, added to the raylet's (Ray's default 15). The
# sweep's trial workers get 0, the driver's priority, unless the user set it (``trial_niceness``).
RAY_WORKER_NICENESS_ENV = "RAY_worker_niceness"
# Ray Tune's setting for how many trials it keeps waiting for an actor (its default with a
# searcher: 1); the sweep sets it to the trials the cluster runs at once unless the user set it
TUNE_PENDING_TRIALS_ENV = "TUNE_MAX_PENDING_TRIALS_PG"


@dataclass
class SweepOutcome:
    """What a finished sweep produced."""

    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    baseline_reused: bool  # every model's baseline came from the cache
    dense_test_accuracy: dict[str, float]  # per model
    runs: pd.DataFrame  # one row per FINISHED trial, with a boolean ``pareto`` column
    failed_trials: int
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # CSV name -> table
    sweep_name: str = ""
    results_dir: str = ""  # where the CSV tables, pareto.png and report.md were written
    analysis: Any = None  # sweeps.pareto.Analysis of the finished trials
    failures: list[tuple[str, str]] = field(default_factory=list)  # (run name, why) per FAILED
    budget: str = ""  # what the sweep was allowed and spent, in one line
    budget_exhausted: str = ""  # "epochs" or "time" when a budget ended the sweep


def say(msg: str) -> None:
    """Progress line on stderr (stdout carries the result tables)."""
    print(f"[sweep] {msg}", file=sys.stderr, flush=True)


def base_config(spec: SweepSpec, model: str) -> ExperimentConfig:
    """The data/model/training config of ``model``'s dense baseline in this sweep."""
    rewind: tuple[int, ...] = ()
    # a search of a rewinding space, or a grid with a rewinding recipe, keeps the dense snapshots
    # (the same ones, so the grid's baseline is the search's, cache entry included)
    searched = spec.space in REWINDING_SPACES and not spec.grid
    if (searched or (spec.grid and grid_rewinds(spec))) and not spec.init_checkpoint:
        from search_spaces import REWIND_EPOCHS

        rewind = tuple(e for e in REWIND_EPOCHS if e < spec.baseline_epochs)
    return ExperimentConfig(
        data=DataConfig(
            dataset=spec.dataset, root=spec.data_root, download=spec.download,
            batch_size=spec.batch_size, image_size=spec.image_size, normalize=spec.normalize,
        ),
        model=ModelConfig(name=model, weights=spec.weights),
        train=TrainConfig(
            epochs=spec.baseline_epochs, lr=spec.baseline_lr, optimizer=spec.baseline_optimizer,
            weight_decay=spec.baseline_weight_decay, rewind_epochs=rewind,
            init_checkpoint=spec.checkpoint_sha256,
        ),
        seed=spec.seed,
    )  # fmt: skip


def grid_rewinds(spec: SweepSpec) -> bool:
    """True if a recipe of the study's grid rewinds (weights or learning rate) to a dense
    snapshot (``mnist_han``); the protocol grids fine-tune."""
    from search_spaces import GRIDS, get_grid

    if spec.study not in GRIDS:
        return False
    return any(r.get("retrain", "finetune") != "finetune" for r in get_grid(spec.study, spec.quick))


def can_rewind(spec: SweepSpec) -> bool:
    """Whether the sweep's recipes may rewind: not from a checkpoint (no dense training to
    rewind into), and only with a dense schedule longer than the latest epoch a space may
    rewind to (``search_spaces.REWIND_EPOCHS``, ``LR_REWIND_EPOCHS``: rewind_epoch <
    train.epochs); without it a space proposes fine-tuning recipes only."""
    from search_spaces import LR_REWIND_EPOCHS, REWIND_EPOCHS

    latest = max(*REWIND_EPOCHS, *LR_REWIND_EPOCHS)
    return not spec.init_checkpoint and spec.baseline_epochs > latest


def check_model_on_data(spec: SweepSpec, data: Any) -> None:
    """Before any run exists: each model builds for the data's shape, answers one batch with one
    score per class (``--num-classes``, if given, agreeing with the data), and takes the
    checkpoint's weights; ``UsageError`` (one line) otherwise."""
    import torch

    from prune_core.checkpoint import CheckpointError, load_into, read_state_dict

    if spec.num_classes is not None and spec.num_classes != data.num_classes:
        raise UsageError(f"--num-classes {spec.num_classes}: dataset {spec.dataset} has "
                         f"{data.num_classes} classes")  # fmt: skip
    batch = data.normalize(data.x_test[:2])
    for name in spec.models:
        try:
            model = build_model(name, data.in_channels, data.num_classes, data.image_size,
                                spec.weights)  # fmt: skip
            if spec.init_checkpoint:
                load_into(model, read_state_dict(spec.init_checkpoint), spec.init_checkpoint)
            with torch.no_grad():
                out = model.eval()(batch)
        except SourceError as err:
            raise UsageError(f"--model: {err}") from None
        except CheckpointError as err:
            raise UsageError(f"--init-checkpoint: {err} ({name})") from None
        except Exception as err:  # the model's own forward rejects the data's shape
            raise UsageError(
                f"--model {name} rejects the data ({spec.dataset}: images "
                f"{tuple(batch.shape[1:])}): {first_line(err)}"
            ) from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, data.num_classes):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UsageError(
                f"--model {name} answers a batch of 2 with {shape}; a classifier of dataset "
                f"{spec.dataset} must answer (2, {data.num_classes})"
            )


def _check_resources(spec: SweepSpec, resources: dict[str, float]) -> SweepSpec:
    """``spec`` with its GPU share per trial set (``default_gpus_per_trial`` for the cluster when
    ``--gpus-per-trial`` was not given). Raises ``UsageError`` if one trial asks for more CPUs or
    GPUs than the whole cluster has (Ray Tune would otherwise wait for them forever)."""
    gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 0)
    if spec.gpus_per_trial is None:  # pack trials onto the cluster's GPUs, if it has any
        spec = dataclasses.replace(spec, gpus_per_trial=default_gpus_per_trial(spec.models, gpus))
    if spec.gpus_per_trial > 0 and gpus < spec.gpus_per_trial:
        raise UsageError(
            f"--gpus-per-trial {spec.gpus_per_trial:g}: the Ray cluster has {gpus:g} GPUs; "
            "pass --gpus-per-trial 0 or connect to a cluster with GPUs (--address)"
        )
    if cpus < spec.cpus_per_trial:
        raise UsageError(
            f"--cpus-per-trial {spec.cpus_per_trial:g}: the Ray cluster has {cpus:g} CPUs; "
            f"pass at most {cpus:g}"
        )
    return spec


def _check_local_gpus(spec: SweepSpec) -> None:
    """A local Ray (no ``--address``, none running) has this machine's GPUs: refuse a GPU share
    per trial it cannot give before anything starts (``_check_resources`` checks a cluster)."""
    import ray

    if spec.address or ray.is_initialized() or not spec.gpus_per_trial:
        return
    import torch

    gpus = torch.cuda.device_count()
    if gpus < spec.gpus_per_trial:
        raise UsageError(
            f"--gpus-per-trial {spec.gpus_per_trial:g}: this machine has {gpus} GPUs; pass "
            "--gpus-per-trial 0 (or leave it out) or connect to a cluster with GPUs (--address)"
        )


def _check_address_reachable(address: str, timeout_s: float = 5.0) -> None:
    """For ``host:port`` (not ``auto``, not ``ray://``), fail within seconds if nothing listens
    there, instead of letting Ray retry for minutes."""
    import socket

    host_port = parse_address(address)
    if host_port is None:
        return
    try:
        with socket.create_connection(host_port, timeout=timeout_s):
            pass
    except OSError as err:
        raise UsageError(
            f"--address {address}: no Ray cluster answers there ({err.strerror or err}); "
            "start one with `ray start --head` or leave --address out for a local Ray"
        ) from None


def trial_niceness() -> str:
    """The niceness of the sweep's trial workers, relative to the raylet (whose is the driver's
    on a local Ray): ``RAY_WORKER_NICENESS_ENV`` if the user set it, else 0.

    Ray starts workers at nice 15 so that they cannot slow Ray's own processes. A sweep's
    workers are its trials, the work itself, while the driver and Ray's processes mostly wait
    for them: at 15, any ordinary process on a busy machine took their CPU (issue 25: about 2%
    each while the driver idled; measured in the README). Ray's job submission starts its job
    drivers with the same setting at 0."""
    value = os.environ.get(RAY_WORKER_NICENESS_ENV, "0").strip()
    try:
        int(value)
    except ValueError:
        raise UsageError(f"{RAY_WORKER_NICENESS_ENV}={value!r}: not an integer niceness") from None
    return value


class RayStartFailed(UsageError):
    """A local Ray did not come up; the message is one line that says what to do."""


def ray_start_wait_s() -> int:
    """Seconds a local Ray may take to start: ``RAY_START_WAIT_ENV`` if set (Ray's own name),
    else ``RAY_START_WAIT_S``."""
    try:
        return max(1, int(os.environ.get(RAY_START_WAIT_ENV, RAY_START_WAIT_S)))
    except ValueError:
        raise UsageError(
            f"{RAY_START_WAIT_ENV}={os.environ[RAY_START_WAIT_ENV]!r}: not a number of seconds"
        ) from None


@contextlib.contextmanager
def _raylet_registration_wait(seconds: float) -> Iterator[None]:
    """Let ``ray.init`` wait up to ``seconds`` for the new node's raylet to register with the
    GCS. Ray 2.60 polls ``ray._private.services.get_node`` (``RuntimeError`` while the node is
    unknown) for a fixed 30 s (``raylet_start_wait_time_s`` in ``ray._private.node``, not a
    setting); here each of its polls keeps retrying until the deadline, so Ray's own check
    only fires once it has passed. Without that private function (another Ray), Ray's wait."""
    try:
        from ray._private import services

        original = services.get_node
    except (ImportError, AttributeError):
        yield
        return
    deadline = time.monotonic() + seconds

    def patient_get_node(*args: Any, **kwargs: Any) -> Any:
        while True:
            try:
                return original(*args, **kwargs)
            except RuntimeError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    services.get_node = patient_get_node
    try:
        yield
    finally:
        services.get_node = original


def _inherited_env(runtime_env: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any] | None]:
    """(environment variables for a new local Ray to inherit, the runtime env left to give it).
    A runtime env of environment variables alone becomes the environment the local Ray's
    processes start with, so that its trial actors take the workers Ray starts with it (those
    have the empty runtime env; an actor with another one waits for a new worker process: 1.1 s
    instead of 0.35 s for two actors on the 2-core VM, and the idle ones' start spent for
    nothing). Code to ship (``py_modules``) keeps the runtime env whole."""
    if set(runtime_env) == {"env_vars"}:
        return dict(runtime_env["env_vars"]), None
    return {}, runtime_env


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` set in this process's environment while the block runs (the processes it
    starts inherit them), the earlier values restored afterwards."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _start_local_ray(runtime_env: dict[str, Any]) -> None:
    """Start a local Ray for the sweep, allowing it ``ray_start_wait_s()`` to come up (see
    ``RAY_START_WAIT_S``). Raises ``RayStartFailed`` (one line) when Ray does not start."""
    import ray

    wait = ray_start_wait_s()
    os.environ[RAY_START_WAIT_ENV] = str(wait)  # the GCS waits this long; inherited by Ray
    inherited, runtime_env = _inherited_env(runtime_env)
    try:
        with _raylet_registration_wait(wait), _environment(inherited):
            ray.init(
                include_dashboard=False, logging_level="WARNING", log_to_driver=True,
                runtime_env=runtime_env,
            )  # fmt: skip
    except Exception as err:  # Ray raises plain Exception, RuntimeError, TimeoutError, ...
        with contextlib.suppress(Exception):
            ray.shutdown()  # whatever of it did start
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        logs = os.path.join(os.environ.get("RAY_TMPDIR", "/tmp/ray"), "session_latest", "logs")
        if "timed out" in first.lower():
            raise RayStartFailed(
                f"Ray's local node did not start within {wait} s ({first[:160]}); the machine "
                f"is busy: try again later, or allow longer with {RAY_START_WAIT_ENV}={4 * wait}"
            ) from None
        raise RayStartFailed(
            f"cannot start a local Ray ({first[:200]}); Ray's logs are in {logs}"
        ) from None


def _init_ray(spec: SweepSpec, tracking: TrackingTarget) -> tuple[bool, SweepSpec]:
    """Start or join Ray (unless this process is connected already), and fail at once if the
    sweep cannot work there: Ray does not start (``_start_local_ray``), a trial's resources can
    never be met, or several nodes would share a SQLite tracking file. Returns (True if this
    call connected, and so must disconnect; ``spec`` with its GPU share per trial set for this
    cluster)."""
    import ray

    # every trial, on any node, finds the tracking URI in its environment, and the user's own
    # code (sources and plugins that are not installed packages) comes with it; Ray's workers
    # read their niceness from their environment (set per job, so a cluster's other jobs keep
    # their own)
    env_vars = {"MLFLOW_TRACKING_URI": tracking.uri, RAY_WORKER_NICENESS_ENV: trial_niceness()}
    runtime_env: dict[str, Any] = {"env_vars": env_vars}
    if shipped := user_code(spec):
        runtime_env["py_modules"] = shipped
    if ray.is_initialized():
        connected = False
    elif spec.address:  # reachable: checked by _prepare
        import prune_core
        import search_spaces
        import sweeps

        # ship this project's code to every node, so workers need only the dependencies
        runtime_env["py_modules"] = [prune_core, search_spaces, sweeps, *shipped]
        try:
            ray.init(
                address=spec.address, logging_level="WARNING", log_to_driver=True,
                runtime_env=runtime_env,
            )  # fmt: skip
        except Exception as err:  # Ray raises ConnectionError, RuntimeError, auth errors, ...
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UsageError(
                f"--address {spec.address}: cannot join the Ray cluster ({first[:200]}); with "
                "token authentication set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
                "(`ray get-auth-token` on the head)"
            ) from None
        connected = True
    else:
        _start_local_ray(runtime_env)
        connected = True
    try:
        spec = _check_resources(spec, ray.cluster_resources())
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if len(nodes) > 1 and tracking.is_local_file:
            raise UsageError(
                f"--tracking-uri {spec.tracking_uri}: a SQLite file cannot be shared by the "
                f"{len(nodes)} nodes of this Ray cluster; start a tracking server "
                "(python -m sweeps.server) and pass --tracking-uri http://HEAD:5000"
            )
    except UsageError:
        if connected:
            ray.shutdown()
        raise
    return connected, spec


def user_code(spec: SweepSpec) -> list[Any]:
    """What Ray must ship to every node for this sweep's own code to run there: the top-level
    package (or module) of each ``package.module:function`` source and plugin module, and each
    plugin ``.py`` file, unless it is installed (site-packages) where the workers find it."""
    import importlib
    import sysconfig

    installed = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    names = [s.rpartition(":")[0] for s in (*spec.models, spec.dataset)
             if is_source(s) and not s.startswith(("torchvision:", "imagefolder:"))]  # fmt: skip
    files: list[Any] = []
    for plugin in spec.plugins:
        target, _ = split_plugin(plugin)
        (files if target.endswith(".py") else names).append(target)
    shipped: list[Any] = []
    for name in dict.fromkeys(n.split(".")[0] for n in names):
        module = importlib.import_module(name)
        where = os.path.abspath(getattr(module, "__file__", None) or "")
        if where and not any(where.startswith(p + os.sep) for p in installed):
            shipped.append(module)
    return shipped + list(dict.fromkeys(files))


def space_with_models(trial: Any, space: Callable, models: tuple[str, ...]) -> dict[str, Any]:
    """A study with several models lets Optuna pick the model too."""
    trial.suggest_categorical("model", list(models))
    return space(trial)


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped the sweep; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.resume: str | None = None  # the command that continues the sweep, once it exists


class StorageFailed(Exception):
    """A write failed for want of space or permission; one line naming the path and the error,
    and the command that continues the sweep once the storage is back."""

    def __init__(self, sweep: _Sweep, err: OSError):
        where = f"{err.filename}: " if err.filename else ""
        super().__init__(
            f"storage: {where}{err.strerror or err} (errno {err.errno}); what was logged is "
            f"kept: free space or pick a writable folder, then "
            f"{resume_command(sweep.spec, sweep.sweep_name)}"
        )


class BaselineNotLearned(UsageError):
    """The dense baseline is within ``CHANCE_MARGIN`` of chance: pruning it would mean nothing."""


class _Interrupts:
    """SIGINT/SIGTERM handling of a sweep driver: a signal is recorded, never thrown into
    whatever code runs at that instant (an exception raised from a handler lands there, and
    places such as a garbage-collection callback print and drop it: SIGTERMs were lost so).

    - The first signal is recorded. While Ray Tune runs, it also asks Tune to stop (its SIGUSR1
      handler: it stops the trials and writes its experiment state one last time); elsewhere
      the sweep stops at its next safe point (``check``: between phases, after each dense
      epoch, after Tune's loop).
    - A second signal raises ``SweepInterrupted`` at once.
    - A stop not done ``STOP_GRACE_S`` seconds after the first signal is forced: ``on_force``
      writes the run states (parent and unfinished children KILLED), then Ray is left and the
      process exits with 128 + the signal's number.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.in_tune = False
        self.on_force: Callable[[int], None] | None = None  # writes the run states
        self._previous: dict[int, Any] = {}
        self._watchdog: threading.Timer | None = None

    def handle(self, signum: int, _frame: Any) -> None:
        """The signal handler (see the class docstring)."""
        if self.signum is not None:
            raise SweepInterrupted(self.signum)
        self.signum = signum
        name = signal.Signals(signum).name
        if self.in_tune and callable(signal.getsignal(signal.SIGUSR1)):
            say(f"{name}: stopping the trials (again to stop at once)")
            signal.raise_signal(signal.SIGUSR1)
        else:
            say(f"{name}: stopping at the next safe point (again to stop at once)")
        self._watchdog = threading.Timer(STOP_GRACE_S, self._force)
        self._watchdog.daemon = True
        self._watchdog.start()

    def check(self) -> None:
        """A safe point: raise ``SweepInterrupted`` if a signal came."""
        if self.signum is not None:
            raise SweepInterrupted(self.signum)

    def _force(self) -> None:
        """The stop did not complete in time: write the run states, leave Ray, exit."""
        assert self.signum is not None
        say(f"the stop took over {STOP_GRACE_S} s: forcing it")
        try:
            if self.on_force is not None:
                self.on_force(self.signum)
        finally:
            _leave_ray(timeout_s=5.0)
            sys.stderr.flush()
            os._exit(128 + self.signum)

    def install(self) -> None:
        """(Re)install the handlers: ``ray.init`` puts its own fatal SIGTERM handler (a core
        dump and SIGABRT) over Python's, so this runs again once Ray is up."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous = signal.signal(sig, self.handle)
                self._previous.setdefault(sig, previous)
        if self.signum is None and early_signal() is not None:
            self.signum = early_signal()  # recorded before these handlers existed: stop now

    def __enter__(self) -> _Interrupts:
        self.install()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None and self.signum is not None:
            note_signal(self.signum)  # after the last safe point: the command still ends 128 + N
        if self._watchdog is not None:
            self._watchdog.cancel()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _leave_ray(timeout_s: float) -> None:
    """``ray.shutdown()`` in a thread, waited for at most ``timeout_s`` seconds."""
    import ray

    done = threading.Thread(target=ray.shutdown, daemon=True)
    done.start()
    done.join(timeout_s)


def resume_module(study: str) -> str:
    """The command of ``study``: ``python -m sweeps.<study>``, or ``python -m sweeps`` for the
    generic sweep of the user's own model and data."""
    return "python -m sweeps" if study == GENERIC_STUDY else f"python -m sweeps.{study}"


def resume_command(spec: SweepSpec, sweep_name: str) -> str:
    """The exact command that continues this sweep (the settings come from its parent run)."""
    cmd = f"{resume_module(spec.study)} --resume {sweep_name}"
    if spec.tracking_uri != DEFAULT_TRACKING_URI:
        cmd += f" --tracking-uri {spec.tracking_uri}"
    return cmd


def _tune_path(storage_path: str, sweep_name: str) -> str:
    """Ray Tune's folder of the sweep (``storage_path`` may be a URI such as s3://...)."""
    return f"{storage_path.rstrip('/')}/{sweep_name}"


# Ray Tune experiment states saved before the callback moved to sweeps.callbacks hold it pickled
# by value, with a reference to this name: keep it, so --resume still restores those sweeps.
_last_line = error_file_line


def reused_trials(children: Any) -> int:
    """How many trials reused the result of a child run in ``children`` (an
    ``mlflow.search_runs`` frame) instead of running its recipe again: the trial ids in their
    ``reused_by`` tags."""
    column = f"tags.{REUSED_BY_TAG}"
    if column not in children:
        return 0
    return sum(len([t for t in str(v).split(",") if t]) for v in children[column].dropna())


def _check_baseline(model: str, accuracy: float, num_classes: int, epochs: int) -> None:
    """Raise ``BaselineNotLearned`` when ``accuracy`` is within ``CHANCE_MARGIN`` of chance."""
    chance = 1.0 / num_classes
    if accuracy <= chance + CHANCE_MARGIN:
        raise BaselineNotLearned(
            f"dense {model} test accuracy {accuracy:.4f} is within {CHANCE_MARGIN * 100:.0f} "
            f"points of chance ({chance:.4f} for {num_classes} classes): it did not learn; train "
            f"it longer (--baseline-epochs, now {epochs}) or with another learning rate"
        )


@dataclass
class _Sweep:
    """What the phases of one sweep share; each phase fills in what the later ones read."""

    spec: SweepSpec
    study: Study | None
    objectives: list[Objective]
    target: TrackingTarget
    data: Any  # the dataset as tensors (prune_core.data), sent to every trial
    started: float  # time.perf_counter() when the sweep started
    client: Any = None  # an MlflowClient of target.uri, once the store is ready
    experiment_id: str = ""
    parent_id: str = ""
    sweep_name: str = ""
    resumed: Any = None  # the parent run that --resume continues, else None
    settings: dict[str, Any] = field(default_factory=dict)  # the parent run's params
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)  # per model, for trials
    accuracies: dict[str, float] = field(default_factory=dict)  # dense test accuracy per model
    reused: list[bool] = field(default_factory=list)  # per model: its baseline came from cache
    dense_totals: list[float] = field(default_factory=list)  # parameters of each dense model
    scheduler: MOASHAScheduler | None = None  # early stopping, if the sweep uses it
    interrupts: _Interrupts | None = None  # the driver's signal handling, for its safe points
    budget: Budget = field(default_factory=Budget)  # trials, epochs, time: limits and account
    store: Any = None  # its _StorePreparation: the SQLite store, made (or waited for) here

    def progress(self, msg: str) -> None:
        """A progress line, and a safe point to stop at (after a dense epoch, a latency)."""
        say(msg)
        if self.interrupts is not None:
            self.interrupts.check()


def run_sweep(
    spec: SweepSpec, study: Study | None = None, started: float | None = None
) -> SweepOutcome:
    """Run the sweep ``spec`` end to end (or, with ``spec.resume``, continue an interrupted one)
    and return its outcome.

    Everything that can be checked is checked before any MLflow run exists: the tracking URI,
    the dataset, the objectives, the Ray cluster and its resources. SIGINT/SIGTERM raise
    ``SweepInterrupted`` after the parent run and every unfinished child run are marked KILLED.
    ``started``: the ``time.monotonic()`` its time budget counts from (default: now).
    """
    sweep = _prepare(spec, study, time.monotonic() if started is None else started)
    with (
        _Interrupts() as interrupts,
        in_force(sweep.budget),
        _BaselineTraining(sweep, interrupts) as baselines,  # while Ray starts, the run is made
        _StorePreparation(sweep),  # the SQLite store's tables made while Ray starts
        _ray_session(sweep, interrupts),
    ):
        interrupts.check()
        _open_parent_run(sweep)
        interrupts.on_force = functools.partial(_force_states, sweep)
        sweep.interrupts = interrupts
        status = "FAILED"
        try:
            _log_settings(sweep)
            baselines.wait()
            _record_baselines(sweep, baselines.seconds)
            interrupts.check()
            if sweep.budget.time_up():  # Tune would stop at once, racing its own first save
                sweep.budget.exhausted = "time"
                say(f"the time budget of {format_seconds(sweep.budget.seconds or 0)} was spent "
                    f"before any trial ({format_seconds(sweep.budget.elapsed())}: the imports, "
                    "Ray's start, the data and the dense baseline)")  # fmt: skip
            else:
                _fit(_make_tuner(sweep), interrupts, sweep.spec)
            finish_started = time.monotonic()
            _settle_budget(sweep)
            outcome = _finish(sweep)
            outcome.budget = _budget_summary(sweep, time.monotonic() - finish_started)
            outcome.budget_exhausted = sweep.budget.exhausted
            say(outcome.budget)
            interrupts.check()  # the last safe point: a signal after it meets a finished sweep
            status = "FINISHED"
            return outcome
        except KeyboardInterrupt as err:
            status = "KILLED"
            interrupts.in_tune = False
            raise _interrupted(sweep, err, interrupts) from None
        except BaselineNotLearned:
            sweep.client.set_tag(sweep.parent_id, "failure", "baseline_not_learned")
            raise
        except OSError as err:
            if err.errno not in STORAGE_ERRNOS:
                raise
            sweep.client.set_tag(sweep.parent_id, "failure", "storage")
            sweep.client.set_tag(sweep.parent_id, "error", first_line(err))
            raise StorageFailed(sweep, err) from None
        finally:
            sweep.client.set_terminated(sweep.parent_id, status)


# --- set-up: checks, Ray, interrupts, the parent run ---------------------------------------


def _prepare(spec: SweepSpec, study: Study | None, budget_start: float) -> _Sweep:
    """The checks that need no Ray (objectives, tracking URI, dataset) and Ray Tune's settings;
    the time budget counts from ``budget_start`` (``time.monotonic()``)."""
    started = time.perf_counter()
    objectives = parse_objectives(spec.objectives)
    _check_local_gpus(spec)
    if spec.address:  # seconds, before the data loads, rather than after
        _check_address_reachable(spec.address)
    target = resolve_tracking_uri(spec.tracking_uri)
    try:
        data = load_dataset(
            spec.dataset, root=spec.data_root, download=spec.download, seed=spec.seed,
            image_size=spec.image_size, normalize=spec.normalize,
        )  # fmt: skip
    except SourceError as err:
        raise UsageError(f"--dataset: {err}") from None
    except ValueError as err:  # --normalize that does not fit the channels
        raise UsageError(f"--normalize: {err}") from None
    check_model_on_data(spec, data)
    say(f"dataset {spec.dataset}: {len(data.y_train)} train / {len(data.y_test)} test images")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # the driver's own handler turns SIGINT into Tune's graceful stop (see _Interrupts)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # Tune's experiment state (what --resume restores) at most this many seconds old
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(TUNE_CHECKPOINT_S))
    # of Tune's per-trial loggers only its result.json (_make_tuner adds it): the CSV and
    # TensorBoard ones are most of the 1.7 s the three took of the driver per 100 short trials
    # (profiled), and MLflow has it all
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # the latency pass says a line per checkpoint; MLflow's download bars said one more each
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    trials = None if spec.grid else spec.num_samples
    budget = Budget(trials=trials, epochs=spec.epoch_budget, seconds=spec.time_budget_s,
                    started=budget_start)  # fmt: skip
    return _Sweep(spec, study, objectives, target, data, started, budget=budget)


@contextlib.contextmanager
def _ray_session(sweep: _Sweep, interrupts: _Interrupts) -> Iterator[None]:
    """Start or join Ray for the sweep (``_init_ray``: ``sweep.spec`` gets the cluster's GPU
    share), and leave it at the end if this call joined."""
    import ray

    interrupts.check()  # a signal the handlers adopted (sweeps/__init__.py): no Ray to start
    with _ray_keeps_our_sigterm():
        connected, sweep.spec = _init_ray(sweep.spec, sweep.target)
    if connected and sweep.spec.time_budget_s:  # this command shuts its Ray down at the end
        sweep.budget.reserve_s = min(EXIT_RESERVE_S, sweep.spec.time_budget_s / 4)
    interrupts.install()
    try:
        yield
    finally:
        if connected:
            ray.shutdown()
            interrupts.install()  # Ray's C++ handlers may have taken SIGTERM at its shutdown


@contextlib.contextmanager
def _ray_keeps_our_sigterm() -> Iterator[None]:
    """Keep the driver's SIGTERM handler while ``ray.init`` runs: Ray puts ``sys.exit(signum)``
    in its place first (``ray._private.utils.set_sigterm_handler``), so a SIGTERM while Ray
    starts ended the driver with status 15 and no word. Without that private function (another
    Ray), Ray's handler stands until ``_Interrupts.install`` runs again after the start."""
    try:
        from ray._private import utils
    except ImportError:
        yield
        return
    original = getattr(utils, "set_sigterm_handler", None)
    if original is None:
        yield
        return
    utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        utils.set_sigterm_handler = original


class _StorePreparation:
    """A new SQLite store's tables, made in a thread while Ray starts (MLflow's schema
    migrations took 0.9-4 s on a 2-core VM, the first trial waited for them), on any machine:
    Ray's start mostly waits for its processes, and the store's 1-2.6 s of one core (most of it
    importing MLflow's SQL store) fit in beside it (the first trial of 100 began 7.8-9.7 s into
    the sweep with it, 8.9-11.3 s without, runs alternated on the 2-core VM). If the sweep
    stops before its parent run exists (Ray did not start, a signal), a store this made is
    removed again, as long as nobody else wrote a run there meanwhile: a failed start leaves
    no store behind, as when the store was made after Ray's start."""

    def __init__(self, sweep: _Sweep) -> None:
        self.sweep = sweep
        self.error: BaseException | None = None
        self.made: list[str] = []  # the folders and files this made, outermost first
        self._thread = threading.Thread(target=self._run, name="sqlite-store", daemon=True)

    def _run(self) -> None:
        try:
            prepare_sqlite_store(self.sweep.target)
        except BaseException as err:  # noqa: BLE001 (re-raised in the driver's thread by wait)
            self.error = err

    def wait(self) -> None:
        """Wait for the store; raise what its preparation raised."""
        self._thread.join()
        if self.error is not None:
            raise self.error

    def __enter__(self) -> _StorePreparation:
        self.sweep.store = self  # _open_parent_run waits for it
        if self.sweep.target.is_local_file:
            db = os.path.abspath(self.sweep.target.uri[len("sqlite:///") :])
            missing = [db + suffix for suffix in ("", ".lock", "-wal", "-shm")]
            folder = os.path.dirname(db)
            while folder and not os.path.exists(folder):
                missing.insert(0, folder)
                folder = os.path.dirname(folder)
            self.made = [path for path in missing if not os.path.exists(path)]
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._thread.join()
        if exc_type is None or self.sweep.parent_id or not self.made or self.error:
            return
        db = self.sweep.target.uri[len("sqlite:///") :]
        if not os.path.exists(db) or not _empty_store(self.sweep.target.uri):
            return
        for path in reversed(self.made):
            with contextlib.suppress(OSError):
                if os.path.isdir(path):
                    os.rmdir(path)
                else:
                    os.remove(path)


def _empty_store(uri: str) -> bool:
    """Whether the store at ``uri`` holds no run at all."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiments = client.search_experiments(view_type=ViewType.ALL)
    ids = [e.experiment_id for e in experiments]
    return not ids or not client.search_runs(ids, run_view_type=ViewType.ALL, max_results=1)


def _open_parent_run(sweep: _Sweep) -> None:
    """Make the sweep's parent run, or with --resume find it again, and say how to resume."""
    from mlflow.tracking import MlflowClient

    spec = sweep.spec
    sweep.store.wait()  # after every check that needs no store (Ray's start included)
    sweep.client = client = MlflowClient(tracking_uri=sweep.target.uri)
    sweep.resumed = find_sweep(client, spec.resume) if spec.resume else None
    if spec.resume and sweep.resumed is None:
        raise UsageError(f"--resume {spec.resume!r}: no sweep of that name or run id in "
                         f"{spec.tracking_uri}")  # fmt: skip
    sweep.experiment_id = get_or_create_experiment(
        client, spec.experiment, sweep.target.artifact_location
    )
    if sweep.resumed is not None:
        _resume_budget(sweep)  # may refuse (a budget already spent) before anything changes
        _reopen_parent_run(sweep)
    else:
        sweep.sweep_name = new_sweep_name(spec.study)
        parent = client.create_run(
            sweep.experiment_id, run_name=sweep.sweep_name,
            tags={"sweep": sweep.sweep_name, "study": spec.study, "argv": json.dumps(spec.argv)},
        )  # fmt: skip
        sweep.parent_id = parent.info.run_id
    say(f"sweep {sweep.sweep_name}; if it stops, continue it with: "
        f"{resume_command(spec, sweep.sweep_name)}")  # fmt: skip


def _reopen_parent_run(sweep: _Sweep) -> None:
    """--resume: the parent run RUNNING again, and what the stopped driver left RUNNING KILLED."""
    client, resumed = sweep.client, sweep.resumed
    sweep.parent_id, sweep.sweep_name = resumed.info.run_id, resumed.data.tags["sweep"]
    client.update_run(sweep.parent_id, status="RUNNING")
    if EXHAUSTED_TAG in resumed.data.tags:  # a budget ended it; this command has a new one
        client.delete_tag(sweep.parent_id, EXHAUSTED_TAG)
    client.set_tag(sweep.parent_id, "argv", json.dumps(sweep.spec.argv))  # what resumes next
    stale = end_unfinished_children(
        client, sweep.experiment_id, sweep.parent_id, "KILLED",
        {"killed_by": "resume: the sweep's driver had stopped"},
    )  # fmt: skip
    times = int(resumed.data.tags.get("resumed", 0)) + 1
    client.set_tag(sweep.parent_id, "resumed", str(times))
    say(f"resuming sweep {sweep.sweep_name} (parent run {sweep.parent_id}); {stale} child run(s) "
        "left RUNNING by the stopped driver marked KILLED")  # fmt: skip


def _log_settings(sweep: _Sweep) -> None:
    """The sweep's settings as the parent run's params (once: a resumed sweep has them)."""
    settings = dataclasses.asdict(sweep.spec)
    settings["models"] = ",".join(settings["models"])
    del settings["argv"], settings["resume"]
    settings["plugins"] = ",".join(settings["plugins"])
    # params only where the user gave them
    for key in ("plugins", "epoch_budget", "time_budget_s", *SOURCE_SETTINGS):
        if settings[key] in (None, "", 0):
            del settings[key]
    if "normalize" in settings:
        settings["normalize"] = "/".join(",".join(map(str, v)) for v in settings["normalize"])
    # the statistics the images were standardised with (the training split's, or --normalize)
    settings["normalize_mean"] = ",".join(f"{v:.6g}" for v in sweep.data.mean)
    settings["normalize_std"] = ",".join(f"{v:.6g}" for v in sweep.data.std)
    sweep.settings = settings
    if sweep.resumed is None:
        log_params(sweep.client, sweep.parent_id, settings)


def _force_states(sweep: _Sweep, signum: int) -> None:
    """The run states of a forced stop: unfinished children and the parent KILLED, and the
    command that resumes the sweep."""
    name = signal.Signals(signum).name
    end_unfinished_children(sweep.client, sweep.experiment_id, sweep.parent_id, "KILLED",
                            {"killed_by": name})  # fmt: skip
    sweep.client.set_terminated(sweep.parent_id, "KILLED")
    print(f"interrupted by {name}; continue the sweep with:\n  "
          f"{resume_command(sweep.spec, sweep.sweep_name)}", file=sys.stderr)  # fmt: skip


def _interrupted(sweep: _Sweep, err: BaseException, interrupts: _Interrupts) -> SweepInterrupted:
    """Mark every unfinished child run KILLED; the ``SweepInterrupted`` to raise, with the
    command that resumes the sweep."""
    signum = getattr(err, "signum", interrupts.signum or signal.SIGINT)
    killed = end_unfinished_children(
        sweep.client, sweep.experiment_id, sweep.parent_id, "KILLED",
        {"killed_by": signal.Signals(signum).name},
    )  # fmt: skip
    say(f"interrupted ({signal.Signals(signum).name}): parent run and {killed} "
        "unfinished child run(s) marked KILLED")  # fmt: skip
    interrupted = SweepInterrupted(signum)
    interrupted.resume = resume_command(sweep.spec, sweep.sweep_name)
    return interrupted


# --- baselines --------------------------------------------------------------------------------


class _Abandoned(Exception):
    """The sweep stopped (Ray did not start, a signal, an error) while its baselines trained."""


def overlaps_start_up() -> bool:
    """Whether the dense baseline trains while Ray starts (in a thread): with at least
    ``OVERLAP_MIN_CPUS`` CPUs. The baseline keeps every core it is given busy: on the 2-core VM
    it took as much longer beside Ray's start (2.5-4.5 s) and the store's as they took, and a
    sweep's wall time did not fall (64.3 s before, 64.6 s with it, for 100 one-second trials;
    104.5 s and 107.8 s for the quick ResNet-18 sweep), so there it trains after them. (The
    store is made beside Ray's start on any machine: ``_StorePreparation``.)"""
    return (os.cpu_count() or 1) >= OVERLAP_MIN_CPUS


class _BaselineTraining:
    """The dense baselines, trained (or loaded from the cache) in a thread from the moment the
    data is loaded, while the driver starts Ray and makes the parent run
    (``overlaps_start_up``; otherwise in the driver's thread, at ``wait``): those then cost no
    wall time when the baselines take as long. It writes nothing to MLflow (the parent run may
    not exist yet): ``_record_baselines`` does, after ``wait``. Ray is still checked before any
    store exists."""

    def __init__(self, sweep: _Sweep, interrupts: _Interrupts) -> None:
        self.sweep = sweep
        self.interrupts = interrupts
        self.spec = sweep.spec  # as _prepare made it (_init_ray replaces sweep.spec meanwhile)
        self.seconds = 0.0  # of training, all models together (0 for cached baselines)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dense-baselines", daemon=True)
        self._overlap = overlaps_start_up()

    def _progress(self, msg: str) -> None:
        """A progress line, and a safe point: after each dense epoch the thread ends if the
        sweep stopped or a signal came."""
        say(msg)
        if self._stop.is_set():
            raise _Abandoned
        self.interrupts.check()

    def _run(self) -> None:
        try:
            self.seconds = _train_baselines(self.sweep, self.spec, self._progress)
        except BaseException as err:  # noqa: BLE001 (re-raised in the driver's thread by wait)
            self.error = err

    def wait(self) -> None:
        """Wait for the baselines (a safe point for signals every quarter second); raise what
        the thread raised. Without the thread, train them here."""
        if not self._overlap:
            self.seconds = _train_baselines(self.sweep, self.spec, self.sweep.progress)
            return
        while self._thread.is_alive():
            self.interrupts.check()
            self._thread.join(0.25)
        if self.error is not None:
            raise self.error

    def __enter__(self) -> _BaselineTraining:
        if self._overlap:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()  # the thread ends after its current epoch (it may be that far along)
        if self._overlap:
            self._thread.join()


def _train_baselines(sweep: _Sweep, spec: SweepSpec, progress: Callable[[str], None]) -> float:
    """Train (or load from the cache) each model's dense baseline into ``sweep``, and refuse
    one that did not learn; returns the seconds they trained. Writes nothing to MLflow."""
    device_data = sweep.data.to(pick_device(None))
    return sum(_train_baseline(sweep, spec, model, device_data, progress) for model in spec.models)


def _train_baseline(
    sweep: _Sweep, spec: SweepSpec, model: str, device_data: Any, progress: Callable[[str], None]
) -> float:
    """``model``'s dense baseline into ``sweep``; returns the seconds it trained (0 from the
    cache)."""
    data = sweep.data
    cfg = base_config(spec, model)
    origin = f"checkpoint {spec.init_checkpoint}" if spec.init_checkpoint else (
        f"{spec.baseline_epochs} epochs")  # fmt: skip
    say(f"dense {model} {cfg.baseline_hash()}: {origin}")
    b = load_or_train_baseline(cfg, device_data, spec.cache_dir, log=progress,
                               checkpoint=spec.init_checkpoint)  # fmt: skip
    say(
        f"dense {model} {_baseline_source(spec, b.reused)}: test accuracy "
        f"{b.test_accuracy:.4f} ({b.path})"
    )
    if not spec.init_checkpoint:  # the user's own weights are theirs to judge
        _check_baseline(model, b.test_accuracy, data.num_classes, spec.baseline_epochs)
    sweep.baselines[model] = {
        "state": b.state,
        "test_accuracy": b.test_accuracy,
        "rewind_states": b.rewind_states,
    }
    sweep.accuracies[model] = b.test_accuracy
    dense_model = build_model(model, data.in_channels, data.num_classes, data.image_size)
    sweep.dense_totals.append(float(count_parameters(dense_model)[0]))
    sweep.reused.append(b.reused)
    return b.train_seconds


def _baseline_source(spec: SweepSpec, reused: bool) -> str:
    """Where a baseline came from: ``cache``, ``checkpoint`` (--init-checkpoint) or ``trained``."""
    return "cache" if reused else ("checkpoint" if spec.init_checkpoint else "trained")


def _record_baselines(sweep: _Sweep, seconds: float) -> None:
    """The baselines' sources, accuracies and training seconds on the parent run."""
    spec, client, parent_id = sweep.spec, sweep.client, sweep.parent_id
    for model, reused in zip(spec.models, sweep.reused, strict=True):
        client.set_tag(parent_id, f"baseline_source.{model}", _baseline_source(spec, reused))
        client.log_metric(parent_id, f"dense_test_accuracy.{model}", sweep.accuracies[model])
    if spec.init_checkpoint:  # the given weights, evaluated (or their evaluation, cached)
        client.set_tag(parent_id, "baseline_source", "checkpoint")
        client.set_tag(parent_id, "baseline_checkpoint", spec.checkpoint_sha256)
    else:
        client.set_tag(parent_id, "baseline_source", "cache" if all(sweep.reused) else "trained")
    client.log_metric(parent_id, "dense_test_accuracy", sweep.accuracies[spec.models[0]])
    client.log_metric(parent_id, "baseline_seconds", seconds)


# --- the tuner: scheduler, searcher or grid, create or restore ---------------------------------


def _make_tuner(sweep: _Sweep) -> Any:
    """The Ray Tune ``Tuner`` of the sweep: a new one, or with --resume the stopped one's."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    spec = sweep.spec
    base = base_config(spec, spec.models[0])  # data and training are the same per model
    context = TrialContext(
        data=base.data, train=base.train, model=spec.models[0], seed=spec.seed,
        cpus_per_trial=spec.cpus_per_trial, gpus_per_trial=spec.gpus_per_trial,
        tracking_uri=sweep.target.uri, experiment_id=sweep.experiment_id,
        parent_run_id=sweep.parent_id, sweep_name=sweep.sweep_name, plugins=spec.plugins,
    )  # fmt: skip
    trainable = tune.with_resources(
        tune.with_parameters(
            prune_trial, context=context, baselines=sweep.baselines, data=sweep.data
        ),
        {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial},
    )
    sweep.scheduler = _scheduler(sweep)
    tune_config, param_space = _grid(sweep) if spec.grid else _search(sweep)
    say(
        f"{spec.cpus_per_trial:g} CPU + {spec.gpus_per_trial:g} GPU per trial; "
        f"MLflow experiment {spec.experiment!r}, parent run {sweep.parent_id}"
    )

    if spec.grid:
        trial_total = len(param_space["recipe"]["grid_search"])
    else:  # a budget alone leaves the number of trials open
        trial_total = spec.num_samples if spec.num_samples < MAX_SAMPLES else None

    def fresh() -> Any:
        return tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune_config,
            run_config=tune.RunConfig(
                name=sweep.sweep_name,
                storage_path=spec.storage_path,
                # the sweep's own line per trial (TrialProgress), not Tune's tables
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                # Tune copies its experiment state to storage_path at most this often (default
                # 300 s): that copy is what --resume restores
                sync_config=tune.SyncConfig(sync_period=TUNE_CHECKPOINT_S),
                callbacks=[
                    JsonLoggerCallback(),  # each trial's result.json (the others are off)
                    TrialEndCallback(context),
                    TrialProgress(context, trial_total),
                ],
                # the time budget in force (sweeps.budget): every sweep has it, so that a
                # --resume may give one to a sweep started without
                stop=BudgetStopper(),
            ),
        )

    if sweep.resumed is not None:
        return _restored_tuner(sweep, trainable, param_space, fresh)
    return fresh()


def _restored_tuner(
    sweep: _Sweep, trainable: Any, param_space: dict | None, fresh: Callable[[], Any]
) -> Any:
    """--resume: the stopped sweep's ``Tuner`` from its saved state (its searcher's included).
    A state that cannot be read (a crash mid-write truncates it: Ray Tune then fails on restore)
    is moved aside in one line and the sweep goes on with a new ``Tuner`` (``fresh``) from what
    MLflow holds: a recipe that has a FINISHED run is reused, not run again (``sweeps.trial``)."""
    from ray import tune

    spec = sweep.spec
    tune_path = _tune_path(spec.storage_path, sweep.sweep_name)
    if not tune.Tuner.can_restore(tune_path) and EXHAUSTED_TAG in sweep.resumed.data.tags:
        return fresh()  # its budget ended it before Tune started: nothing to restore
    if not tune.Tuner.can_restore(tune_path):
        raise UsageError(
            f"--resume {spec.resume}: no Ray Tune state in {tune_path}; on a "
            "cluster, --storage-path must be storage every node shares (NFS)"
        )
    if not _saved_trials(tune_path):
        # Ray Tune fails to restore a state without trials (IndexError in its controller, with
        # a traceback): a sweep stopped before its first trial has nothing to restore anyway
        say(f"Ray Tune's saved state in {tune_path} has no trial yet: starting its loop afresh")
        return fresh()
    try:
        # finished trials stay finished; trials that were running run again
        with _tune_log_filter():
            return tune.Tuner.restore(
                tune_path, trainable, resume_unfinished=True, resume_errored=False,
                restart_errored=False, param_space=param_space,
            )  # fmt: skip
    except Exception as err:  # EOFError, pickle, JSON and Tune's own errors on a broken state
        if "://" in tune_path:  # a remote storage path is not ours to move
            raise UsageError(f"--resume {spec.resume}: Ray Tune's state in {tune_path} is "
                             f"unreadable ({first_line(err)})") from None  # fmt: skip
        aside = f"{tune_path}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(tune_path, aside)
        say(
            f"Ray Tune's saved state in {tune_path} is unreadable ({first_line(err)}); moved "
            f"to {aside}; continuing from what MLflow holds (finished recipes are reused)"
        )
        return fresh()


def _saved_trials(tune_path: str) -> int:
    """Trials in Ray Tune's newest saved experiment state under ``tune_path`` (a local folder);
    -1 when that cannot be read here (a remote URI, or a state Tune itself must judge)."""
    if "://" in tune_path:
        return -1
    states = sorted(glob.glob(os.path.join(tune_path, "experiment_state-*.json")))
    if not states:
        return -1
    try:
        with open(states[-1]) as fh:
            return len(json.load(fh).get("trial_data", []))
    except (OSError, ValueError, AttributeError):
        return -1


def _scheduler(sweep: _Sweep) -> MOASHAScheduler | None:
    """MO-ASHA with ``--early-stop mo-asha``, else None (every trial runs to its end)."""
    spec, objectives = sweep.spec, sweep.objectives
    if spec.early_stop != "mo-asha":
        return None
    # the dense values the fixed reference needs, as analyse's: the largest model
    total = max(sweep.dense_totals)
    dense = {"nonzero_params": total, "total_params": total,
             "test_accuracy": max(sweep.accuracies.values())}  # fmt: skip
    scheduler = MOASHAScheduler(objectives, spec.eta, partial_fixed_reference(objectives, dense))
    every_rung = step_metrics()  # logged at each rung; the rest only on the final model
    ranked = [o.metric for o in objectives if o.metric in every_rung]
    later = [o.metric for o in objectives if o.metric not in every_rung]
    say(
        f"early stopping: MO-ASHA, eta {spec.eta}: at each rung (a prune "
        "iteration; a fine-tune epoch for one-shot recipes) a trial goes on only "
        f"in the top 1/{spec.eta} by non-dominated sorting on "
        f"{', '.join(ranked) or 'no objective'}"
        + (f" ({', '.join(later)}: measured only at the end, not ranked)"
           if later else "")
    )  # fmt: skip
    return scheduler


def _grid(sweep: _Sweep) -> tuple[Any, dict[str, Any]]:
    """(Tune config, param space) of ``--grid``: the study's protocol recipes, each model."""
    from ray import tune

    from search_spaces import get_grid

    spec = sweep.spec
    recipes = [{**r, "model": m} for m in spec.models for r in get_grid(spec.study, spec.quick)]
    tune_config = tune.TuneConfig(
        num_samples=1, max_concurrent_trials=spec.max_concurrent,
        reuse_actors=True, scheduler=sweep.scheduler,
    )  # fmt: skip
    say(f"grid: {len(recipes)} recipes of the study's protocol")
    return tune_config, {"recipe": tune.grid_search(recipes)}


def _search(sweep: _Sweep) -> tuple[Any, None]:
    """(Tune config, no param space) of an Optuna search over the sweep's space."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from search_spaces import get_space

    from .searcher import BudgetedSearch, RungAwareOptunaSearch

    spec, objectives = sweep.spec, sweep.objectives
    rewinding = can_rewind(spec)
    space = get_space(spec.space, quick=spec.quick, rewinding=rewinding)
    if len(spec.models) > 1:
        space = functools.partial(space_with_models, space=space, models=spec.models)
    # the search starts from (a few of) the study's own protocol recipes
    points = grid_points(
        spec.study, spec.quick, spec.space, models=spec.models,
        limit=max(1, spec.num_samples // GRID_POINTS_SHARE), rewinding=rewinding,
    )  # fmt: skip
    recipe_cost = functools.partial(recipe_epochs, dense_epochs=spec.baseline_epochs)
    if spec.epoch_budget is not None:  # at most half of an epoch budget on the grid's recipes
        points = points_within(points, space, recipe_cost, spec.epoch_budget / 2)
    sampler_factory = functools.partial(
        make_sampler, spec.sampler, num_samples=spec.num_samples,
        n_objectives=len(objectives), enqueued=len(points),
    )  # fmt: skip
    # a model sampler's proposals are picked by their cost (fine-tune epochs, known from the
    # recipe) as CArBO's cost cooling does; random search stays the plain baseline, NSGA-II
    # evolves a population of its own (under an epoch budget, every sampler's proposal must fit)
    cost_aware = spec.sampler in COST_AWARE_SAMPLERS
    search = RungAwareOptunaSearch(
        space,
        metric=[o.metric for o in objectives],
        mode=[o.mode for o in objectives],
        cost=recipe_cost,
        cost_aware=cost_aware,
        sampler_factory=sampler_factory,
        budget=spec.num_samples,
        pick_seed=spec.seed,
        points_to_evaluate=points or None,
        sampler=sampler_factory(spec.seed),
    )
    first = f", the first {len(points)} from the study's grid" if points else ""
    picks = (f"; each trial picked from {search.candidates} proposals by cost "
             "(fine-tune epochs, cost cooling)" if cost_aware else "")  # fmt: skip
    say(f"Optuna search over space {spec.space!r}: {sweep.budget.limits()}, "
        f"sampler {spec.sampler}{first}{picks}")  # fmt: skip
    # Ray Tune's concurrency limit, applied here: the budget's search generator wraps it
    limited = ConcurrencyLimiter(search, spec.max_concurrent) if spec.max_concurrent else search
    tune_config = tune.TuneConfig(
        search_alg=BudgetedSearch(limited), num_samples=spec.num_samples,
        reuse_actors=True, scheduler=sweep.scheduler,
    )  # fmt: skip
    return tune_config, None


# --- fit ----------------------------------------------------------------------------------------


class _WithoutTuneRestoreHint(logging.Filter):
    """Drops Ray Tune's "Resume experiment with: Tuner.restore(...)" after an interrupt, and
    its warning that a trial stopped before its first report has no result file (a trial the
    time budget cut short): the sweep reads its results from MLflow, not from those files."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "Resume experiment with" not in message and "Failed to fetch metrics" not in message


@contextlib.contextmanager
def _tune_log_filter() -> Iterator[None]:
    """``_WithoutTuneRestoreHint`` on Ray Tune's loggers while the block runs."""
    names = ("ray.tune.tune", "ray.tune.analysis.experiment_analysis")
    logs = [logging.getLogger(name) for name in names]
    hint = _WithoutTuneRestoreHint()
    for log in logs:  # the sweep prints its own --resume command: one instruction
        log.addFilter(hint)
    try:
        yield
    finally:
        for log in logs:
            log.removeFilter(hint)


def trials_at_once(spec: SweepSpec, resources: dict[str, float]) -> int:
    """How many of the sweep's trials the cluster (``resources``: ``ray.cluster_resources()``)
    runs at once: its CPUs over ``--cpus-per-trial``, its GPUs over the GPU share where trials
    take one, at most ``--max-concurrent``; at least 1."""
    count = resources.get("CPU", 0) // spec.cpus_per_trial
    if spec.gpus_per_trial:
        count = min(count, resources.get("GPU", 0) // spec.gpus_per_trial)
    if spec.max_concurrent:
        count = min(count, spec.max_concurrent)
    return max(1, int(count))


def _pending_trials(count: int | None) -> contextlib.AbstractContextManager:
    """Let Ray Tune keep ``count`` trials waiting for an actor while the block runs, unless the
    user set ``TUNE_PENDING_TRIALS_ENV``. With a searcher Tune keeps one: when a trial ended
    before the second actor had started, that trial's actor took the waiting trial, the second
    actor was dropped, and the sweep ran one trial at a time from then on (100 trials of 0.08 s
    on 2 CPUs: every trial ended with none beside it; with 2, the trials took 7.0 s instead of
    11.9 s). A waiting trial is proposed before a running one ends, as the one Tune kept
    already was. ``None`` (no Ray to ask how many): Tune's default."""
    if count is None or TUNE_PENDING_TRIALS_ENV in os.environ:
        return contextlib.nullcontext()
    return _environment({TUNE_PENDING_TRIALS_ENV: str(count)})


def _fit(tuner: Any, interrupts: _Interrupts, spec: SweepSpec) -> None:
    """Run the trials; a SIGINT/SIGTERM meanwhile stops them and raises ``SweepInterrupted``."""
    import ray

    interrupts.in_tune = True
    at_once = trials_at_once(spec, ray.cluster_resources()) if ray.is_initialized() else None
    with _tune_log_filter(), _pending_trials(at_once):
        tuner.fit()
    interrupts.in_tune = False
    if interrupts.signum is not None:
        raise SweepInterrupted(interrupts.signum)


# --- the budget: what a resumed sweep has left, what a sweep spent --------------------------------


def resume_budget(
    uri: str, experiment_id: str, parent: Any, spec: SweepSpec
) -> tuple[float, float | None]:
    """--resume: (epochs the sweep has spent, the seconds this command may take or None). The
    epochs count against the epoch budget (the sweep's total); a time budget not given now is
    what the last command left of its own. Raises ``UsageError`` (one line) when the budget is
    spent already."""
    name = parent.data.tags.get("sweep", parent.info.run_id)
    children = child_runs(uri, experiment_id, parent.info.run_id, finished_only=False)
    spent = epochs_of_runs(children)
    if spec.epoch_budget is not None and spent >= spec.epoch_budget:
        raise UsageError(
            f"--epoch-budget {spec.epoch_budget}: sweep {name} has spent {spent:g} fine-tune "
            "epochs already; give --resume a larger --epoch-budget (the sweep's total)"
        )
    if spec.time_budget_s is None:
        return spent, None
    started_with = json.loads(parent.data.tags.get("argv", "[]"))
    given_now = spec.argv[len(started_with) :]
    if any(a == "--time-budget" or a.startswith("--time-budget=") for a in given_now):
        return spent, spec.time_budget_s  # this command's own budget
    left = parent.data.metrics.get("time_budget_left_s")
    if left is not None and left <= 0:
        raise UsageError(
            f"--time-budget: sweep {name} spent its time budget "
            f"({format_seconds(spec.time_budget_s)}); give --resume a new --time-budget"
        )
    return spent, spec.time_budget_s if left is None else float(left)


def _resume_budget(sweep: _Sweep) -> None:
    """--resume: the budget in force learns what the sweep has spent (``resume_budget``)."""
    spent, seconds = resume_budget(sweep.target.uri, sweep.experiment_id, sweep.resumed,
                                   sweep.spec)  # fmt: skip
    sweep.budget.epochs_before, sweep.budget.seconds = spent, seconds


def _settle_budget(sweep: _Sweep) -> None:
    """After Tune's loop: the child runs the deadline cut short are KILLED with tag
    ``budget_exhausted=time``, and the parent run says which budget ended the sweep."""
    budget, client = sweep.budget, sweep.client
    if budget.exhausted == "time":
        cut = end_unfinished_children(client, sweep.experiment_id, sweep.parent_id, "KILLED",
                                      {EXHAUSTED_TAG: "time"})  # fmt: skip
        children, _ = _children(sweep)
        if len(children) and "tags.trial_id" in children:
            tag = children.get(f"tags.{EXHAUSTED_TAG}")
            for i, row in children.iterrows():
                own_stop = row["status"] == "KILLED" and row["tags.trial_id"] in budget.cut_short
                if own_stop and (tag is None or pd.isna(tag[i])):
                    client.set_tag(row["run_id"], EXHAUSTED_TAG, "time")
                    cut += 1
        say(f"time budget of {format_seconds(budget.seconds or 0)} spent: {cut} running "
            f"trial(s) stopped and marked KILLED (tag {EXHAUSTED_TAG}=time)")  # fmt: skip
    if budget.exhausted:
        client.set_tag(sweep.parent_id, EXHAUSTED_TAG, budget.exhausted)


def _budget_summary(sweep: _Sweep, finish_s: float) -> str:
    """One line: the limits, what the sweep spent (epochs from its child runs, this command's
    seconds), what ended it and how long the final analysis took; the figures go on the
    parent run too (``epochs_spent``, ``seconds_spent``, ``time_budget_left_s``)."""
    budget, client, parent_id = sweep.budget, sweep.client, sweep.parent_id
    children, _ = _children(sweep)
    epochs = epochs_of_runs(children)
    elapsed = budget.elapsed()
    client.log_metric(parent_id, "epochs_spent", epochs)
    client.log_metric(parent_id, "seconds_spent", elapsed)
    if budget.seconds is not None:
        left = 0.0 if budget.exhausted == "time" else max(0.0, budget.seconds - elapsed)
        client.log_metric(parent_id, "time_budget_left_s", left)
    ended = {"epochs": "the epoch budget (no recipe left fits)",
             "time": "the time budget"}.get(budget.exhausted, "")  # fmt: skip
    spent = f"{epochs:g} fine-tune epochs"
    if budget.epochs is not None:
        spent += f" of {budget.epochs:g}"
    line = f"budget: {budget.limits()}; spent {spent} over {len(children)} child run(s)"
    line += f", {format_seconds(elapsed)} in this command"
    if budget.time_up_at is not None:
        line += (f" (trials stopped at {format_seconds(budget.time_up_at - budget.started)}, "
                 f"then the final analysis took {format_seconds(finish_s)})")  # fmt: skip
    else:
        line += f" (the final analysis took {format_seconds(finish_s)})"
    return line + (f"; ended by {ended}" if ended else "")


# --- finish: latency, analysis, artifacts, the parent run's metrics ------------------------


def _finish(sweep: _Sweep) -> SweepOutcome:
    """Re-time latency, rank the finished trials, write and attach the results, and log the
    sweep's figures on the parent run."""
    spec, client, parent_id = sweep.spec, sweep.client, sweep.parent_id
    children, finished = _retimed_children(sweep)
    runs = trial_table(finished, sweep.accuracies)
    stopped_tag = children.get("tags.early_stopped")
    stopped = trial_table(
        children[(children["status"] != "FINISHED") & stopped_tag.notna()]
        if stopped_tag is not None else children.iloc[0:0],
        sweep.accuracies,
    )  # fmt: skip
    failures = _failed_children(children)
    _log_reuse(sweep, finished)
    if sweep.scheduler is not None:
        used = sorted({m for d in sweep.scheduler.decisions for m in d.objectives})
        client.set_tag(parent_id, "early_stop_objectives", ",".join(used))
        client.log_metric(parent_id, "early_stopped_trials", len(stopped))
    out_dir = os.path.join(spec.results_dir, sweep.sweep_name)
    os.makedirs(out_dir, exist_ok=True)
    analysis, tables = _write_results(sweep, runs, stopped, out_dir)
    client.log_metric(parent_id, "finished_trials", len(runs))
    client.log_metric(parent_id, "failed_trials", len(failures))
    client.log_metric(parent_id, "sweep_seconds", time.perf_counter() - sweep.started)
    return SweepOutcome(
        parent_id, sweep.experiment_id, sweep.target.uri, all(sweep.reused), sweep.accuracies,
        analysis.table if analysis else runs, len(failures), tables, sweep.sweep_name,
        out_dir, analysis, failures,
    )  # fmt: skip


def _retimed_children(sweep: _Sweep) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every child run, the FINISHED ones), read after the driver re-timed the latency of the
    finished trials' checkpoints."""
    children, finished = _children(sweep)
    if len(finished):
        # latency timed here, one checkpoint at a time, with no trial competing
        data = sweep.data
        example = data.normalize(data.x_test[:LATENCY_BATCH])
        shapes = (data.in_channels, data.num_classes, data.image_size)
        figures = remeasure_latency(sweep.client, finished, example, *shapes, log=sweep.progress)
        children = _with_driver_latency(children, figures)
        finished = children[children["status"] == "FINISHED"]
    return children, finished


def _with_driver_latency(
    children: pd.DataFrame, figures: dict[str, dict[str, float]]
) -> pd.DataFrame:
    """``children`` with the metrics the latency pass logged (``figures``, by run id) in place
    of those read before it: what a new search would return (0.2-0.5 s for 100 runs), but
    without one. A trial that had no latency of its own gets no ``latency_ms_trial``, as in the
    store (``sweeps.latency``)."""
    children = children.copy()
    rows = children["run_id"].map(figures)
    for name in DRIVER_METRICS:
        column = f"metrics.{name}"
        new = rows.map(lambda f, n=name: f.get(n) if isinstance(f, dict) else None)
        new = pd.to_numeric(new, errors="coerce")
        if column in children:
            children[column] = new.where(new.notna(), children[column])
        elif new.notna().any():
            children[column] = new
    return children


def _children(sweep: _Sweep) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every child run of the sweep, the FINISHED ones) as ``mlflow.search_runs`` frames."""
    children = child_runs(
        sweep.target.uri, sweep.experiment_id, sweep.parent_id, finished_only=False
    )
    return children, children[children["status"] == "FINISHED"]


def _log_reuse(sweep: _Sweep, finished: pd.DataFrame) -> None:
    """Say how many trials reused an earlier run's result, and log it on the parent run."""
    reusing = reused_trials(finished)
    if reusing:
        say(f"{reusing} trial(s) proposed a recipe this sweep had already run and "
            f"reused its result, not run again (tag {REUSED_BY_TAG} on its run); "
            f"finished child runs: {len(finished)}")  # fmt: skip
    sweep.client.log_metric(sweep.parent_id, "reused_trials", reusing)


def _write_results(
    sweep: _Sweep, runs: pd.DataFrame, stopped: pd.DataFrame, out_dir: str
) -> tuple[Any, dict[str, pd.DataFrame]]:
    """The Pareto analysis and the study's tables, written to ``out_dir`` and attached to the
    parent run with the front's figures; (None, {}) when no trial finished."""
    client, parent_id, spec = sweep.client, sweep.parent_id, sweep.spec
    analysis, tables = None, {}
    if len(runs):
        # the same analysis as `python -m sweeps.pareto`: pareto.csv, .png, report.md
        analysis = analyse(runs, sweep.objectives, dense=sweep.accuracies, stopped=stopped)
        title = f"{spec.experiment} / {sweep.sweep_name}"
        for path in write_outputs(analysis, out_dir, settings=sweep.settings, title=title):
            client.log_artifact(parent_id, path)
        client.log_metric(parent_id, "pareto_hypervolume", analysis.hypervolume)
        # the reference it was measured against, so two sweeps can be compared
        for metric, ref in zip(analysis.metrics, analysis.reference, strict=True):
            client.log_metric(parent_id, f"pareto_reference.{metric}", ref)
        client.set_tag(parent_id, "pareto_reference_kinds", ",".join(analysis.reference_kinds))
        client.log_metric(parent_id, "pareto_size", int(analysis.table["pareto"].sum()))
        study = sweep.study
        make_tables = study.tables if study and study.tables else _default_tables
        tables = make_tables(runs)
    for name, frame in tables.items():
        path = os.path.join(out_dir, name)
        frame.to_csv(path, index=False)
        client.log_artifact(parent_id, path)
    return analysis, tables


def _failed_children(children: pd.DataFrame) -> list[tuple[str, str]]:
    """(run name, why) of every FAILED child run of the sweep (``children`` as
    ``mlflow.search_runs`` returns them): its ``failure`` tag and ``error`` line."""

    def tag(row: pd.Series, name: str) -> str:
        value = row.get(f"tags.{name}")
        return "" if value is None or pd.isna(value) else str(value)

    out = []
    for _, row in children[children["status"] == "FAILED"].iterrows():
        why, error = tag(row, "failure") or "error", tag(row, "error")
        out.append((tag(row, "mlflow.runName"), f"{why}: {error}" if error else why))
    return sorted(out)


def results_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The studies' report shape: accuracy, change from dense, sparsity, non-zero over total
    parameters, size in MB, one row per trial."""
    out = pd.DataFrame({
        "run_name": runs["run_name"],
        "model": runs["model"],
        "method": runs["method"],
        "target_sparsity": runs["target_sparsity"],
        "test_accuracy": runs["test_accuracy"],
        "accuracy_change": runs["accuracy_change"],
        "sparsity": runs["sparsity"],
        "nonzero_over_total": [
            f"{int(n)}/{int(t)}"
            for n, t in zip(runs["nonzero_params"], runs["total_params"], strict=True)
        ],
    })  # fmt: skip
    if "size_bytes" in runs:
        out["size_mb"] = runs["size_bytes"] / 2**20
        out["sparse_size_mb"] = runs["sparse_size_bytes"] / 2**20
    return out


def _default_tables(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {"results.csv": results_table(runs)}


def resume_argv(study: Study, argv: list[str]) -> list[str]:
    """``argv`` with the stopped sweep's own arguments in front when it holds ``--resume SWEEP``:
    a sweep continues with the settings it was started with (flags given now come later and
    win, e.g. ``--address``). Raises ``UsageError`` (one line) for an unknown or finished sweep."""
    from mlflow.tracking import MlflowClient

    args = build_parser(study).parse_args(argv)
    if args.resume is None:
        return argv
    check_empty_values(args)
    target = resolve_tracking_uri(args.tracking_uri)
    if target.is_local_file and not os.path.isfile(target.uri[len("sqlite:///") :]):
        parent = None  # no store, so no sweep (and MLflow is not asked, which would create one)
    else:
        parent = find_sweep(MlflowClient(tracking_uri=target.uri), args.resume)
    if parent is None:
        raise UsageError(
            f"--resume {args.resume!r}: no sweep of that name or parent run id in "
            f"{args.tracking_uri} (the sweep name is printed when a sweep starts)"
        )
    if parent.data.tags.get("study", study.name) != study.name:
        raise UsageError(
            f"--resume {args.resume!r} is a sweep of {parent.data.tags['study']}; run "
            f"{resume_module(parent.data.tags['study'])} --resume {args.resume}"
        )
    if parent.info.status == "FINISHED" and not parent.data.tags.get(EXHAUSTED_TAG):
        raise UsageError(f"--resume {args.resume!r}: that sweep has finished; nothing to resume")
    if "argv" not in parent.data.tags:
        raise UsageError(f"--resume {args.resume!r}: the sweep was started by a version that "
                         "did not record its settings; it cannot be resumed")  # fmt: skip
    return [*json.loads(parent.data.tags["argv"]), *argv]


def _check_resume_budget(spec: SweepSpec) -> None:
    """``resume_budget`` of the sweep ``spec.resume`` names (``UsageError`` when spent)."""
    from mlflow.tracking import MlflowClient

    target = resolve_tracking_uri(spec.tracking_uri)
    parent = find_sweep(MlflowClient(tracking_uri=target.uri), spec.resume)
    if parent is not None:
        resume_budget(target.uri, parent.info.experiment_id, parent, spec)


def main(study: Study, argv: list[str] | None = None) -> int:
    """Command-line entry point of a sweep module; returns the exit status (0 done, 1 some trial
    failed, 2 bad input, 130 after SIGINT, 143 after SIGTERM)."""
    command = argv is None  # run as `python -m sweeps...`, not called from Python code
    # a command's time budget counts from its start: the interpreter's imports are its time too
    started = time.monotonic() - (process_age_s() if command else 0.0)
    restore_failure_env()  # Ray has read it; its processes started below must not inherit it
    early = early_signal()  # a signal while the modules imported (see sweeps/__init__.py)
    if early is not None:
        print(f"interrupted by {signal.Signals(early).name} before the sweep started; nothing "
              "to resume", file=sys.stderr)  # fmt: skip
        return 128 + early
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        spec = resolve_spec(study, resume_argv(study, argv))
        if spec.resume:  # a budget already spent is refused before Ray or the data load
            _check_resume_budget(spec)
        outcome = run_sweep(spec, study, started)
    except (UsageError, TrackingError, DatasetUnavailable) as err:
        print(f"{study.command}: error: {err}", file=sys.stderr)
        return 2
    except StorageFailed as err:
        print(f"{study.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        resume = getattr(err, "resume", None)
        if resume:
            print(f"interrupted by {signal.Signals(signum).name}; continue the sweep with:\n"
                  f"  {resume}", file=sys.stderr)  # fmt: skip
        else:
            print(f"interrupted by {signal.Signals(signum).name} before the sweep started; "
                  "nothing to resume", file=sys.stderr)  # fmt: skip
        if command:
            # the run states are written and Ray is left; a signal that cut into Ray's own C++
            # (a socket read during its start) made its teardown at the interpreter's exit
            # abort (SIGABRT, status -6; 1 sweep of a 40-sweep storm): exit without it
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + signum)
        return 128 + signum
    if outcome.failures:
        print(f"{len(outcome.failures)} trial(s) failed:", file=sys.stderr)
        for name, why in outcome.failures:
            print(f"  {name}: {why}", file=sys.stderr)
    if outcome.runs.empty:
        if outcome.budget_exhausted:
            print(f"no trial finished within the {outcome.budget_exhausted} budget "
                  f"({outcome.failed_trials} failed): give a larger one (--time-budget counts "
                  "from the command's start: Ray's start and the dense baseline too)",
                  file=sys.stderr)  # fmt: skip
        else:
            print(f"no trial finished ({outcome.failed_trials} failed); see the Ray output above",
                  file=sys.stderr)  # fmt: skip
        return 1
    for name, frame in outcome.tables.items():
        print(f"\n{name}\n" + frame.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print()
    print(format_analysis(outcome.analysis))
    if outcome.tracking_uri.startswith(("http://", "https://")):
        ui = (
            f"{outcome.tracking_uri}/#/experiments/{outcome.experiment_id}/runs"
            "?workflowType=machine_learning"
        )
    else:
        ui = f"mlflow ui --backend-store-uri {spec.tracking_uri}"
    print(
        f"\nMLflow: {outcome.tracking_uri} experiment {spec.experiment!r}, parent run "
        f"{outcome.parent_run_id} (pareto.csv, pareto.png, report.md, {', '.join(outcome.tables)} "
        f"attached; also in "
        f"{outcome.results_dir}). "
        f"UI: {ui}"
    )
    late = early_signal()  # recorded after the sweep's handlers were gone: while it printed
    if late is not None:
        print(f"{signal.Signals(late).name} came after the sweep had finished; its results "
              "are complete (above, and in MLflow)", file=sys.stderr)  # fmt: skip
        return 128 + late
    return 1 if outcome.failures else 0
