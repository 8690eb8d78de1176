"""`nanomorph <command>`: the pipeline stages as commands (the same functions dvc runs), `predict`, `serve`,
`promote` (move a model's champion alias) and `registry-server` (the lab's shared MLflow registry)."""

from __future__ import annotations

import importlib
import os
import sys

from nanomorph.errors import DEBUG_ENV

COMMANDS = {
    "fetch": "nanomorph.stages.fetch",
    "validate": "nanomorph.stages.validate",
    "pretrain": "nanomorph.stages.pretrain",
    "probe": "nanomorph.stages.probe",
    "anchors": "nanomorph.stages.anchors",
    "advisor": "nanomorph.stages.advisor",
    "segment": "nanomorph.stages.segment",
    "analyse": "nanomorph.stages.analyse",
    "register": "nanomorph.stages.register",
    "report": "nanomorph.stages.report",
    "predict": "nanomorph.predict",
    "serve": "nanomorph.serving.serve",
    "promote": "nanomorph.tracking.promote",
    "registry-server": "nanomorph.tracking.server",
}

USAGE = f"""usage: nanomorph [--debug] <command> [options] | nanomorph --version

commands: {', '.join(COMMANDS)}
Run `nanomorph <command> --help` for a command's options; the whole pipeline is `dvc repro`.
--debug: a mistake is still one line, followed by its traceback (for a bug report); NANOMORPH_DEBUG=1 does the
same for the stages dvc runs."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--debug":
        os.environ[DEBUG_ENV] = "1"
        argv = argv[1:]
    if not argv or argv[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        from importlib.metadata import version

        print(f"nanomorph {version('nanomorph')}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"nanomorph: unknown command '{command}'\n{USAGE}", file=sys.stderr)
        return 2
    if not sys.stderr.isatty():  # MLflow's artifact download bars, as ours, only on a terminal
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return importlib.import_module(COMMANDS[command]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
