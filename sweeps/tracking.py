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
    if scheme not in ALLOWED_SCHEMES:
        raise TrackingError(
            f"--tracking-uri {uri!r}: scheme {scheme or '(none)'!r} is not supported; use "
            f"sqlite:///PATH.db or http://HOST:PORT (allowed schemes: {', '.join(ALLOWED_SCHEMES)})"
        )
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
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


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


def child_runs(tracking_uri: str, experiment_id: str, parent_run_id: str) -> Any:
    """The FINISHED child runs of ``parent_run_id`` as a DataFrame (``mlflow.search_runs``)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=(
            f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'FINISHED'"
        ),
        max_results=10000,
    )
