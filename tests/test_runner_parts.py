"""The driver's parts that need no Ray run: the trial-end callback pickles as Ray Tune saves it
(by reference, with no client), the one ``--address`` parser, and the functions of the sweep's
driver modules stay short enough to read (issue 22: ``run_sweep`` as named phases)."""

from __future__ import annotations

import ast
import os
import pickle

import pytest
from ray import cloudpickle

from prune_core.config import DataConfig, TrainConfig
from sweeps.callbacks import TrialEndCallback, error_file_line
from sweeps.cli import UsageError, parse_address
from sweeps.trial import TrialContext

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The longest a function of these modules may be (lines, nested functions included).
MAX_LINES = {"runner": 80, "latency": 80, "cli": 80, "searcher": 80, "callbacks": 80}
RUN_SWEEP_MAX_LINES = 60


def _context() -> TrialContext:
    return TrialContext(
        data=DataConfig(), train=TrainConfig(), model="cnn", seed=0, cpus_per_trial=1.0,
        gpus_per_trial=0.0, tracking_uri="sqlite:////tmp/none.db", experiment_id="1",
        parent_run_id="p", sweep_name="s",
    )  # fmt: skip


def test_trial_end_callback_pickles_by_reference_without_a_client():
    callback = TrialEndCallback(_context())
    # Ray Tune pickles it with the experiment state (cloudpickle); --resume unpickles it
    blob = cloudpickle.dumps(callback)
    assert b"sweeps.callbacks" in blob and b"TrialEndCallback" in blob  # the class by name
    restored = pickle.loads(blob)
    assert type(restored) is TrialEndCallback and restored.ctx == callback.ctx
    assert set(vars(restored)) == {"ctx"}  # no client or other state to go stale


def test_error_file_line(tmp_path):
    path = tmp_path / "error.txt"
    path.write_text("Traceback (most recent call last):\n  ...\nValueError: bad recipe\n\n")
    assert error_file_line(str(path)) == "ValueError: bad recipe"
    assert error_file_line(str(tmp_path / "missing.txt")) == ""
    assert error_file_line(None) == ""


def test_old_experiment_states_find_the_callbacks_helper():
    # a callback pickled (by value) before it moved to sweeps.callbacks names runner._last_line
    import sweeps.runner

    assert sweeps.runner._last_line is error_file_line


@pytest.mark.parametrize(
    "address, expected",
    [
        (None, None),
        ("auto", None),
        ("ray://head:10001", None),
        ("10.0.0.5:6379", ("10.0.0.5", 6379)),
        ("head.example:1", ("head.example", 1)),
    ],
)
def test_parse_address(address, expected):
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["nohost", ":6379", "h:99999", "h:0", "h:port"])
def test_parse_address_refuses(address):
    with pytest.raises(UsageError, match="HOST:PORT with a port 1..65535"):
        parse_address(address)


def _function_lengths(module: str) -> dict[str, int]:
    path = os.path.join(REPO, "sweeps", f"{module}.py")
    tree = ast.parse(open(path).read(), filename=path)
    return {
        f"{node.name}:{node.lineno}": node.end_lineno - node.lineno + 1
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


@pytest.mark.parametrize("module", sorted(MAX_LINES))
def test_driver_functions_stay_short(module):
    long = {f: n for f, n in _function_lengths(module).items() if n > MAX_LINES[module]}
    assert not long, f"sweeps/{module}.py: functions over {MAX_LINES[module]} lines: {long}"


def test_run_sweep_reads_as_named_phases():
    lengths = _function_lengths("runner")
    (run_sweep,) = [n for f, n in lengths.items() if f.startswith("run_sweep:")]
    assert run_sweep <= RUN_SWEEP_MAX_LINES


class _EndedTrial:
    """What ``TrialEndCallback.on_trial_complete`` reads of a Ray Tune trial."""

    def __init__(self, last_result):
        self.trial_id, self.last_result = "t1", last_result


@pytest.mark.parametrize(
    ("last_result", "searches"),
    [
        ({"rung": 3, "last_rung": 3, "step": 3}, False),  # the finished recipe's final report
        ({"rung": 2, "last_rung": 2, "replayed": 1}, False),  # a FINISHED run's result replayed
        ({"rung": 0, "diverged": 1}, False),  # FAILED (diverged) before it reported
        ({"rung": 1, "last_rung": 3, "step": 1}, True),  # stopped early: its run may be RUNNING
        (None, True),  # ended before any report
    ],
)
def test_trial_end_callback_searches_only_for_runs_that_may_be_running(
    monkeypatch, last_result, searches
):
    # a trial's final report comes after it ended its child run, so the callback's search for
    # RUNNING runs (a store query per trial in the driver's loop) is skipped; any other end
    # may leave a RUNNING run, which the callback must find and end
    asked = []
    monkeypatch.setattr(
        TrialEndCallback, "_runs", lambda self, client, trial: asked.append(1) or []
    )
    monkeypatch.setattr(TrialEndCallback, "_client", lambda self: object())
    TrialEndCallback(_context()).on_trial_complete(0, [], _EndedTrial(last_result))
    assert bool(asked) is searches


class _Trial:
    """What ``TrialProgress`` reads of a Ray Tune trial."""

    def __init__(self, config, last_result=None, status="TERMINATED", error_file=None):
        self.trial_id, self.config, self.last_result = "t1", config, last_result
        self.status, self.error_file = status, error_file


def test_trial_progress_says_one_line_per_trial(capsys, tmp_path):
    from sweeps.callbacks import TrialProgress

    recipe = {"method": "global_magnitude", "target_sparsity": 0.9, "schedule": "oneshot",
              "finetune_epochs": 2}  # fmt: skip
    progress = TrialProgress(_context(), total=3)
    # Ray Tune calls the callback while the ending trial still shows RUNNING
    result = {"rung": 2, "last_rung": 2, "test_accuracy": 0.98765, "sparsity": 0.9001,
              "time_total_s": 1.234}  # fmt: skip
    done = _Trial(recipe, result, status="RUNNING")
    running = _Trial(recipe, status="RUNNING")
    progress.on_trial_complete(0, [done, running], done)
    stopped = _Trial(recipe, {"rung": 1, "last_rung": 2, "test_accuracy": 0.5})
    done.status = "TERMINATED"
    progress.on_trial_complete(0, [done, stopped], stopped)
    error = tmp_path / "error.txt"
    error.write_text("Traceback (most recent call last):\n  ...\nValueError: bad lr\n")
    failed = _Trial(recipe, status="ERROR", error_file=str(error))
    progress.on_trial_error(0, [done, stopped, failed], failed)
    assert capsys.readouterr().err.splitlines() == [
        "[sweep] trial 1/3 cnn_prune_90perc_oneshot2: finished, test_accuracy 0.9877, "
        "sparsity 0.9001, 1.2 s; 1 running",
        "[sweep] trial 2/3 cnn_prune_90perc_oneshot2: stopped at rung 1, test_accuracy 0.5; "
        "0 running",
        "[sweep] trial 3/3 cnn_prune_90perc_oneshot2: FAILED: ValueError: bad lr; 0 running",
    ]


@pytest.mark.parametrize(
    ("cpus", "gpus", "cpus_per_trial", "gpus_per_trial", "max_concurrent", "expected"),
    [
        (2, 0, 1.0, 0.0, 0, 2),  # the 2-core VM: two trials of one CPU
        (16, 0, 3.0, 0.0, 0, 5),  # 16 // 3
        (16, 0, 1.0, 0.0, 4, 4),  # --max-concurrent caps it
        (16, 2, 1.0, 0.5, 0, 4),  # two GPUs, half a GPU each: the GPUs decide
        (16, 0, 32.0, 0.0, 0, 1),  # never below one
    ],
)
def test_trials_at_once(cpus, gpus, cpus_per_trial, gpus_per_trial, max_concurrent, expected):
    from types import SimpleNamespace

    from sweeps.runner import trials_at_once

    spec = SimpleNamespace(
        cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, max_concurrent=max_concurrent
    )
    assert trials_at_once(spec, {"CPU": cpus, "GPU": gpus}) == expected


def test_tune_keeps_as_many_trials_pending_as_run_at_once(monkeypatch):
    """Ray Tune's own reading of its setting (``_get_max_pending_trials``) for a searcher: 1 by
    default, the sweep's count inside ``_pending_trials``, and a user's own setting left alone."""
    from ray.tune.execution.tune_controller import _get_max_pending_trials
    from ray.tune.search import Searcher, SearchGenerator

    from sweeps.runner import TUNE_PENDING_TRIALS_ENV, _pending_trials

    monkeypatch.delenv(TUNE_PENDING_TRIALS_ENV, raising=False)
    search = SearchGenerator(Searcher(metric="a", mode="max"))
    assert _get_max_pending_trials(search) == 1
    with _pending_trials(2):
        assert _get_max_pending_trials(search) == 2
    assert TUNE_PENDING_TRIALS_ENV not in os.environ
    monkeypatch.setenv(TUNE_PENDING_TRIALS_ENV, "7")
    with _pending_trials(2):
        assert _get_max_pending_trials(search) == 7
    assert os.environ[TUNE_PENDING_TRIALS_ENV] == "7"
