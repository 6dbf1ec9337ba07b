"""MLflow tracking for sweeps: URI checks, the sweep's parent run and the trials' child runs.

Trials log through ``MlflowClient`` with explicit run and experiment ids (no fluent global state),
so a reused Ray actor or a process on another node never logs into the wrong run.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
ALLOWED_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql")


class TrackingError(ValueError):
    """The tracking URI cannot be used (not writable, unreachable, unsupported)."""


@dataclass(frozen=True)
class TrackingTarget:
    """A checked tracking URI and where new experiments keep their artifacts."""

    uri: str  # absolute: trials run in other working directories
    artifact_location: str | None  # None lets the server decide (HTTP)

    @property
    def is_local_file(self) -> bool:
        """True for a SQLite file, which only processes on this machine can reach."""
        return self.uri.startswith("sqlite:")


def resolve_tracking_uri(uri: str, timeout_s: float = 5.0) -> TrackingTarget:
    """Check that ``uri`` can be written (SQLite) or reached (HTTP) and make it absolute.

    SQLite artifacts go to an ``artifacts`` folder beside the database file. Raises
    ``TrackingError`` with one line naming the URI and what is allowed.
    """
    scheme = urllib.parse.urlparse(uri).scheme
    # postgresql+psycopg2://, mysql+pymysql://: a database server and the driver to reach it with
    database, _, driver = scheme.partition("+")
    if database not in ALLOWED_SCHEMES or (driver and database not in ("postgresql", "mysql")):
        raise TrackingError(
            f"--tracking-uri {uri!r}: scheme {scheme or '(none)'!r} is not supported; use "
            f"sqlite:///PATH.db or http://HOST:PORT (allowed schemes: {', '.join(ALLOWED_SCHEMES)})"
        )
    if database in ("postgresql", "mysql"):  # MLflow would fail on a missing driver at its 1st call
        from .server import check_db_driver

        check_db_driver("--tracking-uri", uri, TrackingError)
    if scheme == "sqlite":
        prefix = "sqlite:///"
        if not uri.startswith(prefix) or len(uri) <= len(prefix):
            raise TrackingError(
                f"--tracking-uri {uri!r}: write sqlite:///RELATIVE.db or sqlite:////ABS.db"
            )
        db = Path(uri[len(prefix) :]).expanduser().absolute()
        folder = db.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            if db.exists():
                with open(db, "ab"):
                    pass
        except OSError as err:
            raise TrackingError(
                f"--tracking-uri {uri!r} cannot be written ({err.strerror or err}: {folder}); "
                "pass a sqlite:/// path in a writable folder"
            ) from None
        return TrackingTarget(f"sqlite:///{db}", (folder / "artifacts").as_uri())
    if scheme in ("http", "https"):
        # /health is exempt from MLflow's Host-header check and an API call is not: a server that
        # refuses this host name (403) is caught here instead of failing every trial
        probe = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
        try:
            with urllib.request.urlopen(probe, timeout=timeout_s) as resp:
                resp.read(64)
        except urllib.error.HTTPError as err:
            if err.code == 403:
                host = urllib.parse.urlparse(uri).netloc
                raise TrackingError(
                    f"--tracking-uri {uri!r}: the server refuses requests for {host} (HTTP 403); "
                    f"start it with --allowed-hosts '{host}' (python -m sweeps.server adds "
                    "this machine's names when it listens on 0.0.0.0)"
                ) from None
            raise TrackingError(
                f"--tracking-uri {uri!r} answered HTTP {err.code}; is it an MLflow server?"
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingError(
                f"--tracking-uri {uri!r} is not reachable ({reason}); start it with "
                "`mlflow server` or pass a sqlite:/// path"
            ) from None
        return TrackingTarget(uri.rstrip("/"), None)
    return TrackingTarget(uri, None)


def get_or_create_experiment(client: Any, name: str, artifact_location: str | None) -> str:
    """Id of experiment ``name``, created (with ``artifact_location``) if it does not exist."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # another sweep created it a moment ago: use that one
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def prepare_sqlite_store(target: TrackingTarget) -> None:
    """Create the SQLite store's tables once, under a lock, and switch it to write-ahead logging.

    Two sweeps that start together on a new store would otherwise both run MLflow's schema
    migrations at once; WAL lets readers (the UI, ``sweeps.pareto``, other sweeps' searches) go on
    while one process writes, so concurrent sweeps do not fail with "database is locked".
    """
    import sqlite3

    from mlflow.tracking import MlflowClient

    from prune_core.baseline import exclusive_lock

    if not target.is_local_file:
        return
    db = target.uri[len("sqlite:///") :]
    with exclusive_lock(db + ".lock"):
        MlflowClient(tracking_uri=target.uri).search_experiments(max_results=1)
        with sqlite3.connect(db, timeout=60) as conn:
            conn.execute("PRAGMA journal_mode=WAL")


def log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    """Log ``params`` in one batch (values as strings, as MLflow stores them)."""
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])


def log_metrics(client: Any, run_id: str, metrics: dict[str, float], step: int) -> None:
    """Log ``metrics`` at ``step`` in one batch."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def child_runs(
    tracking_uri: str, experiment_id: str, parent_run_id: str, finished_only: bool = True
) -> Any:
    """The FINISHED (or, with ``finished_only=False``, all live) child runs of
    ``parent_run_id`` as a DataFrame (``mlflow.search_runs``)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    status = " and attributes.status = 'FINISHED'" if finished_only else ""
    return mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'{status}",
        max_results=10000,
    )


def tagged_child_runs(
    client: Any, experiment_id: str, parent_run_id: str, tag: str, value: str
) -> list:
    """The live (not deleted) child runs of ``parent_run_id`` whose tag ``tag`` is ``value``
    (e.g. ``trial_id``, the Ray Tune trial; ``config_hash``, the recipe)."""
    return client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.{tag} = '{value}'",
        max_results=1000,
    )


def sweep_child_runs(client: Any, experiment_id: str, parent_run_id: str) -> list:
    """Every live child run of the sweep ``parent_run_id``, whatever its status."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def end_unfinished_children(
    client: Any, experiment_id: str, parent_run_id: str, status: str, tags: dict[str, str]
) -> int:
    """Set every RUNNING child run of the sweep to ``status`` (e.g. KILLED) with ``tags``, so no
    run is left RUNNING after an interrupt or a crash; returns how many were changed."""
    changed = 0
    for run in sweep_child_runs(client, experiment_id, parent_run_id):
        if run.info.status == "RUNNING":
            for key, value in tags.items():
                client.set_tag(run.info.run_id, key, value)
            client.set_terminated(run.info.run_id, status)
            changed += 1
    return changed


def find_sweep(client: Any, key: str) -> Any | None:
    """The parent run of the sweep named ``key`` (its ``sweep`` tag) or with run id ``key``,
    searched in every experiment of the store; None if there is none."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(key)
    except MlflowException:
        run = None
    if run is not None and "mlflow.parentRunId" not in run.data.tags:
        return run
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    found = client.search_runs(experiments, filter_string=f"tags.sweep = '{key}'", max_results=1000)
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]  # not its trials
    return parents[0] if parents else None


# ---------------------------------------------------------------------------------------------
# Reading a finished sweep back (python -m sweeps.pareto, notebooks)


def _present(frame: Any, prefix: str) -> list[str]:
    """Names under ``prefix`` (``params.``, ``metrics.``) that some row of ``frame`` holds."""
    return sorted(
        c[len(prefix) :] for c in frame.columns if c.startswith(prefix) and frame[c].notna().any()
    )


@dataclass
class Loaded:
    """Child and parent runs of one or more sweeps, as ``mlflow.search_runs`` frames."""

    finished: Any  # the FINISHED child runs
    parents: Any  # the analysed sweeps' parent runs
    not_finished: int  # child runs that neither finished nor were stopped early
    experiment_id: str
    metrics: list[str]  # metric names some finished run logged
    params: list[str]  # param names some finished run logged
    stopped: Any = None  # child runs that early stopping ended (tag early_stopped, or KILLED)


def load_runs(tracking_uri: str, experiment: str, sweeps: Any = None) -> Loaded:
    """The FINISHED child runs of ``sweeps`` (parent run ids; default: every sweep of
    ``experiment``), the early-stopped ones, and their parent runs, as ``mlflow.search_runs``
    returns them; ``sweeps.analysis.trial_frame`` turns them into the runs table.

    Raises ``TrackingError`` (one line) for an unknown experiment or sweep id.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    # the runs table's own helper (frame[name], or None where MLflow left the column out); here,
    # not at the top, so importing tracking stays free of numpy and pandas
    from .analysis import column

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        names = sorted(e.name for e in client.search_experiments())
        raise TrackingError(
            f"--experiment {experiment!r} is not in {tracking_uri}; experiments there: "
            f"{', '.join(names) or '(none)'}"
        )
    mlflow.set_tracking_uri(tracking_uri)
    everything = mlflow.search_runs(experiment_ids=[exp.experiment_id], max_results=100_000)
    parent_of = column(everything, "tags.mlflow.parentRunId")
    parents = everything[parent_of.isna()]
    children = everything[parent_of.notna()]
    if sweeps:
        for run_id in sweeps:
            if run_id not in set(parents["run_id"]):
                known = [
                    f"{r} ({n})"
                    for r, n in zip(
                        parents["run_id"], column(parents, "tags.mlflow.runName"), strict=True
                    )
                ]
                raise TrackingError(
                    f"--sweep {run_id!r} is not a sweep (parent run) of experiment "
                    f"{experiment!r}; sweeps there: {', '.join(known) or '(none)'}"
                )
        children = children[children["tags.mlflow.parentRunId"].isin(list(sweeps))]
    finished = children[children["status"] == "FINISHED"]
    stopped_tag = column(children, "tags.early_stopped")
    stopped = children[(children["status"] != "FINISHED") & stopped_tag.notna()]
    if sweeps is None:
        parents = parents[parents["run_id"].isin(set(finished["tags.mlflow.parentRunId"]))]
    else:
        parents = parents[parents["run_id"].isin(list(sweeps))]
    return Loaded(
        finished=finished,
        parents=parents,
        not_finished=len(children) - len(finished) - len(stopped),
        experiment_id=exp.experiment_id,
        metrics=_present(finished, "metrics."),
        params=_present(finished, "params."),
        stopped=stopped,
    )
