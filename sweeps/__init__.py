"""The sweep service: one module per study (``python -m sweeps.<study>``), ``python -m sweeps``
for the user's own model and data.

When Python runs one of them (``python -m sweeps...``: this package is imported first, while
``sys.argv[0]`` is still ``-m``), a SIGINT or SIGTERM that arrives while the modules below import
torch, Ray and MLflow (several seconds) is recorded here rather than raised inside an import: a
KeyboardInterrupt raised there was once swallowed by a library's import and the sweep ran on
(exit 0, 17 s later). ``sweeps.runner.main`` looks at the recorded signal first and ends the
command with 128 + its number; the handler stays until the sweep installs its own, which adopt a
signal recorded meanwhile (while the arguments are read and the data loads); a second signal in
that window ends the process at once. Imported as a library (``import sweeps``), nothing is
installed.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

_early_signal: int | None = None


def _record(signum: int, _frame: object) -> None:
    """The import window's handler: remember the first signal, end at once on the second."""
    global _early_signal
    if _early_signal is not None:
        os._exit(128 + signum)  # nothing exists yet: no store, no run, no process of ours
    _early_signal = signum


def note_signal(signum: int) -> None:
    """Remember ``signum`` as if it had come here (the sweep's handlers caught it after the
    sweep's last safe point), so that the command still ends 128 + its number."""
    global _early_signal
    if _early_signal is None:
        _early_signal = signum


def early_signal() -> int | None:
    """The first signal recorded here (or None): it came while the command imported its
    modules, read its arguments or loaded its data, before the sweep's own handlers
    (``sweeps.runner._Interrupts``) took over and adopted it."""
    return _early_signal


def _runs_a_sweep() -> bool:
    """True while ``python -m sweeps`` or ``python -m sweeps.<study>`` starts (not the
    ``sweeps.pareto`` and ``sweeps.server`` commands, which handle signals their own way)."""
    if sys.argv[:1] != ["-m"] or threading.current_thread() is not threading.main_thread():
        return False
    command = list(getattr(sys, "orig_argv", []))
    target = command[command.index("-m") + 1] if "-m" in command[:-1] else ""
    return target.startswith("sweeps") and target not in ("sweeps.pareto", "sweeps.server")


# Ray's C++ failure-signal handler, which Ray reads when it is imported (below), took SIGTERM
# from the sweep's handler while Ray shut down at the end (the command then ended -15, killed,
# instead of 143): the driver goes without it; ``sweeps.runner.main`` takes the variable out of
# the environment again before Ray starts, so Ray's own processes and the trials keep theirs.
FAILURE_HANDLER_ENV = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"
_set_failure_env = False

if _runs_a_sweep():
    for _sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_sig, _record)
    if FAILURE_HANDLER_ENV not in os.environ:
        os.environ[FAILURE_HANDLER_ENV] = "1"
        _set_failure_env = True


def restore_failure_env() -> None:
    """Take ``FAILURE_HANDLER_ENV`` out of the environment again if this module put it there."""
    global _set_failure_env
    if _set_failure_env:
        os.environ.pop(FAILURE_HANDLER_ENV, None)
        _set_failure_env = False
