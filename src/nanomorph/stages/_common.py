"""What every stage shares: argument parsing, one-line user errors, its MLflow run, metric files."""

from __future__ import annotations

import argparse
import json
import logging
import math
import numbers
import os
import signal
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from nanomorph.config import Config, load_config
from nanomorph.errors import NanomorphError, StageInterrupted, print_error


def show_messages() -> None:
    """nanomorph's own log messages (e.g. "resuming from step N") as plain lines on stderr; other libraries'
    loggers are left as they are, so their INFO chatter stays out of the stage logs."""
    logger = logging.getLogger("nanomorph")
    if not any(isinstance(h, _StderrLines) for h in logger.handlers):
        handler = _StderrLines()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


class _StderrLines(logging.StreamHandler):
    """A handler on whatever sys.stderr is when a message is written (not the one at setup)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def _terminated(signum: int, _frame: Any) -> None:
    # dvc and schedulers stop a stage with SIGTERM: unwind as an interruption, so the MLflow run ends KILLED
    raise StageInterrupted(f"stopped by signal {signal.Signals(signum).name}")


def stage_main(stage: str, body: Callable[[Config, argparse.Namespace], None],
               add_args: Callable[[argparse.ArgumentParser], None] | None = None,
               argv: list[str] | None = None) -> int:
    """Parse arguments, load params.yaml, run `body`; a NanomorphError becomes one line on stderr, exit 2."""
    parser = argparse.ArgumentParser(prog=f"nanomorph {stage}", description=f"Run the '{stage}' stage.")
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    parser.add_argument("--profile", default=None, help="override the profile named in the parameters file")
    if add_args is not None:
        add_args(parser)
    args = parser.parse_args(argv)
    if not on_terminal():  # MLflow's own artifact progress bars, as ours, only on a terminal
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    show_messages()
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        cfg = load_config(args.params, profile=args.profile)
        body(cfg, args)
    except (KeyboardInterrupt, StageInterrupted) as exc:
        print(f"nanomorph {stage}: interrupted ({exc or 'Ctrl-C'}); its MLflow run is marked KILLED, "
              "a rerun resumes from the last checkpoint where the stage keeps one", file=sys.stderr)
        return 130
    except NanomorphError as exc:  # several problems (params.yaml): one prefixed line each
        print_error(f"nanomorph {stage}: error", exc)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def tracked(cfg: Config, stage: str, sections: tuple[str, ...]) -> AbstractContextManager[Any]:
    """The stage's MLflow run, logging the resolved params of `sections`."""
    from nanomorph.tracking.runs import stage_run

    return stage_run(
        stage, repo_root=Path.cwd(), tracking_uri=cfg.tracking.tracking_uri, experiment=cfg.tracking.experiment,
        artifact_dir=cfg.tracking.artifact_dir, profile=cfg.profile, params_hash=cfg.params_hash,
        params={"profile": cfg.profile, **{s: cfg.section_params(s) for s in sections}},
    )


def on_terminal() -> bool:
    """Progress bars only when stderr is a terminal: under `dvc repro > log` or CI they would fill the log
    with carriage-return frames."""
    return sys.stderr.isatty()


def write_json(path: str | Path, payload: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def finite(value: Any) -> Any:
    """JSON-safe: NaN/inf (an undefined test) become null, numpy scalars plain numbers; containers recursively."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    return value
