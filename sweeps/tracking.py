"""MLflow tracking for sweeps: URI checks, the sweep's parent run and the trials' child runs.

Trials log through ``MlflowClient`` with explicit run and experiment ids (no fluent global state),
so a reused Ray actor or a process on another node never logs into the wrong run.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prune_core.cliutils import check_writable_file

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
ALLOWED_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql")
# the first 16 bytes of every SQLite 3 database file (https://sqlite.org/fileformat.html)
SQLITE_HEADER = b"SQLite format 3\x00"
# tables that only an MLflow store has (its schema migrations' table and the experiments)
MLFLOW_TABLES = {"alembic_version", "experiments"}
# the pip package of each DB-API module SQLAlchemy imports for a database URI (SQLAlchemy 2.1:
# postgresql:// means psycopg 3, postgresql+psycopg2:// psycopg2, mysql:// mysqlclient)
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pg8000": "pg8000",
    "asyncpg": "asyncpg", "MySQLdb": "mysqlclient", "pymysql": "PyMySQL",
    "mysql": "mysql-connector-python", "mariadb": "mariadb", "pyodbc": "pyodbc",
    "pymssql": "pymssql",
}  # fmt: skip


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

    SQLite artifacts go to an ``artifacts`` folder beside the database file; an existing file
    must be an SQLite database holding an MLflow store or nothing (``check_sqlite_file``).
    Nothing is created here, not even the database's folder: ``prepare_sqlite_store`` does that.
    Raises ``TrackingError`` with one line naming the URI and what is allowed.
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
        check_db_driver("--tracking-uri", uri, TrackingError)
    if scheme == "sqlite":
        prefix = "sqlite:///"
        if not uri.startswith(prefix) or len(uri) <= len(prefix):
            raise TrackingError(
                f"--tracking-uri {uri!r}: write sqlite:///RELATIVE.db or sqlite:////ABS.db"
            )
        db = Path(uri[len(prefix) :]).expanduser().absolute()
        # tried and left as it was: the folder is made by prepare_sqlite_store, after the
        # caller's other checks, so a refusal further on leaves no empty mlruns/ behind
        check_writable_file("--tracking-uri", db, TrackingError)
        check_sqlite_file("--tracking-uri", db, TrackingError)
        return TrackingTarget(f"sqlite:///{db}", (db.parent / "artifacts").as_uri())
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


def check_db_driver(flag: str, uri: str, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` (one line naming the pip package) unless SQLAlchemy can import the driver
    that database ``uri`` needs, which is what MLflow would fail on, with a long traceback, at its
    first call. The URI is shown without its password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(uri)
    except ArgumentError:
        raise error(
            f"{flag} {uri!r}: not a database URI (e.g. postgresql://USER:PASS@HOST/DB)"
        ) from None
    shown = url.render_as_string(hide_password=True)
    try:
        url.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise error(
            f"{flag} {shown}: SQLAlchemy knows no database driver {url.drivername!r} (known: "
            "e.g. postgresql, postgresql+psycopg2, mysql, mysql+pymysql)"
        ) from None
    except ImportError as err:
        module = (err.name or str(err)).split(".")[0]
        package = DRIVER_PACKAGES.get(module, module)
        raise error(
            f"{flag} {shown}: its database driver {module} is not installed; "
            f"pip install '{package}'"
        ) from None


def check_sqlite_file(
    flag: str, path: str | os.PathLike, error: type[Exception] = TrackingError
) -> None:
    """Raise ``error`` (one line naming ``flag``, the file and what is wrong) unless ``path``
    is absent, empty, or an SQLite database that is an MLflow store or holds no table yet.

    MLflow would otherwise fail on its first call with a long SQLAlchemy traceback ("file is
    not a database"), or quietly add its tables to somebody else's database. Only reads: the
    file is opened as it is (never created) and left unchanged.
    """
    import sqlite3

    file = Path(path).expanduser().absolute()
    if not file.is_file() or file.stat().st_size == 0:  # SQLite treats an empty file as new
        return
    try:
        with open(file, "rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except OSError as err:
        raise error(f"{flag} {file}: cannot read the file ({err.strerror or err})") from None
    if header != SQLITE_HEADER:
        raise error(
            f"{flag} {file}: not an SQLite database (it does not start with 'SQLite format 3'); "
            "give the path of an MLflow store or of a file that does not exist yet"
        )
    # mode=rw: opened as MLflow would open it, but never created if it vanished meanwhile
    conn = None
    try:
        conn = sqlite3.connect(f"{file.as_uri()}?mode=rw", uri=True, timeout=30)
        tables = {
            row[0] for row in conn.execute("select name from sqlite_master where type='table'")
        }
    except sqlite3.OperationalError:
        return  # locked or read-only: a state, not a wrong file; MLflow says what it needs
    except sqlite3.DatabaseError as err:  # "file is not a database", "disk image is malformed"
        raise error(f"{flag} {file}: a damaged SQLite database ({err})") from None
    finally:
        if conn is not None:
            conn.close()
    if tables and not tables & MLFLOW_TABLES:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise error(
            f"{flag} {file}: an SQLite database but not an MLflow store (its tables: {shown}); "
            "give the path of an MLflow store or of a file that does not exist yet"
        )


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

    Call it after every check that needs no store: this creates the folder and the database.
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
    # the one place the store's folder is made: resolve_tracking_uri only checks that it can be
    os.makedirs(os.path.dirname(db), exist_ok=True)
    # MLflow's "Creating initial MLflow database tables..." / "Updating database tables": the
    # store is this function's business, and a start that fails after it should say one line
    quiet = logging.getLogger("mlflow.store.db.utils")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with exclusive_lock(db + ".lock"):
            MlflowClient(tracking_uri=target.uri).search_experiments(max_results=1)
            with sqlite3.connect(db, timeout=60) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
    finally:
        quiet.setLevel(level)


def log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    """Log ``params`` in one batch (values as strings, as MLflow stores them)."""
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])


def log_metrics(client: Any, run_id: str, metrics: dict[str, float], step: int) -> None:
    """Log ``metrics`` at ``step`` in one batch."""
    log_records(client, run_id, {step: metrics})


def log_records(
    client: Any,
    run_id: str,
    metrics: dict[int, dict[str, float]] | None = None,
    params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    """Log metrics of several steps (``{step: {name: value}}``), params (values as strings) and
    tags in one ``log_batch`` call: one request and one store transaction instead of one per
    kind and step (each costs a trial about 5 ms on a SQLite store). Every metric gets the same
    timestamp (ms), as separate calls made within the same millisecond would."""
    import time

    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[
            Metric(k, float(v), now, step)
            for step, values in (metrics or {}).items()
            for k, v in values.items()
        ],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
    )


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


def retire_replaced_run(client: Any, run_id: str, new_run_id: str) -> None:
    """Delete child run ``run_id``, which run ``new_run_id`` replaces (a retry or ``--resume``),
    ending it first: an unfinished run (RUNNING, SCHEDULED) becomes KILLED, so nothing that
    lists deleted runs (``ViewType.ALL``, the UI's "deleted" filter) sees it still running; a
    FAILED or KILLED run keeps its status, which says why it was replaced. Tag ``replaced_by``
    names the new run. MLflow refuses to change a deleted run, hence this order."""
    run = client.get_run(run_id)
    if run.info.lifecycle_stage == "deleted":
        return  # retired already (another attempt of the same trial got there first)
    client.set_tag(run_id, "replaced_by", new_run_id)
    if run.info.status in ("RUNNING", "SCHEDULED"):
        client.set_terminated(run_id, "KILLED")
    client.delete_run(run_id)


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
