"""`nanomorph registry-server start|stop|status DIR`: the lab's shared MLflow registry, on one machine.

`start` brings up, all under DIR (created 0700, never inside the repository):

* PostgreSQL from the system package (`initdb`, `pg_ctl`): the data folder `DIR/pg`, listening only on a Unix
  socket in `DIR/socket` (no TCP port; socket mode 0700, so only the server's own OS user reaches it). Two
  databases: `mlflow` (runs, the model registry) and `mlflow_auth` (users and permissions).
* `mlflow server` with the backend store in PostgreSQL, proxied artifact storage in `DIR/artifacts`
  (`--artifacts-destination`: clients upload and download through the server and never see that path, so
  artifact locations are portable), behind MLflow's basic-auth app (`--app-name basic-auth`).
* Three users. `admin` manages users. `writer` (the pipeline, CI) gets EDIT on the experiment and on both
  registered models (named in params.yaml): it logs runs, registers versions and moves aliases, but cannot delete.
  `reader` (downstream labs) has the server's default permission, READ: it loads models and nothing more.
  Unauthenticated requests get 401.

Passwords come from the environment (`NANOMORPH_REGISTRY_ADMIN_PASSWORD`, `..._WRITER_PASSWORD`,
`..._READER_PASSWORD`) or from an ini file (`--credentials FILE`, sections [admin] [writer] [reader] with
`password = ...`), never from params.yaml or the repository. Clients pass theirs the MLflow way:
`MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`, or `~/.mlflow/credentials`.

`start` returns once the server answers and the users exist, and prints the tracking URI. It is idempotent:
a DIR that already holds a cluster and users is started again as it is.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import requests

from nanomorph.errors import NanomorphError, print_error

ROLES = ("admin", "writer", "reader")
PASSWORD_ENV = {role: f"NANOMORPH_REGISTRY_{role.upper()}_PASSWORD" for role in ROLES}
PG_PORT = 5432          # names the socket file only: the cluster opens no TCP port
DATABASES = ("mlflow", "mlflow_auth")
STATE_FILE = "server.json"


@dataclass(frozen=True)
class Layout:
    """Where everything of one registry lives."""

    root: Path

    @property
    def pg(self) -> Path:
        return self.root / "pg"

    @property
    def socket(self) -> Path:
        return self.root / "socket"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def auth_config(self) -> Path:
        return self.root / "basic_auth.ini"

    @property
    def state(self) -> Path:
        return self.root / STATE_FILE

    def database_uri(self, database: str) -> str:
        return f"postgresql+psycopg2://{_pg_user()}@/{database}?host={self.socket}&port={PG_PORT}"


def passwords(credentials: Path | None) -> dict[str, str]:
    """{role: password} from `credentials` (ini) or the environment; a NanomorphError names what is missing."""
    found: dict[str, str] = {}
    if credentials is not None:
        if not credentials.is_file():
            raise NanomorphError(f"{credentials}: credentials file not found")
        parser = configparser.ConfigParser()
        parser.read(credentials)
        found = {role: parser.get(role, "password") for role in ROLES if parser.has_option(role, "password")}
    for role in ROLES:
        found.setdefault(role, os.environ.get(PASSWORD_ENV[role], ""))
    missing = [PASSWORD_ENV[role] for role in ROLES if not found[role]]
    if missing:
        raise NanomorphError(f"no password for {', '.join(missing)} (set them, or give --credentials FILE "
                             "with [admin] [writer] [reader] password = ...)")
    short = [role for role in ROLES if len(found[role]) < 12]
    if short:
        raise NanomorphError(f"passwords of {', '.join(short)} are shorter than 12 characters")
    return found


def _pg_user() -> str:
    """The OS user PostgreSQL runs as: `postgres` when we are root (it refuses to run as root), else ourselves."""
    import getpass

    return "postgres" if os.geteuid() == 0 else getpass.getuser()


def _pg_bin(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        for versions in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
            if (versions / tool).is_file():
                return str(versions / tool)
        raise NanomorphError(f"PostgreSQL's `{tool}` not found: install the system package (apt-get install "
                             "postgresql) or put its bin folder on PATH")
    return found


def _as_pg_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise NanomorphError(f"{what} failed: {detail[-1] if detail else f'exit {done.returncode}'}")


def start_postgres(layout: Layout) -> None:
    """initdb (first time) and start the cluster on its Unix socket; create the databases."""
    if os.geteuid() == 0:
        # The cluster runs as `postgres`, which must be able to pass through DIR (not list it).
        layout.root.chmod(0o711)
        if subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(layout.root)]).returncode != 0:
            raise NanomorphError(f"{layout.root}: the `postgres` user cannot reach this folder (a parent folder "
                                 "is private); choose a folder it can pass through, e.g. under /srv or /tmp")
    for folder in (layout.pg, layout.socket):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
    if not (layout.pg / "PG_VERSION").is_file():
        _run(_as_pg_user([_pg_bin("initdb"), "-D", str(layout.pg), "--auth-local=trust", "--auth-host=reject",
                          "-U", _pg_user(), "--encoding=UTF8", "--no-instructions"]), "initdb")
    options = f"-c listen_addresses='' -c unix_socket_directories='{layout.socket}' -c unix_socket_permissions=0700 " \
              f"-p {PG_PORT}"
    status = subprocess.run(_as_pg_user([_pg_bin("pg_ctl"), "status", "-D", str(layout.pg)]), capture_output=True)
    if status.returncode != 0:
        _run(_as_pg_user([_pg_bin("pg_ctl"), "start", "-w", "-t", "60", "-D", str(layout.pg), "-o", options,
                          "-l", str(layout.pg / "postgres.log")]), "starting PostgreSQL")
    for database in DATABASES:
        exists = subprocess.run(_as_pg_user([_pg_bin("psql"), "-h", str(layout.socket), "-p", str(PG_PORT),
                                             "-d", "postgres", "-tAc",
                                             f"SELECT 1 FROM pg_database WHERE datname = '{database}'"]),
                                capture_output=True, text=True)
        if exists.stdout.strip() != "1":
            _run(_as_pg_user([_pg_bin("createdb"), "-h", str(layout.socket), "-p", str(PG_PORT), database]),
                 f"createdb {database}")


def write_auth_config(layout: Layout, admin_password: str) -> None:
    """The basic-auth app's ini (0600): users in PostgreSQL, READ for every authenticated user by default."""
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": "READ",
        "database_uri": layout.database_uri("mlflow_auth"),
        "admin_username": "admin",
        "admin_password": admin_password,   # read only when the admin user is first created
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        # Each request's password check is a PBKDF2 hash (~0.3 s on 2 cores): a register run makes ~400
        # requests. Cache a verified (user, password) for a minute; a changed password or removed user is
        # seen at once by the worker that handled the change, by the others within that minute.
        "auth_cache_ttl_seconds": "60",
    }
    fd = os.open(layout.auth_config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        config.write(handle)


def _secret_key(layout: Layout) -> str:
    """The server's CSRF signing key: random, made once, kept in DIR (0600) so restarts keep sessions valid."""
    path = layout.root / "secret_key"
    if not path.is_file():
        import secrets

        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip()


def _wait_healthy(uri: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
            errors = [line for line in lines if "Error" in line or "Exception" in line] or lines
            raise NanomorphError(f"mlflow server exited ({process.returncode}): {errors[-1] if errors else 'no output'}"
                                 f" (log: {log})")
        try:
            if requests.get(f"{uri}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise NanomorphError(f"mlflow server at {uri} did not answer within {timeout_s:.0f} s (log: {log})")


def start_mlflow(layout: Layout, host: str, port: int, timeout_s: float = 120.0) -> subprocess.Popen:
    """`mlflow server` with the PostgreSQL backend, proxied artifacts and basic auth, detached from this
    process (its own session); returns once /health answers."""
    layout.artifacts.mkdir(mode=0o700, parents=True, exist_ok=True)
    log = layout.root / "mlflow-server.log"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", layout.database_uri("mlflow"),
               "--artifacts-destination", str(layout.artifacts), "--serve-artifacts", "--app-name", "basic-auth",
               "--host", host, "--port", str(port), "--workers", "2"]
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(layout.auth_config),
           "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret_key(layout)}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True, cwd=layout.root)
    uri = f"http://{host}:{port}"
    _wait_healthy(uri, process, log, timeout_s)
    return process


@contextmanager
def _as_user(user: str, password: str) -> Iterator[None]:
    """MLflow clients read basic-auth credentials from these variables."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = user, password
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def bootstrap(uri: str, secrets: dict[str, str], experiment: str, models: tuple[str, ...]) -> None:
    """Create the experiment, the registered models and the writer and reader users (as admin; existing ones
    are kept), and give the writer EDIT on the experiment and the models."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    with _as_user("admin", secrets["admin"]):
        auth = get_app_client("basic-auth", tracking_uri=uri)
        for role in ("writer", "reader"):
            try:
                auth.create_user(role, secrets[role])
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        for name in models:
            try:
                client.create_registered_model(name, description="nanomorph: register stage versions; "
                                                                  "`champion` moves only by `nanomorph promote`")
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        grants = [("experiment", experiment_id)] + [("registered_model", name) for name in models]
        for resource_type, resource_id in grants:
            auth.grant_user_permission("writer", resource_type, resource_id, "EDIT")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running(layout: Layout) -> dict | None:
    """{'pid', 'uri'} of the mlflow server started under `layout` when it still runs, else None."""
    if not layout.state.is_file():
        return None
    state = json.loads(layout.state.read_text())
    return state if _pid_alive(state["pid"]) else None


def start(root: Path, *, host: str, port: int, secrets: dict[str, str], experiment: str,
          models: tuple[str, ...]) -> str:
    """Start (or restart) the registry under `root`; returns its tracking URI."""
    layout = Layout(root.resolve())
    layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if (found := running(layout)) is not None:
        raise NanomorphError(f"{layout.root}: a registry server already runs there ({found['uri']}); "
                             "`stop` it first")
    start_postgres(layout)
    write_auth_config(layout, secrets["admin"])
    process = start_mlflow(layout, host, port)
    uri = f"http://{host}:{port}"
    layout.state.write_text(json.dumps({"pid": process.pid, "uri": uri}))
    try:
        bootstrap(uri, secrets, experiment, models)
    except Exception:
        stop(root)
        raise
    return uri


def stop(root: Path) -> None:
    """Stop the mlflow server (its whole process group) and the PostgreSQL cluster under `root`."""
    layout = Layout(root.resolve())
    if layout.state.is_file():
        pid = json.loads(layout.state.read_text())["pid"]
        if _pid_alive(pid):
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            if _pid_alive(pid):
                os.killpg(pid, signal.SIGKILL)
        layout.state.unlink()
    if (layout.pg / "postmaster.pid").is_file():
        _run(_as_pg_user([_pg_bin("pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(layout.pg)]), "stopping PostgreSQL")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanomorph registry-server",
                                     description="The lab's shared MLflow registry: PostgreSQL + mlflow server "
                                                 "with basic auth (admin, writer, reader), artifacts proxied.")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("dir", type=Path, help="folder for the database, artifacts and logs (outside the repository)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--credentials", type=Path, default=None,
                        help="ini file with [admin] [writer] [reader] password = ... (else the environment)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="the experiment and registered model names come from here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.action == "stop":
            stop(args.dir)
            print(f"stopped the registry under {args.dir}")
            return 0
        if args.action == "status":
            found = running(Layout(args.dir.resolve()))
            print(found["uri"] if found else "not running")
            return 0 if found else 1
        from nanomorph.config import load_config

        cfg = load_config(args.params)
        uri = start(args.dir, host=args.host, port=args.port, secrets=passwords(args.credentials),
                    experiment=cfg.tracking.experiment, models=(cfg.registry.classifier, cfg.registry.segmenter))
    except NanomorphError as exc:
        print_error("nanomorph registry-server", exc)
        return 2
    print(uri)
    print(f"# writers (pipeline, CI): MLFLOW_TRACKING_URI={uri} MLFLOW_TRACKING_USERNAME=writer "
          "MLFLOW_TRACKING_PASSWORD=...", file=sys.stderr)
    print(f"# readers (other labs):   MLFLOW_TRACKING_URI={uri} MLFLOW_TRACKING_USERNAME=reader "
          "MLFLOW_TRACKING_PASSWORD=...", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
