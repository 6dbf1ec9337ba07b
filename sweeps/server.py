"""A local MLflow tracking server for sweeps on a Ray cluster.

    python -m sweeps.server                      # 127.0.0.1:5000, SQLite under mlruns/server/
    python -m sweeps.server --host 0.0.0.0       # reachable from the other nodes of a cluster

Trials on other nodes cannot write to a SQLite file on the head, so a multi-node sweep logs over
HTTP to this server (``--tracking-uri http://HEAD:5000``). Artifacts (checkpoints, tables) are
uploaded through the server too (``mlflow server --serve-artifacts``, the default in MLflow
3.x, passed explicitly here), so the nodes need no shared file system for tracking.

The server runs with one worker and without MLflow's job runner: ``mlflow server``'s defaults
(4 uvicorn workers plus the Huey job consumers, 15 processes) took 2.4-2.8 GB of resident memory
here, this about 0.5 GB (2 processes), and a sweep's trials make a few requests per prune step,
which one worker serves easily.

``start_server`` is the same thing as a Python helper (used by the tests): it starts
``mlflow server`` in its own process group, waits for ``/health`` and returns a ``ServerHandle``
whose ``stop()`` ends the whole group.

The server has no login: whoever reaches its port can read, write and delete runs. So it listens
on 127.0.0.1 unless told otherwise, an empty ``--host`` is refused rather than read as "every
interface", and 0.0.0.0 or :: (typed as such) start it with a warning. Its processes never
outlive the command, even a SIGKILLed one: the ``mlflow server`` process watches a pipe from its
starter and kills its own process group (uvicorn included) when the pipe closes.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from prune_core.cliutils import OneLineArgumentParser, check_writable_dir, check_writable_file

# the store checks are shared with the sweeps' --tracking-uri (re-exported: check_db_driver was
# defined here before)
from .tracking import check_db_driver, check_sqlite_file  # noqa: F401

DEFAULT_BACKEND_STORE_URI = "sqlite:///mlruns/server/mlflow.db"
DEFAULT_ARTIFACTS_DESTINATION = "mlruns/server/artifacts"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
DEFAULT_WORKERS = 1
# SQLAlchemy dialects (``postgresql+psycopg2`` counts as postgresql) that mlflow server accepts;
# the file store is refused by MLflow 3.x unless MLFLOW_ALLOW_FILE_STORE=true, so not offered
BACKEND_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
# interfaces that mean "every interface", accepted only written exactly so (the server has no
# login); the URI to print then needs this machine's address
ANY_INTERFACE = ("0.0.0.0", "::")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def max_workers() -> int:
    """The most ``--workers`` allowed: one per CPU this process may run on. Each uvicorn worker
    is a process of about 0.4 GB, and more workers than CPUs serve no more requests; without a
    bound, ``--workers 100000`` forked processes until the machine stalled."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS)
        return max(1, os.cpu_count() or 1)


# What the ``mlflow server`` process runs (``python -c``, so it needs nothing on sys.path): a
# thread that waits for end-of-file on the pipe whose only writer is the process that started
# it, then SIGKILLs its own process group (itself, uvicorn and its workers). The writer's end
# closes when that process exits in any way, SIGKILL included, which no signal handler sees.
# (PR_SET_PDEATHSIG would fire when the *thread* that started the server ends, and would reach
# only this process, not uvicorn.) SIGINT is reset to its default here: a starter that ignored
# it (a background job of a script) would pass SIG_IGN on to uvicorn through exec.
GUARD = """\
import os, runpy, signal, sys, threading
fd = int(sys.argv.pop(1))
def watch():
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        pass
    os.killpg(0, signal.SIGKILL)
threading.Thread(target=watch, name="starter-watch", daemon=True).start()
signal.signal(signal.SIGINT, signal.default_int_handler)
runpy.run_module("mlflow", run_name="__main__", alter_sys=True)
"""


def guarded_command(cmd: list[str], watch_fd: int) -> list[str]:
    """``cmd`` (a ``python -m mlflow ...`` command line, ``server_command``) run under ``GUARD``,
    which ends the server's process group once ``watch_fd`` (a pipe's read end) reads EOF."""
    if cmd[1:3] != ["-m", "mlflow"]:
        raise ValueError(f"not a python -m mlflow command: {cmd[:3]}")
    # GUARD pops the fd; runpy then puts mlflow's path in sys.argv[0], and click reads the rest
    return [cmd[0], "-c", GUARD, str(watch_fd), *cmd[3:]]


class ServerError(RuntimeError):
    """The tracking server cannot be started; the message is one line for the user."""


@dataclass
class ServerHandle:
    """A running ``mlflow server``: its URI, the pid of its process-group leader, and ``stop()``.

    Use it as a context manager so the server is stopped even when the body raises.
    """

    uri: str  # what to pass to --tracking-uri
    pid: int  # the mlflow CLI process; also the id of the server's process group and session
    backend_store_uri: str
    artifacts_destination: str
    log_path: str | None  # where the server's output goes (None: this process's stdout/stderr)
    process: subprocess.Popen = field(repr=False)
    # the write end of the pipe the server watches: it stops the server when this closes
    watch_fd: int | None = field(default=None, repr=False)

    @property
    def ui_url(self) -> str:
        """The MLflow UI (the same address as the API)."""
        return self.uri + "/"

    def alive(self) -> bool:
        """True while the server's main process runs."""
        return self.process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        """End every process of the server. SIGTERM goes to the ``mlflow server`` process, which
        forwards it to uvicorn for a clean shutdown (the whole group gets it if that process is
        gone already); whatever of the group is left after ``timeout_s`` gets SIGKILL.
        Idempotent."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        else:
            _signal_group(self.pid, signal.SIGTERM)
        if not _wait_group_gone(self.pid, self.process, timeout_s):
            _signal_group(self.pid, signal.SIGKILL)
            _wait_group_gone(self.pid, self.process, 5.0)
        try:  # reap the leader: a zombie whose parent exits may never be reaped in a container
            self.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass
        if self.watch_fd is not None:  # closed last: its EOF would SIGKILL a server still going
            os.close(self.watch_fd)
            self.watch_fd = None

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def group_members(pgid: int) -> list[int]:
    """The running processes of process group ``pgid`` (zombies excluded: they hold no
    resources and only wait for their parent to reap them)."""
    if not os.path.isdir("/proc"):  # no procfs (macOS): the kernel only says whether any is left
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                state, _ppid, group = fh.read().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # exited meanwhile
        if int(group) == pgid and state != "Z":
            members.append(int(entry))
    return members


def _wait_group_gone(pgid: int, leader: subprocess.Popen, timeout_s: float) -> bool:
    """Wait until no process of group ``pgid`` runs; the leader is reaped on the way (it is this
    process's child, so it would stay a zombie otherwise). True if the group is gone."""
    deadline = time.monotonic() + timeout_s
    while True:
        leader.poll()
        if not group_members(pgid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_port_free(host: str, port: int) -> None:
    """Fail in one line now rather than after the server's ~10 s of imports: ``--port`` when
    something listens there, ``--host`` when it is no address of this machine (port 0: only
    the address is checked)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ServerError(
                    f"--port {port}: cannot listen on {host}:{port} ({err.strerror or err}); "
                    "another server (MLflow?) may use it: pass another --port, or --port 0 for "
                    "a free one"
                ) from None
            raise ServerError(
                f"--host {host}: cannot listen there ({err.strerror or err}); give an address of "
                "this machine, 127.0.0.1, or 0.0.0.0 for every interface"
            ) from None


def _check_host(host: str) -> None:
    """``host`` must resolve to an address (``socket.getaddrinfo``), e.g. not 999.1.1.1; every
    interface only when written 0.0.0.0 or ::, since the server has no login. An empty host
    (which uvicorn reads as every interface) and other spellings of the wildcard (``0``,
    ``::0``, a name that resolves to 0.0.0.0) are refused."""
    if host in ANY_INTERFACE:
        return
    if not host.strip():
        raise ServerError(
            f"--host {host!r}: give the address to listen on: 127.0.0.1 (this machine only), "
            "an address of this machine, or 0.0.0.0 for every interface (no login: anyone "
            "who reaches the port can read and write runs)"
        )
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as err:
        reason = getattr(err, "strerror", None) or err
        raise ServerError(
            f"--host {host!r} does not resolve ({reason}); give an address of this machine, "
            "127.0.0.1, or 0.0.0.0 for every interface"
        ) from None
    for info in infos:
        address = str(info[4][0]).split("%")[0]  # an IPv6 scope (fe80::1%eth0) is no address
        if ipaddress.ip_address(address).is_unspecified:
            wildcard = "::" if ":" in address else "0.0.0.0"
            raise ServerError(
                f"--host {host!r} means every interface ({address}) and the server has no "
                f"login; write --host {wildcard} if that is what you want"
            )


def advertised_host(host: str) -> str:
    """The address other machines reach this server at: ``host`` itself, or for 0.0.0.0 the
    address of the interface that carries outgoing traffic (no packet is sent)."""
    if host not in ANY_INTERFACE:
        return host
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # UDP connect only picks a route
            return s.getsockname()[0]
        except OSError:
            return socket.gethostname()


def default_allowed_hosts(host: str) -> str | None:
    """The ``--allowed-hosts`` list for a server bound to ``host``, or None for MLflow's default.

    MLflow checks the Host header of every request (DNS-rebinding protection) and by default
    accepts only localhost and private IPs: on a server bound to all interfaces, a trial that
    writes to ``http://head-node:5000`` would get 403 on every call while ``/health`` (which is
    exempt) still answers. So the machine's own names and address are added to the defaults.
    """
    if host in LOOPBACK:
        return None
    from mlflow.server.security_utils import get_default_allowed_hosts

    names = [*get_default_allowed_hosts()]
    for name in (socket.gethostname(), socket.getfqdn(), advertised_host(host), host):
        if name and name not in ANY_INTERFACE and name not in names:
            names += [name, f"{name}:*"]
    return ",".join(names)


def check_settings(
    backend_store_uri: str,
    artifacts_destination: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    workers: int = DEFAULT_WORKERS,
    timeout_s: float = 120.0,
) -> None:
    """Every check ``start_server`` makes before it creates a folder or starts a process: numbers
    in range, the host resolves and is this machine's, the port free, the stores writable (local
    paths, tried and left as they were) or their database driver installed. Raises
    ``ServerError`` with one line naming the flag."""
    if not 0 <= port <= 65535:
        raise ServerError(f"--port {port}: must be 0..65535 (0: any free port)")
    if not 1 <= workers <= max_workers():
        raise ServerError(
            f"--workers {workers}: must be 1..{max_workers()} (at most one per CPU this process "
            "may use; each worker is a process of about 0.4 GB)"
        )
    if not (timeout_s > 0 and math.isfinite(timeout_s)):
        raise ServerError(f"--timeout {timeout_s:g}: must be a number of seconds > 0")
    _check_host(host)
    scheme = _store_scheme(backend_store_uri)
    if scheme == "sqlite":
        db = _sqlite_path(backend_store_uri)
        check_writable_file("--backend-store-uri", db, ServerError)
        check_sqlite_file("--backend-store-uri", db, ServerError)
    else:
        check_db_driver("--backend-store-uri", backend_store_uri, ServerError)
    if "://" not in artifacts_destination:  # s3://, gs://, ...: the server's to check
        check_writable_dir("--artifacts-destination", artifacts_destination, ServerError)
    _check_port_free(host if host not in ANY_INTERFACE else "0.0.0.0", port)


def _store_scheme(backend_store_uri: str) -> str:
    """The database of ``--backend-store-uri`` (``postgresql+psycopg2`` counts as postgresql)."""
    scheme = urllib.parse.urlparse(backend_store_uri).scheme.split("+")[0]
    if scheme not in BACKEND_SCHEMES:
        raise ServerError(
            f"--backend-store-uri {backend_store_uri!r}: use a database URI, e.g. "
            "sqlite:///mlruns/server/mlflow.db or postgresql://USER:PASS@HOST/DB "
            f"(schemes: {', '.join(BACKEND_SCHEMES)})"
        )
    return scheme


def _sqlite_path(backend_store_uri: str) -> Path:
    """The absolute database file of a ``sqlite:///`` store URI."""
    prefix = "sqlite:///"
    path = backend_store_uri[len(prefix) :]
    if not backend_store_uri.startswith(prefix) or not path or path == ":memory:":
        raise ServerError(
            f"--backend-store-uri {backend_store_uri!r}: write sqlite:///RELATIVE.db or "
            "sqlite:////ABSOLUTE.db (an in-memory database would lose every run)"
        )
    return Path(path).expanduser().absolute()


def resolve_store(backend_store_uri: str, artifacts_destination: str) -> tuple[str, str]:
    """Check the backend store URI, make local paths absolute (the printed URIs then say where
    the data is, whatever the server's working directory) and create their folders."""
    if _store_scheme(backend_store_uri) == "sqlite":
        db = _sqlite_path(backend_store_uri)
        db.parent.mkdir(parents=True, exist_ok=True)
        backend_store_uri = f"sqlite:///{db}"
    if "://" not in artifacts_destination:  # a local folder (s3://, gs://, ... pass through)
        folder = Path(artifacts_destination).expanduser().absolute()
        folder.mkdir(parents=True, exist_ok=True)
        artifacts_destination = str(folder)
    return backend_store_uri, artifacts_destination


def server_command(
    backend_store_uri: str,
    artifacts_destination: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    workers: int = DEFAULT_WORKERS,
    allowed_hosts: str | None = None,
) -> list[str]:
    """The ``mlflow server`` command line (this interpreter's MLflow, whatever PATH says);
    ``allowed_hosts`` None means ``default_allowed_hosts(host)``."""
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri,
        # said explicitly: without a proxy, trials on other nodes would write artifacts to
        # local paths that only exist on their own node
        "--serve-artifacts", "--artifacts-destination", artifacts_destination,
        "--host", host, "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip
    hosts = allowed_hosts if allowed_hosts is not None else default_allowed_hosts(host)
    if hosts is not None:
        cmd += ["--allowed-hosts", hosts]
    return cmd


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: without MLflow's job runner (about ten Huey consumer processes,
    1.2-1.6 GB here, for GenAI evaluation jobs that sweeps never submit), unless the caller set
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION."""
    env = dict(os.environ if base is None else base)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def wait_healthy(uri: str, process: subprocess.Popen, timeout_s: float) -> None:
    """Return once ``uri``/health answers; raise ``ServerError`` if the server exits first or
    does not answer within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise ServerError(f"mlflow server exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2.0) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise ServerError(f"mlflow server did not answer {uri}/health within {timeout_s:g} s")
        time.sleep(0.25)


def _log_tail(path: str | None, lines: int = 5) -> str:
    if path is None:
        return ""
    try:
        with open(path, errors="replace") as fh:
            tail = [line.strip() for line in fh.readlines()[-lines:] if line.strip()]
    except OSError:
        return ""
    return (" | last lines of " + path + ": " + " / ".join(tail)) if tail else ""


def start_server(
    store_dir: str | os.PathLike | None = None,
    host: str = DEFAULT_HOST,
    port: int = 0,
    workers: int = DEFAULT_WORKERS,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    log_path: str | os.PathLike | None = None,
    timeout_s: float = 120.0,
    allowed_hosts: str | None = None,
) -> ServerHandle:
    """Start ``mlflow server`` in its own process group and wait until it answers.

    ``store_dir`` holds ``mlflow.db``, ``artifacts/`` and ``server.log`` unless
    ``backend_store_uri``/``artifacts_destination``/``log_path`` say otherwise (without
    ``store_dir``: the defaults under ``mlruns/server``, output to this process's streams).
    ``port=0`` picks a free port; ``allowed_hosts`` replaces ``default_allowed_hosts(host)``
    (MLflow's Host-header check). Raises ``ServerError`` (and leaves no process behind) if the
    server does not come up. The server also ends when this process does, however it ends
    (``GUARD``): a process forked from this one (multiprocessing's "fork") keeps it up until
    that process ends too.
    """
    if store_dir is not None:
        store = Path(store_dir).absolute()
        backend_store_uri = backend_store_uri or f"sqlite:///{store / 'mlflow.db'}"
        artifacts_destination = artifacts_destination or str(store / "artifacts")
        log_path = log_path or store / "server.log"
    backend_store_uri = backend_store_uri or DEFAULT_BACKEND_STORE_URI
    artifacts_destination = artifacts_destination or DEFAULT_ARTIFACTS_DESTINATION
    check_settings(backend_store_uri, artifacts_destination, host, port, workers, timeout_s)
    backend, artifacts = resolve_store(backend_store_uri, artifacts_destination)
    if port == 0:
        port = free_port(host if host not in ANY_INTERFACE else "0.0.0.0")
    connect_host = advertised_host(host)
    uri = f"http://{f'[{connect_host}]' if ':' in connect_host else connect_host}:{port}"
    log: IO[Any] | None = None
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # the child keeps its own copy; ours is closed below
    # os.pipe's ends are not inherited: only the server gets the read end (pass_fds), and the
    # write end stays in this process alone, so it closes when this process dies however it dies
    watch_read, watch_write = os.pipe()
    try:
        process = subprocess.Popen(
            guarded_command(
                server_command(backend, artifacts, host, port, workers, allowed_hosts), watch_read
            ),
            env=server_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            pass_fds=(watch_read,),
            # own session and process group: Ctrl-C in the terminal reaches only this process,
            # which then stops the whole group (uvicorn and anything MLflow forks) itself
            start_new_session=True,
        )
    except BaseException:
        os.close(watch_write)
        raise
    finally:
        os.close(watch_read)
        if log is not None:
            log.close()
    handle = ServerHandle(
        uri, process.pid, backend, artifacts, None if log_path is None else str(log_path), process,
        watch_write,
    )  # fmt: skip
    try:
        wait_healthy(uri, process, timeout_s)
    except BaseException as err:  # also KeyboardInterrupt: never leave a half-started server
        handle.stop()
        if isinstance(err, ServerError):
            raise ServerError(str(err) + _log_tail(handle.log_path)) from None
        raise
    return handle


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m sweeps.server``."""
    p = OneLineArgumentParser(
        prog="python -m sweeps.server",
        description="Run an MLflow tracking server for sweeps on a Ray cluster (one worker, "
        "artifacts served through the server); Ctrl-C stops it.",
    )
    p.add_argument(
        "--backend-store-uri",
        default=DEFAULT_BACKEND_STORE_URI,
        help=f"runs database: sqlite:///PATH.db or postgresql://... (default "
        f"{DEFAULT_BACKEND_STORE_URI})",
    )
    p.add_argument(
        "--artifacts-destination",
        default=DEFAULT_ARTIFACTS_DESTINATION,
        help=f"where the server keeps uploaded artifacts: a folder or s3://... (default "
        f"{DEFAULT_ARTIFACTS_DESTINATION})",
    )
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="interface to listen on (default 127.0.0.1: this machine only); 0.0.0.0 or :: "
        "for a cluster, which opens the server, without login, to every machine that reaches "
        "the port",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="default 5000; 0: any free port")
    p.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"uvicorn workers, 1 to one per CPU this process may use ({max_workers()} here); "
        "default 1, about 0.5 GB in all",
    )
    p.add_argument(
        "--allowed-hosts",
        help="Host headers to accept, comma-separated, * as wildcard (default: localhost, private "
        "IPs, and for 0.0.0.0 this machine's name and address); add the name people use in URLs",
    )
    p.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the server to answer"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Start the server, print where to find it, and keep it in the foreground until Ctrl-C or
    SIGTERM; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:  # refused before any folder exists or any signal handler changes
        check_settings(
            args.backend_store_uri, args.artifacts_destination, args.host, args.port,
            args.workers, args.timeout,
        )  # fmt: skip
    except ServerError as err:
        print(f"python -m sweeps.server: error: {err}", file=sys.stderr)
        return 2
    if args.host in ANY_INTERFACE:
        port = f"port {args.port}" if args.port else "its port"
        print(
            f"python -m sweeps.server: warning: --host {args.host} listens on every interface and "
            f"the server has no login: anyone who can reach {port} can read, write and delete "
            "runs",
            file=sys.stderr,
            flush=True,
        )
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the ``finally`` below stops the server's group.
    # SIGINT too, set again here: a background job of a non-interactive shell starts with SIGINT
    # ignored, and Python then keeps it ignored, so Ctrl-C (kill -INT) would do nothing
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    try:
        server = start_server(
            host=args.host,
            port=args.port,
            workers=args.workers,
            backend_store_uri=args.backend_store_uri,
            artifacts_destination=args.artifacts_destination,
            timeout_s=args.timeout,
            allowed_hosts=args.allowed_hosts,
        )
    except ServerError as err:
        print(f"python -m sweeps.server: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    try:
        print(
            f"MLflow tracking server running (pid {server.pid}, {args.workers} worker"
            f"{'s' if args.workers != 1 else ''})\n"
            f"  runs:       {server.backend_store_uri}\n"
            f"  artifacts:  {server.artifacts_destination} (uploaded through the server)\n"
            f"  sweeps:     --tracking-uri {server.uri}\n"
            f"  UI:         {server.ui_url}\n"
            "Ctrl-C stops it.",
            flush=True,
        )
        status = server.process.wait()
        print(
            f"python -m sweeps.server: mlflow server exited with status {status}", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        print("stopping the MLflow server", file=sys.stderr, flush=True)
        return 0
    finally:
        # a second Ctrl-C or SIGTERM must not cut the shutdown short and orphan the server
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
