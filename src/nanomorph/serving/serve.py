"""`nanomorph serve`: serve a registered model over HTTP after verifying its files.

    nanomorph serve NAME@ALIAS [--host 127.0.0.1] [--port 5001] [--tracking-uri URI] [--params params.yaml]

The version is downloaded, every file checked against the sha256 recorded at registration
(`nanomorph.tracking.integrity`), and the verified local copy is handed to `mlflow models serve` (local
environment): the server never loads files the registry did not vouch for. The server runs as a child of this
process, which passes SIGTERM, SIGINT and SIGHUP on to it and deletes the verified copy once it has stopped.
Requests send images inline (`image` column); `path` rows are read only under NANOMORPH_SERVING_PATH_ROOT
(`nanomorph.serving.inputs`).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
from pathlib import Path

from nanomorph.errors import NanomorphError, print_error
from nanomorph.predict import project_settings, registered_version, tracking_uri
from nanomorph.tracking.integrity import verified_model_dir
from nanomorph.tracking.registry import parse_model_ref


def serve_command(model_dir: str, host: str, port: int) -> list[str]:
    """The `mlflow models serve` command line for a verified local model folder."""
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_dir, "--env-manager", "local",
            "-h", host, "-p", str(port)]


def run_server(command: list[str]) -> int:
    """Run the server as a child until it stops and return its exit status (128 + signal when a signal stopped
    it). Stop signals sent to this process are passed on to it. Not an exec of the server: the verified copy is
    deleted when this process exits (`integrity._download`), which an exec'd process never does, so every
    `nanomorph serve` used to leave a copy of the model (~45 MB) in the temp folder."""
    server = subprocess.Popen(command)

    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            server.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    code = server.wait()  # resumed after each forwarded signal (PEP 475)
    return 128 - code if code < 0 else code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanomorph serve", description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None, metavar="NAME@ALIAS",
                        help="NAME@ALIAS, NAME/VERSION or NAME (= NAME@champion); default the project's "
                             "registry.classifier@champion")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default as for nanomorph predict)")
    parser.add_argument("--params", default=None, type=Path,
                        help="the project's params.yaml (default ./params.yaml)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        project = project_settings(args.params)
        ref = parse_model_ref(args.model or project.classifier)
        client, version = registered_version(ref, tracking_uri(args.tracking_uri, project.tracking_uri))
        local = verified_model_dir(client, ref.name, str(version.version))
    except NanomorphError as exc:
        print_error("nanomorph serve: error", exc)
        return 2
    print(f"serving {ref} (version {version.version}, files verified) on http://{args.host}:{args.port}",
          file=sys.stderr, flush=True)
    return run_server(serve_command(str(local), args.host, args.port))


if __name__ == "__main__":
    sys.exit(main())
